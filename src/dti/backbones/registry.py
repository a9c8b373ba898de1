"""The backbone families dti supports: one entry each. Everything family-specific elsewhere (the CLI's
--family choices, the workflow's wildcard and config checks, detection from model_index.json, the text
encoders' names, components and exported files, the tiny and full-size builders) is derived from this
table and the classes it names.

Torch-free and import-free: the workflow plans with it, and a family's module (which imports torch) is
imported only when its class is asked for. Adding a family is one module defining a `Backbone` subclass
(dti/backbones/base.py lists what it implements) plus one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from dti.errors import DtiError


@dataclass(frozen=True)
class Slot:
    """One text encoder of a family, as exported files and model folders name it."""

    name: str  # the key of its rows in exported files and run records (clip_l, clip_g, gemma2, umt5)
    encoder: str  # its pipeline component (and model subfolder): text_encoder, text_encoder_2
    tokenizer: str  # its tokenizer's: tokenizer, tokenizer_2
    table: str  # how the token-embedding table's key ends in the encoder's safetensors (read without a model)


@dataclass(frozen=True)
class Family:
    name: str  # the config's and the CLI's family name
    pipeline: str  # the diffusers pipeline class a model folder's model_index.json names
    backbone: str  # "module:Class" of its Backbone subclass
    slots: tuple[Slot, ...]  # its text encoders in order (the i-th one's rows go to learned_embeds_{i+1})
    # Its pipeline has diffusers' load_textual_inversion, and AUTOMATIC1111 / ComfyUI load its embeddings
    # (CLIP text encoders); else only dti's own loader (dti sample, dti.sample.install_learned_token) does.
    textual_inversion_clients: bool = True


_CLIP_TABLE = "embeddings.token_embedding.weight"
_ONE = (Slot("clip_l", "text_encoder", "tokenizer", _CLIP_TABLE),)
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sd", "StableDiffusionPipeline", "dti.backbones.sd:StableDiffusion", _ONE),
    Family("sdxl", "StableDiffusionXLPipeline", "dti.backbones.sdxl:StableDiffusionXL",
           _ONE + (Slot("clip_g", "text_encoder_2", "tokenizer_2", _CLIP_TABLE),)),
    Family("sana", "SanaPipeline", "dti.backbones.sana:Sana", (Slot("gemma2", "text_encoder", "tokenizer", "embed_tokens.weight"),),
           textual_inversion_clients=False),
    Family("wan", "WanPipeline", "dti.backbones.wan:Wan", (Slot("umt5", "text_encoder", "tokenizer", "shared.weight"),),
           textual_inversion_clients=False),
)}


def family_names() -> list[str]:
    return list(FAMILIES)


def pipeline_families() -> dict[str, str]:
    """{diffusers pipeline class name: family}."""
    return {f.pipeline: f.name for f in FAMILIES.values()}


def check_family(name: str) -> Family:
    if name not in FAMILIES:
        raise DtiError(f"unknown backbone family {name!r}; known: {family_names()}")
    return FAMILIES[name]


def backbone_class(name: str):
    """The Backbone subclass of a family, its module imported on first use (the class takes its family name
    and pipeline class from its line here: dti.backbones.base.Backbone.__init_subclass__)."""
    family = check_family(name)
    module, _, attr = family.backbone.partition(":")
    return getattr(importlib.import_module(module), attr)

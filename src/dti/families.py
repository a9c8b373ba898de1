"""The backbone families dti supports: one entry each, as data. Everything family-specific elsewhere (the
CLI's --family choices, the workflow's wildcard and config checks, detection from model_index.json, the
text encoders' names, components and exported files) is derived from this table.

Torch-free and import-free, and it names no module: the workflow plans with it, and everything imports it
without a loop. Adding a family is one module defining a `Backbone` subclass (dti/backbones/base.py lists
what it implements), one entry here and one line in dti.backbones.catalog naming its class.
"""

from __future__ import annotations

from dataclasses import dataclass

from dti.errors import DtiError


@dataclass(frozen=True)
class Slot:
    """One text encoder of a family, as exported files and model folders name it."""

    name: str  # the key of its rows in exported files and run records (clip_l, clip_g, gemma2, umt5)
    encoder: str  # its pipeline component (and model subfolder): text_encoder, text_encoder_2
    tokenizer: str  # its tokenizer's: tokenizer, tokenizer_2
    table: str  # how the token-embedding table's key ends in the encoder's safetensors (read without a model)
    # How it adds position: "absolute" (a learned row added to the token's before the first LayerNorm: the
    # positional probe of dti.analysis.positional applies), "rotary" or "relative" (inside attention: no
    # position row to drown, so the probe does not apply).
    positions: str = "absolute"
    # A decoder-only language model whose head is its input table (Gemma-2): its tokens can be decoded
    # back to text (dti.analysis.decoding).
    language_model: bool = False


@dataclass(frozen=True)
class Family:
    name: str  # the config's and the CLI's family name
    pipeline: str  # the diffusers pipeline class a model folder's model_index.json names
    slots: tuple[Slot, ...]  # its text encoders in order (the i-th one's rows go to learned_embeds_{i+1})
    # Its pipeline has diffusers' load_textual_inversion, and AUTOMATIC1111 / ComfyUI load its embeddings
    # (CLIP text encoders); else only dti's own loader (dti sample, dti.sample.install_learned_token) does.
    textual_inversion_clients: bool = True
    # Its denoiser's cross-attention can be read per text position (dti.analysis.attention: a UNet's
    # unmasked cross-attention over the tokenizer's positions); SANA's and Wan's mask and crop their text.
    token_attention_maps: bool = True


_CLIP_TABLE = "embeddings.token_embedding.weight"
_ONE = (Slot("clip_l", "text_encoder", "tokenizer", _CLIP_TABLE),)
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sd", "StableDiffusionPipeline", _ONE),
    Family("sdxl", "StableDiffusionXLPipeline",
           _ONE + (Slot("clip_g", "text_encoder_2", "tokenizer_2", _CLIP_TABLE),)),
    Family("sana", "SanaPipeline", (Slot("gemma2", "text_encoder", "tokenizer", "embed_tokens.weight",
                                         positions="rotary", language_model=True),),
           textual_inversion_clients=False, token_attention_maps=False),
    Family("wan", "WanPipeline", (Slot("umt5", "text_encoder", "tokenizer", "shared.weight",
                                       positions="relative"),),
           textual_inversion_clients=False, token_attention_maps=False),
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


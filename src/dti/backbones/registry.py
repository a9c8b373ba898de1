"""The backbone families dti supports: one line each. Everything family-specific elsewhere (the CLI's
--family choices, the workflow's wildcard and config checks, detection from model_index.json, the tiny
and full-size builders) is derived from this table and the classes it names.

Torch-free and import-free: the workflow plans with it, and a family's module (which imports torch) is
imported only when its class is asked for. Adding a family is one module defining a `Backbone` subclass
(dti/backbones/base.py lists what it implements) plus one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from dti.errors import DtiError


@dataclass(frozen=True)
class Family:
    name: str  # the config's and the CLI's family name
    pipeline: str  # the diffusers pipeline class a model folder's model_index.json names
    backbone: str  # "module:Class" of its Backbone subclass


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sd", "StableDiffusionPipeline", "dti.backbones.sd:StableDiffusion"),
    Family("sdxl", "StableDiffusionXLPipeline", "dti.backbones.sdxl:StableDiffusionXL"),
    Family("sana", "SanaPipeline", "dti.backbones.sana:Sana"),
    Family("wan", "WanPipeline", "dti.backbones.wan:Wan"),
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

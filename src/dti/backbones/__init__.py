"""Backbone families (SD 1.x/2.x, SDXL, SANA, Wan) behind one interface, looked up by name in
dti.backbones.registry.

The names below are imported on first use (PEP 562): the registry is torch-free and the workflow reads it
while planning, which must not import torch through this package.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Backbone": "dti.backbones.base",
    "TextEncoderSlot": "dti.backbones.base",
    "detect_family": "dti.backbones.base",
    "load_backbone": "dti.backbones.base",
    "backbone_class": "dti.backbones.registry",
    "family_names": "dti.backbones.registry",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

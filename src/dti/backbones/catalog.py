"""Each family's `Backbone` class by name, and what is built or loaded by family name: a model folder or hub
id, a tiny random pipeline, a full-size random one. This is the family dispatch the family table
(dti.families) leaves out, so that the table stays torch-free and names no module, and the builders
(dti.tiny, dti.fullsize) and backbone modules never reach back to it: nothing imports this module but
the callers that start from a family name.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from dti.backbones.base import Backbone, check_model_exists, detect_family
from dti.errors import DtiError
from dti.families import FAMILIES, check_family
from dti.io import atomic_dir
from dti.model_files import check_declared_family, local_path

# One line per family (its module is imported when its class is first asked for).
BACKBONE_CLASSES = {
    "sd": "dti.backbones.sd:StableDiffusion",
    "sdxl": "dti.backbones.sdxl:StableDiffusionXL",
    "sana": "dti.backbones.sana:Sana",
    "wan": "dti.backbones.wan:Wan",
}
if set(BACKBONE_CLASSES) != set(FAMILIES):
    raise DtiError(f"dti.backbones.catalog names classes for {sorted(BACKBONE_CLASSES)}, the family table "
                   f"holds {sorted(FAMILIES)}")


def backbone_class(name: str) -> type[Backbone]:
    """The Backbone subclass of a family, its module imported on first use."""
    check_family(name)
    module, _, attr = BACKBONE_CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def load_backbone(model: str, *, family: str | None = None, revision: str | None = None,
                  dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Backbone:
    """Load a frozen backbone by hub id or local folder, with every weight checked to be present."""
    check_model_exists(model)
    if family is not None:
        check_family(family)
        check_declared_family(model, family, revision)
    cls = backbone_class(family or detect_family(model, revision))
    path = local_path(model)
    model = str(path) if path is not None else model
    return cls.load(model, revision=revision, dtype=dtype, device=torch.device(device))


def build_tiny_pipeline(family: str, seed: int = 0):
    """A random tiny pipeline of the given family, deterministic for a seed."""
    cls = backbone_class(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls.tiny_pipeline()


def write_tiny_model(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny pipeline with `save_pretrained`; the folder appears only once complete."""
    pipe = build_tiny_pipeline(family, seed)
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp)
    return Path(out_dir)


def build_fullsize_pipeline(family: str, dtype: torch.dtype = torch.bfloat16, device: str = "cuda"):
    """The family's pipeline with random weights allocated directly on `device`: the denoiser and text
    encoders in `dtype` except the parts their class keeps in fp32, the VAE in fp32 (as a training job's
    `from_pretrained` loads them)."""
    cls = backbone_class(family)
    torch.manual_seed(0)
    pipe = cls.fullsize_pipeline(device)
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module) and name != "vae":
            module.to(dtype)
            keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
            for sub_name, sub in module.named_modules():
                if keep and any(part in keep for part in sub_name.split(".")):
                    sub.to(torch.float32)
    return pipe

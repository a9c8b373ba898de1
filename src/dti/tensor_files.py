"""Safetensors files with the same bytes for the same tensors and metadata (the library writes its JSON
header in hash-map order), so a resumed run can byte-match an uninterrupted one."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save


def canonical_bytes(blob: bytes) -> bytes:
    """Sort the safetensors JSON header: the library writes it in hash-map order, so the same tensors and
    metadata would give different bytes on each call (and a resumed run could never byte-match)."""
    size = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to a multiple of 8 bytes
    return len(header).to_bytes(8, "little") + header + blob[8 + size :]


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict) -> bytes:
    """A safetensors file of `tensors` in fp32 with `metadata` (values as text), the same bytes each time."""
    blob = save({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
                metadata={"format": "pt", **{k: str(v) for k, v in metadata.items()}})
    return canonical_bytes(blob)

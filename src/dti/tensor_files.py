"""Safetensors files written tensor by tensor, with the same bytes for the same tensors and metadata.

The safetensors library builds a whole file in memory (and writes its JSON header in hash-map order, so
the same tensors would give different bytes on each call). Here the header is computed from the tensors'
shapes and dtypes alone, with sorted keys, and each tensor goes to the host and into the file one at a
time: a whole fine-tuned denoiser and its optimizer state (tens of GB) never sit in host memory at once,
and a resumed run can byte-match an uninterrupted one. The layout is the format's own (an 8-byte header
length, the JSON header padded with spaces to a multiple of 8, then the tensors' bytes back to back in the
header's order), so safetensors, diffusers and every client read the files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch

from dti.io import atomic_path

_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def _stored(tensor: torch.Tensor, as_float: bool) -> torch.dtype:
    return torch.float32 if as_float and tensor.is_floating_point() else tensor.dtype


def header_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, object], *,
                 as_float: bool = False) -> bytes:
    """The file's first bytes: the header's length and the header (sorted keys, padded to 8 bytes), the
    tensors laid out in sorted name order; metadata values as text, with safetensors' own "format" key."""
    entries, offset = {}, 0
    for name in sorted(tensors):
        tensor = tensors[name]
        dtype = _stored(tensor, as_float)
        if dtype not in _DTYPES:
            raise TypeError(f"tensor {name!r}: dtype {dtype} has no safetensors code")
        size = tensor.numel() * dtype.itemsize
        entries[name] = {"dtype": _DTYPES[dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    meta = {"format": "pt", **{key: str(value) for key, value in metadata.items()}}
    header = json.dumps({"__metadata__": meta, **entries}, sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header


def write_safetensors(target: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, object],
                      *, as_float: bool = False, root: str | os.PathLike | None = None) -> None:
    """Write `tensors` (on any device) with `metadata` to `target` atomically (dti.io.atomic_path, `root` as
    there), one tensor on the host at a time; `as_float` stores floating tensors as fp32."""
    with atomic_path(target, root=root) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))  # never through a link
        try:
            _write_all(fd, header_bytes(tensors, metadata, as_float=as_float))
            for name in sorted(tensors):
                tensor = tensors[name].detach()
                host = tensor.to(device="cpu", dtype=_stored(tensor, as_float)).contiguous().reshape(-1)
                _write_all(fd, host.view(torch.uint8).numpy().data)
        finally:
            os.close(fd)


def _write_all(fd: int, data) -> None:
    """os.write until every byte is out (one call writes at most about 2 GiB on Linux)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]

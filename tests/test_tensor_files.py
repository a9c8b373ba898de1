"""dti.tensor_files: safetensors files written tensor by tensor, the same bytes for the same content, read by
the safetensors library itself."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dti.tensor_files import header_bytes, write_safetensors


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"rows": torch.randn(3, 5, generator=gen), "half": torch.randn(4, generator=gen).to(torch.bfloat16),
            "step": torch.tensor(7.0), "count": torch.arange(6, dtype=torch.int64).reshape(2, 3),
            "mask": torch.tensor([True, False, True]), "empty": torch.zeros(0, 4),
            "strided": torch.randn(4, 6, generator=gen).t()}


def test_the_library_reads_back_every_tensor_and_the_metadata(tmp_path):
    tensors = _tensors()
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors, {"dti.step": 3, "dti.note": "x"})
    loaded = load_file(path)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt", "dti.step": "3", "dti.note": "x"}


def test_as_float_stores_floating_tensors_in_fp32_and_leaves_the_others(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, _tensors(), {}, as_float=True)
    loaded = load_file(path)
    assert loaded["half"].dtype == torch.float32 and torch.equal(loaded["half"], _tensors()["half"].float())
    assert loaded["count"].dtype == torch.int64 and loaded["mask"].dtype == torch.bool


def test_the_same_content_gives_the_same_bytes_whatever_the_order(tmp_path):
    tensors = _tensors()
    write_safetensors(tmp_path / "a.safetensors", tensors, {"b": 1, "a": 2})
    write_safetensors(tmp_path / "b.safetensors", dict(reversed(tensors.items())), {"a": 2, "b": 1})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_the_header_is_computed_without_the_data_and_padded_to_eight_bytes():
    tensors = _tensors()
    head = header_bytes(tensors, {})
    size = int.from_bytes(head[:8], "little")
    assert size % 8 == 0 and len(head) == 8 + size
    entries = json.loads(head[8:])
    ends = sorted((e["data_offsets"] for k, e in entries.items() if k != "__metadata__"))
    assert ends[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ends, ends[1:], strict=False))  # back to back


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"x": torch.ones(2)}, {})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="complex64 has no safetensors code"):
        write_safetensors(path, {"z": torch.ones(2, dtype=torch.complex64)}, {})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]

"""Resumable training state as one safetensors file: tensors in the body, everything else as JSON metadata.

No pickle: reading a state file can never run code, whoever wrote it (a crafted `state.pt` in an output
folder used to run arbitrary code on the next rerun, and AUTOMATIC1111 unpickles such files too). The file
holds every tensor the method trains and the optimizer's per-parameter state:

    tensors   param.<slot>.<name>          each trained tensor of each text encoder slot (rows; a trained m)
              optimizer.<index>.<key>      each tensor of the optimizer's state of parameter <index>
    metadata  dti.state = JSON {"format", "fingerprint", "step", "optimizer": {<index>: {<key>: value}}}
              (the optimizer's non-tensor state, e.g. RSGD's step count)

The optimizer's param_groups (learning rate and the like) are not stored: a state is only resumed into a
run with the same fingerprint, whose freshly built optimizer has the same groups.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from dti.tensor_files import write_safetensors

FORMAT = 2  # 1: rows.<slot> only (read as unreadable: training starts over)
_META_KEY = "dti.state"


class UnreadableState(Exception):
    """The state file is damaged, foreign or inconsistent; the message says how."""


@dataclass
class TrainingState:
    fingerprint: str
    step: int
    parameters: dict[str, torch.Tensor]  # {"<slot>.<name>": tensor}
    optimizer_state: dict[int, dict]  # as in torch's Optimizer.state_dict()["state"]


def save_state(path: Path, state: TrainingState, *, root: Path | None = None) -> None:
    """Write the state atomically; `root` (default: the file's folder) is the folder nothing may be written
    outside of: a symbolic link between it and the file is refused (dti.io)."""
    # Left on their device: the writer takes them to the host one at a time (a whole denoiser's state is
    # tens of GB).
    tensors = {f"param.{name}": value.detach().float() for name, value in state.parameters.items()}
    other: dict[str, dict] = {}
    for index, entries in state.optimizer_state.items():
        other[str(index)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach()
            else:
                other[str(index)][key] = value
    meta = {"format": FORMAT, "fingerprint": state.fingerprint, "step": state.step, "optimizer": other}
    write_safetensors(path, tensors, {_META_KEY: json.dumps(meta, sort_keys=True)}, root=root)  # same state, same bytes


def read_state(path: Path) -> TrainingState:
    """Parse a state file; UnreadableState if it is not one this version wrote whole."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(_META_KEY)
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise UnreadableState(f"not a safetensors file ({err})") from err
    if header is None:
        raise UnreadableState(f"no {_META_KEY!r} metadata")
    try:
        meta = json.loads(header)
        if meta["format"] != FORMAT:
            raise UnreadableState(f"format {meta['format']!r}, this version reads {FORMAT}")
        fingerprint, step, other = meta["fingerprint"], meta["step"], meta["optimizer"]
    except (ValueError, TypeError, KeyError) as err:
        raise UnreadableState(f"malformed {_META_KEY!r} metadata ({err!r})") from err
    if not isinstance(fingerprint, str) or isinstance(step, bool) or not isinstance(step, int) or step < 0 \
            or not isinstance(other, dict) or not all(isinstance(v, dict) for v in other.values()):
        raise UnreadableState(f"malformed {_META_KEY!r} metadata")
    parameters, optimizer_state = {}, {}
    for index, entries in other.items():
        if not index.isdigit():
            raise UnreadableState(f"optimizer state index {index!r} is not a number")
        optimizer_state[int(index)] = dict(entries)
    for key, tensor in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == "param" and rest:
            parameters[rest] = tensor
        elif kind == "optimizer" and "." in rest and rest.split(".", 1)[0] in other:
            index, name = rest.split(".", 1)
            optimizer_state[int(index)][name] = tensor
        else:
            raise UnreadableState(f"unexpected tensor {key!r}")
    return TrainingState(fingerprint, step, parameters, optimizer_state)

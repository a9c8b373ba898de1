"""The model record, resources/models/{backbone}.json: where the login node put a backbone's files.

`fetch_model` (dti.pipeline) writes it on the login node; GPU jobs and the analyses read it and load the
backbone from that local folder, offline. Fields: model (the local folder; relative to the record's own
folder for a tiny model built in the working folder, so a moved or copied working folder loads its own),
family, revision, source (what the config named: a hub id, a local folder, or `tiny`).
"""

from __future__ import annotations

import json
from pathlib import Path

from dti.errors import DtiError
from dti.io import write_json


def write_model_record(path: str | Path, *, model: str, family: str, revision: str | None, source: str) -> None:
    write_json(path, {"model": model, "family": family, "revision": revision, "source": source})


def read_model_record(path: str | Path) -> dict:
    """The record's fields, `model` as a usable path (a relative one taken from the record's folder); a
    DtiError naming the file if it is unreadable or lacks one."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DtiError(f"cannot read the model record {path} ({err!r}); delete it and rerun") from err
    if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in ("model", "family")):
        raise DtiError(f"the model record {path} names no model folder and family; delete it and rerun")
    if not Path(info["model"]).is_absolute():
        info["model"] = str(Path(path).parent / info["model"])
    return info


def load_recorded_backbone(path: str | Path, device: str | None = None):
    """The backbone a model record names, loaded from its local folder (no hub access) onto `device`
    (default: dti.devices.default_device) with the device's weights dtype (dti.devices.weights_dtype)."""
    from dti.backbones.catalog import load_backbone
    from dti.devices import default_device, weights_dtype

    info = read_model_record(path)
    device = device or default_device()
    return load_backbone(info["model"], family=info["family"], revision=None, dtype=weights_dtype(device),
                         device=device)

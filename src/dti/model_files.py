"""A diffusers model's files on disk: where they are, which family they declare, what identifies them.

Torch-free and network-free, so the workflow can call it while planning: a hub id is looked up only in
the local Hugging Face cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dti.errors import DtiError
from dti.families import pipeline_families

_SMALL = 1 << 20  # files up to this size (configs, tokenizers) are hashed whole
_CHUNK = 1 << 16  # of larger files (weights), three chunks are hashed: start, middle, end


def local_path(model: str) -> Path | None:
    """The path `model` names on this machine (`~` expanded; it may not exist), or None where it is a hub id.

    The one rule for telling them apart: a hub id has the form org/name, does not start with ".", "/" or
    "~", and names nothing on disk; anything else is a path, so a mistyped folder is reported missing
    instead of being looked up on the hub.
    """
    path = Path(model).expanduser()
    if model.startswith((".", "/", "~")) or model.count("/") != 1 or path.exists():
        return path
    return None


def model_folder(model: str, revision: str | None = None) -> Path | None:
    """The folder holding the model's files: the local folder itself, or the hub cache's snapshot of the
    revision; None where neither is on this machine."""
    folder = local_path(model)
    if folder is not None:
        return folder if folder.is_dir() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "model_index.json", revision=revision)
    except Exception:  # a malformed id or revision: nothing cached under it
        return None
    return Path(found).parent if isinstance(found, str) else None


def declared_family(model: str, revision: str | None = None) -> str | None:
    """The family the model's own model_index.json declares (None where it is not on this machine or is not a
    pipeline dti knows)."""
    folder = model_folder(model, revision)
    if folder is None or not (folder / "model_index.json").is_file():
        return None
    try:
        name = json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
        raise DtiError(f"cannot read {folder / 'model_index.json'}: {err}") from err
    return pipeline_families().get(name)


def check_declared_family(model: str, family: str, revision: str | None = None) -> None:
    """A DtiError if the model's model_index.json names another family than `family` (an SDXL model run
    as `sd` would train against the wrong text encoders without any other error)."""
    found = declared_family(model, revision)
    if found is not None and found != family:
        raise DtiError(f"model {model!r} is an {found!r} pipeline (its model_index.json says so), not {family!r}")


def _file_digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= _SMALL:
            h.update(handle.read())
            return h.hexdigest()
        if path.suffix == ".safetensors":  # the header lists every tensor's name, dtype, shape and offsets
            header_size = int.from_bytes(handle.read(8), "little")
            h.update(handle.read(min(header_size, 100 << 20)))
        for offset in (0, size // 2, size - _CHUNK):
            handle.seek(offset)
            h.update(handle.read(_CHUNK))
    return h.hexdigest()


def weights_identity(model: str, revision: str | None = None) -> dict[str, list]:
    """{relative path: [size, mtime_ns, digest]} of every file of the model (hidden ones skipped), or {} if the
    model is not on this machine. Small files are hashed whole; weight files by size, modification time,
    safetensors header and three sampled chunks, which changes when the weights are rebuilt or replaced
    without reading gigabytes."""
    folder = model_folder(model, revision)
    if folder is None:
        return {}
    identity = {}
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            stat = path.stat()  # follows the hub cache's symlinks to the blobs
            identity[path.relative_to(folder).as_posix()] = [stat.st_size, stat.st_mtime_ns,
                                                             _file_digest(path, stat.st_size)]
    return identity


def public_model(model: str, revision: str | None = None) -> tuple[str, str | None]:
    """(name, revision) of a model as files record it, never a path of this machine: a hub id as it is; a
    folder of the Hugging Face cache (a snapshot, as the workflow's fetch_model records it) as its hub id
    and the snapshot's commit; any other local folder by its own name."""
    folder = local_path(model)
    if folder is None:
        return model, revision
    folder = folder.resolve()
    repo = folder.parent.parent.name
    if folder.parent.name == "snapshots" and repo.startswith("models--") and "--" in repo[len("models--"):]:
        return repo[len("models--"):].replace("--", "/", 1), revision or folder.name
    return folder.name, revision

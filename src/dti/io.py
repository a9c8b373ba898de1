"""Atomic file output: a killed job never leaves a half-written file that looks complete."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dti.errors import DtiError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _naming(target: Path) -> Iterator[None]:
    """Turn an OSError (a full disk, a file where a folder should be, no permission) into a DtiError naming
    the file being written: the OS's own message often names only a temporary file, or nothing."""
    try:
        yield
    except OSError as err:
        raise DtiError(f"cannot write {target}: {err.strerror or err}") from err


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    with _naming(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _naming(target):
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
            yield tmp_path
            os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | os.PathLike, data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_parquet(target: str | os.PathLike, frame) -> None:
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)


def save_image(target: str | os.PathLike, image) -> None:
    """Save a PIL image; the format follows the target's suffix."""
    target = Path(target)
    with atomic_path(target) as tmp:
        image.save(tmp, format=target.suffix.lstrip(".").upper().replace("JPG", "JPEG"))


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; it replaces `target` only if the block succeeds."""
    target = Path(target)
    with _naming(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        with _naming(target):
            yield tmp
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)

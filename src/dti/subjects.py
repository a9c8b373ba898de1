"""Prepared subject folders: normalized RGB PNGs plus `subject.json` describing them.

Layout (the pipeline's contract):
    {out_dir}/00.png, 01.png, ...   the subject's images, upright RGB, original resolution (reduced by an
                                    integer factor to at most 4096 px on the longer side: dti.images)
    {out_dir}/subject.json          {"name", "class", "kind", "initializer", "images", "source", "sha256"}
`subject.json` is written last, so its presence means the folder is complete and matches its hashes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from dti.dreambooth import sha256_file
from dti.errors import DtiError
from dti.images import load_image
from dti.io import save_image, write_json
from dti.subject_schema import check_subject

SUBJECT_FILE = "subject.json"
_IMAGE_NAME = re.compile(r"\d{2,}\.png")


def prepare_subject(
    image_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    name: str,
    class_noun: str,
    kind: str,
    initializer: str | None = None,
    source: str = "",
) -> dict:
    """Write the subject's images as 00.png, 01.png, ... and then subject.json; return its content.

    Any stale subject.json is removed first, so a run that fails half-way never leaves a folder that
    looks complete. Images are handled one at a time to keep memory flat for large photos.
    """
    initializer = class_noun if initializer is None else initializer
    check_subject({"name": name, "class": class_noun, "kind": kind, "initializer": initializer}, "prepare_subject")
    if not image_paths:
        raise DtiError(f"subject {name}: no images given")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUBJECT_FILE).unlink(missing_ok=True)

    width = max(2, len(str(len(image_paths) - 1)))
    images, hashes = [], {}
    for index, path in enumerate(image_paths):
        image_name = f"{index:0{width}d}.png"
        save_image(out_dir / image_name, load_image(path))
        images.append(image_name)
        hashes[image_name] = sha256_file(out_dir / image_name)
    # Images left over from an earlier, larger version of this subject would be picked up by globbing.
    for stale in out_dir.glob("*.png"):
        if _IMAGE_NAME.fullmatch(stale.name) and stale.name not in hashes:
            stale.unlink()

    meta = {
        "name": name,
        "class": class_noun,
        "kind": kind,
        "initializer": initializer,
        "images": images,
        "source": source,
        "sha256": hashes,
    }
    write_json(out_dir / SUBJECT_FILE, meta)
    return meta


def load_subject(subject_dir: str | os.PathLike, *, verify_images: bool = True) -> dict:
    """Read and validate `subject_dir/subject.json`; with `verify_images`, also check the PNG hashes."""
    path = Path(subject_dir) / SUBJECT_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DtiError(f"subject file not found: {path} (was the subject prepared?)") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DtiError(f"cannot read subject file {path}: {err}") from err
    if not isinstance(meta, dict):
        raise DtiError(f"{path}: expected a JSON object")

    expected_types = {"name": str, "class": str, "kind": str, "initializer": str, "images": list,
                      "source": str, "sha256": dict}
    for key, typ in expected_types.items():
        if key not in meta:
            raise DtiError(f"{path}: missing key {key!r}")
        if not isinstance(meta[key], typ):
            raise DtiError(f"{path}: key {key!r} must be a {typ.__name__}, got {type(meta[key]).__name__}")
    check_subject(meta, str(path))

    images = meta["images"]
    if not images:
        raise DtiError(f"{path}: key 'images' is empty")
    for image in images:
        # Plain file names only: subject.json must not point outside its folder.
        if not isinstance(image, str) or Path(image).name != image or image.startswith("."):
            raise DtiError(f"{path}: key 'images' holds an invalid file name {image!r}")
    if len(set(images)) != len(images) or set(meta["sha256"]) != set(images):
        raise DtiError(f"{path}: key 'sha256' must have exactly one entry per name in 'images'")
    if verify_images:
        for image in images:
            file = Path(subject_dir) / image
            if not file.is_file():
                raise DtiError(f"{path}: image {file} is missing")
            actual = sha256_file(file)
            if actual != meta["sha256"][image]:
                raise DtiError(f"{file}: sha256 {actual} does not match {meta['sha256'][image]} in {path}")
    return meta

"""Reference masks: keep only the subject of each reference photo before the image metrics see it.

Layout (as the DTI authors' `--mask_dir`): one greyscale PNG per reference image,
`{mask_dir}/{subject}/{image stem}.png`, where the stem is that of the prepared reference (`00`, `01`,
... in the order of the source photos; for DreamBooth the same names as the dataset's `00.jpg`, ...).
A mask has the size of its photo; white keeps a pixel, black blanks it, grey weighs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from dti.errors import DtiError


def mask_path(mask_dir: str | os.PathLike, image_name: str) -> Path:
    return Path(mask_dir) / f"{Path(image_name).stem}.png"


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """The mask as float weights in [0, 1], shape (height, width)."""
    path = Path(path)
    if not path.is_file():
        raise DtiError(f"reference mask not found: {path}")
    try:
        with Image.open(path) as opened:
            return np.asarray(opened.convert("L"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as err:
        raise DtiError(f"cannot read reference mask {path}: {err}") from err


def apply_mask(image: Image.Image, mask: np.ndarray, where: str | os.PathLike) -> Image.Image:
    """`image` multiplied by `mask` pixel by pixel (rounded back to 8 bits)."""
    if mask.shape != (image.height, image.width):
        raise DtiError(f"reference mask {where} is {mask.shape[1]}x{mask.shape[0]} px but its photo is "
                       f"{image.width}x{image.height} px")
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) * mask[..., None]
    return Image.fromarray(np.rint(pixels).astype(np.uint8))


def mask_references(images: list[Image.Image], names: list[str],
                    mask_dir: str | os.PathLike) -> list[Image.Image]:
    """Every reference multiplied by its mask; a missing or mismatched mask is a DtiError naming it."""
    paths = [mask_path(mask_dir, name) for name in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:  # all of them at once, before any work
        raise DtiError(f"reference mask(s) not found: {', '.join(missing)}")
    return [apply_mask(image, load_mask(path), path) for image, path in zip(images, paths, strict=True)]

"""Reading subject images: upright, fully decoded RGB, or a DtiError that names the file."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageOps

from dti.errors import DtiError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})

# Transparent pixels become white: a cut-out subject on white is what a viewer shows, whereas dropping
# the alpha channel would expose whatever colour happens to be stored under it.
_BACKGROUND = (255, 255, 255)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open `path` as an RGB image with its EXIF orientation applied.

    The pixels are decoded here (not lazily), so a truncated or corrupt file fails now, naming the path,
    instead of deep inside training. Truncated data is never padded: PIL's LOAD_TRUNCATED_IMAGES must stay
    off for this to hold.
    """
    path = Path(path)
    if not path.is_file():
        raise DtiError(f"image file not found: {path}")
    try:
        with Image.open(path) as opened:
            opened.load()
            upright = ImageOps.exif_transpose(opened)
            return _to_rgb(upright)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # UnidentifiedImageError and "image file is truncated" are both OSErrors.
        raise DtiError(f"cannot read image {path}: {err}") from err


def _to_rgb(img: Image.Image) -> Image.Image:
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside `folder` (jpg, jpeg, png, webp; any case), sorted by name.

    Hidden files are skipped: macOS leaves `._00.jpg` metadata files beside copied photos.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DtiError(f"image folder not found: {folder}")
    found = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not found:
        raise DtiError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {folder}")
    return found

"""Reading subject images: upright, fully decoded 8-bit RGB, or a DtiError that names the file.

A photo is JPEG, PNG or WebP (README, "Photos"), told by its bytes, never by its name: load_image opens
files with those Pillow plugins only (PHOTO_FORMATS), so a file named x.png that is really a TIFF, a GIF
or an EPS is refused, and no other plugin ever parses a user's file (the EPS one runs Ghostscript).

Whatever is opened decodes to the picture a viewer shows:
- transparency (an alpha band, a palette's alpha, a tRNS colour key) is composited onto white;
- wide grey data (16-bit PNGs: I;16, I;16B, I;16L; mode I, 32-bit integers; mode F, floating point) is
  mapped to 8 bits, never clipped: integer grey within 0..65535 on the 16-bit scale (divided by 257, as a
  viewer shows it); integers beyond it by their own range (the brightest value present becomes 255); a
  float image within [0, 1] reads as 0..1, any other by its own range; negative values shift the range
  down; NaN or infinite values are refused;
- CMYK, YCbCr and HSV are converted to RGB; LAB (D50, as in TIFF) exactly, through LittleCMS.
Time and memory stay bounded whatever the file claims: sizes are checked from the header before any
decoding, an image with more than MAX_PIXELS or an aspect ratio beyond MAX_ASPECT is refused, and one
whose longer side exceeds MAX_SIDE is reduced by an integer factor while decoding (JPEG's DCT scaling)
or right after (a box filter).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dti.errors import DtiError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
# The Pillow plugins a photo may be opened with, whatever its name (JPEG includes phones' MPO pictures).
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP")
MAX_SIDE = 4096  # longer side kept; training crops at most ~1024 px, DreamBooth's photos are <= 2048
MAX_PIXELS = 1 << 26  # 67 megapixels decoded at most (about 200 MB as RGB)
MAX_ASPECT = 4.0  # a longer side beyond 4x the shorter leaves the subject a sliver of every square crop

# Transparent pixels become white: a cut-out subject on white is what a viewer shows, whereas dropping
# the alpha channel would expose whatever colour happens to be stored under it.
_BACKGROUND = (255, 255, 255)
_WIDE = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}


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
        with warnings.catch_warnings():
            # Pillow warns above its own pixel limit; ours is lower and refuses with a clear message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path, formats=PHOTO_FORMATS)
        with opened:
            _check_shape(path, opened.size)
            factor = _factor(opened.size)
            if factor > 1:  # JPEG decodes at 1/2, 1/4 or 1/8 scale directly (a no-op for other formats)
                opened.draft(opened.mode, tuple(-(-side // factor) for side in opened.size))
            _check_pixels(path, opened.size)
            opened.load()
            rgb = to_rgb(ImageOps.exif_transpose(opened))
        factor = _factor(rgb.size)
        return rgb.reduce(factor) if factor > 1 else rgb
    except Image.DecompressionBombError as err:  # beyond Pillow's own limit, far beyond ours
        raise DtiError(f"image {path} has more than the {MAX_PIXELS / 1e6:.0f} megapixels this tool decodes ({err}); "
                       "downscale it") from err
    except UnidentifiedImageError as err:  # not JPEG, PNG or WebP by its bytes (or no image at all)
        raise DtiError(f"cannot read image {path}: not a JPEG, PNG or WebP file (the formats photos may be); "
                       "convert it to one of them") from err
    except (OSError, SyntaxError, ValueError) as err:
        # "image file is truncated" is an OSError too.
        raise DtiError(f"cannot read image {path}: {' '.join(str(err).split())}") from err


def _check_shape(path: Path, size: tuple[int, int]) -> None:
    w, h = size
    if min(w, h) < 1:
        raise DtiError(f"image {path} has no pixels ({w}x{h})")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise DtiError(f"image {path} is {w}x{h}, an aspect ratio of {max(w, h) / min(w, h):.1f}:1; "
                       f"crop it to at most {MAX_ASPECT:g}:1")


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise DtiError(f"image {path} is {w}x{h} ({w * h / 1e6:.0f} megapixels), more than the "
                       f"{MAX_PIXELS / 1e6:.0f} megapixels this tool decodes; downscale it")


def _factor(size: tuple[int, int]) -> int:
    """The smallest integer reduction that brings the longer side to MAX_SIDE or less."""
    return -(-max(size) // MAX_SIDE)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB: wide integer and float modes scaled, transparency onto white."""
    if img.mode in _WIDE:
        img = _to_eight_bit(img)
    if img.mode == "LAB":  # Pillow's own LAB conversion interpolates a coarse table: off by up to 16 levels
        from PIL import ImageCms

        return ImageCms.applyTransform(img, _lab_to_srgb())
    if img.mode in _PREMULTIPLIED:
        img = img.convert(_PREMULTIPLIED[img.mode])
    has_alpha = (img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
                 or (img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA"))
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


@functools.cache
def _lab_to_srgb():
    from PIL import ImageCms

    return ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB",
                                   flags=ImageCms.Flags.NOOPTIMIZE)


def _to_eight_bit(img: Image.Image) -> Image.Image:
    """Wide grey (16-bit and 32-bit integer, float) as 8-bit L, by the image's own range (module docstring);
    a tRNS colour key becomes an alpha band. ValueError (named by load_image) for NaN or infinite values."""
    raw = np.asarray(img)
    values = raw.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"a {img.mode} image with NaN or infinite values has no picture to show")
    black = min(0.0, float(values.min()))
    white = float(values.max())
    if img.mode == "F" and black == 0 and white <= 1:  # a float picture's white is 1.0
        white = 1.0
    elif img.mode != "F" and black == 0:  # integer grey within 16 bits: 65535 is white, as a viewer shows it
        white = max(white, 65535.0)
    scale = 255 / (white - black) if white > black else 0.0
    grey = Image.fromarray(np.rint((values - black) * scale).astype(np.uint8))
    key = img.info.get("transparency")
    if isinstance(key, int) and img.mode != "F":
        alpha = Image.fromarray(np.where(raw == key, 0, 255).astype(np.uint8))
        return Image.merge("LA", (grey, alpha))
    return grey


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

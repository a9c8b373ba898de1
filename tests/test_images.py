"""Image decoding: every Pillow mode and bit depth against a reference rendering, and bounded cost.

The reference is a picture of flat colour tiles (and grey tiles for grey modes) with opaque, half and fully
transparent columns. Each case writes it in one mode and format, with the mode's own encoding computed here
in numpy (not by Pillow's converters), and the decoded RGB must match what a viewer shows: the colours,
composited onto white where transparent. Photo files (JPEG, PNG, WebP) go through load_image; modes only
other formats carry (TIFF, GIF, BMP, PGM) are decoded by Pillow here and go through to_rgb, because
load_image refuses those formats (tests/test_hardening.py).
"""

from __future__ import annotations

import colorsys
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from dti import images
from dti.errors import DtiError
from dti.images import load_image, to_rgb

TILE, COLS, ROWS = 8, 4, 3
COLOURS = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (0, 0, 0)],
                   dtype=np.uint8)
GREYS = np.array([0, 17, 40, 64, 90, 127, 128, 160, 200, 222, 250, 255], dtype=np.uint8)
ALPHAS = np.array([255, 128, 0, 255], dtype=np.uint8)  # per tile column


def _tiles(values: np.ndarray) -> np.ndarray:
    """ROWS x COLS tiles of TILE px, tile i holding values[i]."""
    grid = values.reshape(ROWS, COLS, *values.shape[1:])
    return np.repeat(np.repeat(grid, TILE, axis=0), TILE, axis=1)


RGB = _tiles(COLOURS)  # (24, 32, 3)
GREY = _tiles(GREYS)  # (24, 32)
ALPHA = np.tile(np.repeat(ALPHAS, TILE), (ROWS * TILE, 1))  # (24, 32)
GREY_RGB = np.repeat(GREY[..., None], 3, axis=2)


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255
    return np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)


def _png16(array: np.ndarray, colour_type: int, trns: bytes | None = None) -> bytes:
    """A 16-bit PNG written by hand (Pillow writes 16-bit grey only)."""
    h, w = array.shape[:2]
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + (chunk(b"tRNS", trns) if trns else b"")
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _write(tmp: Path, name: str, data: bytes) -> Path | Image.Image:
    (tmp / name).write_bytes(data)
    return _photo_or_decoded(tmp / name)


def _photo_or_decoded(path: Path) -> Path | Image.Image:
    """A photo's path for load_image, or another format's image decoded in memory for to_rgb."""
    if path.suffix in (".jpeg", ".png", ".webp"):
        return path
    with Image.open(path) as img:
        img.load()
        return img.copy()


def _palette_image(transparency=None) -> Image.Image:
    img = Image.fromarray(np.arange(COLS * ROWS, dtype=np.uint8).reshape(ROWS, COLS).repeat(TILE, 0).repeat(TILE, 1))
    img = img.convert("P")
    img.putpalette(COLOURS.tobytes())
    if transparency is not None:
        img.info["transparency"] = transparency
    return img


def _palette_alpha() -> np.ndarray:
    """Alpha of the palette cases: tile i has alpha (per entry) = ALPHAS of its column."""
    return ALPHA


def _ycbcr(rgb: np.ndarray) -> np.ndarray:  # JFIF's full-range transform
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.clip(np.rint(np.stack([y, cb, cr], -1)), 0, 255).astype(np.uint8)


def _hsv(rgb: np.ndarray) -> np.ndarray:
    flat = [colorsys.rgb_to_hsv(*(c / 255 for c in px)) for px in rgb.reshape(-1, 3)]
    return np.rint(np.array(flat) * 255).astype(np.uint8).reshape(rgb.shape)


# sRGB (linear) to XYZ relative to D50, Bradford-adapted: the ICC convention LittleCMS and TIFF CIELab use.
_SRGB_TO_XYZ_D50 = np.array([[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169],
                             [0.0139322, 0.0971045, 0.7141733]])
_D50 = np.array([0.96422, 1.0, 0.82521])
_EPS = 6 / 29


def _lab(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D50) of sRGB in 8-bit TIFF CIELab layout, which is Pillow's LAB: L scaled to 0..255, a and
    b signed bytes."""
    c = rgb.astype(np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ_D50.T / _D50
    f = np.where(xyz > _EPS**3, np.cbrt(xyz), xyz / (3 * _EPS**2) + 4 / 29)
    lab = np.rint(np.stack([(116 * f[..., 1] - 16) * 2.55, 500 * (f[..., 0] - f[..., 1]),
                            200 * (f[..., 1] - f[..., 2])], -1))
    return (np.clip(lab, [0, -128, -128], [255, 127, 127]) % 256).astype(np.uint8)


def _lab_to_rgb(lab8: np.ndarray) -> np.ndarray:
    """The exact inverse of _lab before its rounding: what 8-bit Lab values show as on an sRGB screen (8-bit
    Lab is coarse, so near a gamut edge this differs from the colour the Lab values were made from)."""
    lab = lab8.astype(np.float64)
    lightness, a, b = lab[..., 0] / 2.55, (lab[..., 1] + 128) % 256 - 128, (lab[..., 2] + 128) % 256 - 128
    fy = (lightness + 16) / 116
    f = np.stack([fy + a / 500, fy, fy - b / 200], -1)
    xyz = np.where(f > _EPS, f**3, 3 * _EPS**2 * (f - 4 / 29)) * _D50
    linear = np.clip(xyz @ np.linalg.inv(_SRGB_TO_XYZ_D50).T, 0, 1)
    c = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.rint(c * 255).astype(np.uint8)


def _save(img: Image.Image, tmp: Path, fmt: str, **options) -> Path | Image.Image:
    path = tmp / f"case.{fmt.lower()}"
    img.save(path, fmt, **options)
    return _photo_or_decoded(path)


LOSSLESS, JPEG = (1, 0.5), (60, 4.0)  # tolerance: (max, mean) absolute difference per channel value

# case: (build(tmp) -> a path to decode with load_image, or an in-memory Image for to_rgb; expected; tolerance)
CASES = {
    "1 png": (lambda t: _save(Image.fromarray(GREY >= 128), t, "PNG"),
              np.repeat(np.where(GREY >= 128, 255, 0).astype(np.uint8)[..., None], 3, 2), LOSSLESS),
    "L png": (lambda t: _save(Image.fromarray(GREY), t, "PNG"), GREY_RGB, LOSSLESS),
    "L jpeg": (lambda t: _save(Image.fromarray(GREY), t, "JPEG", quality=95, subsampling=0), GREY_RGB, JPEG),
    "L + tRNS png": (lambda t: _save(Image.fromarray(GREY), t, "PNG", transparency=int(GREYS[4])),
                     _on_white(GREY_RGB, np.where(GREY == GREYS[4], 0, 255)), LOSSLESS),
    "LA png": (lambda t: _save(Image.fromarray(np.stack([GREY, ALPHA], -1), "LA"), t, "PNG"),
               _on_white(GREY_RGB, ALPHA), LOSSLESS),
    "La memory": (lambda t: Image.frombytes("La", (32, 24), np.stack(  # premultiplied grey
                      [np.rint(GREY * (ALPHA / 255)).astype(np.uint8), ALPHA], -1).tobytes()),
                  _on_white(GREY_RGB, ALPHA), (2, 0.5)),
    "P png": (lambda t: _save(_palette_image(), t, "PNG"), RGB, LOSSLESS),
    "P gif": (lambda t: _save(_palette_image(), t, "GIF"), RGB, LOSSLESS),
    "P bmp": (lambda t: _save(_palette_image(), t, "BMP"), RGB, LOSSLESS),
    "P + transparent index png": (lambda t: _save(_palette_image(), t, "PNG", transparency=5),
                                  _on_white(RGB, np.where(_tiles(np.arange(12)) == 5, 0, 255)), LOSSLESS),
    "P + transparent index gif": (lambda t: _save(_palette_image(), t, "GIF", transparency=5),
                                  _on_white(RGB, np.where(_tiles(np.arange(12)) == 5, 0, 255)), LOSSLESS),
    "P + alpha per entry png": (lambda t: _save(_palette_image(), t, "PNG",
                                                transparency=bytes(np.tile(ALPHAS, ROWS).tolist())),
                                _on_white(RGB, _palette_alpha()), LOSSLESS),
    "PA memory": (lambda t: Image.merge("PA", (_palette_image(), Image.fromarray(ALPHA))),
                  _on_white(RGB, ALPHA), LOSSLESS),
    "RGB png": (lambda t: _save(Image.fromarray(RGB), t, "PNG"), RGB, LOSSLESS),
    "RGB jpeg": (lambda t: _save(Image.fromarray(RGB), t, "JPEG", quality=95, subsampling=0), RGB, JPEG),
    "RGB webp": (lambda t: _save(Image.fromarray(RGB), t, "WEBP", lossless=True), RGB, LOSSLESS),
    "RGB tiff": (lambda t: _save(Image.fromarray(RGB), t, "TIFF"), RGB, LOSSLESS),
    "RGB bmp": (lambda t: _save(Image.fromarray(RGB), t, "BMP"), RGB, LOSSLESS),
    "RGB + tRNS png": (lambda t: _save(Image.fromarray(RGB), t, "PNG", transparency=tuple(int(c) for c in COLOURS[2])),
                       _on_white(RGB, np.where((RGB == COLOURS[2]).all(-1), 0, 255)), LOSSLESS),
    "RGBA png": (lambda t: _save(Image.fromarray(np.dstack([RGB, ALPHA])), t, "PNG"), _on_white(RGB, ALPHA), LOSSLESS),
    "RGBA webp": (lambda t: _save(Image.fromarray(np.dstack([RGB, ALPHA])), t, "WEBP", lossless=True, exact=True),
                  _on_white(RGB, ALPHA), LOSSLESS),
    "RGBA tiff": (lambda t: _save(Image.fromarray(np.dstack([RGB, ALPHA])), t, "TIFF"), _on_white(RGB, ALPHA),
                  LOSSLESS),
    "RGBa memory": (lambda t: Image.frombytes("RGBa", (32, 24), np.dstack(
                        [np.rint(RGB * (ALPHA[..., None] / 255)).astype(np.uint8), ALPHA]).tobytes()),
                    _on_white(RGB, ALPHA), (2, 0.5)),
    "CMYK tiff": (lambda t: _save(Image.frombytes("CMYK", (32, 24), np.dstack([255 - RGB, np.zeros_like(GREY)])
                                                  .tobytes()), t, "TIFF"), RGB, LOSSLESS),
    "CMYK jpeg": (lambda t: _save(Image.frombytes("CMYK", (32, 24), np.dstack([255 - RGB, np.zeros_like(GREY)])
                                                  .tobytes()), t, "JPEG", quality=95, subsampling=0), RGB, JPEG),
    "YCbCr memory": (lambda t: Image.frombytes("YCbCr", (32, 24), _ycbcr(RGB).tobytes()), RGB, (3, 1.0)),
    "YCbCr jpeg": (lambda t: _save(Image.frombytes("YCbCr", (32, 24), _ycbcr(RGB).tobytes()), t, "JPEG",
                                   quality=95, subsampling=0), RGB, JPEG),
    "LAB tiff": (lambda t: _save(Image.frombytes("LAB", (32, 24), _lab(RGB).tobytes()), t, "TIFF"),
                 _lab_to_rgb(_lab(RGB)), (1, 0.1)),
    "HSV memory": (lambda t: Image.frombytes("HSV", (32, 24), _hsv(RGB).tobytes()), RGB, (3, 1.0)),
    "I;16 png": (lambda t: _save(Image.frombytes("I;16", (32, 24), (GREY.astype("<u2") * 257).tobytes()), t, "PNG"),
                 GREY_RGB, LOSSLESS),
    "I;16 png off-grid": (lambda t: _write(t, "c.png", _png16(np.minimum(GREY.astype(np.uint32) * 257 + 100, 65535), 0)), GREY_RGB, LOSSLESS),  # 100/257 rounds down
    "I;16 + tRNS png": (lambda t: _write(t, "c.png",
                            _png16(GREY.astype(np.uint32) * 257, 0, trns=struct.pack(">H", int(GREYS[4]) * 257))), _on_white(GREY_RGB, np.where(GREY == GREYS[4], 0, 255)), LOSSLESS),
    "I;16B tiff": (lambda t: _save(Image.frombytes("I;16B", (32, 24), (GREY.astype(">u2") * 257).tobytes()), t,
                                   "TIFF"), GREY_RGB, LOSSLESS),
    "I;16L tiff": (lambda t: _save(Image.frombytes("I;16L", (32, 24), (GREY.astype("<u2") * 257).tobytes()), t,
                                   "TIFF"), GREY_RGB, LOSSLESS),
    "I;16 pgm": (lambda t: _write(t, "c.pgm", b"P5\n32 24\n65535\n" + (GREY.astype(">u2") * 257).tobytes()), GREY_RGB, LOSSLESS),
    "I tiff": (lambda t: _save(Image.fromarray(GREY.astype(np.int32) * 257), t, "TIFF"), GREY_RGB, LOSSLESS),
    "F tiff": (lambda t: _save(Image.fromarray(GREY.astype(np.float32) / 255), t, "TIFF"), GREY_RGB, LOSSLESS),
    "RGB 16-bit png": (lambda t: _write(t, "c.png", _png16(RGB.astype(np.uint32) * 257, 2)),
                       RGB, LOSSLESS),
    "RGBA 16-bit png": (lambda t: _write(t, "c.png",
                            _png16(np.dstack([RGB, ALPHA]).astype(np.uint32) * 257, 6)),
                        _on_white(RGB, ALPHA), LOSSLESS),
    "LA 16-bit png": (lambda t: _write(t, "c.png",
                          _png16(np.dstack([GREY, ALPHA]).astype(np.uint32) * 257, 4)),
                      _on_white(GREY_RGB, ALPHA), LOSSLESS),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_mode_decodes_to_the_reference(tmp_path, case):
    build, expected, (max_diff, mean_diff) = CASES[case]
    source = build(tmp_path)
    img = load_image(source) if isinstance(source, Path) else to_rgb(source)
    assert img.mode == "RGB" and img.size == (COLS * TILE, ROWS * TILE)
    diff = np.abs(np.asarray(img).astype(int) - expected.astype(int))
    assert diff.max() <= max_diff and diff.mean() <= mean_diff, (case, diff.max(), diff.mean())


# --- bounded time and memory ---------------------------------------------------------------------------
def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims a size and holds no pixels: what Pillow reads before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def decoded_sizes(monkeypatch):
    """The sizes at which images get decoded (ImageFile.load), to prove refusals come before decoding."""
    sizes, real = [], ImageFile.ImageFile.load

    def load(self):
        sizes.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return sizes


@pytest.mark.parametrize(("width", "height", "needle"), [
    (20000, 20, "aspect ratio of 1000.0:1"),  # took minutes and gigabytes downstream before
    (41, 10, "aspect ratio of 4.1:1"),
    (9000, 9000, "81 megapixels"),  # below Pillow's own limit, above ours
    (100_000, 100_000, "more than the 67 megapixels"),  # a decompression bomb by Pillow's measure too
])
def test_absurd_images_are_refused_before_decoding(tmp_path, decoded_sizes, width, height, needle):
    path = _png_header_only(tmp_path / "claims.png", width, height)
    with pytest.raises(DtiError, match="claims.png") as err:
        load_image(path)
    assert needle in str(err.value)
    assert decoded_sizes == []


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_large_images_are_reduced_while_or_right_after_decoding(tmp_path, decoded_sizes, monkeypatch, fmt):
    monkeypatch.setattr(images, "MAX_SIDE", 64)
    big = Image.fromarray(np.kron(RGB, np.ones((10, 10, 1), dtype=np.uint8)))  # 320 x 240, the same tiles
    path = tmp_path / f"big.{fmt.lower()}"
    big.save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    img = load_image(path)
    assert max(img.size) <= 64 and img.size[0] / img.size[1] == pytest.approx(320 / 240, rel=0.05)
    if fmt == "JPEG":  # decoded at 1/4 scale by the JPEG decoder itself, never at full size
        assert set(decoded_sizes) == {(80, 60)}
    small = np.asarray(img.resize((COLS * TILE, ROWS * TILE), Image.BOX)).astype(int)
    centres = small[TILE // 2 :: TILE, TILE // 2 :: TILE]  # each tile's colour survives the reduction
    assert np.abs(centres - COLOURS.reshape(ROWS, COLS, 3)).max() <= 12

"""Synthetic subjects for the offline demo and the tests: no downloads, no external assets.

A subject is a procedurally drawn sprite with a fixed identity (shape, colours, pattern; for "live"
subjects a small creature with a face) that each image shows at a different position, scale, tilt and
background, like a few casual photos of one thing. Everything follows from (name, seed): the identity
is drawn first from a numpy Generator, then one pose per image, so the first k images do not depend on
how many are requested.
"""

from __future__ import annotations

import colorsys
import hashlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dti.errors import DtiError
from dti.terms import LIVE, check_kind

_SPRITE = 512  # drawing resolution; downsampled per image, which also anti-aliases the edges
_SHAPES = ("circle", "square", "triangle", "hexagon", "star", "diamond")
_PATTERNS = ("stripes", "dots", "checker", "rings")


def _rgb(hue: float, sat: float, val: float) -> tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue % 1.0, sat, val))


def _name_key(name: str) -> int:
    # Python's hash() is salted per process; a digest keeps subjects identical across runs.
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def _identity(rng: np.random.Generator) -> dict:
    hue = rng.uniform()
    return {
        "shape": _SHAPES[rng.integers(len(_SHAPES))],
        "pattern": _PATTERNS[rng.integers(len(_PATTERNS))],
        "body": _rgb(hue, rng.uniform(0.6, 0.95), rng.uniform(0.7, 0.95)),
        # a roughly complementary hue keeps the pattern visible at small sizes
        "accent": _rgb(hue + 0.5 + rng.uniform(-0.12, 0.12), rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.95)),
        "outline": _rgb(hue, 0.6, 0.2),
        "period": int(rng.integers(36, 72)),
        "pattern_angle": float(rng.uniform(0, 180)),
    }


def _polygon(shape: str, c: float, r: float) -> list[tuple[float, float]]:
    if shape == "star":
        radii, count, start = [r, 0.45 * r], 10, -np.pi / 2
    else:
        count, start = {"square": (4, np.pi / 4), "triangle": (3, -np.pi / 2),
                        "hexagon": (6, 0.0), "diamond": (4, 0.0)}[shape]
        radii = [r]
    return [
        (c + radii[i % len(radii)] * np.cos(start + 2 * np.pi * i / count),
         c + radii[i % len(radii)] * np.sin(start + 2 * np.pi * i / count))
        for i in range(count)
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, c: float, r: float, **style) -> None:
    if shape == "circle":
        draw.ellipse([c - r, c - r, c + r, c + r], **style)
    else:
        draw.polygon(_polygon(shape, c, r), **style)


def _pattern_layer(ident: dict, size: int) -> Image.Image:
    """The body colour covered by the identity's pattern in the accent colour, full square."""
    layer = Image.new("RGB", (size, size), ident["body"])
    draw = ImageDraw.Draw(layer)
    p, accent = ident["period"], ident["accent"]
    if ident["pattern"] == "stripes":
        for x in range(-size, 2 * size, p):
            draw.rectangle([x, -size, x + p // 2, 2 * size], fill=accent)
        layer = layer.rotate(ident["pattern_angle"], resample=Image.Resampling.BICUBIC, fillcolor=ident["body"])
    elif ident["pattern"] == "dots":
        for y in range(p // 2, size, p):
            for x in range(p // 2 + (p // 2 if (y // p) % 2 else 0), size, p):
                draw.ellipse([x - p / 4, y - p / 4, x + p / 4, y + p / 4], fill=accent)
    elif ident["pattern"] == "checker":
        for y in range(0, size, p):
            for x in range(0, size, p):
                if (x // p + y // p) % 2:
                    draw.rectangle([x, y, x + p - 1, y + p - 1], fill=accent)
    else:  # rings
        c = size / 2
        for r in range(size, 0, -p):
            draw.ellipse([c - r, c - r, c + r, c + r], fill=accent if (r // p) % 2 else ident["body"])
    return layer


def _object_sprite(ident: dict) -> Image.Image:
    c, r = _SPRITE / 2, _SPRITE * 0.46
    mask = Image.new("L", (_SPRITE, _SPRITE), 0)
    _draw_shape(ImageDraw.Draw(mask), ident["shape"], c, r, fill=255)
    sprite = _pattern_layer(ident, _SPRITE).convert("RGBA")
    sprite.putalpha(mask)
    _draw_shape(ImageDraw.Draw(sprite), ident["shape"], c, r, outline=ident["outline"] + (255,), width=10)
    return sprite


def _live_sprite(ident: dict) -> Image.Image:
    """A small four-legged creature: patterned body, head with ears, eyes and nose, and a tail."""
    s = _SPRITE
    mask = Image.new("L", (s, s), 0)
    m = ImageDraw.Draw(mask)
    body = [0.12 * s, 0.42 * s, 0.72 * s, 0.78 * s]
    head = [0.56 * s, 0.16 * s, 0.90 * s, 0.50 * s]
    ears = [[(0.60 * s, 0.24 * s), (0.64 * s, 0.06 * s), (0.71 * s, 0.19 * s)],
            [(0.76 * s, 0.19 * s), (0.84 * s, 0.05 * s), (0.87 * s, 0.25 * s)]]
    legs = [[x * s, 0.70 * s, (x + 0.08) * s, 0.92 * s] for x in (0.18, 0.32, 0.50, 0.62)]
    tail = [(0.14 * s, 0.52 * s), (0.02 * s, 0.30 * s), (0.07 * s, 0.28 * s), (0.20 * s, 0.48 * s)]
    m.ellipse(body, fill=255)
    m.ellipse(head, fill=255)
    for part in ears + [tail]:
        m.polygon(part, fill=255)
    for leg in legs:
        m.rounded_rectangle(leg, radius=0.03 * s, fill=255)
    sprite = _pattern_layer(ident, s).convert("RGBA")
    sprite.putalpha(mask)
    # outline: the mask's edge, darkened
    edge = mask.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.MaxFilter(7))
    sprite.paste(Image.new("RGBA", (s, s), ident["outline"] + (255,)), (0, 0), edge)
    face = ImageDraw.Draw(sprite)
    for ex in (0.68, 0.80):
        face.ellipse([(ex - 0.035) * s, 0.28 * s, (ex + 0.035) * s, 0.35 * s], fill=(255, 255, 255, 255))
        face.ellipse([(ex - 0.015) * s, 0.30 * s, (ex + 0.015) * s, 0.34 * s], fill=(15, 15, 15, 255))
    face.ellipse([0.84 * s, 0.38 * s, 0.89 * s, 0.42 * s], fill=(40, 20, 20, 255))
    return sprite


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A 'floor and wall' scene: two gradients split at a random horizon, plus sensor-like noise."""
    hue = rng.uniform()
    wall_top, wall_bottom = (np.array(_rgb(hue + rng.uniform(-0.1, 0.1), rng.uniform(0, 0.5),
                                            rng.uniform(0.5, 1.0)), float) for _ in range(2))
    floor = np.array(_rgb(rng.uniform(), rng.uniform(0.1, 0.6), rng.uniform(0.25, 0.8)), float)
    horizon = rng.uniform(0.45, 0.8)
    t = np.linspace(0.0, 1.0, size)[:, None]
    wall = wall_top * (1 - t) + wall_bottom * t
    rows = np.where(t < horizon, wall, floor * (0.8 + 0.4 * t))
    pixels = np.repeat(rows[:, None, :], size, axis=1)
    pixels = pixels + rng.normal(0.0, 6.0, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_synthetic_subject(name: str, kind: str, n_images: int, size: int, seed: int) -> list[Image.Image]:
    """`n_images` square RGB images (`size` px) of one synthetic subject, identical for the same inputs."""
    check_kind(kind, f"synthetic subject {name!r}: kind")
    if not isinstance(n_images, int) or n_images < 1:
        raise DtiError(f"synthetic subject {name!r}: n_images must be a positive integer, got {n_images!r}")
    if not isinstance(size, int) or size < 16:
        raise DtiError(f"synthetic subject {name!r}: size must be an integer >= 16, got {size!r}")
    rng = np.random.default_rng([int(seed), _name_key(name)])
    ident = _identity(rng)
    sprite = _live_sprite(ident) if kind == LIVE else _object_sprite(ident)

    images = []
    for _ in range(n_images):
        canvas = _background(rng, size).convert("RGBA")
        side = max(8, int(round(size * rng.uniform(0.4, 0.75))))
        posed = sprite.rotate(float(rng.uniform(-25, 25)), resample=Image.Resampling.BICUBIC, expand=True)
        posed = posed.resize((side, side), Image.Resampling.LANCZOS)
        x = int(rng.integers(0, size - side + 1))
        y = int(rng.integers(0, size - side + 1))
        canvas.alpha_composite(posed, dest=(x, y))
        images.append(canvas.convert("RGB"))
    return images

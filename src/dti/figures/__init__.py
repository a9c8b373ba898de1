"""Figures of the analyses and the report: matplotlib (Agg, no display), PNG for the report and PDF for papers.

Every figure is saved as both, each atomically; the numbers behind it are written as Parquet beside it by
the caller, so a figure can be redrawn in another style without rerunning anything. Figures name methods
and metrics by their display names (dti.terms.display_name); the Parquet files keep the keys.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: jobs and tests have no display

METHOD_COLORS = {"dti": "#1f5fbf", "ti": "#d1372e", "crossinit": "#2e9a4a", "ti_rescaled": "#e08a1e"}
# The other registered methods take these in the registry's order (dti.methods.METHODS), one each: chosen
# greedily to lie far apart from one another and from METHOD_COLORS in CIELAB (every pair at least 20
# apart), none too light to read on white.
METHOD_PALETTE = ("#8c6d31", "#7b4fa0", "#17a2b8", "#e7298a", "#e7969c", "#636363", "#843c39", "#9e9ac8",
                  "#e377c2", "#8ca252", "#fc8d62", "#1f78b4", "#66a61e", "#bd9e39", "#a65628", "#e6550d",
                  "#1b9e77", "#d6616b", "#393b79", "#999999")
SCHEME_STYLES = {"slerp": "-", "lerp": "--"}
_GOLDEN = 0.6180339887498949
PNG_DPI = 110


def metric_name(label: str) -> str:
    """'dino (timm:vit_small...)' -> 'DINO': the axis says which metric, a footnote which model."""
    from dti.terms import display_name

    return display_name(label.split(" ", 1)[0])


def model_footnote(fig, *labels: str) -> None:
    fig.text(0.01, 0.0, "metric models: " + "; ".join(labels), fontsize=6.5, color="#666666", va="top")


def _spread_color(n: int) -> str:
    """The n-th of an endless sequence of hues a golden-ratio turn apart (a mid lightness, readable)."""
    from colorsys import hsv_to_rgb

    from matplotlib.colors import to_hex

    return to_hex(hsv_to_rgb((0.11 + n * _GOLDEN) % 1.0, 0.7, 0.72 if n % 2 else 0.55))


def method_color(method: str) -> str:
    """A method's colour in every figure: fixed for DTI, TI, CrossInit and TI-rescaled, then
    METHOD_PALETTE in the registry's order (so every registered method has its own, and registering one
    later changes no earlier method's colour); past the palette, and for names the registry does not hold,
    a hue of their own (from the registry index, or a CRC of the name)."""
    import zlib

    from dti.methods import METHODS

    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    others = [m for m in METHODS if m not in METHOD_COLORS]
    if method in others:
        index = others.index(method)
        return METHOD_PALETTE[index] if index < len(METHOD_PALETTE) else _spread_color(index)
    return _spread_color(zlib.crc32(str(method).encode()) % 1000)


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs):
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False,
                         "axes.spines.right": False, "legend.frameon": False, "pdf.fonttype": 42})
    return plt.subplots(rows, cols, figsize=(width, height), squeeze=False, **kwargs)


def save_figure(fig, png: str | os.PathLike, pdf: str | os.PathLike | None = None) -> None:
    """Write the figure as PNG (and PDF), each atomically, then free it."""
    import matplotlib.pyplot as plt

    from dti.io import atomic_path

    try:
        for path, fmt in ((png, "png"), (pdf, "pdf")):
            if path is None:
                continue
            with atomic_path(Path(path)) as tmp:
                fig.savefig(tmp, format=fmt, dpi=PNG_DPI, bbox_inches="tight",
                            metadata={"CreationDate": None} if fmt == "pdf" else {"Software": None})
    finally:
        plt.close(fig)


def thumbnail(path: str | os.PathLike, size: int):
    """An image scaled to fit size x size, as an array for imshow."""
    import numpy as np

    from dti.images import load_image

    image = load_image(path)
    image.thumbnail((size, size))
    return np.asarray(image)


def image_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def metric_axis_label(metric: str) -> str:
    """'dino' -> 'DINO (cosine similarity)': an axis names the metric and what its numbers are."""
    from dti.metrics.spec import METRICS
    from dti.terms import display_name

    score = METRICS[metric].score if metric in METRICS else None
    unit = {"cosine": "cosine similarity", "sigmoid": "match probability"}.get(score)
    return display_name(metric) + (f" ({unit})" if unit else "")

"""Interpolation figures: the measured curves along t, and the strip of images for each path."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dti.figures import (
    SCHEME_STYLES,
    image_axes,
    method_color,
    metric_name,
    model_footnote,
    new_figure,
    thumbnail,
)
from dti.terms import display_name


def variant_label(method: str, scheme: str) -> str:
    return f"{display_name(method)} ({scheme})"


def curves_figure(per_t: pd.DataFrame, *, title: str, image_metric: str, text_metric: str):
    """Three panels over t, one line per method and path: sim(A) - sim(B), text fidelity, |e(t)| / m."""
    fig, axes = new_figure(11.5, 3.6, 1, 3)
    panels = [("progress", f"sim(A) - sim(B), {metric_name(image_metric)}"),
              ("text", f"text fidelity, {metric_name(text_metric)}"), ("norm_ratio", "|e(t)| / vocabulary mean norm")]
    data = per_t.assign(progress=per_t["sim_a"] - per_t["sim_b"])
    for ax, (column, ylabel) in zip(axes[0], panels, strict=True):
        for (method, scheme), part in data.groupby(["method", "scheme"], sort=True):
            part = part.sort_values("t")
            ax.plot(part["t"], part[column], SCHEME_STYLES.get(scheme, "-"), color=method_color(method),
                    marker="o", markersize=3.5, label=variant_label(method, scheme))
        ax.set_xlabel("t  (0 = A, 1 = B)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(-0.03, 1.03)
    axes[0][2].axhline(1.0, color="#888888", linewidth=0.8, linestyle=":")
    axes[0][2].set_yscale("log")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, bbox_to_anchor=(0.5, 0.0))
    model_footnote(fig, image_metric, text_metric)
    return fig


def strip_figure(rows: pd.DataFrame, image_dir: Path, refs_a: list[Path], refs_b: list[Path], *, title: str,
                 thumb: int = 192):
    """Rows: the paths (method, scheme); columns: A's photo, the images at each t, B's photo."""
    variants = rows[["method", "scheme"]].drop_duplicates().sort_values(["method", "scheme"])
    ts = sorted(rows["t"].unique())
    n_cols = len(ts) + 2
    fig, axes = new_figure(1.25 * n_cols + 1.2, 1.3 * len(variants) + 0.6, len(variants), n_cols)
    for r, (method, scheme) in enumerate(variants.itertuples(index=False)):
        path = rows[(rows["method"] == method) & (rows["scheme"] == scheme)]
        cells = [refs_a[0], *[image_dir / path.loc[path["t"] == t, "image"].iloc[0] for t in ts], refs_b[0]]
        for c, image in enumerate(cells):
            ax = axes[r][c]
            ax.imshow(thumbnail(image, thumb))
            image_axes(ax)
            if r == 0:
                ax.set_title("A (photo)" if c == 0 else "B (photo)" if c == n_cols - 1 else f"t = {ts[c - 1]:g}",
                             fontsize=8)
        axes[r][0].set_ylabel(variant_label(method, scheme), fontsize=8, color=method_color(method))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig

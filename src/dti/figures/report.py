"""Figures made for the report: per-subject sample grids and the scores over training checkpoints."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

from dti.figures import METRIC_NAMES, image_axes, method_color, new_figure, thumbnail


def grid_figure(cells: pd.DataFrame, references: list[Path], *, methods: list[str], seeds: list[int], title: str,
                thumb: int = 192):
    """Top row: the reference photos; then one row per prompt and one column per method and seed.

    cells: rows with prompt_set, prompt_id, prompt, method, seed and path (the image file).
    """
    prompts = cells[["prompt_set", "prompt_id", "prompt"]].drop_duplicates().sort_values(["prompt_set", "prompt_id"])
    columns = [(m, s) for m in methods for s in seeds]
    fig, axes = new_figure(1.35 * len(columns) + 1.6, 1.4 * (len(prompts) + 1) + 0.5, len(prompts) + 1, len(columns))
    for c, ax in enumerate(axes[0]):
        image_axes(ax)
        if c < len(references):
            ax.imshow(thumbnail(references[c], thumb))
    axes[0][0].set_ylabel("reference\nphotos", fontsize=8)
    lookup = {(r.prompt_set, r.prompt_id, r.method, r.seed): r.path for r in cells.itertuples(index=False)}
    for r, prompt in enumerate(prompts.itertuples(index=False), start=1):
        for c, (method, seed) in enumerate(columns):
            ax = axes[r][c]
            image_axes(ax)
            path = lookup.get((prompt.prompt_set, prompt.prompt_id, method, seed))
            if path is not None:
                ax.imshow(thumbnail(path, thumb))
            if r == 1:
                ax.set_title(f"{method}\nseed {seed}", fontsize=8, color=method_color(method))
        axes[r][0].set_ylabel("\n".join(textwrap.wrap(f"{prompt.prompt_set}: {prompt.prompt}", 26)[:5]), fontsize=6.5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def checkpoint_figure(table: pd.DataFrame, *, title: str):
    """Rows: backbones; columns: metrics; each method's mean score at every scored training step."""
    backbones = sorted(table["backbone"].unique())
    metrics = [m for m in METRIC_NAMES if m in set(table["metric"])] + sorted(set(table["metric"]) - set(METRIC_NAMES))
    fig, axes = new_figure(3.2 * len(metrics), 2.8 * len(backbones), len(backbones), len(metrics))
    for r, backbone in enumerate(backbones):
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            part = table[(table["backbone"] == backbone) & (table["metric"] == metric)]
            for method, rows in part.groupby("method", sort=True):
                rows = rows.sort_values("step")
                ax.plot(rows["step"], rows["mean"], color=method_color(method), marker="o", markersize=4, label=method)
            ax.set_title(f"{backbone}: {METRIC_NAMES.get(metric, metric)}", fontsize=9)
            ax.set_xlabel("training step")
    axes[0][0].legend(fontsize=7)
    steps = table.groupby(["backbone", "method"])["step"].nunique()
    if steps.max() < 2:
        fig.text(0.5, -0.02, "one checkpoint scored per method: the final one", ha="center", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig

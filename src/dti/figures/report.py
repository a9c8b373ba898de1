"""Figures made for the report: per-subject sample grids and the scores over training checkpoints."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

from dti.figures import image_axes, method_color, new_figure, thumbnail
from dti.metrics.spec import METRICS
from dti.terms import display_name


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
                ax.set_title(f"{display_name(method)}\nseed {seed}", fontsize=8, color=method_color(method))
        axes[r][0].set_ylabel("\n".join(textwrap.wrap(f"{prompt.prompt_set}: {prompt.prompt}", 26)[:5]), fontsize=6.5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def checkpoint_figure(over_steps: pd.DataFrame, *, title: str):
    """Rows: backbones and prompt sets (never pooled); columns: metrics (and metric models, where one metric
    has two); each method's mean over subjects at every scored step, its 95% bootstrap interval shaded.

    over_steps: aggregate's table of that name (dti.tables)."""
    panels = over_steps[["metric", "metric_model"]].drop_duplicates()
    order = {m: i for i, m in enumerate(METRICS)}
    panels = sorted(panels.itertuples(index=False, name=None), key=lambda p: (order.get(p[0], len(order)), p))
    models = over_steps.groupby("metric")["metric_model"].nunique()
    rows = sorted(over_steps[["backbone", "prompt_set"]].drop_duplicates().itertuples(index=False, name=None))
    fig, axes = new_figure(3.2 * len(panels), 2.8 * len(rows), len(rows), len(panels))
    for r, (backbone, prompt_set) in enumerate(rows):
        for c, (metric, model) in enumerate(panels):
            ax = axes[r][c]
            part = over_steps[(over_steps["backbone"] == backbone) & (over_steps["prompt_set"] == prompt_set)
                              & (over_steps["metric"] == metric) & (over_steps["metric_model"] == model)]
            for method, points in part.groupby("method", sort=True):
                points = points.sort_values("step")
                color = method_color(method)
                ax.plot(points["step"], points["mean"], color=color, marker="o", markersize=4,
                        label=display_name(method))
                ax.fill_between(points["step"], points["ci_low"], points["ci_high"], color=color, alpha=0.15,
                                linewidth=0)
            shown = display_name(metric) + (f" ({model})" if models[metric] > 1 else "")
            ax.set_title(f"{backbone}, {prompt_set}: {shown}", fontsize=9)
            ax.set_xlabel("training step")
    axes[0][0].legend(fontsize=7)
    steps = over_steps.groupby(["backbone", "method"])["step"].nunique()
    if steps.max() < 2:
        fig.text(0.5, -0.02, "one checkpoint scored per method: the final one", ha="center", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig

"""Figures made for the report: per-subject sample grids and the scores over training checkpoints."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from dti.figures import image_axes, method_color, metric_axis_label, new_figure, thumbnail
from dti.metrics.spec import METRICS
from dti.prompts import PLACEHOLDER
from dti.terms import display_name

# The report shows a grid at its saved size or smaller, so its text is set no smaller than 9 pt as saved;
# a prompt label is wrapped to a column of LABEL_CHARS characters, which at that size is about as wide as
# the 2-inch margin the figure keeps for it.
LABEL_PT = 9
LABEL_CHARS = 24
LABEL_LINES = 7  # a 1.6-inch row (a 1.2-inch image) holds seven 9-pt lines; longer prompts end in an ellipsis
HEADER_CHARS = 16  # a 1.35-inch image column holds about sixteen 9-pt characters
LABEL_WIDTH_IN = 2.0
# Above this many checkpoints, ticks at every step would collide: every k-th step gets one then.
MAX_STEP_TICKS = 6
SINGLE_STEP_NOTE = "one checkpoint scored;\nadd steps to eval_steps for curves"


def wrap_label(text: str, width: int = LABEL_CHARS, lines: int = LABEL_LINES) -> str:
    """Text wrapped to `width` characters a line, at most `lines` lines (the last ends in '...' if cut)."""
    wrapped = textwrap.wrap(text, width, break_on_hyphens=False, max_lines=lines, placeholder=" ...")
    return "\n".join(wrapped)


def _grid_steps(cells: pd.DataFrame, methods: list[str], step) -> dict[str, int]:
    """{method: the checkpoint step its images were sampled at}, from `step` (one int for all methods, or
    per method) or else the cells' own step column; methods without a known step are left out."""
    if isinstance(step, Mapping):
        return {m: int(step[m]) for m in methods if m in step and pd.notna(step[m])}
    if step is not None and pd.notna(step):
        return dict.fromkeys(methods, int(step))
    if "step" not in cells.columns:
        return {}
    known = cells.dropna(subset=["step"]).groupby("method")["step"].max()
    return {m: int(known[m]) for m in methods if m in known.index}


def grid_figure(cells: pd.DataFrame, references: list[Path], *, methods: list[str], seeds: list[int],
                title: str, thumb: int = 192, step: int | Mapping[str, int] | None = None):
    """Top row: the reference photos; then one row per prompt and one column per method and seed.

    cells: rows with prompt_set, prompt_id, prompt, method, seed and path (the image file), and optionally
    step (the checkpoint each image was sampled at). step: that checkpoint, one for every method or per
    method, where the cells do not carry it. The title names the step; where methods were sampled at
    different steps, each column's header names its own.
    """
    prompts = cells[["prompt_set", "prompt_id", "prompt"]].drop_duplicates()
    prompts = prompts.sort_values(["prompt_set", "prompt_id"])
    columns = [(m, s) for m in methods for s in seeds]
    fig, axes = new_figure(1.35 * len(columns) + LABEL_WIDTH_IN, 1.6 * (len(prompts) + 1) + 0.7,
                           len(prompts) + 1, len(columns))
    steps = _grid_steps(cells, methods, step)
    one_step = len(set(steps.values())) == 1 and len(steps) == len(methods)
    for c, ax in enumerate(axes[0]):
        image_axes(ax)
        if c < len(references):
            ax.imshow(thumbnail(references[c], thumb))
    # Labels sit horizontally left of the first column: wrapped prompts read across, not up the page.
    label = {"rotation": 0, "ha": "right", "va": "center", "fontsize": LABEL_PT, "labelpad": 6}
    axes[0][0].set_ylabel("reference\nphotos", **label)
    lookup = {(r.prompt_set, r.prompt_id, r.method, r.seed): r.path for r in cells.itertuples(index=False)}
    for r, prompt in enumerate(prompts.itertuples(index=False), start=1):
        for c, (method, seed) in enumerate(columns):
            ax = axes[r][c]
            image_axes(ax)
            path = lookup.get((prompt.prompt_set, prompt.prompt_id, method, seed))
            if path is not None:
                ax.imshow(thumbnail(path, thumb))
            if r == 1:
                header = wrap_label(display_name(method), HEADER_CHARS, 2) + f"\nseed {seed}"
                if not one_step and method in steps:
                    header += f", step {steps[method]}"
                ax.set_title(header, fontsize=LABEL_PT, color=method_color(method))
        # The template's slot shown as S*, the learned token's name in the Textual Inversion paper.
        shown = prompt.prompt.replace(PLACEHOLDER, "S*")
        axes[r][0].set_ylabel(wrap_label(f"{prompt.prompt_set}: {shown}"), **label)
    if one_step:
        title += f"\nsamples at training step {next(iter(steps.values()))}"
    elif steps:
        title += "\nsamples at each method's training step (column headers)"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(w_pad=0.2, h_pad=0.3)  # images close together: the eye compares neighbouring columns
    return fig


def _method_order(methods) -> list[str]:
    """The methods in the registry's order (DTI first), unknown ones after, by name."""
    from dti.methods import METHODS

    rank = {m: i for i, m in enumerate(METHODS)}
    return sorted(methods, key=lambda m: (rank.get(m, len(rank)), m))


def _step_ticks(ax, steps: list[int]) -> None:
    """Ticks at the scored steps themselves (integers, and where the points are); with many, every k-th."""
    stride = -(-len(steps) // MAX_STEP_TICKS)
    ax.set_xticks(steps[::stride])


def checkpoint_figure(over_steps: pd.DataFrame, *, title: str):
    """Rows: backbones and prompt sets (never pooled); columns: metrics (and metric models, where one metric
    has two). Per panel, one line per method over the scored steps: its mean over subjects, with its 95%
    bootstrap interval over subjects as a band. A panel with one scored step draws each method as a point
    with its interval as error bars, and says so.

    over_steps: aggregate's table of that name (dti.tables)."""
    panels = over_steps[["metric", "metric_model"]].drop_duplicates()
    order = {m: i for i, m in enumerate(METRICS)}
    panels = sorted(panels.itertuples(index=False, name=None), key=lambda p: (order.get(p[0], len(order)), p))
    models = over_steps.groupby("metric")["metric_model"].nunique()
    rows = sorted(over_steps[["backbone", "prompt_set"]].drop_duplicates().itertuples(index=False, name=None))
    # Constrained layout keeps the figure-wide legend, placed outside the panels, clear of them.
    fig, axes = new_figure(3.4 * len(panels), 2.9 * len(rows) + 0.9, len(rows), len(panels),
                           layout="constrained")
    legend: dict[str, object] = {}
    drawn = set()  # "band" and/or "error bars": what the legend's title explains
    for r, (backbone, prompt_set) in enumerate(rows):
        for c, (metric, model) in enumerate(panels):
            ax = axes[r][c]
            part = over_steps[(over_steps["backbone"] == backbone) & (over_steps["prompt_set"] == prompt_set)
                              & (over_steps["metric"] == metric) & (over_steps["metric_model"] == model)]
            steps = sorted(int(s) for s in part["step"].unique())
            methods = _method_order(part["method"].unique())
            for i, method in enumerate(methods):
                points = part[part["method"] == method].sort_values("step")
                color, name = method_color(method), display_name(method)
                if len(points) > 1:
                    (handle,) = ax.plot(points["step"], points["mean"], color=color, marker="o",
                                        markersize=3.5, linewidth=1.6, label=name)
                    ax.fill_between(points["step"], points["ci_low"], points["ci_high"], color=color,
                                    alpha=0.18, linewidth=0)
                    drawn.add("band")
                else:
                    # A lone point: the interval as error bars. With one step in the panel, the methods sit
                    # side by side around it so their bars do not overlap.
                    x = points["step"].to_numpy(dtype=float)
                    if len(steps) == 1:
                        x = x + 0.15 * (i - (len(methods) - 1) / 2)
                    mean = points["mean"].to_numpy()
                    yerr = [mean - points["ci_low"].to_numpy(), points["ci_high"].to_numpy() - mean]
                    handle = ax.errorbar(x, mean, yerr=yerr, fmt="o", color=color, markersize=5, capsize=3,
                                         elinewidth=1.2, label=name)
                    drawn.add("error bars")
                legend.setdefault(name, handle)
            _step_ticks(ax, steps)
            if len(steps) == 1:
                ax.set_xlim(steps[0] - 1, steps[0] + 1)
                low, high = ax.get_ylim()
                ax.set_ylim(low, high + 0.45 * (high - low))  # headroom for the note, above the bars
                ax.text(0.5, 0.97, SINGLE_STEP_NOTE, transform=ax.transAxes, ha="center", va="top",
                        fontsize=8, color="#555555")
            shown = display_name(metric) + (f" ({model})" if models[metric] > 1 else "")
            ax.set_title(f"{backbone}, {prompt_set}: {shown}", fontsize=9)
            ax.set_xlabel("training step")
            ax.set_ylabel(metric_axis_label(metric))
    what = " and ".join(sorted(drawn))
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=min(len(legend), 6),
               fontsize=8, title=f"mean over subjects; {what}: 95% bootstrap interval over subjects",
               title_fontsize=8)
    fig.suptitle(title)
    return fig

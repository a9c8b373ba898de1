"""Figures of the mechanism measurements (dti.analysis.positional, dti.analysis.residual): why an inflated
token norm hurts inside a pre-norm text encoder.

Each figure reads one table of one backbone (columns as the *_COLUMNS below say; the workflow writes them
as Parquet beside the figure) and draws one panel per text encoder (per backbone and encoder, when a table
holds several backbones). Across panels and figures the same conventions hold:

- x is the token's norm over the vocabulary's mean norm m, on a log scale. Rows with a `scale` k were
  rescaled to k x m (directions kept) and are drawn as a line over k, their 95% bootstrap interval over
  prompts as a band. Rows with `scale` NaN are the rows as trained (for "vocabulary": its own tokens as
  they are) and are drawn as a diamond at their own `norm_ratio`, their interval as error bars; diamonds
  that would sit on one another are set side by side (a few hundredths of an octave apart).
- Colours: dti.figures.method_color, the vocabulary in grey; the figure-wide legend names the methods by
  their display names (dti.terms.display_name), the vocabulary first, then the registry's order.
- The `*_caption` functions give the sentence that defines each quantity and names the paper's claim it
  tests; with `caption=True` (the default) the figure carries it under its legend, so it explains itself
  outside the report.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd

from dti.errors import DtiError
from dti.figures import method_color, new_figure
from dti.terms import display_name

VOCABULARY = "vocabulary"
VOCAB_COLOR = "#8a8a8a"
CHANCE_COLOR = "#222222"
SCALE_LABEL = "token norm / m (log scale)"
RATIO_LABEL = r"residual-update ratio $\|h_{l+1} - h_l\| \,/\, \|h_l\|$"

POSITIONAL_COLUMNS = ("backbone", "encoder", "method", "scale", "norm_ratio", "accuracy", "ci_low", "ci_high",
                      "chance", "n_scored", "n_prompts")
RESIDUAL_COLUMNS = ("backbone", "encoder", "method", "scale", "norm_ratio", "layer", "mean", "ci_low",
                    "ci_high", "n_prompts")
CONTEXT_COLUMNS = ("backbone", "encoder", "method", "scale", "norm_ratio", "mean", "ci_low", "ci_high",
                   "n_prompts")

CHANCE_LABEL = "chance (always the most common position)"
# Diamonds closer than NEAR octaves are one cluster and are set STEP octaves apart, in legend order.
_NEAR, _STEP = 0.15, 0.1
_CAPTION_CHARS_PER_INCH = 16  # 7-pt text
_MIN_WIDTH = 7.5  # inches: the legend and its notes fit under one panel too


# --- captions -------------------------------------------------------------------------------------------
def positional_caption() -> str:
    """One sentence: what the position accuracy is and which claim of the paper it tests."""
    return ("Position accuracy is the share of a held-out prompt's real slots (start to end token) whose "
            "position a small probe, trained on ordinary prompts, names correctly from LN(t + p_i), the "
            "first pre-attention LayerNorm applied to the token row t plus the position row p_i; it tests "
            "the paper's claim that an inflated token norm drowns the position added to the token after "
            "that first LayerNorm (accuracy falls toward chance as the norm grows).")


def residual_caption() -> str:
    """One sentence: what the residual-update ratio is and which claim of the paper it tests."""
    return ("The residual-update ratio of block l is ||h_(l+1) - h_l|| / ||h_l|| at the token's positions, "
            "h_l the residual stream entering block l (before any final norm), averaged over the token's "
            "vectors (and over blocks, right), then over prompts; it tests the paper's claim that in a "
            "pre-norm encoder each block's update does not grow with the token's norm, so an inflated "
            "token's stream is barely moved by the blocks (ratio near 0).")


def context_caption() -> str:
    """One sentence: what the contextualization distance is and which claim of the paper it tests."""
    return ("The contextualization distance is 1 - cos between the token's output features (what the "
            "denoiser reads) in two different prompts, averaged over the token's vectors and over all "
            "pairs of prompts; it tests the paper's claim that an inflated token's output barely depends "
            "on the prompt around it (distance near 0), so the prompt cannot steer it.")


# --- checks and shared drawing --------------------------------------------------------------------------
def _checked(table: pd.DataFrame, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    """The table, if it is a non-empty DataFrame with `columns` and drawable x values; else a DtiError that
    names what is wrong."""
    if not isinstance(table, pd.DataFrame):
        raise DtiError(f"{what} figure: expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DtiError(f"{what} figure: the table lacks column(s) {missing}; it needs {list(columns)}")
    if table.empty:
        raise DtiError(f"{what} figure: the table has no rows, so there is nothing to draw")
    table = table.reset_index(drop=True)
    scale = pd.to_numeric(table["scale"], errors="coerce").astype("float64")
    ratio = pd.to_numeric(table["norm_ratio"], errors="coerce").astype("float64")
    bad = (scale.notna() & ~(scale > 0)) | (scale.isna() & ~(ratio > 0))
    if bad.any():
        first = table[bad].iloc[0]
        raise DtiError(f"{what} figure: {int(bad.sum())} row(s) cannot be placed on the log norm axis "
                       f"(scale must be > 0, and rows with scale NaN need a norm_ratio > 0), e.g. method "
                       f"{first['method']!r}, encoder {first['encoder']!r}, scale {first['scale']!r}, "
                       f"norm_ratio {first['norm_ratio']!r}")
    return table.assign(scale=scale, norm_ratio=ratio)


def _panels(table: pd.DataFrame) -> list[tuple[tuple[str, str], str]]:
    """[((backbone, encoder), panel label)], sorted; the label names the backbone only when there are
    several."""
    keys = sorted(table[["backbone", "encoder"]].drop_duplicates().itertuples(index=False, name=None),
                  key=lambda k: (str(k[0]), str(k[1])))
    several = len({b for b, _ in keys}) > 1
    return [((b, e), f"{b}: {e}" if several else str(e)) for b, e in keys]


def _part(table: pd.DataFrame, key: tuple[str, str]) -> pd.DataFrame:
    return table[(table["backbone"] == key[0]) & (table["encoder"] == key[1])]


def _order(methods) -> list[str]:
    """The vocabulary first, then the methods in the registry's order (DTI first), unknown ones by name."""
    from dti.methods import METHODS

    rank = {m: i for i, m in enumerate(METHODS)}
    return sorted(set(methods), key=lambda m: (m != VOCABULARY, rank.get(m, len(rank)), str(m)))


def _color(method: str) -> str:
    return VOCAB_COLOR if method == VOCABULARY else method_color(method)


def _name(method: str) -> str:
    return "vocabulary tokens" if method == VOCABULARY else display_name(method)


def _dodge(points: list[tuple[str, float]], order: list[str]) -> dict[str, float]:
    """{method: x} for diamonds at `x` (a norm ratio): those within _NEAR octaves of each other are set
    _STEP octaves apart around their own x, in legend order, so their error bars do not overlap."""
    rank = {m: i for i, m in enumerate(order)}
    ranked = sorted(points, key=lambda p: p[1])
    clusters: list[list[tuple[str, float]]] = []
    for method, x in ranked:
        if clusters and math.log2(x) - math.log2(clusters[-1][-1][1]) < _NEAR:
            clusters[-1].append((method, x))
        else:
            clusters.append([(method, x)])
    out = {}
    for cluster in clusters:
        cluster.sort(key=lambda p: rank.get(p[0], len(rank)))
        for j, (method, x) in enumerate(cluster):
            out[method] = x * 2 ** (_STEP * (j - (len(cluster) - 1) / 2))
    return out


def _sweep(ax, rows: pd.DataFrame, value: str, color: str, *, linestyle: str = "-") -> None:
    """Rows rescaled to k x m: a line over k, the interval as a band (a lone k: a point with error bars)."""
    rows = rows.sort_values("scale")
    x, y = rows["scale"].to_numpy(float), rows[value].to_numpy(float)
    if len(rows) == 1:
        ax.errorbar(x, y, yerr=_yerr(rows, value), fmt="o", color=color, markersize=4, capsize=2.5,
                    elinewidth=1.0)
        return
    ax.plot(x, y, linestyle, color=color, marker="o", markersize=3, linewidth=1.6)
    ax.fill_between(x, rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float), color=color,
                    alpha=0.16, linewidth=0)


def _yerr(rows: pd.DataFrame, value: str) -> np.ndarray:
    y = rows[value].to_numpy(float)
    low = np.clip(y - rows["ci_low"].to_numpy(float), 0, None)
    high = np.clip(rows["ci_high"].to_numpy(float) - y, 0, None)
    return np.nan_to_num(np.vstack([low, high]))


def _as_trained(ax, rows: pd.DataFrame, value: str, color: str, x: float) -> None:
    """The rows as trained: a diamond at x (its norm ratio, dodged), the interval as error bars."""
    ax.errorbar(np.full(len(rows), x), rows[value].to_numpy(float), yerr=_yerr(rows, value), fmt="D",
                color=color, markeredgecolor="black", markeredgewidth=0.6, markersize=5.5, capsize=2.5,
                elinewidth=1.1, zorder=4)


def _draw_methods(ax, part: pd.DataFrame, value: str, drawn: dict[str, set]) -> None:
    """Every method's (and the vocabulary's) rescaled line and as-trained diamond in one panel; `drawn`
    collects which of the two each method got, for the legend."""
    order = _order(part["method"].unique())
    trained = part[part["scale"].isna()]
    xs = _dodge([(m, float(g["norm_ratio"].mean())) for m, g in trained.groupby("method")], order)
    for method in order:
        rows, color = part[part["method"] == method], _color(method)
        swept = rows[rows["scale"].notna()]
        if len(swept):
            _sweep(ax, swept, value, color, linestyle="--" if method == VOCABULARY else "-")
            drawn.setdefault(method, set()).add("line")
        if method in xs:
            _as_trained(ax, rows[rows["scale"].isna()], value, color, xs[method])
            drawn.setdefault(method, set()).add("point")


def _norm_axis(ax) -> None:
    """x: the norm over m, log base 2, ticks as plain numbers; a faint line at 1 (the vocabulary's mean)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.axvline(1.0, color="#dddddd", linewidth=1.0, zorder=0)
    ax.set_xlabel(SCALE_LABEL)


def _legend(fig, drawn: dict[str, set], *, extra=(), note: str, ncols: int = 4):
    """One figure-wide legend under the panels: an entry per method (its look: line, diamond or both),
    then `extra` (label, handle) pairs; its title says what lines, bands, diamonds and bars are."""
    from matplotlib.lines import Line2D

    handles, labels = [], []
    for method in _order(drawn):
        looks = drawn[method]
        handles.append(Line2D([], [], color=_color(method), linestyle=("--" if method == VOCABULARY else "-")
                              if "line" in looks else "none", marker="D" if "point" in looks else "o",
                              markeredgecolor="black" if "point" in looks else _color(method),
                              markeredgewidth=0.6, markersize=5.5 if "point" in looks else 3,
                              linewidth=1.6))
        labels.append(_name(method))
    for label, handle in extra:
        handles.append(handle)
        labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), ncols), fontsize=8,
               title=note, title_fontsize=8)


def _finish(fig, title: str, caption: str | None):
    """The title; then, with the layout done and frozen, the caption (wrapped) under the legend, outside
    the panels (the saved figure's tight bounding box takes it in)."""
    fig.suptitle(title)
    if not caption:
        return fig
    fig.draw_without_rendering()  # constrained layout places panels and legend
    fig.set_layout_engine("none")  # ... and keeps them there: the caption must not move them
    bottom = 0.0
    for legend in fig.legends:
        # Pinned where it is: a legend placed by `loc` would follow the bottom of the saved (tight) box,
        # which the caption extends, and land on the caption.
        box = legend.get_window_extent().transformed(fig.transFigure.inverted())
        legend.set_loc("lower left")
        legend.set_bbox_to_anchor((box.x0, box.y0), transform=fig.transFigure)
        bottom = box.y0
    chars = int(fig.get_figwidth() * _CAPTION_CHARS_PER_INCH)
    fig.text(0.01, bottom, "\n".join(textwrap.wrap(caption, chars)), fontsize=7,
             color="#555555", va="top", ha="left")
    return fig


def _prompt_counts(table: pd.DataFrame) -> str:
    counts = sorted({int(n) for n in table["n_prompts"].dropna()})
    if not counts:
        return "prompts"
    return f"{counts[0]} prompts" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} prompts"


def _note(table: pd.DataFrame, drawn: dict[str, set], *, first: str | None = None, extra: str = "") -> str:
    """The legend's title: what lines and diamonds are (or `first`), then what bands and bars are."""
    if first is None:
        looks = set().union(*drawn.values()) if drawn else set()
        parts = (["lines: rows rescaled to k x m"] if "line" in looks else []) + (
            ["diamonds: as trained / as they are, at their own norm / m"] if "point" in looks else [])
        first = "; ".join(parts)
    return f"{first}\nbands and bars: 95% percentile bootstrap interval over {_prompt_counts(table)}{extra}"


def _log_y(ax) -> None:
    """y on a log scale with ticks at 1, 2 and 5 times powers of ten, written as plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _empty_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="#777777")


# --- the figures ----------------------------------------------------------------------------------------
def positional_figure(table: pd.DataFrame, *, title: str, caption: bool = True):
    """One panel per encoder: the position probe's accuracy against the token's norm over m. Lines: rows
    rescaled to k x m (the vocabulary's own tokens, dashed grey, and any method's), bands their 95%
    bootstrap interval over prompts; diamonds: each method's rows as trained (and the vocabulary as it
    is) at their own norm ratio, bars their interval; a dashed black line: chance (always naming the most
    common position). Accuracy falling to chance as the norm grows is the drowned position.

    table: POSITIONAL_COLUMNS (dti.analysis.positional's summaries, one backbone)."""
    table = _checked(table, POSITIONAL_COLUMNS, "positional")
    panels = _panels(table)
    fig, axes = new_figure(max(4.6 * len(panels), _MIN_WIDTH), 4.8, 1, len(panels), layout="constrained")
    drawn: dict[str, set] = {}
    chance_handle = None
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        part = _part(table, key)
        _draw_methods(ax, part, "accuracy", drawn)
        for value in sorted({round(float(c), 9) for c in part["chance"].dropna()}):
            chance_handle = ax.axhline(value, color=CHANCE_COLOR, linestyle=(0, (4, 3)), linewidth=1.1,
                                       zorder=1)
        _norm_axis(ax)
        ax.set_ylim(0, 1.03)
        ax.set_ylabel("position accuracy (share of slots named right)")
        ax.set_title(label)
    extra = [(CHANCE_LABEL, chance_handle)] if chance_handle is not None else []
    scored = sorted({int(n) for n in table["n_scored"].dropna()})
    slots = f" ({scored[0]}" + (f"-{scored[-1]}" if len(scored) > 1 else "") + " scored slots)" if scored else ""
    note = _note(table, drawn, extra=slots)
    _legend(fig, drawn, extra=extra, note=note)
    return _finish(fig, title, positional_caption() if caption else None)


def residual_figure(table: pd.DataFrame, *, title: str, caption: bool = True):
    """One row of two panels per encoder, sharing a log y axis: left, the residual-update ratio of every
    block for each method as trained (and the vocabulary as it is), bands its 95% bootstrap interval over
    prompts; right, the mean over blocks against the token's norm over m: lines for rows rescaled to
    k x m, diamonds for the rows as trained at their own norm ratio. A ratio near 0 is a token the blocks
    barely move.

    table: RESIDUAL_COLUMNS (dti.analysis.residual.summarize by layer, and without it for layer <NA>)."""
    from matplotlib.ticker import MaxNLocator

    table = _checked(table, RESIDUAL_COLUMNS, "residual")
    panels = _panels(table)
    fig, axes = new_figure(10, 3.9 * len(panels) + 1.4, len(panels), 2, layout="constrained", sharey="row")
    drawn: dict[str, set] = {}
    for (block_ax, sweep_ax), (key, label) in zip(axes, panels, strict=True):
        part = _part(table, key)
        per_block = part[part["layer"].notna() & part["scale"].isna()]
        for method in _order(per_block["method"].unique()):
            rows = per_block[per_block["method"] == method].sort_values("layer")
            color = _color(method)
            x = rows["layer"].astype("float64").to_numpy()
            block_ax.plot(x, rows["mean"].to_numpy(float), "--" if method == VOCABULARY else "-", color=color,
                          marker="o", markersize=3, linewidth=1.6)
            block_ax.fill_between(x, rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float),
                                  color=color, alpha=0.16, linewidth=0)
            drawn.setdefault(method, set()).add("line")
        if per_block.empty:
            _empty_note(block_ax, "no per-block rows as trained")
        block_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        block_ax.set_xlabel("block l (0 = first)")
        block_ax.set_ylabel(RATIO_LABEL + " (log scale)")
        _log_y(block_ax)
        block_ax.set_title(f"{label}: each block, as trained")
        overall = part[part["layer"].isna()]
        _draw_methods(sweep_ax, overall, "mean", drawn)
        if overall.empty:
            _empty_note(sweep_ax, "no mean-over-blocks rows")
        _norm_axis(sweep_ax)
        _log_y(sweep_ax)
        sweep_ax.tick_params(labelleft=True)
        sweep_ax.set_ylabel("mean over blocks (log scale)")
        sweep_ax.set_title(f"{label}: mean over blocks, by norm")
    note = _note(table, drawn, first="left: each block, as trained / as they are; right: the mean over blocks, "
                 "rescaled to k x m (lines)\nand as trained / as they are (diamonds, at their own norm / m)")
    _legend(fig, drawn, note=note, ncols=5)
    return _finish(fig, title, residual_caption() if caption else None)


def context_figure(table: pd.DataFrame, *, title: str, caption: bool = True):
    """One panel per encoder: the contextualization distance (mean 1 - cos of the token's output features
    over prompt pairs) against the token's norm over m: lines for rows rescaled to k x m, bands their 95%
    bootstrap interval over prompts, diamonds for the rows as trained at their own norm ratio. 0 is a
    token whose output ignores the prompt.

    table: CONTEXT_COLUMNS (dti.analysis.residual.summarize_pairs, one backbone)."""
    table = _checked(table, CONTEXT_COLUMNS, "context")
    panels = _panels(table)
    fig, axes = new_figure(max(4.6 * len(panels), _MIN_WIDTH), 4.8, 1, len(panels), layout="constrained")
    drawn: dict[str, set] = {}
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        _draw_methods(ax, _part(table, key), "mean", drawn)
        _norm_axis(ax)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("contextualization distance (mean 1 - cos)")
        ax.set_title(label)
    _legend(fig, drawn, note=_note(table, drawn))
    return _finish(fig, title, context_caption() if caption else None)

"""What the HTML report shows beyond the analyses' own figures: per-subject sample grids, the result tables
as HTML, and the scores over training checkpoints. The report itself is Snakemake's (`snakemake --report`);
these functions only make its files.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dti.analysis.interpolation import _LATEX_HEADERS as _INTERPOLATION_HEADERS
from dti.analysis.interpolation import SUMMARY_COLUMNS as _INTERPOLATION_COLUMNS
from dti.errors import DtiError
from dti.latex import _NORM_HEADERS, _SPECIALS, DIGITS, KEY_LABELS
from dti.metrics.spec import METRICS
from dti.tables import _COST_HEADERS, COST_COLUMNS, STAT_COLUMNS, _significant
from dti.terms import display_name


# --- sample grids ------------------------------------------------------------------------------------------
def grid_cells(manifests: list[dict], *, prompts_per_set: int, seeds: int) -> pd.DataFrame:
    """The images a grid shows: the first prompts of every prompt set and the first seeds, from each
    method's sample manifest ([{"path", "method"}]); the last checkpoint where several were sampled."""
    frames = []
    for entry in manifests:
        frame = pd.read_parquet(entry["path"])
        if "step" in frame.columns and frame["step"].notna().any():
            frame = frame[frame["step"] == frame["step"].max()]
        frame = frame.assign(method=entry["method"], path=[str(Path(entry["path"]).parent / p) for p in frame["image"]])
        frames.append(frame)
    cells = pd.concat(frames, ignore_index=True)
    keep_seeds = sorted(cells["seed"].unique())[:seeds]
    cells = cells[cells["seed"].isin(keep_seeds) & (cells["prompt_id"] < prompts_per_set)]
    # the step stays: the grid's title names the checkpoint its samples come from
    return cells[["prompt_set", "prompt_id", "prompt", "method", "seed", "path",
                  *(["step"] if "step" in cells.columns else [])]]


def write_sample_grids(manifests: list[dict], subject_jsons: dict[str, str], out_dir: str, *, methods: list[str],
                       prompts_per_set: int, seeds: int, thumb: int = 192) -> None:
    """One grid per backbone and subject: out_dir/{backbone}/{subject}.png and .pdf.

    manifests: [{"path": manifest.parquet, "backbone", "method", "subject"}].
    """
    from dti.figures import save_figure
    from dti.figures.report import grid_figure

    table = pd.DataFrame(manifests)
    for (backbone, subject), group in table.groupby(["backbone", "subject"], sort=True):
        info = json.loads(Path(subject_jsons[subject]).read_text())
        folder = Path(subject_jsons[subject]).parent
        cells = grid_cells(group.to_dict("records"), prompts_per_set=prompts_per_set, seeds=seeds)
        shown = [m for m in methods if m in set(cells["method"])]
        fig = grid_figure(cells, [folder / name for name in info["images"]], methods=shown,
                          seeds=sorted(cells["seed"].unique()),
                          title=f"{subject} ({info['class']}, {info['kind']}) on {backbone}", thumb=thumb)
        save_figure(fig, Path(out_dir) / backbone / f"{subject}.png", Path(out_dir) / backbone / f"{subject}.pdf")


# --- checkpoints --------------------------------------------------------------------------------------------
def write_checkpoint_sweep(over_steps: str, out_stem: str) -> None:
    """The figure of the scores over training checkpoints, out_stem.png and .pdf, drawn from aggregate's
    over_steps table (the run's tables/over_steps.parquet), which holds its numbers."""
    from dti.figures import save_figure
    from dti.figures.report import checkpoint_figure

    table = pd.read_parquet(over_steps)
    save_figure(checkpoint_figure(table, title="Scores over training checkpoints (mean over subjects, 95% CI)"),
                f"{out_stem}.png", f"{out_stem}.pdf")


# --- tables as HTML -----------------------------------------------------------------------------------------
# Each page shows one table as its LaTeX does (dti.latex, dti.tables.cost_latex, dti.analysis.interpolation's
# summary_latex), from the same Parquet file: the same headers (keys by KEY_LABELS, methods and metrics by their
# display names), the same cells (a metric: "mean ± half-width of the 95% interval", the exact bounds on hover),
# the same best values in bold, under the caption of the LaTeX table beside the Parquet file.
_STYLE = """body{font-family:system-ui,sans-serif;font-size:13px;margin:16px;color:#222}
table{border-collapse:collapse}th,td{padding:4px 10px;text-align:left;border-bottom:1px solid #ddd}
th{background:#f2f4f7}td.num{text-align:right;white-space:nowrap}td.best{background:#eef6ee}
p{max-width:60em;color:#555}p.caption{color:#222}"""
_MISSING = "--"  # as the LaTeX tables write a missing value, and their captions name it
# The LaTeX that headers use beyond dti.latex.escape's: a forced space, arrows (the interpolation table's).
_MATH = {r"\ ": " ", r"$\uparrow$": "↑", r"$\downarrow$": "↓"}
_CAPTION = re.compile(r"\\caption\{((?:\\text(?:backslash|asciitilde|asciicircum)\{\}|\\.|[^{}\\])*)\}")


def latex_text(tex: str) -> str:
    """Plain text of LaTeX that dti.latex.escape wrote, and of the headers' few symbols: escaped characters
    restored, $\\pm$ and the arrows as their signs, any other inline math as its content."""
    tokens = {**{latex: plain for plain, latex in _SPECIALS.items()}, **_MATH}
    pattern = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
    return re.sub(rf"{pattern}|\$([^$]*)\$", lambda m: tokens.get(m.group(0)) or m.group(1), tex)


def latex_caption(tex: str) -> str | None:
    """The caption of a LaTeX table (dti.latex.render's \\caption{...}) as plain text; None if it has none."""
    match = _CAPTION.search(tex)
    return None if match is None else latex_text(match.group(1))


@dataclass
class _Layout:
    """A table as a page shows it: headers, then per row its key cells and value cells; `best` (rows x values)
    marks the values in bold, `tips` their hover text; `legend` says what is bold ("Bold: <legend>")."""

    headers: list[str]
    keys: list[list[str]]
    values: list[list[str]]
    best: np.ndarray | None = None
    tips: list[list[str]] | None = None
    legend: str = ""


def _number(value) -> str:
    return _MISSING if pd.isna(value) else f"{float(value):.{DIGITS}f}"


def _key_cells(table: pd.DataFrame, keys: list[str]) -> list[list[str]]:
    shown = table[keys].astype(str)
    if "method" in keys:
        shown = shown.assign(method=table["method"].map(display_name))
    return shown.to_numpy().tolist()


def _spoken(labels: list[str]) -> str:
    """["Backbone", "Prompt set", "Step"] -> "backbone, prompt set and step"."""
    words = [label.lower() for label in labels]
    return " and ".join([", ".join(words[:-1]), words[-1]]) if len(words) > 1 else "".join(words)


def _metric_layout(table: pd.DataFrame) -> _Layout:
    """A long metric table as dti.latex lays it out: one row per key combination (in the table's order), one
    column per (metric, metric_model) in the metrics' order; in each column the best printed mean among the
    methods of a block (the rows sharing every key but the method) in bold, ties all, never in a block of one
    method nor in a column that is no score (the ablation table's norm ratio)."""
    keys = [c for c in table.columns if c not in (*STAT_COLUMNS, "metric", "metric_model")]
    order = list(METRICS)
    pairs = sorted(table[["metric", "metric_model"]].drop_duplicates().itertuples(index=False, name=None),
                   key=lambda p: (order.index(p[0]) if p[0] in order else len(order), p[0], p[1]))
    models = table.groupby("metric")["metric_model"].nunique()
    headers = [display_name(m) + (f" ({model})" if models[m] > 1 else "") for m, model in pairs]
    rows = table.drop_duplicates(keys)
    row_of = {key: i for i, key in enumerate(rows[keys].itertuples(index=False, name=None))}
    column_of = {pair: j for j, pair in enumerate(pairs)}
    with_ci = {"ci_low", "ci_high"} <= set(table.columns)
    stats = ["mean", "ci_low", "ci_high"] if with_ci else ["mean"]
    grid = {s: np.full((len(row_of), len(pairs)), np.nan) for s in stats}
    for record in table[[*keys, "metric", "metric_model", *stats]].itertuples(index=False, name=None):
        i, j = row_of[record[:len(keys)]], column_of[record[len(keys):len(keys) + 2]]
        for s, value in zip(stats, record[len(keys) + 2:], strict=True):
            grid[s][i, j] = value
    means = grid["mean"]
    if with_ci:
        half = (grid["ci_high"] - grid["ci_low"]) / 2
        values = [[_MISSING if np.isnan(m) else f"{m:.{DIGITS}f} ± {h:.{DIGITS}f}" for m, h in zip(*pair, strict=True)]
                  for pair in zip(means, half, strict=True)]
        tips = [["" if np.isnan(lo) else f"95% interval [{lo:.{DIGITS}f}, {hi:.{DIGITS}f}]"
                 for lo, hi in zip(*pair, strict=True)] for pair in zip(grid["ci_low"], grid["ci_high"], strict=True)]
    else:
        values, tips = [[_number(m) for m in r] for r in means], None
    layout = _Layout([*(KEY_LABELS.get(k, k) for k in keys), *headers], _key_cells(rows, keys), values, tips=tips)
    if "method" not in keys:
        return layout
    others = [k for k in keys if k != "method"]
    blocks: dict[tuple, int] = {}
    block = [blocks.setdefault(key, len(blocks)) for key in rows[others].itertuples(index=False, name=None)]
    shown = pd.DataFrame(means).round(DIGITS)
    grouped = shown.groupby(np.asarray(block), sort=False)
    best = (shown == grouped.transform("max")) & (grouped.transform("count") > 1)
    scored = np.array([m in METRICS for m, _ in pairs], dtype=bool)
    layout.best = best.to_numpy() & scored
    scope = _spoken([KEY_LABELS.get(k, k) for k in others]) or "table"
    layout.legend = (f"the best (highest) mean of its column among the methods of the same {scope}, as in the "
                     f"LaTeX table (compared at the {DIGITS} decimals shown; ties are all bold; none where one "
                     "method has a value).")
    if not scored.all():
        unscored = [h for h, s in zip(headers, scored, strict=True) if not s]
        layout.legend += f" {', '.join(dict.fromkeys(unscored))}: no score, never bold."
    if with_ci:
        layout.legend += " Hover over a cell for the bounds of its interval."
    return layout


def _norms_layout(table: pd.DataFrame) -> _Layout:
    """The norms table as dti.latex lays it out (nothing bold: a norm is no score)."""
    keys = [c for c in table.columns if c in KEY_LABELS]
    values = [[_number(r.norm_mean), _number(r.norm_min), _number(r.norm_max),
               f"{_number(r.vocab_norm_mean)} ± {_number(r.vocab_norm_std)}", _number(r.ratio)]
              for r in table.itertuples(index=False)]
    return _Layout([*(KEY_LABELS[k] for k in keys), *map(latex_text, _NORM_HEADERS)], _key_cells(table, keys), values)


def _cost_layout(table: pd.DataFrame) -> _Layout:
    """The cost table as dti.tables.cost_latex lays it out (nothing bold)."""
    metrics = [c for c in table.columns if c not in COST_COLUMNS]
    headers = [*_COST_HEADERS.values()]
    for column in metrics:  # "clip_t" or "clip_t (open_clip:...)", as the cost table names them
        metric, _, model = column.partition(" (")
        headers.append(display_name(metric) + (f" ({model.removesuffix(')')})" if model else ""))

    def cells(row) -> list[str]:
        counts = [_MISSING if pd.isna(row[c]) else f"{int(row[c]):,}"
                  for c in ("token_parameters", "adapter_parameters", "trainable_parameters")]
        timing = [_MISSING if pd.isna(row[c]) else _significant(float(row[c]))
                  for c in ("seconds_per_step", "peak_gpu_memory_gib")]
        return [*counts, *timing, str(int(row["n_runs"])), *(_number(row[c]) for c in metrics)]

    keys = ["backbone", "method"]
    return _Layout([*(KEY_LABELS[k] for k in keys), *headers], _key_cells(table, keys),
                   [cells(row) for _, row in table.iterrows()])


def _interpolation_layout(table: pd.DataFrame) -> _Layout:
    """The interpolation summary as dti.analysis.interpolation.summary_latex lays it out (nothing bold)."""
    values = [[_number(v) for v in row] for row in table[_INTERPOLATION_COLUMNS].to_numpy(dtype=float)]
    return _Layout([KEY_LABELS["backbone"], KEY_LABELS["method"], "Path",
                    *(latex_text(_INTERPOLATION_HEADERS[c]) for c in _INTERPOLATION_COLUMNS)],
                   _key_cells(table, ["backbone", "method", "scheme"]), values)


def _plain_layout(table: pd.DataFrame) -> _Layout:
    """Any other table: every column, keys by KEY_LABELS, others by their display names (nothing bold)."""
    keys = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c]) or c in KEY_LABELS]
    rest = [c for c in table.columns if c not in keys]
    values = [[_number(v) if pd.api.types.is_float_dtype(table[c]) else (_MISSING if pd.isna(v) else str(v))
               for c, v in zip(rest, row, strict=True)] for row in table[rest].astype(object).to_numpy()]
    return _Layout([*(KEY_LABELS.get(c, display_name(c)) for c in (*keys, *rest))], _key_cells(table, keys), values)


def table_layout(table: pd.DataFrame) -> _Layout:
    """How a page shows `table`: the layout of its LaTeX (by the columns it has), or every column."""
    columns = set(table.columns)
    if {"metric", "metric_model", "mean"} <= columns:
        return _metric_layout(table)
    if set(COST_COLUMNS) <= columns:
        return _cost_layout(table)
    if {"norm_mean", "norm_min", "norm_max", "vocab_norm_mean", "vocab_norm_std", "ratio"} <= columns:
        return _norms_layout(table)
    if {"backbone", "method", "scheme", *_INTERPOLATION_COLUMNS} <= columns:
        return _interpolation_layout(table)
    return _plain_layout(table)


def _table_body(layout: _Layout) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in layout.headers)
    rows = []
    for i, (keys, values) in enumerate(zip(layout.keys, layout.values, strict=True)):
        cells = [f"<td>{html.escape(k)}</td>" for k in keys]
        for j, value in enumerate(values):
            best = layout.best is not None and bool(layout.best[i, j])
            tip = layout.tips[i][j] if layout.tips is not None else ""
            attributes = ' class="num best"' if best else ' class="num"'
            attributes += f' title="{html.escape(tip)}"' if tip else ""
            text = html.escape(value)
            cells.append(f"<td{attributes}>{f'<strong>{text}</strong>' if best else text}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"


def table_html(table: pd.DataFrame, *, title: str, caption: str = "", note: str = "") -> str:
    """A self-contained HTML page showing one result table as its LaTeX shows it (table_layout), under
    `caption` (the LaTeX table's) and `note`, with a line saying which values are bold."""
    layout = table_layout(table)
    paragraphs = [f'<p class="caption">{html.escape(caption)}</p>' if caption else "",
                  f"<p>{html.escape(note)}</p>" if note else "",
                  f'<p class="legend"><strong>Bold</strong>: {html.escape(layout.legend)}</p>' if layout.legend else ""]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h2>{html.escape(title)}</h2>\n"
            f"{''.join(paragraphs)}\n{_table_body(layout)}\n</body></html>\n")


def page_title(name: str) -> str:
    """A table's name as its page's heading: "by_prompt_set" -> "By prompt set"."""
    text = name.replace("_", " ")
    return text[:1].upper() + text[1:]


def write_html_tables(tables: dict[str, str], out_dir: str, *, notes: dict[str, str] | None = None) -> None:
    """{name: Parquet file} -> out_dir/{name}.html, each atomically. A page's caption is that of the LaTeX
    table beside its Parquet file ({stem}.tex); a table without one shows notes[name] instead."""
    from dti.io import write_text

    for name, path in tables.items():
        frame = pd.read_parquet(path)
        tex = Path(path).with_suffix(".tex")
        caption = ""
        if tex.is_file():
            caption = latex_caption(tex.read_text(encoding="utf-8"))
            if not caption:
                raise DtiError(f"report tables: {tex} has no \\caption{{...}}")
        note = "" if caption else (notes or {}).get(name, "")
        write_text(Path(out_dir) / f"{name}.html", table_html(frame, title=page_title(name), caption=caption,
                                                              note=note))

"""What the HTML report shows beyond the analyses' own figures: per-subject sample grids, the result tables
as HTML, and the scores over training checkpoints. The report itself is Snakemake's (`snakemake --report`);
these functions only make its files.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from dti.tables import STAT_COLUMNS
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
    return cells[["prompt_set", "prompt_id", "prompt", "method", "seed", "path"]]


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
_STYLE = """body{font-family:system-ui,sans-serif;font-size:13px;margin:16px;color:#222}
table{border-collapse:collapse}th,td{padding:4px 10px;text-align:right;border-bottom:1px solid #ddd}
th{background:#f2f4f7}td:first-child,th:first-child{text-align:left}caption{text-align:left;
font-weight:600;margin-bottom:8px}p{max-width:60em;color:#555}"""


def _wide(table: pd.DataFrame) -> pd.DataFrame:
    """A long metric table (one row per metric) as one row per key, one column per metric (by its display
    name); cells read "mean [ci_low, ci_high]" where the table has an interval."""
    keys = [c for c in table.columns if c not in (*STAT_COLUMNS, "metric", "metric_model")]
    with_ci = "ci_low" in table.columns and "ci_high" in table.columns

    def cell(row) -> str:
        text = f"{row['mean']:.3f}"
        return text + (f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if with_ci else "")

    models = table.groupby("metric")["metric_model"].nunique()
    column = [display_name(m) + ("" if models[m] == 1 else f" ({model})")
              for m, model in zip(table["metric"], table["metric_model"], strict=True)]
    wide = table.assign(column=column, cell=table.apply(cell, axis=1)).pivot_table(
        index=keys, columns="column", values="cell", aggfunc="first", sort=True)
    return wide.reset_index().rename_axis(columns=None)


def table_html(table: pd.DataFrame, *, title: str, note: str = "") -> str:
    """A self-contained HTML page showing one result table, methods and metrics by their display names."""
    if "method" in table.columns:
        table = table.assign(method=table["method"].map(display_name))
    shown = _wide(table) if {"metric", "mean"} <= set(table.columns) else table
    # Nullable integer columns (the cost table's parameter counts) print a missing value as <NA>, whatever
    # na_rep says: shown as Python objects, every missing cell is "-".
    nullable = [c for c in shown.columns if isinstance(shown[c].dtype, pd.api.extensions.ExtensionDtype)
                and shown[c].dtype.kind in "iu"]
    if nullable:
        shown = shown.assign(**{c: shown[c].astype(object).where(shown[c].notna(), "-") for c in nullable})
    body = shown.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-", border=0, escape=True)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h2>{html.escape(title)}</h2>"
            f"{f'<p>{html.escape(note)}</p>' if note else ''}{body}</body></html>\n")


def write_html_tables(tables: dict[str, str], out_dir: str, *, notes: dict[str, str] | None = None) -> None:
    """{name: Parquet file} -> out_dir/{name}.html, each atomically."""
    from dti.io import write_text

    for name, path in tables.items():
        frame = pd.read_parquet(path)
        write_text(Path(out_dir) / f"{name}.html", table_html(frame, title=name.replace("_", " "),
                                                              note=(notes or {}).get(name, "")))

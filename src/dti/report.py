"""What the HTML report shows beyond the analyses' own figures: per-subject sample grids, the result tables
as HTML, and the scores over training checkpoints. The report itself is Snakemake's (`snakemake --report`);
these functions only make its files.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from dti.errors import DtiError

STAT_COLUMNS = ("mean", "ci_low", "ci_high", "n_subjects", "n_images")


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
def checkpoint_table(scores: pd.DataFrame, final_steps: dict[tuple[str, str, str], int]) -> pd.DataFrame:
    """Per backbone, method, training step and metric: each subject's mean, then the mean over subjects.

    Scores without a `step` column (or rows without one) are the final checkpoint: final_steps maps
    (backbone, method, subject) to it.
    """
    scores = scores.copy()
    final = [final_steps.get((b, m, s)) for b, m, s in zip(scores["backbone"], scores["method"], scores["subject"],
                                                            strict=True)]
    if "step" in scores.columns:
        scores["step"] = scores["step"].fillna(pd.Series(final, index=scores.index))
    else:
        scores["step"] = final
    if scores["step"].isna().any():
        missing = scores.loc[scores["step"].isna(), ["backbone", "method", "subject"]].drop_duplicates()
        raise DtiError(f"checkpoints: no training step known for {missing.to_dict('records')[:3]}")
    per_subject = scores.groupby(["backbone", "method", "step", "metric", "subject"], sort=True)["value"].mean()
    table = per_subject.groupby(["backbone", "method", "step", "metric"], sort=True).agg(["mean", "size"])
    return table.rename(columns={"size": "n_subjects"}).reset_index().astype({"step": "int64"})


def write_checkpoint_sweep(score_files: list[str], runs: list[dict], out_stem: str) -> None:
    """The scores over training checkpoints: out_stem.png, .pdf and .parquet."""
    from dti.figures import save_figure
    from dti.figures.report import checkpoint_figure
    from dti.io import write_parquet
    from dti.methods import get_method

    steps = {(r["backbone"], r["method"], r["subject"]): int(json.loads(Path(r["path"]).read_text())["steps"])
             for r in runs}
    scores = pd.concat([pd.read_parquet(f) for f in score_files], ignore_index=True)
    final = {}  # evaluation-time variants (ti_rescaled) score the checkpoints of the method they reuse
    for backbone, method, subject in scores[["backbone", "method", "subject"]].drop_duplicates().itertuples(index=False):
        final[(backbone, method, subject)] = steps.get((backbone, get_method(method).trained_as or method, subject))
    table = checkpoint_table(scores, final)
    write_parquet(f"{out_stem}.parquet", table)
    save_figure(checkpoint_figure(table, title="Scores over training checkpoints (mean over subjects)"),
                f"{out_stem}.png", f"{out_stem}.pdf")


# --- tables as HTML -----------------------------------------------------------------------------------------
_STYLE = """body{font-family:system-ui,sans-serif;font-size:13px;margin:16px;color:#222}
table{border-collapse:collapse}th,td{padding:4px 10px;text-align:right;border-bottom:1px solid #ddd}
th{background:#f2f4f7}td:first-child,th:first-child{text-align:left}caption{text-align:left;
font-weight:600;margin-bottom:8px}p{max-width:60em;color:#555}"""


def _wide(table: pd.DataFrame) -> pd.DataFrame:
    """A long metric table (one row per metric) as one row per key, one column per metric; cells read
    "mean [ci_low, ci_high]" where the table has an interval."""
    keys = [c for c in table.columns if c not in (*STAT_COLUMNS, "metric", "metric_model")]
    with_ci = "ci_low" in table.columns and "ci_high" in table.columns

    def cell(row) -> str:
        text = f"{row['mean']:.3f}"
        return text + (f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if with_ci else "")

    models = table.groupby("metric")["metric_model"].nunique()
    column = [m if models[m] == 1 else f"{m} ({model})" for m, model in zip(table["metric"], table["metric_model"],
                                                                             strict=True)]
    wide = table.assign(column=column, cell=table.apply(cell, axis=1)).pivot_table(
        index=keys, columns="column", values="cell", aggfunc="first", sort=True)
    return wide.reset_index().rename_axis(columns=None)


def table_html(table: pd.DataFrame, *, title: str, note: str = "") -> str:
    """A self-contained HTML page showing one result table."""
    shown = _wide(table) if {"metric", "mean"} <= set(table.columns) else table
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

"""Aggregate per-image benchmark scores into result tables (long/tidy layout, Parquet-friendly).

Protocol (the DTI authors' aggregation, docs/protocol.md): within each group, first the mean of every
subject's images, then the unweighted mean over subjects, so a subject with many images weighs no more
than one with few. On top we give a 95% percentile bootstrap interval over subjects: subjects are
resampled with replacement `n_boot` times and the 2.5/97.5 percentiles of the resampled subject-means
are reported. Each group draws from a fresh `numpy.random.default_rng(seed)` over its subjects sorted
by name, so identical inputs (in any row order) give identical tables, a group's interval never depends
on which other groups are present, and groups over the same subjects resample the same subjects
(a paired bootstrap across methods). With one subject every resample equals the mean, so the interval
collapses to the mean: it then says nothing about between-subject spread.

Every row keeps its `metric_model`: benchmarks disagree on the metric backbones, and two models for the
same metric are never averaged together.

Prompt sets and checkpoints are never pooled: sets of different sizes would weigh by their size, and a
mean over checkpoints is no checkpoint's score. The headline tables (summary, by_prompt_set, by_kind,
per_subject, per_prompt) show one checkpoint per backbone, the `summary_step` (default: the last step
scored); the summary shows one prompt set, which it names. `over_steps` gives every checkpoint.

Where DTI's ablations were run (methods with `ablation_of`, dti.methods), the `ablation` table puts them
beside the method they vary: the summary's rows for those methods, plus each text encoder's final norm
over the vocabulary's mean norm (per-subject mean, then the mean over subjects, with the same interval).

Where the runs' records are given (`run_cost` of each run.json), the `cost` table gives each (backbone,
method) what it trains and what its training took (dti.train.Trainer.cost): token and adapter parameters,
seconds per step (mean over subjects), the largest peak GPU memory over subjects, beside the summary's means,
so methods that train weights sit beside the token-only ones. An evaluation-time variant (`trained_as`)
shows the cost of the runs it reuses. Backbones are never pooled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from dti.errors import DtiError
from dti.io import write_parquet, write_text
from dti.latex import DIGITS, KEY_LABELS, escape, render, to_latex
from dti.methods import METHODS as _METHODS
from dti.metrics.spec import METRICS, SCORE_COLUMNS
from dti.terms import LIVE, SUBJECT_KINDS, display_name

NORM_COLUMNS = ("backbone", "method", "step", "subject", "encoder", "vector", "norm", "vocab_norm_mean",
                "vocab_norm_std")
METRIC_ORDER = tuple(METRICS)
STAT_COLUMNS = ("mean", "ci_low", "ci_high", "n_subjects", "n_images")

# Row keys of the tables that carry a bootstrap interval, and of the breakdowns that do not.
_CI_TABLES = {
    "summary": ("backbone", "prompt_set", "step", "method"),
    "by_prompt_set": ("backbone", "prompt_set", "step", "method"),
    "by_kind": ("backbone", "prompt_set", "step", "subject_kind", "method"),
    "over_steps": ("backbone", "prompt_set", "method", "step"),
}
COST = "cost"
TABLE_NAMES = (*_CI_TABLES, "per_subject", "per_prompt", "norms", COST)
ABLATION = "ablation"
NORM_RATIO = "norm_ratio"  # the ablation table's norm column: final norm / the vocabulary's mean norm


def ablation_methods(methods) -> list[str]:
    """Of `methods`, the ablations and the methods they vary, in registry order (empty without ablations)."""
    given = {str(m) for m in methods}
    bases = {_METHODS[m].ablation_of for m in given if m in _METHODS and _METHODS[m].ablation_of}
    return [name for name, m in _METHODS.items() if name in given and (name in bases or m.ablation_of)]


def table_names(methods) -> tuple[str, ...]:
    """The tables a run of `methods` writes: TABLE_NAMES, and the ablation table where ablations run."""
    return (*TABLE_NAMES, ABLATION) if ablation_methods(methods) else TABLE_NAMES

# The same vocabulary gives the same statistics; a larger spread means runs of different
# backbones/encoders were mixed into one group.
_VOCAB_RTOL = 1e-3
_MAX_LISTED_ROWS = 5


def _describe_rows(frame: pd.DataFrame, columns: tuple[str, ...]) -> str:
    shown = frame.head(_MAX_LISTED_ROWS)
    rows = ["(" + ", ".join(f"{c}={row[c]!r}" for c in columns if c in frame.columns) + ")"
            for _, row in shown.iterrows()]
    more = f" and {len(frame) - len(shown)} more" if len(frame) > len(shown) else ""
    return "; ".join(rows) + more


def _contract_columns(frame: pd.DataFrame, required: tuple[str, ...], what: str) -> pd.DataFrame:
    """Check the type, the columns and that there are rows; return a copy restricted to `required`."""
    if not isinstance(frame, pd.DataFrame):
        raise DtiError(f"{what}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DtiError(f"{what}: missing column(s) {missing}; expected {list(required)}")
    if frame.empty:
        raise DtiError(f"{what}: no rows")
    return frame.loc[:, list(required)].reset_index(drop=True)


def _validate(frame: pd.DataFrame, required: tuple[str, ...], what: str,
              row_id: tuple[str, ...]) -> pd.DataFrame:
    """Check columns, emptiness and missing values; return a copy restricted to the contract columns."""
    frame = _contract_columns(frame, required, what)
    bad = frame.isna().any(axis=1)
    if bad.any():
        columns = [c for c in required if frame[c].isna().any()]
        raise DtiError(f"{what}: {int(bad.sum())} row(s) with missing values in {columns}: "
                       f"{_describe_rows(frame[bad], row_id)}")
    return frame


def _numeric(frame: pd.DataFrame, column: str, what: str, row_id: tuple[str, ...],
             dtype: str) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() | ~np.isfinite(values.astype("float64"))
    if bad.any():
        raise DtiError(f"{what}: non-numeric or infinite {column!r} in {int(bad.sum())} row(s): "
                       f"{_describe_rows(frame[bad], row_id)}")
    if dtype == "int64" and (values != values.round()).any():
        raise DtiError(f"{what}: column {column!r} must hold integers")
    return values.astype(dtype)


def validate_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Return a clean copy of a Scores frame (contract columns, typed), or raise DtiError."""
    row_id = ("backbone", "method", "subject", "image", "metric")
    frame = _validate(scores, SCORE_COLUMNS, "scores", row_id)
    for column in ("backbone", "method", "subject", "subject_kind", "prompt_set", "image", "metric",
                   "metric_model"):
        frame[column] = frame[column].astype(str)
    frame["value"] = _numeric(frame, "value", "scores", row_id, "float64")
    frame["step"] = _numeric(frame, "step", "scores", row_id, "int64")
    frame["prompt_id"] = _numeric(frame, "prompt_id", "scores", row_id, "int64")
    frame["seed"] = _numeric(frame, "seed", "scores", row_id, "int64")

    unknown = frame[~frame["subject_kind"].isin(SUBJECT_KINDS)]
    if not unknown.empty:
        raise DtiError(f"scores: subject_kind must be one of {list(SUBJECT_KINDS)}, got "
                       f"{sorted(unknown['subject_kind'].unique())} in {_describe_rows(unknown, row_id)}")
    kinds = frame.groupby("subject")["subject_kind"].nunique()
    if (kinds > 1).any():
        raise DtiError(f"scores: subject(s) {sorted(kinds[kinds > 1].index)} appear with more than one "
                       "subject_kind")
    # The same image scored twice (e.g. one file concatenated twice) would silently double its weight.
    identity = ["backbone", "method", "step", "subject", "prompt_set", "prompt_id", "seed", "image", "metric",
                "metric_model"]
    dup = frame[frame.duplicated(identity, keep=False)]
    if not dup.empty:
        raise DtiError(f"scores: {len(dup)} duplicate row(s) for the same image and metric: "
                       f"{_describe_rows(dup, row_id)}")
    return frame


def validate_norms(norms: pd.DataFrame) -> pd.DataFrame:
    """Return a clean copy of a Norms frame (contract columns, typed), or raise DtiError."""
    row_id = ("backbone", "method", "subject", "encoder", "vector")
    frame = _validate(norms, NORM_COLUMNS, "norms", row_id)
    for column in ("backbone", "method", "subject", "encoder"):
        frame[column] = frame[column].astype(str)
    frame["vector"] = _numeric(frame, "vector", "norms", row_id, "int64")
    frame["step"] = _numeric(frame, "step", "norms", row_id, "int64")
    for column in ("norm", "vocab_norm_mean", "vocab_norm_std"):
        frame[column] = _numeric(frame, column, "norms", row_id, "float64")
    nonpositive = frame[frame["vocab_norm_mean"] <= 0]
    if not nonpositive.empty:
        raise DtiError(f"norms: vocab_norm_mean must be positive: {_describe_rows(nonpositive, row_id)}")
    return frame


def _sort(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Sort by keys (methods in registry order, as the cost table lists them; unregistered ones after,
    alphabetically), then by the conventional metric order (unknown metrics last, alphabetically)."""
    rank = {m: i for i, m in enumerate(METRIC_ORDER)}
    order = table.assign(_metric_rank=table["metric"].map(lambda m: rank.get(m, len(rank))))
    if "method" in keys:
        methods = {m: i for i, m in enumerate(_registry_rank(order["method"].unique()))}
        order = order.assign(_method_rank=order["method"].map(methods))
        keys = [("_method_rank" if k == "method" else k) for k in keys]
    order = order.sort_values([*keys, "_metric_rank", "metric", "metric_model"], kind="stable")
    return order.drop(columns=[c for c in ("_metric_rank", "_method_rank") if c in order]).reset_index(drop=True)


def _subject_means(scores: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean and image count per subject within each (keys, metric, metric_model) group."""
    group = [*keys, "subject", "metric", "metric_model"]
    out = scores.groupby(group, sort=True)["value"].agg(mean="mean", n_images="size").reset_index()
    out["n_images"] = out["n_images"].astype("int64")
    return out


def bootstrap_ci(subject_means: np.ndarray, *, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean over subjects (subjects resampled with replacement)."""
    values = np.asarray(subject_means, dtype="float64")
    if values.size == 0:
        raise DtiError("bootstrap_ci: no subject means")
    if values.size == 1:
        return float(values[0]), float(values[0])  # every resample is the one subject
    rng = np.random.default_rng(seed)
    resampled = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return float(low), float(high)


def _over_subjects(per_subject: pd.DataFrame, keys: list[str], *, n_boot: int, seed: int) -> pd.DataFrame:
    rows = []
    for group, part in per_subject.groupby([*keys, "metric", "metric_model"], sort=True):
        part = part.sort_values("subject")
        means = part["mean"].to_numpy()
        low, high = bootstrap_ci(means, n_boot=n_boot, seed=seed)
        rows.append((*group, float(means.mean()), low, high, len(part), int(part["n_images"].sum())))
    table = pd.DataFrame(rows, columns=[*keys, "metric", "metric_model", *STAT_COLUMNS])
    return table.astype({"n_subjects": "int64", "n_images": "int64"})


def _ci_table(scores: pd.DataFrame, keys: tuple[str, ...], *, n_boot: int, seed: int) -> pd.DataFrame:
    per_subject = _subject_means(scores, list(keys))
    return _sort(_over_subjects(per_subject, list(keys), n_boot=n_boot, seed=seed), list(keys))


def _per_subject_table(scores: pd.DataFrame) -> pd.DataFrame:
    keys = ["backbone", "prompt_set", "step", "method", "subject", "subject_kind"]
    table = scores.groupby([*keys, "metric", "metric_model"], sort=True)["value"].agg(
        mean="mean", n_images="size").reset_index()
    return _sort(table.astype({"n_images": "int64"}), keys)


def _per_prompt_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per prompt: each subject's mean over its seeds, then the unweighted mean over subjects."""
    keys = ["backbone", "method", "prompt_set", "step", "prompt_id"]
    per_subject = _subject_means(scores, keys)
    table = per_subject.groupby([*keys, "metric", "metric_model"], sort=True).agg(
        mean=("mean", "mean"), n_subjects=("subject", "size"), n_images=("n_images", "sum")).reset_index()
    return _sort(table.astype({"n_subjects": "int64", "n_images": "int64"}), keys)


def _norms_table(norms: pd.DataFrame) -> pd.DataFrame:
    """Learned-token norms per (backbone, method, encoder) next to the vocabulary's norm statistics.

    norm_mean follows the scores protocol (per-subject mean first, then over subjects); min and max are
    over every learned vector; ratio = norm_mean / vocab_norm_mean.
    """
    keys = ["backbone", "method", "step", "encoder"]
    rows = []
    for group, part in norms.groupby(keys, sort=True):
        for column in ("vocab_norm_mean", "vocab_norm_std"):
            spread = part[column].max() - part[column].min()
            if spread > _VOCAB_RTOL * abs(part[column].mean()):
                raise DtiError(f"norms: {column} differs within {dict(zip(keys, group, strict=True))} "
                               f"({part[column].min()} .. {part[column].max()}); were runs of different "
                               "vocabularies mixed?")
        per_subject = part.groupby("subject")["norm"].mean()
        norm_mean = float(per_subject.mean())
        vocab_mean = float(part["vocab_norm_mean"].mean())
        rows.append((*group, norm_mean, float(part["norm"].min()), float(part["norm"].max()), vocab_mean,
                     float(part["vocab_norm_std"].mean()), norm_mean / vocab_mean, len(per_subject),
                     len(part)))
    columns = [*keys, "norm_mean", "norm_min", "norm_max", "vocab_norm_mean", "vocab_norm_std", "ratio",
               "n_subjects", "n_vectors"]
    return pd.DataFrame(rows, columns=columns).astype({"n_subjects": "int64", "n_vectors": "int64"})


def _ablation_table(summary: pd.DataFrame, norms: pd.DataFrame, *, n_boot: int, seed: int) -> pd.DataFrame | None:
    """The summary's rows of DTI's ablations and the methods they vary, with the final norm ratio per encoder;
    a block per backbone that ran an ablation (one that ran only the methods varied has none)."""
    rows = ablation_methods(summary["method"].unique())
    if not rows:
        return None
    ablated = {b for b, part in summary.groupby("backbone") if any(_METHODS[m].ablation_of
                                                                     for m in part["method"].unique() if m in _METHODS)}
    scores = summary[summary["method"].isin(rows) & summary["backbone"].isin(ablated)]
    at = scores.drop_duplicates("backbone").set_index("backbone")[["prompt_set", "step"]]
    norms = norms[norms["method"].isin(rows) & norms["backbone"].isin(at.index)]
    per_subject = (norms.assign(ratio=norms["norm"] / norms["vocab_norm_mean"])
                   .groupby(["backbone", "method", "subject", "encoder"], sort=True)
                   .agg(mean=("ratio", "mean"), n_images=("ratio", "size")).reset_index()
                   .rename(columns={"encoder": "metric_model"}).assign(metric=NORM_RATIO))
    ratio = _over_subjects(per_subject, ["backbone", "method"], n_boot=n_boot, seed=seed)
    ratio = ratio.join(at, on="backbone")
    table = pd.concat([scores, ratio[scores.columns]], ignore_index=True)
    rank = {m: i for i, m in enumerate(rows)}  # each method beside its ablations, in registry order
    table = _sort(table.assign(_rank=table["method"].map(rank)), ["backbone", "prompt_set", "step", "_rank"])
    return table.drop(columns="_rank")


# --- the cost table -------------------------------------------------------------------------------------
# One row per run (run_cost of its run.json), labelled by the run record's backbone, method and subject.
RUN_COST_COLUMNS = ("backbone", "method", "subject", "steps", "resumed_from", "seconds", "has_cost",
                    "token_parameters", "adapter_parameters", "peak_gpu_memory_bytes")
# The cost table's own columns, before one column per metric of the summary (its means).
COST_COLUMNS = ("backbone", "prompt_set", "step", "method", "trained_as", "token_parameters", "adapter_parameters",
                "trainable_parameters", "seconds_per_step", "peak_gpu_memory_gib", "n_runs", "n_without_cost")
_GIB = 2**30


def _number(value) -> float:
    return np.nan if value is None else float(value)


def run_cost(run: Mapping) -> dict:
    """The cost fields of one run.json (dti.train.finish): steps, resumed_from (steps done before a resume),
    seconds (this process's wall time), and its "cost" record's parameter counts and peak GPU memory.
    A run.json written before runs recorded their cost has has_cost False and NaN for those."""
    cost = run.get("cost")
    has_cost = isinstance(cost, Mapping)
    cost = cost if has_cost else {}
    return {"steps": run.get("steps"), "resumed_from": run.get("resumed_from", 0),
            "seconds": _number(run.get("seconds")), "has_cost": has_cost,
            "token_parameters": _number(cost.get("token_parameters")),
            "adapter_parameters": _number(cost.get("adapter_parameters")),
            "peak_gpu_memory_bytes": _number(cost.get("peak_gpu_memory_bytes"))}


def validate_run_costs(runs: pd.DataFrame) -> pd.DataFrame:
    """Return a clean copy of a per-run cost frame (RUN_COST_COLUMNS, typed), or raise DtiError. Seconds,
    parameter counts and memory may be missing (NaN); the labels, steps and resumed_from may not."""
    row_id = ("backbone", "method", "subject")
    frame = _contract_columns(runs, tuple(RUN_COST_COLUMNS), "runs")
    required = [*row_id, "steps", "resumed_from", "has_cost"]
    bad = frame[required].isna().any(axis=1)
    if bad.any():
        raise DtiError(f"runs: {int(bad.sum())} run(s) without {[c for c in required if frame[c].isna().any()]}: "
                       f"{_describe_rows(frame[bad], row_id)}")
    for column in row_id:
        frame[column] = frame[column].astype(str)
    for column in ("steps", "resumed_from"):
        frame[column] = _numeric(frame, column, "runs", row_id, "int64")
    for column in ("seconds", "token_parameters", "adapter_parameters", "peak_gpu_memory_bytes"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame["has_cost"] = frame["has_cost"].astype(bool)
    dup = frame[frame.duplicated(list(row_id), keep=False)]
    if not dup.empty:
        raise DtiError(f"runs: {len(dup)} record(s) of the same run: {_describe_rows(dup, row_id)}")
    return frame


def _trained_as(method: str) -> str:
    """The method whose runs `method` uses: itself, or the one an evaluation-time variant reuses."""
    return (_METHODS[method].trained_as if method in _METHODS else None) or method


def _registry_rank(methods) -> list[str]:
    """`methods` in registry order, unregistered ones after them, alphabetically."""
    order = {name: i for i, name in enumerate(_METHODS)}
    return sorted(set(methods), key=lambda m: (order.get(m, len(order)), m))


def _metric_column_names(summary: pd.DataFrame) -> dict[tuple[str, str], str]:
    """{(metric, metric_model): its column in the cost table}: the metric's key, with the model where the
    summary holds one metric of two models; in the tables' metric order."""
    pairs = summary[["metric", "metric_model"]].drop_duplicates().itertuples(index=False, name=None)
    rank = {m: i for i, m in enumerate(METRIC_ORDER)}
    pairs = sorted(pairs, key=lambda p: (rank.get(p[0], len(rank)), p[0], p[1]))
    models = summary.groupby("metric")["metric_model"].nunique()
    return {(m, model): m if models[m] == 1 else f"{m} ({model})" for m, model in pairs}


def _cost_table(runs: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (backbone, method) of the runs, and per evaluation-time variant in the summary whose
    trained method has runs on that backbone; backbones never pooled."""
    done = runs["steps"] - runs["resumed_from"]
    runs = runs.assign(seconds_per_step=(runs["seconds"] / done).where(done > 0),
                       peak_gib=runs["peak_gpu_memory_bytes"] / _GIB)
    groups = {key: part for key, part in runs.groupby(["backbone", "method"], sort=True)}
    metric_columns = _metric_column_names(summary)
    means = summary.set_index(["backbone", "method", "metric", "metric_model"])["mean"]
    rows = []
    for backbone in sorted(runs["backbone"].unique()):
        scored = summary[summary["backbone"] == backbone]
        shown = {m for b, m in groups if b == backbone}
        shown |= {m for m in scored["method"].unique() if (backbone, _trained_as(m)) in groups}
        at = scored[["prompt_set", "step"]].drop_duplicates()
        prompt_set, step = (at.iloc[0]["prompt_set"], int(at.iloc[0]["step"])) if len(at) else (None, None)
        for method in _registry_rank(shown):
            source = method if (backbone, method) in groups else _trained_as(method)
            part = groups[(backbone, source)]
            costed = part[part["has_cost"]]
            token = costed["token_parameters"].max()  # one count per method and backbone; the largest if not
            adapter = costed["adapter_parameters"].max()
            row = {"backbone": backbone, "prompt_set": prompt_set, "step": step, "method": method,
                   "trained_as": source, "token_parameters": token, "adapter_parameters": adapter,
                   "trainable_parameters": token + adapter, "seconds_per_step": part["seconds_per_step"].mean(),
                   "peak_gpu_memory_gib": part["peak_gib"].max(), "n_runs": len(part),
                   "n_without_cost": int((~part["has_cost"]).sum())}
            for pair, column in metric_columns.items():
                row[column] = means.get((backbone, method, *pair), np.nan)
            rows.append(row)
    table = pd.DataFrame(rows, columns=[*COST_COLUMNS, *metric_columns.values()])
    ints = {c: "Int64" for c in ("step", "token_parameters", "adapter_parameters", "trainable_parameters")}
    table = table.astype({**ints, "n_runs": "int64", "n_without_cost": "int64",
                          "seconds_per_step": "float64", "peak_gpu_memory_gib": "float64"})
    return table.astype({c: "float64" for c in metric_columns.values()})


def _significant(value: float, digits: int = 3) -> str:
    """`digits` significant digits, never in exponent form: 0.0123, 1.23, 12.3, 123, 1,234."""
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - int(np.floor(np.log10(abs(value)))))
    return f"{value:,.{decimals}f}"


_COST_HEADERS = {"token_parameters": "Token", "adapter_parameters": "Adapter",
                 "trainable_parameters": "Trainable", "seconds_per_step": "s / step",
                 "peak_gpu_memory_gib": "Peak GiB", "n_runs": "Runs"}


def cost_latex(table: pd.DataFrame, *, caption: str, label: str) -> str:
    """The cost table as booktabs LaTeX: one row per backbone and method (its display name), parameter counts
    with thousands separators, seconds and GiB to three significant digits, the summary's means as in the
    other tables; "--" where nothing was recorded. `caption` is plain text (escaped here)."""
    if table.empty:
        raise DtiError(f"cost_latex: table {label!r} has no rows")
    missing = [c for c in COST_COLUMNS if c not in table.columns]
    if missing:
        raise DtiError(f"cost_latex: table {label!r} lacks {missing}")
    metrics = [c for c in table.columns if c not in COST_COLUMNS]
    models = {}
    for column in metrics:  # "clip_t" or "clip_t (open_clip:...)", as _metric_column_names named them
        metric, _, model = column.partition(" (")
        models[column] = (metric, model.removesuffix(")"))
    headers = [*_COST_HEADERS.values(),
               *(escape(display_name(m) + (f" ({model})" if model else "")) for m, model in models.values())]

    def cells(row) -> list[str | None]:
        counts = [None if pd.isna(row[c]) else f"{int(row[c]):,}"
                  for c in ("token_parameters", "adapter_parameters", "trainable_parameters")]
        timing = [None if pd.isna(row[c]) else _significant(float(row[c]))
                  for c in ("seconds_per_step", "peak_gpu_memory_gib")]
        scores = [None if pd.isna(row[c]) else f"{float(row[c]):.{DIGITS}f}" for c in metrics]
        return [*counts, *timing, str(int(row["n_runs"])), *scores]

    index = pd.MultiIndex.from_arrays([table["backbone"].astype(str), table["method"].map(display_name)],
                                      names=[KEY_LABELS["backbone"], KEY_LABELS["method"]])
    body = pd.DataFrame([cells(row) for _, row in table.iterrows()], index=index, columns=headers)
    return render(body, caption=caption, label=label)


def _cost_caption(scores: pd.DataFrame, table: pd.DataFrame | None) -> str:
    subjects = scores["subject"].nunique()
    text = (f"{_TITLES[COST]} Token: the trainable parameters of the learned token (every vector, every text "
            "encoder); Adapter: those of the weights trained on the denoiser (0 for a method that learns a token "
            "only); Trainable: their sum; as the runs recorded them in run.json. "
            "s / step: each run's wall time (from the trainer's set-up, latents and adapter included, to its "
            "last step; model loading excluded) over the steps that run took (after a resume, the steps since), "
            "then the mean over subjects. Peak GiB: the largest over subjects of the peak GPU memory torch "
            "allocated in the training process (the backbone included). Step time and memory are those of each "
            "training job on its own device: numbers of runs on a CPU say nothing of GPU speed, and a CPU run "
            "records no GPU memory (--). Runs: the training runs (one per subject) behind the row. ")
    if table is not None:
        shown = table[["prompt_set", "step"]].dropna()
        where = _where(shown) if not shown.empty else ""
        scored = [c for c in table.columns if c not in COST_COLUMNS]
        if scored:
            text += (f"{where}{', '.join(dict.fromkeys(display_name(c.partition(' (')[0]) for c in scored))}: the summary table's "
                     f"means (per-subject means, then the unweighted mean over subjects of {subjects} "
                     f"subject{'s' if subjects != 1 else ''}; the intervals are in the summary table); -- where a "
                     "method has no scores there. ")
        reused = table[table["method"] != table["trained_as"]].drop_duplicates(["method", "trained_as"])
        if not reused.empty:
            text += ("; ".join(f"{display_name(r.method)} reuses the trained vectors of {display_name(r.trained_as)}"
                               for r in reused.itertuples()) + ", so their rows show the cost of those runs. ")
        lacking = table[(table["n_without_cost"] > 0) & (table["method"] == table["trained_as"])]
        if not lacking.empty:
            listed = ", ".join(f"{display_name(r.method)} on {r.backbone} ({r.n_without_cost} of {r.n_runs})"
                               for r in lacking.head(_MAX_LISTED_ROWS).itertuples())
            more = f" and {len(lacking) - _MAX_LISTED_ROWS} more" if len(lacking) > _MAX_LISTED_ROWS else ""
            text += (f"Runs written before run.json recorded its cost, whose parameters and memory are unknown "
                     f"(-- where no run of a row recorded them): {listed}{more}. ")
    text += ("Parameter counts: the largest any run of the row recorded (the runs of one method on one backbone "
             f"train the same parameters). Metric models: {_metric_models(scores)}.")
    return text


def _summary_prompt_set(scores: pd.DataFrame, prompt_set: str | None) -> str:
    present = sorted(scores["prompt_set"].unique())
    if prompt_set is None:
        if len(present) > 1:
            raise DtiError(f"scores hold several prompt sets {present}: name the summary's (summary_prompt_set)")
        return present[0]
    if prompt_set not in present:
        raise DtiError(f"summary prompt set {prompt_set!r} has no scores; prompt sets scored: {present}")
    return prompt_set


def _summary_steps(scores: pd.DataFrame, step: int | Mapping[str, int] | None) -> dict[str, int]:
    """The headline checkpoint of each backbone: the given one, or the last one scored."""
    steps = {}
    for backbone, part in scores.groupby("backbone", sort=True):
        scored = sorted(int(v) for v in part["step"].unique())
        wanted = step.get(backbone) if isinstance(step, Mapping) else step
        if wanted is None:
            wanted = scored[-1]
        if isinstance(wanted, bool) or not isinstance(wanted, (int, np.integer)) or int(wanted) not in scored:
            raise DtiError(f"summary step {wanted!r} of backbone {backbone!r} was not scored; steps scored: "
                           f"{scored}")
        steps[str(backbone)] = int(wanted)
    return steps


def build_tables(scores: pd.DataFrame, norms: pd.DataFrame | None, *, n_boot: int = 1000, seed: int = 0,
                 summary_prompt_set: str | None = None, summary_step: int | Mapping[str, int] | None = None,
                 runs: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """All result tables in long layout, keyed by name (see TABLE_NAMES); "norms" only if norms is given,
    "cost" (one row per backbone and method, the summary's means as columns) only if `runs` is: one row per
    training run, RUN_COST_COLUMNS (the run's backbone, method and subject, and `run_cost` of its run.json).

    `summary_prompt_set`: the summary's prompt set (needed when several were scored). `summary_step`: the
    checkpoint of the headline tables, one for all backbones or {backbone: step}; default: each backbone's
    last scored step.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise DtiError(f"n_boot must be a positive integer, got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DtiError(f"seed must be a non-negative integer, got {seed!r}")
    scores = validate_scores(scores)
    prompt_set = _summary_prompt_set(scores, summary_prompt_set)
    steps = _summary_steps(scores, summary_step)
    at_step = scores[scores["step"] == scores["backbone"].map(steps)]
    sources = {"summary": at_step[at_step["prompt_set"] == prompt_set], "by_prompt_set": at_step,
               "by_kind": at_step, "over_steps": scores}
    tables = {name: _ci_table(sources[name], keys, n_boot=int(n_boot), seed=int(seed))
              for name, keys in _CI_TABLES.items()}
    tables["per_subject"] = _per_subject_table(at_step)
    tables["per_prompt"] = _per_prompt_table(at_step)
    if norms is not None:
        norms = validate_norms(norms)
        tables["norms"] = _norms_table(norms)
        ablation = _ablation_table(tables["summary"], norms, n_boot=int(n_boot), seed=int(seed))
        if ablation is not None:
            tables[ABLATION] = ablation
    if runs is not None:
        tables[COST] = _cost_table(validate_run_costs(runs), tables["summary"])
    return tables


def _compact_ints(values) -> str:
    """[0, 1, 2, 3] -> "0-3"; [0, 2, 5] -> "0, 2, 5"."""
    values = sorted({int(v) for v in values})
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(str(v) for v in values)


def _metric_models(scores: pd.DataFrame) -> str:
    parts = []
    metrics = sorted(scores["metric"].unique(), key=lambda m: (METRIC_ORDER.index(m)
                                                                if m in METRIC_ORDER else len(METRIC_ORDER), m))
    for metric in metrics:
        models = sorted(scores.loc[scores["metric"] == metric, "metric_model"].unique())
        parts.append(f"{display_name(metric)}: {' / '.join(models)}")
    return "; ".join(parts)


_TITLES = {
    "summary": "Subject and text fidelity per backbone and method.",
    "by_prompt_set": "Subject and text fidelity per prompt set.",
    "by_kind": "Subject and text fidelity for object and live subjects.",
    "over_steps": "Subject and text fidelity over training steps.",
    "per_subject": "Scores per subject.",
    "per_prompt": "Scores per prompt.",
    "norms": "Norms of the learned token embeddings.",
    ABLATION: "DTI beside its ablations, each exchanging one part of DTI (its start, norm, optimizer or m).",
    COST: "What each method trains and what its training took, beside its scores.",
}


def _where(table: pd.DataFrame | None) -> str:
    """"Prompt set X; checkpoint at training step N. " for the prompt sets and steps a table shows."""
    if table is None:
        return ""
    parts = []
    if "prompt_set" in table.columns:
        sets = sorted(table["prompt_set"].unique())
        parts.append(f"{'Prompt sets' if len(sets) > 1 else 'Prompt set'} {', '.join(sets)}")
    if "step" in table.columns:
        steps = sorted(int(v) for v in table["step"].unique())
        parts.append(f"{'checkpoints at training steps' if len(steps) > 1 else 'checkpoint at training step'} "
                     f"{', '.join(map(str, steps))}")
    if not parts:
        return ""
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + ". "


def caption_for(scores: pd.DataFrame, table_name: str, *, n_boot: int = 1000,
                table: pd.DataFrame | None = None) -> str:
    """Plain-text caption stating the protocol, subject counts, seeds and metric models (to_latex escapes it);
    with `table`, also its prompt set(s) and checkpoint(s)."""
    if table_name not in _TITLES:
        raise DtiError(f"caption_for: unknown table {table_name!r}; known: {list(_TITLES)}")
    if table_name == "norms":
        return (f"{_TITLES['norms']} {_where(table)}L2 norm of each learned token embedding per text encoder: "
                "per-subject mean, then the unweighted mean over subjects; min and max over all learned vectors; "
                "the vocabulary's mean and std of token-embedding norms; ratio = learned mean / vocabulary mean.")
    scores = validate_scores(scores)
    if table_name == COST:
        return _cost_caption(scores, table)
    subjects = scores.drop_duplicates("subject")
    n_live = int((subjects["subject_kind"] == LIVE).sum())
    n_subjects = len(subjects)
    counts = f"{n_subjects} subjects in all: {n_subjects - n_live} object, {n_live} live"
    if table_name in (*_CI_TABLES, ABLATION):
        protocol = (f"Per-subject means, then the unweighted mean over subjects ({counts}); each cell is "
                    f"mean ± half-width of the 95% percentile bootstrap CI over subjects ({n_boot} "
                    "resamples; exact bounds in the Parquet file; a group with one subject has no "
                    "spread).")
    elif table_name == "per_subject":
        protocol = f"Mean over all images of each subject ({counts})."
    else:
        protocol = f"Per-subject means over seeds, then the unweighted mean over subjects ({counts})."
    best = {"summary": "per backbone", "by_prompt_set": "per backbone and prompt set",
            "by_kind": "per backbone, prompt set and subject kind", "over_steps": "per backbone, prompt set and step",
            "per_subject": "per backbone and subject", "per_prompt": "per backbone and prompt",
            ABLATION: "per backbone"}[table_name]
    protocol += f" Higher is better; the best method {best} is in bold."
    if table_name == ABLATION:
        protocol += (" Norm / m: each text encoder's final learned norm over its vocabulary's mean norm (DTI's "
                     "default m), averaged the same way; never bold.")
    seeds = _compact_ints(scores["seed"].unique())
    return (f"{_TITLES[table_name]} {_where(table)}{protocol} Seeds {seeds} per prompt. "
            f"Metric models: {_metric_models(scores)}.")


def table_latex(name: str, table: pd.DataFrame, *, caption: str, label: str) -> str:
    """The LaTeX of result table `name`: the cost table's own layout (cost_latex), else dti.latex.to_latex."""
    render_table = cost_latex if name == COST else to_latex
    return render_table(table, caption=caption, label=label)


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | os.PathLike, *,
                 captions: Mapping[str, str], label_prefix: str = "tab:") -> list[Path]:
    """Write {name}.parquet and {name}.tex for every table, each atomically; return the paths written."""
    missing = [name for name in tables if name not in captions]
    if missing:
        raise DtiError(f"write_tables: no caption for table(s) {missing}")
    out_dir = Path(out_dir)
    written = []
    for name, table in tables.items():
        # Render before writing anything so an unrenderable table leaves no half-written pair.
        latex = table_latex(name, table, caption=captions[name], label=f"{label_prefix}{name}")
        write_parquet(out_dir / f"{name}.parquet", table)
        write_text(out_dir / f"{name}.tex", latex)
        written += [out_dir / f"{name}.parquet", out_dir / f"{name}.tex"]
    return written

"""Render the long result tables of dti.tables as booktabs LaTeX (needs \\usepackage{booktabs}).

Layout: one row per key combination (methods as rows), one column per (metric, metric_model) pair.
A cell is "mean ± h" where h is half the width of the 95% bootstrap interval, (ci_high - ci_low) / 2;
the interval can be asymmetric, so the exact bounds stay in the Parquet file. Tables without an interval
show the mean only. In each column, the best (highest, compared at the printed precision, ties all bold)
mean among the methods of a block is bold; a block is the rows that share every key but the method
(for the summary: one backbone). Blocks with a single method are not bolded; norm tables never are.
"""

from __future__ import annotations

import re

import pandas as pd

from dti.errors import DtiError

METRIC_LABELS = {"dino": "DINO", "dinov2": "DINOv2", "clip_i": "CLIP-I", "clip_t": "CLIP-T",
                 "siglip_t": "SigLIP-T"}
KEY_LABELS = {"backbone": "Backbone", "prompt_set": "Prompt set", "subject_kind": "Kind",
              "method": "Method", "step": "Step", "subject": "Subject", "prompt_id": "Prompt",
              "encoder": "Encoder"}
DIGITS = 3

_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
             "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}
_LABEL_OK = re.compile(r"^[A-Za-z0-9:_.\-/]+$")


def escape(text: object) -> str:
    """Plain text -> LaTeX text: special characters escaped, "±" typeset as math."""
    return "".join(_SPECIALS.get(ch, ch) for ch in str(text))


def _fmt(value: float) -> str:
    return f"{value:.{DIGITS}f}"


def _key_columns(table: pd.DataFrame) -> list[str]:
    keys = [c for c in table.columns if c in KEY_LABELS]
    for needed in ("backbone", "method"):
        if needed not in keys:
            raise DtiError(f"to_latex: table has no {needed!r} column (columns: {list(table.columns)})")
    return keys


def _row_lines(key_rows: list[tuple], keys: list[str], cells: list[list[str]]) -> list[str]:
    """Table body; a key value is printed only where it (or a key to its left) changes."""
    lines, previous = [], None
    for key, row_cells in zip(key_rows, cells, strict=True):
        if previous is not None and key[0] != previous[0]:
            lines.append(r"\midrule")
        shown, same_so_far = [], previous is not None
        for i, value in enumerate(key):
            same_so_far = same_so_far and value == previous[i]
            shown.append("" if same_so_far else escape(value))
        lines.append(" & ".join(shown + row_cells) + r" \\")
        previous = key
    return lines


def _metric_columns(table: pd.DataFrame) -> list[tuple[str, str]]:
    order = list(METRIC_LABELS)
    pairs = table[["metric", "metric_model"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted(pairs, key=lambda p: (order.index(p[0]) if p[0] in order else len(order), p[0], p[1]))


def _metric_table(table: pd.DataFrame) -> tuple[str, list[str], list[str]]:
    missing = [c for c in ("metric_model", "mean") if c not in table.columns]
    if missing:
        raise DtiError(f"to_latex: table has a 'metric' column but lacks {missing}")
    keys = _key_columns(table)
    has_ci = "ci_low" in table.columns and "ci_high" in table.columns
    dup = table[table.duplicated([*keys, "metric", "metric_model"], keep=False)]
    if not dup.empty:
        raise DtiError(f"to_latex: several rows for the same keys and metric, e.g. {dup.iloc[0].to_dict()}")

    columns = _metric_columns(table)
    models_per_metric = table.groupby("metric")["metric_model"].nunique()
    headers = [METRIC_LABELS.get(m, m) + (f" ({model})" if models_per_metric[m] > 1 else "")
               for m, model in columns]
    key_rows = list(table[keys].drop_duplicates().itertuples(index=False, name=None))
    # (*key values, metric, metric_model) -> row position in `table`
    lookup = {row: pos for pos, row in
              enumerate(table[[*keys, "metric", "metric_model"]].itertuples(index=False, name=None))}

    # Best printed mean per (block, column); a block is the rows that share every key but the method.
    method_at = keys.index("method")
    best: dict[tuple, list[float]] = {}
    for key in key_rows:
        block = key[:method_at] + key[method_at + 1:]
        for col in columns:
            if (*key, *col) in lookup:
                best.setdefault((block, col), []).append(round(table["mean"].iat[lookup[(*key, *col)]], DIGITS))

    cells = []
    for key in key_rows:
        block = key[:method_at] + key[method_at + 1:]
        row_cells = []
        for col in columns:
            if (*key, *col) not in lookup:
                row_cells.append("--")
                continue
            record = table.iloc[lookup[(*key, *col)]]
            contenders = best[(block, col)]
            text = _fmt(record["mean"])
            if len(contenders) > 1 and round(record["mean"], DIGITS) == max(contenders):
                text = rf"\textbf{{{text}}}"
            if has_ci:
                text += rf" $\pm$ {_fmt((record['ci_high'] - record['ci_low']) / 2)}"
            row_cells.append(text)
        cells.append(row_cells)
    header = [KEY_LABELS[k] for k in keys] + headers
    spec = "l" * len(keys) + "c" * len(columns)
    return spec, [" & ".join(escape(h) for h in header) + r" \\"], _row_lines(key_rows, keys, cells)


_NORM_COLUMNS = ("norm_mean", "norm_min", "norm_max", "vocab_norm_mean", "vocab_norm_std", "ratio")


def _norms_table(table: pd.DataFrame) -> tuple[str, list[str], list[str]]:
    missing = [c for c in _NORM_COLUMNS if c not in table.columns]
    if missing:
        raise DtiError(f"to_latex: norms table lacks {missing}")
    keys = _key_columns(table)
    key_rows = list(table[keys].itertuples(index=False, name=None))
    cells = [[_fmt(r.norm_mean), _fmt(r.norm_min), _fmt(r.norm_max),
              rf"{_fmt(r.vocab_norm_mean)} $\pm$ {_fmt(r.vocab_norm_std)}", _fmt(r.ratio)]
             for r in table.itertuples(index=False)]
    header = [escape(KEY_LABELS[k]) for k in keys] + [
        "Learned mean", "Min", "Max", r"Vocab.\ mean $\pm$ std", "Ratio"]
    return "l" * len(keys) + "c" * 5, [" & ".join(header) + r" \\"], _row_lines(key_rows, keys, cells)


def to_latex(table: pd.DataFrame, *, caption: str, label: str) -> str:
    """A complete booktabs table environment; `caption` is plain text and is escaped here."""
    if not isinstance(caption, str) or not caption.strip():
        raise DtiError("to_latex: caption must be a non-empty string")
    if not isinstance(label, str) or not _LABEL_OK.match(label):
        raise DtiError(f"to_latex: label {label!r} must be letters, digits and : _ . - / only")
    if table.empty:
        raise DtiError(f"to_latex: table {label!r} has no rows")
    if "metric" in table.columns:
        spec, header, body = _metric_table(table)
    elif "norm_mean" in table.columns:
        spec, header, body = _norms_table(table)
    else:
        raise DtiError(f"to_latex: table {label!r} has neither a 'metric' nor a 'norm_mean' column")
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{escape(caption)}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule", *header, r"\midrule", *body, r"\bottomrule",
             r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"

"""Render result tables as booktabs LaTeX with pandas' Styler (needs \\usepackage{booktabs}).

Layout of the long tables of dti.tables: one row per key combination (methods last, by their display
names; a key is printed where it changes), one column per (metric, metric_model) pair, named by the
metric's display name (and its model where one metric was computed by two). A cell is "mean ± h" where h
is half the width of the 95% bootstrap interval, (ci_high - ci_low) / 2; the interval can be asymmetric,
so the exact bounds stay in the Parquet file. Tables without an interval show the mean only. In each
column, the best (highest, compared at the printed precision, ties all bold) mean among the methods of a
block is bold; a block is the rows that share every key but the method (for the summary: one backbone).
Blocks with a single method are not bolded; norm tables and columns that are no score never are.
"""

from __future__ import annotations

import re

import pandas as pd

from dti.errors import DtiError
from dti.terms import display_name

KEY_LABELS = {"backbone": "Backbone", "prompt_set": "Prompt set", "subject_kind": "Kind",
              "method": "Method", "step": "Step", "subject": "Subject", "prompt_id": "Prompt",
              "encoder": "Encoder"}
DIGITS = 3

_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
             "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}
_LABEL_OK = re.compile(r"^[A-Za-z0-9:_.\-/]+$")
_BOLD = "textbf:--rwrap;"  # Styler's LaTeX style: wrap the cell in \textbf{...}


def escape(text: object) -> str:
    """Plain text -> LaTeX text: special characters escaped, "±" typeset as math (Styler's own escaping
    covers cells and index values, not captions and the headers written here)."""
    return "".join(_SPECIALS.get(ch, ch) for ch in str(text))


def _fmt(value: float) -> str:
    return f"{value:.{DIGITS}f}"


def render(cells: pd.DataFrame, *, caption: str, label: str, bold: pd.DataFrame | None = None) -> str:
    """A complete booktabs table environment from `cells`: the index (named by its header labels, which are
    LaTeX already, as are the column labels) gives the row keys, the values are the cells' LaTeX (None:
    "--"); `bold` (same shape, booleans) marks the cells set in bold."""
    if not isinstance(caption, str) or not caption.strip():
        raise DtiError("to_latex: caption must be a non-empty string")
    if not isinstance(label, str) or not _LABEL_OK.match(label):
        raise DtiError(f"to_latex: label {label!r} must be letters, digits and : _ . - / only")
    styler = cells.style.format(na_rep="--").format_index(escape="latex", axis=0)
    if bold is not None:
        styler = styler.apply(lambda _: bold.map(lambda b: _BOLD if b else ""), axis=None)
    latex = styler.to_latex(column_format="l" * cells.index.nlevels + "c" * cells.shape[1], position="t",
                            position_float="centering", hrules=True, label=label, caption=escape(caption),
                            sparse_index=True, multirow_align="naive")
    return latex if latex.endswith("\n") else latex + "\n"


def _key_columns(table: pd.DataFrame) -> list[str]:
    keys = [c for c in table.columns if c in KEY_LABELS]
    for needed in ("backbone", "method"):
        if needed not in keys:
            raise DtiError(f"to_latex: table has no {needed!r} column (columns: {list(table.columns)})")
    return keys


def _row_index(table: pd.DataFrame, keys: list[str]) -> pd.MultiIndex:
    """The rows' keys as shown: methods by their display names, everything as text."""
    shown = table[keys].astype(str).assign(method=table["method"].map(display_name))
    return pd.MultiIndex.from_frame(shown, names=[KEY_LABELS[k] for k in keys])


def _metric_columns(table: pd.DataFrame) -> list[tuple[str, str]]:
    from dti.metrics.spec import METRICS

    order = list(METRICS)
    pairs = table[["metric", "metric_model"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted(pairs, key=lambda p: (order.index(p[0]) if p[0] in order else len(order), p[0], p[1]))


def _metric_table(table: pd.DataFrame, caption: str, label: str) -> str:
    missing = [c for c in ("metric_model", "mean") if c not in table.columns]
    if missing:
        raise DtiError(f"to_latex: table has a 'metric' column but lacks {missing}")
    keys = _key_columns(table)
    dup = table[table.duplicated([*keys, "metric", "metric_model"], keep=False)]
    if not dup.empty:
        raise DtiError(f"to_latex: several rows for the same keys and metric, e.g. {dup.iloc[0].to_dict()}")
    columns = _metric_columns(table)
    models_per_metric = table.groupby("metric")["metric_model"].nunique()
    headers = [escape(display_name(m) + (f" ({model})" if models_per_metric[m] > 1 else "")) for m, model in columns]

    # One row per key combination, one column per (metric, model): the mean, and the text of each cell.
    rows = table.drop_duplicates(keys)[keys]
    means = table.pivot_table(index=keys, columns=["metric", "metric_model"], values="mean", aggfunc="first",
                              sort=False).reindex(index=pd.MultiIndex.from_frame(rows), columns=columns)
    half = None
    if {"ci_low", "ci_high"} <= set(table.columns):
        half = table.assign(half=(table["ci_high"] - table["ci_low"]) / 2).pivot_table(
            index=keys, columns=["metric", "metric_model"], values="half", aggfunc="first", sort=False
        ).reindex(index=means.index, columns=columns).to_numpy()
    text = [[None if pd.isna(mean) else _fmt(mean) + ("" if half is None else rf" $\pm$ {_fmt(half[i, j])}")
             for j, mean in enumerate(row)] for i, row in enumerate(means.to_numpy())]

    # The best printed mean per column within each block: the rows sharing every key but the method.
    shown = means.round(DIGITS)
    others = [k for k in keys if k != "method"]
    block = shown.groupby(level=others, sort=False)
    bold = (shown == block.transform("max")) & (block.transform("count") > 1)
    from dti.metrics.spec import METRICS

    bold.loc[:, [c for c in columns if c[0] not in METRICS]] = False  # only scores have a better direction

    index = _row_index(rows, keys)
    return render(pd.DataFrame(text, index=index, columns=headers), caption=caption, label=label,
                  bold=pd.DataFrame(bold.to_numpy(), index=index, columns=headers))


_NORM_COLUMNS = ("norm_mean", "norm_min", "norm_max", "vocab_norm_mean", "vocab_norm_std", "ratio")
_NORM_HEADERS = ("Learned mean", "Min", "Max", r"Vocab.\ mean $\pm$ std", "Ratio")


def _norms_table(table: pd.DataFrame, caption: str, label: str) -> str:
    missing = [c for c in _NORM_COLUMNS if c not in table.columns]
    if missing:
        raise DtiError(f"to_latex: norms table lacks {missing}")
    keys = _key_columns(table)
    cells = [[_fmt(r.norm_mean), _fmt(r.norm_min), _fmt(r.norm_max),
              rf"{_fmt(r.vocab_norm_mean)} $\pm$ {_fmt(r.vocab_norm_std)}", _fmt(r.ratio)]
             for r in table.itertuples(index=False)]
    return render(pd.DataFrame(cells, index=_row_index(table, keys), columns=list(_NORM_HEADERS)),
                  caption=caption, label=label)


def to_latex(table: pd.DataFrame, *, caption: str, label: str) -> str:
    """A complete booktabs table environment of a long result table; `caption` is plain text (escaped here)."""
    if table.empty:
        raise DtiError(f"to_latex: table {label!r} has no rows")
    if "metric" in table.columns:
        return _metric_table(table, caption, label)
    if "norm_mean" in table.columns:
        return _norms_table(table, caption, label)
    raise DtiError(f"to_latex: table {label!r} has neither a 'metric' nor a 'norm_mean' column")

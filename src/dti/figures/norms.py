"""Figures of the norm and direction analysis and of the magnitude sweep."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dti.figures import method_color, metric_name, model_footnote, new_figure
from dti.terms import display_name

_VOCAB_GREY = "#9a9a9a"


def curves_figure(curves: pd.DataFrame, *, title: str):
    """Rows: encoders; left: norm over steps (log scale, the vocabulary's mean +- std shaded), right: angle
    from the initialization. One line per method: the mean over subjects and vectors, shaded min to max."""
    encoders = sorted(curves["encoder"].unique())
    fig, axes = new_figure(10, 3.1 * len(encoders), len(encoders), 2)
    for r, encoder in enumerate(encoders):
        part = curves[curves["encoder"] == encoder]
        norm_ax, angle_ax = axes[r]
        mean, std = part["vocab_norm_mean"].iloc[0], part["vocab_norm_std"].iloc[0]
        norm_ax.axhspan(max(mean - std, 1e-12), mean + std, color=_VOCAB_GREY, alpha=0.25, linewidth=0)
        norm_ax.axhline(mean, color=_VOCAB_GREY, linewidth=1, linestyle="--", label="vocabulary mean +- std")
        for method, rows in part.groupby("method", sort=True):
            for ax, column in ((norm_ax, "norm"), (angle_ax, "angle_deg")):
                stats = rows.groupby("step")[column].agg(["mean", "min", "max"])
                ax.plot(stats.index, stats["mean"], color=method_color(method), label=display_name(method),
                        linewidth=1.6)
                ax.fill_between(stats.index, stats["min"], stats["max"], color=method_color(method), alpha=0.15,
                                linewidth=0)
        norm_ax.set_yscale("log")
        norm_ax.set_ylabel(f"{encoder}: embedding norm")
        angle_ax.set_ylabel(f"{encoder}: angle from init (deg)")
        for ax in axes[r]:
            ax.set_xlabel("training step")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def histogram_figure(norms: pd.DataFrame, *, title: str):
    """Per encoder: the vocabulary's norms (log-spaced bins) with each learned vector's final norm as a
    line in its method's colour."""
    encoders = sorted(norms["encoder"].unique())
    fig, axes = new_figure(5.2 * len(encoders), 3.4, 1, len(encoders))
    positive = norms["norm"][norms["norm"] > 0]
    bins = np.geomspace(positive.min() * 0.9, positive.max() * 1.1, 90)
    for ax, encoder in zip(axes[0], encoders, strict=True):
        vocab = norms[(norms["kind"] == "vocabulary") & (norms["encoder"] == encoder)]["norm"]
        ax.hist(vocab, bins=bins, color=_VOCAB_GREY, label=f"vocabulary ({len(vocab)} tokens)")
        ax.axvline(vocab.mean(), color="#555555", linestyle="--", linewidth=1, label=f"vocabulary mean {vocab.mean():.3f}")
        learned = norms[(norms["kind"] == "learned") & (norms["encoder"] == encoder)]
        for method, rows in learned.groupby("method", sort=True):
            for i, value in enumerate(rows["norm"]):
                ax.axvline(value, color=method_color(method), linewidth=1.2, alpha=0.8,
                           label=f"{display_name(method)} (learned, median {rows['norm'].median():.3f})" if i == 0
                           else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{encoder}: token embedding norm")
        ax.set_ylabel("tokens")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _spread_note(table: pd.DataFrame) -> str:
    """What magnitude_figure's error bars are: dti.analysis.magnitude.sweep_table's std column is the sample
    standard deviation over subjects of each subject's mean over prompts and seeds (0 with one subject)."""
    counts = sorted(int(n) for n in table["n_subjects"].unique()) if "n_subjects" in table.columns else []
    if counts and counts[-1] < 2:
        return "mean over subjects; one subject, so no error bars (no spread over subjects)"
    n = ("" if not counts else f" ({counts[0]} subjects)" if len(counts) == 1
         else f" ({counts[0]}-{counts[-1]} subjects)")
    return (f"mean over subjects; bars: \u00b11 std over subjects{n},\n"
            "each subject's score the mean over its prompts and seeds")


def magnitude_figure(table: pd.DataFrame, *, title: str, image_metric: str, text_metric: str):
    """Subject and text fidelity against the token's norm (a multiple of m, log scale), one line per method's
    directions (mean over subjects, bars: +- one standard deviation over subjects, each subject's score the
    mean over its prompts and seeds); a dotted line in the method's colour marks where its trained norm sits.
    The legend's title says what the bars are."""
    height = 4.2
    fig, axes = new_figure(10, height, 1, 2)
    for ax, column, label in ((axes[0][0], "subject", f"subject fidelity, {metric_name(image_metric)}"),
                              (axes[0][1], "text", f"text fidelity, {metric_name(text_metric)}")):
        methods = sorted(table["method"].unique())
        for i, method in enumerate(methods):
            rows = table[table["method"] == method].sort_values("scale")
            color = method_color(method)
            shift = 2 ** (0.05 * (i - (len(methods) - 1) / 2))  # side by side, so the error bars stay apart
            ax.errorbar(rows["scale"] * shift, rows[f"{column}_mean"], yerr=rows[f"{column}_std"],
                        color=color, marker="o", markersize=4, capsize=2, elinewidth=0.8,
                        label=f"{display_name(method)}'s directions")
            ax.axvline(rows["trained_ratio"].iloc[0], color=color, linestyle=":", linewidth=1.2)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("norm / vocabulary mean m  (dotted: as trained)")
        ax.set_ylabel(label)
    fig.suptitle(title)
    # The legend, and with it the note on the bars, in a 0.7-inch band below the panels, off the data;
    # the metric models footnote goes under it.
    fig.tight_layout(rect=(0, 0.7 / height, 1, 1))
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncols=min(len(labels), 4),
               fontsize=8, title=_spread_note(table), title_fontsize=8)
    model_footnote(fig, image_metric, text_metric)
    return fig

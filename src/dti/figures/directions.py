"""Figure of the semantic-directions analysis (dti.analysis.directions): learned tokens and their initializer
among the vocabulary, on the principal components of unit directions."""

from __future__ import annotations

from dti.figures import method_color, new_figure
from dti.terms import display_name

_VOCAB_GREY = "#c8c8c8"
_WORD_GREY = "#555555"
_INITIALIZER = "#222222"


def _split(label: str) -> tuple[str, str | None]:
    """'dti/cat2' -> ('dti', 'cat2'): a label's method and its detail (dti.analysis.directions's
    convention)."""
    method, _, detail = str(label).partition("/")
    return method, detail or None


def _legend_name(label: str, initializer: str) -> str:
    method, detail = _split(label)
    name = "initializer" if method == initializer else display_name(method)
    return f"{name} ({detail})" if detail else name


def directions_caption(projection, initializer: str = "initializer") -> str:
    """What the figure shows, in words a caption can take as is: what was projected, on what axes, and how
    much of each token's direction the plane keeps (its mean `in_plane`)."""
    points = projection.points
    vocab = points[points["kind"] == "vocabulary"]
    tokens = points[points["kind"] == "token"]
    axes = ("the vocabulary's directions (every non-zero row)" if projection.fit_on == "vocabulary"
            else "the plotted tokens' directions only")
    kept = ", ".join(f"{_legend_name(label, initializer)} {100 * rows['in_plane'].mean():.0f}%"
                     for label, rows in tokens.groupby("label", sort=False))
    return (f"Unit directions e/|e| of the input token embeddings (the norm is divided out), projected on "
            f"the first {len(projection.explained_variance_ratio)} principal components of {axes}. Grey: "
            f"{len(vocab)} vocabulary tokens, sampled. Share of each token's centred direction in this "
            f"plane: {kept}.")


def _draw(ax, projection, *, initializer: str, words=()) -> None:
    """One projection's scatter into `ax` (directions_figure says what it shows)."""
    points = projection.points
    ratios = projection.explained_variance_ratio
    if len(ratios) < 2:
        raise ValueError("a direction scatter needs a projection on at least two components")
    vocab = points[points["kind"] == "vocabulary"]
    ax.scatter(vocab["pc1"], vocab["pc2"], s=5, color=_VOCAB_GREY, linewidths=0, alpha=0.7, zorder=1,
               label=f"vocabulary ({len(vocab)} tokens)")
    wanted = set(words)
    if wanted and vocab["token"].notna().any():
        for _, row in vocab[vocab["token"].isin(wanted)].iterrows():
            ax.scatter(row["pc1"], row["pc2"], s=12, color=_WORD_GREY, linewidths=0, zorder=2)
            ax.annotate(row["token"], (row["pc1"], row["pc2"]), xytext=(3, 2), textcoords="offset points",
                        fontsize=7, color=_WORD_GREY, zorder=2)
    tokens = points[points["kind"] == "token"]
    for label, rows in tokens.groupby("label", sort=False):
        method, _ = _split(label)
        is_init = method == initializer
        ax.scatter(rows["pc1"], rows["pc2"], s=90 if is_init else 55, marker="X" if is_init else "o",
                   color=_INITIALIZER if is_init else method_color(method), edgecolors="white" if is_init
                   else "black", linewidths=0.6, zorder=4 if is_init else 3,
                   label=_legend_name(label, initializer))
        if len(rows) > 1:  # several vectors: say which is which
            for _, row in rows.iterrows():
                ax.annotate(str(row["vector"]), (row["pc1"], row["pc2"]), xytext=(4, -8),
                            textcoords="offset points", fontsize=6.5, zorder=5)
    ax.set_xlabel(f"PC1 ({100 * ratios[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * ratios[1]:.1f}% of variance)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.axhline(0, color="#eeeeee", linewidth=0.8, zorder=0)
    ax.axvline(0, color="#eeeeee", linewidth=0.8, zorder=0)


def _caption_under(fig, text: str, width: int) -> None:
    import textwrap

    fig.text(0.01, 0.0, "\n".join(textwrap.wrap(text, width)), fontsize=6.5, color="#666666", va="top")


def directions_figure(projection, *, title: str, initializer: str = "initializer", words=(),
                      caption: bool = True):
    """Scatter of a DirectionProjection on its first two components: the vocabulary sample as light grey
    points (those whose text is in `words` labelled, when the projection has token text), each token's
    vectors as points in its method's colour (dti.figures.method_color), its initializer as a black cross.
    Labels follow dti.analysis.directions: "method[/detail]", and `initializer` (or "initializer/word")
    for the initializer's rows. Axes give each component's share of the variance; `caption` puts
    directions_caption under the plot, so the figure explains itself outside the report."""
    fig, axes = new_figure(7.4, 5.0)
    ax = axes[0][0]
    _draw(ax, projection, initializer=initializer, words=words)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=1.0)
    ax.set_title(title)
    fig.tight_layout()
    if caption:
        _caption_under(fig, directions_caption(projection, initializer), 110)
    return fig


def directions_panels(projections, *, title: str, initializer: str = "initializer", caption: bool = True):
    """directions_figure for several text encoders side by side ({encoder name: projection}, one panel
    each, in order), one legend for all (the same labels in every panel) and each panel's caption line."""
    projections = dict(projections)
    if not projections:
        raise ValueError("no projection to draw")
    fig, axes = new_figure(4.6 * len(projections) + 2.2, 4.8, cols=len(projections))
    for ax, (name, projection) in zip(axes[0], projections.items(), strict=True):
        _draw(ax, projection, initializer=initializer)
        ax.set_title(name, fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    axes[0][-1].legend(handles, labels, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title)
    fig.tight_layout()
    if caption:
        _caption_under(fig, " ".join(f"{name}: {directions_caption(p, initializer)}"
                                     for name, p in projections.items()), 60 * len(projections) + 50)
    return fig

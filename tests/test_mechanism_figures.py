"""The mechanism figures (dti.figures.mechanism), checked on the matplotlib objects they draw from tables
with constructed values: a panel per encoder, a legend entry per method by display name, the chance line,
rows as trained drawn as diamonds at their own norm ratio and rescaled rows as lines over k, a caption
clear of the legend in the saved figure, and clear errors for a table that cannot be drawn. Also: every
registered method has its own colour (dti.figures.method_color)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from dti.errors import DtiError
from dti.figures import METHOD_COLORS, method_color, save_figure
from dti.figures.mechanism import (
    CHANCE_COLOR,
    CHANCE_LABEL,
    CONTEXT_COLUMNS,
    POSITIONAL_COLUMNS,
    RESIDUAL_COLUMNS,
    SCALE_LABEL,
    VOCAB_COLOR,
    context_caption,
    context_figure,
    positional_caption,
    positional_figure,
    residual_caption,
    residual_figure,
)
from dti.methods import METHODS

SCALES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
ENCODERS = ("text_encoder", "text_encoder_2")
# As-trained norm ratios per encoder, far enough apart that no two diamonds are set side by side.
TRAINED = {"text_encoder": {"dti": 1.0, "ti": 9.0, "crossinit": 2.6},
           "text_encoder_2": {"dti": 1.0, "ti": 12.0, "crossinit": 3.3}}
VOCAB_AS_IS = 1.5  # the vocabulary's scored tokens as they are: their mean norm over m
NAMES = ["vocabulary tokens", "DTI", "TI", "CrossInit"]  # the vocabulary first, then the registry's order
CHANCE = 0.07
LAYERS = 4


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def _value(encoder: str, method: str, x: float) -> float:
    """A distinct constructed value per encoder, method and norm ratio (in (0, 1))."""
    return 0.9 / (1 + x / 4) + 0.01 * ENCODERS.index(encoder) + 0.003 * (method != "vocabulary")


def positional_table() -> pd.DataFrame:
    rows = []
    for encoder in ENCODERS:
        entries = [("vocabulary", k, k) for k in SCALES] + [("vocabulary", np.nan, VOCAB_AS_IS)]
        entries += [(method, np.nan, ratio) for method, ratio in TRAINED[encoder].items()]
        for method, scale, ratio in entries:
            acc = _value(encoder, method, ratio)
            rows.append({"backbone": "sdxl", "encoder": encoder, "method": method, "scale": scale,
                         "norm_ratio": ratio, "accuracy": acc, "ci_low": acc - 0.03, "ci_high": acc + 0.05,
                         "chance": CHANCE, "n_scored": 640, "n_prompts": 32})
    return pd.DataFrame(rows, columns=list(POSITIONAL_COLUMNS))


def residual_table() -> pd.DataFrame:
    rows = []

    def add(encoder, method, scale, ratio, layer, mean):
        rows.append({"backbone": "sdxl", "encoder": encoder, "method": method, "scale": scale,
                     "norm_ratio": ratio, "layer": layer, "mean": mean, "ci_low": mean * 0.9,
                     "ci_high": mean * 1.2, "n_prompts": 32})

    for encoder in ENCODERS:
        for method in ("vocabulary", "dti", "ti"):
            for k in SCALES:
                add(encoder, method, k, k, pd.NA, 2.0 / k * (1.1 if method == "ti" else 1.0))
        add(encoder, "vocabulary", 4.0, 4.0, 0, 999.0)  # a rescaled per-block row: not for the left panel
        trained = {"vocabulary": VOCAB_AS_IS, **TRAINED[encoder]}
        for method, ratio in trained.items():
            add(encoder, method, np.nan, ratio, pd.NA, 2.0 / ratio)
            for layer in range(LAYERS):
                add(encoder, method, np.nan, ratio, layer, 2.0 / ratio * (1 + 0.1 * layer))
    table = pd.DataFrame(rows, columns=list(RESIDUAL_COLUMNS))
    table["layer"] = table["layer"].astype("Int64")
    return table


def context_table() -> pd.DataFrame:
    rows = []
    for encoder in ENCODERS:
        entries = [(m, k, k) for m in ("vocabulary", "dti") for k in SCALES]
        entries += [(method, np.nan, ratio) for method, ratio in TRAINED[encoder].items()]
        for method, scale, ratio in entries:
            mean = 0.4 * _value(encoder, method, ratio)
            rows.append({"backbone": "sdxl", "encoder": encoder, "method": method, "scale": scale,
                         "norm_ratio": ratio, "mean": mean, "ci_low": mean - 0.01, "ci_high": mean + 0.02,
                         "n_prompts": 32})
    return pd.DataFrame(rows, columns=list(CONTEXT_COLUMNS))


def panels(fig):
    return [ax for ax in fig.axes if ax.get_title()]


def legend_texts(fig) -> list[str]:
    (legend,) = fig.legends
    return [t.get_text() for t in legend.get_texts()]


def diamonds(ax) -> list[tuple[float, float, str, tuple[float, float]]]:
    """(x, y, colour, (bar low, bar high)) of every point drawn with error bars."""
    out = []
    for container in ax.containers:
        line, _caps, (bars,) = container.lines
        (x,), (y,) = line.get_xdata(), line.get_ydata()
        ys = bars.get_segments()[0][:, 1]
        out.append((float(x), float(y), line.get_color(), (float(ys.min()), float(ys.max()))))
    return out


def swept_lines(ax) -> list:
    """The lines over k: data lines (not error-bar markers or caps) with one point per scale."""
    return [line for line in ax.lines if len(line.get_xdata()) == len(SCALES) and line.get_linestyle() != "None"]


# --- positional ---------------------------------------------------------------------------------------
def test_positional_figure_has_a_panel_per_encoder_a_legend_by_display_name_and_the_chance_line():
    fig = positional_figure(positional_table(), title="Position probe, sdxl")
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == list(ENCODERS)
    assert legend_texts(fig) == [*NAMES, CHANCE_LABEL]
    for ax in axes:
        assert ax.get_xlabel() == SCALE_LABEL
        assert ax.get_xscale() == "log"
        assert "accuracy" in ax.get_ylabel()
        chance = [line for line in ax.lines if to_rgb(line.get_color()) == to_rgb(CHANCE_COLOR)]
        assert len(chance) == 1
        assert list(chance[0].get_ydata()) == [CHANCE, CHANCE]
        assert list(chance[0].get_xdata()) == [0, 1]  # across the whole panel (axes coordinates)
    assert fig.get_suptitle() == "Position probe, sdxl"


def test_positional_rows_as_trained_are_diamonds_at_their_norm_ratio_and_the_vocabulary_a_line_over_k():
    table = positional_table()
    fig = positional_figure(table, title="t")
    for ax, encoder in zip(panels(fig), ENCODERS, strict=True):
        trained = table[(table["encoder"] == encoder) & table["scale"].isna()]
        points = sorted(diamonds(ax))
        assert len(points) == len(trained)
        for (x, y, color, (low, high)), (_, row) in zip(points, trained.sort_values("norm_ratio").iterrows(),
                                                         strict=True):
            assert x == pytest.approx(row["norm_ratio"])  # not at a scale: these rows have none
            assert y == pytest.approx(row["accuracy"])
            assert (low, high) == (pytest.approx(row["ci_low"]), pytest.approx(row["ci_high"]))
            expected = VOCAB_COLOR if row["method"] == "vocabulary" else method_color(row["method"])
            assert to_rgb(color) == to_rgb(expected)
        (line,) = swept_lines(ax)
        assert list(line.get_xdata()) == list(SCALES)
        assert to_rgb(line.get_color()) == to_rgb(VOCAB_COLOR)
        vocab = table[(table["encoder"] == encoder) & (table["method"] == "vocabulary") & table["scale"].notna()]
        assert list(line.get_ydata()) == pytest.approx(list(vocab.sort_values("scale")["accuracy"]))


def test_coinciding_diamonds_are_set_side_by_side_in_legend_order_near_their_norm_ratio():
    table = positional_table()
    extra = table[(table["method"] == "dti")].assign(method="dti_core", accuracy=0.5, ci_low=0.45,
                                                       ci_high=0.55)
    fig = positional_figure(pd.concat([table, extra], ignore_index=True), title="t")
    ax = panels(fig)[0]
    at_one = sorted((x, color) for x, _, color, _ in diamonds(ax) if 0.8 < x < 1.25)
    # DTI and DTI + CoRe (both at 1.0): two diamonds side by side, in legend order, close to 1
    assert [to_rgb(c) for _, c in at_one] == [to_rgb(method_color("dti")), to_rgb(method_color("dti_core"))]
    xs = [x for x, _ in at_one]
    assert xs[0] < 1.0 < xs[1]
    assert all(abs(np.log2(x)) < 0.1 for x in xs)
    others = sorted(x for x, *_ in diamonds(ax) if not 0.8 < x < 1.25)  # the rest stay where they are
    assert others == pytest.approx(sorted([VOCAB_AS_IS, TRAINED["text_encoder"]["ti"],
                                           TRAINED["text_encoder"]["crossinit"]]))
    assert "DTI + CoRe" in legend_texts(fig)


# --- residual -------------------------------------------------------------------------------------------
def test_residual_figure_per_block_left_and_mean_over_blocks_by_norm_right():
    table = residual_table()
    fig = residual_figure(table, title="Residual-update ratio, sdxl")
    axes = panels(fig)
    assert len(axes) == 2 * len(ENCODERS)  # one row of two panels per encoder
    assert legend_texts(fig) == NAMES
    for r, encoder in enumerate(ENCODERS):
        block_ax, sweep_ax = axes[2 * r], axes[2 * r + 1]
        assert block_ax.get_title().startswith(f"{encoder}:") and sweep_ax.get_title().startswith(f"{encoder}:")
        assert block_ax.get_yscale() == sweep_ax.get_yscale() == "log"
        # left: a line over the blocks per method as trained (the vocabulary as it is), nothing rescaled
        lines = [line for line in block_ax.lines if len(line.get_xdata()) == LAYERS]
        assert sorted(to_rgb(line.get_color()) for line in lines) == sorted(
            to_rgb(c) for c in (VOCAB_COLOR, method_color("dti"), method_color("ti"), method_color("crossinit")))
        assert all(list(line.get_xdata()) == list(range(LAYERS)) for line in lines)
        assert not any(999.0 in line.get_ydata() for line in block_ax.lines)
        ti = next(line for line in lines if to_rgb(line.get_color()) == to_rgb(method_color("ti")))
        ratio = TRAINED[encoder]["ti"]
        assert list(ti.get_ydata()) == pytest.approx([2.0 / ratio * (1 + 0.1 * i) for i in range(LAYERS)])
        assert block_ax.get_xlabel().startswith("block")
        # right: lines over k for the rescaled rows, diamonds at the as-trained norm ratios
        assert sweep_ax.get_xlabel() == SCALE_LABEL
        assert len(swept_lines(sweep_ax)) == 3  # vocabulary, DTI, TI
        assert all(list(line.get_xdata()) == list(SCALES) for line in swept_lines(sweep_ax))
        points = {round(x, 6): y for x, y, _, _ in diamonds(sweep_ax)}
        assert points == {round(r_, 6): pytest.approx(2.0 / r_)
                          for r_ in (VOCAB_AS_IS, *TRAINED[encoder].values())}


def test_residual_figure_says_so_when_a_panel_has_no_per_block_rows():
    table = residual_table()
    fig = residual_figure(table[table["layer"].isna()], title="t")
    block_ax = panels(fig)[0]
    assert [t.get_text() for t in block_ax.texts] == ["no per-block rows as trained"]


# --- context --------------------------------------------------------------------------------------------
def test_context_figure_draws_lines_over_k_and_diamonds_at_the_norm_ratio_per_encoder():
    table = context_table()
    fig = context_figure(table, title="Contextualization, sdxl")
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == list(ENCODERS)
    assert legend_texts(fig) == NAMES
    for ax, encoder in zip(axes, ENCODERS, strict=True):
        assert ax.get_xlabel() == SCALE_LABEL
        assert ax.get_ylim()[0] == 0  # 0: the token's output ignores the prompt
        assert sorted(x for x, *_ in diamonds(ax)) == pytest.approx(sorted(TRAINED[encoder].values()))
        lines = swept_lines(ax)
        assert sorted(to_rgb(line.get_color()) for line in lines) == sorted(
            [to_rgb(VOCAB_COLOR), to_rgb(method_color("dti"))])


def test_a_table_of_several_backbones_names_the_backbone_in_each_panel():
    table = context_table()
    both = pd.concat([table, table[table["encoder"] == "text_encoder"].assign(backbone="sd")], ignore_index=True)
    fig = context_figure(both, title="t")
    assert [ax.get_title() for ax in panels(fig)] == ["sd: text_encoder", "sdxl: text_encoder",
                                                      "sdxl: text_encoder_2"]


# --- captions and saving --------------------------------------------------------------------------------
FIGURES = [(positional_figure, positional_table, positional_caption),
           (residual_figure, residual_table, residual_caption),
           (context_figure, context_table, context_caption)]


@pytest.mark.parametrize(("figure", "table", "caption"), FIGURES, ids=["positional", "residual", "context"])
def test_the_caption_sits_under_the_legend_in_the_saved_figure(figure, table, caption, tmp_path):
    """Drawn as save_figure draws it (tight bounding box), the caption lies wholly below the legend."""
    fig = figure(table(), title="t")
    (legend,) = fig.legends
    (text,) = [t for t in fig.texts if t.get_text().replace("\n", " ") == caption()]
    seen = {}

    def on_draw(event):
        renderer = event.renderer
        seen["legend"] = legend.get_window_extent(renderer)
        seen["caption"] = text.get_window_extent(renderer)

    fig.canvas.mpl_connect("draw_event", on_draw)
    save_figure(fig, tmp_path / "f.png", tmp_path / "f.pdf")
    assert seen["caption"].y1 <= seen["legend"].y0
    assert (tmp_path / "f.png").stat().st_size > 0 and (tmp_path / "f.pdf").stat().st_size > 0


@pytest.mark.parametrize(("figure", "table", "caption"), FIGURES, ids=["positional", "residual", "context"])
def test_caption_false_leaves_the_caption_out(figure, table, caption):
    fig = figure(table(), title="t", caption=False)
    assert not any(caption()[:40] in t.get_text() for t in fig.texts)


def test_each_caption_defines_its_measure_and_names_the_claim():
    assert "LN(t + p_i)" in positional_caption() and "drowns the position" in positional_caption()
    assert "||h_(l+1) - h_l|| / ||h_l||" in residual_caption() and "pre-norm" in residual_caption()
    assert "1 - cos" in context_caption() and "barely depends on the prompt" in context_caption()


# --- tables that cannot be drawn ------------------------------------------------------------------------
CASES = [(positional_figure, positional_table, POSITIONAL_COLUMNS),
         (residual_figure, residual_table, RESIDUAL_COLUMNS),
         (context_figure, context_table, CONTEXT_COLUMNS)]


@pytest.mark.parametrize(("figure", "table", "column"),
                         [(f, t, c) for f, t, columns in CASES for c in columns])
def test_a_table_missing_a_column_is_refused_naming_it(figure, table, column):
    with pytest.raises(DtiError, match=rf"lacks column\(s\) \['{column}'\]"):
        figure(table().drop(columns=[column]), title="t")


@pytest.mark.parametrize(("figure", "table", "columns"), CASES, ids=["positional", "residual", "context"])
def test_an_empty_table_is_refused(figure, table, columns):
    with pytest.raises(DtiError, match="no rows"):
        figure(table().iloc[0:0], title="t")
    with pytest.raises(DtiError, match="expected a pandas DataFrame"):
        figure(table().to_dict("records"), title="t")


def test_a_row_as_trained_without_a_norm_ratio_is_refused():
    table = context_table()
    table.loc[table["scale"].isna() & (table["method"] == "ti"), "norm_ratio"] = np.nan
    with pytest.raises(DtiError, match=r"log norm axis.*'ti'"):
        context_figure(table, title="t")


# --- colours --------------------------------------------------------------------------------------------
def _lab(color: str) -> np.ndarray:
    """sRGB -> CIELAB (D65), to measure how far apart two colours look."""
    rgb = np.array(to_rgb(color))
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear
    f = np.cbrt(xyz / np.array([0.95047, 1.0, 1.08883]))
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_every_registered_method_has_its_own_colour_far_from_the_others():
    colors = {method: to_rgb(method_color(method)) for method in METHODS}
    assert len(set(colors.values())) == len(METHODS), colors
    for (a, ca), (b, cb) in itertools.combinations(colors.items(), 2):
        distance = float(np.linalg.norm(_lab(method_color(a)) - _lab(method_color(b))))
        assert distance >= 20, f"{a} {ca} and {b} {cb} look alike (CIELAB distance {distance:.1f})"
    for method, color in METHOD_COLORS.items():
        assert method_color(method) == color
    assert to_rgb(VOCAB_COLOR) not in colors.values()


def test_registering_a_method_gives_it_a_new_colour_and_changes_no_other(monkeypatch):
    before = {method: method_color(method) for method in METHODS}
    monkeypatch.setitem(METHODS, "zz_new_method", METHODS["dti"])
    assert {method: method_color(method) for method in before} == before
    assert method_color("zz_new_method") not in before.values()
    assert method_color("not_registered") == method_color("not_registered")  # a stable fallback

"""The report's figures, checked on the matplotlib objects they draw: the checkpoint curves, the sample
grids' labels and title, and what the magnitude sweep says its error bars are."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from PIL import Image

from dti.figures import method_color
from dti.figures.report import (
    LABEL_CHARS,
    LABEL_PT,
    MAX_STEP_TICKS,
    SINGLE_STEP_NOTE,
    checkpoint_figure,
    grid_figure,
)

METHODS = ("dti", "ti", "crossinit")
NAMES = ["DTI", "TI", "CrossInit"]  # their display names, in the registry's order


def over_steps(steps, methods=METHODS, metrics=("dino", "clip_t")) -> pd.DataFrame:
    rows = []
    for i, method in enumerate(methods):
        for k, step in enumerate(steps):
            for metric in metrics:
                mean = 0.3 + 0.1 * i + 0.01 * k
                rows.append({"backbone": "sd", "prompt_set": "simple", "method": method, "step": step,
                             "metric": metric, "metric_model": "m", "mean": mean, "ci_low": mean - 0.02,
                             "ci_high": mean + 0.03, "n_subjects": 3, "n_images": 12})
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def panels(fig):
    return [ax for ax in fig.axes if ax.get_title()]


def labelled_lines(ax):
    return [line for line in ax.lines if not line.get_label().startswith("_")]


# --- checkpoints --------------------------------------------------------------------------------------------
def test_checkpoint_figure_draws_a_line_and_a_band_per_method_with_ticks_at_the_steps():
    steps = [100, 250, 400]
    table = over_steps(steps)
    fig = checkpoint_figure(table, title="k")
    axes = panels(fig)
    assert sorted(ax.get_title() for ax in axes) == ["sd, simple: CLIP-T", "sd, simple: DINO"]
    for ax in axes:
        lines = labelled_lines(ax)
        assert [line.get_label() for line in lines] == NAMES
        for line, method in zip(lines, METHODS, strict=True):
            assert to_rgb(line.get_color()) == to_rgb(method_color(method))
            assert list(line.get_xdata()) == steps
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == len(METHODS)
        for band, method in zip(bands, METHODS, strict=True):
            assert to_rgb(band.get_facecolor()[0][:3]) == to_rgb(method_color(method))
            assert 0 < band.get_alpha() < 1  # translucent: the lines and the other bands show through
            ys = band.get_paths()[0].vertices[:, 1]
            rows = table[(table["method"] == method) & (table["metric"] == "dino")]
            assert ys.min() == pytest.approx(rows["ci_low"].min())
            assert ys.max() == pytest.approx(rows["ci_high"].max())
        assert list(ax.get_xticks()) == steps
        assert ax.get_xlabel() == "training step"
        assert "cosine similarity" in ax.get_ylabel()
        assert not ax.texts  # no single-checkpoint note
    dino = next(ax for ax in axes if ax.get_title().endswith("DINO"))
    assert dino.get_ylabel() == "DINO (cosine similarity)"
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == NAMES
    assert "band: 95% bootstrap interval over subjects" in legend.get_title().get_text()


def test_checkpoint_figure_with_many_steps_ticks_some_of_the_scored_steps():
    steps = [10, 30, 70, 150, 310, 630, 1270, 2550]  # irregular, and too many for a tick at each
    fig = checkpoint_figure(over_steps(steps, metrics=("dino",)), title="k")
    (ax,) = panels(fig)
    ticks = list(ax.get_xticks())
    assert 2 <= len(ticks) <= MAX_STEP_TICKS and set(ticks) <= set(steps) and ticks[0] == steps[0]


def test_checkpoint_figure_with_one_step_draws_points_with_error_bars_and_says_so():
    table = over_steps([400])
    fig = checkpoint_figure(table, title="k")
    for ax in panels(fig):
        assert not [c for c in ax.collections if isinstance(c, PolyCollection)]  # no band from one point
        assert [c.get_label() for c in ax.containers] == NAMES  # an errorbar per method
        for container, method in zip(ax.containers, METHODS, strict=True):
            row = table[(table["method"] == method) & (table["metric"] == "dino")].iloc[0]
            (segment,) = container.lines[2][0].get_segments()
            assert segment[:, 1] == pytest.approx([row["ci_low"], row["ci_high"]])
            assert abs(segment[0, 0] - 400) < 0.5  # side by side, around the step
        assert list(ax.get_xticks()) == [400]
        assert [t.get_text() for t in ax.texts] == [SINGLE_STEP_NOTE]
        assert "eval_steps" in SINGLE_STEP_NOTE
    assert "error bars: 95% bootstrap interval" in fig.legends[0].get_title().get_text()


# --- sample grids -------------------------------------------------------------------------------------------
LONG = "a {} wearing a tiny wizard hat, sitting on a stack of old books in a candle-lit library, oil painting"


@pytest.fixture
def grid_inputs(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    image.save(tmp_path / "x.png")
    cells = pd.DataFrame([{"prompt_set": s, "prompt_id": i, "prompt": p, "method": m, "seed": seed,
                           "path": str(tmp_path / "x.png"), "step": 400}
                          for s, i, p in (("simple", 0, "a photo of {}"), ("complex", 0, LONG))
                          for m in ("dti", "ti") for seed in (0, 1)])
    return cells, [tmp_path / "x.png"] * 2


def test_grid_labels_are_wrapped_and_readable_and_the_title_names_the_step(grid_inputs):
    cells, refs = grid_inputs
    fig = grid_figure(cells, refs, methods=["dti", "ti"], seeds=[0, 1], title="toy on sd", thumb=32)
    labels = [ax.yaxis.label for ax in fig.axes if ax.get_ylabel()]
    assert len(labels) == 3  # the reference photos and the two prompts
    for label in labels:
        assert label.get_fontsize() >= 9
        assert all(len(line) <= LABEL_CHARS for line in label.get_text().split("\n"))
    long = next(label.get_text() for label in labels if "wizard" in label.get_text())
    assert long.count("\n") >= 3 and "S*" in long and "{}" not in long
    assert "library" in long  # wrapped, not cut: this prompt fits in the lines allowed
    headers = [ax.title for ax in fig.axes if ax.get_title()]
    assert len(headers) == 4 and all(h.get_fontsize() >= LABEL_PT for h in headers)
    assert fig._suptitle.get_text() == "toy on sd\nsamples at training step 400"


def test_grid_title_takes_the_step_from_the_caller_or_per_method(grid_inputs):
    cells, refs = grid_inputs
    cells = cells.drop(columns="step")
    fig = grid_figure(cells, refs, methods=["dti", "ti"], seeds=[0, 1], title="t", thumb=32)
    assert fig._suptitle.get_text() == "t"  # no step known: none claimed
    fig = grid_figure(cells, refs, methods=["dti", "ti"], seeds=[0, 1], title="t", thumb=32, step=250)
    assert fig._suptitle.get_text().endswith("step 250")
    fig = grid_figure(cells, refs, methods=["dti", "ti"], seeds=[0, 1], title="t", thumb=32,
                      step={"dti": 250, "ti": 500})
    headers = sorted(ax.get_title() for ax in fig.axes if ax.get_title())
    assert headers == ["DTI\nseed 0, step 250", "DTI\nseed 1, step 250", "TI\nseed 0, step 500",
                       "TI\nseed 1, step 500"]


# --- magnitude sweep ----------------------------------------------------------------------------------------
def test_magnitude_figure_says_its_bars_are_the_std_over_subjects_and_draws_that():
    from dti.analysis.magnitude import sweep_table
    from dti.figures.norms import magnitude_figure

    rng = np.random.default_rng(1)
    scores = pd.DataFrame([{"backbone": "sd", "method": m, "subject": s, "scale": scale, "prompt_id": p,
                            "seed": seed,
                            "subject_fidelity": rng.uniform(0.2, 0.8), "text_fidelity": rng.uniform(0.1, 0.4),
                            "trained_ratio": 1.0 if m == "dti" else 4.0}
                           for m in ("dti", "ti") for s in ("a", "b", "c") for scale in (0.5, 1, 2)
                           for p in (0, 1) for seed in (0, 1)])
    table = sweep_table(scores)
    fig = magnitude_figure(table, title="s", image_metric="dino (m)", text_metric="clip_t (m)")
    (legend,) = fig.legends
    note = legend.get_title().get_text()
    assert "\u00b11 std over subjects (3 subjects)" in note and "mean over its prompts and seeds" in note
    # The wording is the truth: a bar's half-length is the std over subjects of their means over prompts
    # and seeds.
    per_subject = scores.groupby(["method", "scale", "subject"])["subject_fidelity"].mean()
    container = fig.axes[0].containers[0]  # DTI's subject fidelity
    for segment, scale in zip(container.lines[2][0].get_segments(), (0.5, 1, 2), strict=True):
        expected = np.std(per_subject.loc[("dti", scale)].to_numpy(), ddof=1)
        assert (segment[1, 1] - segment[0, 1]) / 2 == pytest.approx(expected)


def test_magnitude_figure_with_one_subject_says_it_has_no_bars():
    from dti.figures.norms import magnitude_figure

    sweep = pd.DataFrame([{"method": "dti", "scale": s, "subject_mean": 0.5, "subject_std": 0.0,
                           "text_mean": 0.3, "text_std": 0.0, "trained_ratio": 1.0, "n_subjects": 1}
                          for s in (0.5, 1, 2)])
    fig = magnitude_figure(sweep, title="s", image_metric="dino (m)", text_metric="clip_t (m)")
    assert "one subject, so no error bars" in fig.legends[0].get_title().get_text()

"""Aggregation of per-image scores into result tables, their LaTeX rendering and writing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from dti.errors import DtiError
from dti.latex import to_latex
from dti.tables import SCORE_COLUMNS, build_tables, caption_for, table_latex, write_tables
from dti.terms import display_name

DINO = "timm:vit_small_patch16_224.dino@random"
CLIP_T = "open_clip:ViT-B-32@openai"


def rows(backbone, method, subject, values, *, kind="object", metric="dino", model=DINO, prompt_set="object",
         prompt_id=0, seeds=None, step=400):
    """One score row per value; by default each value gets its own seed (so its own image)."""
    seeds = range(len(values)) if seeds is None else seeds
    return [dict(backbone=backbone, method=method, step=step, subject=subject, subject_kind=kind,
                 prompt_set=prompt_set, prompt_id=prompt_id, seed=seed,
                 image=f"{subject}/step-{step}/{prompt_set}/{prompt_id}/{seed}.png",
                 metric=metric, metric_model=model, value=float(v))
            for seed, v in zip(seeds, values, strict=True)]


def frame(*row_lists) -> pd.DataFrame:
    return pd.DataFrame([r for rs in row_lists for r in rs])


def one(table: pd.DataFrame, **keys) -> pd.Series:
    mask = np.ones(len(table), dtype=bool)
    for column, value in keys.items():
        mask &= (table[column] == value).to_numpy()
    assert mask.sum() == 1, f"expected one row for {keys}, found {mask.sum()}"
    return table[mask].iloc[0]


# Subject A has one image, subject B three: pooling would weigh B three times as much as A.
A_VALUES, B_VALUES = [0.9], [0.1, 0.2, 0.3]


def unbalanced() -> pd.DataFrame:
    return frame(rows("sdxl", "dti", "a", A_VALUES), rows("sdxl", "dti", "b", B_VALUES))


def test_summary_is_mean_of_subject_means_not_pooled_mean():
    summary = build_tables(unbalanced(), None)["summary"]
    row = one(summary, backbone="sdxl", method="dti", metric="dino")
    per_subject_first = np.mean([np.mean(A_VALUES), np.mean(B_VALUES)])
    pooled = np.mean(A_VALUES + B_VALUES)
    assert abs(per_subject_first - pooled) > 0.1  # the data really tells the two protocols apart
    assert row["mean"] == pytest.approx(per_subject_first)
    assert row["metric_model"] == DINO
    assert (row["n_subjects"], row["n_images"]) == (2, 4)


def test_long_layout_columns():
    tables = build_tables(unbalanced(), None)
    stats = ["metric", "metric_model", "mean", "ci_low", "ci_high", "n_subjects", "n_images"]
    assert list(tables["summary"].columns) == ["backbone", "prompt_set", "step", "method", *stats]
    assert list(tables["by_prompt_set"].columns) == ["backbone", "prompt_set", "step", "method", *stats]
    assert list(tables["by_kind"].columns) == ["backbone", "prompt_set", "step", "subject_kind", "method", *stats]
    assert list(tables["over_steps"].columns) == ["backbone", "prompt_set", "method", "step", *stats]
    assert list(tables["per_subject"].columns) == ["backbone", "prompt_set", "step", "method", "subject",
                                                   "subject_kind", "metric", "metric_model", "mean", "n_images"]
    assert list(tables["per_prompt"].columns) == ["backbone", "method", "prompt_set", "step", "prompt_id", "metric",
                                                  "metric_model", "mean", "n_subjects", "n_images"]
    assert "norms" not in tables


def many_subjects(n_subjects=12, seed=1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(n_subjects):
        n_images = int(rng.integers(1, 6))
        parts.append(rows("sdxl", "dti", f"s{i:02d}", rng.normal(0.5, 0.1, n_images)))
    return frame(*parts)


def test_bootstrap_ci_contains_mean_and_is_reproducible():
    scores = many_subjects()
    first = build_tables(scores, None, n_boot=500, seed=3)["summary"]
    row = one(first, method="dti")
    assert row["ci_low"] < row["mean"] < row["ci_high"]
    # Same inputs, even with the rows shuffled, give the same table.
    shuffled = scores.sample(frac=1.0, random_state=0)
    again = build_tables(shuffled, None, n_boot=500, seed=3)["summary"]
    pd.testing.assert_frame_equal(first, again)
    other = one(build_tables(scores, None, n_boot=500, seed=4)["summary"], method="dti")
    assert (other["ci_low"], other["ci_high"]) != (row["ci_low"], row["ci_high"])
    assert other["mean"] == row["mean"]


def test_bootstrap_resamples_subjects_not_images():
    # Subjects differ a lot, images within a subject hardly: the interval must reflect the 40 subjects,
    # not the ~200 images (which would make it about half as wide).
    rng = np.random.default_rng(7)
    subject_means = rng.normal(0.5, 0.1, 40)
    parts = [rows("sdxl", "dti", f"s{i:02d}", m + rng.normal(0, 0.005, int(rng.integers(2, 9))))
             for i, m in enumerate(subject_means)]
    scores = frame(*parts)
    row = one(build_tables(scores, None, n_boot=4000)["summary"], method="dti")
    per_subject = scores.groupby("subject")["value"].mean()
    normal_half_width = 1.96 * per_subject.std(ddof=1) / np.sqrt(len(per_subject))
    assert (row["ci_high"] - row["ci_low"]) / 2 == pytest.approx(normal_half_width, rel=0.2)


def test_ci_collapses_to_mean_for_one_subject():
    row = one(build_tables(frame(rows("sdxl", "ti", "dog", B_VALUES)), None)["summary"], method="ti")
    assert row["ci_low"] == row["mean"] == row["ci_high"]
    assert row["mean"] == pytest.approx(np.mean(B_VALUES))
    assert row["n_subjects"] == 1


def test_by_kind_and_by_prompt_set_split_the_subjects():
    scores = frame(rows("sdxl", "dti", "cat", [0.8, 0.6], kind="live", prompt_set="simple"),
                   rows("sdxl", "dti", "cat", [0.2], kind="live", prompt_set="custom", seeds=[9]),
                   rows("sdxl", "dti", "can", [0.4], kind="object", prompt_set="simple"),
                   rows("sdxl", "dti", "can", [0.1, 0.3], kind="object", prompt_set="custom", seeds=[7, 8]))
    tables = build_tables(scores, None, summary_prompt_set="simple")
    live = one(tables["by_kind"], subject_kind="live", prompt_set="simple")
    assert live["mean"] == pytest.approx(np.mean([0.8, 0.6]))
    assert (live["n_subjects"], live["n_images"]) == (1, 2)
    assert one(tables["by_kind"], subject_kind="object", prompt_set="custom")["mean"] == pytest.approx(0.2)
    custom = one(tables["by_prompt_set"], prompt_set="custom")
    assert custom["mean"] == pytest.approx(np.mean([0.2, np.mean([0.1, 0.3])]))
    assert (custom["n_subjects"], custom["n_images"]) == (2, 3)
    summary = one(tables["summary"], method="dti")
    assert summary["prompt_set"] == "simple"
    assert summary["mean"] == pytest.approx(np.mean([np.mean([0.8, 0.6]), 0.4]))


def test_summary_never_pools_prompt_sets():
    # A long set with low scores and a short one with high ones: pooled, the long one would dominate.
    scores = frame(rows("sdxl", "dti", "a", [0.1] * 6, prompt_set="long"),
                   rows("sdxl", "dti", "a", [0.9], prompt_set="short", seeds=[99]))
    with pytest.raises(DtiError, match="several prompt sets"):
        build_tables(scores, None)
    for name, value in (("long", 0.1), ("short", 0.9)):
        summary = build_tables(scores, None, summary_prompt_set=name)["summary"]
        assert list(summary["prompt_set"]) == [name]
        assert summary["mean"].iloc[0] == pytest.approx(value)
    with pytest.raises(DtiError, match="'medium'"):
        build_tables(scores, None, summary_prompt_set="medium")


def stepped_scores() -> pd.DataFrame:
    """TI peaks at step 200 and falls by 400; DTI keeps rising (the overfitting a reviewer asked about)."""
    values = {("ti", 200): [0.7, 0.6], ("ti", 400): [0.3, 0.2], ("dti", 200): [0.5, 0.4], ("dti", 400): [0.8, 0.6]}
    return frame(*[rows("sdxl", method, subject, [v], step=step, seeds=[0])
                   for (method, step), per_subject in values.items()
                   for subject, v in zip(("a", "b"), per_subject, strict=True)])


def test_headline_tables_show_one_checkpoint_and_over_steps_all():
    scores = stepped_scores()
    tables = build_tables(scores, None)
    for name in ("summary", "by_prompt_set", "by_kind", "per_subject", "per_prompt"):
        assert set(tables[name]["step"]) == {400}, name  # the last step scored
    assert one(tables["summary"], method="ti")["mean"] == pytest.approx(0.25)
    over = tables["over_steps"]
    assert len(over) == 4
    assert one(over, method="ti", step=200)["mean"] == pytest.approx(0.65)
    assert one(over, method="dti", step=400)["mean"] == pytest.approx(0.7)
    at_200 = build_tables(scores, None, summary_step=200)
    assert one(at_200["summary"], method="ti")["mean"] == pytest.approx(0.65)
    per_backbone = build_tables(scores, None, summary_step={"sdxl": 200})["summary"]
    pd.testing.assert_frame_equal(per_backbone, at_200["summary"])
    with pytest.raises(DtiError, match="300"):
        build_tables(scores, None, summary_step=300)


def test_over_steps_latex_bolds_the_best_method_at_each_step():
    table = build_tables(stepped_scores(), None)["over_steps"]
    body = parse_body(to_latex(table, caption="c", label="tab:over_steps"), 4)
    bold = {(method, step) for (_, _, method, step), cells in body.items() if r"\textbf{" in cells[0]}
    assert bold == {("TI", "200"), ("DTI", "400")}  # methods by their display names


def test_caption_names_prompt_set_and_step():
    scores = stepped_scores()
    tables = build_tables(scores, None)
    caption = caption_for(scores, "summary", table=tables["summary"])
    assert "Prompt set object; checkpoint at training step 400." in caption
    assert "training steps 200, 400" in caption_for(scores, "over_steps", table=tables["over_steps"])


def test_different_metric_models_stay_apart():
    scores = frame(rows("sdxl", "dti", "a", [0.2, 0.4]),
                   rows("sdxl", "dti", "a", [0.9], model="timm:vit_base_patch16_224.dino@other"))
    summary = build_tables(scores, None)["summary"]
    assert len(summary) == 2
    assert one(summary, metric_model=DINO)["mean"] == pytest.approx(0.3)
    assert one(summary, metric_model="timm:vit_base_patch16_224.dino@other")["mean"] == pytest.approx(0.9)


def test_per_subject_and_per_prompt():
    scores = frame(rows("sdxl", "dti", "a", [0.9], prompt_id=0),
                   rows("sdxl", "dti", "b", [0.1, 0.2, 0.6], prompt_id=0),
                   rows("sdxl", "dti", "b", [0.5], prompt_id=1, seeds=[5]))
    tables = build_tables(scores, None)
    b = one(tables["per_subject"], subject="b")
    assert b["mean"] == pytest.approx(np.mean([0.1, 0.2, 0.6, 0.5]))
    assert (b["n_images"], b["subject_kind"]) == (4, "object")
    prompt0 = one(tables["per_prompt"], prompt_id=0)
    assert prompt0["mean"] == pytest.approx(np.mean([0.9, np.mean([0.1, 0.2, 0.6])]))
    assert (prompt0["n_subjects"], prompt0["n_images"]) == (2, 4)
    assert one(tables["per_prompt"], prompt_id=1)["mean"] == pytest.approx(0.5)


def norm_rows(method, subject, norms, *, encoder="clip_l", vocab=(0.4, 0.05), backbone="sdxl", step=400):
    return [dict(backbone=backbone, method=method, step=step, subject=subject, encoder=encoder, vector=i, norm=n,
                 vocab_norm_mean=vocab[0], vocab_norm_std=vocab[1]) for i, n in enumerate(norms)]


def test_norms_table_ratio_and_range():
    norms = frame(norm_rows("ti", "a", [2.0]), norm_rows("ti", "b", [0.4, 0.8]),
                  norm_rows("ti", "a", [1.0], encoder="clip_g", vocab=(0.5, 0.1)))
    table = build_tables(unbalanced(), norms)["norms"]
    clip_l = one(table, encoder="clip_l")
    expected_mean = np.mean([2.0, np.mean([0.4, 0.8])])
    assert clip_l["norm_mean"] == pytest.approx(expected_mean)
    assert (clip_l["norm_min"], clip_l["norm_max"]) == (0.4, 2.0)
    assert (clip_l["vocab_norm_mean"], clip_l["vocab_norm_std"]) == pytest.approx((0.4, 0.05))
    assert clip_l["ratio"] == pytest.approx(expected_mean / 0.4)
    assert (clip_l["n_subjects"], clip_l["n_vectors"]) == (2, 3)
    assert one(table, encoder="clip_g")["ratio"] == pytest.approx(2.0)


def test_norms_from_different_vocabularies_in_one_group_fail():
    norms = frame(norm_rows("ti", "a", [1.0]), norm_rows("ti", "b", [1.0], vocab=(0.6, 0.05)))
    with pytest.raises(DtiError, match="vocab_norm_mean"):
        build_tables(unbalanced(), norms)


@pytest.mark.parametrize("dropped", [["value"], ["metric_model", "subject_kind"]])
def test_missing_columns_are_named(dropped):
    with pytest.raises(DtiError, match="missing") as err:
        build_tables(unbalanced().drop(columns=dropped), None)
    for column in dropped:
        assert column in str(err.value)


def test_missing_norm_columns_are_named():
    with pytest.raises(DtiError, match="vocab_norm_std"):
        build_tables(unbalanced(), frame(norm_rows("ti", "a", [1.0])).drop(columns="vocab_norm_std"))


def test_empty_scores_fail():
    with pytest.raises(DtiError, match="no rows"):
        build_tables(pd.DataFrame(columns=list(SCORE_COLUMNS)), None)


def test_nan_values_name_the_rows():
    scores = unbalanced()
    scores.loc[2, "value"] = np.nan
    with pytest.raises(DtiError) as err:
        build_tables(scores, None)
    message = str(err.value)
    for expected in ("value", "'sdxl'", "'dti'", "'b'", scores.loc[2, "image"]):
        assert expected in message
    assert scores.loc[1, "image"] not in message  # only the bad row is named


@pytest.mark.parametrize("change, match", [
    (lambda s: s.assign(subject_kind="animal"), "subject_kind"),
    (lambda s: s.assign(subject_kind=["object", "live", "object", "object"]), "more than one subject_kind"),
    (lambda s: pd.concat([s, s.iloc[[0]]]), "duplicate"),
    (lambda s: s.assign(value="high"), "non-numeric"),
])
def test_inconsistent_scores_fail(change, match):
    with pytest.raises(DtiError, match=match):
        build_tables(change(unbalanced()), None)


@pytest.mark.parametrize("kwargs", [{"n_boot": 0}, {"seed": -1}, {"n_boot": 2.5}])
def test_bad_bootstrap_settings_fail(kwargs):
    with pytest.raises(DtiError):
        build_tables(unbalanced(), None, **kwargs)


# Winners chosen so that the best method differs per backbone and per metric.
BENCH = {
    ("sdxl_base", "ti"): (0.50, 0.31), ("sdxl_base", "dti"): (0.60, 0.29), ("sdxl_base", "cross_init"): (0.40, 0.30),
    ("sana", "ti"): (0.45, 0.20), ("sana", "dti"): (0.50, 0.33), ("sana", "cross_init"): (0.55, 0.25),
}
BOLD = {("sdxl_base", "dti", "dino"), ("sdxl_base", "ti", "clip_t"), ("sana", "cross_init", "dino"),
        ("sana", "dti", "clip_t")}


def bench_scores() -> pd.DataFrame:
    parts = []
    for (backbone, method), (dino, clip_t) in BENCH.items():
        for subject, offset in (("dog_2", -0.01), ("can", 0.01)):
            parts.append(rows(backbone, method, subject, [dino + offset, dino + offset]))
            parts.append(rows(backbone, method, subject, [clip_t + offset] * 2, metric="clip_t", model=CLIP_T))
    return frame(*parts)


def parse_body(latex: str, n_keys: int) -> dict[tuple, list[str]]:
    """Body rows of a rendered table, keyed by their key values (blank keys filled from the row above)."""
    lines = latex.splitlines()
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    parsed, previous = {}, None
    for line in body:
        if line == r"\midrule":
            continue
        fields = line.removesuffix(r" \\").split(" & ")
        keys = [f or previous[i] for i, f in enumerate(fields[:n_keys])]
        parsed[tuple(keys)] = fields[n_keys:]
        previous = keys
    return parsed


def test_latex_bolds_best_method_per_metric_within_each_backbone():
    summary = build_tables(bench_scores(), None)["summary"]
    latex = to_latex(summary, caption="c", label="tab:summary")
    body = parse_body(latex, 4)
    assert len(body) == 6
    metrics = ["dino", "clip_t"]
    shown = {display_name(m): m for m in {key[1] for key in BENCH}}  # methods appear by their display names
    bold = {(backbone.replace(r"\_", "_"), shown[method.replace(r"\_", "_")], metric)
            for (backbone, _, _, method), cells in body.items()
            for metric, cell in zip(metrics, cells, strict=True) if r"\textbf{" in cell}
    assert bold == BOLD
    # Cells read "mean ± half-CI" with the table's numbers.
    row = one(summary, backbone="sana", method="ti", metric="dino")
    half = (row["ci_high"] - row["ci_low"]) / 2
    assert body[("sana", "object", "400", "TI")][0] == f"{row['mean']:.3f} $\\pm$ {half:.3f}"


def test_latex_has_booktabs_rules_and_escapes_names():
    latex = to_latex(build_tables(bench_scores(), None)["summary"], caption="Scores of cross_init & co",
                     label="tab:summary_main")
    lines = latex.splitlines()
    assert lines.index(r"\toprule") < lines.index(r"\midrule") < lines.index(r"\bottomrule")
    assert r"\begin{tabular}{llllcc}" in lines
    assert "DINO & CLIP-T" in latex
    assert r"sdxl\_base" in latex and r"cross\_init" in latex
    assert r"cross\_init \& co" in latex
    without_label = latex.replace(r"\label{tab:summary_main}", "")
    assert re.search(r"(?<!\\)_", without_label) is None
    assert "&" not in without_label.replace(" & ", "").replace(r"\&", "")  # only column separators


def test_latex_names_models_when_one_metric_has_two():
    scores = frame(rows("sdxl", "dti", "a", [0.2]), rows("sdxl", "ti", "a", [0.9], model="timm:other_model"))
    latex = to_latex(build_tables(scores, None)["summary"], caption="c", label="tab:x")
    assert f"DINO ({DINO.replace('_', chr(92) + '_')})" in latex
    assert r"DINO (timm:other\_model)" in latex
    assert "--" in latex  # each method lacks the other's model


def test_caption_names_protocol_and_metric_models():
    scores = bench_scores()
    caption = caption_for(scores, "summary", n_boot=1000)
    for expected in (DINO, CLIP_T, "2 subjects", "unweighted mean over subjects", "95%", "bootstrap",
                     "1000", "Seeds 0, 1", "best method per backbone"):
        assert expected in caption
    latex = to_latex(build_tables(scores, None)["summary"], caption=caption, label="tab:summary")
    assert DINO.replace("_", r"\_") in latex
    assert r"$\pm$" in latex.splitlines()[2]
    with pytest.raises(DtiError, match="unknown table"):
        caption_for(scores, "overall")


def test_norms_latex_is_not_bolded():
    norms = frame(norm_rows("ti", "a", [2.0]), norm_rows("dti", "a", [0.4]))
    table = build_tables(unbalanced(), norms)["norms"]
    latex = to_latex(table, caption=caption_for(unbalanced(), "norms"), label="tab:norms")
    assert r"\textbf" not in latex
    body = parse_body(latex, 4)
    assert body[("sdxl", "TI", "400", "clip\\_l")][-1] == f"{2.0 / 0.4:.3f}"


def test_write_tables_writes_parquet_and_tex_that_round_trip(tmp_path):
    scores = bench_scores()
    norms = frame(norm_rows("ti", "a", [2.0, 1.0]))
    tables = build_tables(scores, norms, n_boot=200)
    captions = {name: caption_for(scores, name, n_boot=200) for name in tables}
    written = write_tables(tables, tmp_path / "tables", captions=captions)
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == sorted(p.name for p in written)
    for name, table in tables.items():
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "tables" / f"{name}.parquet"), table)
        tex = (tmp_path / "tables" / f"{name}.tex").read_text()
        assert tex == to_latex(table, caption=captions[name], label=f"tab:{name}")
    assert len(written) == 2 * 7


def test_tables_show_display_names_while_parquet_keeps_the_keys(tmp_path):
    scores = stepped_scores()
    tables = build_tables(scores, None)
    write_tables(tables, tmp_path, captions={n: caption_for(scores, n, table=t) for n, t in tables.items()})
    summary = pd.read_parquet(tmp_path / "summary.parquet")
    assert set(summary["method"]) == {"dti", "ti"} and set(summary["metric"]) == {"dino"}
    body = parse_body((tmp_path / "summary.tex").read_text(), 4)
    assert {key[3] for key in body} == {display_name("dti"), display_name("ti")} == {"DTI", "TI"}
    assert " & DINO \\\\" in (tmp_path / "summary.tex").read_text()


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="no pdflatex here (apt-get install texlive-latex-base texlive-latex-recommended)")
def test_every_table_compiles_with_pdflatex_and_booktabs(tmp_path):
    from dti.analysis.interpolation import interpolation_tables, summary_latex

    scores = bench_scores()
    tables = build_tables(scores, frame(norm_rows("ti", "a", [2.0]), norm_rows("dti", "a", [0.4])))
    scores_of_runs, with_cost = cost_tables()
    tables["cost"] = with_cost["cost"]
    captions = {n: caption_for(scores_of_runs if n == "cost" else scores, n, table=t) for n, t in tables.items()}
    parts = [table_latex(n, t, caption=captions[n], label=f"tab:{n}") for n, t in tables.items()]
    blends = pd.DataFrame([{"backbone": "tiny_sd", "pair": "a+b", "method": m, "scheme": "slerp", "t": t,
                            "prompt_id": 0, "seed": 0, "image": f"{m}{t}.png", "sim_a": 1 - t, "sim_b": t,
                            "text": 0.3, "norm_ratio": 1.0, "image_metric": "dino (timm:x_y@random)",
                            "text_metric": "clip_t (open_clip:ViT-B-32@random)"}
                           for m in ("dti", "ti") for t in (0.0, 0.5, 1.0)])
    parts.append(summary_latex(interpolation_tables(blends)["summary"]))
    (tmp_path / "tables.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                         + "\n".join(parts) + "\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "tables.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    log = (tmp_path / "tables.log").read_text(errors="replace")
    assert not re.search(r"^!|Undefined control sequence|Missing \S+ inserted", log, re.MULTILINE), log[-3000:]


def test_write_tables_needs_a_caption_per_table(tmp_path):
    tables = build_tables(unbalanced(), None)
    with pytest.raises(DtiError, match="per_prompt"):
        write_tables(tables, tmp_path, captions={n: "c" for n in tables if n != "per_prompt"})
    assert list(tmp_path.iterdir()) == []


# --- the ablation table ---------------------------------------------------------------------------------
def test_ablation_table_puts_dti_beside_its_ablations_with_the_norm_ratio():
    scores = frame(*(rows("sdxl", m, s, v) for m, s, v in [
        ("ti", "a", [0.9]), ("dti", "a", [0.5]), ("dti", "b", [0.7]), ("dti_m_max", "a", [0.2]),
        ("dti_m_max", "b", [0.4, 0.6]), ("dti_init_random", "a", [0.3]), ("dti_init_random", "b", [0.3])]))
    norms = frame(norm_rows("ti", "a", [2.0]), norm_rows("dti", "a", [0.4]), norm_rows("dti", "b", [0.4]),
                  norm_rows("dti_m_max", "a", [0.8, 1.0]), norm_rows("dti_m_max", "b", [0.8]),
                  norm_rows("dti_init_random", "a", [0.4]), norm_rows("dti_init_random", "b", [0.4]))
    table = build_tables(scores, norms)["ablation"]
    assert list(dict.fromkeys(table["method"])) == ["dti", "dti_init_random", "dti_m_max"]  # registry order, no TI
    assert one(table, method="dti_m_max", metric="dino")["mean"] == pytest.approx(np.mean([0.2, 0.5]))
    ratio = one(table, method="dti_m_max", metric="norm_ratio")
    assert ratio["metric_model"] == "clip_l"
    assert ratio["mean"] == pytest.approx(np.mean([0.9 / 0.4, 0.8 / 0.4]))  # per subject first, then over them
    assert ratio["ci_low"] <= ratio["mean"] <= ratio["ci_high"]
    assert one(table, method="dti", metric="norm_ratio")["mean"] == pytest.approx(1.0)
    latex = to_latex(table, caption=caption_for(scores, "ablation", table=table), label="tab:ablation")
    assert "Norm / m" in latex and "DTI (m = max)" in latex and "DTI (random init)" in latex
    ratio_cells = [line.split("&")[-1] for line in latex.splitlines() if line.count("&") >= 5][1:]
    assert ratio_cells and not any("textbf" in cell for cell in ratio_cells)  # a ratio is never "best"
    assert r"\textbf{0.600" in latex  # DTI's DINO, the best score, is


def test_a_backbone_without_ablations_has_no_block_in_the_ablation_table():
    """A run whose ablations train on one backbone (a backbone's only_methods) shows that backbone alone: the
    other backbone's DTI row is in the summary, not in the ablation table."""
    scores = frame(rows("sdxl", "dti", "a", [0.5]), rows("sdxl", "dti_m_max", "a", [0.2]),
                   rows("sd", "dti", "a", [0.6]), rows("sd", "ti", "a", [0.9]))
    norms = frame(norm_rows("dti", "a", [0.4]), norm_rows("dti_m_max", "a", [0.8]),
                  norm_rows("dti", "a", [0.4], backbone="sd"), norm_rows("ti", "a", [2.0], backbone="sd"))
    tables = build_tables(scores, norms)
    assert set(tables["ablation"]["backbone"]) == {"sdxl"}
    assert set(tables["summary"]["backbone"]) == {"sd", "sdxl"}
    assert one(tables["ablation"], method="dti", metric="dino")["mean"] == pytest.approx(0.5)


def test_no_ablation_table_without_ablations():
    from dti.tables import TABLE_NAMES, table_names

    scores = frame(rows("sdxl", "ti", "a", [0.9]), rows("sdxl", "dti", "a", [0.5]))
    tables = build_tables(scores, frame(norm_rows("ti", "a", [2.0]), norm_rows("dti", "a", [0.4])))
    assert "ablation" not in tables
    assert table_names(["ti", "dti"]) == TABLE_NAMES
    assert table_names(["dti", "dti_adamw"]) == (*TABLE_NAMES, "ablation")


# --- the cost table -------------------------------------------------------------------------------------------
GIB = 2**30


def cost(token, adapter, peak_gib=None, kind=None, rank=None):
    """A run.json "cost" record (dti.train.Trainer.cost); peak_gib None: a run on a CPU."""
    return {"token_parameters": token, "adapter_parameters": adapter, "adapter": kind, "adapter_rank": rank,
            "peak_gpu_memory_bytes": None if peak_gib is None else int(peak_gib * GIB)}


# (backbone, method, subject) -> what its run.json records; cost None: a run.json written before runs recorded
# it. sdxl's TI: a plain run, a resumed one (its seconds cover the steps after the resume) and one resumed at its
# last step (no step run, so no step time); DTI + DCO trains a LoRA, and its run of b predates the cost record.
# sd ran on a CPU (no GPU memory), with other parameter counts and times; its DTI + DCO run has no cost at all.
RUNS = {
    ("sdxl", "ti", "a"): dict(steps=400, resumed_from=0, seconds=200.0, cost=cost(2048, 0, 10.5)),
    ("sdxl", "ti", "b"): dict(steps=400, resumed_from=100, seconds=90.0, cost=cost(2048, 0, 11.25)),
    ("sdxl", "ti", "c"): dict(steps=400, resumed_from=400, seconds=4.0, cost=cost(2048, 0, 12.75)),
    ("sdxl", "dti_dco", "a"): dict(steps=400, resumed_from=0, seconds=1234.5, cost=cost(2048, 1_179_648, 30.5, "lora", 4)),
    ("sdxl", "dti_dco", "b"): dict(steps=400, resumed_from=0, seconds=1300.0, cost=None),
    ("sd", "ti", "a"): dict(steps=200, resumed_from=0, seconds=50.0, cost=cost(768, 0)),
    ("sd", "ti", "b"): dict(steps=200, resumed_from=50, seconds=60.0, cost=cost(768, 0)),
    ("sd", "dti_dco", "a"): dict(steps=200, resumed_from=0, seconds=700.0, cost=None),
}


def cost_scores() -> dict[tuple[str, str, str, str], list[float]]:
    """(backbone, method, subject, metric) -> its images' values: every run's method, and TI-rescaled, which has
    no run of its own, wherever TI ran."""
    rng = np.random.default_rng(5)
    keys = [*RUNS, *((b, "ti_rescaled", s) for b, m, s in RUNS if m == "ti")]
    return {(*key, metric): list(rng.uniform(0.1, 0.9, 2)) for key in keys for metric in ("dino", "clip_t")}


def run_json(folder, backbone, method, subject, spec) -> dict:
    """Write a run.json as dti.train.finish does (no "cost" for an old run); return the workflow's run record."""
    run = {"method": method, "steps": spec["steps"], "resumed_from": spec["resumed_from"], "seconds": spec["seconds"],
           "norms": [{"encoder": "clip_l", "vector": 0, "norm": 0.4, "vocab_norm_mean": 0.4, "vocab_norm_std": 0.05}]}
    if spec["cost"] is not None:
        run["cost"] = spec["cost"]
    path = folder / backbone / method / subject / "run.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(run))
    return {"path": str(path), "backbone": backbone, "method": method, "subject": subject}


def aggregated(tmp_path, runs=RUNS):
    """A score file and the runs' run.json files in tmp_path -> dti.pipeline.aggregate; its tables folder."""
    from dti.io import write_parquet
    from dti.pipeline import aggregate

    steps = {b: spec["steps"] for (b, _, _), spec in RUNS.items()}  # each backbone scored at its last step
    scores = frame(*(rows(b, m, s, values, metric=metric, model=DINO if metric == "dino" else CLIP_T, step=steps[b])
                     for (b, m, s, metric), values in cost_scores().items()))
    write_parquet(tmp_path / "scores.parquet", scores)
    records = [run_json(tmp_path / "train", b, m, s, spec) for (b, m, s), spec in runs.items()]
    aggregate([str(tmp_path / "scores.parquet")], records, str(tmp_path / "tables"), n_boot=50, seed=0)
    return tmp_path / "tables"


def expected_cost(backbone, method) -> dict:
    """The cost row of (backbone, method), computed from RUNS and the scores directly."""
    from dti.methods import get_method

    trained = get_method(method).trained_as or method
    specs = [spec for (b, m, _), spec in RUNS.items() if (b, m) == (backbone, trained)]
    timed = [s["seconds"] / (s["steps"] - s["resumed_from"]) for s in specs if s["steps"] > s["resumed_from"]]
    costs = [s["cost"] for s in specs if s["cost"] is not None]
    peaks = [c["peak_gpu_memory_bytes"] / GIB for c in costs if c["peak_gpu_memory_bytes"] is not None]
    token = max((c["token_parameters"] for c in costs), default=None)
    adapter = max((c["adapter_parameters"] for c in costs), default=None)
    means = {metric: np.mean([np.mean(v) for (b, m, _, mt), v in cost_scores().items()
                              if (b, m, mt) == (backbone, method, metric)])
             for metric in ("dino", "clip_t")}
    return {"trained_as": trained, "token_parameters": token, "adapter_parameters": adapter,
            "trainable_parameters": None if token is None else token + adapter,
            "seconds_per_step": np.mean(timed) if timed else None, "peak_gpu_memory_gib": max(peaks, default=None),
            "n_runs": len(specs), "n_without_cost": len(specs) - len(costs), **means}


def assert_same(actual, expected, what):
    if expected is None:
        assert pd.isna(actual), f"{what}: expected no value, got {actual!r}"
    elif isinstance(expected, str):
        assert actual == expected, what
    else:
        assert not pd.isna(actual) and float(actual) == pytest.approx(expected), f"{what}: {actual!r} != {expected!r}"


def test_cost_table_is_written_by_aggregate_with_every_column_from_the_runs(tmp_path):
    from dti.tables import COST_COLUMNS, TABLE_NAMES

    assert "cost" in TABLE_NAMES  # so the workflow expects it of every aggregate run
    table = pd.read_parquet(aggregated(tmp_path) / "cost.parquet")
    assert list(table.columns) == [*COST_COLUMNS, "dino", "clip_t"]
    wanted = {(b, m) for b, m, _ in RUNS} | {(b, "ti_rescaled") for b, m, _ in RUNS if m == "ti"}
    assert sorted(zip(table["backbone"], table["method"], strict=True)) == sorted(wanted)
    for row in table.itertuples(index=False):
        expected = expected_cost(row.backbone, row.method)
        for column, value in expected.items():
            assert_same(getattr(row, column), value, f"{row.backbone}/{row.method} {column}")
        assert row.prompt_set == "object"
        assert row.step == max(spec["steps"] for (b, _, _), spec in RUNS.items() if b == row.backbone)


def test_cost_step_time_is_per_step_run_by_this_process_and_skips_runs_resumed_at_the_end(tmp_path):
    row = one(pd.read_parquet(aggregated(tmp_path) / "cost.parquet"), backbone="sdxl", method="ti")
    specs = [spec for (b, m, _), spec in RUNS.items() if (b, m) == ("sdxl", "ti")]
    assert {s["steps"] - s["resumed_from"] for s in specs} >= {0, specs[0]["steps"]}  # a finished resume is here
    ran = [s for s in specs if s["steps"] > s["resumed_from"]]
    assert ran and any(s["resumed_from"] > 0 for s in ran)  # and a resumed run that took steps
    per_step = np.mean([s["seconds"] / (s["steps"] - s["resumed_from"]) for s in ran])
    naive = np.mean([s["seconds"] / s["steps"] for s in specs])  # every run, every step: wrong
    assert abs(per_step - naive) > 0.05
    assert row["seconds_per_step"] == pytest.approx(per_step)
    assert row["n_runs"] == len(specs)


def test_cost_keeps_backbones_apart(tmp_path):
    table = pd.read_parquet(aggregated(tmp_path) / "cost.parquet")
    ti = {key: spec for key, spec in RUNS.items() if key[1] == "ti"}
    timed = {key: s["seconds"] / (s["steps"] - s["resumed_from"]) for key, s in ti.items()
             if s["steps"] > s["resumed_from"]}
    pooled = {"seconds_per_step": np.mean(list(timed.values())),  # both backbones' runs in one mean: wrong
              "token_parameters": np.mean([s["cost"]["token_parameters"] for s in ti.values()])}
    for column, wrong in pooled.items():
        shown = {b: float(one(table, backbone=b, method="ti")[column]) for b in ("sdxl", "sd")}
        assert shown["sdxl"] != shown["sd"]
        for backbone, value in shown.items():
            assert value != pytest.approx(wrong)
            assert value == pytest.approx(expected_cost(backbone, "ti")[column])


def test_cost_of_a_cpu_run_or_an_old_run_json_is_missing_not_an_error(tmp_path):
    from dti.methods import get_method

    folder = aggregated(tmp_path)
    table = pd.read_parquet(folder / "cost.parquet")
    cpu = one(table, backbone="sd", method="ti")  # its runs recorded their cost, but no GPU memory
    assert all(RUNS[("sd", "ti", s)]["cost"]["peak_gpu_memory_bytes"] is None for s in ("a", "b"))
    assert pd.isna(cpu["peak_gpu_memory_gib"]) and cpu["token_parameters"] == RUNS[("sd", "ti", "a")]["cost"][
        "token_parameters"]
    old = one(table, backbone="sd", method="dti_dco")  # its one run.json has no "cost"
    assert pd.isna(old["token_parameters"]) and pd.isna(old["adapter_parameters"])
    assert pd.isna(old["trainable_parameters"]) and pd.isna(old["peak_gpu_memory_gib"])
    spec = RUNS[("sd", "dti_dco", "a")]
    assert old["seconds_per_step"] == pytest.approx(spec["seconds"] / spec["steps"])  # timing is still known
    assert old["n_without_cost"] == old["n_runs"] == 1
    part = one(table, backbone="sdxl", method="dti_dco")  # one of its two runs recorded the cost: that one counts
    known = RUNS[("sdxl", "dti_dco", "a")]["cost"]
    assert (part["n_runs"], part["n_without_cost"]) == (2, 1)
    assert part["adapter_parameters"] == known["adapter_parameters"]
    assert part["peak_gpu_memory_gib"] == pytest.approx(known["peak_gpu_memory_bytes"] / GIB)
    tex = (folder / "cost.tex").read_text()
    caption = tex[tex.index(r"\caption{"):tex.index(r"\label{")]
    shown = get_method("dti_dco").display
    assert f"{shown} on sd (1 of 1)" in caption and f"{shown} on sdxl (1 of 2)" in caption
    assert "CPU" in caption and "wall time" in caption
    cells = parse_body(tex, 2)
    assert cells[("sd", shown)][:3] == ["--"] * 3 and cells[("sd", "TI")][4] == "--"


def test_ti_rescaled_shows_the_cost_of_ti_and_its_own_scores(tmp_path):
    table = pd.read_parquet(aggregated(tmp_path) / "cost.parquet")
    for backbone in ("sdxl", "sd"):
        rescaled, ti = one(table, backbone=backbone, method="ti_rescaled"), one(table, backbone=backbone, method="ti")
        assert rescaled["trained_as"] == "ti" and ti["trained_as"] == "ti"
        for column in ("token_parameters", "adapter_parameters", "seconds_per_step", "peak_gpu_memory_gib", "n_runs"):
            assert (pd.isna(rescaled[column]) and pd.isna(ti[column])) or rescaled[column] == ti[column]
        assert rescaled["dino"] != ti["dino"]
        assert rescaled["dino"] == pytest.approx(expected_cost(backbone, "ti_rescaled")["dino"])


def test_cost_latex_shows_display_names_separated_counts_and_three_significant_digits(tmp_path):
    from dti.methods import get_method

    folder = aggregated(tmp_path)
    table = pd.read_parquet(folder / "cost.parquet")
    tex = (folder / "cost.tex").read_text()
    assert r"\begin{tabular}{llcccccccc}" in tex and r"\label{tab:cost}" in tex
    assert "Token & Adapter & Trainable & s / step & Peak GiB & Runs & DINO & CLIP-T" in tex
    cells = parse_body(tex, 2)
    assert len(cells) == len(table)
    for row in table.itertuples(index=False):
        shown = cells[(row.backbone, get_method(row.method).display)]
        counts = [row.token_parameters, row.adapter_parameters, row.trainable_parameters]
        assert shown[:3] == ["--" if pd.isna(c) else f"{int(c):,}" for c in counts]
        for cell, value in zip(shown[3:5], [row.seconds_per_step, row.peak_gpu_memory_gib], strict=True):
            if pd.isna(value):
                assert cell == "--"
                continue
            digits = cell.replace(",", "").replace(".", "").lstrip("0")
            assert "e" not in cell and len(digits) <= max(3, len(str(int(value))))
            assert float(cell.replace(",", "")) == pytest.approx(value, rel=5e-3)
        assert shown[5] == str(row.n_runs)
        assert shown[6:] == [f"{v:.3f}" for v in (row.dino, row.clip_t)]
    adapter = RUNS[("sdxl", "dti_dco", "a")]["cost"]["adapter_parameters"]
    assert f"{adapter:,}" in tex and "," in f"{adapter:,}"  # thousands separators
    assert get_method("ti_rescaled").display in tex


def cost_tables() -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Scores and tables of RUNS built in memory: one run_cost row per run.json."""
    from dti.tables import run_cost

    runs = pd.DataFrame([{"backbone": b, "method": m, "subject": s, **run_cost(spec)}
                         for (b, m, s), spec in RUNS.items()])
    scores = frame(*(rows(b, m, s, v, metric=mt, model=DINO if mt == "dino" else CLIP_T)
                     for (b, m, s, mt), v in cost_scores().items()))
    return scores, build_tables(scores, None, runs=runs)


def test_cost_table_round_trips_through_write_tables(tmp_path):
    scores, tables = cost_tables()
    table = tables["cost"]
    assert table["token_parameters"].dtype == "Int64" and table["seconds_per_step"].dtype == "float64"
    captions = {n: caption_for(scores, n, table=t) for n, t in tables.items()}
    write_tables(tables, tmp_path, captions=captions)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cost.parquet"), table)
    assert (tmp_path / "cost.tex").read_text() == table_latex("cost", table, caption=captions["cost"],
                                                               label="tab:cost")


def test_aggregate_without_runs_writes_no_cost_table(tmp_path):
    from dti.io import write_parquet
    from dti.pipeline import aggregate

    write_parquet(tmp_path / "scores.parquet", unbalanced())
    aggregate([str(tmp_path / "scores.parquet")], [], str(tmp_path / "tables"), n_boot=20, seed=0)
    assert (tmp_path / "tables" / "summary.parquet").exists()
    assert not (tmp_path / "tables" / "cost.parquet").exists()


def test_run_costs_with_the_same_run_twice_fail():
    from dti.tables import run_cost

    spec = RUNS[("sdxl", "ti", "a")]
    runs = pd.DataFrame([{"backbone": "sdxl", "method": "ti", "subject": "a", **run_cost(spec)}] * 2)
    with pytest.raises(DtiError, match="same run"):
        build_tables(frame(rows("sdxl", "ti", "a", [0.5])), None, runs=runs)

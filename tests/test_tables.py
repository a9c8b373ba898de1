"""Aggregation of per-image scores into result tables, their LaTeX rendering and writing."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from dti.errors import DtiError
from dti.latex import to_latex
from dti.tables import SCORE_COLUMNS, build_tables, caption_for, write_tables
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
    parts = [to_latex(t, caption=caption_for(scores, n, table=t), label=f"tab:{n}") for n, t in tables.items()]
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


def test_no_ablation_table_without_ablations():
    from dti.tables import TABLE_NAMES, table_names

    scores = frame(rows("sdxl", "ti", "a", [0.9]), rows("sdxl", "dti", "a", [0.5]))
    tables = build_tables(scores, frame(norm_rows("ti", "a", [2.0]), norm_rows("dti", "a", [0.4])))
    assert "ablation" not in tables
    assert table_names(["ti", "dti"]) == TABLE_NAMES
    assert table_names(["dti", "dti_adamw"]) == (*TABLE_NAMES, "ablation")

"""The mechanism jobs (dti.analysis.mechanism) on tiny trained runs: each one's table, figure and the facts
its construction fixes (a vocabulary row rescaled to k x m has norm ratio k; DTI's token sits at m)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dti.analysis import mechanism
from dti.errors import DtiError
from dti.model_record import write_model_record

SCALES = [1.0, 4.0]
TEMPLATES = ["a photo of {} on a beach", "a watercolor painting of {} in the snow", "{} next to a red chair"]


@pytest.fixture(scope="module")
def sdxl_runs(trained_run, tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mechanism")
    record = folder / "tiny_sdxl.json"
    write_model_record(record, model=str(tiny_models["sdxl"]), family="sdxl", revision=None, source="local")
    runs = []
    for method, subject in (("dti", "pup"), ("ti", "bear")):  # two subjects (the same photos, as labelled)
        run = trained_run("sdxl", method)
        runs.append({"path": str(run.out_dir / "run.json"), "method": method, "subject": subject})
    return record, runs, folder


def _files(stem):
    return [f"{stem}.{ext}" for ext in ("parquet", "png", "pdf")]


def test_position_probe_and_positional_table(sdxl_runs, tmp_path):
    record, runs, _ = sdxl_runs
    probes = tmp_path / "probe.safetensors"
    mechanism.write_probes(str(record), str(probes), steps=20, batch_size=8, seed=0)
    loaded = mechanism.read_probes(str(probes))
    assert sorted(loaded) == ["clip_g", "clip_l"] and loaded["clip_l"].meta["steps"] == 20
    again = tmp_path / "again.safetensors"
    mechanism.write_probes(str(record), str(again), steps=20, batch_size=8, seed=0)
    assert again.read_bytes() == probes.read_bytes()  # seeded: the same probe, byte for byte

    stem = tmp_path / "positional"
    mechanism.write_positional(str(probes), str(record), runs, str(stem), labels={"backbone": "tiny_sdxl"},
                               scales=SCALES)
    assert all((tmp_path / f).stat().st_size > 0 for f in ("positional.parquet", "positional.png", "positional.pdf"))
    table = pd.read_parquet(f"{stem}.parquet")
    assert set(table["encoder"]) == {"clip_l", "clip_g"}
    assert set(table["method"]) == {"vocabulary", "dti", "ti"}
    assert len(table) == 2 * 3 * (1 + len(SCALES))  # encoders x tokens x (as trained + each scale)
    scaled = table[table["scale"].notna()]
    np.testing.assert_allclose(scaled["norm_ratio"], scaled["scale"])  # rescaled: exactly k x m
    dti = table[(table["method"] == "dti") & table["scale"].isna()]
    np.testing.assert_allclose(dti["norm_ratio"], 1.0, rtol=1e-4)  # DTI's rows sit at m
    ti = table[(table["method"] == "ti") & table["scale"].isna()]
    assert (ti["norm_ratio"] > 1.0).all()  # TI's grow even in a few steps
    assert ((table["ci_low"] <= table["accuracy"]) & (table["accuracy"] <= table["ci_high"])).all()
    assert table["backbone"].eq("tiny_sdxl").all()


def test_position_probe_is_refused_where_no_encoder_adds_positions(tiny_models, tmp_path):
    record = tmp_path / "sana.json"
    write_model_record(record, model=str(tiny_models["sana"]), family="sana", revision=None, source="local")
    with pytest.raises(DtiError, match="family sana: no text encoder adds absolute positions"):
        mechanism.write_probes(str(record), str(tmp_path / "p.safetensors"), steps=2, batch_size=2, seed=0)
    assert not (tmp_path / "p.safetensors").exists()


@pytest.fixture(scope="module")
def encoder_measures(sdxl_runs, tmp_path_factory) -> Path:
    """The folder where one job wrote residual.* and context.* from one sweep."""
    record, runs, _ = sdxl_runs
    out = tmp_path_factory.mktemp("encoder_measures")
    mechanism.write_encoder_measures(str(record), runs, str(out / "residual"), str(out / "context"),
                                     labels={"backbone": "tiny_sdxl"}, scales=SCALES, templates=TEMPLATES)
    return out


@pytest.mark.parametrize("measure", ["residual", "context"])
def test_encoder_measures(encoder_measures, measure):
    tmp_path = encoder_measures
    table = pd.read_parquet(tmp_path / f"{measure}.parquet")
    assert all((tmp_path / f"{measure}.{ext}").stat().st_size > 0 for ext in ("png", "pdf"))
    assert set(table["method"]) == {"vocabulary", "dti", "ti"} and set(table["encoder"]) == {"clip_l", "clip_g"}
    assert ((table["ci_low"] <= table["mean"] + 1e-12) & (table["mean"] <= table["ci_high"] + 1e-12)).all()
    vocabulary = table[(table["method"] == "vocabulary") & table["scale"].notna()]
    np.testing.assert_allclose(vocabulary["norm_ratio"], vocabulary["scale"], rtol=1e-5)
    if measure == "residual":
        overall = table[table["layer"].isna()]
        assert len(overall) == 2 * 3 * (1 + len(SCALES))
        per_layer = table[table["layer"].notna()]
        assert set(per_layer["layer"]) == set(range(int(per_layer["layer"].max()) + 1))
        # A larger token norm leaves the blocks' updates smaller beside it (the paper's lemma; it holds for
        # any fixed weights, since each update is computed from a normalized copy of the stream).
        for encoder in ("clip_l", "clip_g"):
            vocab = overall[(overall["method"] == "vocabulary") & (overall["encoder"] == encoder)]
            by_scale = vocab.dropna(subset=["scale"]).set_index("scale")["mean"]
            assert by_scale[4.0] < by_scale[1.0]
    else:
        assert table["mean"].between(0, 2).all()
        # The templates put different words before the token, which causal CLIP encoders do read: its output
        # changes with the prompt (the prompts' first words alone would leave it at exactly 0).
        assert (table["mean"] > 1e-6).all()
    # Bootstrap units are (subject, prompt): the vocabulary reference has a token per subject, each method one.
    units = table.set_index("method")["n_prompts"]
    assert set(units[["dti", "ti"]]) == {len(TEMPLATES)} and set(units[["vocabulary"]]) == {2 * len(TEMPLATES)}


def test_semantic_directions(sdxl_runs, tmp_path):
    record, runs, _ = sdxl_runs
    mechanism.write_directions(str(record), runs, str(tmp_path), labels={"backbone": "tiny_sdxl"}, sample=50,
                               nearest=3)
    assert all((tmp_path / f"{s}.{ext}").stat().st_size > 0 for s in ("pup", "bear") for ext in ("png", "pdf"))
    nearest = pd.read_parquet(tmp_path / "nearest.parquet")
    initializer = json.loads(open(runs[0]["path"]).read())["settings"]["initializer"]
    init = f"initializer/{initializer}"
    assert {s: set(p["label"]) for s, p in nearest.groupby("subject")} == {"pup": {"dti", init}, "bear": {"ti", init}}
    assert set(nearest["encoder"]) == {"clip_l", "clip_g"} and set(nearest["by"]) == {"direction", "vector"}
    assert nearest.groupby(["subject", "encoder", "label", "vector", "by"]).size().eq(3).all()  # k = 3 words each
    # The initializer's own rows are their own nearest word by direction (cosine 1).
    own = nearest[(nearest["label"] == init) & (nearest["by"] == "direction")
                  & (nearest["rank"] == nearest["rank"].min())]
    np.testing.assert_allclose(own["cosine"], 1.0, rtol=1e-5)
    page = (tmp_path / "nearest.html").read_text()  # the report's table: one line per token vector
    summary = mechanism.nearest_words_summary(nearest)
    assert len(summary) == nearest.groupby(["subject", "encoder", "label", "vector"]).ngroups
    assert page.count("<tr>") == len(summary) + 1 and ">DTI<" in page and f">initializer ({initializer})<" in page
    first = nearest[(nearest["subject"] == "pup") & (nearest["label"] == "dti") & (nearest["by"] == "direction")
                    & (nearest["encoder"] == "clip_l") & (nearest["vector"] == 0)].sort_values("rank")
    line = summary[(summary["subject"] == "pup") & (summary["Token"] == "DTI") & (summary["encoder"] == "clip_l")]
    assert line["Nearest by direction (cosine)"].iloc[0].startswith(f"{first['token'].iloc[0]} ({first['cosine'].iloc[0]:.2f})")
    points = pd.read_parquet(tmp_path / "points.parquet")
    assert set(points.loc[points["kind"] == "token", "label"]) == {"dti", "ti", init}


@pytest.mark.parametrize(("change", "needle"), [
    ({"scales": [1, 0]}, "analysis.mechanism.scales[1]: 0.0 is not a positive number"),
    ({"prompts": ["a {}"]}, "analysis.mechanism.prompts: give at least two templates"),
    ({"prompts": ["a {}", "no slot"]}, "analysis.mechanism.prompts[1]"),
    ({"probe": {"steps": 0}}, "analysis.mechanism.probe.steps: 0 is not at least 1"),
    ({"attention": {"scales": []}}, "analysis.mechanism.attention.scales: the list is empty"),
])
def test_bad_settings_are_named(change, needle):
    with pytest.raises(DtiError) as err:
        mechanism.check_mechanism(change)
    assert needle in str(err.value)


def test_defaults():
    settings = mechanism.check_mechanism({})
    assert settings["scales"] == sorted(mechanism.SCALES) and settings["probe"]["steps"] == 1000
    templates = mechanism.measured_templates(None)
    assert len(templates) >= 10 and len({t.split("{}")[0] for t in templates}) == len(templates)  # varied left


def test_attention_maps_job(sdxl_runs, tmp_path):
    record, runs, _ = sdxl_runs
    stem = tmp_path / "attention"
    mechanism.write_attention(str(record), runs, str(stem), labels={"backbone": "tiny_sdxl"},
                              prompts=["a photo of {}"], scales=[4.0], seeds=[0],
                              sample={"steps": 2, "guidance_scale": 5.0, "resolution": 64})
    assert (tmp_path / "attention.png").stat().st_size > 0 and (tmp_path / "attention.pdf").stat().st_size > 0
    table = pd.read_parquet(f"{stem}.parquet")
    assert len(table) == len(runs) * 2  # each run as trained and at 4 m
    assert set(zip(table["method"], table["subject"], strict=True)) == {("dti", "pup"), ("ti", "bear")}
    np.testing.assert_allclose(table.loc[table["scale"] == 4.0, "norm_ratio"], 4.0, rtol=1e-4)
    dti = table[(table["method"] == "dti") & table["scale"].isna()]
    np.testing.assert_allclose(dti["norm_ratio"], 1.0, rtol=1e-3)
    for _, row in table.iterrows():
        values = np.asarray(row["map"])
        assert len(values) == row["map_rows"] * row["map_cols"]
        assert 0 <= values.min() and values.max() <= 1  # a share of a softmax
        assert row["mean_attention"] == pytest.approx(values.mean(), rel=1e-5)


def test_decoding_job_on_a_language_model_encoder(trained_run, tiny_models, tmp_path):
    record = tmp_path / "sana.json"
    write_model_record(record, model=str(tiny_models["sana"]), family="sana", revision=None, source="local")
    run = trained_run("sana", "dti")
    runs = [{"path": str(run.out_dir / "run.json"), "method": "dti", "subject": "pup"}]
    out = tmp_path / "decoding.parquet"
    mechanism.write_decoding(str(record), runs, str(out), labels={"backbone": "tiny_sana"}, max_new_tokens=4, top_k=3)
    table = pd.read_parquet(out)
    assert set(table["method"]) == {"dti", "vocabulary"} and set(table["encoder"]) == {"gemma2"}
    assert set(table["kind"]) == {"next", "lens"} and table["backbone"].eq("tiny_sana").all()
    assert table.groupby(["method", "kind", "question_id", "vector"], dropna=False).size().eq(3).all()  # top 3
    page = out.with_suffix(".html").read_text()
    summary = mechanism.decoding_summary(table)
    assert page.count("<tr>") == len(summary) + 1 and ">DTI<" in page
    asked = summary[summary["Input"] == table["question"].dropna().iloc[0]]
    assert len(asked) == 2 and asked["Answer"].str.len().gt(0).all()  # DTI's token and the reference words
    again = tmp_path / "again.parquet"
    mechanism.write_decoding(str(record), runs, str(again), labels={"backbone": "tiny_sana"}, max_new_tokens=4, top_k=3)
    pd.testing.assert_frame_equal(pd.read_parquet(again), table)  # greedy: the same answers every time


def test_decoding_is_refused_without_a_language_model(sdxl_runs, tmp_path):
    record, runs, _ = sdxl_runs
    with pytest.raises(DtiError, match="family sdxl: no text encoder is a language model"):
        mechanism.write_decoding(str(record), runs, str(tmp_path / "d.parquet"), labels={})
    assert not (tmp_path / "d.parquet").exists()

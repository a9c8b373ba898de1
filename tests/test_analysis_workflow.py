"""The analysis, interpolation and report rules in the real workflow: what the embedded default's run
wrote, how they rerun, the paper configs' plans, and bad input."""

from __future__ import annotations

import copy
import json
import shutil
from collections import Counter

import pandas as pd
import pytest
import torch
import yaml
from workflow_run import REPO, SHARED, SHARED_METHODS, planned_jobs, snakemake

from dti.analysis.interpolation import schemes_for, t_label
from dti.benchmark_config import load_config_files
from dti.export import load_diffusers
from dti.inspect import read_embedding_file
from dti.methods import get_method, token_only

DEFAULT = copy.deepcopy(SHARED)  # the shared run's config (tests/shared_run.yaml)
RUN = f"results/runs/{DEFAULT['run_name']}"  # the run's tables, analyses and report files
BACKBONES = sorted(DEFAULT["backbones"])
SUBJECTS = sorted(s["name"] for s in DEFAULT["subjects"])
# The methods trained on each backbone (the shared run gives each added method one backbone: only_methods).
TRAINED = {b: sorted({get_method(m).trained_as or m for m in SHARED_METHODS[b]}) for b in BACKBONES}
# Interpolation and the magnitude sweep use tokens alone, so they leave out methods that train an adapter.
TOKEN_ONLY = {b: token_only(TRAINED[b]) for b in BACKBONES}
INTERP = DEFAULT["interpolation"]
PAIRS = [(p["a"], p["b"]) for p in INTERP["pairs"]]
SWEEP = DEFAULT["analysis"]["magnitude"]
INTERP_BACKBONES = INTERP.get("backbones") or BACKBONES
SWEEP_BACKBONES = SWEEP.get("backbones") or BACKBONES
SLOTS = {"sd": ["clip_l"], "sdxl": ["clip_l", "clip_g"]}
ANALYSIS_RULES = ("interpolate", "score_interpolation", "interpolation_outputs", "norm_analysis", "magnitude_sweep",
                  "score_magnitude_sweep", "magnitude_outputs", "sample_grids", "report_tables", "checkpoint_sweep",
                  "position_probe", "positional_attenuation", "encoder_measures", "semantic_directions",
                  "attention_maps")

pytestmark = pytest.mark.slow


def write_config(path, change):
    config = copy.deepcopy(SHARED)  # the shared run's config, changed: a whole config, no layer
    change(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def variants(backbone):
    return [(m, s) for m in TOKEN_ONLY[backbone] for s in schemes_for(get_method(m).on_sphere)]


def test_every_analysis_output_is_written(default_run):
    files = [f"{RUN}/analysis/{kind}/{b}.{ext}" for kind in ("norm_curves", "vocab_norms") for b in BACKBONES
             for ext in ("png", "pdf", "parquet")]
    files += [f"{RUN}/analysis/magnitude/{b}.{ext}" for b in SWEEP_BACKBONES for ext in ("png", "pdf", "parquet")]
    files += [f"{RUN}/interpolation/{b}/{a}+{c}/{kind}.{ext}" for b in INTERP_BACKBONES for a, c in PAIRS
              for kind in ("curves", "strip") for ext in ("png", "pdf", "parquet")]
    files += [f"{RUN}/interpolation/{n}" for n in ("summary.parquet", "summary.tex", "paths.parquet", "per_t.parquet")]
    files += [f"{RUN}/report/grids/{b}/{s}.{ext}" for b in BACKBONES for s in SUBJECTS for ext in ("png", "pdf")]
    files += [f"{RUN}/analysis/checkpoints.{ext}" for ext in ("png", "pdf")]  # its numbers: over_steps.parquet
    missing = [f for f in files if not (default_run / f).is_file() or (default_run / f).stat().st_size == 0]
    assert not missing
    for rule in ANALYSIS_RULES:
        assert list((default_run / "logs").glob(f"{rule}*")), rule
        assert list((default_run / "benchmarks").glob(f"{rule}*")), rule


def test_training_curves_hold_dti_at_m_and_show_ti_inflating(default_run):
    for backbone in BACKBONES:
        curves = pd.read_parquet(default_run / f"{RUN}/analysis/norm_curves/{backbone}.parquet")
        steps = DEFAULT["backbones"][backbone]["train"]["steps"]
        assert len(curves[curves["method"] == "dti"]) == steps * sum(
            len(json.loads((default_run / f"results/{backbone}/dti/{s}/run.json").read_text())["norms"])
            for s in SUBJECTS)
        dti = curves[curves["method"] == "dti"]
        assert ((dti["norm"] / dti["vocab_norm_mean"] - 1).abs() < 1e-5).all()
        last = curves[(curves["method"] == "ti") & (curves["step"] == steps)]
        assert (last["norm"] / last["vocab_norm_mean"] > 1.5).all()  # as the norms table shows
        hist = pd.read_parquet(default_run / f"{RUN}/analysis/vocab_norms/{backbone}.parquet")
        assert sorted(hist.loc[hist["kind"] == "learned", "method"].unique()) == TRAINED[backbone]


def test_interpolated_embeddings_are_loadable_files(default_run):
    family = {b: DEFAULT["backbones"][b]["family"] for b in BACKBONES}
    for backbone in INTERP_BACKBONES:
        for a, b in PAIRS:
            folder = default_run / f"{RUN}/interpolation/{backbone}/{a}+{b}/embeddings"
            for method, scheme in variants(backbone):
                for t in INTERP["t"]:
                    here = folder / f"{method}-{scheme}" / t_label(t)
                    _, rows = load_diffusers(here, SLOTS[family[backbone]])
                    single = read_embedding_file(here / f"{a}-{b}-{method}-{scheme}-{t_label(t)}.safetensors")
                    assert single.layout == ("sdxl" if family[backbone] == "sdxl" else "emb_params")
                    singles = single.vectors if family[backbone] == "sdxl" else {"clip_l": next(iter(
                        single.vectors.values()))}  # SD: one unnamed tensor (emb_params)
                    for slot in rows:
                        torch.testing.assert_close(torch.from_numpy(singles[slot]), rows[slot])
                    _, start = load_diffusers(default_run / f"results/{backbone}/{method}/{a}", SLOTS[family[backbone]])
                    _, end = load_diffusers(default_run / f"results/{backbone}/{method}/{b}", SLOTS[family[backbone]])
                    if t == 0 and scheme == "lerp":  # the path starts at A's learned rows, exactly
                        for slot in rows:
                            torch.testing.assert_close(rows[slot], start[slot])
                    if scheme == "slerp":  # at the fixed m (DTI), else the norm blended linearly (a trained m too)
                        for slot in rows:
                            norm = (1 - t) * start[slot].norm(dim=-1) + t * end[slot].norm(dim=-1)
                            if get_method(method).on_sphere:
                                norm = start[slot].norm(dim=-1)
                            torch.testing.assert_close(rows[slot].norm(dim=-1), norm, rtol=1e-5, atol=1e-6)


def test_interpolation_table_covers_every_method_and_path(default_run):
    summary = pd.read_parquet(default_run / f"{RUN}/interpolation/summary.parquet")
    expected = {(b, m, s) for b in INTERP_BACKBONES for m, s in variants(b)}
    assert set(zip(summary["backbone"], summary["method"], summary["scheme"], strict=True)) == expected
    assert (summary["n_paths"] == len(PAIRS) * len(INTERP["prompts"]) * len(INTERP["seeds"])).all()
    assert (summary["n_steps"] == len(INTERP["t"]) - 1).all()
    dti = summary[summary["method"] == "dti"]
    assert ((dti["norm_mid"] - 1).abs() < 1e-5).all()  # DTI's path never leaves the norm m
    assert summary["max_jump"].between(1 / (len(INTERP["t"]) - 1) - 1e-9, 1).all()
    tex = (default_run / f"{RUN}/interpolation/summary.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex


def test_magnitude_sweep_covers_every_token_and_scale(default_run):
    assert sorted(p.stem for p in (default_run / f"{RUN}/analysis/magnitude").glob("*.png")) == sorted(SWEEP_BACKBONES)
    for backbone in SWEEP_BACKBONES:
        scores = pd.read_parquet(default_run / f"{RUN}/magnitude/{backbone}/fidelity.parquet")
        assert len(scores) == len(TOKEN_ONLY[backbone]) * len(SUBJECTS) * len(SWEEP["scales"]) * len(SWEEP["prompts"]) * len(
            SWEEP["seeds"])
        assert scores[["subject_fidelity", "text_fidelity"]].notna().all().all()
        table = pd.read_parquet(default_run / f"{RUN}/analysis/magnitude/{backbone}.parquet")
        assert len(table) == len(TOKEN_ONLY[backbone]) * len(SWEEP["scales"])
        assert (table["n_subjects"] == len(SUBJECTS)).all()


MECHANISM = DEFAULT["analysis"]["mechanism"]
MEASURED = MECHANISM.get("backbones") or BACKBONES


def test_mechanism_measures_every_trained_token_of_its_backbones(default_run):
    """The shared run measures the mechanism on its SDXL-shaped backbone (tests/shared_run.yaml): every table
    holds each method trained there and the vocabulary reference, per CLIP encoder; the attention maps show
    the token-only methods of the first two subjects; DTI's tokens sit at m, rescaled rows at k x m."""
    family = {b: DEFAULT["backbones"][b]["family"] for b in BACKBONES}
    for backbone in MEASURED:
        folder = default_run / f"{RUN}/analysis/mechanism/{backbone}"
        methods = set(TRAINED[backbone]) | {"vocabulary"}
        for kind in ("positional", "residual", "context"):
            table = pd.read_parquet(folder / f"{kind}.parquet")
            assert set(table["method"]) == methods, kind
            assert set(table["encoder"]) == set(SLOTS[family[backbone]]) and table["backbone"].eq(backbone).all()
            scaled = table[table["scale"].notna()]
            assert (scaled["norm_ratio"] - scaled["scale"]).abs().max() < 1e-4 * scaled["scale"].max()
            dti = table[(table["method"] == "dti") & table["scale"].isna()]
            assert len(dti) and (dti["norm_ratio"] - 1).abs().max() < 1e-3
        context = pd.read_parquet(folder / "context.parquet")
        assert (context["mean"] > 0).all()  # the mechanism prompts vary the words before the token
        attention = pd.read_parquet(folder / "attention.parquet")
        shown = [s["name"] for s in DEFAULT["subjects"]][:2]
        assert set(zip(attention["method"], attention["subject"], strict=True)) == {
            (m, s) for m in TOKEN_ONLY[backbone] for s in shown}
        nearest = pd.read_parquet(folder / "directions/nearest.parquet")
        for subject in SUBJECTS:
            labels = set(nearest.loc[nearest["subject"] == subject, "label"])
            assert set(TRAINED[backbone]) <= labels and any(x.startswith("initializer/") for x in labels)
            assert (folder / f"directions/{subject}.png").stat().st_size > 0
        assert not (folder / "decoding.parquet").exists()  # CLIP is no language model


def test_new_interpolation_settings_rerun_only_the_interpolation(default_run, tmp_path):
    work = shutil.copytree(default_run, tmp_path / "run", symlinks=True)
    config = write_config(tmp_path / "c.yaml", lambda c: c["interpolation"].update(t=[0, 0.5, 1]))
    counts = Counter(rule for rule, _ in planned_jobs(work, "--configfile", str(config)))
    per_pair = len(INTERP_BACKBONES) * len(PAIRS)
    assert counts == Counter({"interpolate": per_pair, "score_interpolation": per_pair, "interpolation_outputs": 1,
                              "report_tables": 1, "all": 1})


def test_a_pair_of_different_lengths_fails_naming_it_and_writes_nothing(default_run, tmp_path):
    work = shutil.copytree(default_run, tmp_path / "run", symlinks=True)
    backbone = INTERP_BACKBONES[0]
    lengths = {s: len(json.loads((default_run / f"results/{backbone}/dti/{s}/run.json").read_text())["tokens"]["clip_l"])
               for s in SUBJECTS}
    a, b = min(lengths, key=lengths.get), max(lengths, key=lengths.get)
    assert lengths[a] != lengths[b]  # the embedded default has a two-token initializer
    config = write_config(tmp_path / "c.yaml", lambda c: c["interpolation"].update(pairs=[{"a": a, "b": b}]))
    target = f"{RUN}/interpolation/{backbone}/{a}+{b}/manifest.parquet"
    result = snakemake(work, target, "--cores", "1", "--configfile", str(config), check=False)
    assert result.returncode != 0
    log = (work / f"logs/interpolate/{backbone}/{a}+{b}.log").read_text()
    assert f"interpolation pair {a}+{b}" in log and "different numbers of vectors" in log
    assert not [p for p in (work / f"{RUN}/interpolation").rglob("*") if f"{a}+{b}" in str(p) and p.is_file()]


@pytest.mark.parametrize(("change", "needle"), [
    (lambda c: c["interpolation"]["pairs"].append({"a": "striped_box", "b": "no_such_subject"}), "no_such_subject"),
    (lambda c: c["interpolation"].update(methods=["magic"]), "interpolation.methods[0]: unknown method 'magic'"),
    (lambda c: c["interpolation"]["pairs"][0].update(methods=["ti", "wizardry"]), "wizardry"),
    (lambda c: c["interpolation"].update(t=[0, 0.5, 1.5]), "interpolation.t[2]: 1.5 is outside [0, 1]"),
    (lambda c: c["interpolation"].update(prompts=[]), "interpolation.prompts: the list is empty"),
    (lambda c: c["interpolation"].update(prompts=["no slot here"]), "interpolation.prompts[0]"),
    (lambda c: c["analysis"]["magnitude"].update(prompts=[]), "analysis.magnitude.prompts: the list is empty"),
    (lambda c: c["analysis"]["magnitude"].update(scales=[1, -2]), "analysis.magnitude.scales[1]: -2.0 is not a"),
    (lambda c: c["interpolation"].update(backbones=["tiny_sd3"]), "interpolation.backbones[0]: unknown backbone"),
    (lambda c: c["analysis"]["magnitude"].update(backbones=[]), "analysis.magnitude.backbones: the list is empty"),
    (lambda c: c["backbones"]["tiny_sd"].update(only_methods=["dti", "magic"]),
     "backbones.tiny_sd.only_methods[1]: 'magic' is not one of `methods`"),
    (lambda c: (c["interpolation"].update(backbones=["tiny_sd"]), c["interpolation"]["pairs"][0].update(
        methods=["dti_core"])), "none of pair striped_box+spotted_pup's methods (dti_core) trains on backbone tiny_sd"),
])
def test_bad_analysis_config_stops_with_one_line_naming_it(tmp_path, change, needle):
    result = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path / "c.yaml", change)), check=False)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if needle in line]
    assert lines and lines[0].startswith("config error: "), result.stderr[-2000:]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(("config", "interpolated", "swept", "clip"), [
    ("paper-sdxl.yaml", 1, 1, True),  # SDXL alone (extends config/paper.yaml)
    ("paper-sana.yaml", 0, 1, False),  # the paper's interpolation runs on SDXL only; Gemma-2, no CLIP
    ("paper-sd15.yaml", 1, 1, True),
])
def test_paper_configs_plan_the_analyses_and_the_report(tmp_path, config, interpolated, swept, clip):
    paper = load_config_files([REPO / "config" / config])
    counts = Counter(rule for rule, _ in planned_jobs(tmp_path, "--configfile", str(REPO / "config" / config)))
    n_pairs = len(paper["interpolation"]["pairs"])
    assert counts["interpolate"] == counts["score_interpolation"] == interpolated * n_pairs
    assert counts["interpolation_outputs"] == min(interpolated, 1)
    assert counts["magnitude_sweep"] == counts["score_magnitude_sweep"] == swept  # no `backbones`: all kept
    for rule in ("norm_analysis", "magnitude_outputs", "sample_grids", "report_tables", "checkpoint_sweep"):
        assert counts[rule] == 1, rule
    # The mechanism, on the one backbone: the probe where an encoder adds position rows (CLIP), attention
    # maps where the UNet reads the tokenizer's positions, decoding where the encoder is a language model.
    for rule in ("encoder_measures", "semantic_directions"):
        assert counts[rule] == 1, rule
    for rule in ("position_probe", "positional_attenuation", "attention_maps"):
        assert counts[rule] == int(clip), rule
    assert counts["token_decoding"] == int(not clip)

"""The workflow on the tiny SANA and Wan models: one subject, the three methods, sampling, scoring and the
tables, lean enough for the suite (one prompt, one seed, two training steps, DINO only); and the paper
configs of the new backbones planned without downloading anything."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest
import yaml
from PIL import Image
from workflow_run import REPO, planned_jobs, snakemake

from dti.benchmark_config import enabled_backbones, eval_steps, load_config_files

pytestmark = pytest.mark.slow

TRAIN = {"resolution": 64, "steps": 2, "batch_size": 1, "grad_accum": 2, "save_every": 2}
SAMPLE = {"steps": 2, "guidance_scale": 5.0, "resolution": 64, "batch_size": 4}
METHODS = {"ti": {"lr": 0.02, "weight_decay": 0.0}, "crossinit": {"lr": 0.02, "pull_weight": 1.0e-5},
           "dti": {"lr": 0.04, "kappa": 5.0e-5}}
LEAN = {
    "run_name": "lean",
    "subjects": [{"name": "plush_bear", "class": "stuffed animal", "kind": "object", "source": "synthetic"}],
    "synthetic": {"n_images": 2, "size": 80, "seed": 0},
    "backbones": {"tiny_sana": {"family": "sana", "model": "tiny", "train": TRAIN, "sample": SAMPLE},
                  "tiny_wan": {"family": "wan", "model": "tiny", "train": TRAIN,
                               "sample": {**SAMPLE, "width": 96}}},  # a non-square frame
    "methods": METHODS,
    "prompt_sets": ["dreambooth"], "prompt_limit": 1, "seeds": [0],
    "metrics": {"dino": {"backend": "timm", "model": "vit_small_patch16_224.dino", "pretrained": False,
                         "image_size": 64}},
    "aggregate": {"n_boot": 100, "seed": 0},
    # The sweep needs a text metric; this run scores DINO only. The mechanism on SANA: Gemma-2's residual
    # stream, contextualization, directions and the decoding of its tokens by Gemma-2 itself.
    "analysis": {"magnitude": {"enabled": False},
                 "mechanism": {"backbones": ["tiny_sana"], "scales": [1, 8]}},
}
RUN = f"results/runs/{LEAN['run_name']}"  # the run's tables


@pytest.fixture(scope="module")
def lean_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("lean-run")
    config = work / "lean.yaml"
    config.write_text(yaml.safe_dump(LEAN, sort_keys=False))
    snakemake(work, "--cores", "2", "--resources", "gpu=2", "--configfile", str(config))
    return work


def test_sana_and_wan_run_the_whole_dag(lean_run):
    summary = pd.read_parquet(lean_run / f"{RUN}/tables/summary.parquet")
    assert set(zip(summary["backbone"], summary["method"], strict=True)) == {
        (b, m) for b in LEAN["backbones"] for m in METHODS}
    assert (summary["n_images"] == 1).all() and summary["mean"].notna().all()
    for backbone, spec in LEAN["backbones"].items():
        for method in METHODS:
            run = json.loads((lean_run / f"results/{backbone}/{method}/plush_bear/run.json").read_text())
            assert run["family"] == spec["family"] and run["steps"] == TRAIN["steps"]
            # "stuffed animal": two pieces in both small vocabularies, so two vectors.
            assert [len(t) for t in run["tokens"].values()] == [2]
            manifest = pd.read_parquet(lean_run / f"results/{backbone}/{method}/plush_bear/samples/step-2/manifest.parquet")
            (image,) = manifest["image"]
            with Image.open(lean_run / f"results/{backbone}/{method}/plush_bear/samples/step-2" / image) as img:
                assert img.size == (spec["sample"].get("width", 64), 64)  # Wan's single frame is the image
    norms = pd.read_parquet(lean_run / f"{RUN}/tables/norms.parquet")
    assert set(norms["backbone"]) == set(LEAN["backbones"])


def test_the_mechanism_on_sana_measures_gemma_and_decodes_its_tokens(lean_run):
    """Gemma-2 adds no position rows (no probe) and SANA's denoiser masks its text (no attention maps); its
    residual stream and contextualization are measured, and Gemma-2 itself decodes every token."""
    folder = lean_run / f"{RUN}/analysis/mechanism/tiny_sana"
    for kind in ("residual", "context"):
        table = pd.read_parquet(folder / f"{kind}.parquet")
        assert set(table["method"]) == {*METHODS, "vocabulary"} and set(table["encoder"]) == {"gemma2"}
    decoding = pd.read_parquet(folder / "decoding.parquet")
    assert set(decoding["method"]) == {*METHODS, "vocabulary"} and set(decoding["kind"]) == {"next", "lens"}
    assert decoding.loc[decoding["kind"] == "next", "continuation"].notna().all()
    page = (folder / "decoding.html").read_text()  # the report's table of it
    assert "<table" in page and ">DTI<" in page and ">vocabulary (initializer)<" in page
    assert not (folder / "positional.parquet").exists() and not (folder / "attention.parquet").exists()
    assert not (lean_run / f"{RUN}/analysis/mechanism/tiny_wan").exists()  # mechanism.backbones names SANA only


# --- the paper configs of the new backbones ---------------------------------------------------------
@pytest.mark.parametrize("name,steps,checkpoints,methods", [
    ("sana", 500, [100, 200, 300, 400, 500], 3),
    ("wan", 500, [100, 200, 300, 400, 500], 3),
    ("sd21", 400, list(range(50, 401, 50)), 3),
])
def test_new_paper_configs_plan_without_downloading(tmp_path, name, steps, checkpoints, methods):
    path = REPO / "config" / f"paper-{name}.yaml"  # SANA and Wan: a layer of config/paper.yaml
    paper = load_config_files([path])
    (spec,) = enabled_backbones(paper).values()
    assert spec["train"]["steps"] == steps and eval_steps(paper, name) == checkpoints
    counts = Counter(rule for rule, _ in planned_jobs(tmp_path, "--configfile", str(path)))
    assert counts["prepare_subject"] == 30 and counts["fetch_model"] == 1
    assert counts["train"] == 30 * 3  # ti, crossinit, dti
    assert counts["sample"] == counts["score"] == 30 * methods * len(checkpoints)
    assert not any(tmp_path.joinpath(p).exists() for p in ("resources", "results"))

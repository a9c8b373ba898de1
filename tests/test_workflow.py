"""The real workflow on the embedded default: end to end, incremental reruns, and bad input.

One full run (session fixture `default_run`) feeds the checks; incremental checks work on copies of
that run's folder so they never disturb each other.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from workflow_run import REPO, SHARED, SHARED_METHODS, planned_jobs, snakemake

DEFAULT = copy.deepcopy(SHARED)  # the shared run's config (tests/shared_run.yaml)
RUN = f"results/runs/{DEFAULT['run_name']}"  # the run's tables, analyses and report files
BACKBONES = sorted(DEFAULT["backbones"])
METHODS = sorted(DEFAULT["methods"])
# Each backbone runs its own methods (tests/shared_run.yaml gives each added method one backbone).
RUNS_ON = {(b, m) for b, methods in SHARED_METHODS.items() for m in methods}
SUBJECTS = sorted(s["name"] for s in DEFAULT["subjects"])
SEEDS = DEFAULT["seeds"]
PROMPTS_PER_SET = DEFAULT["prompt_limit"]
PROMPT_SETS = DEFAULT["prompt_sets"]
TRAIN = {b: DEFAULT["backbones"][b]["train"] for b in BACKBONES}
assert len({(t["steps"], t["save_every"]) for t in TRAIN.values()}) == 1  # the checks below assume one schedule
LAST_STEP, SAVE_EVERY = TRAIN[BACKBONES[0]]["steps"], TRAIN[BACKBONES[0]]["save_every"]
STEPS = DEFAULT.get("eval_steps") or [LAST_STEP]
CHAINS = len(RUNS_ON) * len(SUBJECTS)
AUTHORS_PROMPTS = next((p for p in (REPO.parent / "shared/third_party/kunheek-dti/prompts.py",
                                    Path("/work/shared/third_party/kunheek-dti/prompts.py")) if p.is_file()), None)

pytestmark = pytest.mark.slow


# What a retrained token reruns beyond its own chain in the shared run: its pair's interpolation (the one
# pair holds every method and striped_box), the magnitude sweep and the mechanism measurements (the
# attention maps show striped_box; the probe depends on the model alone), on the backbones they run on,
# and the figures and tables.
_INTERPOLATED = len(DEFAULT["interpolation"].get("backbones") or BACKBONES)
_SWEPT = len(DEFAULT["analysis"]["magnitude"].get("backbones") or BACKBONES)
_MEASURED = len(DEFAULT["analysis"]["mechanism"].get("backbones") or BACKBONES)  # the mechanism, but the probe
ANALYSIS_RERUN = Counter({"interpolate": _INTERPOLATED, "score_interpolation": _INTERPOLATED,
                          "magnitude_sweep": _SWEPT, "score_magnitude_sweep": _SWEPT, "interpolation_outputs": 1,
                          "norm_analysis": 1, "magnitude_outputs": 1, "sample_grids": 1, "report_tables": 1,
                          "checkpoint_sweep": 1, "positional_attenuation": _MEASURED, "encoder_measures": _MEASURED,
                          "semantic_directions": _MEASURED, "attention_maps": _MEASURED})
# What any new score reruns: the report's table pages and its figure of scores over checkpoints.
REPORT_RERUN = Counter({"report_tables": 1, "checkpoint_sweep": 1})


def copy_run(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, symlinks=True)
    return dest


def write_config(path: Path, change) -> Path:
    config = copy.deepcopy(SHARED)  # the shared run's config, changed: a whole config, no layer
    change(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def jobs_by_rule(jobs) -> Counter:
    return Counter(rule for rule, _ in jobs)


# --- end to end -------------------------------------------------------------------------------------
def test_tables_cover_the_whole_grid(default_run):
    scores = pd.concat(pd.read_parquet(p) for p in default_run.glob("results/*/*/*/scores/step-*.parquet"))
    metrics = sorted(scores["metric"].unique())
    assert metrics == ["clip_i", "clip_t", "dino", "dinov2", "siglip_t"]
    per_image = CHAINS * len(STEPS) * len(PROMPT_SETS) * PROMPTS_PER_SET * len(SEEDS)
    assert len(scores) == per_image * len(metrics)
    assert sorted(scores["step"].unique()) == STEPS
    identity = ["backbone", "method", "step", "subject", "prompt_set", "prompt_id", "seed", "metric"]
    assert not scores.duplicated(identity).any()
    assert scores["value"].notna().all()
    labels = scores.groupby("metric")["metric_model"].unique().map(list).to_dict()
    assert labels["dinov2"] == ["transformers:tiny-dinov2@random/short256-bicubic-crop224-norm-imagenet"]
    assert labels["siglip_t"] == ["transformers:tiny-siglip@random/64x64-bicubic-norm-0.5/text64"]

    # The headline tables: the first prompt set (never pooled with the other) at the last step.
    summary = pd.read_parquet(default_run / f"{RUN}/tables/summary.parquet")
    grid = {(b, m, x) for b, m in RUNS_ON for x in metrics}
    assert set(zip(summary["backbone"], summary["method"], summary["metric"], strict=True)) == grid
    assert set(summary["prompt_set"]) == {PROMPT_SETS[0]} and set(summary["step"]) == {max(STEPS)}
    assert (summary["n_subjects"] == len(SUBJECTS)).all()
    assert (summary["n_images"] == len(SUBJECTS) * PROMPTS_PER_SET * len(SEEDS)).all()
    assert (summary["ci_low"] <= summary["mean"]).all() and (summary["mean"] <= summary["ci_high"]).all()

    by_set = pd.read_parquet(default_run / f"{RUN}/tables/by_prompt_set.parquet")
    assert sorted(by_set["prompt_set"].unique()) == sorted(PROMPT_SETS)
    by_kind = pd.read_parquet(default_run / f"{RUN}/tables/by_kind.parquet")
    assert sorted(by_kind["subject_kind"].unique()) == ["live", "object"]
    per_subject = pd.read_parquet(default_run / f"{RUN}/tables/per_subject.parquet")
    assert len(per_subject) == CHAINS * len(PROMPT_SETS) * len(metrics)
    over_steps = pd.read_parquet(default_run / f"{RUN}/tables/over_steps.parquet")
    assert len(over_steps) == len(RUNS_ON) * len(PROMPT_SETS) * len(STEPS) * len(metrics)
    assert "Step" in (default_run / f"{RUN}/tables/over_steps.tex").read_text()


def test_learned_norms_sit_next_to_the_vocabulary(default_run):
    norms = pd.read_parquet(default_run / f"{RUN}/tables/norms.parquet")
    dti = norms[norms["method"] == "dti"]
    assert len(dti) == 3  # tiny_sd: clip_l; tiny_sdxl: clip_l and clip_g
    assert (dti["ratio"] - 1).abs().max() < 1e-5  # DTI keeps the vocabulary's mean norm exactly
    ti = norms[norms["method"] == "ti"]
    assert (ti["ratio"] > 1.5).all()  # TI's unconstrained norm inflates even in a few steps


def test_the_ablation_table_puts_dti_beside_its_variants(default_run):
    """The shared run trains two of DTI's ablations (tests/shared_run.yaml): their chains ran end to end and
    the ablation table holds DTI and them, with the final norm over m per encoder."""
    from dti.methods import METHODS as REGISTRY

    variants = [m for m in METHODS if REGISTRY[m].ablation_of == "dti"]
    assert len(variants) >= 2
    table = pd.read_parquet(default_run / f"{RUN}/tables/ablation.parquet")
    assert sorted(table["method"].unique()) == sorted(["dti", *variants])
    ratio = table[table["metric"] == "norm_ratio"]
    ablated = [b for b in BACKBONES if any(REGISTRY[m].ablation_of for m in SHARED_METHODS[b])]
    assert ablated == ["tiny_sdxl"]
    assert set(table["backbone"]) == set(ablated)  # tiny_sd runs DTI but no ablation of it: no block of its own
    assert set(zip(ratio["backbone"], ratio["metric_model"], strict=True)) == {
        ("tiny_sdxl", "clip_l"), ("tiny_sdxl", "clip_g")}
    fixed = ratio[ratio["method"].map(lambda m: REGISTRY[m].on_sphere)]
    assert (fixed["mean"] - 1).abs().max() < 1e-5  # DTI and the retracted AdamW keep the norm m exactly
    trained = ratio[ratio["method"] == "dti_trained_norm"]
    assert ((trained["mean"] - 1).abs() > 1e-6).all()  # a trained m moves
    tex = (default_run / f"{RUN}/tables/ablation.tex").read_text()
    assert "DTI (trained m)" in tex and "Norm / m" in tex and "\\textbf{" in tex
    state = default_run / "results/tiny_sdxl/dti_trained_norm/spotted_pup/checkpoints/state.safetensors"
    from dti.state import read_state

    assert {"clip_l.magnitude", "clip_g.magnitude"} <= set(read_state(state).parameters)


def test_core_and_dti_with_core_run_end_to_end_beside_the_other_methods(default_run):
    """The shared run trains CoRe and DTI + CoRe (tests/shared_run.yaml), one tiny backbone each: their rows are
    in the summary, the LaTeX and the report's table page under their display names; DTI + CoRe keeps the
    norm m; CoRe's norm is held over steps 5-8 (its window in the shared run) and moves outside it."""
    summary = pd.read_parquet(default_run / f"{RUN}/tables/summary.parquet")
    for method, backbone in (("core", "tiny_sd"), ("dti_core", "tiny_sdxl")):
        assert {b for b, m in RUNS_ON if m == method} == {backbone}
        assert set(summary.loc[summary["method"] == method, "backbone"]) == {backbone}
    tex = (default_run / f"{RUN}/tables/summary.tex").read_text()
    page = (default_run / f"{RUN}/report/tables/summary.html").read_text()
    for shown in (tex, page):
        assert "DTI + CoRe" in shown and "CoRe" in shown.replace("DTI + CoRe", "")
    norms = pd.read_parquet(default_run / f"{RUN}/tables/norms.parquet")
    assert (norms.loc[norms["method"] == "dti_core", "ratio"] - 1).abs().max() < 1e-5
    hold = DEFAULT["methods"]["core"]
    for backbone in sorted(b for b, m in RUNS_ON if m == "core"):
        log = default_run / f"results/{backbone}/core/spotted_pup/train_log.jsonl"
        records = {r["step"]: r["norm"]["clip_l"][0] for r in map(json.loads, log.read_text().splitlines())}
        held = [records[s] for s in range(hold["rescale_from"], hold["rescale_until"] + 1)]
        assert max(held) - min(held) < 1e-5 * held[0]
        assert abs(records[LAST_STEP] - held[0]) > 1e-5 * held[0]


def test_token_plus_weights_methods_run_end_to_end_with_their_adapters(default_run):
    """The shared run trains DTI + DCO and TI + OFT (tests/shared_run.yaml), one tiny backbone each: each run
    saved an adapter per checkpoint (with its provenance), the sampled checkpoints are scored, and the
    cost table records the adapter's parameters beside the token's."""
    from dti.adapters import adapter_dir, describe_adapter

    summary = pd.read_parquet(default_run / f"{RUN}/tables/summary.parquet")
    cost = pd.read_parquet(default_run / f"{RUN}/tables/cost.parquet")
    for method, kind, backbone in (("dti_dco", "lora", "tiny_sd"), ("ti_oft", "oft", "tiny_sdxl")):
        assert {b for b, m in RUNS_ON if m == method} == {backbone}
        assert set(summary.loc[summary["method"] == method, "backbone"]) == {backbone}
        run = default_run / f"results/{backbone}/{method}/spotted_pup"
        for step in (*range(SAVE_EVERY, LAST_STEP + 1, SAVE_EVERY), None):
            described = describe_adapter(run / adapter_dir(step))
            assert described["kind"] == kind and described["update_norm"] > 0
            assert described["metadata"]["dti.method"] == method
        recorded = json.loads((run / "run.json").read_text())["cost"]
        assert recorded["adapter"] == kind and recorded["adapter_parameters"] == described["parameters"]
        row = cost[(cost["backbone"] == backbone) & (cost["method"] == method)]
        assert len(row) == 1 and int(row["adapter_parameters"].iloc[0]) == described["parameters"]
    token_only = cost[cost["method"] == "dti"]
    assert (token_only["adapter_parameters"] == 0).all()


def test_latex_tables_are_written(default_run):
    tex = (default_run / f"{RUN}/tables/summary.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\textbf{" in tex
    assert "vit\\_small\\_patch16\\_224.dino" in tex  # the caption names the metric models


def test_every_rule_has_log_and_benchmark(default_run):
    def rules_under(folder: Path, suffix: str) -> set[str]:  # logs/<rule>/... or logs/<rule>.log
        return {p.relative_to(folder).parts[0].removesuffix(suffix) for p in folder.rglob(f"*{suffix}")}

    logs = rules_under(default_run / "logs", ".log")
    benches = rules_under(default_run / "benchmarks", ".tsv")
    expected = {"synthesize_subject", "tiny_model", "tiny_metric_models", "fetch_model", "fetch_metrics",
                "prepare_subject", "train", "sample", "score", "aggregate"}
    assert expected <= logs and expected <= benches


def test_two_token_initializer_gets_two_vectors(default_run):
    import json

    run = json.loads((default_run / "results/tiny_sdxl/dti/plush_bear/run.json").read_text())
    assert run["tokens"]["clip_l"] == ["<plush_bear>", "<plush_bear>_1"]
    assert len(run["tokens"]["clip_g"]) == 2


def test_the_single_file_is_named_method_subject_and_the_log_says_how_to_use_it(default_run):
    from dti.export import read_metadata

    folder = default_run / "results/tiny_sdxl/dti/plush_bear"
    meta = read_metadata(folder / "dti-plush_bear.safetensors")
    assert meta["dti.base_model"] == "sdxl"  # the tiny model's folder by its name, not its path here
    log = (default_run / "logs/train/tiny_sdxl/dti/plush_bear.log").read_text()
    assert "then write dti-plush_bear" in log and "then write embedding:dti-plush_bear" in log
    assert "InvokeAI: install " in log  # every client of the README's table


# --- incremental reruns -------------------------------------------------------------------------------
def test_unchanged_rerun_plans_nothing(default_run):
    assert planned_jobs(default_run) == []


def test_replaced_photo_reruns_only_that_subject(default_run, tmp_path):
    work = copy_run(default_run, tmp_path / "run")
    photo = work / "resources/raw/striped_box/01.png"
    Image.new("RGB", (96, 96), (200, 30, 30)).save(photo)
    jobs = planned_jobs(work)
    counts = jobs_by_rule(jobs)
    per_subject = len(RUNS_ON)
    assert counts == Counter({"prepare_subject": 1, "train": per_subject, "sample": per_subject * len(STEPS),
                              "score": per_subject * len(STEPS), "aggregate": 1, "all": 1}) + ANALYSIS_RERUN
    assert {wc.get("subject") for rule, wc in jobs if rule in ("prepare_subject", "train", "sample", "score")} == {
        "striped_box"}


def test_new_initializer_reruns_only_that_subject(default_run, tmp_path):
    work = copy_run(default_run, tmp_path / "run")

    def change(config):
        for subject in config["subjects"]:
            if subject["name"] == "plush_bear":
                subject["initializer"] = "teddy bear"

    jobs = planned_jobs(work, "--configfile", str(write_config(tmp_path / "c.yaml", change)))
    assert {wc.get("subject") for rule, wc in jobs if rule in ("prepare_subject", "train", "sample", "score")} == {
        "plush_bear"}
    assert jobs_by_rule(jobs)["train"] == len(RUNS_ON)


def test_new_learning_rate_reruns_only_that_method(default_run, tmp_path):
    work = copy_run(default_run, tmp_path / "run")
    config = write_config(tmp_path / "c.yaml", lambda c: c["methods"]["dti"].update(lr=0.05))
    jobs = planned_jobs(work, "--configfile", str(config))
    counts = jobs_by_rule(jobs)
    per_method = len(BACKBONES) * len(SUBJECTS)
    assert counts == Counter({"train": per_method, "sample": per_method * len(STEPS),
                              "score": per_method * len(STEPS), "aggregate": 1, "all": 1}) + ANALYSIS_RERUN
    assert {wc["method"] for rule, wc in jobs if rule in ("train", "sample", "score")} == {"dti"}


def test_a_setting_under_one_backbone_reruns_only_that_backbones_jobs(default_run, tmp_path):
    work = copy_run(default_run, tmp_path / "run")
    backbone = BACKBONES[0]
    change = lambda c: c["backbones"][backbone].update(methods={"dti": {"kappa": 2e-4}})  # noqa: E731
    jobs = planned_jobs(work, "--configfile", str(write_config(tmp_path / "c.yaml", change)))
    assert {(wc["backbone"], wc["method"]) for rule, wc in jobs if rule in ("train", "sample", "score")} == {
        (backbone, "dti")}
    assert jobs_by_rule(jobs)["train"] == len(SUBJECTS)


def test_a_backbone_starting_from_the_authors_phrase_retrains_only_what_it_changes(default_run, tmp_path):
    """The subjects give an authors_initialization; one backbone's DTI starts from it: only the subject whose
    phrase differs from its initializer retrains, on that backbone, for DTI."""
    work = copy_run(default_run, tmp_path / "run")
    backbone = BACKBONES[-1]

    def change(config):
        for subject in config["subjects"]:
            subject["authors_initialization"] = subject.get("initializer", subject["class"])
            if subject["name"] == "spotted_pup":
                subject["authors_initialization"] = "puppy"
        config["backbones"][backbone]["initializer_from"] = {"dti": "authors_initialization"}

    jobs = planned_jobs(work, "--configfile", str(write_config(tmp_path / "c.yaml", change)))
    assert {(wc["backbone"], wc["method"], wc["subject"]) for rule, wc in jobs if rule in ("train", "sample", "score")
            } == {(backbone, "dti", "spotted_pup")}
    assert jobs_by_rule(jobs)["train"] == 1 and "prepare_subject" not in jobs_by_rule(jobs)


def test_a_new_eval_step_samples_and_scores_only_that_checkpoint(default_run, tmp_path):
    saved = set(range(SAVE_EVERY, LAST_STEP + 1, SAVE_EVERY)) | {LAST_STEP}
    new_step = max(saved - set(STEPS))  # a checkpoint training wrote but the default does not score
    work = copy_run(default_run, tmp_path / "run")
    config = write_config(tmp_path / "c.yaml", lambda c: c.update(eval_steps=sorted([*STEPS, new_step])))
    jobs = planned_jobs(work, "--configfile", str(config))
    assert jobs_by_rule(jobs) == Counter({"sample": CHAINS, "score": CHAINS, "aggregate": 1, "all": 1}) + REPORT_RERUN
    assert {wc["step"] for rule, wc in jobs if rule in ("sample", "score")} == {str(new_step)}

    # Run one chain's new jobs for real: training is not touched, the new checkpoint's images are its own.
    chain = f"results/{BACKBONES[0]}/dti/{SUBJECTS[0]}"
    trained = {p: p.stat().st_mtime_ns for p in (work / chain).glob("*.*")}
    snakemake(work, f"{chain}/scores/step-{new_step}.parquet", "--cores", "2", "--configfile", str(config))
    assert {p: p.stat().st_mtime_ns for p in (work / chain).glob("*.*")} == trained
    new = pd.read_parquet(work / chain / f"scores/step-{new_step}.parquet")
    last = pd.read_parquet(work / chain / f"scores/step-{LAST_STEP}.parquet")
    assert set(new["step"]) == {new_step} and len(new) == len(last)
    assert not np.allclose(new.loc[new["metric"] == "dino", "value"], last.loc[last["metric"] == "dino", "value"])


# --- planning the paper grid ------------------------------------------------------------------------
def test_paper_config_plans_the_whole_grid_without_downloading(tmp_path):
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    assert paper["prompt_sets"] == ["dti_simple"] and paper["seeds"] == [0, 1, 2, 3]
    checkpoints = {b: spec["eval_steps"] for b, spec in paper["backbones"].items()}
    assert checkpoints == {"sdxl": list(range(50, 401, 50)),  # every checkpoint the SDXL launchers save
                           "sana": [100, 200, 300, 400, 500], "wan": [100, 200, 300, 400, 500]}
    assert {k: v["model"] for k, v in paper["metrics"].items() if v["backend"] == "transformers"} == {
        "dinov2": "facebook/dinov2-base", "siglip": "google/siglip-base-patch16-512"}
    jobs = planned_jobs(tmp_path, "--configfile", str(REPO / "config/paper.yaml"))
    counts = jobs_by_rule(jobs)
    assert counts["prepare_subject"] == 30 and counts["fetch_model"] == 3
    assert counts["train"] == 3 * 30 * 3  # three backbones, the authors' three methods: ti, crossinit, dti
    assert counts["sample"] == counts["score"] == 30 * 3 * (8 + 5 + 5)
    for backbone, steps in checkpoints.items():
        assert {int(wc["step"]) for rule, wc in jobs if rule == "sample" and wc["backbone"] == backbone} == set(steps)
    assert counts["fetch_dti_prompts"] == counts["fetch_metrics"] == counts["aggregate"] == 1
    assert not any(tmp_path.joinpath(p).exists() for p in ("resources", "results"))


# --- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "needle"), [
    (lambda c: c.update(bogus_key=1), "bogus_key"),
    (lambda c: c["methods"]["dti"].update(lr=-1), "lr"),
    (lambda c: c["methods"].update(magic={"lr": 0.1}), "magic"),
    (lambda c: c.update(prompt_sets=["no_such_set"]), "no_such_set"),
    (lambda c: c["backbones"]["tiny_sd"].update(family="sd3"), "sd3"),
    (lambda c: c.update(eval_steps=[LAST_STEP - 1]), f"eval_steps: {LAST_STEP - 1} is not a checkpoint"),
    (lambda c: c["aggregate"].update(summary_prompt_set="dti_simple"), "summary_prompt_set: 'dti_simple'"),
])
def test_bad_config_stops_with_a_message_naming_it(tmp_path, change, needle):
    config = write_config(tmp_path / "c.yaml", change)
    result = snakemake(tmp_path, "-n", "--configfile", str(config), check=False)
    assert result.returncode != 0
    assert needle in result.stdout + result.stderr


@pytest.mark.skipif(AUTHORS_PROMPTS is None, reason="the authors' prompts.py copy is not here")
def test_authors_prompt_set_from_a_local_copy(default_run, tmp_path):
    work = copy_run(default_run, tmp_path / "run")

    def change(config):
        config["prompt_sets"] = ["dti_simple"]
        config["data"] = {"dti_prompts": str(AUTHORS_PROMPTS)}

    manifest = f"results/{BACKBONES[0]}/dti/spotted_pup/samples/step-{LAST_STEP}/manifest.parquet"
    snakemake(work, manifest, "--cores", "2", "--configfile", str(write_config(tmp_path / "c.yaml", change)))
    extracted = json.loads((work / "resources/dti_prompts.json").read_text())
    live = extracted["sets"]["dti_simple"]["live"][:PROMPTS_PER_SET]
    rows = pd.read_parquet(work / manifest).drop_duplicates("prompt_id")
    assert list(rows["prompt"]) == [t.replace("{}", "<spotted_pup>") for t in live]
    assert list(rows["eval_prompt"]) == [t.replace("{}", "dog") for t in live]

    changed = tmp_path / "prompts.py"
    changed.write_bytes(AUTHORS_PROMPTS.read_bytes() + b"# edited\n")

    def bad(config):
        change(config)
        config["data"]["dti_prompts"] = str(changed)

    result = snakemake(work, "-n", "--configfile", str(write_config(tmp_path / "bad.yaml", bad)), check=False)
    assert result.returncode != 0
    assert f"data.dti_prompts: {changed}: checksum mismatch" in result.stdout + result.stderr


def test_corrupt_photo_stops_that_subject_naming_the_file(default_run, tmp_path):
    work = copy_run(default_run, tmp_path / "run")
    bad = work / "resources/raw/spotted_pup/02.png"
    bad.write_bytes(b"this is not a png")
    before = {p: p.stat().st_mtime_ns for p in work.glob("results/*/*/st*/run.json")}
    result = snakemake(work, "--cores", "2", "--keep-going", "resources/subjects/spotted_pup/subject.json",
                       "resources/subjects/striped_box/subject.json", check=False)
    assert result.returncode != 0
    log = (work / "logs/prepare_subject/spotted_pup.log").read_text()
    assert str(bad) in log or "spotted_pup/02.png" in log
    assert "prepare_subject" in result.stderr + result.stdout
    assert not (work / "resources/subjects/spotted_pup/subject.json").exists()  # nothing half-done looks complete
    assert {p: p.stat().st_mtime_ns for p in work.glob("results/*/*/st*/run.json")} == before


# --- other subject sources ----------------------------------------------------------------------------
def test_dreambooth_and_folder_subjects_are_prepared(tmp_path):
    from dti.subjects import load_subject

    dreambooth = REPO.parent / "shared" / "dreambooth"
    if not dreambooth.is_dir():
        dreambooth = Path("/work/shared/dreambooth")
    photos = tmp_path / "photos" / "my_mug"
    photos.mkdir(parents=True)
    for i, color in enumerate([(10, 80, 200), (20, 90, 210), (30, 100, 220)]):
        Image.new("RGB", (120, 90), color).save(photos / f"IMG_{i}.JPG")

    def change(config):
        config["subjects"] = [{"name": "dog", "class": "dog", "kind": "live", "source": "dreambooth"},
                              {"name": "my_mug", "class": "mug", "kind": "object", "source": "folder"}]
        config["data"] = {"dreambooth": str(dreambooth), "images_dir": str(tmp_path / "photos")}
        config.pop("interpolation")  # its pair names the default's subjects

    work = tmp_path / "run"
    work.mkdir()
    config = write_config(tmp_path / "c.yaml", change)
    # Targets before --configfile, which takes every following word as another config file.
    snakemake(work, "resources/subjects/dog/subject.json", "resources/subjects/my_mug/subject.json",
              "--cores", "2", "--configfile", str(config))
    dog = load_subject(work / "resources/subjects/dog")
    assert dog["kind"] == "live" and len(dog["images"]) == len(list((dreambooth / "dog").glob("*.jpg")))
    mug = load_subject(work / "resources/subjects/my_mug")
    assert mug["class"] == "mug" and len(mug["images"]) == 3
    assert json.loads((work / "resources/dreambooth.json").read_text())["path"] == str(dreambooth.resolve())

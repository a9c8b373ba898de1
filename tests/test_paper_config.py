"""The paper config (config/paper.yaml and its one-backbone layers) as planning sees it, through the library
functions rules/common.smk plans with: per-backbone hyper-parameters, checkpoints, headline steps and
initializers; and each config's own run folder, so two configs in one working folder keep their tables
apart. Planning only: nothing is trained or downloaded."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate
from workflow_run import REPO, planned_outputs, snakemake

from dti.benchmark_config import (
    backbone_methods,
    check_config,
    enabled_backbones,
    eval_steps,
    initializer_field,
    initializers,
    load_config_files,
    run_dir,
    subject_rows,
    summary_steps,
    trained_methods,
)
from dti.errors import DtiError
from dti.subject_schema import subject_problem
from dti.tables import build_tables

CONFIG = REPO / "config"
# The authors' data/dreambooth.json (a verbatim copy, tests/fixtures/kunheek-dti/README.md).
AUTHORS = json.loads((Path(__file__).parent / "fixtures" / "kunheek-dti" / "dreambooth.json").read_text())
PAPER = ("sdxl", "sana", "wan")
METHODS = ["crossinit", "dti", "ti"]


def load(*names: str) -> dict:
    """The config of `--configfile config/NAME ...`, as Snakemake merges the files and the Snakefile their
    `extends` chain."""
    return load_config_files([CONFIG / name for name in names])


def planned(config: dict) -> dict[str, dict]:
    """Schema defaults and every planning check, as the Snakefile and rules/common.smk make them; the
    subject table."""
    validate(config, str(CONFIG / "schema.yaml"))
    rows = subject_rows(config, REPO)
    assert [subject_problem(row) for _, row in rows] == [None] * len(rows)
    return check_config(config, rows)


@pytest.fixture(scope="module")
def paper() -> tuple[dict, dict]:
    config = load("paper.yaml")
    return config, planned(config)


def test_paper_config_plans_sdxl_sana_and_wan_each_with_its_checkpoints(paper):
    config, subjects = paper
    assert list(enabled_backbones(config)) == list(PAPER)
    assert sorted(subjects) == sorted(AUTHORS) and len(subjects) == 30
    assert run_dir(config) == "results/runs/paper"
    assert eval_steps(config, "sdxl") == list(range(50, 401, 50))  # every embedding the SDXL launchers save
    assert eval_steps(config, "sana") == eval_steps(config, "wan") == [100, 200, 300, 400, 500]
    assert summary_steps(config) == {"sdxl": 400, "sana": 500, "wan": 500}  # each backbone's last


def test_hyper_parameters_are_the_authors_per_backbone(paper):
    config, _ = paper
    methods = {b: backbone_methods(config, b) for b in PAPER}
    assert all(sorted(m) == METHODS for m in methods.values())  # the same methods run everywhere
    assert methods["sdxl"]["dti"]["kappa"] == 1e-4
    assert methods["sana"]["dti"]["kappa"] == methods["wan"]["dti"]["kappa"] == 5e-5
    for method in ("ti", "crossinit"):
        assert methods["sdxl"][method]["weight_decay"] == 0.01
        assert methods["sana"][method]["weight_decay"] == methods["wan"][method]["weight_decay"] == 0.0
    for backbone in PAPER:  # what no backbone changes is the global value
        assert methods[backbone]["dti"]["lr"] == 0.04 and methods[backbone]["ti"]["lr"] == 0.02
        assert methods[backbone]["crossinit"]["pull_weight"] == 1e-5
        assert methods[backbone]["dti"]["magnitude"] == "mean" and methods[backbone]["dti"]["beta"] == 0.0


def test_a_setting_under_one_backbone_changes_only_that_backbones_jobs(paper):
    config, _ = paper
    before = {b: backbone_methods(config, b) for b in PAPER}
    changed = copy.deepcopy(config)
    changed["backbones"]["sana"]["methods"]["dti"]["kappa"] = 1e-5
    after = {b: backbone_methods(changed, b) for b in PAPER}
    assert after["sana"]["dti"] == {**before["sana"]["dti"], "kappa": 1e-5}
    assert after["sana"]["ti"] == before["sana"]["ti"] and after["sana"]["crossinit"] == before["sana"]["crossinit"]
    assert after["sdxl"] == before["sdxl"] and after["wan"] == before["wan"]


def test_initializers_follow_the_authors_launchers_for_all_30_subjects(paper):
    config, subjects = paper
    planned_words = initializers(config, subjects)
    classes = {name: s["class"] for name, s in AUTHORS.items()}
    phrases = {name: s["initialization"] for name, s in AUTHORS.items()}
    # SDXL: every method from the class word; SANA and Wan: DTI from their `initialization` phrase, TI and
    # CrossInit from the class word (their SANA TI and CrossInit launchers; Wan follows SANA).
    assert planned_words["sdxl"] == {m: classes for m in METHODS}
    for backbone in ("sana", "wan"):
        assert planned_words[backbone] == {"dti": phrases, "ti": classes, "crossinit": classes}
    differ = {n for n in AUTHORS if phrases[n] != classes[n]}
    assert len(differ) == 11 and {"backpack", "candle", "robot_toy"} <= differ
    assert planned_words["sana"]["dti"]["candle"] == "jar" and planned_words["wan"]["dti"]["backpack"] == "red backpack"


@pytest.mark.parametrize("backbone", PAPER)
def test_a_layer_plans_one_backbone_with_the_same_jobs_in_its_own_run(paper, backbone):
    config, subjects = paper
    layer = load(f"paper-{backbone}.yaml")  # extends config/paper.yaml
    assert layer == load("paper.yaml", f"paper-{backbone}.yaml")  # the same given after paper.yaml
    # No copy of the protocol: the layer only names its base, its run and its backbone.
    assert yaml.safe_load((CONFIG / f"paper-{backbone}.yaml").read_text()) == {
        "extends": "config/paper.yaml", "run_name": f"paper-{backbone}", "only_backbones": [backbone]}
    layer_subjects = planned(layer)
    assert list(enabled_backbones(layer)) == [backbone]
    assert run_dir(layer) == f"results/runs/paper-{backbone}"
    # Its jobs get the settings the whole paper run gives them: the two runs share their training.
    assert backbone_methods(layer, backbone) == backbone_methods(config, backbone)
    assert eval_steps(layer, backbone) == eval_steps(config, backbone)
    assert initializers(layer, layer_subjects)[backbone] == initializers(config, subjects)[backbone]
    assert summary_steps(layer) == {backbone: summary_steps(config)[backbone]}


def test_the_summary_holds_one_block_per_backbone_at_its_own_step(paper):
    """Scores over the planned grid (two subjects, one metric): the summary shows each backbone once, at its
    headline step, with every method."""
    config, _ = paper
    rows = [dict(backbone=b, method=m, step=step, subject=subject, subject_kind="object", prompt_set="dti_simple",
                 prompt_id=0, seed=0, image=f"{b}/{m}/{subject}/{step}.png", metric="dinov2",
                 metric_model="transformers:facebook/dinov2-base", value=0.5 + step / 10_000)
            for b in enabled_backbones(config) for m in trained_methods(config["methods"])
            for subject in ("dog", "cat") for step in eval_steps(config, b)]
    summary = build_tables(pd.DataFrame(rows), None, summary_prompt_set="dti_simple",
                           summary_step=summary_steps(config))["summary"]
    assert sorted(set(zip(summary["backbone"], summary["step"], strict=True))) == [
        ("sana", 500), ("sdxl", 400), ("wan", 500)]
    assert len(summary) == len(PAPER) * len(METHODS)
    assert all(sorted(part["method"]) == METHODS for _, part in summary.groupby("backbone"))


def _set(path: str, value):
    def change(config):
        *keys, last = path.split(".")
        node = config
        for key in keys:
            node = node.setdefault(key, {})
        node[last] = value

    return change


@pytest.mark.parametrize(("change", "needle"), [
    (_set("backbones.sana.methods.magic", {"lr": 0.1}),
     "backbones.sana.methods.magic: 'magic' does not run on sana (ti, crossinit, dti)"),
    (_set("backbones.sana.only_methods", ["dti", "magic"]),
     "backbones.sana.only_methods[1]: 'magic' is not one of `methods` (ti, crossinit, dti)"),
    (lambda c: c["backbones"]["sana"].update(only_methods=["dti"], methods={"ti": {"lr": 0.1}}),
     "backbones.sana.methods.ti: 'ti' does not run on sana (dti)"),
    (_set("backbones.sana.methods.ti.kappa", 1e-4),
     "backbones.sana.methods.ti: method 'ti' takes no hyper-parameter 'kappa'"),
    (_set("backbones.wan.methods.dti.lr", float("nan")), "backbones.wan.methods.dti: method 'dti': lr must be"),
    (_set("backbones.sana.eval_steps", [100, 125]), "backbones.sana.eval_steps: 125 is not a checkpoint of backbone sana"),
    (lambda c: c.update(eval_steps=[450]) or c["backbones"]["sdxl"].pop("eval_steps"),
     "eval_steps: 450 is not a checkpoint of backbone sdxl"),
    (_set("backbones.sdxl.initializer_from", {"magic": "authors_initialization"}),
     "backbones.sdxl.initializer_from.magic: 'magic' is not a method this config trains"),
    (_set("only_backbones", ["sana", "sd3"]), "only_backbones[1]: unknown backbone 'sd3'"),
    (lambda c: c.pop("run_name"), "run_name: missing; name this config's run"),
    (lambda c: c["backbones"].update(runs=c["backbones"].pop("wan")), "backbones: the name 'runs' is reserved"),
])
def test_a_wrong_per_backbone_setting_is_named_in_one_line(change, needle):
    config = load("paper.yaml")
    change(config)
    with pytest.raises(DtiError) as err:
        planned(config)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_summary_step_some_backbone_does_not_score_is_named(paper):
    config = copy.deepcopy(paper[0])
    config["aggregate"]["summary_step"] = 500
    with pytest.raises(DtiError, match=r"aggregate.summary_step: 500 is not among the steps scored for backbone sdxl"):
        summary_steps(config)
    config["only_backbones"] = ["sana", "wan"]
    assert summary_steps(config) == {"sana": 500, "wan": 500}


def test_a_second_stage_needs_its_first_on_its_backbone_and_starts_from_its_words():
    """core_unet continues each core run: planning refuses it where core does not run, and its initializer is
    core's (the vector count must match), never one of its own."""
    config = yaml.safe_load((CONFIG / "config.yaml").read_text())
    config["methods"]["core_unet"] = {}
    with pytest.raises(DtiError, match="^methods: 'core_unet' continues the 'core' runs of the same backbone; "
                                       "add 'core' beside it$"):
        planned(config)
    config["methods"]["core"] = {}
    config["backbones"]["tiny_sd"]["only_methods"] = ["dti", "core_unet"]
    with pytest.raises(DtiError, match="^backbones.tiny_sd.only_methods: 'core_unet' continues the 'core' runs"):
        planned(config)
    config["backbones"]["tiny_sd"]["only_methods"] = ["dti", "core", "core_unet"]
    config["backbones"]["tiny_sd"]["initializer_from"] = {"core_unet": "initializer"}
    with pytest.raises(DtiError, match="^backbones.tiny_sd.initializer_from.core_unet: 'core_unet' continues the "
                                       "token of 'core' and starts from its words; set that one$"):
        planned(config)
    config["backbones"]["tiny_sd"]["initializer_from"] = {"core": "authors_initialization"}
    assert initializer_field(config, "tiny_sd", "core_unet") == "authors_initialization"
    assert initializer_field(config, "tiny_sd", "dti") == "initializer"


def test_a_backbone_starting_from_a_phrase_the_subjects_lack_is_named():
    config = yaml.safe_load((CONFIG / "config.yaml").read_text())
    config["backbones"]["tiny_sd"]["initializer_from"] = {"dti": "authors_initialization"}
    with pytest.raises(DtiError, match="backbones.tiny_sd.initializer_from: subject 'striped_box' has no "
                                       "authors_initialization"):
        planned(config)
    for subject in config["subjects"]:
        subject["authors_initialization"] = f"{subject['class']} toy"
    words = initializers(config, planned(config))
    assert words["tiny_sd"]["dti"]["spotted_pup"] == "dog toy" and words["tiny_sd"]["ti"]["spotted_pup"] == "dog"
    assert words["tiny_sdxl"]["dti"]["spotted_pup"] == "dog"  # the other backbone keeps the subject's initializer


# --- two configs in one working folder (dry runs of the workflow) --------------------------------------
RUN_LEVEL = ("aggregate", "norm_analysis", "magnitude_sweep", "score_magnitude_sweep", "magnitude_outputs",
             "interpolate", "score_interpolation", "interpolation_outputs", "sample_grids", "report_tables",
             "checkpoint_sweep")


def test_two_configs_in_one_folder_keep_their_tables_and_reports_apart(tmp_path):
    """The embedded default and a second config planned in one folder: every table, analysis and report
    file of each lies in its own run folder, none is the other's; training outputs are shared."""
    other = yaml.safe_load((CONFIG / "config.yaml").read_text())
    other["run_name"] = "other"
    other["seeds"] = [0]
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    work = tmp_path / "work"
    work.mkdir()
    demo = planned_outputs(work, "--configfile", str(CONFIG / "config.yaml"))
    second = planned_outputs(work, "--configfile", str(tmp_path / "other.yaml"))
    for outputs, run in ((demo, "results/runs/demo/"), (second, "results/runs/other/")):
        run_files = {f for rule in RUN_LEVEL for f in outputs[rule]}
        assert run_files and all(f.startswith(run) for f in run_files), sorted(run_files)[:5]
        assert {f"{run}tables/summary.parquet", f"{run}tables/summary.tex"} <= outputs["aggregate"]
    demo_files = {f for files in demo.values() for f in files}
    second_files = {f for files in second.values() for f in files}
    assert not {f for f in demo_files & second_files if f.startswith("results/runs/")}
    assert demo["train"] == second["train"]  # per-subject training: the same jobs, shared


def test_a_config_without_a_run_name_plans_nothing(tmp_path):
    config = yaml.safe_load((CONFIG / "config.yaml").read_text())
    del config["run_name"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "c.yaml"), check=False)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "run_name" in line]
    assert lines and lines[0].startswith("config error: run_name: missing"), result.stderr[-2000:]
    assert not (tmp_path / "results").exists()


def test_a_layer_over_a_missing_config_plans_nothing(tmp_path):
    (tmp_path / "layer.yaml").write_text("extends: config/no-such-paper.yaml\nrun_name: mine\n")
    result = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "layer.yaml"), check=False)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "no-such-paper" in line]
    assert lines and lines[0] == "config error: extends: config file not found: config/no-such-paper.yaml"
    assert not (tmp_path / "results").exists()


def test_zero_pad_is_on_for_sanas_dti_only_as_the_authors_launch_it(paper):
    from dti.benchmark_config import train_settings

    config, _ = paper
    padded = {(b, m) for b in PAPER for m in METHODS if train_settings(config, b, m).get("zero_pad")}
    assert padded == {("sana", "dti")}
    assert train_settings(config, "sana", "dti")["steps"] == 500  # the rest of the backbone's settings stay
    wrong = copy.deepcopy(config)
    wrong["backbones"]["sana"]["train"]["zero_pad"] = ["dti_typo"]
    with pytest.raises(DtiError, match=r"backbones\.sana\.train\.zero_pad: 'dti_typo' is not a method"):
        train_settings(wrong, "sana", "dti")


def test_the_ablation_layer_plans_dti_beside_its_variants_on_sdxl():
    from dti.methods import METHODS as REGISTRY
    from dti.tables import table_names

    config = load("paper-ablations.yaml")
    planned(config)
    assert list(enabled_backbones(config)) == ["sdxl"] and run_dir(config) == "results/runs/paper-ablations"
    variants = [m for m, spec in REGISTRY.items() if spec.ablation_of == "dti"]
    assert sorted(trained_methods(config["methods"])) == sorted([*METHODS, *variants])  # every ablation
    assert eval_steps(config, "sdxl") == [400]
    assert "ablation" in table_names(config["methods"])
    assert backbone_methods(config, "sdxl")["dti"]["kappa"] == 1e-4  # the paper's settings underneath


def test_the_finetune_layer_plans_the_adapter_methods_beside_the_paper_rows_on_sdxl():
    from dti.benchmark_config import eval_steps as planned_steps
    from dti.tables import table_names

    config = load("paper-finetune.yaml")
    planned(config)
    assert list(enabled_backbones(config)) == ["sdxl"] and run_dir(config) == "results/runs/paper-finetune"
    adapters = ["dco", "oft", "dti_dco", "ti_dco", "dti_oft", "ti_oft"]
    assert sorted(trained_methods(config["methods"])) == sorted([*METHODS, *adapters])
    # the authors stop DCO at 250 steps and OFT at 150: both are checkpoints this run scores
    assert {150, 250} <= set(planned_steps(config, "sdxl"))
    assert "cost" in table_names(config["methods"])
    for method in adapters:
        assert backbone_methods(config, "sdxl")[method] == {}  # every setting is the registry's (the authors')

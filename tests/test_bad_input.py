"""Bad input, table-driven: every user error is one line naming the culprit, a non-zero exit, no traceback,
and nothing written. CLI cases call `dti.cli.main` in-process; config cases run the workflow's own planning
checks (the JSON schema, then dti.benchmark_config) in-process, and a few go through `snakemake -n` to
prove the Snakefile applies them.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import FAST
from PIL import Image
from safetensors.torch import save_file
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate
from workflow_run import REPO, snakemake

from dti import io as dti_io
from dti import train as train_module
from dti.benchmark_config import check_config, load_config_files, subject_rows
from dti.cli import main
from dti.errors import DtiError
from dti.methods import HYPER_PARAMETERS
from dti.names import NAME_PATTERN, check_name
from dti.subject_schema import SUBJECT_SCHEMA, subject_problem
from dti.tensor_files import write_safetensors
from dti.terms import SUBJECT_KINDS, SUBJECT_SOURCES

SCHEMA = REPO / "config" / "schema.yaml"
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _train_args(model, images, out, **options) -> list[str]:
    options = {"model": model, "images": images, "out": out, "initializer": FAST["initializer"], "steps": 2,
               "save-every": 2, "resolution": FAST["resolution"], "batch-size": FAST["batch_size"], **options}
    args = ["train", "--quiet"]
    for key, value in options.items():
        args += [f"--{key}", str(value)]
    return args


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("dti:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("dti: error: ")
    return lines[0]


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --- class 7: `dti train` ------------------------------------------------------------------------------
TRAIN_CASES = {  # case: (options, culprit named in the message)
    "negative kappa": ({"kappa": -5}, "kappa must be a finite number >= 0, got -5.0"),
    "nan learning rate": ({"lr": "nan"}, "lr must be a positive finite number, got nan"),
    "infinite learning rate": ({"lr": "inf"}, "lr must be a positive finite number, got inf"),
    "zero learning rate": ({"lr": 0}, "lr must be a positive finite number, got 0.0"),
    "beta of 1": ({"beta": 1}, "beta must be a number in [0, 1), got 1.0"),
    "nan magnitude": ({"magnitude": "nan"}, "magnitude must be mean, min, max or a positive finite number, got nan"),
    "negative weight decay": ({"method": "ti", "weight-decay": -1}, "weight_decay must be a finite number >= 0"),
    "another method's setting": ({"method": "ti", "kappa": 0.1}, "method 'ti' takes no hyper-parameter 'kappa'"),
    "CrossInit's pull under dti": ({"pull-weight": 1e-5}, "method 'dti' takes no hyper-parameter 'pull_weight'"),
    "zero eps": ({"eps": 0}, "eps must be a positive finite number, got 0.0"),
    "zero steps": ({"steps": 0}, "steps must be a positive integer, got 0"),
    "resolution off the latent grid": ({"resolution": 70}, "resolution 70 must be a positive multiple of 8"),
    "resolution below one latent cell": ({"resolution": 4}, "resolution 4 must be a positive multiple of 8"),
    "magnitude below fp32": ({"magnitude": "1e-50"}, "diverged before the first step"),
    # class 2: a file name given on the command line stays in --out (the default one is made safe: test_cli.py)
    "--name escaping --out": ({"name": "../../evil"}, "export file name '../../evil'"),
    "hidden --name": ({"name": ".bashrc"}, "'.bashrc'"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bad_train_input_is_one_line_naming_it(tiny_sd, subject_dir, tmp_path, capsys, case):
    options, needle = TRAIN_CASES[case]
    out = tmp_path / "out"
    assert main(_train_args(tiny_sd, subject_dir, out, **options)) == 2
    assert needle in _one_error_line(capsys.readouterr().err)
    assert _files_under(tmp_path) == []  # nothing written, in --out or beside it


FAMILY_TRAIN_CASES = {  # case: (model family, options, culprit named in the message)
    # T5's unigram vocabulary has no piece for a character it never saw: refused, not trained from <unk>.
    "initializer with no known pieces (Wan)": ("wan", {"initializer": "toy café"},
                                              "initializer 'toy café': the tokenizer cannot split 'café'"),
    "resolution off the patch grid (Wan)": ("wan", {"resolution": 72},
                                           "resolution 72 must be a positive multiple of 16 for this wan model"),
}


@pytest.mark.parametrize("case", list(FAMILY_TRAIN_CASES))
def test_bad_train_input_for_a_family_is_one_line_naming_it(tiny_models, subject_dir, tmp_path, capsys, case):
    family, options, needle = FAMILY_TRAIN_CASES[case]
    assert main(_train_args(tiny_models[family], subject_dir, tmp_path / "out", **options)) == 2
    assert needle in _one_error_line(capsys.readouterr().err)
    assert _files_under(tmp_path) == []


def test_an_unsupported_pipeline_names_its_class_and_the_supported_ones(subject_dir, tmp_path, capsys):
    from dti.families import FAMILIES

    model = tmp_path / "flux"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert main(_train_args(model, subject_dir, tmp_path / "out")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "is a FluxPipeline pipeline" in line
    assert all(f"{f.pipeline} ({name})" in line for name, f in FAMILIES.items())
    assert not (tmp_path / "out").exists()


def test_out_naming_a_file_is_refused_and_left_alone(tiny_sd, subject_dir, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    assert main(_train_args(tiny_sd, subject_dir, out)) == 2
    assert f"--out {out} is a file" in _one_error_line(capsys.readouterr().err)
    assert out.read_text() == "keep me"


def test_a_full_disk_is_one_line_naming_the_file(tiny_sd, subject_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    real, real_write = Path.write_bytes, os.write

    def full_disk(self, data):
        if self.is_relative_to(out):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    def full_disk_stream(fd, data):  # the temporary files dti.tensor_files writes tensor by tensor
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if target.is_relative_to(out) and target.name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    monkeypatch.setattr(os, "write", full_disk_stream)
    assert main(_train_args(tiny_sd, subject_dir, out)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot write {out / 'learned_embeds-steps-2.safetensors'}: No space left on device" in line
    assert [p.name for p in _files_under(out)] == ["train_log.jsonl"]  # no half-written or temporary file


WRITERS = {
    "write_safetensors": lambda path: write_safetensors(path, {"x": torch.ones(2)}, {}),
    "write_text": lambda path: dti_io.write_text(path, "x"),
    "write_json": lambda path: dti_io.write_json(path, {"a": 1}),
    "write_parquet": lambda path: dti_io.write_parquet(path, pd.DataFrame({"a": [1]})),
    "save_image": lambda path: dti_io.save_image(path.with_suffix(".png"), Image.new("RGB", (2, 2))),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_atomic_writer_names_its_target_when_the_disk_is_full(tmp_path, monkeypatch, writer):
    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(DtiError, match=re.escape(f"cannot write {tmp_path}/target") + ".*: No space left on device"):
        WRITERS[writer](tmp_path / "target")
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone too


def test_a_full_disk_while_logging_names_the_log(tmp_path):
    class FullFile:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(DtiError, match=f"cannot write {tmp_path / 'train_log.jsonl'}: No space left"):
        train_module._append(FullFile(), tmp_path / "train_log.jsonl", {"step": 1})


# --- class 5 and 7: `dti sample` ------------------------------------------------------------------------
def _embedding(folder: Path, tensors: dict, metadata: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "learned_embeds.safetensors"), metadata=metadata)
    return folder


def _garbage(folder: Path, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "learned_embeds.safetensors").write_bytes(data)
    return folder


ROW = torch.full((1, 32), 0.01)  # the tiny models' text encoders are 32 wide
SAMPLE_CASES = {  # case: (make the embeddings folder (trained runs, tmp), sample model family, culprit)
    "corrupt file": (lambda runs, t: _garbage(t / "e", b"\x00" * 64), "sd", "cannot read learned embedding file"),
    "truncated file": (lambda runs, t: _garbage(
        t / "e", (runs("sd").out_dir / "learned_embeds.safetensors").read_bytes()[:-40]), "sd", "cannot read"),
    "wrong width": (lambda runs, t: _embedding(t / "e", {"<x>": torch.zeros(1, 16)}), "sd",
                    "rows are 16 wide; this model's text encoder takes 32"),
    "nan rows": (lambda runs, t: _embedding(t / "e", {"<x>": torch.full((1, 32), float("nan"))}), "sd", "non-finite"),
    "three-dimensional rows": (lambda runs, t: _embedding(t / "e", {"<x>": torch.zeros(1, 1, 32)}), "sd",
                               "expected float rows"),
    "integer rows": (lambda runs, t: _embedding(t / "e", {"<x>": torch.ones(1, 32, dtype=torch.int32)}), "sd",
                     "expected float rows"),
    "two tensors": (lambda runs, t: _embedding(t / "e", {"<x>": ROW, "<y>": ROW.clone()}), "sd", "one placeholder tensor"),
    "placeholder with a space": (lambda runs, t: _embedding(t / "e", {"a b": ROW}), "sd", "'a b' must be one word"),
    "placeholder already a word": (lambda runs, t: _embedding(t / "e", {"dog": ROW}), "sd", "cannot load"),
    "SDXL embedding, SD model": (lambda runs, t: runs("sdxl").out_dir, "sd", "trained for the 'sdxl' family"),
    "SD embedding, SDXL model": (lambda runs, t: runs("sd").out_dir, "sdxl", "trained for the 'sd' family"),
    "SANA embedding, Wan model": (lambda runs, t: runs("sana").out_dir, "wan", "trained for the 'sana' family"),
    "Wan embedding, SANA model": (lambda runs, t: runs("wan").out_dir, "sana", "trained for the 'wan' family"),
}
SAMPLE_ARG_CASES = {  # checked before any model is loaded
    "resolution off the latent grid": (["--resolution", "70"], "resolution 70 must be a positive multiple of 8"),
    "nan guidance scale": (["--guidance-scale", "nan"], "--guidance-scale must be a finite number >= 0, got nan"),
    "negative seed": (["--seeds", "-1"], "--seeds must be integers in [0, 2^63), got -1"),
    "zero steps": (["--steps", "0"], "--steps must be a positive integer, got 0"),
}


def _sample_args(model, embeds, out, *extra) -> list[str]:
    return ["sample", "--quiet", "--model", str(model), "--embeds", str(embeds), "--prompt", "a {}", "--seeds", "0",
            "--out", str(out), "--steps", "1", "--resolution", "64", *extra]


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_bad_embedding_files_are_one_line_naming_them(tiny_models, trained_run, tmp_path, capsys, case):
    make, family, needle = SAMPLE_CASES[case]
    embeds = make(lambda fam: trained_run(fam, "dti"), tmp_path)
    out = tmp_path / "images"
    assert main(_sample_args(tiny_models[family], embeds, out)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert needle in line and str(embeds) in line
    assert not out.exists()


@pytest.mark.parametrize("case", list(SAMPLE_ARG_CASES))
def test_bad_sample_arguments_are_one_line_naming_them(tiny_sd, trained_run, tmp_path, capsys, case):
    extra, needle = SAMPLE_ARG_CASES[case]
    out = tmp_path / "images"
    assert main(_sample_args(tiny_sd, trained_run("sd", "dti").out_dir, out, *extra)) == 2
    assert needle in _one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_sample_out_or_embeds_naming_a_file(tiny_sd, trained_run, tmp_path, capsys):
    embeds = trained_run("sd", "dti").out_dir
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert main(_sample_args(tiny_sd, embeds, a_file)) == 2
    assert f"--out {a_file} is a file" in _one_error_line(capsys.readouterr().err)
    assert main(_sample_args(tiny_sd, embeds / "learned_embeds.safetensors", tmp_path / "o")) == 2
    assert "is not a folder" in _one_error_line(capsys.readouterr().err)


# --- class 2: one naming rule -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dog", "dog2", "bear_plushie", "Teddy-1.5", "a" * 100])
def test_plain_names_pass(name):
    assert check_name(name, "subject") == name


@pytest.mark.parametrize("name", ["../victim", "../../../../victim", "a/b", "a\\b", "..", ".", ".hidden", "-rf",
                                  "", "a b", "dog\n", "café", "a" * 101, "x*", "{subject}", None, 3])
def test_names_that_could_leave_their_folder_are_refused(name):
    with pytest.raises(DtiError, match="subject"):
        check_name(name, "subject")


def test_the_schema_states_the_library_rule():
    schema = yaml.safe_load(SCHEMA.read_text())
    subject = yaml.safe_load(SUBJECT_SCHEMA.read_text())
    # One naming rule, in the subject schema the library ships (dti.data); the config schema refers to that
    # very file, relative to itself as Snakemake's validate resolves it.
    shipped = os.path.relpath(SUBJECT_SCHEMA, SCHEMA.parent)
    assert subject["definitions"]["name"]["pattern"] == NAME_PATTERN
    assert subject["properties"]["name"] == {"$ref": "#/definitions/name"}
    assert schema["definitions"]["name"] == {"$ref": f"{shipped}#/definitions/name"}
    assert schema["properties"]["subjects"]["items"] == {"$ref": shipped}
    for key in ("backbones", "methods"):
        assert schema["properties"][key]["propertyNames"] == {"$ref": "#/definitions/name"}
    # One definition of a method's hyper-parameters, for `methods` and each backbone's `methods`.
    hyper_parameters = {"$ref": "#/definitions/hyper_parameters"}
    assert schema["properties"]["methods"]["additionalProperties"] == hyper_parameters
    backbone = schema["properties"]["backbones"]["additionalProperties"]["properties"]
    assert backbone["methods"]["additionalProperties"] == hyper_parameters
    assert backbone["methods"]["propertyNames"] == {"$ref": "#/definitions/name"}
    method = schema["definitions"]["hyper_parameters"]
    assert set(method["properties"]) == set(HYPER_PARAMETERS)  # every hyper-parameter, and nothing else
    assert schema["properties"]["run_name"]["$ref"] == "#/definitions/name"
    assert tuple(subject["properties"]["kind"]["enum"]) == SUBJECT_KINDS
    assert tuple(subject["properties"]["source"]["enum"]) == SUBJECT_SOURCES


def test_sample_subject_refuses_a_prompt_set_name_escaping_its_folder(tmp_path):
    from dti.pipeline import sample_subject

    with pytest.raises(DtiError, match="prompt set '../x'"):
        sample_subject("unused", "unused", "unused", str(tmp_path / "m.parquet"), labels={},
                       prompt_sets={"../x": ["a {}"]}, seeds=[0], sample={}, step=1)
    assert list(tmp_path.iterdir()) == []


# --- classes 2 and 7: config mistakes caught while planning ---------------------------------------------
def _tsv(tmp: Path, rows: list[str], header: str = "name\tclass\tkind\tsource") -> str:
    path = tmp / "subjects.tsv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def _prompt_file(tmp: Path, name: str) -> str:
    (tmp / name).write_text("a {} on a table\n")
    return str(tmp / name)


def _odd_photo_name(tmp: Path) -> Path:
    folder = tmp / "photos" / "my_mug"
    folder.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(folder / "ok.png")
    with open(os.path.join(os.fsencode(folder), b"IMG_\xff.png"), "wb") as handle:  # Latin-1 bytes, not UTF-8
        Image.new("RGB", (16, 16)).save(handle, "PNG")
    return tmp / "photos"


def _set(path: str, value):
    def change(config, tmp, models):
        keys = path.split(".")
        node = config
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value(tmp, models) if callable(value) else value

    return change


def _rename_backbone(new):
    def change(config, tmp, models):
        config["backbones"][new] = config["backbones"].pop("tiny_sd")

    return change


def _folder_subject(config, tmp, models):
    config["subjects"] = [{"name": "my_mug", "class": "mug", "kind": "object", "source": "folder"}]
    config["data"] = {"images_dir": str(_odd_photo_name(tmp))}


def _all_metrics_off(config, tmp, models):
    for spec in config["metrics"].values():
        spec["enabled"] = False


def _sd_family_for_sdxl(config, tmp, models):
    config["backbones"]["tiny_sd"]["model"] = str(models["sdxl"])


CONFIG_CASES = {  # case: (change(config, tmp, models), culprit named in the message)
    "subject name from a TSV escaping": (
        _set("subject_table", lambda t, m: _tsv(t, ["../../../../victim\tdog\tlive\tsynthetic"])),
        "subjects.tsv row 2: subject name '../../../../victim'"),
    "unknown kind in a TSV": (_set("subject_table", lambda t, m: _tsv(t, ["ok\tdog\tlive\tsynthetic",
                                                                          "rex\tdog\tpet\tsynthetic"])),
                              "subjects.tsv row 3: kind: 'pet' is not one of ['object', 'live']"),
    "blank class in a TSV": (_set("subject_table", lambda t, m: _tsv(t, ["rex\t \tlive\tsynthetic"])),
                             "row 2: class must be a non-blank text, got ' '"),
    "empty class cell in a TSV": (_set("subject_table", lambda t, m: _tsv(t, ["rex\t\tlive\tsynthetic"])),
                                  "row 2: 'class' is a required property"),
    "unknown column in a TSV": (_set("subject_table", lambda t, m: _tsv(
        t, ["rex\tdog\tlive\tsynthetic\tbrown"], "name\tclass\tkind\tsource\tcolour")),
        "row 2: Additional properties are not allowed ('colour' was unexpected)"),
    "a subject twice in a TSV": (_set("subject_table", lambda t, m: _tsv(t, ["rex\tdog\tlive\tsynthetic"] * 2)),
                                 "row 3: subject 'rex' appears twice"),
    "inline subject of an unknown source": (lambda c, t, m: c["subjects"][0].update(source="web"), "'web'"),
    "inline subject name escaping": (lambda c, t, m: c["subjects"][0].update(name="../x"), "'../x'"),
    "backbone key escaping": (_rename_backbone("../evil"), "'../evil'"),
    "unknown method key": (lambda c, t, m: c["methods"].update({"../x": {}}), "'../x'"),
    "prompt set name with a space": (_set("prompt_sets", lambda t, m: [_prompt_file(t, "my set.txt")]), "'my set'"),
    "two prompt sets sharing a name": (_set("prompt_sets", lambda t, m: ["complex", _prompt_file(t, "complex.txt")]),
                                       "are both named 'complex'"),
    "empty subject table": (_set("subject_table", lambda t, m: _tsv(t, [])), "lists no subjects"),
    "subject table without a column": (_set("subject_table", lambda t, m: _tsv(t, ["x\tdog\tsynthetic"],
                                                                                "name\tclass\tsource")),
                                       "missing column(s) ['kind']"),
    "every metric disabled": (_all_metrics_off, "every metric is disabled"),
    "family sd given an SDXL model": (_sd_family_for_sdxl, "is an 'sdxl' pipeline"),
    "pull_weight under dti": (lambda c, t, m: c["methods"]["dti"].update(pull_weight=1e-5),
                              "method 'dti' takes no hyper-parameter 'pull_weight'"),
    "kappa under ti": (lambda c, t, m: c["methods"]["ti"].update(kappa=0.1), "method 'ti' takes no hyper-parameter"),
    "nan learning rate": (lambda c, t, m: c["methods"]["dti"].update(lr=float("nan")), "lr must be a positive"),
    "training resolution off the latent grid": (lambda c, t, m: c["backbones"]["tiny_sd"]["train"].update(
        resolution=70), "70 is not a multiple of 8"),
    "photo file name not UTF-8": (_folder_subject, "not valid UTF-8 ('IMG_\\udcff.png')"),
    "placeholder with a space": (_set("training", {"placeholder": "<{subject} x>"}), "one word without spaces"),
    "a backbone's entry for a method that does not run": (
        _set("backbones.tiny_sd.methods", {"ti_rescaled": {"magnitude": "mean"}}),
        "backbones.tiny_sd.methods.ti_rescaled: 'ti_rescaled' does not run on tiny_sd (ti, crossinit, dti)"),
    "kappa under ti on one backbone": (_set("backbones.tiny_sdxl.methods", {"ti": {"kappa": 0.1}}),
                                       "backbones.tiny_sdxl.methods.ti: method 'ti' takes no hyper-parameter"),
    "a run name escaping": (_set("run_name", "../other"), "'../other'"),
    "no run name": (lambda c, t, m: c.pop("run_name"), "run_name: missing"),
    "blank authors_initialization in a TSV": (_set("subject_table", lambda t, m: _tsv(
        t, ["rex\tdog\tlive\tsynthetic\t "], "name\tclass\tkind\tsource\tauthors_initialization")),
        "row 2: authors_initialization must be a non-blank text, got ' '"),
}


def _plan(config: dict) -> dict:
    """The planning checks of the Snakefile and rules/common.smk, in the same order."""
    validate(config, str(SCHEMA))
    rows = subject_rows(config, REPO)
    if config.get("subject_table"):
        for where, row in rows:
            try:
                validate(row, str(SUBJECT_SCHEMA))
            except WorkflowError:
                raise DtiError(f"{where}: {subject_problem(row)}") from None
    return check_config(config, rows)


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_mistakes_are_caught_while_planning(tiny_models, tmp_path, case):
    change, needle = CONFIG_CASES[case]
    config = copy.deepcopy(DEFAULT)
    change(config, tmp_path, tiny_models)
    if "subject_table" in config and config["subject_table"]:
        config.pop("subjects")
    with pytest.raises(Exception) as err:  # noqa: PT011  (the schema raises WorkflowError, the checks DtiError)
        _plan(config)
    assert needle in str(err.value)


def test_a_family_the_model_contradicts_is_refused_when_fetching_and_loading(tiny_sdxl, tmp_path):
    """A hub model not yet cached cannot be checked while planning; fetching and loading check it."""
    from dti.backbones.catalog import load_backbone
    from dti.pipeline import fetch_model

    with pytest.raises(DtiError, match="is an 'sdxl' pipeline"):
        fetch_model(str(tmp_path / "m.json"), model=str(tiny_sdxl), family="sd", revision=None, tiny_dir=None)
    assert not (tmp_path / "m.json").exists()
    with pytest.raises(DtiError, match="is an 'sdxl' pipeline"):
        load_backbone(str(tiny_sdxl), family="sd")


def test_the_default_and_paper_configs_plan_cleanly():
    for names in (["config.yaml"], ["paper.yaml"], ["paper-sdxl.yaml"], ["paper-sana.yaml"], ["paper-wan.yaml"],
                  ["paper.yaml", "paper-wan.yaml"], ["paper-sd15.yaml"], ["paper-sd21.yaml"],
                  ["paper-finetune.yaml"]):
        config = load_config_files([REPO / "config" / name for name in names])
        assert _plan(config), names


@pytest.mark.parametrize(("case", "needle"), [
    ("subject name from a TSV escaping", "subject name '../../../../victim'"),  # rules/common.smk
    ("backbone key escaping", "'../evil'"),  # config/schema.yaml's name rule (in the subject schema)
    ("pull_weight under dti", "method 'dti' takes no hyper-parameter 'pull_weight'"),
    ("kappa under ti on one backbone", "backbones.tiny_sdxl.methods.ti: method 'ti' takes no hyper-parameter"),
])
def test_snakemake_plans_nothing_for_a_bad_config(tiny_models, tmp_path, case, needle):
    config = copy.deepcopy(DEFAULT)
    CONFIG_CASES[case][0](config, tmp_path, tiny_models)
    if config.get("subject_table"):
        config.pop("subjects")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(config))))
    work = tmp_path / "work"
    work.mkdir()
    result = snakemake(work, "-n", "--configfile", str(path), check=False)
    assert result.returncode != 0
    assert needle in result.stdout + result.stderr
    assert not (tmp_path.parent / "victim").exists() and not work.joinpath("results").exists()

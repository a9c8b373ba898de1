"""Hostile input from files, one table per class of weakness:

- hostile sizes (configs and subject tables): every config file, every `extends` base and every subject
  table is read bounded (size, size with YAML aliases expanded, depth, cells) before anything validates
  or walks it, and a refusal takes well under two seconds (dti.yaml_safety);
- numbers from files: a value in a config or in a safetensors file's metadata gets the checks the same
  value gets on the command line (dti.numbers, dti.methods);
- text windows: a prompt, initializer or multi-vector token longer than the text encoder's window is
  refused in training, in sampling and, where the tokenizer is on this machine, while planning;
- names and keys that collide: names differing only in case, a YAML key given twice, a byte-order mark.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import fast_settings, fresh_backbone
from safetensors.torch import save_file
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from dti.benchmark_config import (
    check_config,
    check_config_files,
    enabled_backbones,
    initializers,
    load_config_files,
    subject_rows,
    train_settings,
    trained_methods,
)
from dti.cli import main
from dti.config_layers import resolve_extends
from dti.errors import DtiError
from dti.export import load_diffusers
from dti.prompts import DEFAULT_PROMPTS_DIR, read_prompt_file
from dti.sample import SampleJob, SampleSettings, generate
from dti.subject_schema import subject_problem
from dti.text_windows import CACHE_DIR, check_text_windows, prompt_set_files
from dti.train import Trainer

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "config" / "schema.yaml"
DEFAULT = REPO / "config" / "config.yaml"
DREAMBOOTH_TABLE = REPO / "src" / "dti" / "data" / "subjects" / "dreambooth.tsv"  # the paper configs' subject_table
HEADER = "name\tclass\tkind\tsource"


def _plan(config: dict) -> dict:
    """The planning checks of the Snakefile and rules/common.smk, in the same order (tests/test_bad_input.py)."""
    validate(config, str(SCHEMA))
    rows = subject_rows(config, REPO)
    if config.get("subject_table"):
        for where, row in rows:
            problem = subject_problem(row)
            if problem is not None:
                raise DtiError(f"{where}: {problem}")
    return check_config(config, rows)


def _layer(tmp: Path, text: str, name: str = "layer.yaml") -> Path:
    """A config file over the embedded default (`extends`), with `text` as its own keys."""
    path = tmp / name
    path.write_text(f"extends: {DEFAULT}\n{text}", encoding="utf-8")
    return path


def _plan_files(*paths: Path) -> dict:
    """What the Snakefile does with `--configfile PATHS`: every file bounded and strict, the chain merged,
    then the planning checks."""
    check_config_files(paths)
    config = load_config_files(paths)
    if config.get("subject_table"):
        config.pop("subjects", None)
    return _plan(config)


def _tsv(tmp: Path, text: str | bytes, name: str = "subjects.tsv") -> Path:
    path = tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _one_prompt(path: Path) -> Path:
    return _write(path, "a {}\n")


def _rows(path: Path) -> list:
    return subject_rows({"subject_table": str(path)}, REPO)


# --- class 3: hostile sizes (configs and subject tables) --------------------------------------------------
def _laughs(levels: int = 9) -> str:
    """A few hundred bytes of YAML standing for 9^levels values."""
    names = [f"l{i}" for i in range(levels + 1)]
    lines = [f"{names[0]}: &{names[0]} [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip(names, names[1:], strict=False)]
    return "\n".join(lines) + "\n"


def _mapping_laughs(levels: int = 20) -> str:
    """The same with mappings: each level four aliases of the one before, 4^levels values."""
    lines = ["m0: &m0 {p: x, q: x, r: x, s: x}"]
    lines += [f"m{i}: &m{i} {{p: *m{i - 1}, q: *m{i - 1}, r: *m{i - 1}, s: *m{i - 1}}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _over(tmp: Path, base_text: str) -> Path:
    """A config file that only extends base.yaml, holding `base_text`."""
    base = _write(tmp / "base.yaml", base_text)
    return _write(tmp / "top.yaml", f"extends: {base}\n")


def _table_layer(tmp: Path, rows: str, bom: bool = False) -> Path:
    """The embedded default with its subjects from a TSV of `rows` (under the header)."""
    table = _tsv(tmp, (b"\xef\xbb\xbf" if bom else b"") + f"{HEADER}\n{rows}".encode())
    return _layer(tmp, f"subject_table: {table}\n")


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)
    return path


SIZE_CASES = {  # case: (action(tmp), what the one-line error says; None: it passes)
    "billion laughs as --configfile": (lambda t: _plan_files(_layer(t, _laughs())),
                                       "expands to more than 200000 values"),
    "billion laughs in an extends base": (lambda t: _plan_files(_over(t, DEFAULT.read_text() + _laughs())),
                                          "expands to more than 200000 values"),
    "billion laughs of mappings": (lambda t: check_config_files([_write(t / "c.yaml", _mapping_laughs())]),
                                   "expands to more than 200000 values"),
    "a recursive alias": (lambda t: check_config_files([_write(t / "c.yaml", "a: &a [1, *a]\n")]),
                          "an alias refers to a value that contains it"),
    "deep nesting bomb": (lambda t: check_config_files([_write(t / "c.yaml", "a: " + "[" * 200_000 + "]" * 200_000)]),
                          "nested more than 64 levels deep"),
    "deep nesting of mappings in an extends base": (
        lambda t: resolve_extends({"extends": str(_write(t / "b.yaml", "a: " + "{a: " * 5000 + "1" + "}" * 5000))}, t),
        "nested more than 64 levels deep"),
    "a config file of 11 MB": (lambda t: check_config_files([_sparse(t / "c.yaml", 11 * 2**20, b"a: ")]),
                               "more than the 10485760 a config file may have"),
    "a deep JSON config": (lambda t: check_config_files([_write(t / "c.json", "[" * 100_000 + "]" * 100_000)]),
                           "nested more than 64 levels deep"),
    "a huge TSV": (lambda t: _rows(_sparse(t / "s.tsv", 11 * 2**20, HEADER.encode() + b"\n")),
                   "more than the 10485760 a subject table may have"),
    "a TSV of 400 000 cells under 10 MB": (
        lambda t: _rows(_tsv(t, HEADER + "\n" + "a\tb\tobject\tsynthetic\n" * 100_000)), "more than 200000 cells"),
    "a TSV with a gigantic cell": (lambda t: _rows(_tsv(t, f"{HEADER}\nrex\t{'dog ' * 2_000_000}\tlive\tsynthetic\n")),
                                   "row 2: a cell longer than 10000 characters"),
    "a TSV with a 20 000 character cell": (
        lambda t: _rows(_tsv(t, f"{HEADER}\nrex\t{'d' * 20_000}\tlive\tsynthetic\n")),
        "row 2: the class cell has 20000 characters, more than the 10000"),
    "the embedded default passes": (lambda t: _plan_files(DEFAULT), None),
    "the paper config passes": (lambda t: _plan_files(REPO / "config" / "paper-sdxl.yaml"), None),
    "the DreamBooth subject table passes": (lambda t: _rows(DREAMBOOTH_TABLE), None),
}


@pytest.mark.parametrize("case", list(SIZE_CASES))
def test_hostile_sizes_are_refused_before_anything_walks_them(tmp_path, case):
    action, needle = SIZE_CASES[case]
    started = time.perf_counter()
    if needle is None:
        assert action(tmp_path)
    else:
        with pytest.raises(DtiError) as raised:
            action(tmp_path)
        message = str(raised.value)
        assert needle in message and "\n" not in message, message
        assert str(tmp_path) in message  # names the file
    assert time.perf_counter() - started < 2.0, case


# --- class 5: numbers from files get the command line's checks --------------------------------------------
def _config_error(text: str):
    """The planning error of a config file with `text` over the embedded default."""
    return lambda t, models, capsys: _error(lambda: _plan_files(_layer(t, text)))


def _error(action) -> str:
    with pytest.raises((DtiError, WorkflowError)) as raised:
        action()
    return str(raised.value)


def _embedding(folder: Path, metadata: dict) -> Path:
    """A learned_embeds.safetensors trained-looking file for the tiny SD model (768 wide) with `metadata`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = torch.randn(1, 32, generator=torch.Generator().manual_seed(0))
    meta = {"format": "pt", "dti.method": "dti", "dti.family": "sd", "dti.steps": "3", "dti.kappa": "0.0001",
            "dti.magnitude.clip_l": "0.4", **metadata}
    save_file({"<toy>": rows}, str(folder / "learned_embeds.safetensors"), metadata=meta)
    return folder


def _cli(argv, capsys, code: int = 2, stream: str = "err") -> str:
    assert main([str(a) for a in argv]) == code
    out, err = capsys.readouterr()
    text = err if stream == "err" else out
    lines = [line for line in text.splitlines() if "error" in line or "warning" in line]
    assert len(lines) == 1, text
    return lines[0]


def _sample_args(models, folder: Path, *extra) -> list:
    return ["sample", "--model", models["sd"], "--embeds", folder, "--prompt", "a {}", "--out", folder / "out",
            "--steps", 1, "--resolution", 64, "--seeds", 0, "--quiet", *extra]


NUMBER_CASES = {  # case: (action(tmp, tiny models, capsys) -> the one-line message, what it says)
    # a hyper-parameter gets its flag's own check (dti.methods), worded as `dti train --lr nan` words it
    "lr .nan in a config": (_config_error("methods:\n  dti: {lr: .nan}\n"),
                            "methods.dti: method 'dti': lr must be a positive finite number, got nan"),
    "kappa .inf in a config": (_config_error("methods:\n  dti: {kappa: .inf}\n"),
                               "methods.dti: method 'dti': kappa must be a finite number >= 0, got inf"),
    "beta .nan on one backbone": (_config_error("backbones:\n  tiny_sd:\n    methods:\n      dti: {beta: .nan}\n"),
                                  "backbones.tiny_sd.methods.dti: method 'dti': beta must be a number in [0, 1), "
                                  "got nan"),
    "lr 1e39: finite in float64, not in float32": (
        _config_error("methods:\n  dti: {lr: 1.0e+39}\n"),
        "methods.dti: method 'dti': lr must be a positive number within float32's range (at most 3.403e+38), got "
        "1e+39"),
    # every other number: dti.numbers, naming its key path
    "an interpolation value .nan": (_config_error("interpolation: {t: [0, .nan, 1]}\n"),
                                    "interpolation.t[1]: nan is not a finite number"),
    "a magnitude-sweep scale 1e39": (_config_error("analysis:\n  magnitude: {scales: [1, 1.0e+39]}\n"),
                                     "analysis.magnitude.scales[1]: 1e+39 is beyond float32's range"),
    "guidance scale .nan": (_config_error("backbones:\n  tiny_sd:\n    sample: {guidance_scale: .nan}\n"),
                            "backbones.tiny_sd.sample.guidance_scale: nan is not a finite number"),
    "a seed of 2^64": (_config_error(f"seeds: [0, {2**64}]\n"),
                       f"seeds[1]: {2**64} is beyond the 64-bit integer range"),
    "a negative training seed": (_config_error("training: {seed: -1}\n"),
                                 "training.seed: -1 is not a seed: seeds are integers in [0, 2^63)"),
    "10^30 steps (an integer)": (_config_error(f"backbones:\n  tiny_sd:\n    train: {{steps: {10**30}}}\n"),
                                 f"backbones.tiny_sd.train.steps: {10**30} is beyond the 64-bit integer range"),
    "magnitude '1e39' as text": (_config_error("methods:\n  dti: {magnitude: '1e39'}\n"),
                                 "methods.dti: method 'dti': magnitude must be mean, min, max or a positive number "
                                 "within float32's range"),
    "eval_steps negative (the schema's own error)": (_config_error("eval_steps: [-6]\n"),
                                                     "-6 is less than the minimum of 1"),
    "the CLI refuses --lr 1e39 alike": (
        lambda t, models, capsys: _cli(["train", "--model", "m", "--images", "i", "--initializer", "dog", "--out",
                                        t / "o", "--lr", "1e39"], capsys),
        "--lr: lr must be a positive number within float32's range"),
    "metadata magnitude 'nan' given to dti sample --rescale-to": (
        lambda t, models, capsys: _cli(_sample_args(models, _embedding(t / "e", {"dti.magnitude.clip_l": "nan"}),
                                                    "--rescale-to", "mean"), capsys),
        "metadata dti.magnitude.clip_l 'nan' is not a finite number > 0"),
    "metadata kappa 'inf' read back": (
        lambda t, models, capsys: _error(lambda: load_diffusers(_embedding(t / "e", {"dti.kappa": "inf"}), ["clip_l"])),
        "metadata dti.kappa 'inf' is not a finite number >= 0"),
    "metadata steps '-3' read back": (
        lambda t, models, capsys: _error(lambda: load_diffusers(_embedding(t / "e", {"dti.steps": "-3"}), ["clip_l"])),
        "metadata dti.steps '-3' is not an integer >= 1"),
    "metadata magnitude 1e39 read back": (
        lambda t, models, capsys: _error(lambda: load_diffusers(_embedding(t / "e", {"dti.magnitude.clip_l": "1e39"}),
                                                                ["clip_l"])),
        "metadata dti.magnitude.clip_l '1e39' is not a finite number > 0"),
    "dti inspect shows a 'nan' magnitude with a warning": (
        lambda t, models, capsys: _cli(["inspect", _embedding(t / "e", {"dti.magnitude.clip_l": "nan"}) /
                                        "learned_embeds.safetensors"], capsys, code=0, stream="out"),
        "learned_embeds.safetensors: metadata dti.magnitude.clip_l 'nan' is not a finite number > 0 (the file is "
        "damaged"),
}


@pytest.mark.parametrize("case", list(NUMBER_CASES))
def test_numbers_from_files_get_the_checks_of_their_flags(tiny_models, tmp_path, capsys, case):
    action, needle = NUMBER_CASES[case]
    message = action(tmp_path, tiny_models, capsys)
    assert needle in message, message
    assert "\n" not in message.strip() or message.startswith("Error validating config file.")  # Snakemake's
    assert not (tmp_path / "e" / "out").exists()  # refused before any image


# --- class 6: text windows --------------------------------------------------------------------------------
def _train(models, images, tmp, family: str = "sd", **settings):
    return Trainer(fresh_backbone(models[family]), images, fast_settings(**settings), tmp / "run")


def _sample(models, tmp, prompt: str):
    backbone = fresh_backbone(models["sd"])
    generate(backbone, [SampleJob(prompt, 0, tmp / "out" / "0.png")], SampleSettings(steps=1, resolution=64),
             progress=False)


def _planning(tmp: Path, models, monkeypatch, prompt_lines: list[str] | None = None, initializer: str | None = None):
    """rules/common.smk's planning check with the tiny SD model built in the working folder (as the tiny_model
    rule builds it) and, with `prompt_lines`, a prompt set file of those lines."""
    monkeypatch.chdir(tmp)
    folder = tmp / "resources" / "models" / "tiny" / "sd"
    if not folder.exists():
        shutil.copytree(models["sd"] / "tokenizer", folder / "tokenizer")
    config = load_config_files([DEFAULT])
    if prompt_lines is not None:
        config["prompt_sets"] = [str(_write(tmp / "long.txt", "\n".join(prompt_lines) + "\n"))]
    if initializer is not None:
        config["subjects"][0]["initializer"] = initializer
    subjects = check_config(config, subject_rows(config, REPO))
    backbones = enabled_backbones(config)
    check_text_windows(
        backbones, subjects, initializers(config, subjects),
        {b: {m: train_settings(config, b, m) for m in trained_methods(config["methods"])} for b in backbones},
        prompt_set_files(config["prompt_sets"], [s["kind"] for s in subjects.values()], DEFAULT_PROMPTS_DIR,
                         config.get("prompt_limit")),
        "<{subject}>")
    return sorted((tmp / CACHE_DIR).glob("*"))


def _planned_twice(tmp, models, monkeypatch):
    first = _planning(tmp, models, monkeypatch)
    started = time.perf_counter()
    second = _planning(tmp, models, monkeypatch)
    return len(first) == 1 and first == second and time.perf_counter() - started < 1.0


DOGS = "dog " * 200
WINDOW_CASES = {  # case: (action(tiny models, images, tmp, monkeypatch), what the one-line error says; None: passes)
    "a 70-word initializer for CLIP": (
        lambda m, i, t, mp: _train(m, i, t, initializer=" ".join(["dog"] * 70)),
        "… (279 characters) is 70 tokens for the clip_l text encoder: the training prompt"),
    "a 69-token initializer pushes the longest template over 77": (
        lambda m, i, t, mp: _train(m, i, t, initializer=" ".join(["dog"] * 69)),
        "the training prompt 'a close-up photo of a {}' with them is 78 tokens, more than the 77 it reads"),
    "zero-pad pushes a 55-token initializer over": (
        lambda m, i, t, mp: _train(m, i, t, initializer=" ".join(["dog"] * 55), zero_pad=True),
        "with them and 15 zero-pad tokens is 79 tokens, more than the 77"),
    "a 50-token initializer with zero-pad fits": (
        lambda m, i, t, mp: _train(m, i, t, initializer=" ".join(["dog"] * 50), zero_pad=True), None),
    "a 320-token initializer for SANA's 300": (
        lambda m, i, t, mp: _train(m, i, t, family="sana", initializer=" ".join(["dog"] * 320)),
        "more than the 300 it reads"),
    "a prompt of 200 words in sampling": (lambda m, i, t, mp: _sample(m, t, "a photo of a dog " + DOGS),
                                          "is 207 tokens for the clip_l text encoder, more than the 77 it reads"),
    "a prompt set line over the window at planning (tiny model built)": (
        lambda m, i, t, mp: _planning(t, m, mp, ["a photo of a {}", "a {} " + DOGS]),
        "… (804 characters) with subject striped_box's placeholder as its 1 token(s) (crossinit on tiny_sd) is 204 "
        "tokens, more than the 77 the clip_l text encoder reads"),
    "an initializer over the window at planning": (
        lambda m, i, t, mp: _planning(t, m, mp, initializer=" ".join(["box"] * 69)),
        "backbones.tiny_sd: subject striped_box's initializer"),
    "normal prompts pass at planning, and planning again skips the check": (
        lambda m, i, t, mp: _planned_twice(t, m, mp), None),
}


@pytest.mark.parametrize("case", list(WINDOW_CASES))
def test_text_longer_than_the_encoder_window_is_refused(tiny_models, subject_images, tmp_path, monkeypatch, case):
    action, needle = WINDOW_CASES[case]
    if needle is None:
        assert action(tiny_models, subject_images, tmp_path, monkeypatch)
        return
    with pytest.raises(DtiError) as raised:
        action(tiny_models, subject_images, tmp_path, monkeypatch)
    message = str(raised.value)
    assert needle in message and "\n" not in message, message
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()  # refused before any work
    assert not (tmp_path / CACHE_DIR).exists()  # a failed check leaves no marker


# --- class 8: names and keys that collide -----------------------------------------------------------------
def _subjects_config(names: list[str]) -> str:
    return "subjects:\n" + "".join(f"  - {{name: {n}, class: dog, kind: live, source: synthetic}}\n" for n in names)


COLLISION_CASES = {  # case: (action(tmp), what the one-line error says, or a check of what it returns)
    "Dog and dog in the inline list": (lambda t: _plan_files(_layer(t, _subjects_config(["Dog", "cat", "dog"]))),
                                       "subjects[2]: subjects 'Dog' and 'dog' differ only in case"),
    "Dog and dog in a TSV": (lambda t: _plan_files(_table_layer(t, "Dog\tdog\tlive\tsynthetic\ndog\tdog\tlive\tsynthetic\n")),
                             "subjects.tsv row 3: subjects 'Dog' and 'dog' differ only in case"),
    "two backbones differing in case": (
        lambda t: _plan_files(_layer(t, "backbones:\n  Tiny_SD: {family: sd, model: tiny}\n")),
        "backbones: 'tiny_sd' and 'Tiny_SD' differ only in case"),
    "a backbone named Runs": (lambda t: _plan_files(_layer(t, "backbones:\n  Runs: {family: sd, model: tiny}\n")),
                              "the name 'Runs' is reserved"),
    "two prompt sets differing in case": (
        lambda t: _plan_files(_layer(t, f"prompt_sets: [complex, {_one_prompt(t / 'Complex.txt')}]\n")),
        "are both named 'Complex'"),
    "a key twice at top level": (lambda t: _plan_files(_layer(t, "seeds: [0]\nprompt_limit: 1\nseeds: [0, 1]\n")),
                                 "layer.yaml: key 'seeds' is given twice in one mapping (lines 2 and 4)"),
    "a key twice, nested": (lambda t: _plan_files(_layer(t, "methods:\n  dti:\n    lr: 0.04\n    lr: 0.4\n")),
                            "layer.yaml: key 'lr' is given twice in one mapping (lines 4 and 5)"),
    "a key twice in a flow mapping": (lambda t: _plan_files(_layer(t, "methods:\n  ti: {lr: 0.02, lr: 0.2}\n")),
                                      "key 'lr' is given twice in one mapping (lines 3 and 3)"),
    "a key twice in an extends base": (lambda t: _plan_files(_over(t, DEFAULT.read_text() + "seeds: [5]\n")),
                                       "base.yaml: key 'seeds' is given twice in one mapping"),
    "a key twice in a JSON config": (lambda t: check_config_files([_write(t / "c.json", '{"seeds": [0], "seeds": [1]}')]),
                                     "c.json: key 'seeds' is given twice in one object"),
    "a column twice in a TSV header": (lambda t: _rows(_tsv(t, f"{HEADER}\tclass\nrex\tdog\tlive\tsynthetic\tcat\n")),
                                       "column 'class' appears twice in the header"),
    "a BOM TSV: its first header is `name`": (
        lambda t: _rows(_tsv(t, b"\xef\xbb\xbf" + f"{HEADER}\nrex\tdog\tlive\tsynthetic\n".encode())),
        lambda rows: rows[0][1] == {"name": "rex", "class": "dog", "kind": "live", "source": "synthetic"}),
    "a BOM TSV plans": (lambda t: _plan_files(_table_layer(t, "rex\tdog\tlive\tsynthetic\n", bom=True)),
                        lambda table: list(table) == ["rex"]),
    "a BOM prompt file: its first prompt has no BOM": (
        lambda t: read_prompt_file(_tsv(t, b"\xef\xbb\xbfa photo of a {}\nthe {} here\n", "p.txt")),
        lambda prompts: prompts == ["a photo of a {}", "the {} here"]),
    "a BOM config file": (lambda t: _plan_files(_tsv(t, b"\xef\xbb\xbf" + DEFAULT.read_bytes(), "c.yaml")),
                          lambda table: "plush_bear" in table),
}


@pytest.mark.parametrize("case", list(COLLISION_CASES))
def test_colliding_names_and_keys_are_refused_and_byte_order_marks_skipped(tmp_path, case):
    action, expected = COLLISION_CASES[case]
    if callable(expected):
        assert expected(action(tmp_path))
        return
    with pytest.raises(DtiError) as raised:
        action(tmp_path)
    message = str(raised.value)
    assert expected in message and "\n" not in message, message

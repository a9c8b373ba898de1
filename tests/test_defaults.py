"""One home per default: the settings dataclasses (dti.train TrainSettings, dti.sample SampleSettings,
dti.speedups Speedups). config/schema.yaml repeats their defaults (Snakemake fills them into the config, so
the workflow runs with the schema's copy) and the flags of `dti train` / `dti sample` take theirs from the
dataclasses (dti.cli.default_of). These tests compare the real values, so neither copy can drift.

Every schema `default:` must be accounted for: mapped to a dataclass field, compared with the fallback of
the library code that reads the key (the analyses, the tables), or listed with the reason it has no other
home. A new default, or a new flag of `dti train` / `dti sample`, fails here until someone says which."""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dti.cli import build_parser, default_of
from dti.methods import HYPER_PARAMETERS
from dti.sample import SampleSettings
from dti.speedups import Speedups
from dti.train import TrainSettings

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "config" / "schema.yaml"
SETTINGS = {TrainSettings: "dti.train", SampleSettings: "dti.sample", Speedups: "dti.speedups"}


def field_default(settings: type, name: str):
    """The dataclass's own default of a field (default_factory called), as the library builds it."""
    field = {f.name: f for f in dataclasses.fields(settings)}[name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    assert field.default is not dataclasses.MISSING, f"{settings.__name__}.{name} has no default"
    return field.default


def same(a, b) -> bool:
    """Equal, and neither a bool standing in for a number (False == 0 in Python, not in a config)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool) and (a is None) == (b is None)


def schema_defaults(node, path: tuple[str, ...] = ()) -> dict[str, object]:
    """{path: default} of every node of the schema that declares one. A path joins property names with
    dots; `definitions.NAME` for a definition, `*` for additionalProperties, `[]` for items; the branches
    of oneOf/anyOf/allOf share their parent's path. References ($ref) are not followed: the definition
    they point at is walked where it is defined."""
    found = {}
    if not isinstance(node, dict):
        return found
    if "default" in node and path:
        found[".".join(path)] = node["default"]
    for key, child in (node.get("definitions") or {}).items():
        found |= schema_defaults(child, (*path, "definitions", key))
    for key, child in (node.get("properties") or {}).items():
        found |= schema_defaults(child, (*path, key))
    if isinstance(node.get("additionalProperties"), dict):
        found |= schema_defaults(node["additionalProperties"], (*path, "*"))
    if isinstance(node.get("items"), dict):
        found |= schema_defaults(node["items"], (*path, "[]"))
    for key in ("oneOf", "anyOf", "allOf"):
        for child in node.get(key) or []:
            found |= schema_defaults(child, path)
    return found


def _speedups(value: dict) -> Speedups:
    return Speedups(**value)  # `speedups: {}`: every switch at its own default


def _placeholder(template: str) -> str:
    # The workflow's placeholder is a template for many subjects; with the name `subject` in it, it must be
    # the one-subject placeholder of TrainSettings.
    return template.replace("{subject}", "subject")


# schema path -> (settings dataclass, field, what turns the schema's value into the field's).
SCHEMA_FIELDS: dict[str, tuple[type, str, object]] = {
    **{f"definitions.train.{key}": (TrainSettings, key, None) for key in (
        "resolution", "steps", "batch_size", "grad_accum", "save_every", "mixed_precision", "zero_pad")},
    "definitions.train.speedups": (TrainSettings, "speedups", _speedups),
    **{f"definitions.sample.{key}": (SampleSettings, key, None) for key in (
        "steps", "guidance_scale", "resolution", "width", "batch_size", "vae_dtype", "png_workers")},
    "definitions.sample.speedups": (SampleSettings, "speedups", _speedups),
    **{f"definitions.speedups.{f.name}": (Speedups, f.name, None) for f in dataclasses.fields(Speedups)},
    "training.seed": (TrainSettings, "seed", None),
    "training.placeholder": (TrainSettings, "placeholder", _placeholder),
}


# Keys without a dataclass that library code reads with a fallback of its own: schema path -> a function of
# the schema's default that is true when the code, given that value, does what it does without the key.
def _build_tables_default(name: str):
    from dti.tables import build_tables

    return lambda value: same(value, inspect.signature(build_tables).parameters[name].default)


def _interpolation_default(key: str):
    def check(value) -> bool:
        from dti.analysis.interpolation import parse_interpolation

        subjects, methods = ["bear", "cat"], ["dti", "ti"]
        without = parse_interpolation({}, subjects, methods)
        return without == parse_interpolation({key: value}, subjects, methods)
    return check


def _sweep_default(key: str):
    def check(value) -> bool:
        from dti.analysis.magnitude import check_sweep

        return check_sweep({}) == check_sweep({key: value})
    return check


def _mechanism_default(key: str):
    def check(value) -> bool:
        from dti.analysis.mechanism import check_mechanism

        given = value
        for part in reversed(key.split(".")):  # "probe.steps" -> {"probe": {"steps": value}}
            given = {part: given}
        return check_mechanism({}) == check_mechanism(given)
    return check


def _report_grid_default(key: str):
    def check(value) -> bool:
        # rules/common_analyses.smk falls back to a dict of its own (GRID = {...literals..., **config}).
        text = (REPO / "rules" / "common_analyses.smk").read_text()
        match = re.search(r"^GRID = (\{[^*]*?),\s*\*\*", text, re.M)
        assert match, "rules/common_analyses.smk: no `GRID = {...literals..., **...}` line to compare with"
        return same(value, ast.literal_eval(match[1] + "}")[key])
    return check


CODE_DEFAULTS = {
    **{f"aggregate.{key}": _build_tables_default(key) for key in (
        "n_boot", "seed", "summary_prompt_set", "summary_step")},
    **{f"interpolation.{key}": _interpolation_default(key) for key in (
        "pairs", "methods", "t", "prompts", "seeds", "neutral")},
    **{f"analysis.magnitude.{key}": _sweep_default(key) for key in ("scales", "prompts", "seeds")},
    **{f"report.grid.{key}": _report_grid_default(key) for key in ("prompts", "seeds", "thumb")},
    **{f"analysis.mechanism.{key}": _mechanism_default(key) for key in (
        "scales", "prompts", "probe.steps", "probe.batch_size", "probe.seed", "directions.sample",
        "directions.nearest", "attention.subjects", "attention.prompts", "attention.scales", "attention.seeds")},
}

# Schema defaults with no other home, and why.
_WORKFLOW = "workflow-only: the rules read it from the validated config (Snakemake fills it from the schema)"
NO_OTHER_HOME = {
    "container": _WORKFLOW,
    "only_backbones": _WORKFLOW,
    "synthetic.n_images": _WORKFLOW,
    "synthetic.size": _WORKFLOW,
    "synthetic.seed": _WORKFLOW,
    "data.dreambooth": _WORKFLOW,
    "data.images_dir": _WORKFLOW,
    "data.dti_prompts": _WORKFLOW,
    "data.reference_masks": _WORKFLOW,
    "backbones.*.revision": _WORKFLOW + " (null: the model's default branch)",
    "prompt_limit": _WORKFLOW,
    "seeds": _WORKFLOW + " (the benchmark's seeds; `dti sample --seeds` is a command's own choice)",
    "eval_steps": _WORKFLOW + " (null: each backbone's last step, dti.benchmark_config.eval_steps)",
    "interpolation.backbones": _WORKFLOW + " (null: all, dti.analysis.pick_backbones)",
    "analysis.magnitude.enabled": _WORKFLOW,
    "analysis.magnitude.backbones": _WORKFLOW + " (null: all, dti.analysis.pick_backbones)",
    "analysis.mechanism.enabled": _WORKFLOW,
    "analysis.mechanism.backbones": _WORKFLOW + " (null: all, dti.analysis.pick_backbones)",
    "backbones.*.only_methods": _WORKFLOW + " (null: every global method, dti.benchmark_config.backbone_methods)",
    "definitions.metric.enabled": "a metric is on unless `enabled: false` (dti.metrics.spec, "
                                  "dti.analysis.fidelity): a switch, no settings field",
}


def check_schema(schema: dict) -> list[str]:
    """Every schema default against its home; one line per problem (empty: all agree)."""
    problems = []
    for path, value in schema_defaults(schema).items():
        if path in SCHEMA_FIELDS:
            settings, name, convert = SCHEMA_FIELDS[path]
            expected = field_default(settings, name)
            try:
                got = convert(value) if convert else value
            except Exception as exc:  # e.g. a key Speedups does not have
                problems.append(f"{path}: default {value!r} makes no {settings.__name__}.{name}: {exc}")
                continue
            if not same(got, expected):
                problems.append(f"{path}: schema {value!r}, {settings.__name__}.{name} = {expected!r}")
        elif path in CODE_DEFAULTS:
            if not CODE_DEFAULTS[path](value):
                problems.append(f"{path}: schema default {value!r} is not what the code does without the key")
        elif path in NO_OTHER_HOME:
            continue
        elif value != {}:  # `{}` on a section: each of its keys at its own default, checked one by one
            problems.append(f"{path}: default {value!r} maps to no dataclass field; map it in tests/"
                            "test_defaults.py, or list it in NO_OTHER_HOME with the reason")
    return problems


@pytest.fixture(scope="module")
def schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def test_every_schema_default_agrees_with_its_home(schema):
    assert check_schema(schema) == []


def test_the_mapping_names_only_schema_defaults(schema):
    """An entry whose schema default was removed or renamed would check nothing: it goes too."""
    found = schema_defaults(schema)
    assert len(found) > 40  # the walk reaches the nested sections, not just the top level
    stale = (set(SCHEMA_FIELDS) | set(CODE_DEFAULTS) | set(NO_OTHER_HOME)) - set(found)
    assert not stale


def test_a_schema_default_that_drifts_fails(schema):
    """The check compares values: a changed default, a bool for a number, an unmapped key all show up."""
    doctored = copy.deepcopy(schema)
    train = doctored["definitions"]["train"]["properties"]
    train["steps"]["default"] += 1
    train["zero_pad"]["default"] = 0
    doctored["definitions"]["speedups"]["properties"]["attention"]["default"] = "math"
    top = doctored["properties"]
    top["interpolation"]["properties"]["neutral"]["default"] = "object"
    top["report"]["properties"]["grid"]["properties"]["thumb"]["default"] = 64
    top["brand_new"] = {"type": "integer", "default": 3}
    problems = check_schema(doctored)
    for key in ("definitions.train.steps", "definitions.train.zero_pad", "definitions.speedups.attention",
                "interpolation.neutral", "report.grid.thumb", "brand_new"):
        assert any(p.startswith(f"{key}:") for p in problems), (key, problems)
    assert len(problems) == 6, problems


# --- the command's flags ----------------------------------------------------------------------------------
# dest -> (field, what turns the flag's default into the field's) where the two differ in name or sense.
CLI_FIELDS = {
    "train": (TrainSettings, {"no_latent_cache": ("latent_cache", lambda off: not off)}),
    "sample": (SampleSettings, {}),
}
# Flags of a settings field whose default deliberately is not the dataclass's, and why.
CLI_EXCEPTIONS = {
    ("train", "initializer"): "required: the words a token starts from are the subject's; TrainSettings' "
                              "'object' would start every subject from the same place",
    ("train", "name"): "None, worked out by cmd_train from the --out folder (METHOD-FOLDER), not from the "
                       "placeholder as TrainSettings does: runs that share the default placeholder differ",
}
# Flags that set no settings field: the model to load, where files are, and the hyper-parameters, whose
# None means "not given" (TrainSettings.hyper_parameters holds overrides; dti.methods the published values).
NOT_SETTINGS = {"help", "model", "family", "revision", "device", "dtype", "quiet", "images", "out", "embeds",
                "prompt", "seeds", "rescale_to", *HYPER_PARAMETERS}


def subcommand(name: str) -> argparse.ArgumentParser:
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[name]


def check_flags(command: str, parser: argparse.ArgumentParser) -> list[str]:
    settings, renamed = CLI_FIELDS[command]
    fields = {f.name for f in dataclasses.fields(settings)}
    problems = []
    for action in parser._actions:
        dest = action.dest
        if (command, dest) in CLI_EXCEPTIONS:
            continue
        if dest in renamed:
            name, convert = renamed[dest]
        elif dest in fields:
            name, convert = dest, None
        else:
            if dest not in NOT_SETTINGS:
                problems.append(f"dti {command} {action.option_strings}: no settings field; map it in "
                                "tests/test_defaults.py, or list it in NOT_SETTINGS")
            continue
        value = convert(action.default) if convert else action.default
        if not same(value, field_default(settings, name)):
            problems.append(f"dti {command} {'/'.join(action.option_strings)}: default {action.default!r}, "
                            f"{settings.__name__}.{name} = {field_default(settings, name)!r}")
    return problems


@pytest.mark.parametrize("command", sorted(CLI_FIELDS))
def test_every_flag_default_is_the_dataclasss(command):
    parser = subcommand(command)
    assert check_flags(command, parser) == []
    dests = {a.dest for a in parser._actions}
    assert {d for c, d in CLI_EXCEPTIONS if c == command} <= dests  # no stale exception


def test_a_flag_that_drifts_fails():
    parser = subcommand("train")
    for action in parser._actions:
        if action.dest in ("steps", "no_latent_cache"):
            action.default = 401 if action.dest == "steps" else True
    parser.add_argument("--brand-new", default=1)
    problems = check_flags("train", parser)
    assert len(problems) == 3 and all(any(f in p for p in problems) for f in ("--steps", "--no-latent-cache",
                                                                               "--brand-new")), problems


def test_the_exceptions_differ_on_purpose():
    """Each exception is one: the flag really departs from the dataclass (else it should simply follow it)."""
    parser = subcommand("train")
    flags = {a.dest: a for a in parser._actions}
    assert flags["initializer"].required and field_default(TrainSettings, "initializer")
    assert flags["name"].default is None and "--out" in flags["name"].help


# --- dti.cli.default_of -----------------------------------------------------------------------------------
@pytest.mark.parametrize("settings", list(SETTINGS), ids=lambda s: s.__name__)
def test_default_of_reads_what_the_dataclass_holds(settings):
    """default_of reads literal defaults from the source (no torch import): for every field, literal or
    default_factory, it gives what dataclasses.fields gives."""
    for field in dataclasses.fields(settings):
        got = default_of(SETTINGS[settings], settings.__name__, field.name)
        assert same(got, field_default(settings, field.name)), field.name


def test_default_of_refuses_an_unknown_field():
    with pytest.raises(LookupError, match="no field"):
        default_of("dti.train", "TrainSettings", "no_such_setting")


def test_building_the_parser_imports_no_torch():
    """Why default_of reads the source: `dti --help` and a mistyped flag stay free of torch's import time."""
    code = "import sys; from dti.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"

# Subjects, methods and backbones from the config; wildcard constraints built from them; the helpers
# the rules call. Every job receives only its own subject's, backbone's and method's settings through
# params. Per-subject outputs live in results/{backbone}/{method}/{subject}/; what depends on the config as
# a whole (tables, analyses, report files) in the run's own folder, results/runs/{run_name}/ (run_path).
import functools
import os
import re
from pathlib import Path

import dti
from dti.families import family_names
from dti.benchmark_config import (
    backbone_methods,
    check_config,
    enabled_backbones,
    eval_steps,
    initializers,
    prompt_set_key,
    run_dir,
    subject_rows,
    summary_steps,
    trained_methods,
)
from dti.benchmark_config import train_settings as train_settings_for
from dti.dti_prompts import is_dti_prompt_set
from dti.dti_prompts import reference as dti_prompt_reference
from dti.errors import DtiError
from dti.images import IMAGE_SUFFIXES
from dti.methods import get_method
from dti.metrics.spec import tiny_families
from dti.planning import check_dti_prompts, check_prompt_sets, summary_prompt_set, uses_dti_prompts
from dti.prompts import DEFAULT_PROMPTS_DIR, load_prompt_set
from dti.subject_schema import subject_problem
from dti.tables import table_names
from dti.text_windows import check_text_windows, prompt_set_files

PROMPTS_DIR = DEFAULT_PROMPTS_DIR  # the prompt sets the library ships (src/dti/data/prompts), one home
CODE_VERSION = dti.__version__
# Every rule's software with `--sdm conda`: the pinned lock as a conda environment (a path relative to
# rules/; docs/environments.md). Without --sdm conda, jobs run in the environment Snakemake runs in.
DTI_ENV = "../workflow/envs/dti.yaml"


def canonical(value):
    """Settings with dict keys sorted, recursively: reordering keys in a config file is not a change, so
    it must not trigger Snakemake's params rerun (it compares params as written)."""
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def _config_error(message):
    raise WorkflowError(f"config error: {message}")


def _subject_rows():
    """The subjects, each valid against src/dti/data/subject.schema.yaml: the inline list was validated
    with the config; a TSV's rows are validated here, one by one, so the error names the row.
    (dti.subject_schema validates with the same schema, read once: Snakemake's validate would read it again
    for every row.)"""
    rows = subject_rows(config, workflow.basedir)
    if config.get("subject_table"):
        for where, row in rows:
            problem = subject_problem(row)
            if problem is not None:
                _config_error(f"{where}: {problem}")
    return rows


try:  # the subject table, names, per-method and per-backbone settings, prompt sets, metrics, model families
    SUBJECTS = check_config(config, _subject_rows())
    BACKBONES = enabled_backbones(config)  # only_backbones, or all
    # {backbone: {method: hyper-parameters}}: the global `methods` with each backbone's own entries merged in.
    BACKBONE_METHODS = {b: backbone_methods(config, b) for b in BACKBONES}
    EVAL_STEPS = {b: eval_steps(config, b) for b in BACKBONES}
    INITIALIZERS = initializers(config, SUBJECTS)  # {backbone: {trained method: {subject: words}}}
    RUN_DIR = run_dir(config)
    TRAIN_SETTINGS = {  # {backbone: {trained method: its train settings}}: zero_pad can differ per method
        b: {m: train_settings_for(config, b, m) for m in trained_methods(config["methods"])}
        for b in BACKBONES
    }
except DtiError as exc:
    _config_error(str(exc))
METHODS = config["methods"]  # the methods that run: on every backbone, unless its only_methods names fewer
PROMPT_SETS = config["prompt_sets"]
SEEDS = config["seeds"]

# The DTI authors' sets come from their pinned prompts.py: checked here when data.dti_prompts names a
# local copy, otherwise downloaded and checked by fetch_dti_prompts on the login node.
USES_DTI_PROMPTS = uses_dti_prompts(PROMPT_SETS)
try:  # fail at planning time, naming the file, rather than on a GPU node (dti.planning)
    check_dti_prompts(PROMPT_SETS, config["data"].get("dti_prompts"))
    check_prompt_sets(SUBJECTS, PROMPT_SETS, config["data"].get("images_dir"), PROMPTS_DIR)
except DtiError as exc:
    _config_error(str(exc))
try:  # prompts the text encoders would cut, where a backbone's tokenizer is on this machine (dti.text_windows)
    check_text_windows(
        BACKBONES,
        SUBJECTS,
        INITIALIZERS,
        TRAIN_SETTINGS,
        prompt_set_files(
            PROMPT_SETS,
            [s["kind"] for s in SUBJECTS.values()],
            PROMPTS_DIR,
            config.get("prompt_limit"),
            skip=is_dti_prompt_set,
        ),
        config["training"]["placeholder"],
    )
except DtiError as exc:
    _config_error(str(exc))


# The report's sections in the README's order. Snakemake's report lists its categories sorted by name, so
# each name starts with its place.
REPORT_SECTIONS = {
    name: f"{place}. {name}"
    for place, name in enumerate(
        ["Tables", "Samples", "Interpolation", "Norms and directions", "Checkpoints", "Mechanism"], 1
    )
}


def run_path(path):
    """`path` in this config's own folder, results/runs/{run_name}/: the outputs that depend on the config
    as a whole (tables, analyses, report files), so two configs in one working folder keep theirs apart."""
    return f"{RUN_DIR}/{path}"


try:  # the headline tables' prompt set, and checkpoint per backbone (summary_step, or each one's last)
    SUMMARY = {
        "prompt_set": summary_prompt_set(PROMPT_SETS, config["aggregate"].get("summary_prompt_set")),
        "step": summary_steps(config),
    }
except DtiError as exc:
    _config_error(str(exc))

TRAINED_METHODS = trained_methods(METHODS)


def _alternatives(names):
    return "|".join(re.escape(n) for n in sorted(names))


wildcard_constraints:
    subject=_alternatives(SUBJECTS),
    backbone=_alternatives(BACKBONES),
    method=_alternatives(set(METHODS) | set(TRAINED_METHODS)),
    family=_alternatives(family_names()),
    step=r"\d+",


# --- data -----------------------------------------------------------------------------------------
def synthetic_images(subject):
    n = config["synthetic"]["n_images"]
    return [f"resources/raw/{subject}/{i:02d}.png" for i in range(n)]


def dreambooth_dir():
    return config["data"].get("dreambooth") or "resources/dreambooth"


@functools.lru_cache(maxsize=None)
def _dreambooth_manifest():
    """The pinned DreamBooth file list, read once per planning (every subject's input function asks)."""
    from dti.dreambooth import read_manifest

    return tuple(read_manifest())


def dreambooth_files(subject):
    return [
        str(Path(dreambooth_dir()) / e.path)
        for e in _dreambooth_manifest()
        if e.path.startswith(f"{subject}/")
    ]


def folder_images(subject):
    folder = Path(config["data"]["images_dir"]) / subject
    files = sorted(
        p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    return [str(p) for p in files] or [str(folder / "no-images-found")]  # a missing input names the folder


def raw_images(wildcards):
    source = SUBJECTS[wildcards.subject]["source"]
    if source == "synthetic":
        return synthetic_images(wildcards.subject)
    if source == "dreambooth":
        return dreambooth_files(wildcards.subject)
    return folder_images(wildcards.subject)


def dataset_marker(wildcards):
    return ["resources/dreambooth.json"] if SUBJECTS[wildcards.subject]["source"] == "dreambooth" else []


def subject_json(wildcards):
    return f"resources/subjects/{wildcards.subject}/subject.json"


# --- models and methods ---------------------------------------------------------------------------
def model_json(wildcards):
    return f"resources/models/{wildcards.backbone}.json"


def tiny_model_dir(wildcards):
    spec = BACKBONES[wildcards.backbone]
    return [f"resources/models/tiny/{spec['family']}"] if spec["model"] == "tiny" else []


def method_hp(wildcards):
    """The method's hyper-parameters on this backbone (global, with the backbone's own merged in): a
    change on one backbone reruns only that backbone's jobs."""
    return canonical(BACKBONE_METHODS[wildcards.backbone].get(wildcards.method) or {})


def initializer(wildcards):
    """The words this (backbone, trained method, subject) starts from: the subject field the backbone's
    `initializer_from` names for the method (default: the subject's initializer, its class noun)."""
    return INITIALIZERS[wildcards.backbone][wildcards.method][wildcards.subject]


def train_settings(wildcards):
    return canonical(TRAIN_SETTINGS[wildcards.backbone][wildcards.method])


def sample_settings(wildcards):
    return canonical(BACKBONES[wildcards.backbone].get("sample", {}))


METRICS = canonical(config["metrics"])
# Tiny random metric models (`model: tiny`), built offline by the tiny_metric_models rule.
TINY_METRICS = {key: f"resources/metrics/tiny/{key}" for key in tiny_families(METRICS)}


@functools.lru_cache(maxsize=None)
def _mask_files(subject):
    root = config["data"].get("reference_masks")
    return sorted(str(p) for p in (Path(root) / subject).glob("*.png")) if root else []


def reference_masks(wildcards):
    """The subject's mask files (inputs, so a changed mask rescores); which one each reference needs is
    checked by the score job, which names a missing one."""
    return _mask_files(wildcards.subject)


def mask_dir(wildcards):
    root = config["data"].get("reference_masks")
    return str(Path(root) / wildcards.subject) if root else None


def placeholder(wildcards):
    return config["training"]["placeholder"].replace("{subject}", wildcards.subject)


def train_dir(backbone, method, subject):
    """Where a method's embeddings live; evaluation-time variants reuse the method they were trained as."""
    trained = get_method(method).trained_as or method
    return f"results/{backbone}/{trained}/{subject}"


def start_token(wildcards):
    """A second stage's start (Method.starts_from, e.g. core_unet after core): the final token of the run it
    continues, on the same backbone and subject, which Snakemake trains first; nothing for other methods."""
    first = get_method(wildcards.method).starts_from
    if first is None:
        return []
    return os.path.join(train_dir(wildcards.backbone, first, wildcards.subject), "learned_embeds.safetensors")


def trained_run(wildcards):
    return os.path.join(train_dir(wildcards.backbone, wildcards.method, wildcards.subject), "run.json")


def rescale_to(wildcards):
    if not get_method(wildcards.method).rescale_to_magnitude:
        return None
    return BACKBONE_METHODS[wildcards.backbone][wildcards.method].get("magnitude", "mean")


def prompt_sets_for(wildcards):
    """{prompt set: templates} for this subject's kind (DreamBooth has object and live lists). An authors'
    set is a reference (name, kind, limit, pinned sha256) that the job resolves from dti_prompts.json."""
    limit = config.get("prompt_limit")
    kind = SUBJECTS[wildcards.subject]["kind"]
    sets = {}
    for name in PROMPT_SETS:
        if is_dti_prompt_set(name):
            sets[name] = dti_prompt_reference(name, kind, limit)
            continue
        templates = load_prompt_set(name, kind, PROMPTS_DIR)
        sets[prompt_set_key(name)] = templates[:limit] if limit else templates
    return sets


def dti_prompts_file(wildcards):
    return ["resources/dti_prompts.json"] if USES_DTI_PROMPTS else []


# --- targets --------------------------------------------------------------------------------------
def score_files():
    return [
        f"results/{b}/{m}/{s}/scores/step-{n}.parquet"
        for b in BACKBONES
        for m in BACKBONE_METHODS[b]
        for s in SUBJECTS
        for n in EVAL_STEPS[b]
    ]


def run_records():
    return [
        {"path": f"{train_dir(b, m, s)}/run.json", "backbone": b, "method": m, "subject": s}
        for b in BACKBONES
        for m in trained_methods(BACKBONE_METHODS[b])
        for s in SUBJECTS
    ]


def table_files():
    return [run_path(f"tables/{name}.{ext}") for name in table_names(METHODS) for ext in ("parquet", "tex")]


def gpu_runtime(base_minutes):
    """Minutes of wall time; grows with each retry so a job killed at its time limit gets longer."""
    return lambda wildcards, attempt: base_minutes * attempt


def dreambooth_files_all():
    return [f"resources/dreambooth/{e.path}" for e in _dreambooth_manifest()]

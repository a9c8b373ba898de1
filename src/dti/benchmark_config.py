"""Checks of the benchmark configuration beyond what its JSON schemas express, made while planning, and
the per-backbone views the rules plan with.

config/schema.yaml checks keys, types and ranges, and src/dti/data/subject.schema.yaml each subject (the
entries of the inline `subjects` list with the config; the rows of a `subject_table` TSV, which
`subject_rows` reads, in rules/common.smk; read bounded: dti.yaml_safety). Here, before any job starts: every number
the schema lets through that no flag would take (dti.numbers: NaN, infinities, integers past 64 bits,
floats past float32, negative seeds), subject names that appear twice or differ only in case (backbones,
methods and prompt sets neither: one folder on a case-insensitive file system), an empty subject table,
one naming rule (dti.names) for every other name that becomes a path or a wildcard
(the run, backbones, methods, prompt sets), each method's own hyper-parameters (the global `methods` and,
merged over them, each backbone's `methods`), each backbone's checkpoints and the subject field its
tokens start from, `only_backbones`, that no two prompt sets share a name, that some metric is enabled,
photo file names that are text, and each backbone's family: a registered one (dti.families),
and the one the model's own model_index.json declares where the model is already on this machine.
Torch-free, so planning stays fast; every error is a DtiError naming the config key, file or value.

The views (`enabled_backbones`, `backbone_methods`, `eval_steps`, `initializers`) are what the rules
give each job, so a job receives only its own backbone's settings.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from dti.config_layers import merged, resolve_extends
from dti.errors import DtiError
from dti.families import check_family
from dti.methods import check_hyper_parameters, get_method
from dti.model_files import check_declared_family
from dti.names import check_name
from dti.numbers import check_numbers
from dti.yaml_safety import MAX_NODES, load_yaml, read_bounded

TABLE_COLUMNS = ("name", "class", "kind", "source")  # and, optionally, initializer and authors_initialization
# The subject fields a backbone's tokens can start from (`backbones.<name>.initializer_from`): the subject's
# `initializer` (its class noun unless given) or the DTI authors' `initialization` phrase.
INITIALIZER_FIELDS = ("initializer", "authors_initialization")
# The Snakefile's folder: the checkout dti is installed from (editable), for the workflow's helpers alone
# (configs' relative paths). The library's commands never use it: an installed wheel has no checkout.
WORKFLOW_DIR = Path(__file__).resolve().parents[2]
RUNS_DIR = "results/runs"  # results/runs/{run_name}/: one config's tables, analyses and report files
# results/{backbone}/ holds the per-subject outputs, so no backbone may take the runs' folder name.
RESERVED_BACKBONE_NAMES = ("runs",)
MAX_CELL_CHARS = 10_000  # of one subject table cell: a name is at most 100, a phrase a few words


def check_config(config: dict, subjects: list[tuple[str, dict]]) -> dict[str, dict]:
    """Check everything below; return the subject table {name: row} (initializer defaulting to the class).

    `subjects`: the subject rows (`subject_rows`), each already valid against the subject schema
    (dti.subject_schema).
    """
    table = subject_table(subjects, "subject_table" if config.get("subject_table") else "subjects")
    check_run_name(config)
    check_case_clashes(config["backbones"], "backbones")
    check_case_clashes(config["methods"], "methods")
    for key in config["backbones"]:
        check_name(key, "backbones: backbone name")
        if key.casefold() in RESERVED_BACKBONE_NAMES:
            raise DtiError(f"backbones: the name {key!r} is reserved ({RUNS_DIR}/ holds each run's tables); "
                           "rename the backbone")
    check_methods(config["methods"])
    for key in config["backbones"]:  # every backbone, also those only_backbones leaves out
        backbone_methods(config, key)
        eval_steps(config, key)
    for key, spec in enabled_backbones(config).items():  # a method defined for some families only (CoRe)
        for name in backbone_methods(config, key):
            try:
                get_method(name).check_family(spec["family"], f"backbones.{key}")
            except DtiError as err:
                raise DtiError(f"{err}; to run it on the other backbones, list the methods {key} runs in "
                               f"backbones.{key}.only_methods") from err
    # The hyper-parameters were checked as their flags check them (above); every other number of the config
    # as `dti`'s flags would take it: not NaN or infinite, within 64 bits or float32, seeds >= 0.
    check_numbers(config)
    initializers(config, table)
    check_prompt_set_names(config["prompt_sets"])
    check_metrics(config["metrics"])
    check_backbone_families(config["backbones"])
    placeholder = config.get("training", {}).get("placeholder", "<{subject}>")
    for name in table:
        token = placeholder.replace("{subject}", name)
        if not token.strip() or any(c.isspace() for c in token):
            raise DtiError(f"training.placeholder {placeholder!r} gives {token!r} for subject {name}; "
                           "a placeholder must be one word without spaces")
    images_dir = (config.get("data") or {}).get("images_dir")
    for name, row in table.items():
        if row["source"] == "folder" and images_dir:
            check_photo_names(Path(images_dir) / name)
    return table


def subject_rows(config: dict, basedir: str | os.PathLike) -> list[tuple[str, dict]]:
    """[(where, row)] of every subject: the inline `subjects` entries, or the rows of the `subject_table` TSV
    (a path relative to the working folder or to `basedir`, the workflow's folder) with empty cells left
    out. The rows are not checked here: the subject schema does that."""
    if not config.get("subject_table"):
        if not config.get("subjects"):
            raise DtiError("give either `subjects` (a list) or `subject_table` (a TSV path)")
        return [(f"subjects[{i}]", dict(row)) for i, row in enumerate(config["subjects"])]
    path = Path(config["subject_table"])
    if not path.is_absolute() and not path.is_file():
        path = Path(basedir) / path
    where = f"subject_table {path}"
    try:  # at most 10 MB (dti.yaml_safety), UTF-8 with or without a byte-order mark
        text = read_bounded(path, "subject table").decode("utf-8-sig")
    except FileNotFoundError:
        raise DtiError(f"subject_table: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DtiError(f"{where}: cannot read: {err}") from err
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t")
    rows, cells, header = [], 0, None
    try:
        header = reader.fieldnames or []
        for row in reader:
            cells += len(row)
            if cells > MAX_NODES:
                raise DtiError(f"{where}: more than {MAX_NODES} cells; a subject table holds far fewer")
            rows.append(dict(row))
    except csv.Error as err:
        if "field limit" in str(err):  # csv's own bound, 131072 characters
            at = 1 if header is None else len(rows) + 2  # the row being read (row 1 is the header)
            raise DtiError(f"{where} row {at}: a cell longer than {MAX_CELL_CHARS} characters, "
                           "the most a subject field may have") from None
        raise DtiError(f"{where}: cannot read: {err}") from err
    if any(len(c) > MAX_CELL_CHARS for c in header):
        raise DtiError(f"{where} row 1: a column name longer than {MAX_CELL_CHARS} characters")
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise DtiError(f"{where}: column {twice[0]!r} appears twice in the header (the last would silently win)")
    missing = [c for c in TABLE_COLUMNS if c not in header]
    if missing:
        raise DtiError(f"{where}: missing column(s) {missing}; it needs {list(TABLE_COLUMNS)} (tab-separated)")
    labelled = []
    for i, row in enumerate(rows):
        label = f"{where} row {i + 2}"  # row 1 is the header
        if None in row:
            raise DtiError(f"{label}: more cells than the header has columns")
        long = next((k for k, v in row.items() if v is not None and len(v) > MAX_CELL_CHARS), None)
        if long is not None:
            raise DtiError(f"{label}: the {long} cell has {len(row[long])} characters, more than the "
                           f"{MAX_CELL_CHARS} a subject field may have")
        labelled.append((label, {k: v for k, v in row.items() if v not in ("", None)}))
    return labelled


def subject_table(subjects: list[tuple[str, dict]], where: str) -> dict[str, dict]:
    """{name: row} from schema-valid rows: no name twice, at least one subject, initializer defaulting to
    the class noun."""
    if not subjects:
        raise DtiError(f"{where}: lists no subjects")
    table, folded = {}, {}
    for label, row in subjects:
        if row["name"] in table:
            raise DtiError(f"{label}: subject {row['name']!r} appears twice")
        other = folded.setdefault(row["name"].casefold(), row["name"])
        if other != row["name"]:
            raise DtiError(f"{label}: subjects {other!r} and {row['name']!r} differ only in case; on a "
                           "case-insensitive file system (macOS, Windows) their folders would be one; rename one")
        table[row["name"]] = {**row, "initializer": row.get("initializer", row["class"])}
    return table


def check_case_clashes(names, what: str) -> None:
    """Names that become folders must differ in more than case: on a case-insensitive file system (macOS,
    Windows) `Dog` and `dog` are one folder, and the second would overwrite the first's results."""
    folded: dict[str, str] = {}
    for name in names:
        other = folded.setdefault(str(name).casefold(), name)
        if other != name:
            raise DtiError(f"{what}: {other!r} and {name!r} differ only in case; on a case-insensitive file "
                           "system (macOS, Windows) their folders would be one; rename one")


def check_config_files(paths) -> None:
    """Read every config file as the workflow is given it (each --configfile, or the embedded default)
    bounded and strict (dti.yaml_safety): a file too large, expanding past its bound through YAML aliases,
    nested too deep or giving a key twice is a one-line error naming it, before anything walks the config.
    (Their `extends` bases are read the same way by dti.config_layers.)"""
    for path in paths:
        try:
            load_yaml(path)
        except FileNotFoundError:
            raise DtiError(f"config file {path}: not found") from None


def load_config_files(paths, basedir: str | os.PathLike = WORKFLOW_DIR) -> dict:
    """The config the workflow plans with for `snakemake --configfile A B ...`: the files merged in order as
    Snakemake merges them (a later file's keys win; mappings merge key by key, lists and values are
    replaced), then its `extends` chain merged in as the Snakefile does (dti.config_layers)."""
    config: dict = {}
    for path in paths:
        try:
            layer = load_yaml(path) or {}
        except FileNotFoundError:
            raise DtiError(f"config file {path}: cannot read: file not found") from None
        if not isinstance(layer, dict):
            raise DtiError(f"config file {path}: expected a mapping of keys, got {type(layer).__name__}")
        config = merged(config, layer)
    return resolve_extends(config, basedir)


def check_run_name(config: dict) -> str:
    """The run's name: the folder results/runs/{run_name}/ of this config's tables, analyses and report, so
    two configs run in one working folder never overwrite each other's."""
    name = config.get("run_name")
    if name is None:
        raise DtiError("run_name: missing; name this config's run (e.g. `run_name: my-run`): its tables and "
                       f"report go to {RUNS_DIR}/<run_name>/, apart from every other config's")
    return check_name(name, "run_name")


def run_dir(config: dict) -> str:
    """results/runs/{run_name}: where this config's tables, analyses and report files live."""
    return f"{RUNS_DIR}/{check_run_name(config)}"


def enabled_backbones(config: dict) -> dict[str, dict]:
    """{name: spec} of the backbones this run plans: `only_backbones` (each one of `backbones`; a layer such
    as config/paper-sdxl.yaml sets it), in the order of `backbones`; every one when it is null."""
    backbones = config["backbones"]
    only = config.get("only_backbones")
    if only is None:
        return dict(backbones)
    for i, name in enumerate(only):
        if name not in backbones:
            raise DtiError(f"only_backbones[{i}]: unknown backbone {name!r}; backbones: {sorted(backbones)}")
    return {name: spec for name, spec in backbones.items() if name in only}


def trained_methods(methods) -> list[str]:
    """The methods that train, for `methods`: an evaluation-time variant trains as the method it reuses."""
    return sorted({get_method(m).trained_as or m for m in methods})


def backbone_methods(config: dict, backbone: str) -> dict[str, dict]:
    """{method: hyper-parameters} of the methods that run on `backbone`: the global `methods` (or those of
    them its `only_methods` names, in the global order), each with the backbone's own `methods` entry for
    it merged over it, key by key. A name in either that is not a method running there is an error, as is
    a merged setting the method does not take."""
    methods = config["methods"]
    spec = config["backbones"][backbone]
    only = spec.get("only_methods")
    if only is not None:
        for i, name in enumerate(only):
            if name not in methods:
                raise DtiError(f"backbones.{backbone}.only_methods[{i}]: {name!r} is not one of `methods` "
                               f"({', '.join(methods)}); a backbone picks among the global methods")
        methods = {name: hp for name, hp in methods.items() if name in only}
    overrides = spec.get("methods") or {}
    where = f"backbones.{backbone}.methods"
    for name in overrides:
        if name not in methods:
            raise DtiError(f"{where}.{name}: {name!r} does not run on {backbone} ({', '.join(methods)}); a "
                           "backbone only changes the settings of the methods that run on it")
    settings = {name: {**(hp or {}), **(overrides.get(name) or {})} for name, hp in methods.items()}
    for name in settings:  # a second stage trains from its first stage's runs on the same backbone
        first = get_method(name).starts_from
        if first is not None and first not in settings:
            where = f"backbones.{backbone}.only_methods" if only is not None else "methods"
            raise DtiError(f"{where}: {name!r} continues the {first!r} runs of the same backbone; add {first!r} "
                           "beside it")
    for name in overrides:
        try:
            check_hyper_parameters(name, settings[name])
        except DtiError as err:
            raise DtiError(f"{where}.{name}: {err}") from err
    return settings


def eval_steps(config: dict, backbone: str) -> list[int]:
    """The training steps of `backbone` to sample and score: its own `eval_steps`, else the global one,
    else its last step. Each must be a step training saves, so no checkpoint is made up or retrained."""
    spec = config["backbones"][backbone]
    train = spec["train"]
    last, every = train["steps"], train["save_every"]
    key = f"backbones.{backbone}.eval_steps" if spec.get("eval_steps") else "eval_steps"
    steps = sorted(set(spec.get("eval_steps") or config.get("eval_steps") or [last]))
    for step in steps:
        if step > last or (step % every and step != last):
            raise DtiError(f"{key}: {step} is not a checkpoint of backbone {backbone} (training saves every "
                           f"{every} steps and the last step, {last})")
    return steps


def summary_steps(config: dict) -> dict[str, int]:
    """{backbone: the checkpoint of its headline tables} for the backbones this run plans:
    `aggregate.summary_step`, which every one of them must score, or else each one's last scored step."""
    wanted = (config.get("aggregate") or {}).get("summary_step")
    steps = {}
    for backbone in enabled_backbones(config):
        scored = eval_steps(config, backbone)
        if wanted is not None and wanted not in scored:
            raise DtiError(f"aggregate.summary_step: {wanted} is not among the steps scored for backbone "
                           f"{backbone} ({scored}); add it to its eval_steps, or leave summary_step null for "
                           "each backbone's last scored step")
        steps[backbone] = scored[-1] if wanted is None else wanted
    return steps


def initializer_field(config: dict, backbone: str, method: str) -> str:
    """The subject field `method`'s tokens start from on `backbone` (`backbones.<name>.initializer_from`:
    one field for every method, or {method: field} with `initializer` for the methods it leaves out); a
    second stage's is its first stage's, whose token it continues."""
    method = get_method(method).starts_from or method
    chosen = config["backbones"][backbone].get("initializer_from") or "initializer"
    if isinstance(chosen, dict):
        chosen = chosen.get(method) or "initializer"
    return chosen


def initializers(config: dict, subjects: dict[str, dict]) -> dict[str, dict[str, dict[str, str]]]:
    """{backbone: {trained method: {subject: initializer}}}: the words each training job starts from, for
    every backbone of the config (also those only_backbones leaves out)."""
    trained = trained_methods(config["methods"])
    planned = {}
    for backbone, spec in config["backbones"].items():
        where = f"backbones.{backbone}.initializer_from"
        chosen = spec.get("initializer_from") or "initializer"
        named = chosen if isinstance(chosen, dict) else {}
        for method in named:
            if method not in trained:
                raise DtiError(f"{where}.{method}: {method!r} is not a method this config trains "
                               f"({', '.join(trained)})")
            if first := get_method(method).starts_from:
                raise DtiError(f"{where}.{method}: {method!r} continues the token of {first!r} and starts from "
                               "its words; set that one")
        for field in [chosen] if isinstance(chosen, str) else list(named.values()):
            if field not in INITIALIZER_FIELDS:
                raise DtiError(f"{where}: unknown subject field {field!r}; one of {list(INITIALIZER_FIELDS)}")
        planned[backbone] = {}
        for method in trained:
            field = initializer_field(config, backbone, method)
            missing = [name for name, row in subjects.items() if not row.get(field)]
            if missing:
                raise DtiError(f"{where}: subject {missing[0]!r} has no {field} (it starts {method} tokens "
                               f"on {backbone}); give it in the subject table or choose `initializer`")
            planned[backbone][method] = {name: row[field] for name, row in subjects.items()}
    return planned


def train_settings(config: dict, backbone: str, method: str) -> dict:
    """The `train` settings of one (backbone, trained method) job: the backbone's, with `zero_pad` (true,
    false, or the list of methods it applies to, e.g. the authors' SANA runs pad DTI's prompts only)
    resolved to this method's true or false."""
    settings = dict(config["backbones"][backbone].get("train") or {})
    zero_pad = settings.get("zero_pad", False)
    if isinstance(zero_pad, list):
        trained = trained_methods(config["methods"])
        unknown = [m for m in zero_pad if m not in trained]
        if unknown:
            raise DtiError(f"backbones.{backbone}.train.zero_pad: {unknown[0]!r} is not a method this config "
                           f"trains ({', '.join(trained)})")
        settings["zero_pad"] = method in zero_pad
    return settings


def check_methods(methods: dict) -> None:
    """Every method is known, and takes every hyper-parameter given to it, each with a valid value."""
    for name, hp in methods.items():
        try:
            check_name(name, "method name")
            check_hyper_parameters(name, hp or {})
        except DtiError as err:
            raise DtiError(f"methods.{name}: {err}") from err


def prompt_set_key(name: str) -> str:
    """The name a prompt set's images are filed under: the file name up to its first dot
    (`complex`, `prompts/dreambooth.object.txt` -> `dreambooth`)."""
    return Path(name).name.split(".")[0]


def check_prompt_set_names(prompt_sets: list[str]) -> None:
    seen: dict[str, str] = {}
    for entry in prompt_sets:
        key = check_name(prompt_set_key(entry), f"prompt_sets: the set name (from {entry!r})")
        if key.casefold() in seen:  # samples/Complex/ and samples/complex/ are one folder on macOS and Windows
            raise DtiError(f"prompt_sets: {seen[key.casefold()]!r} and {entry!r} are both named {key!r} (their "
                           f"images would share samples/{key}/); rename one file")
        seen[key.casefold()] = entry


def check_metrics(metrics: dict) -> None:
    from dti.metrics.spec import metric_names

    if not metric_names(metrics):
        raise DtiError("metrics: every metric is disabled; enable at least one (the tables would be empty)")


def check_backbone_families(backbones: dict) -> None:
    """Each family is a registered one, and the one the model's model_index.json declares (where the model
    is already on this machine; a hub model is checked again once fetched)."""
    for key, spec in backbones.items():
        try:
            check_family(spec["family"])
            if spec["model"] == "tiny":
                continue
            check_declared_family(spec["model"], spec["family"], spec.get("revision"))
        except DtiError as err:
            raise DtiError(f"backbones.{key}.family: {err}") from err


def check_photo_names(folder: Path) -> None:
    """File names the workflow passes around must be text: one that is not valid UTF-8 cannot be written
    into a job's parameters or a log."""
    if not folder.is_dir():
        return  # the missing input is reported, naming the folder, when the subject is planned
    for entry in folder.iterdir():
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:
            raise DtiError(f"data.images_dir: {folder} holds a file whose name is not valid UTF-8 "
                           f"({ascii(entry.name)}); rename it") from None

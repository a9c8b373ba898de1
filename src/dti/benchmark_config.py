"""Checks of the benchmark configuration beyond what its JSON schemas express, made while planning.

config/schema.yaml checks keys, types and ranges, and config/subject.schema.yaml each subject (the entries
of the inline `subjects` list with the config; the rows of a `subject_table` TSV, which `subject_rows`
reads, in rules/common.smk). Here, before any job starts: subject names that appear twice, an empty
subject table, one naming rule (dti.names) for every other name that becomes a path or a wildcard
(backbones, methods, prompt sets), each method's own hyper-parameters, that no two prompt sets share a
name, that some metric is enabled, photo file names that are text, and each backbone's family: a
registered one (dti.backbones.registry), and the one the model's own model_index.json declares where the
model is already on this machine. Torch-free, so planning stays fast; every error is a DtiError naming the
config key, file or value.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from dti.backbones.registry import check_family
from dti.errors import DtiError
from dti.methods import check_hyper_parameters
from dti.model_files import check_declared_family
from dti.names import check_name

TABLE_COLUMNS = ("name", "class", "kind", "source")  # and, optionally, initializer


def check_config(config: dict, subjects: list[tuple[str, dict]]) -> dict[str, dict]:
    """Check everything below; return the subject table {name: row} (initializer defaulting to the class).

    `subjects`: the subject rows (`subject_rows`), each already valid against config/subject.schema.yaml.
    """
    table = subject_table(subjects, "subject_table" if config.get("subject_table") else "subjects")
    for key in config["backbones"]:
        check_name(key, "backbones: backbone name")
    check_methods(config["methods"])
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
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            rows = [dict(r) for r in reader]
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise DtiError(f"subject_table: file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DtiError(f"{where}: cannot read: {err}") from err
    missing = [c for c in TABLE_COLUMNS if c not in header]
    if missing:
        raise DtiError(f"{where}: missing column(s) {missing}; it needs {list(TABLE_COLUMNS)} (tab-separated)")
    labelled = []
    for i, row in enumerate(rows):
        label = f"{where} row {i + 2}"  # row 1 is the header
        if None in row:
            raise DtiError(f"{label}: more cells than the header has columns")
        labelled.append((label, {k: v for k, v in row.items() if v not in ("", None)}))
    return labelled


def subject_table(subjects: list[tuple[str, dict]], where: str) -> dict[str, dict]:
    """{name: row} from schema-valid rows: no name twice, at least one subject, initializer defaulting to
    the class noun."""
    if not subjects:
        raise DtiError(f"{where}: lists no subjects")
    table = {}
    for label, row in subjects:
        if row["name"] in table:
            raise DtiError(f"{label}: subject {row['name']!r} appears twice")
        table[row["name"]] = {**row, "initializer": row.get("initializer", row["class"])}
    return table


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
    (`complex`, `config/prompts/dreambooth.object.txt` -> `dreambooth`)."""
    return Path(name).name.split(".")[0]


def check_prompt_set_names(prompt_sets: list[str]) -> None:
    seen: dict[str, str] = {}
    for entry in prompt_sets:
        key = check_name(prompt_set_key(entry), f"prompt_sets: the set name (from {entry!r})")
        if key in seen:
            raise DtiError(f"prompt_sets: {seen[key]!r} and {entry!r} are both named {key!r} (their images "
                           f"would share samples/{key}/); rename one file")
        seen[key] = entry


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

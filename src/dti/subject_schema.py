"""One subject's schema (src/dti/data/subject.schema.yaml), shared by every place a subject is described.

The workflow validates the config's inline `subjects` list (through config/schema.yaml, which refers to
it) and each row of a `subject_table` TSV (rules/common.smk) with Snakemake's validator. Prepared subject
folders repeat name, class, kind and initializer in their subject.json; `check_subject` checks those
against the same schema with jsonschema, and `subject_problem` turns a violation into one line. The schema
ships with the library (dti.data) and holds the naming rule itself, so no file of the workflow is needed.
"""

from __future__ import annotations

import functools

from dti.data import DATA_DIR
from dti.errors import DtiError
from dti.names import name_problem

SUBJECT_SCHEMA = DATA_DIR / "subject.schema.yaml"
PREPARED_FIELDS = ("name", "class", "kind", "initializer")  # what subject.json repeats of a subject


@functools.cache
def _validator(fields: tuple[str, ...] | None):
    """A validator of the subject schema; with `fields`, of those fields only (all of them required)."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(SUBJECT_SCHEMA.read_text(encoding="utf-8"))
    if fields is not None:
        schema = {**schema, "properties": {k: schema["properties"][k] for k in fields}, "required": list(fields)}
    return jsonschema.Draft202012Validator(schema)


def subject_problem(row: dict, fields: tuple[str, ...] | None = None) -> str | None:
    """What is wrong with `row` as a subject, in one line naming the field and the value; None if nothing."""
    error = next(iter(_validator(fields).iter_errors(row)), None)
    if error is None:
        return None
    field = error.absolute_path[-1] if error.absolute_path else None
    if field == "name" and name_problem(error.instance):
        return f"subject name {error.instance!r} {name_problem(error.instance)}"
    if error.validator == "pattern":  # the only other patterns ask for a non-blank text
        return f"{field} must be a non-blank text, got {error.instance!r}"
    return f"{field}: {error.message}" if field is not None else error.message


def check_subject(fields: dict, where: str) -> None:
    """A DtiError naming `where` unless name, class, kind and initializer are valid as the schema says."""
    problem = subject_problem({k: fields[k] for k in PREPARED_FIELDS if k in fields}, PREPARED_FIELDS)
    if problem is not None:
        raise DtiError(f"{where}: {problem}")

"""One subject's schema (config/subject.schema.yaml), shared by every place a subject is described.

The workflow validates the config's inline `subjects` list (through config/schema.yaml, which refers to
it) and each row of a `subject_table` TSV (rules/common.smk) with Snakemake's validator. Prepared subject
folders repeat name, class, kind and initializer in their subject.json; `check_subject` checks those
against the same schema with jsonschema, and `subject_problem` turns a violation into one line.
"""

from __future__ import annotations

import functools
from pathlib import Path

from dti.errors import DtiError
from dti.names import name_problem

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
SUBJECT_SCHEMA = CONFIG_DIR / "subject.schema.yaml"
CONFIG_SCHEMA = CONFIG_DIR / "schema.yaml"  # holds the naming rule the subject schema refers to
PREPARED_FIELDS = ("name", "class", "kind", "initializer")  # what subject.json repeats of a subject


@functools.cache
def _validator(fields: tuple[str, ...] | None):
    """A validator of the subject schema; with `fields`, of those fields only (all of them required)."""
    import jsonschema
    import yaml
    from referencing import Registry, Resource

    schemas = {path.resolve().as_uri(): yaml.safe_load(path.read_text(encoding="utf-8"))
               for path in (CONFIG_SCHEMA, SUBJECT_SCHEMA)}
    registry = Registry().with_resources((uri, Resource.from_contents(s)) for uri, s in schemas.items())
    uri = SUBJECT_SCHEMA.resolve().as_uri()
    schema = {**schemas[uri], "$id": uri}  # relative references resolve beside the file
    if fields is not None:
        schema = {**schema, "properties": {k: schema["properties"][k] for k in fields}, "required": list(fields)}
    return jsonschema.Draft202012Validator(schema, registry=registry)


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

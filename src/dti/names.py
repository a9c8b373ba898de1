"""The one rule for every name that becomes a file or folder name or a workflow wildcard value.

Subjects, backbones, methods, prompt sets and exported file names all end up as a single path component
(`results/{backbone}/{method}/{subject}/...`, `{name}.safetensors`). A name that passes this rule can only
ever be one plain component: no separator, no `..`, no leading dot (hidden files), nothing a shell or
Snakemake's wildcard matching treats specially, and it is the same string on every file system.
"""

from __future__ import annotations

import re

from dti.errors import DtiError

# config/schema.yaml repeats this pattern (tests/test_bad_input.py checks they agree).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_LENGTH = 100  # far below every file system's 255-byte limit, with room for suffixes
_NAME = re.compile(NAME_PATTERN)


def name_problem(name: object) -> str | None:
    """Why `name` is not a safe name, or None if it is."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not _NAME.fullmatch(name):
        return "must be letters, digits, '_', '.' or '-', starting with a letter or digit"
    if len(name) > MAX_LENGTH:
        return f"must be at most {MAX_LENGTH} characters, got {len(name)}"
    return None


def safe_name(text: str, fallback: str = "embedding") -> str:
    """`text` made a safe name: each run of other characters becomes one "-" ("my bear" -> "my-bear")."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:MAX_LENGTH]
    return name if name_problem(name) is None else fallback


def check_name(name: object, what: str) -> str:
    """Return `name` if it is safe as one path component; else a DtiError naming `what` and the value."""
    problem = name_problem(name)
    if problem is not None:
        raise DtiError(f"{what} {name!r} {problem}")
    return name

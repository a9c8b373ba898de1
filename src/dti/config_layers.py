"""Config layers: a config may name the config it builds on (`extends: PATH`), so a variant of a protocol
(one backbone of the paper grid, the ablation grid) is a few lines over it rather than a copy, and still
runs with a single --configfile.

The layer is merged over its base as Snakemake merges several --configfile files: mappings key by key,
recursively; any other value (lists included) replaced whole. A base may extend another; a cycle, a
missing file or a base that is not a mapping is a one-line DtiError naming the file. Every base is read
bounded and strict (dti.yaml_safety: its size, its size with aliases expanded, its depth, a key given
twice), and so is the merged result.
"""

from __future__ import annotations

import os
from pathlib import Path

from dti.errors import DtiError
from dti.yaml_safety import check_tree, load_yaml

EXTENDS = "extends"


def merged(base: dict, layer: dict) -> dict:
    """`layer` over `base`: mappings merged key by key, everything else replaced."""
    out = dict(base)
    for key, value in layer.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _find(path: str, relative_to: list[Path]) -> Path:
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    for folder in relative_to:
        if (folder / candidate).is_file():
            return folder / candidate
    return Path(os.path.abspath(candidate))


def resolve_extends(config: dict, basedir: str | os.PathLike) -> dict:
    """`config` with its `extends` chain merged in (the key itself removed); `config` unchanged when it has
    none. A relative path is looked up in the working folder, then in `basedir` (the workflow's folder)."""
    seen: list[Path] = []
    result = dict(config)
    while EXTENDS in result:
        name = result.pop(EXTENDS)
        if not isinstance(name, str) or not name.strip():
            raise DtiError(f"{EXTENDS}: must be the path of a config file, got {name!r}")
        path = _find(name, [Path.cwd(), Path(basedir)])
        if path.resolve() in seen:
            raise DtiError(f"{EXTENDS}: {path} extends itself through {' -> '.join(map(str, seen))}")
        seen.append(path.resolve())
        try:
            base = load_yaml(path)
        except FileNotFoundError:
            raise DtiError(f"{EXTENDS}: config file not found: {name}") from None
        except DtiError as err:
            raise DtiError(f"{EXTENDS}: {err}") from err
        if not isinstance(base, dict):
            raise DtiError(f"{EXTENDS}: {path} is not a mapping of config keys")
        result = merged(base, result)
    check_tree(result, "the merged config")
    return result

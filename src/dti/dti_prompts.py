"""The DTI authors' evaluation prompt sets, read as data from their repository at a pinned commit.

The authors keep their prompt lists in a Python module (`src/dti/metrics/prompts.py` of
github.com/kunheek/dti, MIT licence). That file is fetched at one pinned commit, its sha256 checked, and
the lists are taken out of its syntax tree with `ast`: the file is never imported or executed, so
whatever else it contains cannot run here. Three of its sets become prompt sets of this project:

    dti_simple       SIMPLE        the authors' default: 41 object and 41 live prompts
    dti_complex_lv1  COMPLEX_LV1   16 + 16 longer compositional prompts
    dti_complex_lv2  COMPLEX_LV2   16 + 16 still longer ones

Each set has an object list and a live list, like DreamBooth's prompts. The extracted lists are stored
as JSON (`fetch_dti_prompts`), which is what sampling jobs read. The JSON also keeps the text of the
authors' file it was extracted from, so every job that reads it checks it again where it is used
(`read_extracted`): that text must still have the pinned sha256 and give exactly the stored lists, so a
prompt edited, added or removed by hand after the fetch is refused, never used.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from dti.errors import DtiError
from dti.io import check_target, output_root, write_json
from dti.prompts import check_template
from dti.terms import LIVE, OBJECT

REPOSITORY = "kunheek/dti"
COMMIT = "96a77a3406d6bdef82ddc9dc76c8f0b26669b5cc"
UPSTREAM_PATH = "src/dti/metrics/prompts.py"
URL = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/{UPSTREAM_PATH}"
SHA256 = "1b3529df0428ae5aecb0b57edff08176970bd9461866da30e4a50b2dbd4e3885"
SOURCE = f"github.com/{REPOSITORY}@{COMMIT}:{UPSTREAM_PATH}"

# Our prompt set name -> the variable the authors assign it to.
PROMPT_SETS = {"dti_simple": "SIMPLE", "dti_complex_lv1": "COMPLEX_LV1", "dti_complex_lv2": "COMPLEX_LV2"}
# Our subject kinds -> the keyword arguments of their SubjectPromptSet(...) call.
_KIND_FIELDS = {OBJECT: "object_prompts", LIVE: "live_prompts"}


def is_dti_prompt_set(name: object) -> bool:
    return isinstance(name, str) and name in PROMPT_SETS


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _string_list(node: ast.expr, where: str) -> list[str]:
    try:
        value = ast.literal_eval(node)  # literals only: a call or a name here is an error, never run
    except ValueError as err:
        raise DtiError(f"{where}: not a literal list of strings ({err})") from err
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise DtiError(f"{where}: expected a non-empty list of strings")
    return value


def _assignments(tree: ast.Module) -> dict[str, ast.expr]:
    """Top-level `NAME = value` statements of the module, by name."""
    found: dict[str, ast.expr] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            if isinstance(target, ast.Name):
                found[target.id] = statement.value
    return found


def parse_prompts_source(text: str, where: str) -> dict[str, dict[str, list[str]]]:
    """{our set name: {"object": templates, "live": templates}} from the text of the authors' prompts.py.

    Each set must be a top-level `NAME = SubjectPromptSet(object_prompts=[...], live_prompts=[...])` with
    literal string lists; anything else is a DtiError naming `where` and the variable.
    """
    try:
        tree = ast.parse(text, filename=where)
    except SyntaxError as err:
        raise DtiError(f"{where}: cannot parse as Python source: {err}") from err
    assigned = _assignments(tree)
    sets: dict[str, dict[str, list[str]]] = {}
    for name, variable in PROMPT_SETS.items():
        value = assigned.get(variable)
        if not isinstance(value, ast.Call):
            raise DtiError(f"{where}: prompt set {variable} (for {name}) not found: expected a top-level "
                           f"`{variable} = SubjectPromptSet(object_prompts=[...], live_prompts=[...])`")
        keywords = {k.arg: k.value for k in value.keywords if k.arg}
        lists = {}
        for kind, field in _KIND_FIELDS.items():
            if field not in keywords:
                raise DtiError(f"{where}: {variable} has no {field}=[...] list")
            templates = _string_list(keywords[field], f"{where}: {variable}.{field}")
            for i, template in enumerate(templates):
                check_template(template, f"{where}: {variable}.{field}[{i}]")
            duplicates = sorted({t for t in templates if templates.count(t) > 1})
            if duplicates:
                raise DtiError(f"{where}: {variable}.{field} repeats {duplicates}")
            lists[kind] = templates
        sets[name] = lists
    return sets


def verify_prompts_file(path: str | os.PathLike, sha256: str = SHA256) -> bytes:
    """The bytes of `path` if its sha256 is the pinned one; else a DtiError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DtiError(f"cannot read the DTI authors' prompt file {path}: {err}") from err
    actual = sha256_bytes(data)
    if actual != sha256:
        raise DtiError(f"{path}: checksum mismatch, expected sha256 {sha256} ({SOURCE}), got {actual}")
    return data


def _read_source(path: str | os.PathLike, sha256: str) -> tuple[str, dict[str, dict[str, list[str]]]]:
    """(text, sets) of a verified copy of the authors' prompts.py."""
    data = verify_prompts_file(path, sha256)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DtiError(f"{path}: not UTF-8 text: {err}") from err
    return text, parse_prompts_source(text, str(path))


def read_prompts_file(path: str | os.PathLike, sha256: str = SHA256) -> dict[str, dict[str, list[str]]]:
    """Verify a local copy of the authors' prompts.py and extract its prompt sets."""
    return _read_source(path, sha256)[1]


def _download(url: str, dest: Path) -> None:
    import urllib.request  # here, not at the top: the workflow imports this module to plan

    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as err:  # URLError, HTTPError and timeouts are OSErrors
        raise DtiError(f"cannot download the DTI authors' prompt file {url}: {err}") from err


def fetch_dti_prompts(out_json: str | os.PathLike, *, source: str | os.PathLike | None,
                      url: str = URL, sha256: str = SHA256) -> dict:
    """Verify a local copy (`source`) or download the pinned file, extract the sets, write `out_json`.

    The JSON holds {"source", "sha256", "source_text", "sets": {name: {"object": [...], "live": [...]}}}:
    the file's text (checked by `read_extracted` where the JSON is used) and the lists extracted from it. It
    is written only once the file has verified and parsed, atomically, never through a link (dti.io).
    """
    root = output_root(out_json)
    check_target(out_json, root=root)
    if source is not None:
        text, sets = _read_source(source, sha256)
    else:
        with tempfile.TemporaryDirectory(dir=Path(out_json).parent) as tmp:
            copy = Path(tmp) / "prompts.py"
            _download(url, copy)
            try:
                text, sets = _read_source(copy, sha256)
            except DtiError as err:
                raise DtiError(f"downloaded from {url}: {err}") from err
    record = {"source": SOURCE, "sha256": sha256, "source_text": text, "sets": sets}
    write_json(out_json, record, root=root)
    return record


def reference(name: str, kind: str, limit: int | None = None) -> dict:
    """What a sampling job is told about an authors' set: enough to find it and to notice a changed pin."""
    if not is_dti_prompt_set(name):
        raise DtiError(f"unknown DTI authors' prompt set {name!r}; known: {sorted(PROMPT_SETS)}")
    return {"dti_prompt_set": name, "kind": kind, "limit": limit, "sha256": SHA256}


_RECREATE = "delete it and rerun (fetch_dti_prompts extracts it again)"


def read_extracted(path: str | os.PathLike, sha256: str = SHA256) -> dict[str, dict[str, list[str]]]:
    """The prompt sets of the JSON `fetch_dti_prompts` wrote, checked where they are used: it must record
    the pinned `sha256`, hold the text of the authors' file with that very sha256, and its lists must be
    exactly those that text gives (extracted again here: a few milliseconds). Anything else (a prompt edited,
    added or removed by hand, a set dropped, a truncated file, another pin, an older version's JSON) is a
    one-line DtiError naming the file and how to recreate it."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DtiError(f"cannot read the extracted DTI prompts {path} ({err}); {_RECREATE}") from err
    if not isinstance(record, dict):
        raise DtiError(f"{path}: not the extracted DTI prompts (a JSON object); {_RECREATE}")
    if record.get("sha256") != sha256:
        raise DtiError(f"{path}: extracted from sha256 {record.get('sha256')}, but the authors' file is pinned to "
                       f"{sha256} ({SOURCE}); {_RECREATE}")
    text = record.get("source_text")
    if not isinstance(text, str):
        raise DtiError(f"{path}: holds no text of the authors' file to check its lists against (an older "
                       f"version wrote it); {_RECREATE}")
    actual = sha256_bytes(text.encode("utf-8"))
    if actual != sha256:
        raise DtiError(f"{path}: its copy of the authors' file has sha256 {actual}, not the pinned {sha256} "
                       f"(edited after the fetch); {_RECREATE}")
    sets = parse_prompts_source(text, f"{path} (its copy of {SOURCE})")
    if record.get("sets") != sets:
        stored = record["sets"] if isinstance(record.get("sets"), dict) else {}
        changed = sorted(n for n in {*sets, *stored} if stored.get(n) != sets.get(n))
        raise DtiError(f"{path}: the prompt lists of {', '.join(changed) or 'its sets'} differ from those its "
                       f"copy of the pinned file gives (edited after the fetch); {_RECREATE}")
    return sets


def resolve_reference(ref: dict, prompts_json: str | os.PathLike | None) -> list[str]:
    """The templates a `reference(...)` stands for, read from the JSON `fetch_dti_prompts` wrote (checked
    against the pinned file: read_extracted)."""
    name = ref["dti_prompt_set"]
    if prompts_json is None:
        raise DtiError(f"prompt set {name}: no extracted DTI prompt file given (the fetch_dti_prompts output)")
    sets = read_extracted(prompts_json, ref["sha256"])
    if name not in sets:
        raise DtiError(f"{prompts_json}: no prompt set {name}; {_RECREATE}")
    templates = list(sets[name][ref["kind"]])
    return templates[: ref["limit"]] if ref["limit"] else templates


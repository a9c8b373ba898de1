"""The DreamBooth dataset: its pinned release, checksum verification, and its class and prompt file.

The dataset is github.com/google/dreambooth, folder `dataset/`, at a pinned commit. Every file of that
folder is listed with its sha256 and size in `src/dti/data/dreambooth_manifest.tsv`, shipped with the
library (tab-separated, header `path sha256 bytes`, paths relative to the dataset folder with `/`
separators), so a local copy and a download are checked the same way and a changed upstream file is
caught instead of silently used.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dti.data import DATA_DIR
from dti.errors import DtiError
from dti.io import check_target
from dti.terms import LIVE, OBJECT, SUBJECT_KINDS, check_kind

COMMIT = "4f887af7970a06fc0cd3adaa1d0b368547d6a1d0"
ARCHIVE_URL = f"https://github.com/google/dreambooth/archive/{COMMIT}.tar.gz"
DEFAULT_MANIFEST = DATA_DIR / "dreambooth_manifest.tsv"
PROMPTS_FILE = "prompts_and_classes.txt"

# DreamBooth evaluates "live subjects" (its cats and dogs) with their own prompt list.
LIVE_CLASSES = frozenset({"cat", "dog"})

_MANIFEST_COLUMNS = ["path", "sha256", "bytes"]
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------------
# Checksum manifest


@dataclass(frozen=True)
class ManifestEntry:
    path: str  # relative to the dataset folder, "/"-separated
    sha256: str
    bytes: int


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_relative(rel: str, where: str) -> str:
    """Reject manifest paths that could point outside the dataset folder."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or "\\" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
        raise DtiError(f"{where}: unsafe or empty path {rel!r}")
    return rel


def read_manifest(path: str | os.PathLike = DEFAULT_MANIFEST) -> list[ManifestEntry]:
    path = Path(path)
    if not path.is_file():
        raise DtiError(f"checksum manifest not found: {path}")
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    if not rows or rows[0] != _MANIFEST_COLUMNS:
        raise DtiError(f"{path}: header must be {' '.join(_MANIFEST_COLUMNS)} (tab-separated)")
    entries, seen = [], set()
    for line_no, row in enumerate(rows[1:], start=2):
        where = f"{path}:{line_no}"
        if len(row) != 3:
            raise DtiError(f"{where}: expected 3 tab-separated columns, got {len(row)}")
        rel, digest, size = row
        _safe_relative(rel, where)
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise DtiError(f"{where}: sha256 must be 64 lowercase hex digits, got {digest!r}")
        if not size.isdigit():
            raise DtiError(f"{where}: bytes must be a non-negative integer, got {size!r}")
        if rel in seen:
            raise DtiError(f"{where}: duplicate path {rel!r}")
        seen.add(rel)
        entries.append(ManifestEntry(rel, digest, int(size)))
    if not entries:
        raise DtiError(f"{path}: the manifest lists no files")
    return entries


def _mismatch(entry: ManifestEntry, actual_sha: str, actual_bytes: int, where: Path) -> str | None:
    if actual_sha == entry.sha256 and actual_bytes == entry.bytes:
        return None
    return (
        f"{where}: checksum mismatch, expected sha256 {entry.sha256} ({entry.bytes} bytes), "
        f"got {actual_sha} ({actual_bytes} bytes)"
    )


def _raise_problems(problems: list[str], what: str) -> None:
    if problems:
        shown = problems[:20]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise DtiError(f"{what} failed verification:\n  " + "\n  ".join(shown) + more)


def verify_dataset(folder: str | os.PathLike, manifest: str | os.PathLike = DEFAULT_MANIFEST) -> Path:
    """Check every manifest file in `folder` (presence, size, sha256); return the folder.

    Files the manifest does not list are allowed at the top level (a copy may carry its own README),
    but not inside a subject folder, where they would silently join the subject's training images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DtiError(f"DreamBooth dataset folder not found: {folder}")
    entries = read_manifest(manifest)
    problems = []
    for entry in entries:
        file = folder / entry.path
        if not file.is_file():
            problems.append(f"{file}: missing (expected sha256 {entry.sha256})")
            continue
        problem = _mismatch(entry, sha256_file(file), file.stat().st_size, file)
        if problem:
            problems.append(problem)
    listed = {e.path for e in entries}
    subject_dirs = {PurePosixPath(e.path).parent for e in entries} - {PurePosixPath(".")}
    for sub in sorted(subject_dirs):
        for file in sorted((folder / sub).glob("*")):
            rel = file.relative_to(folder).as_posix()
            if file.is_file() and not file.name.startswith(".") and rel not in listed:
                problems.append(f"{file}: not in the manifest {manifest}")
    _raise_problems(problems, f"DreamBooth dataset {folder}")
    return folder


# ---------------------------------------------------------------------------------------------------
# Where the files are used


def marker_record(folder: str | os.PathLike, *, downloaded: bool, manifest: str | os.PathLike | None = None) -> dict:
    """What `fetch_dreambooth`'s marker (resources/dreambooth.json) records: the verified folder, the sha256
    of the checksum manifest (default: DEFAULT_MANIFEST) it was verified against, and whether the folder is
    a download of ours."""
    manifest = manifest if manifest is not None else DEFAULT_MANIFEST
    return {"path": str(Path(folder).resolve()), "manifest_sha256": sha256_file(manifest), "downloaded": downloaded}


def _read_marker(marker: Path, manifest: Path) -> dict:
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DtiError(f"{marker}: unreadable ({err}); delete it and rerun (fetch_dreambooth writes it again)"
                       ) from err
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        raise DtiError(f"{marker}: not a fetch_dreambooth marker; delete it and rerun (fetch_dreambooth writes it again)")
    recorded = record.get("manifest_sha256")  # absent in an older version's marker: the files are checked anyway
    if recorded is not None and recorded != sha256_file(manifest):
        raise DtiError(f"{marker}: the dataset was verified against another checksum manifest than {manifest} "
                       f"(sha256 {recorded}); delete it and rerun (fetch_dreambooth verifies the dataset again)")
    return record


def verify_used_files(paths: list[str | os.PathLike], *, marker: str | os.PathLike | None = None,
                      manifest: str | os.PathLike | None = None) -> None:
    """Check DreamBooth files where a job uses them (the photos a subject is prepared from), not only when
    they were fetched: each must still be, byte for byte, the manifest's file of its name (`subject/file`),
    so a photo replaced or edited after `fetch_dreambooth` is refused, naming it and how to restore it.
    `marker`: fetch_dreambooth's record, checked to be for this manifest (default: DEFAULT_MANIFEST)."""
    manifest = Path(manifest if manifest is not None else DEFAULT_MANIFEST)
    record = _read_marker(Path(marker), manifest) if marker is not None else {}
    entries = {e.path: e for e in read_manifest(manifest)}
    if record.get("downloaded"):
        remedy = (f"delete {record['path']} and {marker}, then rerun (fetch_dreambooth downloads and verifies "
                  "it again)")
    else:
        remedy = f"restore it from the pinned release (github.com/google/dreambooth at {COMMIT})"
    for path in map(Path, paths):
        entry = entries.get(f"{path.parent.name}/{path.name}")
        if entry is None:
            raise DtiError(f"{path}: not a file of the pinned DreamBooth dataset ({manifest})")
        try:
            actual_sha, actual_bytes = sha256_file(path), path.stat().st_size
        except OSError as err:
            raise DtiError(f"cannot read DreamBooth file {path}: {err.strerror or err}; {remedy}") from err
        problem = _mismatch(entry, actual_sha, actual_bytes, path)
        if problem:
            raise DtiError(f"{problem}: it changed after fetch_dreambooth verified it; {remedy}")


# ---------------------------------------------------------------------------------------------------
# Download


def fetch_dreambooth(
    dest: str | os.PathLike,
    *,
    source: str | os.PathLike | None,
    url: str = ARCHIVE_URL,
    manifest: str | os.PathLike = DEFAULT_MANIFEST,
) -> Path:
    """Return a verified DreamBooth dataset folder.

    With `source`, the local folder is verified and returned as is (nothing is copied). Without it,
    `dest` is returned if it already exists and verifies; otherwise the pinned archive at `url` is
    downloaded, only the manifest's files are taken from its `dataset/` folder, each is checked, and
    the folder is renamed onto `dest` only once all of them are right.
    """
    if source is not None:
        return verify_dataset(source, manifest)
    dest = Path(dest)
    if dest.exists():
        # Never overwrite a user's folder; if it is damaged they must remove it deliberately.
        return verify_dataset(dest, manifest)
    entries = {e.path: e for e in read_manifest(manifest)}
    check_target(dest)  # its folder made; a dangling link at dest refused, never written through (dti.io)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial"))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; the dataset is ordinary readable data
    try:
        with tempfile.TemporaryFile(dir=dest.parent) as archive:
            _download(url, archive)
            archive.seek(0)
            _extract_dataset(archive, url, entries, staging)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _download(url: str, out) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out, _CHUNK)
    except OSError as err:  # URLError, HTTPError and socket timeouts are all OSErrors
        raise DtiError(f"cannot download the DreamBooth archive {url}: {err}") from err


def _dataset_member_path(name: str) -> str | None:
    """'<top>/dataset/<rel>' -> '<rel>'; anything else (other folders, odd paths) -> None."""
    parts = name.split("/")
    if len(parts) < 3 or parts[1] != "dataset":
        return None
    return "/".join(parts[2:])


def _extract_dataset(archive, url: str, entries: dict[str, ManifestEntry], staging: Path) -> None:
    # Only files named in the manifest are written, at paths built from the manifest, so a crafted
    # archive (absolute names, '..', links, devices) cannot write anywhere else.
    problems, written = [], set()
    try:
        with tarfile.open(fileobj=archive, mode="r:*") as tar:
            for member in tar:
                rel = _dataset_member_path(member.name)
                if rel is None or rel not in entries:
                    continue
                entry = entries[rel]
                target = staging / rel
                if not member.isfile():
                    problems.append(f"{target}: archive member {member.name} is not a regular file")
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                digest, size = hashlib.sha256(), 0
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                written.add(rel)
                problem = _mismatch(entry, digest.hexdigest(), size, Path("dataset") / rel)
                if problem:
                    problems.append(problem)
    except (tarfile.TarError, EOFError, OSError) as err:  # zlib/gzip errors surface as these
        raise DtiError(f"cannot read the DreamBooth archive from {url}: {err}") from err
    for rel in sorted(set(entries) - written):
        problems.append(f"dataset/{rel}: missing from the archive (expected sha256 {entries[rel].sha256})")
    _raise_problems(problems, f"DreamBooth archive {url}")


# ---------------------------------------------------------------------------------------------------
# prompts_and_classes.txt


@dataclass(frozen=True)
class DreamBoothSubject:
    name: str
    class_noun: str

    @property
    def kind(self) -> str:
        return LIVE if self.class_noun in LIVE_CLASSES else OBJECT


@dataclass(frozen=True)
class DreamBoothInfo:
    subjects: tuple[DreamBoothSubject, ...]
    object_prompts: tuple[str, ...]  # templates with one "{}" where the token and class word were
    live_prompts: tuple[str, ...]

    def prompts(self, kind: str) -> tuple[str, ...]:
        return {OBJECT: self.object_prompts, LIVE: self.live_prompts}[check_kind(kind)]


_PROMPT_HEADINGS = {"Object Prompts": OBJECT, "Live Subject Prompts": LIVE}  # the file's headings -> our kinds
_PROMPT_LINE = re.compile(r"""^'(?P<text>[^']*)'\.format\(\s*unique_token\s*,\s*class_token\s*\),?$""")
_SLOT = "{0} {1}"  # upstream writes "<token> <class>"; the paper's prompts keep only the token slot


def parse_prompts_and_classes(path: str | os.PathLike) -> DreamBoothInfo:
    """Read DreamBooth's `prompts_and_classes.txt`: the subject classes and both prompt lists."""
    path = Path(path)
    if path.is_dir():
        path = path / PROMPTS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DtiError(f"cannot read DreamBooth prompt file {path}: {err}") from err

    subjects: list[DreamBoothSubject] = []
    lists: dict[str, list[str]] = {}
    section, in_list = None, False
    for line_no, raw in enumerate(lines, start=1):
        line = raw.strip()
        where = f"{path}:{line_no}"
        if not line:
            continue
        if line == "Classes":
            section = "classes"
        elif line == "Prompts":
            section = None
        elif line in _PROMPT_HEADINGS:
            section = _PROMPT_HEADINGS[line]
        elif line.startswith("prompt_list") and line.endswith("["):
            if section not in SUBJECT_KINDS or section in lists:
                raise DtiError(f"{where}: prompt list outside an 'Object Prompts'/'Live Subject Prompts' heading")
            lists[section], in_list = [], True
        elif line == "]" and in_list:
            in_list = False
        elif in_list:
            lists[section].append(_template_from_line(line, where))
        elif section == "classes":
            if line.replace(" ", "") == "subject_name,class":
                continue
            name, sep, noun = (part.strip() for part in line.partition(","))
            if not sep or not name or not noun or "," in noun:
                raise DtiError(f"{where}: expected 'subject_name,class', got {line!r}")
            if any(s.name == name for s in subjects):
                raise DtiError(f"{where}: duplicate subject {name!r}")
            subjects.append(DreamBoothSubject(name, noun))
        else:
            raise DtiError(f"{where}: unexpected line {line!r}")

    if in_list:
        raise DtiError(f"{path}: prompt list in section {section!r} is not closed with ']'")
    if not subjects:
        raise DtiError(f"{path}: no subjects under a 'Classes' heading")
    for kind in SUBJECT_KINDS:
        if not lists.get(kind):
            raise DtiError(f"{path}: no {kind} prompt list")
    return DreamBoothInfo(tuple(subjects), tuple(lists[OBJECT]), tuple(lists[LIVE]))


def _template_from_line(line: str, where: str) -> str:
    match = _PROMPT_LINE.match(line)
    if not match:
        raise DtiError(f"{where}: expected 'text'.format(unique_token, class_token), got {line!r}")
    text = match["text"]
    if text.count(_SLOT) != 1 or text.replace(_SLOT, "").count("{") or text.replace(_SLOT, "").count("}"):
        raise DtiError(f"{where}: expected exactly one '{_SLOT}' and no other braces in {text!r}")
    return text.replace(_SLOT, "{}")


"""File output: atomic, inside its folder, never through a link, and naming the path when it fails.

Every file the project writes goes through here, with three guarantees:

- **Atomic.** A file is written under a temporary name beside its final one and renamed onto it only once
  whole, so a killed job or a full disk never leaves a half-written or empty file under a final name (a
  line the disk could not take is cut off the train log again: `LineLog`).
- **Inside its folder.** Each writer has a root: the folder it was given (`dti train --out DIR`), by
  default the file's own folder; workflow steps use the top folder of their relative output path
  (`output_root`: results/, resources/), and `use_output_roots()` makes that every writer's default in a
  job's process. The root itself may be a symbolic link (results/ on scratch space, say), but no folder
  between the root and the file, nor the file itself, may be one: such a link is refused with a one-line
  DtiError naming it, before anything is written, so nothing lands outside the root whatever links were
  planted in it. Temporary files are created with O_CREAT | O_EXCL | O_NOFOLLOW, so a link waiting under
  a temporary name is never opened (another name is drawn), and the final rename replaces a name, never
  what a link points to. These checks guard against links that exist before or between writes, not
  against another process swapping a folder for a link during a write.
- **Named on failure.** An OSError (a full disk, no permission, a file where a folder should be) becomes a
  DtiError naming the file being written: the OS's own message often names a temporary file, or nothing.

`settle_future_times` is about clocks, not writing: see there.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import io
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dti.errors import DtiError

log = logging.getLogger(__name__)

_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_TEMP_TRIES = 100


@contextlib.contextmanager
def _naming(target: Path) -> Iterator[None]:
    """Turn an OSError (a full disk, a file where a folder should be, no permission) into a DtiError naming
    the file being written: the OS's own message often names only a temporary file, or nothing."""
    try:
        yield
    except OSError as err:
        raise DtiError(f"cannot write {target}: {err.strerror or err}") from err


_OUTPUT_ROOTS = False  # use_output_roots(): the default root is output_root(target), not target's folder


def use_output_roots(enabled: bool = True) -> None:
    """Make `output_root(target)` the default root of every write in this process, for the writers that
    name none: what a workflow job (dti.jobs.run_job) wants, since all its outputs are relative paths under
    results/ or resources/. Off by default: a library call writes inside the folder it was given."""
    global _OUTPUT_ROOTS
    _OUTPUT_ROOTS = enabled


def _root(target: Path, root: str | os.PathLike | None) -> Path:
    if root is not None:
        return Path(root)
    return output_root(target) if _OUTPUT_ROOTS else target.parent


def _absolute(path: str | os.PathLike) -> Path:
    """An absolute, lexically normalized path; links are left as they are (never resolved)."""
    return Path(os.path.abspath(path))


def output_root(path: str | os.PathLike) -> Path:
    """The folder a workflow step writes `path` inside: the top folder of a relative path (results/,
    resources/ of the working directory, which may itself be a link), the own folder of an absolute one."""
    path = Path(path)
    if path.is_absolute() or len(path.parts) < 2:
        return _absolute(path).parent
    return _absolute(path.parts[0])


def _below(root: Path, path: Path, target: Path) -> list[Path]:
    """The paths from just below `root` down to `path`; a DtiError when `path` is not inside `root`."""
    root, path = _absolute(root), _absolute(path)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise DtiError(f"cannot write {target}: it is outside {root}, the folder being written") from None
    return [root.joinpath(*parts[: i + 1]) for i in range(len(parts))]


def _link_error(target: Path, link: Path, root: Path) -> DtiError:
    try:
        points_to = os.readlink(link)
    except OSError:
        points_to = "?"
    return DtiError(f"cannot write {target}: {link} is a symbolic link (to {points_to!r}); nothing is written "
                    f"through a link inside {_absolute(root)}: remove the link")


def _refuse_link(path: Path, target: Path, root: Path) -> None:
    """A DtiError if `path` is a symbolic link (dangling or not); nothing if it is anything else or absent."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise _link_error(target, path, root)


def ensure_folder(folder: str | os.PathLike, *, root: str | os.PathLike | None = None,
                  target: str | os.PathLike | None = None) -> Path:
    """Create `folder` and the folders between `root` (default: `folder` itself) and it; a one-line DtiError
    naming `target` (default: `folder`) when one of them is a symbolic link or a file. `root` is created as
    given (it may be a link). Returns `folder`."""
    folder = Path(folder)
    root = Path(root) if root is not None else folder
    target = Path(target) if target is not None else folder
    with _naming(target):
        _absolute(root).mkdir(parents=True, exist_ok=True)
        for current in _below(root, folder, target):
            with contextlib.suppress(FileExistsError):
                os.mkdir(current)
            mode = os.lstat(current).st_mode
            if stat.S_ISLNK(mode):
                raise _link_error(target, current, root)
            if not stat.S_ISDIR(mode):
                raise DtiError(f"cannot write {target}: {current} is a file, not a folder")
    return folder


def check_target(target: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Path:
    """What every writer checks before writing `target`: its folders exist, are real and lie inside `root`
    (default: its own folder), and `target` is not a link. Call it early to refuse before long work."""
    target = Path(target)
    root = _root(target, root)
    ensure_folder(target.parent, root=root, target=target)
    _refuse_link(_absolute(target), target, root)
    return target


def _temp_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(6)}.tmp"


def _create_temp(folder: Path, name: str) -> Path:
    """A new empty file in `folder`, created without following a link: a name already taken (by anything,
    a planted link included) is never opened; another is drawn."""
    for _ in range(_TEMP_TRIES):
        tmp = folder / _temp_name(name)
        try:
            fd = os.open(tmp, _TEMP_FLAGS, 0o666)  # the usual permissions, less the umask
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, f"no free temporary name for {name} in {folder}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a new temporary file beside `target`; rename it onto `target` only if the block succeeds.
    `target` and its folders are checked against `root` first (check_target)."""
    target = Path(target)
    root = _root(target, root)
    check_target(target, root=root)
    with _naming(target):
        tmp = _create_temp(target.parent, target.name)
    try:
        with _naming(target):
            yield tmp
            _refuse_link(_absolute(target), target, root)  # one planted meanwhile is refused too
            os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_bytes(target: str | os.PathLike, data: bytes, *, root: str | os.PathLike | None = None) -> None:
    with atomic_path(target, root=root) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str, *, root: str | os.PathLike | None = None) -> None:
    write_bytes(target, text.encode("utf-8"), root=root)


def write_json(target: str | os.PathLike, data: Any, *, root: str | os.PathLike | None = None) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n", root=root)


def write_parquet(target: str | os.PathLike, frame, *, root: str | os.PathLike | None = None) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes(target, buffer.getvalue(), root=root)


def save_image(target: str | os.PathLike, image, *, root: str | os.PathLike | None = None) -> None:
    """Save a PIL image; the format follows the target's suffix."""
    target = Path(target)
    buffer = io.BytesIO()
    image.save(buffer, format=target.suffix.lstrip(".").upper().replace("JPG", "JPEG"))
    write_bytes(target, buffer.getvalue(), root=root)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; it replaces `target` only if the block succeeds."""
    target = Path(target)
    root = _root(target, root)
    check_target(target, root=root)
    with _naming(target):
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        with _naming(target):
            yield tmp
            _refuse_link(_absolute(target), target, root)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


class LineLog:
    """A file of lines, appended one `write` at a time (the train log): created by its first line, so a run
    that writes none leaves no empty file; opened without following a link; and a line the disk could not
    take whole is cut off again (the file is truncated to its length before the line, and removed if this
    log created it and it is empty), so the file holds whole lines only. The OSError is re-raised.
    """

    def __init__(self, target: str | os.PathLike, *, root: str | os.PathLike | None = None):
        self.path = Path(target)
        self.root = _root(self.path, root)
        self._fd: int | None = None
        self._created = False
        check_target(self.path, root=self.root)

    def _open(self) -> None:
        check_target(self.path, root=self.root)
        try:
            self._fd = os.open(self.path, _APPEND_FLAGS | os.O_CREAT | os.O_EXCL, 0o666)
            self._created = True
        except FileExistsError:
            try:
                self._fd = os.open(self.path, _APPEND_FLAGS)
            except OSError as err:
                if err.errno == errno.ELOOP:  # a link planted since the check
                    raise _link_error(self.path, _absolute(self.path), self.root) from err
                raise

    def write(self, text: str) -> None:
        if self._fd is None:
            self._open()
        size = os.lseek(self._fd, 0, os.SEEK_END)
        view = memoryview(text.encode("utf-8"))
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            self._cut(size)
            raise

    def _cut(self, size: int) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, size)
            if size == 0 and self._created:
                os.unlink(self.path)
                self.close()

    def flush(self) -> None:
        """Nothing to do: each line goes to the file as it is written."""

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd, self._created = self._fd, None, False
            os.close(fd)

    def __enter__(self) -> LineLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def settle_future_times(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Re-date to now every file of `paths` whose modification time lies ahead of this machine's clock,
    saying so in one warning line each; returns those files.

    Cluster nodes' clocks disagree, so a job's input can be dated in the future. Snakemake touches a job's
    outputs when it ends and fails the job if an output is then older than an input ("has older
    modification time than input ... clock skew"), deleting the outputs it just wrote; the next run plans
    the job again, and fails again until the future date has passed. A step that settles its inputs first
    keeps its outputs. Only the time changes, never the contents; a file whose time cannot be set is named
    in the warning and left as it is.
    """
    now = time.time()
    settled = []
    for path in map(Path, paths):
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if mtime <= now:
            continue
        when = datetime.datetime.fromtimestamp(mtime).isoformat(sep=" ", timespec="seconds")
        try:
            os.utime(path)
        except OSError as err:
            log.warning("dti: %s is dated %s, %.0f s ahead of this machine's clock (a node's clock is off); "
                        "cannot re-date it (%s)", path, when, mtime - now, err.strerror or err)
            continue
        log.warning("dti: %s was dated %s, %.0f s ahead of this machine's clock (a node's clock is off); "
                    "re-dated to now, so what is made from it is newer", path, when, mtime - now)
        settled.append(path)
    return settled

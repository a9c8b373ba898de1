"""Give each job its own GPU on a workstation that has no scheduler to hand them out.

Under SLURM the scheduler sets CUDA_VISIBLE_DEVICES and we leave it alone. On a workstation, Snakemake's
local executor cannot pin jobs to devices, so each job claims a GPU id at run time by holding an
exclusive `flock` on `{lock_dir}/gpu{i}.lock`. The kernel drops the lock when the process exits, even on
SIGKILL, so a crashed job never keeps a GPU reserved.

Call `claim_gpu()` before anything initializes CUDA (importing torch is fine, creating a tensor on
"cuda" is not): CUDA reads CUDA_VISIBLE_DEVICES once, at initialization.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from dti.errors import DtiError

NUM_GPUS_ENV = "DTI_NUM_GPUS"
LOCK_DIR_ENV = "DTI_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = Path("/tmp/dti-gpu-locks")
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"


def count_gpus() -> int:
    """Number of GPUs on this machine, without initializing CUDA in this process.

    DTI_NUM_GPUS wins (tests, or to use fewer GPUs than installed). Inside a SLURM job that was given no
    GPU (no CUDA_VISIBLE_DEVICES), the node's GPUs belong to other jobs: 0. Otherwise `nvidia-smi -L`.
    """
    configured = os.environ.get(NUM_GPUS_ENV)
    if configured is not None:
        try:
            count = int(configured)
        except ValueError:
            raise DtiError(f"{NUM_GPUS_ENV}={configured!r} is not a whole number of GPUs") from None
        if count < 0:
            raise DtiError(f"{NUM_GPUS_ENV}={configured!r} must not be negative")
        return count
    if os.environ.get("SLURM_JOB_ID") or shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (subprocess.SubprocessError, OSError):
        # A driver that is installed but broken means no usable GPU: fall back to the CPU.
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def _lock_dir(lock_dir: str | os.PathLike | None) -> Path:
    path = Path(lock_dir or os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        # Several users of one workstation share the default folder: world-writable and sticky like /tmp.
        with contextlib.suppress(PermissionError):
            path.chmod(0o1777)
    return path


def _try_lock(path: Path) -> int | None:
    """Return an fd holding an exclusive lock on `path`, or None if another process holds it."""
    # Read-only is enough for flock, and works on a lock file created by another user.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _first_free(folder: Path, num_gpus: int) -> tuple[int, int] | None:
    """Lock the lowest free GPU id; return (id, fd holding the lock), or None if all are taken."""
    for gpu in range(num_gpus):
        fd = _try_lock(folder / f"gpu{gpu}.lock")
        if fd is not None:
            return gpu, fd
    return None


@contextlib.contextmanager
def claim_gpu(
    lock_dir: str | os.PathLike | None = None,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
) -> Iterator[str | None]:
    """Hold one GPU for the duration of the block; yield its CUDA_VISIBLE_DEVICES value, or None for CPU.

    - CUDA_VISIBLE_DEVICES already set (SLURM, or the user): yield it unchanged ("" means no GPU: None).
    - No GPU on the machine: yield None.
    - Otherwise wait until some `gpu{i}.lock` is free, set CUDA_VISIBLE_DEVICES=i, and restore the
      previous environment on exit. `timeout_s=None` waits for ever.
    """
    preset = os.environ.get(VISIBLE_ENV)
    if preset is not None:
        yield preset or None
        return
    num_gpus = count_gpus()
    if num_gpus == 0:
        yield None
        return

    folder = _lock_dir(lock_dir)
    started = time.monotonic()
    claimed = _first_free(folder, num_gpus)
    if claimed is None:
        print(f"dti: all {num_gpus} GPUs busy (locks in {folder}); waiting", file=sys.stderr)
    while claimed is None:
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise DtiError(f"no free GPU among {num_gpus} after {timeout_s} s (locks in {folder})")
        time.sleep(poll_s)
        claimed = _first_free(folder, num_gpus)
    gpu, fd = claimed

    os.environ[VISIBLE_ENV] = str(gpu)
    try:
        yield str(gpu)
    finally:
        os.environ.pop(VISIBLE_ENV, None)
        os.close(fd)  # closing the only fd on the open file releases the flock

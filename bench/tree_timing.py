"""What the workflow benchmarks (demo_time.py, plan_time.py) share: a fresh copy of the committed tree to run
in, and the wall and CPU time of a command together with everything it starts."""

from __future__ import annotations

import io
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def committed_tree(into: Path) -> None:
    """HEAD's files (what a clean clone holds), without results of earlier runs."""
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=REPO, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds of `command` and everything it started, and its captured output."""
    cpu, start = children_cpu(), time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - start, children_cpu() - cpu, done


def torch_import_cpu(cwd: Path) -> float:
    """The CPU seconds of `import torch`: the shared machine's speed at the moment, as a calibration."""
    return timed([sys.executable, "-c", "import torch"], cwd)[1]

"""A real single-node SLURM cluster for tests, started and stopped by tests/slurm/cluster.sh.

Use the `slurm_cluster` fixture (session scope, registered by conftest.py) or `running_cluster()` directly:

    @pytest.mark.slurm
    def test_pipeline(slurm_cluster, tmp_path):
        subprocess.run([..., "--profile", str(slurm_cluster.profile), *slurm_cluster.fast_status_args])
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "slurm" / "cluster.sh"


@dataclass(frozen=True)
class Cluster:
    partition: str
    state_dir: Path
    profile: Path
    # The profile polls like a real cluster (first check after 20 s); the test node answers at once.
    fast_status_args: tuple[str, ...] = ("--slurm-init-seconds-before-status-checks", "1")


def _script(action: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), action], env=env, capture_output=True, text=True, timeout=600)


@contextlib.contextmanager
def running_cluster(state_dir: str | os.PathLike | None = None) -> Iterator[Cluster]:
    """Start the cluster (installing SLURM if needed), yield it, stop it on exit even after a failure.

    A cluster that was already up (started by hand) is reused and left running.
    """
    env = dict(os.environ)
    if state_dir is not None:
        env["DTI_SLURM_DIR"] = str(state_dir)
    folder = Path(env.get("DTI_SLURM_DIR", "/tmp/dti-slurm"))
    was_up = _script("status", env).returncode == 0
    if not was_up:
        started = _script("start", env)
        if started.returncode != 0:
            _script("stop", env)
            raise RuntimeError(f"{SCRIPT} start failed:\n{started.stdout}\n{started.stderr}")
    try:
        yield Cluster(partition="debug", state_dir=folder, profile=REPO / "profiles" / "slurm")
    finally:
        if not was_up:
            _script("stop", env)


def slurm_unavailable() -> str | None:
    """Why the cluster cannot run here, or None if it can."""
    if shutil.which("sbatch") and shutil.which("slurmctld"):
        return None
    if os.geteuid() != 0:
        return "SLURM is not installed and installing it needs root"
    if not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install it"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Cluster]:
    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)
    with running_cluster() as cluster:
        yield cluster

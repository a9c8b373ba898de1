"""GPU slots on a workstation: separate processes must end up on separate GPU ids."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dti.errors import DtiError
from dti.gpu_slots import claim_gpu, count_gpus

SRC = Path(__file__).resolve().parents[1] / "src"

# A holder claims a GPU, reports the id it got and what CUDA_VISIBLE_DEVICES says, then holds the GPU
# until its release file appears.
HOLDER = """
import os, sys, time
from pathlib import Path
from dti.gpu_slots import claim_gpu
release = Path(sys.argv[1])
with claim_gpu(poll_s=0.05) as gpu:
    print(f"{gpu} {os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
    while not release.exists():
        time.sleep(0.02)
print("released", flush=True)
"""


@pytest.fixture
def gpu_env(tmp_path, monkeypatch):
    """Two fake GPUs, a private lock folder, and no scheduler-provided device."""
    monkeypatch.setenv("DTI_NUM_GPUS", "2")
    monkeypatch.setenv("DTI_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return tmp_path


class Holder:
    def __init__(self, folder: Path, name: str):
        self.release = folder / f"release-{name}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(self.release)], stdout=subprocess.PIPE, text=True
        )

    def claimed(self, timeout_s: float = 20.0) -> tuple[str, str]:
        """Block until the holder reports its GPU; return (yielded id, CUDA_VISIBLE_DEVICES)."""
        line = _readline(self.proc, timeout_s)
        gpu, visible = line.split()
        return gpu, visible

    def let_go(self) -> None:
        self.release.touch()
        assert _readline(self.proc, 20.0) == "released"
        assert self.proc.wait(timeout=20) == 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=20)
        self.proc.stdout.close()


def _readline(proc: subprocess.Popen, timeout_s: float) -> str:
    os.set_blocking(proc.stdout.fileno(), False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            return line.strip()
        if proc.poll() is not None:
            raise AssertionError(f"holder exited with {proc.returncode} before reporting")
        time.sleep(0.02)
    raise AssertionError(f"holder said nothing within {timeout_s} s")


@pytest.fixture
def holders(gpu_env):
    started: list[Holder] = []

    def start(name: str) -> Holder:
        holder = Holder(gpu_env, name)
        started.append(holder)
        return holder

    yield start
    for holder in started:
        holder.stop()


def test_concurrent_processes_get_different_gpus_and_a_third_waits(holders):
    first, second = holders("a"), holders("b")
    first_claim, second_claim = first.claimed(), second.claimed()
    # Each process sees its own id in CUDA_VISIBLE_DEVICES, and together they cover both GPUs.
    assert {first_claim, second_claim} == {("0", "0"), ("1", "1")}

    third = holders("c")
    with pytest.raises(AssertionError, match="said nothing"):
        third.claimed(timeout_s=1.0)

    # The third must take exactly the GPU that the first gives back.
    first.let_go()
    assert third.claimed() == first_claim
    second.let_go()
    third.let_go()


def test_killed_holder_releases_its_gpu(holders, monkeypatch):
    monkeypatch.setenv("DTI_NUM_GPUS", "1")
    holder = holders("doomed")
    assert holder.claimed() == ("0", "0")
    with pytest.raises(DtiError, match="no free GPU among 1"):
        with claim_gpu(poll_s=0.05, timeout_s=0.3):
            pass

    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait(timeout=20)
    with claim_gpu(poll_s=0.05, timeout_s=5) as gpu:
        assert gpu == "0"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"


def test_environment_is_restored_after_the_block(gpu_env):
    with claim_gpu() as gpu:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == gpu
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    # The slot is free again: a second claim in the same process gets the same lowest id.
    with claim_gpu() as again:
        assert again == gpu == "0"


@pytest.mark.parametrize("preset", ["3", "0,1", ""])
def test_scheduler_assigned_devices_are_left_alone(gpu_env, monkeypatch, preset):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", preset)
    with claim_gpu() as gpu:
        assert gpu == (preset or None)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == preset
    assert os.environ["CUDA_VISIBLE_DEVICES"] == preset
    # Nothing was locked: the lock folder was never even created.
    assert not (gpu_env / "locks").exists()


def test_no_gpus_means_cpu(gpu_env, monkeypatch):
    monkeypatch.setenv("DTI_NUM_GPUS", "0")
    with claim_gpu() as gpu:
        assert gpu is None
        assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_slurm_job_without_gpu_runs_on_cpu(gpu_env, monkeypatch):
    monkeypatch.delenv("DTI_NUM_GPUS")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert count_gpus() == 0


@pytest.mark.parametrize("bad", ["two", "-1"])
def test_bad_gpu_count_names_the_variable(monkeypatch, bad):
    monkeypatch.setenv("DTI_NUM_GPUS", bad)
    with pytest.raises(DtiError, match=f"DTI_NUM_GPUS='{bad}'"):
        count_gpus()


# Each job (a separate process, like a `script:` rule) claims a GPU, holds it for a moment and records
# (device, start, end).
LOCAL_SNAKEFILE = """
rule all:
    input: expand("out/{i}.txt", i=range(4))

rule train:
    output: "out/{i}.txt"
    threads: 1
    resources: gpu=1
    shell: "{python} job.py {output}"
"""

LOCAL_JOB = """
import sys, time
from dti.gpu_slots import claim_gpu
with claim_gpu(poll_s=0.05) as gpu:
    start = time.time()
    time.sleep(1.0)
    end = time.time()
with open(sys.argv[1], "w") as f:
    f.write(f"{gpu} {start} {end}")
"""


def test_local_profile_runs_gpu_jobs_side_by_side_on_different_gpus(gpu_env):
    workdir = gpu_env / "work"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(LOCAL_SNAKEFILE.replace("{python}", sys.executable))
    (workdir / "job.py").write_text(LOCAL_JOB)
    profile = Path(__file__).resolve().parents[1] / "profiles" / "local"
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", str(profile), "--cores", "2", "--resources", "gpu=2"],
        cwd=workdir, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = []
    for path in sorted((workdir / "out").glob("*.txt")):
        gpu, start, end = path.read_text().split()
        jobs.append((gpu, float(start), float(end)))
    assert len(jobs) == 4 and {gpu for gpu, _, _ in jobs} <= {"0", "1"}
    overlapping = [(a, b) for i, a in enumerate(jobs) for b in jobs[i + 1:] if a[1] < b[2] and b[1] < a[2]]
    # The two slots were used at the same time, and never by two jobs on one GPU.
    assert overlapping
    assert all(a[0] != b[0] for a, b in overlapping)

"""profiles/slurm against a real single-node SLURM cluster (tests/slurm/cluster.sh)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

# `prepare` runs on CPU; `train` asks for a GPU, fails on its first attempt on purpose, and on the retry
# records what SLURM gave it. Its base runtime is 5 minutes, so the retry must ask for 10.
TOY_SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input: "out/prepare.txt", "out/train.txt"

    rule prepare:
        output: "out/prepare.txt"
        shell: "echo SLURM_JOB_ID=$SLURM_JOB_ID CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES-unset}} > {output}"

    rule train:
        output: "out/train.txt"
        threads: 1
        resources:
            gpu=1,
            runtime=lambda wildcards, attempt: 5 * attempt,
        shell:
            '''
            if [ ! -e out/train.failed-once ]; then
                touch out/train.failed-once
                echo "train fails on purpose" >&2
                exit 3
            fi
            echo SLURM_JOB_ID=$SLURM_JOB_ID CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES \\
                TIME_LIMIT=$(squeue --noheader -j $SLURM_JOB_ID -o %l) > {output}
            '''
    """
)


def _fields(path: Path) -> dict[str, str]:
    return dict(item.split("=", 1) for item in path.read_text().split())


def _run_snakemake(workdir: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    (workdir / "Snakefile").write_text(TOY_SNAKEFILE)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", str(profile), "--directory", str(workdir),
         "--snakefile", str(workdir / "Snakefile"), *extra],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )


def _sbatch_calls(log: str, name: str) -> list[str]:
    """sbatch calls of a rule, alone (`rule_<name>`) or in the profile's `chain` group (`rule_chain_<name>`)."""
    return [line for line in log.splitlines()
            if line.startswith("sbatch call:") and re.search(rf"--comment rule_(chain_)?{name} ", line)]


def test_jobs_go_through_sbatch_with_gpu_and_retry_with_longer_runtime(slurm_cluster, tmp_path):
    run = _run_snakemake(tmp_path, slurm_cluster.profile, *slurm_cluster.fast_status_args, "--verbose")
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]

    prepare = _fields(tmp_path / "out" / "prepare.txt")
    train = _fields(tmp_path / "out" / "train.txt")
    # Both ran inside SLURM jobs; only the GPU rule was given a device (the test node's fake gpu:1).
    assert prepare["SLURM_JOB_ID"].isdigit() and train["SLURM_JOB_ID"].isdigit()
    assert prepare["CUDA_VISIBLE_DEVICES"] == "unset"
    assert train["CUDA_VISIBLE_DEVICES"] in ("0", "1")  # one of the node's two fake GPUs
    # The retry ran with twice the base runtime, as SLURM itself reports the job's limit.
    assert train["TIME_LIMIT"] == "10:00"

    train_calls, prepare_calls = _sbatch_calls(log, "train"), _sbatch_calls(log, "prepare")
    assert len(train_calls) == 2 and len(prepare_calls) == 1
    for call in train_calls:
        assert " --gpus=1" in call and " --cpus-per-gpu=4" in call and " -p debug" in call
    assert [re.search(r" -t (\d+) ", call).group(1) for call in train_calls] == ["5", "10"]
    assert "--gpus" not in prepare_calls[0]

    # The failed attempt's SLURM log is kept for the user; it holds the job's own error output.
    kept = list((tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert any("train fails on purpose" in path.read_text() for path in kept), kept


def test_unknown_partition_fails_naming_rule_and_log(slurm_cluster, tmp_path):
    # A site that mistypes the one partition line of the profile.
    profile = tmp_path / "profile"
    profile.mkdir()
    text = (slurm_cluster.profile / "config.yaml").read_text()
    line = f'  slurm_partition: "{slurm_cluster.partition}"'
    assert text.count(line) == 1, "profiles/slurm must name its partition in exactly one place"
    (profile / "config.yaml").write_text(text.replace(line, '  slurm_partition: "nosuch"'))
    workdir = tmp_path / "work"
    workdir.mkdir()

    run = _run_snakemake(workdir, profile, *slurm_cluster.fast_status_args)
    log = run.stdout + run.stderr
    assert run.returncode != 0
    for rule in ("prepare", "train"):
        assert f"Error in rule {rule}:" in log
    assert "invalid partition specified: nosuch" in log
    logfile = Path(re.search(r"Complete log\(s\): (\S+)", log).group(1))
    assert "invalid partition specified: nosuch" in logfile.read_text()
    assert not (workdir / "out" / "prepare.txt").exists()

"""`make profiles` links the project's profiles where Snakemake looks them up by name: afterwards the
literal `snakemake --profile slurm -n` plans from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def install(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    return subprocess.run(["make", "-s", "profiles", *args], cwd=REPO, capture_output=True, text=True,
                          env={**env, "HOME": str(home)})


def test_profile_by_name_plans_after_install(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}, "HOME": str(tmp_path)}
    # --forceall: a developer's finished `make demo` in the checkout would otherwise leave nothing to plan
    plan = [sys.executable, "-m", "snakemake", "--profile", "slurm", "-n", "--forceall", "--quiet", "rules"]
    before = subprocess.run(plan, cwd=REPO, capture_output=True, text=True, env=env)
    assert before.returncode != 0 and "slurm" in before.stderr  # the card's command fails without it

    first = install(tmp_path)
    assert first.returncode == 0, first.stderr
    link = tmp_path / ".config" / "snakemake" / "slurm"
    assert link.is_symlink() and link.resolve() == (REPO / "profiles" / "slurm").resolve()
    again = install(tmp_path)  # idempotent
    assert again.returncode == 0 and "already installed" in again.stdout

    after = subprocess.run(plan, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert after.returncode == 0, after.stderr[-3000:]
    assert "train" in after.stdout and "sample" in after.stdout


def test_a_different_profile_of_the_same_name_is_never_replaced(tmp_path):
    own = tmp_path / ".config" / "snakemake" / "slurm"
    own.mkdir(parents=True)
    (own / "config.yaml").write_text("executor: slurm\n")
    result = install(tmp_path)
    assert result.returncode != 0
    assert str(own) in result.stderr and "not this project's" in result.stderr
    assert (own / "config.yaml").read_text() == "executor: slurm\n"  # untouched

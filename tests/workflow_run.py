"""Running the real workflow from tests: a fresh working directory per run, dry-run plans parsed into jobs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), *args]


def snakemake(workdir: Path, *args: str, timeout: int = 1500, check: bool = True,
              env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(snakemake_command(workdir, *args), capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    return checked(result, args) if check else result


def checked(result: subprocess.CompletedProcess, args) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def planned_jobs(workdir: Path, *args: str) -> list[tuple[str, dict]]:
    """The (rule, wildcards) of every job a dry run would execute."""
    out = snakemake(workdir, "-n", *args).stdout
    jobs, rule = [], None
    for line in out.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if match:
            rule = match.group(1)
            jobs.append((rule, {}))
        elif rule and line.strip().startswith("wildcards:"):
            pairs = line.strip()[len("wildcards:"):].split(",")
            jobs[-1] = (rule, dict(p.strip().split("=", 1) for p in pairs if "=" in p))
    return jobs

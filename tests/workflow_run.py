"""Running the real workflow from tests: a fresh working directory per run, runs in the background, and
dry-run plans parsed into jobs."""

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


class BackgroundRun:
    """A snakemake run in its own process, so the session's other tests run meanwhile.

    Its output goes to files beside the working directory, not to pipes: nobody reads while it runs, and a
    full pipe would stall it.
    """

    def __init__(self, workdir: Path, *args: str):
        self.workdir, self.args = workdir, args
        self._stdout, self._stderr = (workdir.with_name(f"{workdir.name}.{s}") for s in ("stdout", "stderr"))
        with open(self._stdout, "w") as out, open(self._stderr, "w") as err:
            self._proc = subprocess.Popen(snakemake_command(workdir, *args), stdout=out, stderr=err, text=True)

    def result(self, timeout: int = 1800) -> subprocess.CompletedProcess:
        """Wait for the run; an AssertionError with its output if it failed."""
        try:
            self._proc.wait(timeout=timeout)
        finally:
            self.stop()
        return checked(subprocess.CompletedProcess(self._proc.args, self._proc.returncode, self._stdout.read_text(),
                                                   self._stderr.read_text()), self.args)

    def stop(self) -> None:
        """Stop a run still going (a session cut short); snakemake cancels its jobs on SIGTERM."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


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

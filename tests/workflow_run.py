"""Running the real workflow from tests: a fresh working directory per run, runs in the background, and
dry-run plans parsed into jobs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from dti.benchmark_config import backbone_methods, load_config_files

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
# The shared run's config: the embedded default and what the demo leaves out (tests/shared_run.yaml), as the
# workflow sees it; a call that names no config of its own runs with it.
SHARED_CONFIG = REPO / "tests" / "shared_run.yaml"
SHARED = load_config_files([SHARED_CONFIG])
# {backbone: [method]}: the methods the shared run runs on each backbone (its only_methods).
SHARED_METHODS = {b: list(backbone_methods(SHARED, b)) for b in SHARED["backbones"]}
EMBEDDED_DEFAULT = REPO / "config" / "config.yaml"


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    if not any(a.split("=")[0] in ("--configfile", "--configfiles") for a in args):
        args = (*args, "--configfile", str(SHARED_CONFIG))  # last: --configfile takes every following word
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

    `after`: start only once that run has ended. Each full run keeps both cores busy, so side by side two
    runs would only share them; queued, the first one's results are ready for their tests sooner.
    Output goes to files beside the working directory, not to pipes: nobody reads while it runs, and a
    full pipe would stall it.
    """

    def __init__(self, workdir: Path, *args: str, after: BackgroundRun | None = None):
        self.workdir, self.args = workdir, args
        self._stdout, self._stderr = (workdir.with_name(f"{workdir.name}.{s}") for s in ("stdout", "stderr"))
        self._proc: subprocess.Popen | None = None
        self._lock, self._begun, self._stopped = threading.Lock(), threading.Event(), False
        if after is None:
            self._start()
        else:
            threading.Thread(target=self._start_after, args=(after,), daemon=True).start()

    def _start_after(self, other: BackgroundRun) -> None:
        other._begun.wait()
        if other._proc is not None:
            other._proc.wait()
        self._start()

    def _start(self) -> None:
        with self._lock:
            if not self._stopped:
                with open(self._stdout, "w") as out, open(self._stderr, "w") as err:
                    self._proc = subprocess.Popen(snakemake_command(self.workdir, *self.args), stdout=out,
                                                  stderr=err, text=True)
            self._begun.set()

    def result(self, timeout: int = 2700) -> subprocess.CompletedProcess:
        """Wait for the run (a guard against a hung run, not a time budget: the suite's time is measured by
        .ci/run); an AssertionError with its output if it failed."""
        deadline = time.monotonic() + timeout
        try:
            if not self._begun.wait(timeout) or self._proc is None:
                raise AssertionError(f"snakemake {' '.join(self.args)} never started")
            self._proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            self.stop()
        return checked(subprocess.CompletedProcess(self._proc.args, self._proc.returncode, self._stdout.read_text(),
                                                   self._stderr.read_text()), self.args)

    def stop(self) -> None:
        """Stop a run still going or not yet begun (a session cut short); snakemake cancels its jobs on SIGTERM."""
        with self._lock:
            self._stopped = True
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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


def planned_outputs(workdir: Path, *args: str) -> dict[str, set[str]]:
    """{rule: the output files of all its jobs} that a dry run would write."""
    out = snakemake(workdir, "-n", *args).stdout
    outputs: dict[str, set[str]] = {}
    rule = None
    for line in out.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if match:
            rule = match.group(1)
            outputs.setdefault(rule, set())
        elif rule and line.strip().startswith("output:"):
            outputs[rule] |= {p.strip() for p in line.strip()[len("output:"):].split(",") if p.strip()}
    return outputs

"""Garbage-collector benchmark: what `dti.jobs.lighten_gc()` saves per process.

Every Snakemake job is a fresh Python process, and on a cluster each job also starts Snakemake twice more
(in its sbatch job and in its srun step). This times, side by side over interleaved rounds, the CPU time
(user + sys) of such processes with the default collector settings and with `lighten_gc()`, called
where the workflow calls it:

- a job process: `lighten_gc()` first, as the job scripts do, then the imports of train, sample and
  score, then exit;
- a Snakemake start: a dry run of one job of the embedded default (`--target-jobs`, as in a job step);
  the Snakefile calls `lighten_gc()` once Snakemake itself is imported.

    python bench/gc_settings.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

JOB = """
{setup}
import torch, diffusers, transformers, open_clip, timm
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel
"""
# The Snakefile calls dti.jobs.lighten_gc(); the default variant replaces it before the Snakefile runs.
SNAKEMAKE = """
import runpy, sys
import dti.jobs
{setup}
sys.argv = ["snakemake", *sys.argv[1:]]
runpy.run_module("snakemake", run_name="__main__")
"""
VARIANTS = {
    "default gc": {"job": "", "snakemake": "dti.jobs.lighten_gc = lambda: None"},
    "lighten_gc": {"job": "from dti.jobs import lighten_gc; lighten_gc()", "snakemake": ""},
}


def child_cpu(args: list[str], cwd: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one child process run to completion."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="dti-bench-gc-")
    dry_run = ["--snakefile", str(REPO / "Snakefile"), "--directory", workdir, "-n", "--quiet", "all",
               "--target-jobs", "tiny_model:family=sd", "--allowed-rules", "tiny_model", "--cores", "1"]
    commands = {
        (kind, name): [sys.executable, "-c", (JOB if kind == "job" else SNAKEMAKE).format(setup=code[kind]),
                       *(dry_run if kind == "snakemake" else [])]
        for name, code in VARIANTS.items() for kind in ("job", "snakemake")
    }
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in commands}
    wall: dict[tuple[str, str], list[float]] = {key: [] for key in commands}
    keys = list(commands)
    for round_index in range(args.rounds):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:  # rotate the order each round
            c, w = child_cpu(commands[key], workdir)
            cpu[key].append(c)
            wall[key].append(w)
    for kind in ("job", "snakemake"):
        for name in VARIANTS:
            key = (kind, name)
            print(f"{kind:10s} {name:13s} CPU median {statistics.median(cpu[key]):5.2f} s   "
                  f"wall median {statistics.median(wall[key]):5.2f} s")
        default, light = statistics.median(cpu[(kind, "default gc")]), statistics.median(cpu[(kind, "lighten_gc")])
        print(f"{kind:10s} CPU default / lighten_gc: {default / light:.2f}x  (saves {default - light:.2f} CPU-s "
              f"per process)")


if __name__ == "__main__":
    main()

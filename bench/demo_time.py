"""Demo benchmark: `make demo`'s workflow and report, end to end, with the embedded default and variants.

Each round runs the whole embedded default from nothing (the workflow on 2 cores as `make demo` runs it,
then `snakemake --report`) in a fresh copy of the committed tree, once per variant, in rotating order,
and records its wall time and CPU time (user + sys of every process it started). The shared machines
this project runs on change speed by tens of percent within an hour, so every run is preceded by a
calibration, the CPU time of `python -c "import torch"`: runs compare at like speeds, and a reader can
see what speed a figure was measured at. Prints each run, then medians and each variant's ratio to the
embedded default.

Variants (config files given after the default, as `--configfile` merges them):
- `vit-b32-clip`: CLIP-I and CLIP-T scored with a random ViT-B/32 instead of the tiny CLIP folder (the
  default until the tiny CLIP replaced it).

    python bench/demo_time.py [--rounds 2] [--variants default vit-b32-clip] [--cores 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from tree_timing import SNAKEMAKE, committed_tree, timed, torch_import_cpu

VARIANTS = {
    "default": None,
    "vit-b32-clip": "metrics:\n  clip: {enabled: true, backend: open_clip, model: ViT-B-32, pretrained: null}\n",
}


def succeeded(command: list[str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds of `command` and everything it started (it must succeed)."""
    wall, cpu, done = timed(command, cwd)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {cwd}:\n{done.stderr[-3000:]}")
    return wall, cpu


def run_demo(variant: str, cores: int, scratch: Path) -> dict:
    tree = scratch / variant
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    committed_tree(tree)
    extra: list[str] = []
    if VARIANTS[variant] is not None:
        override = tree / f"bench-{variant}.yaml"
        override.write_text(VARIANTS[variant])
        extra = ["--configfile", "config/config.yaml", str(override)]
    calibration = torch_import_cpu(tree)
    workflow = succeeded([SNAKEMAKE, "--profile", "profiles/local", "--cores", str(cores), "--resources",
                          f"gpu={cores}", *extra], tree)
    report = succeeded([SNAKEMAKE, "--report", "report.html", *extra], tree)
    return {"variant": variant, "wall": workflow[0] + report[0], "cpu": workflow[1] + report[1],
            "import_torch": calibration}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    if args.variants[0] != "default":
        args.variants = ["default", *[v for v in args.variants if v != "default"]]

    runs = []
    with tempfile.TemporaryDirectory(prefix="dti-demo-bench-") as scratch:
        for round_index in range(args.rounds):
            shift = round_index % len(args.variants)
            for variant in args.variants[shift:] + args.variants[:shift]:  # rotate the order
                run = run_demo(variant, args.cores, Path(scratch))
                runs.append(run)
                print(f"round {round_index + 1}  {variant:14s} wall {run['wall']:6.1f} s  CPU {run['cpu']:6.1f} s"
                      f"  (import torch: {run['import_torch']:.2f} CPU-s)", flush=True)
    medians = {v: statistics.median(r["wall"] for r in runs if r["variant"] == v) for v in args.variants}
    for variant, wall in medians.items():
        cpu = statistics.median(r["cpu"] for r in runs if r["variant"] == variant)
        print(f"{variant:14s} median wall {wall:6.1f} s  CPU {cpu:6.1f} s  ratio to default "
              f"{wall / medians['default']:.2f}x")


if __name__ == "__main__":
    main()

"""Planning benchmark: how long Snakemake takes to plan (dry-run, `snakemake -n`) the paper's configs.

Each run is `snakemake -n --configfile <config>` (no download: a dry run fetches nothing) in a fresh copy of
the committed tree made once for the whole benchmark; a dry run writes only Snakemake's metadata there
(.snakemake/), nothing into the repository. Configs are planned in rotating order over the rounds, so the
first round holds each config's cold run (a new .snakemake/ and, for the first one, a cold page cache).
Each run records the number of jobs (the "total" line of Snakemake's job stats), its wall time and CPU time
(user + sys of every process it started). The shared machines this project runs on change speed by tens of
percent within an hour, so every run is preceded by a calibration, the CPU time of `python -c "import
torch"`, to show what speed a figure was measured at. Prints each run, then per config the median and
minimum wall time, the median CPU time and calibration, and whether the median wall time is under the goal.

    python bench/plan_time.py [--rounds 3] [--configs config/paper.yaml ...] [--goal 10]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from pathlib import Path

from tree_timing import REPO, SNAKEMAKE, committed_tree, timed, torch_import_cpu

CONFIGS = ["config/paper.yaml", "config/paper-ablations.yaml", "config/paper-finetune.yaml"]
TOTAL = re.compile(r"^total\s+(\d+)\s*$", re.MULTILINE)


def plan(config: str, tree: Path) -> dict:
    calibration = torch_import_cpu(tree)
    wall, cpu, done = timed([SNAKEMAKE, "-n", "--configfile", config], tree)
    output = done.stdout + done.stderr
    totals = TOTAL.findall(output)
    if done.returncode != 0 or not totals:
        why = f"exit status {done.returncode}" if done.returncode != 0 else "no 'total <N>' line"
        raise SystemExit(f"snakemake -n --configfile {config} failed ({why}) in {tree}:\n{output[-3000:]}")
    return {"config": config, "jobs": int(totals[-1]), "wall": wall, "cpu": cpu, "import_torch": calibration}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--goal", type=float, default=10.0, help="seconds of median wall time per config")
    args = parser.parse_args()
    missing = [c for c in args.configs if not (REPO / c).is_file()]
    if missing:
        raise SystemExit(f"no such config in {REPO}: {' '.join(missing)}")

    runs = []
    with tempfile.TemporaryDirectory(prefix="dti-plan-bench-") as scratch:
        tree = Path(scratch)
        committed_tree(tree)
        for round_index in range(args.rounds):
            shift = round_index % len(args.configs)
            for config in args.configs[shift:] + args.configs[:shift]:  # rotate the order
                run = plan(config, tree)
                runs.append(run)
                print(f"round {round_index + 1}  {config:28s} {run['jobs']:5d} jobs  wall {run['wall']:5.1f} s"
                      f"  CPU {run['cpu']:5.1f} s  (import torch: {run['import_torch']:.2f} CPU-s)", flush=True)
    for config in args.configs:
        mine = [r for r in runs if r["config"] == config]
        wall = statistics.median(r["wall"] for r in mine)
        cpu = statistics.median(r["cpu"] for r in mine)
        torch_cpu = statistics.median(r["import_torch"] for r in mine)
        verdict = "under" if wall < args.goal else "OVER"
        print(f"{config:28s} {mine[0]['jobs']:5d} jobs  median wall {wall:5.1f} s  min "
              f"{min(r['wall'] for r in mine):5.1f} s  CPU {cpu:5.1f} s  (import torch: {torch_cpu:.2f} CPU-s)"
              f"  {verdict} the {args.goal:g} s goal")


if __name__ == "__main__":
    main()

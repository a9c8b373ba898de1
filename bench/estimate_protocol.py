"""GPU-hours of a whole benchmark config, from the jobs `snakemake -n` plans and the per-image and
per-step times the GPU benchmarks measured (bench/results/*.json).

    python bench/estimate_protocol.py --configfile config/paper-sdxl.yaml \
        --sample-json bench/results/h200-2026-11-30-run1/sdxl/sample_throughput.json \
        --train-json bench/results/h200-2026-11-30-run1/train_sdxl.json --images-per-sample-job 164

Sampling time per job = load + first-call compile + images x seconds per image (ours, as the sample job
ran it); training time per job = load + steps x seconds per step (the configuration a GPU job runs by
default, "<method>_fast"; CrossInit steps cost what TI's do: the same network, one extra vector loss).
Score jobs are left out: their models run about two ViT-B forwards per image, a fraction of a percent of
the 687 TFLOP an SDXL image costs.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from dti.benchmark_config import enabled_backbones, load_config_files

REPO = Path(__file__).resolve().parents[1]


def planned_jobs(configfiles: list[str]) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--configfile", *configfiles],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", required=True, nargs="+",
                        help="config files as snakemake takes them")
    parser.add_argument("--sample-json", required=True)
    parser.add_argument("--train-json", required=True)
    parser.add_argument("--family", default="sdxl")
    parser.add_argument("--images-per-sample-job", type=int, required=True)
    args = parser.parse_args()

    config = load_config_files(args.configfile)
    backbone = next(b for b in enabled_backbones(config).values() if b["family"] == args.family)
    steps = backbone["train"]["steps"]
    sample = json.loads(Path(args.sample_json).read_text())["families"][args.family]
    train = json.loads(Path(args.train_json).read_text())["families"][args.family]
    load = sample["load_seconds"].get("job_cold") or sample["load_seconds"]["job_warm"]
    compile_s = sample["ours_first_call_2_steps_seconds"]  # an upper bound: includes two sampling steps
    per_image = sample["seconds_per_image"]["ours"]
    step_s = {m: train["seconds_per_step"].get(f"{m}_fast", train["seconds_per_step"].get(m))
              for m in ("ti", "dti")}
    step_s["crossinit"] = step_s["ti"]
    jobs = planned_jobs(args.configfile)
    trained = [m for m in config["methods"] if m in step_s]
    n_train_each = jobs.get("train", 0) // max(1, len(trained))
    train_hours = sum(n_train_each * (load + steps * step_s[m]) for m in trained) / 3600
    sample_hours = jobs.get("sample", 0) * (load + compile_s + args.images_per_sample_job * per_image) / 3600
    images = jobs.get("sample", 0) * args.images_per_sample_job
    print(f"plan: {jobs.get('train', 0)} train jobs x {steps} steps, {jobs.get('sample', 0)} sample jobs "
          f"x {args.images_per_sample_job} images = {images} images, {jobs.get('score', 0)} score jobs")
    print(f"measured on {json.loads(Path(args.sample_json).read_text())['device']}: {per_image:.3f} s/image, "
          + ", ".join(f"{m} {s * 1000:.0f} ms/step" for m, s in step_s.items()) + f", load {load:.1f} s, "
          f"compile {compile_s:.1f} s per sample job")
    print(f"training {train_hours:.1f} GPU-h + sampling {sample_hours:.1f} GPU-h = "
          f"{train_hours + sample_hours:.1f} GPU-hours (scoring not included)")


if __name__ == "__main__":
    main()

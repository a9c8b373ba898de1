"""Scoring-model benchmark: the embedded default's metric models against the paper's, random weights.

Three configurations build their encoders and encode the same images and prompts as one score job of the
embedded default (64 px samples and subject photos, CLIP-T prompts), side by side in one process,
interleaved over rounds; the script prints medians and their ratios. CPU, one thread, like a CI job.
The third is the embedded default with a random ViT-B/32 in place of its tiny CLIP (the default before
the tiny CLIP): what the tiny CLIP saves each score job.

    python bench/metric_models.py [--rounds 3] [--images 12] [--texts 8]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from PIL import Image

from dti.metrics.scoring import load_metric_models
from dti.metrics.spec import parse_metric_specs, tiny_families
from dti.metrics.tiny import write_tiny_metric_model

REPO = Path(__file__).resolve().parents[1]


def paper_models_at_random(paper: dict) -> dict:
    """The paper config's DINO and CLIP with their weights switched to a random init (its transformers
    models need their hub folders)."""
    specs = {}
    for key, raw in paper.items():
        if raw.get("enabled", True) and key in ("dino", "clip"):
            specs[key] = {**raw, "pretrained": False if raw.get("backend") == "timm" else None}
            specs[key].pop("weights", None)
    return specs


def score_once(metric_config: dict, images: list[Image.Image], texts: list[str], tiny_dirs: dict) -> float:
    start = time.perf_counter()
    for encoder in load_metric_models(parse_metric_specs(metric_config, tiny_dirs)).values():
        encoder.encode_images(images)
        if hasattr(encoder, "encode_texts"):
            encoder.encode_texts(texts)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=12, help="samples + subject photos of one score job")
    parser.add_argument("--texts", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)

    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["metrics"]
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["metrics"]
    vit_b32 = {**default, "clip": {"backend": "open_clip", "model": "ViT-B-32", "pretrained": None}}
    configs = {"embedded default": default, "paper models, random weights": paper_models_at_random(paper),
               "default with ViT-B/32 CLIP": vit_b32}
    gen = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(64, 64, 3, generator=gen) * 255).byte().numpy())
              for _ in range(args.images)]
    texts = [f"a photo of sks dog number {i} on the beach" for i in range(args.texts)]

    # The default's tiny models (DINOv2, CLIP, SigLIP) are folders a workflow rule builds once.
    tiny_root = Path(tempfile.mkdtemp(prefix="dti-bench-"))
    tiny_dirs = {key: write_tiny_metric_model(key, tiny_root / key) for key in tiny_families(default)}

    times: dict[str, list[float]] = {name: [] for name in configs}
    score_once(default, images[:1], texts[:1], tiny_dirs)  # warm-up: first-call allocations and kernel choice
    for round_index in range(args.rounds):
        names = list(configs)
        names = names[round_index % len(names):] + names[:round_index % len(names)]  # rotate the order
        for name in names:
            times[name].append(score_once(configs[name], images, texts, tiny_dirs))
    shutil.rmtree(tiny_root)
    for name, values in times.items():
        print(f"{name:30s} median {statistics.median(values):6.2f} s  rounds {[round(v, 2) for v in values]}")
    base = statistics.median(times["embedded default"])
    for name in list(configs)[1:]:
        print(f"{name} / embedded default: {statistics.median(times[name]) / base:.2f}x")


if __name__ == "__main__":
    main()

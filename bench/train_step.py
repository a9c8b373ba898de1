"""Training-step benchmark: DTI vs TI step time, the latent cache vs encoding every step, and the GPU
speed switches (dti.speedups) on and off, with MFU from FLOPs counted with torch.utils.flop_counter.

Every configuration is timed side by side in one process, interleaved over several rounds, and the
script prints ratios of medians. On a GPU it uses the full-size SD 1.5 / SDXL architectures with random
weights (bf16 frozen weights, fp32 trainable rows); on a CPU the tiny models. Configurations with the
switches on train their own copy of the denoiser (the switches change modules in place).

    python bench/train_step.py [--family sd sdxl] [--steps 10] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from gpu_common import count_flops, kernel_breakdown, peak_tflops
from PIL import Image

from dti.backbones import backbone_class
from dti.speedups import Speedups
from dti.train import Trainer, TrainSettings

OFF, ON = Speedups(False, False, False), Speedups(True, True, True)
# name: (method, latent cache, speed switches)
CONFIGS = {"ti": ("ti", True, OFF), "dti": ("dti", True, OFF), "dti_no_cache": ("dti", False, OFF),
           "ti_fast": ("ti", True, ON), "dti_fast": ("dti", True, ON)}


def make_images(n: int, size: int) -> list[Image.Image]:
    gen = torch.Generator().manual_seed(0)
    return [Image.fromarray((torch.rand(size, size, 3, generator=gen) * 255).byte().numpy()) for _ in range(n)]


def build_backbone(family: str, device: str):
    if device == "cuda":
        from dti.fullsize import build_fullsize_pipeline

        pipe = build_fullsize_pipeline(family)
    else:
        from dti.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline(family)
    pipe.vae.to(torch.float32)  # as in training: the VAE encodes in fp32
    return backbone_class(family).from_pipeline(pipe.to(device), f"bench-{family}")


def time_steps(trainer: Trainer, steps: int, device: str) -> float:
    trainer.train_step()  # warm-up (allocator, kernels)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def time_optimizer(trainer: Trainer, device: str, repeats: int = 200) -> float:
    """The optimizer update alone (gradients already in place): the only per-step work DTI adds."""
    for layer in trainer.layers.values():
        layer.rows.grad = torch.randn_like(layer.rows)
    trainer.optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        trainer.optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", nargs="+", default=["sd", "sdxl"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--profile-dir", help="write the torch profiler's kernel table of one fast DTI step here")
    args = parser.parse_args()
    torch._dynamo.config.cache_size_limit = 64  # several shapes and grad modes compile the same block
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "families": {}}
    for family in args.family:
        if device == "cuda":
            resolution, batch = (512 if family == "sd" else 768), 4  # the published recipes
        else:
            resolution, batch = 64, 2
        backbone = build_backbone(family, device)
        images = make_images(5, resolution + resolution // 4)
        fast_backbone = type(backbone)({**backbone.components, "unet": copy.deepcopy(backbone.unet)}, backbone.model_id)
        trainers = {}
        for name, (method, cache, speedups) in CONFIGS.items():
            # Each trainer installs its own placeholder rows; restore the encoders' plain embeddings after.
            originals = [slot.encoder.get_input_embeddings() for slot in backbone.slots]
            settings = TrainSettings(method=method, placeholder=f"<bench-{name}>", initializer="stuffed animal",
                                     steps=10**6, batch_size=batch, resolution=resolution, latent_cache=cache,
                                     speedups=speedups)
            owner = fast_backbone if speedups.compile else backbone
            trainer = Trainer(owner, images, settings, tempfile.mkdtemp())
            trainers[name] = (trainer, [slot.encoder.get_input_embeddings() for slot in backbone.slots])
            for slot, original in zip(backbone.slots, originals, strict=True):
                slot.encoder.set_input_embeddings(original)
        configs = CONFIGS
        times = {name: [] for name in configs}
        names = list(trainers)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate: no config always goes first
                trainer, layers = trainers[name]
                for slot, layer in zip(backbone.slots, layers, strict=True):
                    slot.encoder.set_input_embeddings(layer)
                times[name].append(time_steps(trainer, args.steps, device))
        med = {name: statistics.median(t) for name, t in times.items()}
        trainer, layers = trainers["dti"]
        for slot, layer in zip(backbone.slots, layers, strict=True):
            slot.encoder.set_input_embeddings(layer)
        flops = count_flops(trainer.train_step)  # one step: forward and backward, every encoder
        row = {"resolution": resolution, "batch": batch, "seconds_per_step": med, "rounds": times,
               "optimizer_step_seconds": {n: time_optimizer(trainers[n][0], device) for n in ("ti", "dti")},
               "dti_over_ti": med["dti"] / med["ti"], "no_cache_over_cache": med["dti_no_cache"] / med["dti"],
               "fast_over_plain": {m: med[m] / med[f"{m}_fast"] for m in ("ti", "dti")}, "flops_per_step": flops}
        peak = peak_tflops()
        if peak:
            row["mfu"] = {name: flops / t / (peak * 1e12) for name, t in med.items()}
        if device == "cuda":
            row["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
        if args.profile_dir:
            trainer, layers = trainers["dti_fast"]
            for slot, layer in zip(backbone.slots, layers, strict=True):
                slot.encoder.set_input_embeddings(layer)
            row["profile_dti_fast"] = kernel_breakdown(trainer.train_step,
                                                       Path(args.profile_dir) / f"{family}_train_profile.txt")
        results["families"][family] = row
        print(f"{family}: {resolution}px batch {batch} on {results['device']}: "
              + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in med.items())
              + f" | DTI/TI = {row['dti_over_ti']:.3f} | no-cache/cache = {row['no_cache_over_cache']:.3f}"
              + " | plain/fast = " + ", ".join(f"{k} {v:.3f}" for k, v in row["fast_over_plain"].items())
              + f" | {flops / 1e12:.2f} TFLOP/step"
              + ("" if "mfu" not in row else " | MFU " + ", ".join(f"{k} {v:.1%}" for k, v in row["mfu"].items()))
              + " | optimizer step alone: " + ", ".join(f"{k} {v * 1e6:.0f} us"
                                                     for k, v in row["optimizer_step_seconds"].items()), flush=True)
        print(f"{family} per-round seconds/step: " + "; ".join(
            f"{k}: " + " ".join(f"{t * 1000:.1f}" for t in v) for k, v in times.items()), flush=True)
        del trainers, backbone, fast_backbone
        if device == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()

"""Training-step benchmark: DTI vs TI step time, CoRe's regularizers against TI and DTI, DTI + DCO and DTI + OFT
(an adapter on the denoiser beside the token) against DTI, CoRe's second stage (the whole UNet) against TI,
the latent cache vs encoding every step, and the GPU speed switches (dti.speedups) on and off, with MFU from FLOPs counted with torch.utils.flop_counter, and on a
GPU each configuration's peak memory.

Every configuration is timed side by side in one process, interleaved over several rounds, and the
script prints ratios of medians. On a GPU it uses the full-size architectures of every registered family
with random weights (dti.fullsize: SD 1.5, SDXL, SANA 1.5 1.6B, Wan 2.1 1.3B; bf16 frozen weights, fp32
trainable rows) at the published resolution and batch; on a CPU the tiny models. "fast" is what a GPU
job of that family runs by default (Backbone.resolve_speedups). Configurations with the switches on, and each
configuration with an adapter, train their own copy of the denoiser (both change modules in place).

    python bench/train_step.py [--family sd sdxl sana wan] [--steps 10] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from gpu_common import PeakMemory, count_flops, kernel_breakdown, peak_tflops
from PIL import Image

from dti.backbones.catalog import backbone_class
from dti.export import save_diffusers
from dti.families import family_names
from dti.methods import get_method
from dti.speedups import CPU_DEFAULTS, Speedups
from dti.train import Trainer, TrainSettings

OFF = CPU_DEFAULTS
# name: (method, latent cache, speed switches); "fast" = what a GPU job of the family runs by default
CONFIGS = {"ti": ("ti", True, "off"), "dti": ("dti", True, "off"), "dti_no_cache": ("dti", False, "off"),
           "ti_fast": ("ti", True, "fast"), "dti_fast": ("dti", True, "fast"),
           "dti_fast_channels_last": ("dti", True, "fast_channels_last"),
           # CoRe's regularizers: two more text-encoder and two more denoiser passes per step (sd and sdxl only)
           "core": ("core", True, "off"), "dti_core": ("dti_core", True, "off"), "core_fast": ("core", True, "fast"),
           # Token plus weights with the registry's defaults (rank 4 on to_q/to_k/to_v): a LoRA trained with the
           # DCO loss (one more denoiser pass per step, without gradients) or OFT. Plain only: fused QKV, a GPU
           # job's default, bypasses the adapters' to_q/to_k/to_v (bench/README.md).
           "dti_dco": ("dti_dco", True, "off"), "dti_oft": ("dti_oft", True, "off"),
           # CoRe's second stage: every UNet weight trained in fp32 with AdamW (from a core token made here)
           "core_unet": ("core_unet", True, "off")}
# CoRe's and the adapters' configurations are timed on request (--configs dti dti_dco dti_oft ...): a CoRe step
# costs several TI steps and each adapter configuration holds a copy of the denoiser, so the default run (make
# bench, gpu_check.sh's TRAIN_S part) leaves them out and bench/gpu_check.sh gives each group a part of its own.
OPT_IN = ("core", "dti_core", "core_fast", "dti_dco", "dti_oft", "core_unet")
DEFAULT_CONFIGS = [name for name in CONFIGS if name not in OPT_IN]
# The published training recipes on a GPU (resolution, batch): docs/protocol.md and docs/backbones.md.
GPU_RECIPES = {"sd": (512, 4), "sdxl": (768, 4), "sana": (1024, 2), "wan": (512, 2)}


def switch_sets(backbone) -> dict:
    """The speed switches of each configuration for this family (a GPU job's defaults as "fast")."""
    fast = backbone.resolve_speedups(Speedups(), device="cuda")
    sets = {"off": OFF, "fast": fast}
    if "channels_last" in backbone.speedups_supported:
        sets["fast_channels_last"] = replace(fast, channels_last=True)
    return sets


RATIOS = {"DTI/TI": ("dti", "ti"), "DTI/TI fast": ("dti_fast", "ti_fast"), "no-cache/cache": ("dti_no_cache", "dti"),
          "TI plain/fast": ("ti", "ti_fast"), "DTI plain/fast": ("dti", "dti_fast"),
          "fast/fast+channels_last": ("dti_fast", "dti_fast_channels_last"),
          "CoRe/TI": ("core", "ti"), "DTI+CoRe/DTI": ("dti_core", "dti"), "CoRe/TI fast": ("core_fast", "ti_fast"),
          "DTI+DCO/DTI": ("dti_dco", "dti"), "DTI+OFT/DTI": ("dti_oft", "dti"), "CoRe+UNet/TI": ("core_unet", "ti")}


def make_images(n: int, size: int) -> list[Image.Image]:
    gen = torch.Generator().manual_seed(0)
    return [Image.fromarray((torch.rand(size, size, 3, generator=gen) * 255).byte().numpy()) for _ in range(n)]


def build_backbone(family: str, device: str):
    if device == "cuda":
        from dti.backbones.catalog import build_fullsize_pipeline

        pipe = build_fullsize_pipeline(family)
    else:
        from dti.backbones.catalog import build_tiny_pipeline

        pipe = build_tiny_pipeline(family)
    pipe.vae.to(torch.float32)  # as in training: the VAE encodes in fp32
    return backbone_class(family).from_pipeline(pipe.to(device), f"bench-{family}")


@contextmanager
def plain_embeddings(backbone):
    """Each trainer installs its own placeholder rows in the shared text encoders: put the plain tables back
    after the block."""
    originals = [slot.encoder.get_input_embeddings() for slot in backbone.slots]
    try:
        yield
    finally:
        for slot, original in zip(backbone.slots, originals, strict=True):
            slot.encoder.set_input_embeddings(original)


def first_stage(backbone, images, method: str, name: str) -> str | None:
    """For a second-stage method (core_unet), a folder with the token of the method it continues after one
    step of it (the step's cost does not depend on the token's values); None for every other method."""
    first = get_method(method).starts_from
    if first is None:
        return None
    folder = tempfile.mkdtemp()
    settings = TrainSettings(method=first, placeholder=f"<bench-{name}-start>", initializer="stuffed animal")
    with plain_embeddings(backbone):
        start = Trainer(backbone, images[:1], settings, folder)
        start.train_step()
        save_diffusers(Path(folder), settings.placeholder, start.vectors(), start.provenance())
        start.release()
    return folder


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


def run_rounds(order, trainers, backbone, times, failed, first, steps, device, family, meter, memory) -> None:
    """Time each named configuration once per round; a configuration that raises is reported, not retried. On
    a GPU, memory["peak"][name] is the highest peak of its rounds (each round resets the peak), and
    memory["step"][name] that peak less what was allocated at the reset: every configuration's denoiser copy
    and state stay resident throughout, so the step's own memory is what tells configurations apart."""
    for round_names in order:
        for name in round_names:
            if name in failed:
                continue
            trainer, layers = trainers[name]
            for slot, layer in zip(backbone.slots, layers, strict=True):
                slot.encoder.set_input_embeddings(layer)
            resident = meter.reset()
            try:
                if name not in first:  # the first step compiles where a switch compiles
                    start = time.perf_counter()
                    trainer.train_step()
                    torch.cuda.synchronize() if device == "cuda" else None
                    first[name] = time.perf_counter() - start
                times[name].append(time_steps(trainer, steps, device))
                if device == "cuda":
                    peak = meter.peak()
                    memory["peak"][name] = max(memory["peak"].get(name, 0), peak)
                    memory["step"][name] = max(memory["step"].get(name, 0), peak - resident)
                print(f"{family} {name}: {times[name][-1] * 1000:.1f} ms/step (first step {first[name]:.1f} s)",
                      flush=True)
            except Exception as exc:  # a switch this stack cannot run: report it, time the others
                failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                print(f"{family} {name} failed: {failed[name]}", flush=True)


def print_table(family: str, row: dict, med: dict) -> None:
    """One line per configuration: step time, its ratio to DTI's, what it trains, and on a GPU its memory."""
    ref = "dti" if "dti" in med else next(iter(med), None)
    by_method = row["flops_per_step_by_method"]

    def gb(key: str, name: str) -> str:
        return f"{row[key][name]:.2f}" if name in row.get(key, {}) else "-"  # "-": a CPU run, or it failed

    print(f"{family} {'config':<24}{'ms/step':>9}{'/ ' + str(ref):>10}{'token':>8}{'adapter':>11}{'peak GB':>9}"
          f"{'step GB':>9}{'TFLOP':>10}", flush=True)
    for name, seconds in med.items():
        params, method = row["trainable_parameters"][name], CONFIGS[name][0]
        tflop = f"{by_method[method] / 1e12:.3g}" if method in by_method else "-"
        print(f"{family} {name:<24}{seconds * 1000:>9.1f}{seconds / med[ref]:>10.3f}{params['token']:>8}"
              f"{params['adapter']:>11}{gb('peak_memory_gb_by_config', name):>9}"
              f"{gb('step_memory_gb_by_config', name):>9}{tflop:>10}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", nargs="+", default=["sd", "sdxl"], choices=family_names())
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--profile-dir", help="write the torch profiler's kernel table of one fast DTI step here")
    args = parser.parse_args()
    torch._dynamo.config.cache_size_limit = 64  # several shapes and grad modes compile the same block
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "families": {}}
    meter = PeakMemory()
    for family in args.family:
        resolution, batch = GPU_RECIPES.get(family, (512, 2)) if device == "cuda" else (64, 2)
        backbone = build_backbone(family, device)
        images = make_images(5, resolution + resolution // 4)
        sets = switch_sets(backbone)
        # Switches and adapters change the denoiser in place: each distinct switch set trains its own copy of it,
        # and so does each configuration with an adapter (a denoiser takes one, and on a shared one it would run,
        # and take gradients, in every other configuration's step).
        owners = {(OFF, None): backbone}
        trainers, parameters = {}, {}
        for name in args.configs:
            method, cache, switches = CONFIGS[name]
            if switches not in sets:
                print(f"{family} {name}: skipped ({switches} does not apply to {family})", flush=True)
                continue
            if get_method(method).families and family not in get_method(method).families:
                print(f"{family} {name}: skipped ({method} runs on {', '.join(get_method(method).families)})",
                      flush=True)
                continue
            speedups = sets[switches]
            owner = (speedups, name if get_method(method).unit_class().adapter else None)
            if owner not in owners:
                denoiser = {backbone.denoiser_name: copy.deepcopy(backbone.denoiser)}
                owners[owner] = type(backbone)({**backbone.components, **denoiser}, backbone.model_id)
            start_from = first_stage(backbone, images, method, name)
            with plain_embeddings(backbone):
                settings = TrainSettings(method=method, placeholder=f"<bench-{name}>", initializer="stuffed animal",
                                         steps=10**6, batch_size=batch, resolution=resolution, latent_cache=cache,
                                         speedups=speedups, start_from=start_from)
                trainer = Trainer(owners[owner], images, settings, tempfile.mkdtemp())
                trainers[name] = (trainer, [slot.encoder.get_input_embeddings() for slot in backbone.slots])
                cost = trainer.cost()  # what run.json's "cost" says of a run of this method
                parameters[name] = {"token": cost["token_parameters"], "adapter": cost["adapter_parameters"]}
        configs = trainers
        times = {name: [] for name in configs}
        failed: dict = {}
        names = list(trainers)
        first = {}
        memory = {"peak": {}, "step": {}}

        state = (trainers, backbone, times, failed, first, args.steps, device, family, meter, memory)
        run_rounds([names[r % len(names):] + names[: r % len(names)] for r in range(args.rounds)], *state)  # rotated
        # One step's FLOPs (forward and backward, every encoder) per method, counted on its plain cached
        # configuration: the switches change how the denoiser runs, not what it computes, so the count serves
        # the method's other configurations too (DCO's reference pass and OFT's rotations make theirs differ).
        flops = {}
        for name, (trainer, layers) in trainers.items():
            method, cache, switches = CONFIGS[name]
            if switches != "off" or not cache or method in flops or name in failed:
                continue
            for slot, layer in zip(backbone.slots, layers, strict=True):
                slot.encoder.set_input_embeddings(layer)
            flops[method] = count_flops(trainer.train_step)
        profile = None
        if args.profile_dir and "dti_fast" in trainers:
            trainer, layers = trainers["dti_fast"]
            for slot, layer in zip(backbone.slots, layers, strict=True):
                slot.encoder.set_input_embeddings(layer)
            profile = kernel_breakdown(trainer.train_step, Path(args.profile_dir) / f"{family}_train_profile.txt")
        times = {n: t for n, t in times.items() if t}
        med = {name: statistics.median(t) for name, t in times.items()}
        row = {"resolution": resolution, "batch": batch, "seconds_per_step": med, "rounds": times,
               "optimizer_step_seconds": {n: time_optimizer(trainers[n][0], device) for n in ("ti", "dti") if n in med},
               "flops_per_step": flops.get("dti"), "flops_per_step_by_method": flops,
               "trainable_parameters": parameters, "first_step_seconds": first, "failed": failed,
               "ratios": {label: med[a] / med[b] for label, (a, b) in RATIOS.items() if a in med and b in med}}
        peak = peak_tflops()
        if peak:
            row["mfu"] = {name: flops[CONFIGS[name][0]] / t / (peak * 1e12) for name, t in med.items()
                          if CONFIGS[name][0] in flops}
        if device == "cuda":
            row["peak_memory_gb"] = meter.process_peak() / 1e9  # the process's, as before per-config resets
            row["peak_memory_gb_by_config"] = {n: b / 1e9 for n, b in memory["peak"].items()}
            row["step_memory_gb_by_config"] = {n: b / 1e9 for n, b in memory["step"].items()}
        if profile:
            row["profile_dti_fast"] = profile
        results["families"][family] = row
        print(f"{family}: {resolution}px batch {batch} on {results['device']}: "
              + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in med.items())
              + " | " + ", ".join(f"{k} {v:.3f}" for k, v in row["ratios"].items())
              + " | TFLOP/step " + ", ".join(f"{k} {v / 1e12:.2f}" for k, v in flops.items())
              + ("" if "mfu" not in row else " | MFU " + ", ".join(f"{k} {v:.1%}" for k, v in row["mfu"].items()))
              + " | optimizer step alone: " + ", ".join(f"{k} {v * 1e6:.0f} us"
                                                     for k, v in row["optimizer_step_seconds"].items()), flush=True)
        print(f"{family} per-round seconds/step: " + "; ".join(
            f"{k}: " + " ".join(f"{t * 1000:.1f}" for t in v) for k, v in times.items()), flush=True)
        print_table(family, row, med)
        del trainers, backbone, owners
        if device == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()

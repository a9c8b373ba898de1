"""Sampling throughput: a plain diffusers pipeline (the authors' way) against the project's sample job,
side by side in one process, then each speed switch on and off.

    python bench/sample_throughput.py [--family sdxl sd sana wan] [--images 16] [--steps 50] [--json out.json]

Reference: the whole pipeline in bf16 loaded with `from_pretrained`, Euler, CFG 5, the images of one
batch in one call with one generator per image, PIL output saved one PNG after another (the authors'
evaluator). Ours: `dti.pipeline.render_subject` on a backbone loaded as a sample job loads it, with the
job's default settings on a GPU. Both start from the same initial latents (checked) and the same prompts.
Printed: s/image, images/s, peak memory, MFU from FLOPs counted with torch.utils.flop_counter, and the
ratio; the pixel difference between the two against the reference's own run-to-run difference; then
per-switch denoising times, the VAE decode precision (time and pixel difference), batch size, PNG
encoding, model loading, and a kernel breakdown from the torch profiler.

On a GPU it uses the full-size architectures with random weights (dti.fullsize), saved to a local folder as
a real checkpoint is (fp32 files) and loaded back; on a CPU the tiny models with a few steps, which only
proves the script runs. SANA and Wan pipelines get the arguments the sample job gives them (Wan: one
frame; SANA: no resolution binning), and only the switches their family supports.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from gpu_common import (
    CUDA,
    DEVICE,
    count_flops,
    kernel_breakdown,
    log,
    measured_matmul_tflops,
    peak_tflops,
    timed,
)
from PIL import Image

from dti.backbones.catalog import backbone_class
from dti.export import save_diffusers
from dti.families import FAMILIES, family_names, pipeline_families
from dti.model_record import load_recorded_backbone
from dti.pipeline import render_subject
from dti.prompts import load_prompt_set, render
from dti.sample import SampleSettings, install_learned_token, to_uint8
from dti.speedups import Speedups, apply_to_modules, attention_backend, gpu_defaults
from dti.subjects import prepare_subject
from dti.tokens import resolve_magnitude


# --- models -------------------------------------------------------------------------------------------
def write_model(family: str, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
    """A model folder as users have one: full-size random weights (fp32 files, as the hub's) on a GPU,
    tiny otherwise."""
    if CUDA:
        from dti.backbones.catalog import build_fullsize_pipeline

        pipe = build_fullsize_pipeline(family, dtype=dtype)
        pipe.save_pretrained(folder)
        del pipe
        torch.cuda.empty_cache()
    else:
        from dti.backbones.catalog import write_tiny_model

        write_tiny_model(family, folder)
    (folder.parent / f"{family}.json").write_text(json.dumps({"model": str(folder), "family": family}))
    return folder.parent / f"{family}.json"


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


# Sampling resolution per family on a GPU: the protocols' (Wan square at its training size).
RESOLUTIONS = {"sd": 512, "sdxl": 1024, "sana": 1024, "wan": 512}


def reference_pipeline(family: str, folder: Path):
    import diffusers

    cls = getattr(diffusers, FAMILIES[family].pipeline)
    extra = {k: v for k, v in backbone_class(family).pipeline_extras.items() if k != "feature_extractor"}
    dtype = torch.bfloat16 if CUDA else torch.float32
    pipe = cls.from_pretrained(folder, torch_dtype=dtype, **extra).to(DEVICE)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def family_class(pipe):
    return backbone_class(pipeline_families()[type(pipe).__name__])


def call_kwargs(pipe) -> dict:
    """What the sample job passes this family's pipeline besides the settings (Wan: one frame)."""
    return dict(family_class(pipe).sampling_kwargs)


def images_of(output) -> list:
    """PIL images of a pipeline call; a video pipeline's first (only) frames."""
    return output.images if hasattr(output, "images") else [video[0] for video in output.frames]


def write_token(backbone, folder: Path, placeholder: str = "<bench>", seed: int = 0) -> tuple[str, dict]:
    """A DTI-like token: a random direction per encoder at the vocabulary's mean norm."""
    gen = torch.Generator().manual_seed(seed)
    vectors = {}
    for slot in backbone.slots:
        table = slot.encoder.get_input_embeddings().weight
        direction = torch.randn(1, table.shape[1], generator=gen)
        vectors[slot.name] = resolve_magnitude(table, "mean") * direction / direction.norm()
    save_diffusers(folder, placeholder, vectors, {"dti.family": backbone.family})
    return placeholder, vectors


def write_subject(folder: Path) -> Path:
    image_dir = folder / "raw"
    image_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    paths = []
    for i in range(4):
        path = image_dir / f"{i}.png"
        Image.fromarray((torch.rand(96, 96, 3, generator=gen) * 255).byte().numpy()).save(path)
        paths.append(path)
    prepare_subject(paths, folder / "subject", name="bench", class_noun="toy", kind="object")
    return folder / "subject" / "subject.json"


# --- FLOPs ----------------------------------------------------------------------------------------------
def sampling_flops(pipe, backbone, resolution: int, steps: int, guidance: float) -> dict:
    """FLOPs of one image: the pipeline at 1 and 2 denoising steps gives the per-step part and the rest
    (text encoders); the decoder is counted apart."""
    def run(n_steps):
        return lambda: pipe(prompt=["a photo"], num_inference_steps=n_steps, guidance_scale=guidance,
                            height=resolution, width=resolution, output_type="latent", **call_kwargs(pipe))

    one, two = count_flops(run(1)), count_flops(run(2))
    latents = torch.zeros(1, *backbone.latent_shape(resolution // backbone.latent_factor), device=DEVICE)
    decode = count_flops(lambda: backbone.decode_latents(latents))
    per_step = two - one
    return {"per_step": per_step, "text": one - per_step, "decode": decode,
            "per_image": one - per_step + steps * per_step + decode}


# --- the two paths ------------------------------------------------------------------------------------
def record_initial_latents(pipe) -> list:
    """Wrap the pipeline's prepare_latents to keep what it returns (the initial noise)."""
    seen = []
    original = pipe.prepare_latents

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out.detach().float().cpu())
        return out

    pipe.prepare_latents = wrapped
    return seen


def run_reference(pipe, prompts, seeds, steps, resolution, out_dir: Path) -> dict:
    out: dict = {}
    torch.cuda.reset_peak_memory_stats() if CUDA else None
    gens = [torch.Generator(DEVICE).manual_seed(s) for s in seeds]
    with timed(out, "gpu_seconds"):
        images = images_of(pipe(prompt=prompts, generator=gens, num_inference_steps=steps, guidance_scale=5.0,
                                height=resolution, width=resolution, output_type="pil", **call_kwargs(pipe)))
    with timed(out, "png_seconds"):
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            image.save(out_dir / f"{i:03d}.png")
    out["seconds"] = out["gpu_seconds"] + out["png_seconds"]
    if CUDA:
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def run_ours(backbone, embeds: Path, subject_json: Path, templates, seeds, sample: dict, out_dir: Path) -> dict:
    out: dict = {}
    torch.cuda.reset_peak_memory_stats() if CUDA else None
    with timed(out, "seconds"):
        render_subject(backbone, str(embeds), str(subject_json), str(out_dir / "manifest.parquet"),
                       labels={"bench": True}, prompt_sets={"bench": templates}, seeds=seeds, sample=sample)
    if CUDA:
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def image_difference(a: list[Path], b: list[Path]) -> dict:
    diffs = [np.abs(pixels(x) - pixels(y)) for x, y in zip(a, b, strict=True)]
    mse = [float((d.astype(np.float64) ** 2).mean()) for d in diffs]
    return {"max_abs": int(max(d.max() for d in diffs)), "mean_abs": float(np.mean([d.mean() for d in diffs])),
            "psnr_db_min": float(min(10 * np.log10(255**2 / m) if m else float("inf") for m in mse))}


# --- levers -----------------------------------------------------------------------------------------------
@torch.inference_mode()  # as generate() runs: a compiled block is not recompiled for another grad mode
def denoise_seconds(pipe, prompts, seeds, steps, resolution, attention="auto") -> float:
    out: dict = {}
    gens = [torch.Generator(DEVICE).manual_seed(s) for s in seeds]
    with attention_backend(attention), timed(out, "t"):
        pipe(prompt=prompts, generator=gens, num_inference_steps=steps, guidance_scale=5.0, height=resolution,
             width=resolution, output_type="latent", **call_kwargs(pipe))
    return out["t"]


# Each switch alone on the plain denoiser, plus variants of ours; "ours" is the sample job's own denoiser.
# A switch the family does not support (docs/backbones.md) is left out.
LEVERS = ("channels_last", "fuse_qkv", "compile_transformer", "compile_transformer_resnet", "ours_channels_last")


def lever_pipelines(ref_pipe, backbone, wanted=LEVERS) -> dict:
    """One pipeline per switch, sharing everything with the reference except its own denoiser copy."""
    from dti.speedups import compile_blocks

    cls, name = type(ref_pipe), backbone.denoiser_name
    supported = backbone.speedups_supported
    blocks = backbone.compile_blocks or tuple(ref_pipe.components[name]._repeated_blocks)
    has_resnets = any(type(m).__name__ == "ResnetBlock2D" for m in ref_pipe.components[name].modules())
    configs = {"plain": ref_pipe}

    def variant(lever, speedups=None, compiled=None):
        if lever not in wanted:
            return
        denoiser = copy.deepcopy(ref_pipe.components[name])
        if speedups is not None:
            apply_to_modules(denoiser, None, speedups, blocks=blocks)
        if compiled is not None:
            compile_blocks(denoiser, compiled)
        configs[lever] = cls(**{**ref_pipe.components, name: denoiser})

    off = Speedups(False, False, False, "auto")
    if "channels_last" in supported:
        variant("channels_last", replace(off, channels_last=True))
    if "fuse_qkv" in supported:
        variant("fuse_qkv", replace(off, fuse_qkv=True))
    variant("compile_transformer", compiled=blocks)
    if has_resnets:
        variant("compile_transformer_resnet", compiled=blocks + ("ResnetBlock2D",))
    configs["ours"] = cls(**{**ref_pipe.components, name: backbone.denoiser})
    if "channels_last" in supported:
        variant("ours_channels_last", replace(backbone.resolve_speedups(Speedups(), "cuda"), channels_last=True))
    for pipe in configs.values():
        pipe.set_progress_bar_config(disable=True)
    return configs


def time_levers(configs: dict, prompts, seeds, steps, resolution, rounds: int) -> dict:
    warm = {}
    for name, pipe in configs.items():  # compiles where a switch compiles; reported apart
        warm[name] = denoise_seconds(pipe, prompts, seeds, 1, resolution)
    times = {name: [] for name in configs}
    names = list(configs)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(denoise_seconds(configs[name], prompts, seeds, steps, resolution))
    per_step = {n: statistics.median(t) / steps for n, t in times.items()}
    return {"seconds_per_step": per_step, "rounds": times, "first_call_seconds": warm,
            "speedup_vs_plain": {n: per_step["plain"] / v for n, v in per_step.items()}}


def time_attention(pipe, prompts, seeds, steps, resolution) -> dict:
    out = {}
    for backend in ("auto", "flash", "cudnn", "efficient"):
        try:
            denoise_seconds(pipe, prompts, seeds, 1, resolution, backend)
            out[backend] = denoise_seconds(pipe, prompts, seeds, steps, resolution, backend) / steps
        except RuntimeError as exc:  # a backend that cannot run these shapes on this device
            out[backend] = f"unavailable: {str(exc).splitlines()[0][:120]}"
    return out


def time_vae(backbone, latents: torch.Tensor) -> dict:
    """Decode the same denoised latents in fp32 and bf16: time per image and the pixel difference."""
    out = {}
    results = {}
    vae32 = backbone.vae
    vae16 = copy.deepcopy(vae32).to(torch.bfloat16)
    for name, vae in (("fp32", vae32), ("bf16", vae16)):
        backbone.vae = vae
        backbone.components["vae"] = vae
        with torch.inference_mode():
            backbone.decode_latents(latents[:1])  # warm-up
            times: dict = {}
            with timed(times, "t"):
                results[name] = to_uint8(backbone.decode_latents(latents))
        out[f"{name}_seconds_per_image"] = times["t"] / len(latents)
    backbone.vae = backbone.components["vae"] = vae32
    diff = (results["fp32"].to(torch.int16) - results["bf16"].to(torch.int16)).abs()
    out["bf16_vs_fp32_max_abs"] = int(diff.max())
    out["bf16_vs_fp32_mean_abs"] = float(diff.float().mean())
    return out


def time_png(paths: list[Path], workers: int) -> float:
    from concurrent.futures import ThreadPoolExecutor

    images = [Image.open(p).convert("RGB") for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        if workers:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda ia: ia[1].save(Path(tmp) / f"{ia[0]}.png"), enumerate(images)))
        else:
            for i, image in enumerate(images):
                image.save(Path(tmp) / f"{i}.png")
        return time.perf_counter() - start


# --- one family -------------------------------------------------------------------------------------------
def bench_family(family: str, args, work: Path, out_dir: Path, results: dict) -> None:
    res = (args.resolution or RESOLUTIONS.get(family, 512)) if CUDA else 64
    steps = args.steps if CUDA else 3
    row: dict = {"resolution": res, "steps": steps, "images": args.images, "guidance_scale": 5.0}
    results["families"][family] = row
    log(f"{family}: writing the model folder")
    model_json = write_model(family, work / family / "model", getattr(torch, args.checkpoint_dtype))
    folder = Path(json.loads(model_json.read_text())["model"])
    row["checkpoint_gb"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e9

    # Model loading, as a sample job loads it (bf16 denoiser and text encoders, fp32 VAE), from a cold page
    # cache where the machine lets us drop it; the reference's from_pretrained below is the warm case.
    load: dict = {}
    with timed(load, "job_cold" if drop_page_cache() and CUDA else "job_warm"):
        backbone = load_recorded_backbone(str(model_json), DEVICE)

    embeds = work / family / "token"
    placeholder, vectors = write_token(backbone, embeds)
    subject_json = write_subject(work / family)
    templates = load_prompt_set("dreambooth", "object")[: max(1, args.images // 4)]
    seeds = list(range(4))
    prompts = [render(t, placeholder) for t in templates for _ in seeds]
    image_seeds = [s for _ in templates for s in seeds]
    assert len(prompts) == args.images, "images must be a multiple of 4 (4 seeds per prompt)"

    with timed(load, "reference_warm"):
        ref = reference_pipeline(family, folder)
    row["load_seconds"] = load
    log(f"{family}: load {load}")
    assert install_learned_token(ref, embeds) == placeholder  # one vector: the text is the placeholder
    ref_latents = record_initial_latents(ref)
    flops = sampling_flops(ref, backbone, res, steps, 5.0)
    row["flops"] = flops
    log(f"{family}: {flops['per_step'] / 1e12:.2f} TFLOP per denoising step (CFG), "
        f"{flops['per_image'] / 1e12:.1f} TFLOP per image")
    ref_latents.clear()

    # Reference, twice: its own run-to-run difference is the yardstick for ours.
    denoise_seconds(ref, prompts[:2], image_seeds[:2], 1, res)  # warm-up (kernels, allocator)
    ref_a = run_reference(ref, prompts, image_seeds, steps, res, work / family / "ref_a")
    initial_ref = ref_latents[-1]
    log(f"{family}: reference {ref_a}")
    # Its sensitivity to batch composition (the same images rendered 8 at a time): a yardstick for
    # differences that only change how the arithmetic is grouped.
    half = args.images // 2
    ref_half = run_reference(ref, prompts[:half], image_seeds[:half], steps, res, work / family / "ref_half")
    log(f"{family}: reference, first {half} images in a batch of {half}: {ref_half['seconds']:.2f} s")
    ref_b = None
    if args.rerun:
        ref_b = run_reference(ref, prompts, image_seeds, steps, res, work / family / "ref_b")
        log(f"{family}: reference again {ref_b['seconds']:.2f} s")

    # Ours, as the sample job runs it: GPU defaults, the same batch as the reference.
    sample = {"steps": steps, "guidance_scale": 5.0, "resolution": res, "batch_size": args.images}
    ours_latents = record_initial_latents(backbone.pipe)
    # A job loads one token per model load: the warm-up (which compiles) brings a token of its own.
    write_token(backbone, work / family / "warm_token", "<warm>", seed=1)
    warm = run_ours(backbone, work / family / "warm_token", subject_json, templates, seeds, {**sample, "steps": 2},
                    work / family / "warm")
    row["ours_first_call_2_steps_seconds"] = warm["seconds"]  # includes compiling
    captured = []
    original_decode = backbone.decode_latents
    backbone.decode_latents = lambda latents, **kw: (captured.append(latents), original_decode(latents, **kw))[1]
    ours = run_ours(backbone, embeds, subject_json, templates, seeds, sample, work / family / "ours")
    backbone.decode_latents = original_decode
    log(f"{family}: ours {ours}")
    same_noise = torch.equal(initial_ref, ours_latents[-1])
    ref_paths = sorted((work / family / "ref_a").glob("*.png"))
    ours_paths = [work / family / "ours" / "bench" / f"{i:03d}_{s}.png" for i in range(len(templates)) for s in seeds]
    row["reference"] = ref_a
    row["ours"] = ours
    row["same_initial_latents"] = same_noise
    half_paths = sorted((work / family / "ref_half").glob("*.png"))
    row["difference"] = {"reference_batch_half_vs_reference": image_difference(half_paths, ref_paths[:half]),
                         "ours_vs_reference": image_difference(ours_paths, ref_paths)}
    if ref_b is not None:
        row["reference_again"] = ref_b
        row["difference"]["reference_rerun_vs_reference"] = image_difference(
            ref_paths, sorted((work / family / "ref_b").glob("*.png")))
    n = args.images
    row["seconds_per_image"] = {"reference": ref_a["seconds"] / n, "ours": ours["seconds"] / n}
    row["images_per_second"] = {"reference": n / ref_a["seconds"], "ours": n / ours["seconds"]}
    row["speedup"] = ref_a["seconds"] / ours["seconds"]
    peak = peak_tflops()
    if peak:
        row["mfu"] = {k: flops["per_image"] * v / (peak * 1e12) for k, v in row["images_per_second"].items()}
        row["mfu_denoising_reference"] = flops["per_step"] * steps * n / ref_a["gpu_seconds"] / (peak * 1e12)
    log(f"{family}: ours/ref speed-up {row['speedup']:.3f}, same initial latents {same_noise}, "
        f"difference {row['difference']}")
    save(results, out_dir)

    if args.core_only:
        return
    lever_steps = args.lever_steps if CUDA else 2
    configs = lever_pipelines(ref, backbone, args.levers)
    row["levers"] = time_levers(configs, prompts, image_seeds, lever_steps, res, rounds=2 if CUDA else 1)
    log(f"{family}: levers {row['levers']['speedup_vs_plain']} first calls {row['levers']['first_call_seconds']}")
    save(results, out_dir)
    if CUDA and "attention" in args.extras:
        row["attention"] = time_attention(configs["ours"], prompts, image_seeds, lever_steps, res)
        log(f"{family}: attention backends {row['attention']}")
    if "vae" in args.extras:
        row["vae"] = time_vae(backbone, captured[0][: 4])
        log(f"{family}: vae {row['vae']}")
    if "png" in args.extras:
        row["png_seconds_per_image"] = {"serial": time_png(ref_paths, 0) / len(ref_paths),
                                        "4 threads": time_png(ref_paths, 4) / len(ref_paths)}
        log(f"{family}: png {row['png_seconds_per_image']}")
    save(results, out_dir)
    if "batch" not in args.extras:
        return

    # Batch size: per image-step of our denoiser at other batch sizes (the first other size recompiles).
    ours_pipe = configs["ours"]
    batch_rows = {}
    for size in ([32] if CUDA else [2]):
        reps = (prompts * 4)[:size]
        seeds_b = (image_seeds * 4)[:size]
        first = denoise_seconds(ours_pipe, reps, seeds_b, 1, res)
        t = denoise_seconds(ours_pipe, reps, seeds_b, lever_steps, res)
        batch_rows[size] = {"first_call_seconds": first, "seconds_per_image_step": t / lever_steps / size}
    batch_rows[n] = {"seconds_per_image_step": row["levers"]["seconds_per_step"]["ours"] / n}
    row["batch_size"] = batch_rows
    if CUDA:
        from dti.sample import measure_batch_size

        row["auto_batch_size_for_164"] = measure_batch_size(backbone, SampleSettings(**sample), 164)
    log(f"{family}: batch sizes {batch_rows} auto {row.get('auto_batch_size_for_164')}")
    save(results, out_dir)
    if CUDA and "profile" in args.extras:
        row["profile_ours_denoising"] = kernel_breakdown(
            lambda: denoise_seconds(ours_pipe, prompts, image_seeds, 2, res), out_dir / f"{family}_sample_profile.txt")
        row["profile_plain_denoising"] = kernel_breakdown(
            lambda: denoise_seconds(ref, prompts, image_seeds, 2, res), out_dir / f"{family}_plain_profile.txt")
        log(f"{family}: kernels (ours) {row['profile_ours_denoising']['shares']}")
    save(results, out_dir)


def save(results: dict, out_dir: Path) -> None:
    (out_dir / "sample_throughput.json").write_text(json.dumps(results, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", nargs="+", default=["sdxl", "sd"], choices=family_names())
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lever-steps", type=int, default=4)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--core-only", action="store_true", help="reference vs ours only: no switches, no profile")
    parser.add_argument("--levers", nargs="*", default=list(LEVERS), choices=list(LEVERS))
    parser.add_argument("--rerun", action="store_true", help="also run the reference twice (run-to-run noise)")
    parser.add_argument("--checkpoint-dtype", default="float32", choices=["float32", "bfloat16"],
                        help="precision of the written model files (the hub's are fp32; bf16 writes faster)")
    parser.add_argument("--extras", nargs="*", default=["attention", "vae", "png", "batch", "profile"],
                        choices=["attention", "vae", "png", "batch", "profile"])
    parser.add_argument("--out", default=os.environ.get("OUT", ".bench-out"))
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__,
               "gpu_defaults": asdict(gpu_defaults()),
               "families": {}}
    # Every lever configuration, batch size and the training shapes compile the same block function: room
    # for all of them, or dynamo would silently fall back to eager past its default of 8 entries.
    torch._dynamo.config.cache_size_limit = 64
    if CUDA:
        results["datasheet_bf16_tflops"] = peak_tflops()
        results["measured_matmul_tflops"] = measured_matmul_tflops()
        log(f"{results['device']}: bf16 matmul {results['measured_matmul_tflops']:.0f} TFLOP/s")
    with tempfile.TemporaryDirectory(prefix="dti-bench-") as tmp:
        for family in args.family:
            try:
                bench_family(family, args, Path(tmp), out_dir, results)  # its models are freed on return
            except Exception as exc:  # keep what the other families measured
                import traceback

                traceback.print_exc()
                results["families"].setdefault(family, {})["error"] = repr(exc)
                save(results, out_dir)
            if CUDA:
                torch.cuda.empty_cache()
    save(results, out_dir)
    print_summary(results)


def print_summary(results: dict) -> None:
    print(f"\n== sampling on {results['device']} ==")
    for family, row in results["families"].items():
        if "speedup" not in row:
            print(f"{family}: {row.get('error')}")
            continue
        n = row["images"]
        print(f"{family} {row['resolution']}px, {row['steps']} steps, CFG 5, batch {n}: "
              f"reference {row['seconds_per_image']['reference']:.3f} s/image ({row['images_per_second']['reference']:.3f}/s, "
              f"{row['reference'].get('peak_memory_gb', 0):.1f} GB), ours {row['seconds_per_image']['ours']:.3f} s/image "
              f"({row['images_per_second']['ours']:.3f}/s, {row['ours'].get('peak_memory_gb', 0):.1f} GB): "
              f"ours/reference = {row['speedup']:.3f}x")
        if "mfu" in row:
            print(f"  MFU (of datasheet bf16 peak): reference {row['mfu']['reference']:.1%}, ours {row['mfu']['ours']:.1%}")
        print(f"  same initial latents: {row['same_initial_latents']}; pixel differences: " + "; ".join(
            f"{k} {v}" for k, v in row["difference"].items()))
        if "levers" in row:
            print("  denoising per step: " + ", ".join(f"{k} {v * 1000:.1f} ms ({row['levers']['speedup_vs_plain'][k]:.2f}x)"
                                                 for k, v in row["levers"]["seconds_per_step"].items()))


if __name__ == "__main__":
    main()

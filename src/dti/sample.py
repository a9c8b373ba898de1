"""Sampling with a learned token: prompts x seeds, batched, one seeded generator per image.

Each image gets `torch.Generator(device).manual_seed(seed)`, so an image depends only on its prompt and
seed, never on which batch it shared: a batch gives the same pictures as one-at-a-time runs.

The diffusers pipeline runs the denoising loop and stops at the latents; decoding, the conversion to
8-bit pixels (on the device, so only bytes cross to the host) and PNG encoding are ours. PNGs are encoded
on worker threads while the GPU renders the next batch (zlib releases the GIL). The speed switches of
`dti.speedups` apply to the denoiser and the VAE; bench/sample_throughput.py measures each of them.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dti.backbones.base import Backbone
from dti.errors import DtiError
from dti.export import diffusers_file, load_for_backbone, rescale
from dti.io import check_target, save_image
from dti.speedups import Speedups, attention_backend
from dti.token_names import normalize_placeholder, short_text, token_count
from dti.tokens import resolve_magnitude

VAE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# "auto" batches never exceed this many images: past it throughput no longer grows (bench/README.md).
AUTO_BATCH_LIMIT = 32


@dataclass
class SampleSettings:
    steps: int = 50
    guidance_scale: float = 5.0
    resolution: int = 1024  # the image's height, and its width unless `width` is set
    width: int | None = None
    batch_size: int | str = 4  # images per denoising batch, or "auto": as many as free GPU memory allows
    vae_dtype: str = "fp32"  # precision of the decoder: fp32 keeps the pixels; bf16 is faster
    png_workers: int = 2  # threads encoding PNGs beside the GPU (0: encode inline)
    speedups: Speedups = field(default_factory=Speedups)

    def __post_init__(self):
        if isinstance(self.speedups, dict):
            self.speedups = Speedups(**self.speedups)
        if self.vae_dtype not in VAE_DTYPES:
            raise DtiError(f"vae_dtype must be one of {sorted(VAE_DTYPES)}, got {self.vae_dtype!r}")
        if self.width is not None and (not isinstance(self.width, int) or self.width < 1):
            raise DtiError(f"width must be a positive integer or null, got {self.width!r}")
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise DtiError(f"batch_size must be a positive integer or 'auto', got {self.batch_size!r}")
        if self.png_workers < 0:
            raise DtiError(f"png_workers must be 0 or more, got {self.png_workers}")


@dataclass
class SampleJob:
    prompt: str
    seed: int
    path: Path


def load_learned_token(backbone: Backbone, embeds_dir: Path, *, rescale_to: str | float | None = None,
                       step: int | None = None) -> str:
    """Load learned rows into the backbone's pipeline; return what to write in a prompt for the subject
    (SD/SDXL: the placeholder, which diffusers' loader expands; SANA/Wan: its k tokens written out).

    `rescale_to` (TI-rescaled) sets every row's norm to that vocabulary statistic of its encoder first.
    """
    placeholder, vectors = load_for_backbone(backbone, embeds_dir, step)
    placeholder = normalize_placeholder(placeholder)  # a key with capitals (other tools) would get one vector
    if rescale_to is not None:
        magnitudes = {s.name: resolve_magnitude(s.encoder.get_input_embeddings().weight, rescale_to)
                      for s in backbone.slots}
        vectors = rescale(vectors, magnitudes)
    try:
        text = backbone.install_learned_rows(placeholder, vectors)
    except ValueError as err:  # diffusers' loader refuses e.g. a placeholder already in the vocabulary
        raise DtiError(f"cannot load the learned token of {embeds_dir}: {err}") from err
    load_step_adapter(backbone, embeds_dir, step)
    return text


def load_step_adapter(backbone: Backbone, embeds_dir: Path, step: int | None) -> str | None:
    """Put the adapter a run saved at `step` (dti.adapters) on the backbone's denoiser beside its token, or
    take a previously loaded one off where the run trained none; returns its kind or None. A run of a method
    that trains an adapter (its token files' dti.method) but lacks the folder is refused, never sampled
    as a token alone."""
    from dti.adapters import adapter_dir, load_adapter, remove_adapter

    folder = Path(embeds_dir) / adapter_dir(step)
    if folder.is_dir():
        return load_adapter(backbone, folder)
    remove_adapter(backbone)
    method = _trained_method(Path(embeds_dir) / diffusers_file(0, step))
    if method is not None and method.unit is not None and method.unit_class().adapter is not None:
        raise DtiError(f"{folder} is missing: method {method.name!r} trains an adapter beside its token, and "
                       "the token alone is not what it learned")
    return None


def _trained_method(token_file: Path):
    """The registered method a token file names in its metadata, or None (other tools' files, unknown names)."""
    from safetensors import safe_open

    from dti.methods import METHODS

    with safe_open(str(token_file), framework="pt") as f:
        return METHODS.get((f.metadata() or {}).get("dti.method", ""))


def install_learned_token(pipe, embeds_dir: str | Path, *, step: int | None = None,
                          rescale_to: str | float | None = None) -> str:
    """Install the token dti trained (the folder with learned_embeds*.safetensors) into a diffusers
    pipeline of any supported family, as `dti sample` does; returns what to write in prompts."""
    from dti.backbones.catalog import backbone_class
    from dti.families import pipeline_families

    name = type(pipe).__name__
    family = pipeline_families().get(name)
    if family is None:
        raise DtiError(f"a {name} is not a pipeline dti supports ({sorted(pipeline_families())})")
    backbone = backbone_class(family).from_pipeline(pipe, getattr(pipe, "name_or_path", "") or name)
    return load_learned_token(backbone, Path(embeds_dir), rescale_to=rescale_to, step=step)


def check_text_windows(backbone: Backbone, prompts: list[str]) -> None:
    """Refuse a prompt longer than a text encoder's window, counted as the pipeline tokenizes it (SD and
    SDXL: with diffusers' loader's expansion of a k-vector placeholder into its k tokens), start and end
    tokens included: the tokenizer would cut its end, the learned token perhaps, with a mere warning."""
    pipe = backbone.pipe
    expand = getattr(pipe, "maybe_convert_prompt", None) if backbone.uses_diffusers_loader else None
    for slot in backbone.slots:
        for prompt in dict.fromkeys(prompts):
            n = token_count(slot.tokenizer, expand(prompt, slot.tokenizer) if expand else prompt)
            if n > slot.text_length:
                raise DtiError(f"prompt {short_text(prompt)} is {n} tokens for the {slot.name} text encoder, more "
                               f"than the {slot.text_length} it reads (start and end tokens included), and the "
                               "rest would be cut off; shorten it")


def _generators(seeds: list[int], device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def batches(n_jobs: int, batch_size: int) -> list[range]:
    """Split n jobs into the fewest batches of at most batch_size, as even as possible: fewer distinct
    shapes for a compiled denoiser (e.g. 164 at 16 -> 10 x 15 + 1 x 14, not 10 x 16 + 1 x 4)."""
    if n_jobs == 0:
        return []
    n_batches = math.ceil(n_jobs / batch_size)
    size = math.ceil(n_jobs / n_batches)
    return [range(start, min(start + size, n_jobs)) for start in range(0, n_jobs, size)]


def fit_batch_size(*, free_bytes: int, fixed_bytes: int, per_image_bytes: int, limit: int,
                   headroom: float = 0.85) -> int:
    """The largest batch whose measured memory (fixed + n x per image) fits in headroom x free memory."""
    usable = headroom * free_bytes - fixed_bytes
    return max(1, min(limit, int(usable // max(per_image_bytes, 1))))


def _render(backbone: Backbone, prompts: list[str], generators: list[torch.Generator],
            settings: SampleSettings) -> torch.Tensor:
    return backbone.render_latents(prompts, generators, steps=settings.steps, guidance_scale=settings.guidance_scale,
                                   height=settings.resolution, width=settings.width or settings.resolution)


def measure_batch_size(backbone: Backbone, settings: SampleSettings, n_jobs: int) -> int:
    """Probe one denoising step at 1 and 2 images for the memory an image costs, then fill free memory."""
    if backbone.device.type != "cuda":
        return min(n_jobs, 4)
    probe = SampleSettings(steps=1, guidance_scale=settings.guidance_scale, resolution=settings.resolution,
                           width=settings.width)
    peaks = []
    for n in (1, 2):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _render(backbone, [""] * n, _generators(range(n), backbone.device), probe)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
    per_image = peaks[1] - peaks[0]
    free, _ = torch.cuda.mem_get_info()
    free += torch.cuda.memory_reserved() - torch.cuda.memory_allocated()  # cached blocks are free to us
    return fit_batch_size(free_bytes=free, fixed_bytes=peaks[0] - per_image, per_image_bytes=per_image,
                          limit=min(n_jobs, AUTO_BATCH_LIMIT))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Decoder output in [-1, 1] (N, 3, H, W) -> uint8 (N, H, W, 3) on the host; the same arithmetic as
    diffusers' postprocess ((x / 2 + 0.5) clamped, x 255, rounded), done on the device."""
    pixels = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu()


def prepare_modules(backbone: Backbone, settings: SampleSettings) -> Speedups:
    """Put the decoder in its sampling precision and apply the speed switches; returns them resolved."""
    speedups = backbone.resolve_speedups(settings.speedups)
    backbone.vae.to(VAE_DTYPES[settings.vae_dtype])
    backbone.apply_speedups(speedups, vae=True)
    return speedups


def _save_all(pool: ThreadPoolExecutor | None, jobs: list[SampleJob], pixels: torch.Tensor,
              root: Path | None) -> list[Future]:
    from PIL import Image

    futures = []
    for job, array in zip(jobs, pixels, strict=True):
        image = Image.fromarray(array.numpy())
        if pool is None:
            save_image(job.path, image, root=root)
        else:
            futures.append(pool.submit(save_image, job.path, image, root=root))
    return futures


@torch.inference_mode()
def generate(backbone: Backbone, jobs: list[SampleJob], settings: SampleSettings, *, progress: bool = True,
             root: str | Path | None = None) -> None:
    """Render every job's image to its path (atomically). Nothing is written outside `root` (default: each
    image's own folder): every image's folders and name are checked before the first batch renders, and a
    symbolic link among them is refused (dti.io). Every prompt must fit the text encoders' windows
    (`check_text_windows`), checked before anything else."""
    from tqdm.auto import tqdm

    from dti.progress import ProgressLog

    if not jobs:
        return
    root = Path(root) if root is not None else None
    check_text_windows(backbone, [job.prompt for job in jobs])
    for job in jobs:
        check_target(job.path, root=root)
    pipe = backbone.pipe
    pipe.set_progress_bar_config(disable=True)
    size = settings.batch_size
    if size == "auto":  # probed before compiling: the probe's batch sizes would each cost a compilation
        size = measure_batch_size(backbone, settings, len(jobs))
    speedups = prepare_modules(backbone, settings)
    pool = ThreadPoolExecutor(settings.png_workers, thread_name_prefix="png") if settings.png_workers else None
    pending: list[Future] = []
    saved = ProgressLog("sampled", len(jobs))  # lines in the job's log, where the tqdm bar is off
    try:
        with attention_backend(speedups.attention):
            for indices in tqdm(batches(len(jobs), size), disable=not progress, desc="sampling"):
                batch = [jobs[i] for i in indices]
                latents = _render(backbone, [j.prompt for j in batch],
                                  _generators([j.seed for j in batch], backbone.device), settings)
                pixels = to_uint8(backbone.decode_latents(latents))
                for future in pending:  # at most one batch waits for its PNGs: host memory stays bounded
                    future.result()
                saved.advance(len(pending))  # the previous batch's PNGs, written by the pool
                pending = _save_all(pool, batch, pixels, root)
                saved.advance(len(batch) - len(pending))  # those written inline (no pool)
        for future in pending:
            future.result()
        saved.advance(len(pending))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def set_token_rows(backbone: Backbone, placeholder: str, vectors: dict) -> str:
    """Give `placeholder` these rows ({slot: [k, d]}) and return what to write for it in a prompt: the first
    call installs it with the backbone's own loader, later calls overwrite its rows in place, so a job can
    render many embeddings (an interpolation path, a norm sweep) without growing the vocabulary each time."""
    from dti.token_names import placeholder_tokens
    from dti.tokens import PlaceholderEmbedding

    placeholder = normalize_placeholder(placeholder)  # as every loader stores it (see dti.token_names)
    if any(placeholder not in slot.tokenizer.get_vocab() for slot in backbone.slots):
        return backbone.install_learned_rows(placeholder, vectors)
    for slot in backbone.slots:
        rows = vectors[slot.name].detach().float().reshape(-1, vectors[slot.name].shape[-1])
        tokens = placeholder_tokens(placeholder, rows.shape[0])
        ids = slot.tokenizer.convert_tokens_to_ids(tokens)
        vocab = slot.tokenizer.get_vocab()
        if any(t not in vocab for t in tokens) or f"{placeholder}_{rows.shape[0]}" in vocab:
            raise DtiError(f"{placeholder} is loaded with another number of vectors than {rows.shape[0]}")
        layer = slot.encoder.get_input_embeddings()
        while isinstance(layer, PlaceholderEmbedding) and layer.first_id != ids[0]:
            layer = layer.frozen  # an earlier token's rows sit deeper in the chain
        with torch.no_grad():
            if isinstance(layer, PlaceholderEmbedding):
                layer.rows.copy_(rows.to(layer.rows.device))
            else:  # diffusers' loader wrote the rows into the table itself
                layer.weight[torch.tensor(ids, device=layer.weight.device)] = rows.to(layer.weight.device,
                                                                                      layer.weight.dtype)
    return backbone.prompt_text(tokens) if not backbone.uses_diffusers_loader else placeholder

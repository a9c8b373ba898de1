"""Sampling with a learned token: prompts x seeds, batched, one seeded generator per image.

Each image gets `torch.Generator(device).manual_seed(seed)`, so an image depends only on its prompt and
seed, never on which batch it shared: a batch gives the same pictures as one-at-a-time runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dti.backbones import Backbone
from dti.export import load_diffusers, load_into_pipeline, rescale
from dti.io import save_image
from dti.tokens import resolve_magnitude


@dataclass
class SampleSettings:
    steps: int = 50
    guidance_scale: float = 5.0
    resolution: int = 1024
    batch_size: int = 4


@dataclass
class SampleJob:
    prompt: str
    seed: int
    path: Path


def load_learned_token(backbone: Backbone, embeds_dir: Path, *, rescale_to: str | float | None = None,
                       step: int | None = None) -> str:
    """Load learned rows into the backbone's pipeline with diffusers' loader; return the placeholder.

    `rescale_to` (TI-rescaled) sets every row's norm to that vocabulary statistic of its encoder first.
    """
    slots = [slot.name for slot in backbone.slots]
    placeholder, vectors = load_diffusers(embeds_dir, slots, step)
    if rescale_to is not None:
        magnitudes = {s.name: resolve_magnitude(s.encoder.get_input_embeddings().weight, rescale_to)
                      for s in backbone.slots}
        vectors = rescale(vectors, magnitudes)
    load_into_pipeline(backbone.pipe, placeholder, vectors)
    return placeholder


def _generators(seeds: list[int], device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


@torch.inference_mode()
def generate(backbone: Backbone, jobs: list[SampleJob], settings: SampleSettings, *, progress: bool = True) -> None:
    """Render every job's image to its path (atomically)."""
    from tqdm.auto import tqdm

    pipe = backbone.pipe
    pipe.set_progress_bar_config(disable=True)
    for start in tqdm(range(0, len(jobs), settings.batch_size), disable=not progress, desc="sampling"):
        batch = jobs[start : start + settings.batch_size]
        images = pipe(prompt=[j.prompt for j in batch], generator=_generators([j.seed for j in batch], backbone.device),
                      num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                      height=settings.resolution, width=settings.resolution).images
        for job, image in zip(batch, images, strict=True):
            save_image(job.path, image)


def set_token_rows(backbone: Backbone, placeholder: str, vectors: dict) -> None:
    """Give `placeholder` these rows ({slot: [k, d]}): loaded with diffusers' loader the first time, then
    overwritten in place, so a job can render many embeddings (an interpolation path, a norm sweep)
    without growing the vocabulary once per embedding."""
    slots = {slot.name: slot for slot in backbone.slots}
    for slot_name, rows in vectors.items():
        slot = slots[slot_name]
        tokens = [placeholder] + [f"{placeholder}_{i}" for i in range(1, rows.shape[0])]
        ids = slot.tokenizer.convert_tokens_to_ids(tokens)
        if placeholder not in slot.tokenizer.get_vocab():
            load_into_pipeline(backbone.pipe, placeholder, {slot_name: rows})
            continue
        if slot.tokenizer.unk_token_id in ids or f"{placeholder}_{rows.shape[0]}" in slot.tokenizer.get_vocab():
            raise ValueError(f"{placeholder} is loaded with a different number of vectors than {rows.shape[0]}")
        table = slot.encoder.get_input_embeddings().weight
        with torch.no_grad():
            table[torch.tensor(ids, device=table.device)] = rows.to(table.device, table.dtype)

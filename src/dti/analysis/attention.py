"""Where the denoiser looks for the learned token: cross-attention maps, at the token's trained norm and
rescaled (the DTI paper's mechanism analysis).

An image is sampled from one prompt and seed while forward pre-hooks on every cross-attention layer of the
denoiser recompute, beside the layer's own forward, the softmax attention from the image positions to the
text positions; the forward itself is untouched, so the image is the one an unrecorded run gives.

Definition of the map (what the report quotes). At denoising step s (S steps), cross-attention layer l
(L layers, every call of the denoiser's cross-attention modules, in order) and head h (H_l heads):

    a_{s,l,h}(x, t) = softmax_t( q_{s,l,h}(x) . k_{s,l,h}(t) / sqrt(d_l) )

the probability that image position x gives text position t, from the layer's own query and key
projections (its `norm_cross`, `norm_q`, `norm_k` applied as its forward does), in fp32. x runs over the
layer's token grid (h_l x w_l, row-major as diffusers' Transformer2DModel flattens it), t over the
text encoders' padded sequence (SDXL: its two encoders' outputs are joined along the width, so one
sequence). Then

    A_t(x) = 1/S sum_s 1/L sum_l R_l[ 1/H_l sum_h a_{s,l,h}(., t) ](x)

with R_l the bilinear resize (align_corners=False) of layer l's map to the latent grid (image side /
the VAE's pixels per latent cell). Only the conditional branch is read: under classifier-free guidance
the pipeline stacks [unconditional, conditional] and the last row is the prompt's. A_t is a probability
over t at every x (every step of the average keeps sum_t = 1; the resize's weights sum to 1 too).
The token's map is the mean over its positions P (a k-vector token has k, in every occurrence):

    M(x) = 1/|P| sum_{p in P} A_p(x)      ("mean attention to the token", between 0 and 1)

Its positions are where its ids (dti.analysis.residual.placeholder_ids) sit in the prompt tokenized as the
pipeline tokenizes it (SD/SDXL: diffusers' loader expands a k-vector placeholder to its k tokens first).

Scales: None keeps the token's rows as installed (its trained norm); a number k sets every row to norm
k x m_e, m_e the vocabulary mean norm of its encoder (dti.analysis.residual.vocab_mean_norm, the token's
own ids left out), direction kept, and restores the rows afterwards (dti.analysis.residual.token_norm), as
the magnitude sweep (src/dti/analysis/magnitude.py) rescales. Every image draws its noise from
`torch.Generator(device).manual_seed(seed)`, so the same inputs give the same image and maps.

Families: SD and SDXL (UNet cross-attention over CLIP tokens). SANA and Wan are refused (UNSUPPORTED
says why). After the DTI authors' notebook (notebooks/magnitude_mod.ipynb in github.com/kunheek/dti),
which samples one prompt with a fixed seed before and after setting the token to a fixed norm, direction
kept; it plots the text encoder's self-attention, here the denoiser's cross-attention is measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dti.errors import DtiError
from dti.families import FAMILIES

# The families whose cross-attention reads the tokenizer's positions unmasked (the family table says which).
SUPPORTED = tuple(name for name, family in FAMILIES.items() if family.token_attention_maps)
UNSUPPORTED = {
    "sana": "sana: its pipeline prepends a long instruction to the prompt and keeps only the sequence's tail, "
            "and masks padding inside the cross-attention, so the tokenizer's positions and an unmasked "
            "softmax are not what its denoiser attends to",
    "wan": "wan: its denoiser's cross-attention is WanAttention (not diffusers' Attention) over video latents "
           "with a padding mask, which this recorder does not reproduce",
}


@dataclass
class AttentionRecord:
    """One recorded sample: the image and every text position's attention map (module docstring, A_t)."""

    image: np.ndarray  # uint8 [height, width, 3]
    maps: np.ndarray  # float64 [text positions, latent rows, latent cols]
    steps: int  # denoiser calls averaged over
    layers: int  # cross-attention calls per denoiser call


def check_family(backbone) -> None:
    """A DtiError with the reason where the backbone's family cannot be recorded."""
    family = backbone.family
    if family in UNSUPPORTED:
        raise DtiError(f"cross-attention maps are not available for {UNSUPPORTED[family]}")
    if family not in SUPPORTED:
        raise DtiError(f"cross-attention maps are not available for {family or type(backbone).__name__} models; "
                       f"supported: {', '.join(SUPPORTED)}")


def attention_probs(attn, hidden_states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """[batch, image positions, text positions]: softmax attention of a diffusers cross-attention layer,
    averaged over its heads, in fp32, from the projections its forward uses."""
    if getattr(attn, "spatial_norm", None) is not None or getattr(attn, "group_norm", None) is not None:
        raise DtiError(f"{type(attn).__name__} normalizes its input before the query; not supported")
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query, key = attn.to_q(hidden_states), attn.to_k(context)
    batch, heads = hidden_states.shape[0], attn.heads
    query = query.view(batch, -1, heads, query.shape[-1] // heads).transpose(1, 2)
    key = key.view(batch, -1, heads, key.shape[-1] // heads).transpose(1, 2)
    if getattr(attn, "norm_q", None) is not None:
        query = attn.norm_q(query)
    if getattr(attn, "norm_k", None) is not None:
        key = attn.norm_k(key)
    scores = query.float() @ key.float().transpose(-1, -2) * attn.scale
    return scores.softmax(dim=-1).mean(dim=1)


def layer_grid(positions: int, latent: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) of a layer's token grid: the latent grid halved (rounding up, as a stride-2
    convolution with padding 1 does) until it has `positions` cells."""
    rows, cols = latent
    while rows * cols > positions:
        rows, cols = math.ceil(rows / 2), math.ceil(cols / 2)
    if rows * cols != positions:
        raise DtiError(f"a cross-attention layer with {positions} image positions is no halving of the "
                       f"{latent[0]}x{latent[1]} latent grid")
    return rows, cols


class _Recorder:
    """Sums every call's conditional-row map, resized to the latent grid, per text position."""

    def __init__(self, latent: tuple[int, int]):
        self.latent = latent
        self.total: torch.Tensor | None = None
        self.calls = 0

    def __call__(self, module, args, kwargs) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        context = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
        if context is None or hidden.dim() != 3:
            raise DtiError(f"a cross-attention layer ({type(module).__name__}) was called without text "
                           "or on a 4-d input; the recorder reads [batch, positions, width] inputs")
        mask = args[2] if len(args) > 2 else kwargs.get("attention_mask")
        if mask is not None:
            raise DtiError("the denoiser masks its cross-attention; the recorder computes an unmasked softmax")
        if hidden.shape[0] not in (1, 2) or context.shape[0] != hidden.shape[0]:
            raise DtiError(f"expected one prompt (a batch of 1, or 2 under guidance), got {hidden.shape[0]}")
        # The last row is the prompt's: the pipelines put the unconditional row first under guidance.
        probs = attention_probs(module, hidden[-1:], context[-1:])[0]  # [positions, tokens]
        rows, cols = layer_grid(probs.shape[0], self.latent)
        grid = probs.T.reshape(1, probs.shape[1], rows, cols)
        if (rows, cols) != self.latent:
            grid = F.interpolate(grid, size=self.latent, mode="bilinear", align_corners=False)
        grid = grid[0]  # fp32 sums on the device: MPS has no float64, and a host copy per call would stall
        self.total = grid if self.total is None else self.total + grid
        self.calls += 1


class _StepCounter:
    def __init__(self):
        self.steps = 0

    def __call__(self, module, args, kwargs) -> None:
        self.steps += 1


@torch.inference_mode()
def cross_attention_maps(backbone, prompt: str, *, seed: int, steps: int, guidance_scale: float,
                         resolution: int) -> AttentionRecord:
    """Sample `prompt` (square, `resolution` px, the backbone's pipeline and scheduler) and record A_t of
    every text position t (module docstring). The hooks are removed however the call ends."""
    from dti.methods.context_regularization import cross_attention_layers
    from dti.sample import check_text_windows, to_uint8

    check_family(backbone)
    backbone.check_resolution(resolution)
    check_text_windows(backbone, [prompt])
    layers = cross_attention_layers(backbone.denoiser)
    if not layers:
        raise DtiError(f"the {backbone.family} denoiser has no cross-attention layers")
    side = resolution // backbone.latent_factor
    recorder, counter = _Recorder((side, side)), _StepCounter()
    handles = [backbone.denoiser.register_forward_pre_hook(counter, with_kwargs=True)]
    try:
        handles += [layer.register_forward_pre_hook(recorder, with_kwargs=True) for layer in layers]
        backbone.pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator(backbone.device).manual_seed(int(seed))
        latents = backbone.render_latents([prompt], [generator], steps=steps, guidance_scale=guidance_scale,
                                          height=resolution, width=resolution)
    finally:
        for handle in handles:
            handle.remove()
    if recorder.total is None or recorder.calls != counter.steps * len(layers):
        raise DtiError(f"recorded {recorder.calls} cross-attention calls in {counter.steps} denoiser calls, "
                       f"not {len(layers)} per call")
    image = to_uint8(backbone.decode_latents(latents))[0].numpy()
    maps = (recorder.total / recorder.calls).cpu().double().numpy()
    return AttentionRecord(image, maps, counter.steps, len(layers))


def pipeline_ids(backbone, prompt: str) -> list[list[int]]:
    """The prompt's token ids per text encoder, padded and truncated as the SD/SDXL pipelines tokenize it
    (a k-vector placeholder expanded by diffusers' loader first)."""
    pipe = backbone.pipe
    ids = []
    for slot in backbone.slots:
        text = pipe.maybe_convert_prompt(prompt, slot.tokenizer) if backbone.uses_diffusers_loader else prompt
        ids.append(slot.tokenizer(text, padding="max_length", max_length=slot.text_length,
                                  truncation=True)["input_ids"])
    return ids


def token_text_positions(backbone, prompt: str, token_name: str) -> list[int]:
    """The text positions of the installed placeholder `token_name` in `prompt` (all its vectors, every
    occurrence); the same in every text encoder, else an error."""
    from dti.analysis.residual import placeholder_ids, token_positions

    found = []
    for slot, ids in zip(backbone.slots, pipeline_ids(backbone, prompt), strict=True):
        runs = token_positions(ids, placeholder_ids(slot.tokenizer, token_name))
        if not runs:
            raise DtiError(f"prompt {prompt!r} does not contain the token {token_name!r} (within the "
                           f"{slot.name} tokenizer's {slot.text_length} tokens)")
        found.append(sorted(p for run in runs for p in run))
    if any(positions != found[0] for positions in found):
        raise DtiError(f"prompt {prompt!r}: the text encoders place {token_name!r} at different positions "
                       f"{found}")
    return found[0]


def _norm_ratio(backbone, token_name: str) -> float:
    """The token's mean row norm in units of m (over encoders and vectors), as installed now."""
    from dti.analysis.residual import placeholder_ids, token_rows, vocab_mean_norm

    ratios = []
    for slot in backbone.slots:
        ids = placeholder_ids(slot.tokenizer, token_name)
        m = vocab_mean_norm(slot.encoder, ids)
        ratios += (token_rows(slot.encoder, ids).norm(dim=-1) / m).tolist()
    return float(np.mean(ratios))


def token_attention_maps(backbone, prompt: str, token_name: str, *, seed: int, steps: int,
                         guidance_scale: float, resolution: int, scales: Sequence[float | None] = (None,)
                         ) -> list[dict]:
    """Per scale (None: as installed; k: rows at k x m, direction kept): one sample and the token's map M.

    Returns dicts with scale, norm_ratio (the token's mean row norm / m while sampling), positions (its text
    positions), image (uint8 [H, W, 3]), map (float64 [latent rows, latent cols], M of the module docstring),
    prompt and seed. The token's rows are the installed ones again afterwards."""
    from dti.analysis.residual import placeholder_ids, token_norm, vocab_mean_norm

    check_family(backbone)
    positions = token_text_positions(backbone, prompt, token_name)
    for scale in scales:
        if scale is not None and not (scale > 0 and math.isfinite(scale)):
            raise DtiError(f"scales: {scale} is not a positive number (or None for the trained norm)")
    results = []
    for scale in scales:
        with ExitStack() as stack:
            if scale is not None:
                for slot in backbone.slots:
                    ids = placeholder_ids(slot.tokenizer, token_name)
                    m = vocab_mean_norm(slot.encoder, ids)
                    stack.enter_context(token_norm(slot.encoder, ids, float(scale) * m))
            ratio = _norm_ratio(backbone, token_name)
            record = cross_attention_maps(backbone, prompt, seed=seed, steps=steps, guidance_scale=guidance_scale,
                                          resolution=resolution)
        results.append({"scale": scale, "norm_ratio": ratio, "positions": positions, "image": record.image,
                        "map": record.maps[positions].mean(axis=0), "prompt": prompt, "seed": int(seed)})
    return results


__all__ = ["SUPPORTED", "UNSUPPORTED", "AttentionRecord", "attention_probs", "check_family",
           "cross_attention_maps", "layer_grid", "pipeline_ids", "token_attention_maps", "token_text_positions"]

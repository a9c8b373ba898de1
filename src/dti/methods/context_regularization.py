"""CoRe's context regularizers (Wu et al., "CoRe: Context-Regularized Text Embedding Learning for
Text-to-Image Personalization", AAAI 2025, arXiv 2408.15914; docs/method.md, "CoRe").

A regularization prompt ("a <subject> in the desert") and its reference ("a dog in the desert", the
initializer in the token's place) should differ only in the token itself: the words around it (the
context tokens) ought to come out of the text encoder, and draw the denoiser's cross-attention, as they
do around the class word. Two terms pull them there:
- context embedding: 1 - the cosine similarity of each context token's text-encoder output in the two
  prompts, averaged over the context tokens (and over the text encoders, SDXL's two);
- context attention: the mean cross-attention probability each context token receives (over heads and
  image positions) in every cross-attention layer of the denoiser, compared by MSE between the prompts on
  the batch's own noisy latents and timesteps; summed over the batch, averaged over the layers.
The context tokens are the start token, the prompt's words other than the placeholder and the end token;
padding is not. The reference side involves no trainable row, so it is computed without gradient.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dti.errors import DtiError


@dataclass(frozen=True)
class ContextPositions:
    """Where the context tokens sit in the regularization prompt and in its reference: the same tokens, in
    the same order, shifted by the difference between the placeholder's and the class word's lengths."""

    prompt: torch.Tensor  # long [n]
    reference: torch.Tensor  # long [n]


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special, truncation=False, verbose=False)["input_ids"]


def context_positions(tokenizer, template: str, placeholder_text: str, class_word: str) -> ContextPositions:
    """The aligned context positions of `template` written with the placeholder and with the class word.

    Found by tokenizing both prompts unpadded (start and end tokens included): the span of the placeholder
    (or class word) is dropped from each, and what remains must be the same token ids in both, else the
    tokenizer merged the word with its neighbours and the two prompts have no common context."""
    prompt = _ids(tokenizer, template.format(placeholder_text), True)
    reference = _ids(tokenizer, template.format(class_word), True)
    before = template.split("{}")[0].strip()
    start = 1 + (len(_ids(tokenizer, before, False)) if before else 0)  # after the start token
    k = len(_ids(tokenizer, placeholder_text, False))
    c = len(_ids(tokenizer, class_word, False))
    keep_prompt = list(range(start)) + list(range(start + k, len(prompt)))
    keep_reference = list(range(start)) + list(range(start + c, len(reference)))
    if [prompt[i] for i in keep_prompt] != [reference[i] for i in keep_reference]:
        raise DtiError(f"regularization prompt {template!r}: the words around the placeholder tokenize "
                       f"differently with {placeholder_text!r} and with {class_word!r}; put spaces around {{}}")
    return ContextPositions(torch.tensor(keep_prompt), torch.tensor(keep_reference))


def context_embedding_loss(prompt_features: list[torch.Tensor], reference_features: list[torch.Tensor],
                           positions: ContextPositions) -> torch.Tensor:
    """1 - mean cosine similarity (over the feature axis, per token) of the context tokens' outputs, averaged
    over the text encoders. Features: [batch, tokens, width], one tensor per text encoder."""
    losses = []
    for ours, ref in zip(prompt_features, reference_features, strict=True):
        a = ours[:, positions.prompt.to(ours.device)].float()
        b = ref[:, positions.reference.to(ref.device)].float()
        losses.append(1 - F.cosine_similarity(a, b, dim=-1).mean())
    return torch.stack(losses).mean()


def context_attention_loss(prompt_maps: list[torch.Tensor], reference_maps: list[torch.Tensor],
                           positions: ContextPositions) -> torch.Tensor:
    """Per layer: the MSE over the context tokens of each sample's mean attention [batch, tokens], summed
    over the batch; averaged over the layers."""
    if not prompt_maps or len(prompt_maps) != len(reference_maps):
        raise DtiError(f"the context attention needs the same cross-attention layers in both passes, got "
                       f"{len(prompt_maps)} and {len(reference_maps)}")
    per_layer = []
    for ours, ref in zip(prompt_maps, reference_maps, strict=True):
        a = ours[:, positions.prompt.to(ours.device)].float()
        b = ref[:, positions.reference.to(ref.device)].float()
        per_layer.append(((a - b) ** 2).mean(dim=1).sum())
    return torch.stack(per_layer).mean()


def cross_attention_layers(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """The denoiser's cross-attention modules (diffusers' Attention with is_cross_attention), in order."""
    from diffusers.models.attention_processor import Attention

    return [m for m in denoiser.modules() if isinstance(m, Attention) and m.is_cross_attention]


def mean_token_attention(attn, hidden_states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """[batch, tokens]: the softmax attention each text token receives in `attn`, averaged over its heads and
    the image positions, from the same query and key projections its forward uses."""
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query = attn.head_to_batch_dim(attn.to_q(hidden_states))
    key = attn.head_to_batch_dim(attn.to_k(context))
    probs = attn.get_attention_scores(query, key)  # [batch * heads, positions, tokens]
    batch = hidden_states.shape[0]
    return probs.view(batch, -1, probs.shape[-1]).mean(dim=1)


class _AttentionRecorder:
    """Forward pre-hooks on every cross-attention layer of one denoiser, installed once and idle unless a
    `recorded_attention` block is open: hooks added and removed around each call would make a compiled
    denoiser (dti.speedups) recompile every step."""

    def __init__(self, denoiser: torch.nn.Module):
        layers = cross_attention_layers(denoiser)
        if not layers:
            raise DtiError(f"{type(denoiser).__name__} has no cross-attention layers for CoRe's context attention")
        self.maps: list[torch.Tensor] | None = None
        for layer in layers:
            layer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs) -> None:
        if self.maps is None:
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states")
        if context is None and len(args) > 1:
            context = args[1]
        if context is not None and hidden.dim() == 3:
            self.maps.append(mean_token_attention(module, hidden, context))


_RECORDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextmanager
def recorded_attention(denoiser: torch.nn.Module):
    """Within the block, every cross-attention call of `denoiser` appends its mean token attention to the
    yielded list. The forward itself is unchanged: the maps are recomputed beside it from the layer's own
    projections, so any attention backend keeps running."""
    recorder = _RECORDERS.get(denoiser)
    if recorder is None:
        recorder = _RECORDERS[denoiser] = _AttentionRecorder(denoiser)
    if recorder.maps is not None:
        raise DtiError("recorded_attention blocks on one denoiser cannot nest")
    recorder.maps = maps = []
    try:
        yield maps
    finally:
        recorder.maps = None

"""CoRe (Wu et al., AAAI 2025) and its regularizers on DTI's parameterization (docs/method.md, "CoRe").

CoRe learns a raw token embedding as Textual Inversion does (AdamW), adds two context regularizers
(dti.methods.context_regularization) on a regularization prompt drawn each step, and holds the vector's
norm over a window of steps (its "embedding rescaling"). DTI + CoRe keeps DTI's start, its fixed norm m
and its Riemannian SGD with the vMF prior, and adds the same two regularizers; its norm needs no hold.
CoRe + UNet is CoRe's second stage: the first stage's token frozen, every weight of the denoiser trained.
"""

from __future__ import annotations

import torch

from dti.errors import DtiError
from dti.methods.context_regularization import (
    ContextPositions,
    context_attention_loss,
    context_embedding_loss,
    context_positions,
    recorded_attention,
)
from dti.methods.core_prompts import REGULARIZATION_PROMPTS
from dti.methods.directional import DTI
from dti.methods.units import FrozenRows, SavedToken, StepInputs, TokenMethod


class ContextRegularized:
    """The extra loss of CoRe: the context embedding and context attention terms on one regularization
    prompt per micro-batch (drawn from the step's generator), with the initializer as the class word."""

    prompts: tuple[str, ...] = REGULARIZATION_PROMPTS

    def _positions(self, backbone, template: str, token: str, class_word: str) -> ContextPositions:
        cache = self.__dict__.setdefault("_position_cache", {})
        if template not in cache:
            slot = backbone.slots[0]  # SDXL's two tokenizers split a prompt alike (checked when training starts)
            positions = context_positions(slot.tokenizer, template, token, class_word)
            longest = int(max(positions.prompt.max(), positions.reference.max())) + 1
            if longest > slot.text_length:
                raise DtiError(f"regularization prompt {template!r} with {token!r} is {longest} tokens, more than "
                               f"the {slot.text_length} the text encoder reads; choose a shorter initializer")
            cache[template] = positions
        return cache[template]

    def _reference(self, backbone, template: str, class_word: str) -> dict[str, torch.Tensor]:
        """The reference prompt's conditioning, encoded once per template: it holds no trainable row and the
        text encoders are frozen, so every step would compute the same tensors again."""
        cache = self.__dict__.setdefault("_reference_cache", {})
        if template not in cache:
            with torch.no_grad():
                cache[template] = backbone.encode_prompts([template.format(class_word)])
        return cache[template]

    def extra_loss(self, inputs: StepInputs) -> torch.Tensor | None:
        w_embedding, w_attention = self.hp["context_embedding_weight"], self.hp["context_attention_weight"]
        if not (w_embedding or w_attention):
            return None
        backbone = inputs.backbone
        template = self.prompts[int(torch.randint(len(self.prompts), (1,), generator=inputs.generator))]
        positions = self._positions(backbone, template, inputs.prompt_token, inputs.initializer)
        cond = backbone.encode_prompts([template.format(inputs.prompt_token)])
        reference = self._reference(backbone, template, inputs.initializer)
        loss = torch.zeros((), device=inputs.latents.device)
        if w_embedding:
            loss = loss + w_embedding * context_embedding_loss(backbone.token_features(cond),
                                                               backbone.token_features(reference), positions)
        if w_attention:
            # The batch's own noisy latents and timesteps, as for the denoising loss; the predictions are
            # not used, only the attention the context tokens receive on the way.
            noisy, timesteps, _ = backbone.objective.prepare(inputs.latents, inputs.noise, inputs.timesteps)
            batch = noisy.shape[0]
            with recorded_attention(backbone.denoiser) as ours:
                backbone.predict(noisy, timesteps, _repeat(cond, batch), inputs.time_ids)
            with torch.no_grad(), recorded_attention(backbone.denoiser) as theirs:
                backbone.predict(noisy, timesteps, _repeat(reference, batch), inputs.time_ids)
            loss = loss + w_attention * context_attention_loss(ours, theirs, positions)
        return loss


def _repeat(cond: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
    """One prompt's conditioning for every sample of the batch."""
    return {key: value.expand(batch, *value.shape[1:]) for key, value in cond.items()}


class CoRe(ContextRegularized, TokenMethod):
    """TI's raw vector and AdamW with CoRe's regularizers; over steps rescale_from+1 .. rescale_until each
    update is scaled back to the norm the rows had before it, which holds them at their norm after step
    rescale_from as CoRe's rescaling does (stateless, so a resumed run repeats it exactly)."""

    def _holding(self, step: int) -> bool:
        return self.hp["rescale_from"] < step <= self.hp["rescale_until"]

    def before_update(self, step, layers) -> None:
        self._held = {s: layer.rows.detach().norm() for s, layer in layers.items()} if self._holding(step) else {}

    def after_update(self, step, layers) -> None:
        for slot, norm in getattr(self, "_held", {}).items():
            rows = layers[slot].rows
            rows.mul_(norm / rows.norm())


class DirectionalCoRe(ContextRegularized, DTI):
    """DTI (its start, fixed m and Riemannian SGD with the vMF prior) with CoRe's context regularizers."""


class CoReUNet(TokenMethod):
    """CoRe's second stage, as its authors' train.sh runs it after the embedding stage: the rows of the CoRe run
    it continues, frozen, and every weight of the denoiser fine-tuned by AdamW (adapter_lr) on the plain
    denoising loss; the regularizers are off in this stage, as theirs."""

    start = SavedToken()
    parameterization = FrozenRows()
    adapter = "full"

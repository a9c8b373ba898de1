"""Textual Inversion and CrossInit: raw vectors trained by AdamW (docs/method.md)."""

from __future__ import annotations

import torch

from dti.methods.units import EncoderOutput, StepInputs, TokenMethod


class TextualInversion(TokenMethod):
    """The initializer's rows, trained as raw vectors by AdamW (TokenMethod's default parts)."""


class CrossInit(TokenMethod):
    """Starts from the encoder's output for the initializer and adds pull_weight * MSE(e, e_start)."""

    start = EncoderOutput()

    def extra_loss(self, inputs: StepInputs) -> torch.Tensor | None:
        if not self.hp["pull_weight"]:
            return None
        layers, starts = inputs.layers, inputs.starts
        pull = sum(torch.nn.functional.mse_loss(layers[s].embedding_rows(), starts[s].anchor) for s in layers)
        return self.hp["pull_weight"] * pull

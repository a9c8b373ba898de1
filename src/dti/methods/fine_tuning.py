"""Token plus weights: DCO (a LoRA trained with the Direct Consistency Optimization loss) and OFT
(orthogonal fine-tuning with the plain denoising loss), alone and beside a DTI or TI token
(docs/method.md, "Token plus weights").

DCO's loss compares the model's denoising error with the frozen model's on the same noisy input and the
same conditioning: L = -log sigmoid(-beta * (mse(model) - mse(frozen))). The frozen model is the same
denoiser with the adapter bypassed (dti.adapters.AttachedAdapter.disabled), under no_grad: no second copy
in memory. For a LoRA this is exactly the DTI authors' reference pass with cross_attention_kwargs
{"scale": 0.0}, which multiplies every LoRA update by zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dti.methods.directional import DTI
from dti.methods.textual_inversion import TextualInversion
from dti.methods.units import FrozenRows, StepInputs, TokenMethod


def dco_loss(model_loss: torch.Tensor, reference_loss: torch.Tensor, beta: float) -> torch.Tensor:
    """-log sigmoid(-beta * (model_loss - reference_loss)): below log 2 when the model denoises better than
    the frozen reference, above it when worse; each loss is a batch-mean MSE, as in the authors' script."""
    return -F.logsigmoid(-beta * (model_loss.float() - reference_loss.float()))


class DirectConsistency:
    """The DCO loss in place of the denoising MSE; the reference is the denoiser with the adapter off."""

    def denoising_loss(self, inputs: StepInputs, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        model = super().denoising_loss(inputs, cond)
        with torch.no_grad(), inputs.adapter.disabled():
            reference = super().denoising_loss(inputs, cond)
        return dco_loss(model, reference, self.hp["dco_beta"])


class DCO(DirectConsistency, TokenMethod):
    """A LoRA trained with the DCO loss; the token is the initializer's rows, not trained."""

    parameterization = FrozenRows()
    adapter = "lora"


class OFT(TokenMethod):
    """OFT trained with the denoising loss; the token is the initializer's rows, not trained."""

    parameterization = FrozenRows()
    adapter = "oft"


class DirectionalDCO(DirectConsistency, DTI):
    adapter = "lora"


class TextualInversionDCO(DirectConsistency, TextualInversion):
    adapter = "lora"


class DirectionalOFT(DTI):
    adapter = "oft"


class TextualInversionOFT(TextualInversion):
    adapter = "oft"

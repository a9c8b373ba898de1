"""Directional Textual Inversion and its ablations (docs/method.md): each one part exchanged from DTI."""

from __future__ import annotations

from dti.methods.units import (
    AdamWSteps,
    EncoderOutput,
    FixedNormDirection,
    RandomRows,
    RiemannianSteps,
    TokenMethod,
    TrainedNormDirection,
    VocabularyMean,
)


class DTI(TokenMethod):
    """The initializer's directions at a fixed norm m, trained by Riemannian SGD with a vMF prior."""

    parameterization = FixedNormDirection()
    optimizer = RiemannianSteps()
    metadata_keys = ("kappa",)


class RandomStart(DTI):
    start = RandomRows()


class MeanStart(DTI):
    start = VocabularyMean()


class EncoderOutputStart(DTI):
    start = EncoderOutput()


class TrainedNorm(DTI):
    parameterization = TrainedNormDirection()


class AdamWDirection(DTI):
    """The authors' --optimizer adamw: v trained by AdamW without retraction, so m * v drifts from m."""

    optimizer = AdamWSteps()


class AdamWSphere(DTI):
    optimizer = AdamWSteps(retract=True)

"""The registry of token-learning methods: how each initializes, parameterizes and optimizes its rows.

Hyper-parameter values live in the configs (one table); here are only the defaults of the paper's
official launchers, with EFFECTIVE learning rates (the launchers' --scale_lr multiplies the nominal rate
by batch x accumulation; these numbers are already multiplied).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dti.errors import DtiError


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    on_sphere: bool  # rows are unit directions, embedding = m * v
    init: str  # "token": initializer's vocabulary rows; "contextual": CrossInit's encoder output
    optimizer: str  # "rsgd" | "adamw"
    defaults: dict = field(default_factory=dict)
    trained_as: str | None = None  # an evaluation-time variant reuses this method's trained vectors
    rescale_to_magnitude: bool = False


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("dti", "Directional Textual Inversion: fixed norm m, direction by Riemannian SGD with a vMF prior",
               on_sphere=True, init="token", optimizer="rsgd",
               defaults=dict(lr=0.04, kappa=1e-4, beta=0.0, eps=1e-8, magnitude="mean")),
        Method("ti", "Textual Inversion: raw vector, AdamW, no norm constraint", on_sphere=False, init="token",
               optimizer="adamw", defaults=dict(lr=0.02, weight_decay=1e-2, adam_betas=(0.9, 0.999))),
        Method("crossinit", "CrossInit: encoder-output initialization plus an L2 pull towards it",
               on_sphere=False, init="contextual", optimizer="adamw",
               defaults=dict(lr=0.02, weight_decay=1e-2, adam_betas=(0.9, 0.999), pull_weight=1e-5)),
        Method("ti_rescaled", "TI vectors rescaled to the vocabulary magnitude m at load time (ablation)",
               on_sphere=False, init="token", optimizer="adamw", defaults=dict(magnitude="mean"),
               trained_as="ti", rescale_to_magnitude=True),
    ]
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise DtiError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]


def make_optimizer(method: Method, params: list, hp: dict, prior_mu: list):
    """The method's optimizer over the new rows (torch is imported here: the workflow reads this module
    at planning time, where importing torch would only cost seconds)."""
    import torch

    from dti.optim import RiemannianSGD

    if method.optimizer == "rsgd":
        return RiemannianSGD(params, lr=hp["lr"], beta=hp["beta"], eps=hp["eps"], kappa=hp["kappa"],
                             prior_mu=prior_mu)
    # Only the new rows are parameters, so weight decay touches nothing but the learned vectors.
    return torch.optim.AdamW(params, lr=hp["lr"], betas=tuple(hp["adam_betas"]), weight_decay=hp["weight_decay"])

"""The registry of token-learning methods: how each initializes, parameterizes and optimizes its rows.

Hyper-parameter values live in the configs (one table); here are only the defaults of the paper's
official launchers, with EFFECTIVE learning rates (the launchers' --scale_lr multiplies the nominal rate
by batch x accumulation; these numbers are already multiplied).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from dti.errors import DtiError


def _number(value) -> float | None:
    """`value` as a float if it is a real number (bools are not), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _positive(value) -> str | None:
    x = _number(value)
    return None if x is not None and math.isfinite(x) and x > 0 else "a positive finite number"


def _non_negative(value) -> str | None:
    x = _number(value)
    return None if x is not None and math.isfinite(x) and x >= 0 else "a finite number >= 0"


def _unit_interval(value) -> str | None:
    x = _number(value)
    return None if x is not None and 0 <= x < 1 else "a number in [0, 1)"


def _magnitude(value) -> str | None:
    if value in ("mean", "min", "max"):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return None if _positive(value) is None else "mean, min, max or a positive finite number"


def _betas(value) -> str | None:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_unit_interval(b) is None for b in value)
    return None if ok else "two numbers in [0, 1)"


# Every hyper-parameter any method takes, with what a valid value is; each method declares its subset.
HYPER_PARAMETERS: dict[str, tuple[Callable[[object], str | None], str]] = {
    "lr": (_positive, "EFFECTIVE learning rate (already x batch x accumulation)"),
    "kappa": (_non_negative, "vMF prior concentration"),
    "beta": (_unit_interval, "RSGD second-moment decay (0 = published)"),
    "eps": (_positive, "RSGD denominator guard"),
    "magnitude": (_magnitude, "the fixed norm m: a vocabulary statistic or a number"),
    "weight_decay": (_non_negative, "AdamW weight decay"),
    "adam_betas": (_betas, "AdamW (beta1, beta2)"),
    "pull_weight": (_non_negative, "CrossInit's L2 pull towards the initialization"),
}


@dataclass(frozen=True)
class Method:
    name: str
    display: str  # its name in tables and figures
    description: str
    on_sphere: bool  # rows are unit directions, embedding = m * v
    init: str  # "token": initializer's vocabulary rows; "contextual": CrossInit's encoder output
    optimizer: str  # "rsgd" | "adamw"
    defaults: dict = field(default_factory=dict)
    accepts: tuple[str, ...] = ()  # the hyper-parameters this method takes (keys of HYPER_PARAMETERS)
    trained_as: str | None = None  # an evaluation-time variant reuses this method's trained vectors
    rescale_to_magnitude: bool = False


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("dti", "DTI", "Directional Textual Inversion: fixed norm m, direction by Riemannian SGD with a vMF prior",
               on_sphere=True, init="token", optimizer="rsgd",
               defaults=dict(lr=0.04, kappa=1e-4, beta=0.0, eps=1e-8, magnitude="mean"),
               accepts=("lr", "kappa", "beta", "eps", "magnitude")),
        Method("ti", "TI", "Textual Inversion: raw vector, AdamW, no norm constraint", on_sphere=False, init="token",
               optimizer="adamw", defaults=dict(lr=0.02, weight_decay=1e-2, adam_betas=(0.9, 0.999)),
               accepts=("lr", "weight_decay", "adam_betas")),
        Method("crossinit", "CrossInit", "CrossInit: encoder-output initialization plus an L2 pull towards it",
               on_sphere=False, init="contextual", optimizer="adamw",
               defaults=dict(lr=0.02, weight_decay=1e-2, adam_betas=(0.9, 0.999), pull_weight=1e-5),
               accepts=("lr", "weight_decay", "adam_betas", "pull_weight")),
        Method("ti_rescaled", "TI-rescaled", "TI vectors rescaled to the vocabulary magnitude m at load time (ablation)",
               on_sphere=False, init="token", optimizer="adamw", defaults=dict(magnitude="mean"),
               accepts=("magnitude",), trained_as="ti", rescale_to_magnitude=True),
    ]
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise DtiError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]


def check_hyper_parameters(method: str, given: dict) -> dict:
    """Return `given` if every key is one `method` takes and every value is valid; else a DtiError naming
    the method, the key and the value (a setting of another method must not pass silently)."""
    spec = get_method(method)
    for key, value in given.items():
        if key not in spec.accepts:
            raise DtiError(f"method {method!r} takes no hyper-parameter {key!r} (it takes: {', '.join(spec.accepts)})")
        problem = HYPER_PARAMETERS[key][0](value)
        if problem is not None:
            raise DtiError(f"method {method!r}: {key} must be {problem}, got {value!r}")
    return given


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

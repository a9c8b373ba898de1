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


def _number_or_word(text: str) -> float | str:
    """A command-line magnitude: a number if it reads as one, else the statistic's name."""
    try:
        return float(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class HyperParameter:
    check: Callable[[object], str | None]  # None if a value is valid, else what a valid value is
    help: str
    parse: Callable[[str], object] = float  # how the command line reads one value
    nargs: int | None = None  # values it takes on the command line (None: one)


# Every hyper-parameter any method takes, with what a valid value is; each method declares its subset. The
# config schema (config/schema.yaml, methods) and `dti train`'s flags follow this table.
HYPER_PARAMETERS: dict[str, HyperParameter] = {
    "lr": HyperParameter(_positive, "EFFECTIVE learning rate (already x batch x accumulation)"),
    "kappa": HyperParameter(_non_negative, "vMF prior concentration"),
    "beta": HyperParameter(_unit_interval, "RSGD second-moment decay (0 = published)"),
    "eps": HyperParameter(_positive, "RSGD denominator guard"),
    "magnitude": HyperParameter(_magnitude, "the fixed norm m: mean, min, max (of the vocabulary's norms) or a "
                                "number", parse=_number_or_word),
    "weight_decay": HyperParameter(_non_negative, "AdamW weight decay"),
    "adam_betas": HyperParameter(_betas, "AdamW (beta1, beta2)", nargs=2),
    "pull_weight": HyperParameter(_non_negative, "CrossInit's L2 pull towards the initialization"),
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


def trainable_methods() -> list[str]:
    """The methods that train vectors of their own (evaluation-time variants reuse another's)."""
    return [name for name, method in METHODS.items() if method.trained_as is None]


@dataclass(frozen=True)
class ResolvedMethod:
    """A trainable method with every hyper-parameter it trains with: its defaults, overridden by the given."""

    method: Method
    hyper_parameters: dict


def resolve_method(name: str, overrides: dict | None = None) -> ResolvedMethod:
    """The method `name` resolved once: a DtiError for an unknown or evaluation-time method, or an override
    it does not take or with an invalid value."""
    method = get_method(name)
    if method.trained_as:
        raise DtiError(f"method {name!r} is an evaluation-time variant of {method.trained_as!r}; "
                       f"train {method.trained_as!r} instead")
    return ResolvedMethod(method, {**method.defaults, **check_hyper_parameters(name, dict(overrides or {}))})


def check_hyper_parameters(method: str, given: dict) -> dict:
    """Return `given` if every key is one `method` takes and every value is valid; else a DtiError naming
    the method, the key and the value (a setting of another method must not pass silently)."""
    spec = get_method(method)
    for key, value in given.items():
        if key not in spec.accepts:
            raise DtiError(f"method {method!r} takes no hyper-parameter {key!r} (it takes: {', '.join(spec.accepts)})")
        problem = HYPER_PARAMETERS[key].check(value)
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

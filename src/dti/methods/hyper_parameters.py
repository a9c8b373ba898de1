"""Every hyper-parameter a method can take, with what a valid value is (torch-free: planning reads it).

Each method declares the subset it takes (dti.methods.registry). The config schema (config/schema.yaml,
`definitions.method_settings`) and `dti train`'s flags follow this table; a test checks the schema.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from dti.numbers import FLOAT32_MAX

# A value finite in float64 but not in float32 (a learning rate of 1e39) overflows in the first step: the
# rows and optimizer state are float32. The command line and config files are checked alike (dti.numbers).
_F32 = f"within float32's range (at most {FLOAT32_MAX:.4g})"


def _number(value) -> float | None:
    """`value` as a float if it is a real number (bools are not), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _positive(value) -> str | None:
    x = _number(value)
    if x is not None and math.isfinite(x) and x > 0:
        return None if x <= FLOAT32_MAX else f"a positive number {_F32}"
    return "a positive finite number"


def _non_negative(value) -> str | None:
    x = _number(value)
    if x is not None and math.isfinite(x) and x >= 0:
        return None if x <= FLOAT32_MAX else f"a number >= 0 {_F32}"
    return "a finite number >= 0"


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
    problem = _positive(value)
    return None if problem is None else f"mean, min, max or {problem}"


def _step(value) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31
    return None if ok else "a training step: an integer in [0, 2^31)"


def _rank(value) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096
    return None if ok else "an integer in [1, 4096]"


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


HYPER_PARAMETERS: dict[str, HyperParameter] = {
    "lr": HyperParameter(_positive, "EFFECTIVE learning rate (already x batch x accumulation)"),
    "kappa": HyperParameter(_non_negative, "vMF prior concentration"),
    "beta": HyperParameter(_unit_interval, "RSGD second-moment decay (0 = published)"),
    "eps": HyperParameter(_positive, "RSGD denominator guard"),
    "magnitude": HyperParameter(_magnitude, "the norm m: mean, min, max (of the vocabulary's norms) or a "
                                "number", parse=_number_or_word),
    "magnitude_lr": HyperParameter(_positive, "step of a trained norm m per update (the direction keeps lr)"),
    "weight_decay": HyperParameter(_non_negative, "AdamW weight decay"),
    "adam_betas": HyperParameter(_betas, "AdamW (beta1, beta2)", nargs=2),
    "pull_weight": HyperParameter(_non_negative, "CrossInit's L2 pull towards the initialization"),
    "context_embedding_weight": HyperParameter(_non_negative, "CoRe's context embedding regularizer weight"),
    "context_attention_weight": HyperParameter(_non_negative, "CoRe's context attention regularizer weight"),
    "rescale_from": HyperParameter(_step, "CoRe: after this step the raw vector's norm is held ...", parse=int),
    "rescale_until": HyperParameter(_step, "... until this step (inclusive; from >= until: never)", parse=int),
    "adapter_rank": HyperParameter(_rank, "the adapter's rank (LoRA's r; OFT's number of blocks r)", parse=int),
    "adapter_lr": HyperParameter(_positive, "the adapter's AdamW learning rate (not scaled by the batch)"),
    "dco_beta": HyperParameter(_positive, "DCO's beta: how sharply the loss rewards beating the frozen model"),
}

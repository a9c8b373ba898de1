"""Token-learning methods: the registry (torch-free) and, in their own modules, the units that hold each
method's behaviour (dti.methods.units, .directional, .textual_inversion)."""

from dti.methods.hyper_parameters import HYPER_PARAMETERS, HyperParameter
from dti.methods.registry import (
    METHODS,
    Method,
    ResolvedMethod,
    ablation_rows,
    check_hyper_parameters,
    get_method,
    register,
    resolve_method,
    token_only,
    trainable_methods,
)

__all__ = ["HYPER_PARAMETERS", "METHODS", "HyperParameter", "Method", "ResolvedMethod", "ablation_rows",
           "check_hyper_parameters", "get_method", "register", "resolve_method", "token_only",
           "trainable_methods"]

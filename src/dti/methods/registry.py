"""The registry of token-learning methods: one entry each, naming the class that holds its behaviour.

An entry is data the workflow plans with (name, display name, the hyper-parameters it takes and their
defaults, whether its norm is fixed): torch-free, so planning stays fast. Its behaviour (how its rows
start, how they are parameterized, its optimizer, any extra loss) lives in its unit class, a
`dti.methods.units.TokenMethod` subclass imported only when training asks for it. Adding a method is one
module with its class plus one entry here (docs/method.md, "Adding a method"); `register` adds one from
outside the library (a notebook, a test) without editing it.

Defaults are those of the paper's official launchers, with EFFECTIVE learning rates (the launchers'
--scale_lr multiplies the nominal rate by batch x accumulation; these numbers are already multiplied).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from dti.errors import DtiError
from dti.methods.hyper_parameters import HYPER_PARAMETERS
from dti.names import check_name


@dataclass(frozen=True)
class Method:
    name: str
    display: str  # its name in tables and figures
    description: str
    unit: str | type | None  # its TokenMethod class, or "module:Class"; None for an evaluation-time variant
    defaults: dict = field(default_factory=dict)
    accepts: tuple[str, ...] = ()  # the hyper-parameters this method takes (keys of HYPER_PARAMETERS)
    on_sphere: bool = False  # its embedding is m * v with m fixed: interpolation blends it by slerp at m
    trained_as: str | None = None  # an evaluation-time variant reuses this method's trained vectors
    rescale_to_magnitude: bool = False
    ablation_of: str | None = None  # the method it varies in one part (rows of the ablation table)
    families: tuple[str, ...] = ()  # the backbone families it is defined for (empty: every family)
    families_reason: str = ""  # why not the others, for the refusal
    # The adapter kind it trains on the denoiser beside its token (dti.adapters; its unit class says the same);
    # None: a token alone. Analyses that use a token without its adapter (interpolation, the magnitude sweep)
    # leave such methods out.
    adapter: str | None = None
    # A second stage: the method whose final token (same backbone and subject) its rows start from; the
    # workflow trains that run first and hands its folder over (TrainSettings.start_from).
    starts_from: str | None = None

    def check_family(self, family: str, where: str) -> None:
        """A DtiError, naming `where`, if this method is not defined for backbones of `family`."""
        if self.families and family not in self.families:
            raise DtiError(f"{where}: method {self.name!r} runs on {', '.join(self.families)} backbones only, "
                           f"not {family}: {self.families_reason}")

    def unit_class(self) -> type:
        """Its TokenMethod class (importing its module, and so torch, on first use)."""
        if self.unit is None:
            raise DtiError(f"method {self.name!r} trains nothing of its own (it reuses {self.trained_as!r})")
        if isinstance(self.unit, type):
            return self.unit
        module, _, attr = self.unit.partition(":")
        return getattr(importlib.import_module(module), attr)


_DTI_HP = ("lr", "kappa", "beta", "eps", "magnitude")
_DTI_DEFAULTS = dict(lr=0.04, kappa=1e-4, beta=0.0, eps=1e-8, magnitude="mean")
_ADAMW_HP = ("lr", "weight_decay", "adam_betas")
_ADAMW_DEFAULTS = dict(lr=0.02, weight_decay=1e-2, adam_betas=(0.9, 0.999))
_TI, _DTI = "dti.methods.textual_inversion", "dti.methods.directional"
# CoRe (Wu et al., AAAI 2025): its authors' stage-1 settings (their train.sh): AdamW at 5e-3 with decay 1e-2,
# the embedding term 1.5e-4, the attention term 0.05, the norm held over steps 120-180 (docs/method.md).
_CORE_HP = ("context_embedding_weight", "context_attention_weight")
_CORE_DEFAULTS = dict(context_embedding_weight=1.5e-4, context_attention_weight=0.05)
_CORE_FAMILIES = dict(families=("sd", "sdxl"), families_reason=(
    "CoRe regularizes CLIP text-encoder outputs and UNet cross-attention maps; SANA's Gemma decoder and "
    "Wan's umT5 encoder have other text models and other attention, for which its formulas are not defined"))

# Token plus weights (docs/method.md): the DTI authors' LoRA + DCO and OFT launchers (their exps/*dco*, *oft*):
# rank 4 on to_q/to_k/to_v, the adapter's AdamW at 5e-5 (never scaled), DCO's beta 1000. Their TI + LoRA and
# TI + OFT runs train the token by AdamW at 5e-5 (no --scale_lr), so ti_dco and ti_oft default to it.
_FT = "dti.methods.fine_tuning"
_ADAPTER_HP, _ADAPTER_DEFAULTS = ("adapter_rank", "adapter_lr"), dict(adapter_rank=4, adapter_lr=5e-5)
_DCO_HP, _DCO_DEFAULTS = (*_ADAPTER_HP, "dco_beta"), {**_ADAPTER_DEFAULTS, "dco_beta": 1000.0}


def _dti_ablation(name: str, display: str, description: str, unit: str = "DTI", *, accepts=_DTI_HP,
                  on_sphere: bool = True, **defaults) -> Method:
    """A DTI variant for the paper's ablations: DTI's defaults unless `defaults` says otherwise."""
    base = {k: v for k, v in {**_DTI_DEFAULTS, **_ADAMW_DEFAULTS, "magnitude_lr": 1e-3}.items() if k in accepts}
    return Method(name, display, description, f"{_DTI}:{unit}", {**base, **defaults}, accepts, on_sphere,
                  ablation_of="dti")


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("dti", "DTI", "Directional Textual Inversion: fixed norm m, direction by Riemannian SGD with a vMF prior",
           f"{_DTI}:DTI", _DTI_DEFAULTS, _DTI_HP, on_sphere=True),
    Method("ti", "TI", "Textual Inversion: raw vector, AdamW, no norm constraint", f"{_TI}:TextualInversion",
           _ADAMW_DEFAULTS, _ADAMW_HP),
    Method("crossinit", "CrossInit", "CrossInit: encoder-output initialization plus an L2 pull towards it",
           f"{_TI}:CrossInit", {**_ADAMW_DEFAULTS, "pull_weight": 1e-5}, (*_ADAMW_HP, "pull_weight")),
    Method("ti_rescaled", "TI-rescaled", "TI vectors rescaled to the vocabulary magnitude m at load time (ablation)",
           None, dict(magnitude="mean"), ("magnitude",), trained_as="ti", rescale_to_magnitude=True),
    # A newer baseline of the same family, and its regularizers on DTI's parameterization.
    Method("core", "CoRe", "CoRe: TI with context embedding and attention regularizers and a norm hold",
           "dti.methods.core:CoRe", {**_ADAMW_DEFAULTS, "lr": 5e-3, **_CORE_DEFAULTS, "rescale_from": 120,
                                     "rescale_until": 180}, (*_ADAMW_HP, *_CORE_HP, "rescale_from", "rescale_until"),
           **_CORE_FAMILIES),
    Method("dti_core", "DTI + CoRe", "DTI's direction at fixed m with CoRe's context regularizers",
           "dti.methods.core:DirectionalCoRe", {**_DTI_DEFAULTS, **_CORE_DEFAULTS}, (*_DTI_HP, *_CORE_HP),
           on_sphere=True, **_CORE_FAMILIES),
    # CoRe's second stage (the authors' train.sh, stage 2): the CoRe token frozen, the whole UNet fine-tuned by
    # AdamW at 2e-6 with the plain denoising loss (their regularizers are off in that stage).
    Method("core_unet", "CoRe + UNet", "CoRe's second stage: a core run's token, frozen, and every weight of "
           "the denoiser fine-tuned", "dti.methods.core:CoReUNet", {"adapter_lr": 2e-6}, ("adapter_lr",),
           adapter="full", starts_from="core", **_CORE_FAMILIES),
    Method("dco", "DCO", "a LoRA on the denoiser's attention trained with the DCO loss; the token is the "
           "initializer's rows, untrained", f"{_FT}:DCO", _DCO_DEFAULTS, _DCO_HP, adapter="lora"),
    Method("oft", "OFT", "orthogonal fine-tuning of the denoiser's attention; the token is the initializer's "
           "rows, untrained", f"{_FT}:OFT", _ADAPTER_DEFAULTS, _ADAPTER_HP, adapter="oft"),
    Method("dti_dco", "DTI + DCO", "DTI's token and a LoRA, both trained with the DCO loss",
           f"{_FT}:DirectionalDCO", {**_DTI_DEFAULTS, **_DCO_DEFAULTS}, (*_DTI_HP, *_DCO_HP), on_sphere=True,
           adapter="lora"),
    Method("ti_dco", "TI + DCO", "TI's raw vector and a LoRA, both trained with the DCO loss",
           f"{_FT}:TextualInversionDCO", {**_ADAPTER_DEFAULTS, **_DCO_DEFAULTS, **_ADAMW_DEFAULTS, "lr": 5e-5},
           (*_ADAMW_HP, *_DCO_HP), adapter="lora"),
    Method("dti_oft", "DTI + OFT", "DTI's token and OFT of the denoiser's attention",
           f"{_FT}:DirectionalOFT", {**_DTI_DEFAULTS, **_ADAPTER_DEFAULTS}, (*_DTI_HP, *_ADAPTER_HP),
           on_sphere=True, adapter="oft"),
    Method("ti_oft", "TI + OFT", "TI's raw vector and OFT of the denoiser's attention",
           f"{_FT}:TextualInversionOFT", {**_ADAMW_DEFAULTS, **_ADAPTER_DEFAULTS, "lr": 5e-5},
           (*_ADAMW_HP, *_ADAPTER_HP), adapter="oft"),
    # The paper's ablations (the authors' --init_method, --train_magnitude, --optimizer, --token_scale),
    # each DTI with one part exchanged; docs/method.md says what each one changes and which choices are ours.
    _dti_ablation("dti_init_random", "DTI (random init)", "DTI started from a random direction",
                  "RandomStart"),
    _dti_ablation("dti_init_mean", "DTI (mean init)", "DTI started from the vocabulary's mean direction",
                  "MeanStart"),
    _dti_ablation("dti_init_xinit", "DTI (CrossInit init)", "DTI started from CrossInit's encoder output",
                  "EncoderOutputStart"),
    _dti_ablation("dti_trained_norm", "DTI (trained m)", "DTI whose norm m is trained too (starting at m)",
                  "TrainedNorm", accepts=(*_DTI_HP, "magnitude_lr"), on_sphere=False),
    _dti_ablation("dti_adamw", "DTI (AdamW)", "DTI's m * v with v trained by AdamW and never renormalized "
                  "(the authors' --optimizer adamw)", "AdamWDirection", accepts=("magnitude", *_ADAMW_HP),
                  on_sphere=False),
    _dti_ablation("dti_adamw_sphere", "DTI (AdamW + retraction)", "DTI with AdamW steps, each retracted to "
                  "the sphere", "AdamWSphere", accepts=("magnitude", *_ADAMW_HP)),
    _dti_ablation("dti_m_min", "DTI (m = min)", "DTI at the vocabulary's smallest norm", magnitude="min"),
    _dti_ablation("dti_m_max", "DTI (m = max)", "DTI at the vocabulary's largest norm", magnitude="max"),
    _dti_ablation("dti_m_1", "DTI (m = 1)", "DTI at norm 1 (also what the authors' TI with --optimizer rsgd "
                  "trains: its retraction puts the raw vector on the unit sphere)", magnitude=1.0),
]}


def register(method: Method, *, replace: bool = False) -> Method:
    """Add `method` to the registry (a DtiError for a taken name, a bad name or hyper-parameter, or an
    unknown `trained_as`); `replace=True` overwrites an entry of the same name."""
    check_name(method.name, "method name")
    if method.name in METHODS and not replace:
        raise DtiError(f"method {method.name!r} is registered already")
    unknown = [key for key in method.accepts if key not in HYPER_PARAMETERS]
    if unknown:
        raise DtiError(f"method {method.name!r} accepts unknown hyper-parameter(s) {unknown}; known: "
                       f"{sorted(HYPER_PARAMETERS)}")
    if (method.unit is None) == (method.trained_as is None):
        raise DtiError(f"method {method.name!r} needs either a unit class or trained_as, not both")
    if method.trained_as is not None and method.trained_as not in METHODS:
        raise DtiError(f"method {method.name!r} reuses unknown method {method.trained_as!r}")
    if method.starts_from is not None and (method.starts_from not in METHODS
                                           or METHODS[method.starts_from].trained_as is not None):
        raise DtiError(f"method {method.name!r} starts from {method.starts_from!r}, which is no trainable method")
    _check_values(method.name, method.accepts, method.defaults)
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise DtiError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]


def token_only(methods) -> list[str]:
    """Those of `methods` whose whole result is their token (no adapter on the denoiser), in order."""
    return [m for m in methods if get_method(m).adapter is None]


def trainable_methods() -> list[str]:
    """The methods that train vectors of their own (evaluation-time variants reuse another's)."""
    return [name for name, method in METHODS.items() if method.trained_as is None]


def ablation_rows(method: str) -> list[str]:
    """`method` and its registered ablations (the ablation table's rows), in registry order."""
    return [name for name, m in METHODS.items() if name == method or m.ablation_of == method]


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
    _check_values(method, get_method(method).accepts, given)
    return given


def _check_values(method: str, accepts: tuple[str, ...], given: dict) -> None:
    for key, value in given.items():
        if key not in accepts:
            raise DtiError(f"method {method!r} takes no hyper-parameter {key!r} (it takes: {', '.join(accepts)})")
        problem = HYPER_PARAMETERS[key].check(value)
        if problem is not None:
            raise DtiError(f"method {method!r}: {key} must be {problem}, got {value!r}")

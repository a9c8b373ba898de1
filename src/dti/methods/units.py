"""The parts a token-learning method is made of, and `TokenMethod`, the class the trainer calls.

A method is a `TokenMethod` subclass that chooses one part of each kind (docs/method.md):
- `start`: where its rows start, and the anchor it regards as its initialization (the vMF prior's mean
  direction, CrossInit's pull target): the initializer's vocabulary rows, CrossInit's encoder output,
  a seeded random vector, the vocabulary's mean row, or the final token of another run (a second stage);
- `parameterization`: what is trained (a raw vector; a direction on the unit sphere times a fixed m; a
  direction times a trained m), installed in the text encoder as a `PlaceholderEmbedding`;
- `optimizer`: Riemannian SGD with the vMF prior, or AdamW (optionally retracted to the sphere);
- `extra_loss`: a term added to the denoising loss (CrossInit's pull, CoRe's context regularizers), given
  the step's `StepInputs`; none by default;
- `before_update` / `after_update`: called around each optimizer step (CoRe's norm rescaling);
- `adapter`: weights trained on the denoiser beside the rows (a kind of dti.adapters: LoRA, OFT, every
  weight; None by default), with their own AdamW, and `denoising_loss`, the loss the step minimizes before any extra term
  (the plain denoising MSE by default; DCO's consistency loss for the DCO methods).
The trainer (dti.train) calls these hooks and knows no method by name; the optimizer state that a
resumed run restores is whatever the method's optimizer keeps (dti.train checks it against a probe).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dti.errors import DtiError
from dti.optim import RetractedAdamW, RiemannianSGD
from dti.sphere import normalize
from dti.tokens import (
    Placeholder,
    PlaceholderEmbedding,
    contextual_init,
    install,
    resolve_magnitude,
    token_init,
)


@dataclass
class SlotContext:
    """What a method sees of one text encoder when its rows start."""

    name: str  # the slot: clip_l, clip_g, gemma2, umt5
    table: torch.Tensor  # the encoder's frozen vocabulary table
    encoder: nn.Module
    tokenizer: object
    initializer: str
    placeholder: Placeholder  # its k tokens and the initializer's k vocabulary ids
    device: torch.device
    text_length: int  # tokens per prompt
    generator: torch.Generator  # seeded by the run's seed and the slot: a random start is reproducible
    saved_rows: torch.Tensor | None = None  # the rows of the run training starts from (TrainSettings.start_from)


@dataclass
class StepInputs:
    """What a method's extra loss sees of one micro-batch: the trainable layers and where they started, the
    backbone (to encode prompts and run the denoiser), the batch the denoising loss was computed on, and
    a generator of the method's own draws, seeded by the run's seed, the step and the micro-batch."""

    step: int
    layers: dict[str, PlaceholderEmbedding]
    starts: dict[str, Start]
    backbone: object  # dti.backbones.base.Backbone (not imported: units stay free of the backbones)
    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    time_ids: torch.Tensor | None
    prompt_token: str  # the placeholder as a prompt writes it (its k tokens)
    initializer: str
    generator: torch.Generator
    adapter: object = None  # the method's dti.adapters.AttachedAdapter on the denoiser, if it has one


@dataclass
class Start:
    rows: torch.Tensor  # the embedding rows training starts from (fp32, [k, d])
    anchor: torch.Tensor  # the rows the method calls its initialization: prior mean direction, pull target


# --- starts ---------------------------------------------------------------------------------------------
class InitializerRows:
    """The initializer's vocabulary rows (TI, DTI)."""

    def __call__(self, ctx: SlotContext) -> Start:
        rows = token_init(ctx.table, ctx.placeholder.init_ids)
        return Start(rows, rows)


class EncoderOutput:
    """CrossInit: the encoder's final output at the initializer's positions; it is the anchor too."""

    def __call__(self, ctx: SlotContext) -> Start:
        rows = contextual_init(ctx.encoder, ctx.tokenizer, ctx.initializer, ctx.device, ctx.text_length)
        return Start(rows, rows)


class RandomRows:
    """A standard normal vector per row (the authors' init_method random); the anchor stays the
    initializer's rows, as their prior does."""

    def __call__(self, ctx: SlotContext) -> Start:
        anchor = token_init(ctx.table, ctx.placeholder.init_ids)
        rows = torch.randn(anchor.shape, generator=ctx.generator).to(anchor.device)
        return Start(rows, anchor)


class SavedToken:
    """The final rows of the run this one continues (a second stage: TrainSettings.start_from), which are
    the anchor too."""

    def __call__(self, ctx: SlotContext) -> Start:
        if ctx.saved_rows is None:
            raise DtiError("this method continues another run: give the run folder it starts from (start_from)")
        k = len(ctx.placeholder.init_ids)
        if ctx.saved_rows.shape[0] != k:
            raise DtiError(f"the run it starts from has {ctx.saved_rows.shape[0]} vector(s) for the {ctx.name} "
                           f"text encoder; initializer {ctx.initializer!r} gives {k}: train both with one initializer")
        rows = ctx.saved_rows.detach().float().to(ctx.device)
        return Start(rows, rows)


class VocabularyMean:
    """The mean of the vocabulary's non-zero rows for every row (the authors' init_method mean); the
    anchor stays the initializer's rows."""

    def __call__(self, ctx: SlotContext) -> Start:
        anchor = token_init(ctx.table, ctx.placeholder.init_ids)
        table = ctx.table.detach().float()
        mean = table[table.norm(dim=-1) > 0].mean(dim=0)
        return Start(mean.expand_as(anchor).clone(), anchor)


# --- parameterizations ----------------------------------------------------------------------------------
class RawVector:
    """The embedding row itself is trained (TI, CrossInit)."""

    def install(self, ctx: SlotContext, start: Start, hp: dict) -> tuple[PlaceholderEmbedding, float | None]:
        return install(ctx.encoder, ctx.placeholder, start.rows, magnitude=None), None


class FixedNormDirection:
    """A unit direction v is trained; the embedding is m * v with m a fixed statistic of the vocabulary's
    norms (hyper-parameter `magnitude`)."""

    def install(self, ctx: SlotContext, start: Start, hp: dict) -> tuple[PlaceholderEmbedding, float]:
        m = resolve_magnitude(ctx.table, hp["magnitude"])
        return install(ctx.encoder, ctx.placeholder, normalize(start.rows), magnitude=m), m


class TrainedNormDirection(FixedNormDirection):
    """As FixedNormDirection, but each row's m is a trainable parameter starting at the statistic."""

    def install(self, ctx: SlotContext, start: Start, hp: dict) -> tuple[PlaceholderEmbedding, float]:
        layer, m = super().install(ctx, start, hp)
        layer.magnitude = nn.Parameter(torch.full((layer.rows.shape[0], 1), m, device=layer.rows.device))
        return layer, m


class FrozenRows:
    """The start's rows as they are, not trained: the token of a method that trains only an adapter."""

    def install(self, ctx: SlotContext, start: Start, hp: dict) -> tuple[PlaceholderEmbedding, None]:
        layer = install(ctx.encoder, ctx.placeholder, start.rows, magnitude=None)
        layer.rows.requires_grad_(False)
        return layer, None


def trainable(layer: PlaceholderEmbedding) -> dict[str, nn.Parameter]:
    """{name: parameter} that a method trains in one slot's layer (its rows, and a trained m), in order."""
    return {name: p for name, p in layer.named_parameters() if p.requires_grad}


# --- optimizers -----------------------------------------------------------------------------------------
class RiemannianSteps:
    """Riemannian SGD on the sphere with the vMF prior centred on each anchor's direction (hyper-parameters
    lr, beta, eps, kappa); a trained m takes normalized Euclidean steps of `magnitude_lr` in its own group."""

    def __call__(self, layers: dict[str, PlaceholderEmbedding], starts: dict[str, Start], hp: dict):
        rows = [layers[s].rows for s in layers]
        norms = [p for layer in layers.values() for name, p in trainable(layer).items() if name != "rows"]
        groups = [{"params": rows}] + ([{"params": norms, "lr": hp["magnitude_lr"], "sphere": False}]
                                       if norms else [])
        prior = [normalize(starts[s].anchor) for s in layers] + [None] * len(norms)
        return RiemannianSGD(groups, lr=hp["lr"], beta=hp["beta"], eps=hp["eps"], kappa=hp["kappa"],
                             prior_mu=prior)


class AdamWSteps:
    """AdamW over every trainable parameter (hyper-parameters lr, weight_decay, adam_betas); only the new
    rows are parameters, so weight decay touches nothing but them. `retract=True` puts the rows back on
    the unit sphere after each step."""

    def __init__(self, retract: bool = False):
        self.retract = retract

    def __call__(self, layers: dict[str, PlaceholderEmbedding], starts: dict[str, Start], hp: dict):
        params = [p for layer in layers.values() for p in trainable(layer).values()]
        kwargs = dict(lr=hp["lr"], betas=tuple(hp["adam_betas"]), weight_decay=hp["weight_decay"])
        if self.retract:
            return RetractedAdamW(params, **kwargs)
        return torch.optim.AdamW(params, **kwargs)


# The adapter's AdamW as the DTI authors' script sets it (their adam_beta1/2, adam_epsilon, adam_weight_decay
# defaults); its learning rate is the hyper-parameter adapter_lr, never multiplied by the batch.
ADAPTER_ADAMW = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)


# --- the method -----------------------------------------------------------------------------------------
class TokenMethod:
    """How a method learns its rows: a start, a parameterization, an optimizer and an optional extra loss.
    A subclass sets the three class attributes and, for an extra term, overrides `extra_loss`."""

    start = InitializerRows()
    parameterization = RawVector()
    optimizer = AdamWSteps()
    adapter: str | None = None  # a kind of dti.adapters (lora, oft, full) trained on the denoiser beside the rows
    metadata_keys: tuple[str, ...] = ()  # hyper-parameters also written as `dti.<key>` into every file

    def __init__(self, hyper_parameters: dict):
        self.hp = hyper_parameters  # every hyper-parameter the method trains with (defaults filled in)

    def start_rows(self, ctx: SlotContext) -> Start:
        return self.start(ctx)

    def install(self, ctx: SlotContext, start: Start) -> tuple[PlaceholderEmbedding, float | None]:
        """Install the slot's trainable rows in its encoder; returns the layer and its (initial) m, or None."""
        return self.parameterization.install(ctx, start, self.hp)

    def make_optimizer(self, layers: dict[str, PlaceholderEmbedding], starts: dict[str, Start]):
        return self.optimizer(layers, starts, self.hp)

    def attach_adapter(self, backbone, seed: int):
        """Put the method's adapter (rank adapter_rank where its kind has one, its random start drawn from
        `seed`) on the backbone's denoiser; None if it has none."""
        if self.adapter is None:
            return None
        from dti.adapters import AttachedAdapter

        return AttachedAdapter(backbone, self.adapter, self.hp.get("adapter_rank"), seed)

    def make_adapter_optimizer(self, adapter) -> torch.optim.Optimizer:
        return torch.optim.AdamW(list(adapter.parameters.values()), lr=self.hp["adapter_lr"], **ADAPTER_ADAMW)

    def denoising_loss(self, inputs: StepInputs, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of the micro-batch before any extra term: the backbone's denoising MSE."""
        return inputs.backbone.denoising_loss(inputs.latents, cond, inputs.noise, inputs.timesteps, inputs.time_ids)

    def metadata(self) -> dict:
        """Safetensors metadata of its own, beside the hyper-parameters' JSON every file carries."""
        return {f"dti.{key}": self.hp[key] for key in self.metadata_keys if key in self.hp}

    def extra_loss(self, inputs: StepInputs) -> torch.Tensor | None:
        """A term added to the denoising loss (fp32), or None."""
        return None

    def before_update(self, step: int, layers: dict[str, PlaceholderEmbedding]) -> None:
        """Called after the gradients of `step` and before its optimizer step."""

    def after_update(self, step: int, layers: dict[str, PlaceholderEmbedding]) -> None:
        """Called after the optimizer step of `step` (under no_grad): a change to the rows here is part of
        the step, so it must depend on nothing but the rows and the step (a resumed run repeats it)."""

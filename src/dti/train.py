"""The training loop every token-learning method shares (docs/method.md).

What differs between methods (how rows start, what is trained, the optimizer, an extra loss) is the
method's unit (dti.methods.units.TokenMethod); this loop calls its hooks and branches on no method.

Reproducibility and resumption rest on one rule: every random choice of a training sample (image,
crop, template, timestep, noise) comes from its own generator seeded by (seed, step, sample index).
The stream therefore needs no saved RNG state, a resumed run sees exactly the samples an uninterrupted
run sees, and batch B x accumulation A draws the same B*A samples as batch B*A x accumulation 1.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from dti import __version__
from dti.adapters import adapter_dir
from dti.backbones.base import Backbone
from dti.errors import DtiError
from dti.export import diffusers_file, load_for_backbone, read_metadata, save_diffusers, save_single_file
from dti.io import LineLog, check_target, ensure_folder, write_json, write_text
from dti.latents import CachedLatents, EncodeEveryStep
from dti.methods import ResolvedMethod, resolve_method
from dti.methods.units import SlotContext, Start, StepInputs, TokenMethod, trainable
from dti.model_files import public_model, weights_identity
from dti.names import check_name
from dti.optim import Optimizers
from dti.prompts import TRAINING_TEMPLATES, ZERO_PAD_MAX, render
from dti.speedups import Speedups, attention_backend
from dti.sphere import angle, normalize
from dti.state import TrainingState, UnreadableState, read_state, save_state
from dti.token_names import ZERO_PAD, normalize_placeholder, short_text, token_count
from dti.tokens import Placeholder, PlaceholderEmbedding, add_placeholder, add_zero_pad, vocab_norm_stats

log = logging.getLogger(__name__)
# A vector whose norm falls below this fraction of the vocabulary's mean norm has collapsed (zero).
_DEGENERATE = 1e-6


@dataclass
class TrainSettings:
    """One training run: the method with the hyper-parameters given for it (its defaults fill in the rest,
    dti.methods), and the run's own settings."""

    method: str = "dti"
    hyper_parameters: dict = field(default_factory=dict)  # overrides of the method's defaults (effective lr)
    placeholder: str = "<subject>"
    initializer: str = "object"
    steps: int = 400
    batch_size: int = 4
    grad_accum: int = 1
    resolution: int = 768
    seed: int = 42
    save_every: int = 50
    mixed_precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    latent_cache: bool = True
    # The DTI authors' SANA augmentation: n all-zero padding tokens before each training prompt,
    # n = floor(min(X, 15)) with X exponential of scale 2, drawn per sample (docs/method.md).
    zero_pad: bool = False
    name: str | None = None  # the single file's name, its trigger word; default: {method}-{placeholder w/o <>}
    # A second stage's first: the folder of the run whose final token it starts from (a method with
    # `starts_from`, e.g. core_unet continues a core run); None for every other method.
    start_from: str | None = None
    speedups: Speedups = field(default_factory=Speedups)  # GPU switches (dti.speedups); None = device default

    def resolve(self) -> ResolvedMethod:
        """The method and every hyper-parameter it trains with; a DtiError for an override it does not take."""
        return resolve_method(self.method, self.hyper_parameters)

    @property
    def export_name(self) -> str:
        """File name of the single-file export, which AUTOMATIC1111, Forge and SD.Next use as its trigger word:
        distinctive, so no everyday word of a prompt triggers it and runs of other methods can share a folder."""
        return self.name or f"{self.method}-{self.placeholder.strip('<>') or 'embedding'}"

    def validate(self) -> None:
        """Check the settings (a DtiError naming the bad one); the placeholder is lower-cased
        (dti.token_names.normalize_placeholder)."""
        self.placeholder = normalize_placeholder(self.placeholder)
        if isinstance(self.speedups, dict):
            self.speedups = Speedups(**self.speedups)
        for key in ("steps", "batch_size", "grad_accum", "resolution", "save_every"):
            if int(getattr(self, key)) < 1:
                raise DtiError(f"{key} must be a positive integer, got {getattr(self, key)}")
        if not isinstance(self.zero_pad, bool):
            raise DtiError(f"zero_pad must be true or false, got {self.zero_pad!r}")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise DtiError(f"mixed_precision must be auto, no or bf16, got {self.mixed_precision!r}")
        check_name(self.export_name, "export file name" + ("" if self.name else " (from the placeholder; set name)"))
        first = self.resolve().method.starts_from
        if first and not self.start_from:
            raise DtiError(f"method {self.method!r} continues a {first!r} run: give that run's folder as start_from")
        if self.start_from and not first:
            raise DtiError(f"start_from {self.start_from}: method {self.method!r} starts from its own "
                           "initialization; only a method that continues another run takes start_from")


@dataclass
class SlotTokens:
    """What training keeps for one text encoder (slot) of the backbone."""

    placeholder: Placeholder  # the k tokens standing for the subject, and their ids
    layer: PlaceholderEmbedding  # the encoder's token table with the trainable rows
    start: Start  # the rows training starts from, and the method's anchor (its initialization)
    vocab_stats: dict  # norm statistics of the encoder's vocabulary
    magnitude: float | None  # the norm m the rows start at where the method sets one; None for raw vectors

    @property
    def init_rows(self) -> torch.Tensor:
        return self.start.rows

    @property
    def prior_mu(self) -> torch.Tensor:
        """Unit directions of the anchor (the vMF prior's mean where the method has the prior)."""
        return normalize(self.start.anchor)


class TrainingInterrupted(Exception):
    """SIGTERM/SIGUSR1 arrived (preemption, time limit): state was saved, rerun to resume."""


class TrainingDiverged(DtiError):
    """A non-finite loss or a non-finite or collapsed vector: stopping beats saving a wrong token."""


def _seed(key: str) -> int:
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _generator(key: str) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(key))


def sample_generator(seed: int, step: int, index: int) -> torch.Generator:
    return _generator(f"{seed}:{step}:{index}")


def zero_pad_count(gen: torch.Generator) -> int:
    """floor(min(X, 15)) with X exponential of scale 2 (mean 2): 0 for about 39% of prompts."""
    return int(min(torch.empty(()).exponential_(0.5, generator=gen).item(), float(ZERO_PAD_MAX)))


def start_generator(seed: int, slot: str) -> torch.Generator:
    """The generator of a method's random start in one slot (its own stream, apart from the samples')."""
    return _generator(f"{seed}:start:{slot}")


@contextmanager
def _stop_on_signals():
    """Turn SIGTERM / SIGUSR1 into a flag checked between steps (so a step is never half-applied)."""
    flag = {"signal": None}
    handled = (signal.SIGTERM, signal.SIGUSR1)
    try:
        previous = {s: signal.signal(s, lambda signum, _frame: flag.__setitem__("signal", signum)) for s in handled}
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Trainer:
    def __init__(self, backbone: Backbone, images: list[Image.Image], settings: TrainSettings, out_dir: Path):
        settings.validate()
        if not images:
            raise DtiError("no training images given")
        self.backbone, self.settings, self.out_dir = backbone, settings, Path(out_dir)
        self.resolved = settings.resolve()
        self.method = self.resolved.method
        self.method.check_family(backbone.family, f"training {settings.method}")
        self.unit: TokenMethod = self.method.unit_class()(self.hp)
        self.device = backbone.device
        self.images = images
        self.accelerator = self._make_accelerator()
        backbone.check_placeholder(settings.placeholder)
        self._setup_tokens()
        latent_cls = CachedLatents if settings.latent_cache else EncodeEveryStep
        self.latents = latent_cls(backbone, images, settings.resolution)
        # weights on the denoiser beside the rows, or None; their random start has its own seeded stream
        self.adapter = self.unit.attach_adapter(backbone, _seed(f"{settings.seed}:adapter"))
        self.optimizer = self._make_optimizer()
        self.speedups = backbone.resolve_speedups(settings.speedups)
        backbone.apply_speedups(self.speedups, vae=False)  # the VAE only encodes, once: left as it is
        self.step = 0

    # --- set-up -----------------------------------------------------------------------------------
    def _setup_tokens(self) -> None:
        s = self.settings
        self.slots: dict[str, SlotTokens] = {}
        saved = self._saved_rows()
        for slot in self.backbone.slots:
            table = slot.encoder.get_input_embeddings().weight
            ph = add_placeholder(slot.tokenizer, slot.name, s.placeholder, s.initializer)
            self._check_text_window(slot, ph)
            ctx = SlotContext(slot.name, table, slot.encoder, slot.tokenizer, s.initializer, ph, self.device,
                              slot.text_length, start_generator(s.seed, slot.name), saved.get(slot.name))
            start = self.unit.start_rows(ctx)
            start = Start(start.rows.float().to(self.device), start.anchor.float().to(self.device))
            layer, m = self.unit.install(ctx, start)
            if s.zero_pad:
                add_zero_pad(slot.tokenizer, layer, slot.name)
            self.slots[slot.name] = SlotTokens(ph, layer, start, vocab_norm_stats(table), m)
        texts = {self.backbone.prompt_text(t.placeholder.tokens) for t in self.slots.values()}
        if len(texts) != 1:
            raise DtiError(f"the text encoders split the initializer differently: {sorted(texts)}")
        self.prompt_token = texts.pop()

    def _saved_rows(self) -> dict[str, torch.Tensor]:
        """{slot: final rows} of the run this one continues (settings.start_from), read before the backbone's
        tokenizers change; that run must be of the method this one starts from, on a model of this family."""
        if not self.settings.start_from:
            return {}
        folder, first = Path(self.settings.start_from), self.method.starts_from
        _, vectors = load_for_backbone(self.backbone, folder)
        trained = read_metadata(folder / diffusers_file(0)).get("dti.method")
        if trained != first:
            raise DtiError(f"start_from {folder}: its token was trained by {trained or 'another tool'}; method "
                           f"{self.settings.method!r} continues a {first!r} run")
        return vectors

    def _make_optimizer(self):
        """The method's optimizer of the rows (none if it trains no rows) and its adapter's, as one."""
        parts = []
        if any(trainable(layer) for layer in self.layers.values()):
            parts.append(self.unit.make_optimizer(self.layers, self.starts))
        if self.adapter is not None:
            parts.append(self.unit.make_adapter_optimizer(self.adapter))
        if not parts:
            raise DtiError(f"method {self.settings.method!r} trains nothing: no rows and no adapter")
        return parts[0] if len(parts) == 1 else Optimizers(parts)

    def release(self) -> None:
        """Take the method's adapter off the denoiser: a backbone used again after training is the frozen one."""
        if self.adapter is not None:
            self.adapter.remove()
            self.adapter = None

    def _check_text_window(self, slot, ph: Placeholder) -> None:
        """Refuse, before any work, an initializer whose k tokens make a training prompt longer than the text
        encoder's window: the tokenizer would cut the prompt's end (the learned tokens among it) with a mere
        warning. Checked on the longest training template with the k tokens written in, plus the most
        zero-pad tokens a prompt gets (ZERO_PAD_MAX) when zero_pad is on."""
        text = self.backbone.prompt_text(ph.tokens)
        counts = {t: token_count(slot.tokenizer, render(t, text)) for t in TRAINING_TEMPLATES}
        longest = max(counts, key=counts.get)
        pad = ZERO_PAD_MAX if self.settings.zero_pad else 0
        if counts[longest] + pad > slot.text_length:
            padded = f" and {pad} zero-pad tokens" if pad else ""
            raise DtiError(f"initializer {short_text(self.settings.initializer)} is {len(ph.tokens)} tokens for the "
                           f"{slot.name} text encoder: the training prompt {longest!r} with them{padded} is "
                           f"{counts[longest] + pad} tokens, more than the {slot.text_length} it reads (start and "
                           "end tokens included), and the rest would be cut off; choose a shorter initializer")

    @property
    def hp(self) -> dict:
        """Every hyper-parameter of the method, as resolved from the settings."""
        return self.resolved.hyper_parameters

    # Views of the slot records, by slot.
    @property
    def layers(self) -> dict[str, PlaceholderEmbedding]:
        """{slot: its token table with the trainable rows}."""
        return {name: t.layer for name, t in self.slots.items()}

    @property
    def init_rows(self) -> dict[str, torch.Tensor]:
        """{slot: the rows training started from}."""
        return {name: t.init_rows for name, t in self.slots.items()}

    @property
    def starts(self) -> dict[str, Start]:
        """{slot: where its rows started, and the method's anchor}."""
        return {name: t.start for name, t in self.slots.items()}

    @property
    def parameters(self) -> dict[str, torch.nn.Parameter]:
        """{"<slot>.<name>": every tensor the method trains, "adapter.<name>": its adapter's}, in the
        optimizer's order within each kind."""
        params = {f"{slot}.{name}": p for slot, layer in self.layers.items() for name, p in trainable(layer).items()}
        if self.adapter is not None:
            params.update({f"adapter.{name}": p for name, p in self.adapter.parameters.items()})
        return params

    # --- one step -----------------------------------------------------------------------------------
    def _micro_batch(self, step: int, indices: range):
        prompts, latents, noise, timesteps, time_ids = [], [], [], [], []
        for j in indices:
            gen = sample_generator(self.settings.seed, step, j)
            crop = self.latents.random_crop(gen, len(self.images))
            template = TRAINING_TEMPLATES[int(torch.randint(len(TRAINING_TEMPLATES), (1,), generator=gen))]
            prompts.append(self._padded(render(template, self.prompt_token), gen))
            shape = self.latents.shape
            latents.append(self.latents.sample(crop, torch.randn(shape, generator=gen)))
            noise.append(torch.randn(shape, generator=gen))
            timesteps.append(self.backbone.sample_timestep(gen))
            time_ids.append(self.latents.time_ids(crop))
        dev = self.device
        return (prompts, torch.stack(latents).to(dev), torch.stack(noise).to(dev),
                torch.tensor(timesteps, device=dev), torch.tensor(time_ids, device=dev, dtype=torch.float32))

    def _padded(self, prompt: str, gen: torch.Generator) -> str:
        """With zero_pad, `prompt` behind n zero-pad tokens (n drawn from the sample's generator), written as
        the family writes a k-vector placeholder (SD/SDXL space-separated, SANA and Wan joined)."""
        if not self.settings.zero_pad:
            return prompt
        n = zero_pad_count(gen)
        joiner = self.backbone.placeholder_joiner
        return joiner.join([ZERO_PAD] * n + [prompt]) if n else prompt

    def _make_accelerator(self):
        """accelerate handles autocast and the backward pass; it must agree with where the backbone lives."""
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        use_bf16 = self.settings.mixed_precision == "bf16" or (
            self.settings.mixed_precision == "auto" and self.device.type == "cuda")
        kwargs = dict(mixed_precision="bf16" if use_bf16 else "no", cpu=self.device.type == "cpu")
        try:
            return Accelerator(**kwargs)
        except ValueError:
            # accelerate keeps one process-wide state and refuses a second precision; one process may
            # train several runs (a notebook, the tests, the benchmark), so start its state afresh.
            AcceleratorState._reset_state(reset_partial_state=True)
            return Accelerator(**kwargs)

    def loss_for(self, step: int, indices: range) -> torch.Tensor:
        prompts, latents, noise, timesteps, time_ids = self._micro_batch(step, indices)
        inputs = StepInputs(step, self.layers, self.starts, self.backbone, latents, noise, timesteps, time_ids,
                            self.prompt_token, self.settings.initializer,
                            _generator(f"{self.settings.seed}:method:{step}:{indices.start}"), self.adapter)
        with self.accelerator.autocast():
            cond = self.backbone.encode_prompts(prompts)
            loss = self.unit.denoising_loss(inputs, cond)
            extra = self.unit.extra_loss(inputs)
        return loss.float() if extra is None else loss.float() + extra.float()

    def train_step(self) -> dict:
        step = self.step + 1
        s = self.settings
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        with attention_backend(self.speedups.attention):
            for a in range(s.grad_accum):
                loss = self.loss_for(step, range(a * s.batch_size, (a + 1) * s.batch_size))
                self.accelerator.backward(loss / s.grad_accum)
                total += loss.item() / s.grad_accum
        if not math.isfinite(total):  # before the optimizer step, so no state is poisoned
            raise self._diverged(step, f"the loss is {total}")
        grad_norms = {slot: layer.rows.grad.norm(dim=-1).tolist() for slot, layer in self.layers.items()
                      if layer.rows.grad is not None}
        if self.adapter is not None:
            grads = [p.grad.float().norm() ** 2 for p in self.adapter.parameters.values() if p.grad is not None]
            grad_norms["adapter"] = [float(sum(grads) ** 0.5) if grads else 0.0]
        self.unit.before_update(step, self.layers)
        try:
            self.optimizer.step()
        except RuntimeError as err:  # e.g. an adaptive step beyond fp32 for an absurd learning rate
            if "overflow" not in str(err):
                raise
            raise self._diverged(step, f"the optimizer step overflowed ({err})") from err
        with torch.no_grad():
            self.unit.after_update(step, self.layers)
        self.step = step
        self.check_vectors()
        return {"step": step, "loss": total, "grad_norm": grad_norms, **self.vector_stats()}

    def _diverged(self, step: int, what: str) -> TrainingDiverged:
        when = f"at step {step}" if step else "before the first step"
        return TrainingDiverged(f"training diverged {when} ({self.settings.method}, lr {self.hp.get('lr')}): {what}; "
                                f"nothing more is written to {self.out_dir}")

    @torch.no_grad()
    def check_vectors(self) -> None:
        """Stop at a non-finite or collapsed vector: training on, or saving it, would only hide it."""
        for slot, layer in self.layers.items():
            rows = layer.embedding_rows().float()
            if not bool(torch.isfinite(rows).all()):
                raise self._diverged(self.step, f"the {slot} vector has non-finite values")
            smallest = rows.norm(dim=-1).min().item()
            if smallest <= _DEGENERATE * self.slots[slot].vocab_stats["mean"]:
                raise self._diverged(self.step, f"the {slot} vector's norm collapsed to {smallest:.3g}")

    @torch.no_grad()
    def vector_stats(self) -> dict:
        norms, angles, cos_mu = {}, {}, {}
        for slot, tokens in self.slots.items():
            rows = tokens.layer.embedding_rows().float()
            norms[slot] = rows.norm(dim=-1).tolist()
            angles[slot] = torch.rad2deg(angle(rows, tokens.init_rows)).tolist()
            cos_mu[slot] = (normalize(rows) * tokens.prior_mu).sum(-1).tolist()
        return {"norm": norms, "angle_from_init_deg": angles, "cos_to_mu": cos_mu}

    # --- outputs ------------------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> None:
        """The token's files of `step`, and its adapter's folder where the method trains one."""
        meta = self.provenance()
        save_diffusers(self.out_dir, self.settings.placeholder, self.vectors(), meta, step)
        if self.adapter is not None:
            self.adapter.save(self.out_dir, step, meta)

    def cost(self) -> dict:
        """What the run trains and holds: parameters of the token and of the adapter, and the GPU's peak
        memory (None on a CPU) over the run's process so far."""
        token = sum(p.numel() for name, p in self.parameters.items() if not name.startswith("adapter."))
        adapter = self.adapter.parameter_count() if self.adapter is not None else 0
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return {"token_parameters": token, "adapter_parameters": adapter,
                "adapter": self.adapter.kind.name if self.adapter is not None else None,
                "adapter_rank": self.adapter.rank if self.adapter is not None else None,
                "peak_gpu_memory_bytes": peak}

    def vectors(self) -> dict[str, torch.Tensor]:
        """The embedding rows to save: m * v for DTI, raw vectors otherwise (fp32, CPU)."""
        return {slot: layer.embedding_rows().detach().float().cpu() for slot, layer in self.layers.items()}

    def provenance(self) -> dict:
        s = self.settings
        model, revision = public_model(self.backbone.model_id, self.backbone.revision)
        meta = {"dti.method": s.method, "dti.base_model": model,
                "dti.base_revision": revision or "", "dti.family": self.backbone.family,
                "dti.initializer": s.initializer, "dti.steps": self.step, "dti.seed": s.seed,
                "dti.code_version": __version__, "dti.hyper_parameters": json.dumps(self.hp, sort_keys=True)}
        for slot, tokens in self.slots.items():
            if tokens.magnitude is not None:
                meta[f"dti.magnitude.{slot}"] = tokens.magnitude
        return {**meta, **self.unit.metadata()}

    def fingerprint(self) -> str:
        return self._fingerprint

    @functools.cached_property
    def _fingerprint(self) -> str:
        """Identifies a run: resuming is only allowed into the same settings, code, model weights and images."""
        b = self.backbone
        # The settings with the method's resolved hyper-parameters: a default given explicitly is the same run.
        settings = {**asdict(self.settings), "hyper_parameters": self.hp}
        identity = {"settings": settings, "code_version": __version__, "model": b.model_id,
                    "revision": b.revision, "weights": weights_identity(b.model_id, b.revision)}
        h = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
        for img in self.images:
            h.update(f"{img.mode} {img.size}".encode())
            h.update(img.tobytes())
        for tokens in self.slots.values():  # a second stage's start is another run's token: its values count
            h.update(tokens.start.rows.detach().cpu().numpy().tobytes())
        return h.hexdigest()

    @property
    def state_path(self) -> Path:
        return self.out_dir / "checkpoints" / "state.safetensors"

    def save_state(self) -> None:
        save_state(self.state_path, TrainingState(self.fingerprint(), self.step, self.parameters,
                                                  self.optimizer.state_dict()["state"]), root=self.out_dir)

    def read_state(self) -> TrainingState | None:
        """The saved state if it is whole and belongs to this very run; otherwise None, having said in one
        line why it is not used and removed it (it would only be overwritten by the next save)."""
        legacy = self.state_path.with_name("state.pt")
        if legacy.is_file():  # pickle, from an older version: never loaded, since unpickling can run code
            log.warning("dti: removing %s (an older version's pickle state; it is never loaded)", legacy)
            legacy.unlink()
        if not self.state_path.is_file():
            return None
        try:
            state = read_state(self.state_path)
            if state.fingerprint != self.fingerprint():
                log.warning("dti: %s is from other settings, code, model weights or images; training starts over",
                            self.state_path)
                self.state_path.unlink()
                return None
            self._check_state(state)
        except UnreadableState as err:
            log.warning("dti: %s is unreadable (%s); training starts over", self.state_path, err)
            self.state_path.unlink()
            return None
        return state

    def _expected_optimizer_state(self) -> dict[int, dict]:
        """The per-parameter state this run's optimizer keeps once it has stepped, whatever the optimizer:
        read off a copy of it (with copies of the parameters) after one step with zero gradients."""
        probe = copy.deepcopy(self.optimizer)
        for group in probe.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        probe.step()
        return probe.state_dict()["state"]

    def _check_state(self, state: TrainingState) -> None:
        """Shapes and values a state of this run must have, so a damaged one cannot fail mid-training."""
        if not 0 < state.step <= self.settings.steps:
            raise UnreadableState(f"step {state.step} outside 1..{self.settings.steps}")
        params = self.parameters
        if set(state.parameters) != set(params):
            raise UnreadableState(f"parameters {sorted(state.parameters)}, this run trains {sorted(params)}")
        for name, value in state.parameters.items():
            if value.shape != params[name].shape or not bool(torch.isfinite(value).all()):
                raise UnreadableState(f"{name} has shape {tuple(value.shape)} or non-finite values")
        expected = self._expected_optimizer_state()
        if set(state.optimizer_state) != set(expected):
            raise UnreadableState(f"optimizer state for parameters {sorted(state.optimizer_state)}, "
                                  f"this run's optimizer has {sorted(expected)}")
        for index, entries in state.optimizer_state.items():
            if set(entries) != set(expected[index]):
                raise UnreadableState(f"optimizer.{index} holds {sorted(entries)}, expected {sorted(expected[index])}")
            for key, value in entries.items():
                want = expected[index][key]
                if isinstance(want, torch.Tensor):
                    ok = (isinstance(value, torch.Tensor) and value.shape == want.shape and value.dtype == want.dtype
                          and bool(torch.isfinite(value).all()))
                else:
                    ok = type(value) is type(want)
                if not ok:
                    raise UnreadableState(f"optimizer.{index}.{key} has the wrong type, shape or bad values")

    def load_state(self, state: TrainingState) -> None:
        params = self.parameters
        with torch.no_grad():
            for name, value in state.parameters.items():
                params[name].copy_(value.to(params[name].device))
        current = self.optimizer.state_dict()  # this run's param_groups; only the per-parameter state is saved
        self.optimizer.load_state_dict({**current, "state": state.optimizer_state})
        self.step = state.step


def _logged_lines(path: Path, upto_step: int) -> list[str] | None:
    """The log's lines of steps 1..upto_step, in order; None unless all of them are there whole (a crash
    mid-write tears at most the last line, which belongs to a step after the saved state)."""
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    except FileNotFoundError:
        return None
    keep = []
    for line in lines[:upto_step]:
        try:
            step = json.loads(line)["step"]
        except (ValueError, TypeError, KeyError):
            return None
        if step != len(keep) + 1:
            return None
        keep.append(line)
    return keep if len(keep) == upto_step else None


def _append(log_file, path: Path, record: dict) -> None:
    try:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
    except OSError as err:
        raise DtiError(f"cannot write {path}: {err.strerror or err}") from err


def _check_outputs(trainer: Trainer, out_dir: Path, root: Path) -> None:
    """Create out_dir and its checkpoints folder, and refuse a symbolic link at any of them or at a file
    training writes (dti.io), before the first step rather than after hours: nothing is written, or
    removed, through a link planted in the folder."""
    s = trainer.settings
    ensure_folder(out_dir, root=root)
    ensure_folder(trainer.state_path.parent, root=out_dir)
    steps = sorted({*range(s.save_every, s.steps + 1, s.save_every), s.steps})
    names = ["train_log.jsonl", "run.json", f"{s.export_name}.safetensors", "checkpoints/state.safetensors",
             "checkpoints/state.pt"]
    names += [diffusers_file(position, step) for position in range(len(trainer.slots)) for step in [None, *steps]]
    if trainer.adapter is not None:
        names += [adapter_dir(step) for step in [None, *steps]]
    for name in names:
        check_target(out_dir / name, root=out_dir)


def train(backbone: Backbone, images: list[Image.Image], settings: TrainSettings, out_dir: str | Path, *,
          progress: bool = True, resume: bool = True, root: str | Path | None = None) -> dict:
    """Learn the placeholder's rows; write embeddings, checkpoints, train_log.jsonl and run.json to out_dir.

    Nothing is written outside `root` (default: out_dir itself, which may be a link): a symbolic link in
    out_dir where training writes, or between `root` and out_dir, is refused before the first step."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DtiError(f"output folder {out_dir} is a file")
    started = time.time()
    trainer = Trainer(backbone, images, settings, out_dir)
    try:
        return _train(trainer, out_dir, started, progress=progress, resume=resume, root=root)
    finally:
        trainer.release()


def _train(trainer: Trainer, out_dir: Path, started: float, *, progress: bool, resume: bool,
           root: str | Path | None) -> dict:
    from tqdm.auto import tqdm

    settings = trainer.settings
    trainer.check_vectors()  # e.g. a magnitude too small for fp32 gives a zero vector from the start
    _check_outputs(trainer, out_dir, Path(root) if root is not None else out_dir)
    log_path = out_dir / "train_log.jsonl"
    state = trainer.read_state() if resume else None
    kept = _logged_lines(log_path, state.step) if state is not None else None
    if state is not None and kept is None:
        log.warning("dti: %s lacks whole lines for steps 1..%d of the saved state; training starts over",
                    log_path, state.step)
        state = None
    if state is not None:
        trainer.load_state(state)
        # drop the lines of steps this run redoes (and a torn last line)
        write_text(log_path, "".join(line + "\n" for line in kept), root=out_dir)
    else:
        log_path.unlink(missing_ok=True)
    resumed_from = trainer.step
    # The log is created by its first line and keeps whole lines only, even on a full disk (dti.io.LineLog).
    with _stop_on_signals() as stop, LineLog(log_path, root=out_dir) as log_file, \
            tqdm(total=settings.steps, initial=trainer.step, disable=not progress, desc=f"{settings.method}") as bar:
        while trainer.step < settings.steps:
            record = trainer.train_step()
            _append(log_file, log_path, record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            if trainer.step % settings.save_every == 0 or trainer.step == settings.steps:
                trainer.save_checkpoint(trainer.step)
                trainer.save_state()
            if stop["signal"] is not None and trainer.step < settings.steps:
                trainer.save_state()
                raise TrainingInterrupted(f"stopped by signal {stop['signal']} after step {trainer.step}; "
                                          f"state saved to {trainer.state_path}, rerun to resume")
    return finish(trainer, out_dir, resumed_from, time.time() - started)


def finish(trainer: Trainer, out_dir: Path, resumed_from: int, seconds: float) -> dict:
    s = trainer.settings
    trainer.check_vectors()  # the last guard before anything final is written
    vectors, meta = trainer.vectors(), trainer.provenance()
    single = save_single_file(out_dir / f"{s.export_name}.safetensors", vectors, meta)
    final = save_diffusers(out_dir, s.placeholder, vectors, meta)
    if trainer.adapter is not None:
        final.append(trainer.adapter.save(out_dir, None, meta))
    stats = {slot: tokens.vocab_stats for slot, tokens in trainer.slots.items()}
    model, revision = public_model(trainer.backbone.model_id, trainer.backbone.revision)  # never a local path
    norms = [{"encoder": slot, "vector": i, "norm": float(n), "vocab_norm_mean": stats[slot]["mean"],
              "vocab_norm_std": stats[slot]["std"]}
             for slot, rows in vectors.items() for i, n in enumerate(rows.norm(dim=-1).tolist())]
    # settings: as given (hyper_parameters: the overrides); hyper_parameters: all the method trained with.
    run = {"settings": asdict(s), "hyper_parameters": trainer.hp, "method": s.method,
           "model": model, "revision": revision, "family": trainer.backbone.family,
           "tokens": {k: t.placeholder.tokens for k, t in trainer.slots.items()},
           "magnitudes": {k: t.magnitude for k, t in trainer.slots.items() if t.magnitude is not None},
           "vocab_norms": stats, "norms": norms,
           "steps": trainer.step, "resumed_from": resumed_from, "seconds": round(seconds, 3),
           "files": [p.name for p in final] + [single.name], "code_version": __version__,
           "final": trainer.vector_stats(), "cost": trainer.cost()}
    write_json(out_dir / "run.json", run)
    return run

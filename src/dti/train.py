"""The training loop shared by DTI, TI and CrossInit (METHOD.md sections 2-4).

Reproducibility and resumption rest on one rule: every random choice of a training sample (image,
crop, template, timestep, noise) comes from its own generator seeded by (seed, step, sample index).
The stream therefore needs no saved RNG state, a resumed run sees exactly the samples an uninterrupted
run sees, and batch B x accumulation A draws the same B*A samples as batch B*A x accumulation 1.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from dti import __version__
from dti.backbones import Backbone
from dti.errors import DtiError
from dti.export import save_diffusers, save_single_file
from dti.io import atomic_path, write_json
from dti.latents import CachedLatents, EncodeEveryStep
from dti.methods import get_method, make_optimizer
from dti.prompts import TRAINING_TEMPLATES, render
from dti.speedups import Speedups, apply_to_modules, attention_backend
from dti.sphere import angle, normalize
from dti.tokens import (
    Placeholder,
    PlaceholderEmbedding,
    add_placeholder,
    contextual_init,
    install,
    resolve_magnitude,
    token_init,
    vocab_norm_stats,
)


@dataclass
class TrainSettings:
    method: str = "dti"
    placeholder: str = "<subject>"
    initializer: str = "object"
    steps: int = 400
    lr: float | None = None  # EFFECTIVE rate (already x batch x accumulation); None = the method's default
    batch_size: int = 4
    grad_accum: int = 1
    resolution: int = 768
    seed: int = 42
    kappa: float | None = None
    beta: float | None = None
    eps: float | None = None
    magnitude: str | float | None = None
    weight_decay: float | None = None
    pull_weight: float | None = None
    adam_betas: tuple[float, float] | None = None
    save_every: int = 50
    mixed_precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    latent_cache: bool = True
    name: str | None = None  # file name of the single-file export; default: the placeholder without <>
    speedups: Speedups = field(default_factory=Speedups)  # GPU switches (dti.speedups); None = device default

    def hyper_parameters(self) -> dict:
        """The method's defaults overridden by every setting given here."""
        method = get_method(self.method)
        if method.trained_as:
            raise DtiError(f"method {self.method!r} is an evaluation-time variant of {method.trained_as!r}; "
                           f"train {method.trained_as!r} instead")
        hp = dict(method.defaults)
        for key in ("lr", "kappa", "beta", "eps", "magnitude", "weight_decay", "pull_weight", "adam_betas"):
            value = getattr(self, key)
            if value is not None:
                hp[key] = value
        return hp

    def validate(self) -> None:
        if isinstance(self.speedups, dict):
            self.speedups = Speedups(**self.speedups)
        for key in ("steps", "batch_size", "grad_accum", "resolution", "save_every"):
            if int(getattr(self, key)) < 1:
                raise DtiError(f"{key} must be a positive integer, got {getattr(self, key)}")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise DtiError(f"mixed_precision must be auto, no or bf16, got {self.mixed_precision!r}")


class TrainingInterrupted(Exception):
    """SIGTERM/SIGUSR1 arrived (preemption, time limit): state was saved, rerun to resume."""


def sample_generator(seed: int, step: int, index: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{step}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


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
        self.method = get_method(settings.method)
        self.hp = settings.hyper_parameters()
        self.device = backbone.device
        self.images = images
        self.accelerator = self._make_accelerator()
        self._setup_tokens()
        latent_cls = CachedLatents if settings.latent_cache else EncodeEveryStep
        self.latents = latent_cls(backbone.vae, images, settings.resolution)
        params = [layer.rows for layer in self.layers.values()]
        self.optimizer = make_optimizer(self.method, params, self.hp, [self.prior_mu[s] for s in self.layers])
        self.speedups = settings.speedups.resolved(self.device)
        apply_to_modules(backbone.unet, None, self.speedups)  # the VAE only encodes, once: left as it is
        self.step = 0

    # --- set-up -----------------------------------------------------------------------------------
    def _setup_tokens(self) -> None:
        s = self.settings
        self.placeholders: dict[str, Placeholder] = {}
        self.layers: dict[str, PlaceholderEmbedding] = {}
        self.magnitudes: dict[str, float] = {}
        self.vocab_stats: dict[str, dict] = {}
        self.prior_mu: dict[str, torch.Tensor] = {}
        self.init_rows: dict[str, torch.Tensor] = {}
        for slot in self.backbone.slots:
            table = slot.encoder.get_input_embeddings().weight
            ph = add_placeholder(slot.tokenizer, slot.name, s.placeholder, s.initializer)
            self.vocab_stats[slot.name] = vocab_norm_stats(table)
            token_rows = token_init(table, ph.init_ids)
            self.prior_mu[slot.name] = normalize(token_rows)
            if self.method.init == "contextual":
                init = contextual_init(slot.encoder, slot.tokenizer, s.initializer, self.device)
            else:
                init = token_rows
            if self.method.on_sphere:
                m = resolve_magnitude(table, self.hp["magnitude"])
                self.magnitudes[slot.name] = m
                layer = install(slot.encoder, ph, normalize(init), magnitude=m)
            else:
                layer = install(slot.encoder, ph, init, magnitude=None)
            self.init_rows[slot.name] = init.to(self.device)
            self.placeholders[slot.name] = ph
            self.layers[slot.name] = layer
        texts = {ph.text for ph in self.placeholders.values()}
        if len(texts) != 1:
            raise DtiError(f"the text encoders split the initializer differently: {sorted(texts)}")
        self.prompt_token = texts.pop()

    # --- one step -----------------------------------------------------------------------------------
    def _micro_batch(self, step: int, indices: range):
        prompts, latents, noise, timesteps, time_ids = [], [], [], [], []
        n_train = self.backbone.noise_scheduler.config.num_train_timesteps
        for j in indices:
            gen = sample_generator(self.settings.seed, step, j)
            crop = self.latents.random_crop(gen, len(self.images))
            template = TRAINING_TEMPLATES[int(torch.randint(len(TRAINING_TEMPLATES), (1,), generator=gen))]
            prompts.append(render(template, self.prompt_token))
            shape = (4, self.latents.cells, self.latents.cells)
            latents.append(self.latents.sample(crop, torch.randn(shape, generator=gen)))
            noise.append(torch.randn(shape, generator=gen))
            timesteps.append(int(torch.randint(n_train, (1,), generator=gen)))
            time_ids.append(self.latents.time_ids(crop))
        dev = self.device
        return (prompts, torch.stack(latents).to(dev), torch.stack(noise).to(dev),
                torch.tensor(timesteps, device=dev), torch.tensor(time_ids, device=dev, dtype=torch.float32))

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
        with self.accelerator.autocast():
            cond = self.backbone.encode_prompts(prompts)
            loss = self.backbone.denoising_loss(latents, cond, noise, timesteps, time_ids)
        if self.hp.get("pull_weight"):
            pull = sum(torch.nn.functional.mse_loss(self.layers[s].rows, self.init_rows[s]) for s in self.layers)
            loss = loss + self.hp["pull_weight"] * pull
        return loss.float()

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
        grad_norms = {slot: layer.rows.grad.norm(dim=-1).tolist() for slot, layer in self.layers.items()}
        self.optimizer.step()
        self.step = step
        return {"step": step, "loss": total, "grad_norm": grad_norms, **self.vector_stats()}

    @torch.no_grad()
    def vector_stats(self) -> dict:
        norms, angles, cos_mu = {}, {}, {}
        for slot, layer in self.layers.items():
            rows = layer.embedding_rows().float()
            norms[slot] = rows.norm(dim=-1).tolist()
            angles[slot] = torch.rad2deg(angle(rows, self.init_rows[slot])).tolist()
            cos_mu[slot] = (normalize(rows) * self.prior_mu[slot]).sum(-1).tolist()
        return {"norm": norms, "angle_from_init_deg": angles, "cos_to_mu": cos_mu}

    # --- outputs ------------------------------------------------------------------------------------
    def vectors(self) -> dict[str, torch.Tensor]:
        """The embedding rows to save: m * v for DTI, raw vectors otherwise (fp32, CPU)."""
        return {slot: layer.embedding_rows().detach().float().cpu() for slot, layer in self.layers.items()}

    def provenance(self) -> dict:
        s = self.settings
        meta = {"dti.method": s.method, "dti.base_model": self.backbone.model_id,
                "dti.base_revision": self.backbone.revision or "", "dti.family": self.backbone.family,
                "dti.initializer": s.initializer, "dti.steps": self.step, "dti.seed": s.seed,
                "dti.code_version": __version__, "dti.hyper_parameters": json.dumps(self.hp, sort_keys=True)}
        for slot, m in self.magnitudes.items():
            meta[f"dti.magnitude.{slot}"] = m
        if "kappa" in self.hp:
            meta["dti.kappa"] = self.hp["kappa"]
        return meta

    def fingerprint(self) -> str:
        """Identifies a run: resuming is only allowed into the same settings, model and images."""
        h = hashlib.sha256(json.dumps(asdict(self.settings), sort_keys=True, default=str).encode())
        h.update(f"{self.backbone.model_id}@{self.backbone.revision}".encode())
        for img in self.images:
            h.update(img.tobytes())
        return h.hexdigest()

    @property
    def state_path(self) -> Path:
        return self.out_dir / "checkpoints" / "state.pt"

    def save_state(self) -> None:
        state = {"fingerprint": self.fingerprint(), "step": self.step,
                 "rows": {slot: layer.rows.detach().cpu() for slot, layer in self.layers.items()},
                 "optimizer": self.optimizer.state_dict()}
        with atomic_path(self.state_path) as tmp:
            torch.save(state, tmp)

    def try_resume(self) -> bool:
        if not self.state_path.is_file():
            return False
        state = torch.load(self.state_path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != self.fingerprint():
            self.state_path.unlink()  # from other settings or images: start over rather than mix runs
            return False
        with torch.no_grad():
            for slot, rows in state["rows"].items():
                self.layers[slot].rows.copy_(rows.to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        return True


def _rewrite_log(path: Path, upto_step: int) -> None:
    """Keep only log lines of steps a resumed run does not redo."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= upto_step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def train(backbone: Backbone, images: list[Image.Image], settings: TrainSettings, out_dir: str | Path, *,
          progress: bool = True, resume: bool = True) -> dict:
    """Learn the placeholder's rows; write embeddings, checkpoints, train_log.jsonl and run.json to out_dir."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    trainer = Trainer(backbone, images, settings, out_dir)
    log_path = out_dir / "train_log.jsonl"
    resumed_from = trainer.step if resume and trainer.try_resume() else 0
    if resumed_from:
        _rewrite_log(log_path, resumed_from)
    elif log_path.exists():
        log_path.unlink()
    with _stop_on_signals() as stop, open(log_path, "a") as log, \
            tqdm(total=settings.steps, initial=trainer.step, disable=not progress, desc=f"{settings.method}") as bar:
        while trainer.step < settings.steps:
            record = trainer.train_step()
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            if trainer.step % settings.save_every == 0 or trainer.step == settings.steps:
                save_diffusers(out_dir, settings.placeholder, trainer.vectors(), trainer.provenance(), trainer.step)
                trainer.save_state()
            if stop["signal"] is not None and trainer.step < settings.steps:
                trainer.save_state()
                raise TrainingInterrupted(f"stopped by signal {stop['signal']} after step {trainer.step}; "
                                          f"state saved to {trainer.state_path}, rerun to resume")
    return finish(trainer, out_dir, resumed_from, time.time() - started)


def finish(trainer: Trainer, out_dir: Path, resumed_from: int, seconds: float) -> dict:
    s = trainer.settings
    vectors, meta = trainer.vectors(), trainer.provenance()
    if not all(torch.isfinite(v).all() for v in vectors.values()):
        raise DtiError(f"training diverged: non-finite embedding values; nothing final written to {out_dir}")
    name = s.name or s.placeholder.strip("<>") or "embedding"
    single = save_single_file(out_dir / f"{name}.safetensors", vectors, meta)
    final = save_diffusers(out_dir, s.placeholder, vectors, meta)
    norms = [{"encoder": slot, "vector": i, "norm": float(n), "vocab_norm_mean": trainer.vocab_stats[slot]["mean"],
              "vocab_norm_std": trainer.vocab_stats[slot]["std"]}
             for slot, rows in vectors.items() for i, n in enumerate(rows.norm(dim=-1).tolist())]
    run = {"settings": asdict(s), "hyper_parameters": trainer.hp, "method": s.method,
           "model": trainer.backbone.model_id, "revision": trainer.backbone.revision,
           "family": trainer.backbone.family, "tokens": {k: v.tokens for k, v in trainer.placeholders.items()},
           "magnitudes": trainer.magnitudes, "vocab_norms": trainer.vocab_stats, "norms": norms,
           "steps": trainer.step, "resumed_from": resumed_from, "seconds": round(seconds, 3),
           "files": [p.name for p in final] + [single.name], "code_version": __version__,
           "final": trainer.vector_stats()}
    write_json(out_dir / "run.json", run)
    return run

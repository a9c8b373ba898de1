"""What every backbone offers the training and sampling code, and how one is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dti.errors import DtiError
from dti.model_files import PIPELINE_FAMILIES as _PIPELINE_CLASSES
from dti.model_files import check_declared_family
from dti.model_files import looks_local as _looks_local

_FAMILIES: dict[str, type[Backbone]] = {}


def backbone_class(family: str) -> type[Backbone]:
    from dti.backbones import sd, sdxl  # noqa: F401  (registers the families)

    if family not in _FAMILIES:
        raise DtiError(f"unknown backbone family {family!r}; known: {sorted(_FAMILIES)}")
    return _FAMILIES[family]


def register_family(name: str):
    def wrap(cls):
        _FAMILIES[name] = cls
        cls.family = name
        return cls

    return wrap


@dataclass
class TextEncoderSlot:
    """One tokenizer + text encoder pair; `name` is the key used in exported files (clip_l, clip_g)."""

    name: str
    tokenizer: object
    encoder: torch.nn.Module
    component: str  # attribute name on the diffusers pipeline: text_encoder / text_encoder_2


class Backbone:
    """A frozen diffusion model: its text encoders, the denoising loss and the sampling pipeline."""

    family: str = ""
    pipeline_class: str = ""  # the diffusers pipeline that samples with these components
    pipeline_extras: dict = {}

    def __init__(self, components: dict, model_id: str, revision: str | None = None):
        """Wrap loaded components (unet, vae, scheduler, tokenizer(s), text_encoder(s)); freezes them."""
        from diffusers import DDPMScheduler

        for module in components.values():
            if isinstance(module, torch.nn.Module):
                module.eval().requires_grad_(False)
        self.components = components
        self.model_id = model_id
        self.revision = revision
        self.unet = components["unet"]
        self.vae = components["vae"]
        # Training noise follows the model's own beta schedule with the DDPM forward process.
        self.noise_scheduler = DDPMScheduler.from_config(components["scheduler"].config)
        self.slots: list[TextEncoderSlot] = self.make_slots()
        self._pipe = None

    @classmethod
    def from_pipeline(cls, pipe, model_id: str) -> Backbone:
        return cls({k: v for k, v in pipe.components.items() if v is not None}, model_id)

    @property
    def pipe(self):
        """The sampling pipeline over the same component objects (built on first use: training never
        needs it, and importing the pipeline classes costs a CPU job over a second)."""
        if self._pipe is None:
            import diffusers

            cls = getattr(diffusers, self.pipeline_class)
            self._pipe = cls(**self.components, **self.pipeline_extras)
        return self._pipe

    def make_slots(self) -> list[TextEncoderSlot]:
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor, chunk: int = 4) -> torch.Tensor:
        """Denoised latents -> images in [-1, 1], unscaled as the diffusers pipelines do, decoded in the
        VAE's own precision a few images at a time (a 1024 px decode holds gigabytes of activations)."""
        config = self.vae.config
        latents = latents.to(self.vae.dtype)
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, -1, 1, 1)
            mean = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(shape)
            std = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(shape)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        return torch.cat([self.vae.decode(part).sample for part in latents.split(chunk)])

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def tokenize(self, slot: TextEncoderSlot, prompts: list[str]) -> torch.Tensor:
        tok = slot.tokenizer(prompts, padding="max_length", max_length=slot.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        return tok.input_ids.to(self.device)

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Conditioning tensors for the UNet (family-specific)."""
        raise NotImplementedError

    def unet_kwargs(self, cond: dict[str, torch.Tensor], time_ids: torch.Tensor) -> dict:
        return {}

    def denoising_loss(self, latents: torch.Tensor, cond: dict[str, torch.Tensor], noise: torch.Tensor,
                       timesteps: torch.Tensor, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Epsilon-prediction MSE (mean over all elements, computed in fp32)."""
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        dtype = self.unet.dtype
        pred = self.unet(noisy.to(dtype), timesteps, encoder_hidden_states=cond["hidden"].to(dtype),
                         **self.unet_kwargs(cond, time_ids)).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return F.mse_loss(pred.float(), target.float(), reduction="mean")


def detect_family(model: str, revision: str | None = None) -> str:
    """Read the family from the model's model_index.json (local folder or the hub cache)."""
    from diffusers import DiffusionPipeline

    check_model_exists(model)
    try:
        config = DiffusionPipeline.load_config(model, revision=revision)
    except Exception as exc:  # hub or file errors: say which model and how to fix it
        raise DtiError(f"cannot read model_index.json of model {model!r} (revision {revision}): {exc}. "
                       "If this is a hub id on an offline node, fetch it first where there is internet (the workflow's "
                       "fetch_model rule, or `hf download MODEL --revision REV`).") from exc
    name = config.get("_class_name", "")
    if name not in _PIPELINE_CLASSES:
        raise DtiError(f"model {model!r} is a {name or 'unknown'} pipeline; supported: {sorted(_PIPELINE_CLASSES)}")
    return _PIPELINE_CLASSES[name]


def check_model_exists(model: str) -> None:
    if _looks_local(model) and not Path(model).expanduser().is_dir():
        raise DtiError(f"model path does not exist: {model}")


def load_backbone(model: str, *, family: str | None = None, revision: str | None = None,
                  dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Backbone:
    """Load a frozen backbone by hub id or local folder, with every weight checked to be present."""
    check_model_exists(model)
    if family is not None:
        check_declared_family(model, family, revision)
    cls = backbone_class(family or detect_family(model, revision))
    model = str(Path(model).expanduser()) if _looks_local(model) else model
    return cls.load(model, revision=revision, dtype=dtype, device=torch.device(device))


def load_component(cls, model: str, subfolder: str, revision: str | None, dtype: torch.dtype):
    """`from_pretrained` one component, refusing weights that are missing (silently random otherwise)."""
    try:
        obj, info = cls.from_pretrained(model, subfolder=subfolder, revision=revision, torch_dtype=dtype,
                                        output_loading_info=True)
    except OSError as exc:
        raise DtiError(f"cannot load {subfolder} of model {model!r} (revision {revision}): {exc}") from exc
    missing = list(info.get("missing_keys", []))
    if missing:
        raise DtiError(f"{subfolder} of model {model!r} lacks weights {missing[:5]} (and {len(missing)} in all); "
                       "the folder was saved by an incompatible library version or is incomplete")
    return obj.eval().requires_grad_(False)

"""What every backbone offers the training and sampling code, and how one is loaded.

A family is a `Backbone` subclass in its own module (its entry in dti.families, its class named in
dti.backbones.catalog). It implements
- `load` (a model folder or hub id), `tiny_pipeline` (small random weights, offline) and
  `fullsize_pipeline` (the published architecture with random weights, for GPU benchmarks);
- `encode_prompts` (the conditioning, exactly as its diffusers pipeline computes it for a prompt) and
  `predict` (one call of its denoiser); its text encoders are the registry entry's slots;
- where its VAE is not an SD-style AutoencoderKL, the latent hooks below (`latent_factor`,
  `latent_shape`, `encode_pixels`, `to_model_latents`, `decode_latents`);
and sets the class attributes that differ from the defaults here: `objective_class`, `denoiser_name`,
`max_text_length`, `placeholder_joiner`, `sampling_kwargs`, `speedups_supported`, `compile_blocks`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from dti.backbones.objectives import NoisePrediction
from dti.errors import DtiError
from dti.families import FAMILIES, family_names, pipeline_families
from dti.model_files import local_path
from dti.speedups import Speedups, apply_to_modules

SWITCHES = ("compile", "channels_last", "fuse_qkv")  # the module-level speed switches of dti.speedups


@dataclass
class TextEncoderSlot:
    """One tokenizer + text encoder pair; `name` is the key used in exported files (clip_l, clip_g, ...)."""

    name: str
    tokenizer: object
    encoder: torch.nn.Module
    component: str  # attribute name on the diffusers pipeline: text_encoder / text_encoder_2
    tokenizer_component: str = "tokenizer"
    max_length: int | None = None  # tokens per prompt (None: the tokenizer's model_max_length, CLIP's 77)

    @property
    def text_length(self) -> int:
        return self.max_length or self.tokenizer.model_max_length


class Backbone:
    """A frozen diffusion model: its text encoders, the denoising loss and the sampling pipeline."""

    family: str = ""  # each family's class names its entry of dti.families
    pipeline_class: str = ""  # the diffusers pipeline that samples with these components (from dti.families)
    pipeline_extras: dict = {}
    denoiser_name = "unet"  # the component that predicts the noise (or velocity)
    objective_class = NoisePrediction  # dti.backbones.objectives
    # How the k tokens of a k-vector placeholder are written in a prompt. SD/SDXL files load with diffusers'
    # loader, which writes them space-separated itself; the DTI authors join them without a space elsewhere.
    placeholder_joiner = " "
    uses_diffusers_loader = True  # from dti.families' textual_inversion_clients (else dti's own loader)
    max_text_length: int | None = None  # tokens per prompt (None: each tokenizer's model_max_length)
    sampling_kwargs: dict = {}  # extra arguments of the pipeline call
    speedups_supported = frozenset(SWITCHES)
    compile_blocks: tuple[str, ...] | None = None  # None: the denoiser's own `_repeated_blocks`

    def __init_subclass__(cls, **kwargs):
        """A family's class names its family (`family = "sd"`) and takes its pipeline class and loader from
        that family's entry in dti.families."""
        super().__init_subclass__(**kwargs)
        family = FAMILIES.get(cls.__dict__.get("family"))
        if family is not None:
            cls.pipeline_class = family.pipeline
            cls.uses_diffusers_loader = family.textual_inversion_clients

    def __init__(self, components: dict, model_id: str, revision: str | None = None):
        """Wrap loaded components (denoiser, vae, scheduler, tokenizer(s), text encoder(s)); freezes them."""
        for module in components.values():
            if isinstance(module, torch.nn.Module):
                module.eval().requires_grad_(False)
        self.components = components
        self.model_id = model_id
        self.revision = revision
        self.denoiser = components[self.denoiser_name]
        self.vae = components["vae"]
        self.objective = self.objective_class(components["scheduler"].config)
        self.slots: list[TextEncoderSlot] = self.make_slots()
        for slot in self.slots:
            _trim_to_tokenizer(slot)
        self._pipe = None

    @classmethod
    def from_pipeline(cls, pipe, model_id: str) -> Backbone:
        """A backbone over a pipeline's components; it samples with that very pipeline."""
        backbone = cls({k: v for k, v in pipe.components.items() if v is not None}, model_id)
        backbone._pipe = pipe
        return backbone

    # --- loading and building (classmethods each family implements) -------------------------------
    @classmethod
    def load(cls, model: str, *, revision: str | None, dtype: torch.dtype, device: torch.device) -> Backbone:
        raise NotImplementedError

    @classmethod
    def tiny_pipeline(cls):
        """A small random pipeline of the real classes (called under a fixed seed by dti.tiny)."""
        raise NotImplementedError

    @classmethod
    def fullsize_pipeline(cls, device: str | torch.device):
        """The published architecture with random weights, its modules allocated on `device` (dti.fullsize
        seeds it and sets the precision)."""
        raise NotImplementedError

    @property
    def pipe(self):
        """The sampling pipeline over the same component objects (built on first use: training never
        needs it, and importing the pipeline classes costs a CPU job over a second)."""
        if self._pipe is None:
            import diffusers

            cls = getattr(diffusers, self.pipeline_class)
            self._pipe = cls(**self.components, **self.pipeline_extras)
        return self._pipe

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    # --- text -------------------------------------------------------------------------------------
    def make_slots(self) -> list[TextEncoderSlot]:
        """The family's text encoders, as its registry entry lists them."""
        c = self.components
        return [TextEncoderSlot(s.name, c[s.tokenizer], c[s.encoder], s.encoder, s.tokenizer, self.max_text_length)
                for s in FAMILIES[self.family].slots]

    def check_placeholder(self, placeholder: str) -> None:
        """A DtiError if this family's prompt handling would not keep `placeholder` intact."""

    def tokenize(self, slot: TextEncoderSlot, prompts: list[str]) -> torch.Tensor:
        return self.tokenize_with_mask(slot, prompts)[0]

    def tokenize_with_mask(self, slot: TextEncoderSlot, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, padded to the slot's text length."""
        tok = slot.tokenizer(prompts, padding="max_length", max_length=slot.text_length,
                             truncation=True, add_special_tokens=True, return_tensors="pt")
        return tok.input_ids.to(self.device), tok.attention_mask.to(self.device)

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Conditioning tensors for the denoiser (family-specific)."""
        raise NotImplementedError

    def token_features(self, cond: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The per-token text features the denoiser reads, one [batch, tokens, width] tensor per text encoder."""
        return [cond["hidden"]]

    def prompt_text(self, tokens: list[str]) -> str:
        """How the placeholder's k tokens are written in a prompt."""
        return self.placeholder_joiner.join(tokens)

    def install_learned_rows(self, placeholder: str, vectors: dict[str, torch.Tensor]) -> str:
        """Put learned rows into the sampling pipeline's tokenizers and text encoders; returns what to write
        in a prompt. SD/SDXL use diffusers' own `load_textual_inversion` (the path users take, which
        expands the placeholder to its k tokens itself); other families dti's placeholder rows."""
        from dti.export import load_into_pipeline
        from dti.tokens import install_rows

        if self.uses_diffusers_loader:
            load_into_pipeline(self.pipe, placeholder, vectors, self.slots)
            return placeholder
        self.check_placeholder(placeholder)
        tokens = {install_rows(slot.tokenizer, slot.encoder, placeholder, vectors[slot.name]) for slot in self.slots}
        if len(tokens) != 1:
            raise DtiError(f"the text encoders split placeholder {placeholder!r} differently: {sorted(tokens)}")
        return self.prompt_text(list(tokens.pop()))

    # --- latents: SD-style AutoencoderKL by default -----------------------------------------------
    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be multiples of this (the latent cell times the denoiser's patch)."""
        return self.latent_factor

    def check_resolution(self, resolution: int, what: str = "resolution") -> None:
        step = self.pixel_multiple
        if resolution < step or resolution % step:
            raise DtiError(f"{what} {resolution} must be a positive multiple of {step} for this {self.family} "
                           "model (its pixels per latent cell times its patch size)")

    def latent_shape(self, cells: int) -> tuple[int, ...]:
        """The shape of one training latent of cells x cells."""
        return (self.vae.config.latent_channels, cells, cells)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[3, H, W] in [-1, 1] -> mean and std of its latent distribution (fp32, unscaled)."""
        dist = self.vae.encode(pixels.unsqueeze(0).to(self.vae.device, self.vae.dtype)).latent_dist
        return dist.mean[0].float(), dist.std[0].float()

    def to_model_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """A VAE latent -> what the denoiser is trained on."""
        return latents * float(self.vae.config.scaling_factor)

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

    # --- training ---------------------------------------------------------------------------------
    def sample_timestep(self, gen: torch.Generator) -> int:
        """One draw of the training timestep (an index into the objective's schedule)."""
        return self.objective.sample_step(gen)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor],
                time_ids: torch.Tensor | None) -> torch.Tensor:
        """One denoiser call on a batch (family-specific)."""
        raise NotImplementedError

    def denoising_loss(self, latents: torch.Tensor, cond: dict[str, torch.Tensor], noise: torch.Tensor,
                       timesteps: torch.Tensor, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        """MSE between the prediction and the objective's target (mean over all elements, in fp32)."""
        noisy, model_timesteps, target = self.objective.prepare(latents, noise, timesteps)
        pred = self.predict(noisy, model_timesteps, cond, time_ids)
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    # --- sampling ---------------------------------------------------------------------------------
    def render_latents(self, prompts: list[str], generators: list[torch.Generator], *, steps: int,
                       guidance_scale: float, height: int, width: int) -> torch.Tensor:
        """The pipeline's denoising loop, stopped at the latents."""
        out = self.pipe(prompt=prompts, generator=generators, num_inference_steps=steps,
                        guidance_scale=guidance_scale, height=height, width=width, output_type="latent",
                        **self.sampling_kwargs)
        return out.images

    # --- speed switches ---------------------------------------------------------------------------
    def resolve_speedups(self, speedups: Speedups, device: torch.device | str | None = None) -> Speedups:
        """Every switch left at None set to the device's default, or off where this family cannot use it;
        one asked for explicitly that the family cannot use is an error, not silently dropped."""
        for name in SWITCHES:
            if getattr(speedups, name) and name not in self.speedups_supported:
                raise DtiError(f"speedups.{name}: not available for {self.family} models (they support "
                               f"{sorted(self.speedups_supported) or 'none'}); set it to false or null")
        from dti.adapters import attached_kind

        if attached_kind(self.denoiser) is not None:
            # diffusers fuses q, k, v from the weights it finds and then calls the fused layer, bypassing
            # adapters on to_q/to_k/to_v (dti.adapters): most of a LoRA or OFT would silently do nothing, and
            # a fully fine-tuned denoiser's q, k, v would stop training.
            if speedups.fuse_qkv:
                raise DtiError("speedups.fuse_qkv: the fused projections bypass the adapter on the "
                               f"{self.denoiser_name}'s to_q/to_k/to_v; set it to false or null")
            speedups = replace(speedups, fuse_qkv=False)
        resolved = speedups.resolved(device if device is not None else self.device)
        return replace(resolved, **{n: False for n in SWITCHES if n not in self.speedups_supported})

    def apply_speedups(self, speedups: Speedups, *, vae: bool) -> list[str]:
        """Apply resolved switches to the denoiser (and the VAE when `vae`); see dti.speedups."""
        blocks = self.compile_blocks
        if blocks is None:
            blocks = tuple(getattr(self.denoiser, "_repeated_blocks", ()))
        return apply_to_modules(self.denoiser, self.vae if vae else None, speedups, blocks=blocks)


def _trim_to_tokenizer(slot: TextEncoderSlot) -> None:
    """Drop token-table rows past the tokenizer's last id: no prompt can look them up (UMT5 pads its 256300
    ids to 256384 rows), so they must not count in the vocabulary's norm statistics, and placeholder ids,
    which follow the tokenizer's, must not fall inside the table."""
    table = slot.encoder.get_input_embeddings()
    n = len(slot.tokenizer)
    if table.num_embeddings <= n:
        return
    if type(table) is not torch.nn.Embedding:
        raise DtiError(f"the {slot.name} token table has {table.num_embeddings} rows for {n} token ids and is a "
                       f"{type(table).__name__}, which dti cannot trim")
    trimmed = torch.nn.Embedding.from_pretrained(table.weight.detach()[:n], freeze=True,
                                                 padding_idx=table.padding_idx)
    slot.encoder.set_input_embeddings(trimmed)


def to_device(parts: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.nn.Module) else v for k, v in parts.items()}


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
    known = pipeline_families()
    if name not in known:
        supported = ", ".join(f"{cls} ({family})" for cls, family in known.items())
        raise DtiError(f"model {model!r} is a {name or 'unknown'} pipeline; supported: {supported}")
    return known[name]


def check_model_exists(model: str) -> None:
    path = local_path(model)
    if path is not None and not path.is_dir():
        raise DtiError(f"model path does not exist: {model}")




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


def load_tokenizer(cls, model: str, subfolder: str, revision: str | None):
    try:
        return cls.from_pretrained(model, subfolder=subfolder, revision=revision)
    except (OSError, ValueError) as exc:
        raise DtiError(f"cannot load {subfolder} of model {model!r} (revision {revision}): {exc}") from exc


def load_scheduler(model: str, revision: str | None, class_name: str | None = None):
    """The scheduler of the model's scheduler/ folder, as `class_name` (None: the class its config names)."""
    import diffusers

    try:
        config = diffusers.DDPMScheduler.load_config(model, subfolder="scheduler", revision=revision)
    except OSError as exc:
        raise DtiError(f"cannot load the scheduler of model {model!r} (revision {revision}): {exc}") from exc
    name = class_name or config.get("_class_name", "")
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise DtiError(f"the scheduler of model {model!r} is a {name!r}, which this diffusers does not have")
    return cls.from_config(config)


__all__ = ["Backbone", "TextEncoderSlot", "check_model_exists", "detect_family", "family_names",
           "load_component", "load_scheduler", "load_tokenizer", "to_device"]

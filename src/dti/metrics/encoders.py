"""Metric backbones: turn images (and texts) into unit-length feature vectors.

Random-weight models are built under a fixed torch seed inside `fork_rng`, so a random-init run gives
the same scores in every process and leaves the caller's RNG untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import open_clip
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from dti.errors import DtiError
from dti.metrics.spec import MetricSpec

RANDOM_INIT_SEED = 0


@contextlib.contextmanager
def _seeded_init() -> Iterator[None]:
    # Models are created on the CPU, so only the CPU generator needs forking.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        yield


def _autocast(device: torch.device):
    # bf16 matmuls on GPU are fast and plenty precise for cosine scores; CPU stays fp32.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _load_error(spec: MetricSpec, err: Exception) -> DtiError:
    hint = ""
    if spec.weights is None and spec.source != "random":
        hint = " (hub weights need network access; for offline runs set `weights:` to a local file)"
    return DtiError(f"metrics.{spec.key}: could not build {spec.metric_model}: {err}{hint}")


class TimmImageEncoder:
    """DINO-family encoder: the CLS token after the final norm (timm global_pool='token')."""

    def __init__(self, spec: MetricSpec, device: str | torch.device = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        kwargs: dict = {"num_classes": 0, "global_pool": "token"}
        native = timm.get_pretrained_cfg(spec.model).input_size[-1]
        if spec.image_size != native:
            # ViTs rebuild (and, for loaded weights, resample) position embeddings for this size.
            kwargs["img_size"] = spec.image_size
        if spec.weights is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": str(spec.weights)}
        try:
            with _seeded_init():
                pretrained = bool(spec.pretrained) or spec.weights is not None
                model = timm.create_model(spec.model, pretrained=pretrained, **kwargs)
        except Exception as err:  # hub/network, file format or key mismatches all surface here
            raise _load_error(spec, err) from err
        self.model = model.eval().to(self.device)
        self.metric_model = spec.metric_model
        cfg = model.pretrained_cfg
        self.preprocess = transforms.Compose(
            [
                transforms.Resize(spec.image_size, interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.CenterCrop(spec.image_size),
                transforms.ToTensor(),
                transforms.Normalize(mean=cfg["mean"], std=cfg["std"]),
            ]
        )

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """Unit-length CLS features, float32 on the CPU, one row per image."""
        pixels = torch.stack([self.preprocess(_rgb(im)) for im in images]).to(self.device)
        with _autocast(self.device):
            features = self.model(pixels)
        return F.normalize(features.float(), dim=-1).cpu()


def _open_clip_name(spec: MetricSpec) -> str:
    """The name open_clip builds from: a registry name, or a model folder (the tiny one) by its schema."""
    return f"local-dir:{spec.folder}" if spec.folder is not None else spec.model


def _open_clip_tokenizer(spec: MetricSpec):
    if spec.tokenizer is not None:
        # Mirror open_clip.get_tokenizer, but read the Hugging Face tokenizer from a local folder.
        text_cfg = open_clip.get_model_config(spec.model).get("text_cfg", {})
        try:
            return open_clip.tokenizer.HFTokenizer(
                str(spec.tokenizer),
                context_length=text_cfg.get("context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH),
                tokenizer_mode=text_cfg.get("tokenizer_mode"),
                **text_cfg.get("tokenizer_kwargs", {}),
            )
        except Exception as err:
            raise DtiError(
                f"metrics.{spec.key}.tokenizer: cannot load a tokenizer from {spec.tokenizer}: {err}"
            ) from err
    try:
        return open_clip.get_tokenizer(_open_clip_name(spec))
    except Exception as err:  # SigLIP tokenizers come from the hub; CLIP's BPE ships with open_clip
        raise DtiError(
            f"metrics.{spec.key}: the tokenizer for {spec.model!r} is not available offline ({err}); "
            f"set metrics.{spec.key}.tokenizer to a local Hugging Face tokenizer folder"
        ) from err


class OpenClipEncoder:
    """CLIP / SigLIP image and text towers with unit-length outputs."""

    def __init__(self, spec: MetricSpec, device: str | torch.device = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        self.tokenizer = _open_clip_tokenizer(spec)  # first: an unavailable tokenizer fails fast
        kwargs: dict = {}
        if spec.weights is not None and spec.pretrained is not None:
            # A local copy of tagged weights: take that tag's preprocessing and activation,
            # which open_clip would otherwise only apply when downloading by tag.
            cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
            kwargs.update(
                image_mean=cfg.get("mean"),
                image_std=cfg.get("std"),
                image_interpolation=cfg.get("interpolation"),
                image_resize_mode=cfg.get("resize_mode"),
                force_quick_gelu=bool(cfg.get("quick_gelu", False)),
            )
        pretrained = str(spec.weights) if spec.weights is not None else spec.pretrained
        try:
            with _seeded_init():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    _open_clip_name(spec), pretrained=pretrained, **kwargs
                )
        except Exception as err:
            raise _load_error(spec, err) from err
        self.model = model.eval().to(self.device)
        self.metric_model = spec.metric_model
        self.preprocess = preprocess

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(_rgb(im)) for im in images]).to(self.device)
        with _autocast(self.device):
            features = self.model.encode_image(pixels)
        return F.normalize(features.float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        with _autocast(self.device):
            features = self.model.encode_text(tokens)
        return F.normalize(features.float(), dim=-1).cpu()


def build_encoder(spec: MetricSpec, device: str | torch.device = "cpu"):
    if spec.backend == "timm":
        return TimmImageEncoder(spec, device)
    if spec.backend == "transformers":
        from dti.metrics.hf import build_transformers_encoder

        return build_transformers_encoder(spec, device)
    return OpenClipEncoder(spec, device)

"""Metric models loaded with transformers, computed as the DTI authors' evaluator computes them.

- DINOv2 (`facebook/dinov2-base`): the CLS token of the last hidden state, which Dinov2Model takes
  after its final layer norm.
- SigLIP (`google/siglip-base-patch16-512`): image and text embeddings (the model's pooled heads); a
  text is the class-word prompt with "." appended, padded to 64 tokens, as the model was trained;
  dti.metrics.scoring.sigmoid_score turns a cosine into SigLIP's match probability.

Images go through `ProcessorTransform`: the model's own image-processor settings (read from its
`preprocessor_config.json`), computed the way transformers' default (torchvision) image processors
compute them, so the pixel values equal the processor's; tests check that on a real photo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvF  # what transformers' processors call

from dti.errors import DtiError
from dti.metrics.spec import MetricSpec

# PIL resample codes as the processors store them -> torchvision's interpolation.
_RESAMPLE = {2: InterpolationMode.BILINEAR, 3: InterpolationMode.BICUBIC}
_RESAMPLE_NAMES = {2: "bilinear", 3: "bicubic"}
_NAMED_STATS = {(0.485, 0.456, 0.406, 0.229, 0.224, 0.225): "norm-imagenet",
                (0.5, 0.5, 0.5, 0.5, 0.5, 0.5): "norm-0.5"}

SIGLIP_MAX_LENGTH = 64  # the authors pad (and so truncate) every text to SigLIP's training length
SIGLIP_TEXT_SUFFIX = "."  # the authors end each evaluation prompt with a full stop


@dataclass(frozen=True)
class ProcessorTransform:
    """An image processor's resize / centre crop / rescale / normalize, as its settings say.

    resize: ("shortest_edge", n) or ("exact", height, width); crop: (height, width) or None.
    """

    resize: tuple
    resample: int
    crop: tuple[int, int] | None
    rescale_factor: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def from_processor(cls, processor, where: str) -> ProcessorTransform:
        """Settings of a loaded transformers image processor (its attributes, defaults applied)."""
        size = dict(processor.size or {}) if getattr(processor, "do_resize", False) else {}
        if size.get("shortest_edge") and not size.get("longest_edge"):
            resize: tuple = ("shortest_edge", int(size["shortest_edge"]))
        elif size.get("height") and size.get("width"):
            resize = ("exact", int(size["height"]), int(size["width"]))
        else:
            raise DtiError(f"{where}: unsupported image processor size {size!r} (need shortest_edge or height/width)")
        resample = int(processor.resample)
        if resample not in _RESAMPLE:
            raise DtiError(f"{where}: unsupported resample {resample} (supported: {_RESAMPLE_NAMES})")
        crop = None
        if getattr(processor, "do_center_crop", False):
            crop = (int(processor.crop_size["height"]), int(processor.crop_size["width"]))
        rescale = float(processor.rescale_factor) if processor.do_rescale else None
        mean = tuple(float(v) for v in processor.image_mean) if processor.do_normalize else None
        std = tuple(float(v) for v in processor.image_std) if processor.do_normalize else None
        return cls(resize, resample, crop, rescale, mean, std)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        if self.resize[0] == "exact":
            return self.resize[1], self.resize[2]
        short_target = self.resize[1]
        # As torchvision and transformers: the long side is truncated, not rounded.
        if width <= height:
            return int(short_target * height / width), short_target
        return short_target, int(short_target * width / height)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """float32 CHW pixel values of one image."""
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
        pixels = tvF.resize(pixels, list(self.resized_size(*pixels.shape[-2:])),
                            interpolation=_RESAMPLE[self.resample], antialias=True)
        if self.crop is not None:
            height, width = pixels.shape[-2:]
            if self.crop[0] > height or self.crop[1] > width:
                raise DtiError(f"centre crop {self.crop} is larger than the resized image {(height, width)}")
            top, left = int((height - self.crop[0]) / 2.0), int((width - self.crop[1]) / 2.0)
            pixels = pixels[:, top : top + self.crop[0], left : left + self.crop[1]]
        pixels = pixels.float()
        if self.mean is not None:
            # Rescale folded into the statistics, as the processors do it (same float rounding).
            factor = self.rescale_factor or 1.0
            mean = torch.tensor(self.mean) * (1.0 / factor)
            std = torch.tensor(self.std) * (1.0 / factor)
            return tvF.normalize(pixels, mean.tolist(), std.tolist())
        return pixels * self.rescale_factor if self.rescale_factor is not None else pixels

    def describe(self) -> str:
        """Short label, e.g. "short256-bicubic-crop224-norm-imagenet"."""
        if self.resize[0] == "shortest_edge":
            parts = [f"short{self.resize[1]}"]
        else:
            parts = [f"{self.resize[1]}x{self.resize[2]}"]
        parts.append(_RESAMPLE_NAMES[self.resample])
        if self.crop is not None:
            parts.append(f"crop{self.crop[0]}" if self.crop[0] == self.crop[1] else f"crop{self.crop[0]}x{self.crop[1]}")
        if self.mean is not None:
            key = tuple(round(v, 3) for v in (*self.mean, *self.std))
            parts.append(_NAMED_STATS.get(key, "norm-mean" + ",".join(f"{v:g}" for v in self.mean)
                                          + "-std" + ",".join(f"{v:g}" for v in self.std)))
        return "-".join(parts)


def _source(spec: MetricSpec) -> tuple[str, dict]:
    """What from_pretrained loads: a local folder, or a hub id (at its revision) from the cache."""
    if spec.folder is not None:
        return str(spec.folder), {}
    return spec.model, {"revision": spec.revision} if spec.revision else {}


def _load(spec: MetricSpec, what: str, loader):
    source, kwargs = _source(spec)
    try:
        return loader(source, **kwargs)
    except Exception as err:  # a missing cache entry offline, a bad folder, a wrong class
        hint = "" if spec.folder is not None else " (fetch_metrics downloads it on the login node)"
        raise DtiError(f"metrics.{spec.key}: cannot load the {what} of {source}: {err}{hint}") from err


class _TransformersEncoder:
    model_class: str

    def __init__(self, spec: MetricSpec, device: str | torch.device = "cpu"):
        from transformers import AutoImageProcessor, AutoModel

        self.spec = spec
        self.device = torch.device(device)
        model = _load(spec, "model", lambda s, **kw: AutoModel.from_pretrained(s, dtype=torch.float32, **kw))
        if type(model).__name__ != self.model_class:
            raise DtiError(f"metrics.{spec.key}.model: {spec.model} is a {type(model).__name__}, "
                           f"expected a {self.model_class}")
        self.model = model.eval().to(self.device)
        processor = _load(spec, "image processor", AutoImageProcessor.from_pretrained)
        self.transform = ProcessorTransform.from_processor(processor, f"metrics.{spec.key} ({spec.model})")

    @property
    def metric_model(self) -> str:
        return f"{self.spec.metric_model}/{self.transform.describe()}"

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(im) for im in images]).to(self.device)


class Dinov2Encoder(_TransformersEncoder):
    """DINOv2 features: the CLS token after the final layer norm, unit length."""

    model_class = "Dinov2Model"

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        hidden = self.model(pixel_values=self._pixels(images)).last_hidden_state
        return F.normalize(hidden[:, 0].float(), dim=-1).cpu()


class SiglipEncoder(_TransformersEncoder):
    """SigLIP image and text embeddings, unit length."""

    model_class = "SiglipModel"

    def __init__(self, spec: MetricSpec, device: str | torch.device = "cpu"):
        from transformers import AutoTokenizer

        super().__init__(spec, device)
        self.tokenizer = _load(spec, "tokenizer", AutoTokenizer.from_pretrained)

    @property
    def metric_model(self) -> str:
        return f"{super().metric_model}/text{SIGLIP_MAX_LENGTH}"

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        features = self.model.get_image_features(pixel_values=self._pixels(images)).pooler_output
        return F.normalize(features.float(), dim=-1).cpu()

    def text_inputs(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The tokenizer's model inputs for the texts as scored: "." appended, padded (and truncated) to 64
        tokens. They go to the model as the tokenizer returns them (ids, and the attention mask where it
        gives one), as a processor-then-model call does."""
        encoded = self.tokenizer([t + SIGLIP_TEXT_SUFFIX for t in texts], padding="max_length",
                                 max_length=SIGLIP_MAX_LENGTH, truncation=True, return_tensors="pt")
        return {k: encoded[k] for k in ("input_ids", "attention_mask") if k in encoded}

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        inputs = {k: v.to(self.device) for k, v in self.text_inputs(texts).items()}
        features = self.model.get_text_features(**inputs).pooler_output
        return F.normalize(features.float(), dim=-1).cpu()


def build_transformers_encoder(spec: MetricSpec, device: str | torch.device = "cpu"):
    if spec.key == "dinov2":
        return Dinov2Encoder(spec, device)
    if spec.key == "siglip":
        return SiglipEncoder(spec, device)
    raise DtiError(f"metrics.{spec.key}.backend: transformers computes dinov2 and siglip only")


def fetch_transformers_model(spec: MetricSpec) -> str:
    """Download everything the model needs (weights, configs, processor, tokenizer) into the hub cache;
    return the snapshot folder. Login node only."""
    from huggingface_hub import snapshot_download

    # Configs, processor and tokenizer files (spiece.model for SigLIP) and safetensors weights; the
    # older pickled weights only where a repository has nothing else.
    patterns = ["*.json", "*.model", "*.txt", "*.safetensors"]
    try:
        folder = snapshot_download(spec.model, revision=spec.revision, allow_patterns=patterns)
        if not any(Path(folder).glob("*.safetensors")):
            folder = snapshot_download(spec.model, revision=spec.revision, allow_patterns=[*patterns, "*.bin"])
    except Exception as err:
        raise DtiError(f"metrics.{spec.key}: cannot fetch {spec.model} (revision {spec.revision}): {err}") from err
    return folder



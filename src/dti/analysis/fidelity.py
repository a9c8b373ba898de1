"""Subject and text fidelity of arbitrary image sets, for the analyses (interpolation, magnitude sweep).

The benchmark's own scoring (dti.metrics.score_samples) scores one subject's manifest; the analyses ask
other questions (similarity to two subjects at once, many subjects in one job), so they use the same
metric models and the same definitions through this small class: subject fidelity is the mean cosine
of an image's features with each reference photo's, with DINOv2 if the config scores with it, else
DINO; text fidelity is CLIP-T (cosine), else SigLIP-T (its sigmoid score).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from dti.errors import DtiError

IMAGE_FAMILIES = ("dinov2", "dino")
TEXT_FAMILIES = ("clip", "siglip")
_TEXT_METRIC = {"clip": "clip_t", "siglip": "siglip_t"}


def pick_metrics(metric_config: dict) -> tuple[str, str]:
    """(image family, text family) the analyses score with, from the `metrics` config."""

    def enabled(key: str) -> bool:
        return isinstance(metric_config.get(key), dict) and metric_config[key].get("enabled", True) is not False

    image = next((k for k in IMAGE_FAMILIES if enabled(k)), None)
    text = next((k for k in TEXT_FAMILIES if enabled(k)), None)
    if image is None:
        raise DtiError("metrics: the analyses measure subject fidelity with dinov2 or dino; enable one of them")
    if text is None:
        raise DtiError("metrics: the analyses measure text fidelity with clip or siglip; enable one of them")
    return image, text


class Fidelity:
    def __init__(self, metric_config: dict, device: str = "cpu", batch_size: int = 16,
                 tiny_dirs: dict[str, str] | None = None):
        from dti.metrics import load_metric_models, parse_metric_specs

        self.image_key, self.text_key = pick_metrics(metric_config)
        specs = parse_metric_specs({k: metric_config[k] for k in (self.image_key, self.text_key)}, tiny_dirs)
        models = load_metric_models(specs, device)
        self.image_model, self.text_model = models[self.image_key], models[self.text_key]
        self.image_label = f"{self.image_key} ({specs[self.image_key].metric_model})"
        self.text_label = f"{_TEXT_METRIC[self.text_key]} ({specs[self.text_key].metric_model})"
        self.batch_size = batch_size

    @staticmethod
    def open_images(folder: Path, names: Iterable[str]) -> list:
        from dti.images import load_image

        return [load_image(Path(folder) / str(name)) for name in names]

    def _batched(self, encode, items: list):
        import torch

        return torch.cat([encode(items[i : i + self.batch_size]) for i in range(0, len(items), self.batch_size)])

    def image_features(self, images: list):
        """Unit features of the subject-fidelity model, one row per image."""
        if not images:
            raise DtiError("fidelity: no images given")
        return self._batched(self.image_model.encode_images, images)

    @staticmethod
    def similarity(features, reference_features) -> np.ndarray:
        """Mean cosine of each image with the references (features are unit length)."""
        return (features @ reference_features.T).mean(dim=1).double().numpy()

    def subject(self, images: list, references: list) -> np.ndarray:
        return self.similarity(self.image_features(images), self.image_features(references))

    def text(self, images: list, prompts: list[str]) -> np.ndarray:
        """Text fidelity of each image to its prompt."""
        if len(images) != len(prompts):
            raise DtiError(f"fidelity: {len(images)} images but {len(prompts)} prompts")
        unique = list(dict.fromkeys(prompts))
        text_features = dict(zip(unique, self._batched(self.text_model.encode_texts, unique), strict=True))
        import torch

        features = self._batched(self.text_model.encode_images, images)
        cosine = (features * torch.stack([text_features[p] for p in prompts])).sum(dim=1)
        if self.text_key == "siglip":
            cosine = self.text_model.sigmoid_score(cosine)
        return cosine.double().numpy()

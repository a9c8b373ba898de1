"""Subject and text fidelity of arbitrary image sets, for the analyses (interpolation, magnitude sweep).

The benchmark's own scoring (dti.metrics.score_samples) scores one subject's manifest; the analyses ask
other questions (similarity to two subjects at once, many subjects in one job), so they use the same
metric models and the same metric declarations (dti.metrics.spec.METRICS) through this small class:
subject fidelity is an image metric (DINOv2 if the config scores with it, else DINO), text fidelity a
text metric (CLIP-T, else SigLIP), each scored as its declaration says (cosine, or SigLIP's sigmoid).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from dti.errors import DtiError
from dti.metrics.spec import METRICS, Metric

# The metrics the analyses measure with, in order of preference: the first whose family is enabled.
SUBJECT_METRICS = ("dinov2", "dino")
TEXT_METRICS = ("clip_t", "siglip_t")


def pick_metrics(metric_config: dict) -> tuple[Metric, Metric]:
    """(image metric, text metric) the analyses score with, from the `metrics` config."""

    def enabled(name: str) -> bool:
        family = METRICS[name].family
        return isinstance(metric_config.get(family), dict) and metric_config[family].get("enabled", True) is not False

    image = next((METRICS[m] for m in SUBJECT_METRICS if enabled(m)), None)
    text = next((METRICS[m] for m in TEXT_METRICS if enabled(m)), None)
    if image is None:
        raise DtiError("metrics: the analyses measure subject fidelity with dinov2 or dino; enable one of them, "
                       "or turn the analyses off (analysis.magnitude.enabled: false, no interpolation pairs)")
    if text is None:
        raise DtiError("metrics: the analyses measure text fidelity with clip or siglip; enable one of them, "
                       "or turn the analyses off (analysis.magnitude.enabled: false, no interpolation pairs)")
    return image, text


class Fidelity:
    def __init__(self, metric_config: dict, device: str = "cpu", batch_size: int = 16,
                 tiny_dirs: dict[str, str] | None = None):
        from dti.metrics import load_metric_models, parse_metric_specs

        self.image_metric, self.text_metric = pick_metrics(metric_config)
        families = (self.image_metric.family, self.text_metric.family)
        specs = parse_metric_specs({k: metric_config[k] for k in families}, tiny_dirs)
        models = load_metric_models(specs, device)
        self.image_model, self.text_model = (models[k] for k in families)
        # "metric (model)": the figures name the metric, their footnote the model.
        self.image_label, self.text_label = (f"{m.name} ({specs[m.family].metric_model})"
                                             for m in (self.image_metric, self.text_metric))
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
        score = (features * torch.stack([text_features[p] for p in prompts])).sum(dim=1)
        if self.text_metric.score == "sigmoid":
            from dti.metrics.scoring import sigmoid_score

            score = sigmoid_score(self.text_model.model, score)
        return score.double().numpy()

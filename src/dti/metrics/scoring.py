"""Score one subject's generated images against its reference images and eval prompts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from dti.errors import DtiError
from dti.metrics.encoders import OpenClipEncoder, TimmImageEncoder, build_encoder
from dti.metrics.spec import MANIFEST_COLUMNS, SCORE_COLUMNS, MetricSpec, family_metrics, parse_metric_specs
from dti.progress import ProgressLog

_KEY_COLUMNS = list(SCORE_COLUMNS[:9])

Encoder = TimmImageEncoder | OpenClipEncoder  # or a transformers encoder (dti.metrics.hf), same methods


def load_metric_models(
    metric_specs: dict[str, dict] | dict[str, MetricSpec], device: str = "cpu", tiny_dirs: dict | None = None
) -> dict[str, Encoder]:
    """Build one encoder per enabled family (specs may be raw config dicts or parsed MetricSpecs)."""
    specs = _as_specs(metric_specs, tiny_dirs)
    models: dict[str, Encoder] = {}
    for key, spec in specs.items():
        encoder = build_encoder(spec, device)
        sigmoid = any(m.score == "sigmoid" for m in family_metrics(key))
        if sigmoid and getattr(encoder.model, "logit_bias", None) is None:
            raise DtiError(
                f"metrics.{key}.model: {spec.model!r} has no logit_bias, so it is not a SigLIP model"
            )
        models[key] = encoder
    return models


def sigmoid_score(model, cosine: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise match probability of image-text cosines: sigmoid(exp(logit_scale) * cos + logit_bias),
    the model's own logit (`model`: an open_clip or a transformers SigLIP model; both name them so)."""
    scale = model.logit_scale.detach().float().exp().cpu()
    bias = model.logit_bias.detach().float().cpu()
    return torch.sigmoid(scale * cosine + bias)


def _as_specs(metric_specs: dict, tiny_dirs: dict | None = None) -> dict[str, MetricSpec]:
    if all(isinstance(v, MetricSpec) for v in metric_specs.values()):
        return dict(metric_specs)
    return parse_metric_specs(metric_specs, tiny_dirs)


def _check_manifest(manifest: pd.DataFrame) -> None:
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise DtiError(f"sample manifest: missing column(s) {missing}")
    subjects = manifest["subject"].unique()
    if len(subjects) > 1:
        # The reference images belong to one subject; mixing subjects would score against the wrong one.
        raise DtiError(f"sample manifest: one subject per call, found {sorted(map(str, subjects))}")


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise DtiError(f"cannot read generated image {path}: {err}") from err


def _measures(key: str, what: str) -> bool:
    return any(m.measures == what for m in family_metrics(key))


def _batch_scores(
    models: dict[str, Encoder],
    images: list[Image.Image],
    prompts: list[str],
    reference_features: dict[str, torch.Tensor],
    text_features: dict[str, dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Per metric name, one score per image of the batch, as each metric's declaration says."""
    scores: dict[str, torch.Tensor] = {}
    for key, encoder in models.items():
        features = encoder.encode_images(images)
        for metric in family_metrics(key):
            if metric.measures == "image":  # mean cosine over the references (DreamBooth protocol)
                value = (features @ reference_features[key].T).mean(dim=1)
            else:
                value = (features * torch.stack([text_features[key][p] for p in prompts])).sum(dim=1)
            scores[metric.name] = sigmoid_score(encoder.model, value) if metric.score == "sigmoid" else value
    return scores


def score_samples(
    manifest: pd.DataFrame,
    image_dir: Path,
    reference_images: list[Image.Image],
    metric_specs: dict[str, dict] | dict[str, MetricSpec],
    device: str = "cpu",
    batch_size: int = 16,
    models: dict[str, Encoder] | None = None,
    tiny_dirs: dict | None = None,
) -> pd.DataFrame:
    """One Scores row per manifest image and metric (columns: SCORE_COLUMNS).

    Image metrics (dino, dinov2, clip_i) average the cosine with each reference image; text metrics
    compare with the row's `eval_prompt` (clip_t: cosine; siglip_t: SigLIP's sigmoid score): each as its
    declaration in dti.metrics.spec.METRICS says.
    `models` lets a caller reuse encoders from `load_metric_models(metric_specs)`; otherwise each
    model is built once here.
    """
    specs = _as_specs(metric_specs, tiny_dirs)
    _check_manifest(manifest)
    if not reference_images:
        raise DtiError("score_samples: no reference images given")
    if batch_size <= 0:
        raise DtiError(f"score_samples: batch_size must be positive, got {batch_size}")
    image_dir = Path(image_dir)
    paths = [image_dir / str(name) for name in manifest["image"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:  # checked before any model is built, so a bad manifest fails in seconds
        raise DtiError(f"generated image(s) not found: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if models is None:
        models = load_metric_models(specs, device)
    elif set(models) != set(specs):
        raise DtiError(f"score_samples: models {sorted(models)} do not match metric specs {sorted(specs)}")

    rows = manifest.reset_index(drop=True)
    prompts = [str(p) for p in rows["eval_prompt"]]
    unique_prompts = list(dict.fromkeys(prompts))
    # Computed once per call: reference features for image metrics, text features per unique prompt.
    reference_features: dict[str, torch.Tensor] = {}
    text_features: dict[str, dict[str, torch.Tensor]] = {}
    for key, encoder in models.items():
        if _measures(key, "image"):
            reference_features[key] = torch.cat(
                [encoder.encode_images(reference_images[i : i + batch_size])
                 for i in range(0, len(reference_images), batch_size)]
            )  # fmt: skip
        if _measures(key, "text") and unique_prompts:
            text_features[key] = dict(zip(unique_prompts, encoder.encode_texts(unique_prompts), strict=True))

    metric_order = [name for spec in specs.values() for name in spec.metrics]
    # The encoder's label: transformers encoders add the image transform they read from the model.
    labels = {name: models[key].metric_model for key, spec in specs.items() for name in spec.metrics}
    values: dict[str, list[float]] = {name: [] for name in metric_order}
    scored = ProgressLog("scored", len(rows))  # lines in the job's log, as sampling writes them
    for start in range(0, len(rows), batch_size):
        images = [_open_image(path) for path in paths[start : start + batch_size]]
        scores = _batch_scores(
            models, images, prompts[start : start + batch_size], reference_features, text_features
        )
        for name in metric_order:
            values[name].extend(scores[name].double().tolist())
        scored.advance(len(images))

    # Rows: image-major, metrics in config order within each image.
    frames = []
    for name in metric_order:
        frame = rows[_KEY_COLUMNS].copy()
        frame["metric"] = name
        frame["metric_model"] = labels[name]
        frame["value"] = pd.Series(values[name], index=frame.index, dtype="float64")
        frame["_order"] = metric_order.index(name)
        frames.append(frame)
    if not frames:
        return _empty_scores()
    out = pd.concat(frames).rename_axis("_row").sort_values(["_row", "_order"], kind="stable")
    out = out.drop(columns="_order").reset_index(drop=True)
    return out.astype({"step": "int64", "prompt_id": "int64", "seed": "int64", "image": str, "value": "float64"})[
        list(SCORE_COLUMNS)
    ]


def _empty_scores() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=str) for c in SCORE_COLUMNS})
    return frame.astype({"step": "int64", "prompt_id": "int64", "seed": "int64", "value": "float64"})

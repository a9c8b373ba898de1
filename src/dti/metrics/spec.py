"""Metric declarations and specs: what each metric measures, and the `metrics` config section validated.

Each metric is declared once (`METRICS`: which family computes it, whether it measures the image against
the reference photos or the prompt, and how it scores); each family key maps to a fixed set of metric
names (the Scores contract), so tables can be built from the config alone. Model names are checked
against the timm / open_clip registries here, before any (possibly slow) model is built. The
transformers backend (DINOv2 and SigLIP as the DTI authors load them) takes a hub id (fetched on the
login node) or a local folder. `model: tiny` asks for a tiny random model that the workflow builds offline
(dti.metrics.tiny) and loads through the same code as real weights: DINOv2 and SigLIP of the real
transformers classes, CLIP as an open_clip model folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dti.errors import DtiError
from dti.model_files import local_path


@dataclass(frozen=True)
class Metric:
    """One metric of the Scores contract, declared once: scoring and the analyses follow what it says."""

    name: str  # the `metric` value of its Scores rows
    family: str  # the model that computes it: a key of the `metrics` config
    measures: str  # "image": against the subject's reference photos (the mean over them); "text": the prompt
    score: str  # "cosine" of the unit features, or "sigmoid": SigLIP's match probability of that cosine
    display: str  # its name in tables and figures


# In the conventional column order of the tables.
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("dino", "dino", "image", "cosine", "DINO"),
    Metric("dinov2", "dinov2", "image", "cosine", "DINOv2"),
    Metric("clip_i", "clip", "image", "cosine", "CLIP-I"),
    Metric("clip_t", "clip", "text", "cosine", "CLIP-T"),
    Metric("siglip_t", "siglip", "text", "sigmoid", "SigLIP"),
)}  # fmt: skip
# Family key -> the metric names it writes, in row order.
FAMILY_METRICS: dict[str, tuple[str, ...]] = {
    family: tuple(m.name for m in METRICS.values() if m.family == family)
    for family in dict.fromkeys(m.family for m in METRICS.values())
}
# The sample manifest, which the sample job writes (dti.pipeline.render_subject) and scoring reads: one row
# per generated image, in this column order, the job's labels (backbone, method, subject) first.
MANIFEST_COLUMNS = (
    "backbone", "method", "subject", "step", "subject_kind", "prompt_set", "prompt_id", "prompt", "eval_prompt",
    "seed", "image",
)  # fmt: skip
# The Scores contract: one row per image and metric, in this column order. The first nine are the manifest
# columns that name the image.
SCORE_COLUMNS = (
    "backbone", "method", "step", "subject", "subject_kind", "prompt_set", "prompt_id", "seed", "image",
    "metric", "metric_model", "value",
)  # fmt: skip


def family_metrics(family: str) -> tuple[Metric, ...]:
    """The metrics a family's model computes, in row order."""
    return tuple(METRICS[name] for name in FAMILY_METRICS[family])
# Which libraries can compute each family; the first is the default. DINO-family models are image-only
# (timm); text metrics need a joint image-text model (open_clip); transformers loads DINOv2 and SigLIP
# the way the DTI authors' evaluator does.
FAMILY_BACKENDS: dict[str, tuple[str, ...]] = {
    "dino": ("timm",),
    "dinov2": ("timm", "transformers"),
    "clip": ("open_clip",),
    "siglip": ("open_clip", "transformers"),
}

# The families whose tiny random model (`model: tiny`) the workflow can build (dti.metrics.tiny), and the
# backend that loads it: DINOv2 and SigLIP as the authors load them, CLIP through open_clip's folder loader.
TINY_BACKENDS: dict[str, str] = {"dinov2": "transformers", "clip": "open_clip", "siglip": "transformers"}

_ALLOWED_KEYS = {
    "timm": {"enabled", "backend", "model", "pretrained", "weights", "image_size"},
    "open_clip": {"enabled", "backend", "model", "pretrained", "weights", "tokenizer"},
    "transformers": {"enabled", "backend", "model", "revision"},
}
TINY = "tiny"  # a tiny random model of the family (TINY_BACKENDS), built offline into a folder


@dataclass(frozen=True)
class MetricSpec:
    """One validated metric family: which model, which weights, which input size."""

    key: str
    backend: str
    model: str
    # timm: True loads hub weights. open_clip: a tag such as "openai" (hub weights, and with
    # `weights` set it names the preprocessing/activation config the file was trained with).
    pretrained: bool | str | None
    weights: Path | None
    image_size: int | None  # timm only; open_clip uses the model's own preprocessing
    tokenizer: Path | None  # open_clip only: a local Hugging Face tokenizer folder
    revision: str | None = None  # transformers only: the hub revision (None: the default branch)
    # transformers: the local folder it loads from (None: the hub cache); open_clip: the tiny model's folder
    folder: Path | None = None

    @property
    def metrics(self) -> tuple[str, ...]:
        return FAMILY_METRICS[self.key]

    @property
    def source(self) -> str:
        """Where the weights come from: a local file, a hub tag, or a seeded random init."""
        if self.model == TINY:
            return "random"
        if self.backend == "transformers":
            if self.folder is not None:
                return "local"  # the model name is the folder
            return f"hub:{self.revision}" if self.revision else "hub"
        if self.weights is not None:
            return str(self.weights)
        if self.backend == "timm":
            return "hub" if self.pretrained else "random"
        return self.pretrained or "random"

    @property
    def needs_hub(self) -> bool:
        """Whether building the model reads the hub: weights by tag (or timm's pretrained), or a SigLIP
        tokenizer without a local folder (CLIP's BPE ships with open_clip)."""
        if self.model == TINY:  # built by the workflow into a local folder
            return False
        if self.backend == "transformers":
            return self.folder is None
        hub_weights = self.weights is None and self.source != "random"
        return hub_weights or (self.key == "siglip" and self.tokenizer is None)

    @property
    def metric_model(self) -> str:
        """The backbone label written into every Scores row (transformers encoders add their transform)."""
        model = f"tiny-{self.key}" if self.model == TINY else self.model
        label = f"{self.backend}:{model}@{self.source}"
        if self.backend == "timm":
            label += f"/{self.image_size}px"
        return label


def _enabled(key: str, raw: Any) -> bool:
    if not isinstance(raw, dict):
        raise DtiError(f"metrics.{key}: expected a mapping of settings, got {raw!r}")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise DtiError(f"metrics.{key}.enabled: expected true or false, got {enabled!r}")
    return enabled


def _check_family(key: str) -> None:
    if key not in FAMILY_METRICS:
        raise DtiError(f"metrics.{key}: unknown metric family {key!r}; known: {sorted(FAMILY_METRICS)}")


def metric_names(config: dict[str, dict]) -> list[str]:
    """Metric names the enabled families produce, e.g. ["dino", "dinov2", "clip_i", "clip_t"].

    Light on purpose (no model registries imported), so aggregation can call it cheaply.
    """
    names: list[str] = []
    for key, raw in config.items():
        _check_family(key)
        if _enabled(key, raw):
            names.extend(FAMILY_METRICS[key])
    return names


def _existing_path(key: str, field: str, value: Any, want_dir: bool) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value):
        raise DtiError(f"metrics.{key}.{field}: expected a path, got {value!r}")
    path = Path(value).expanduser()
    exists = path.is_dir() if want_dir else path.is_file()
    if not exists:
        kind = "folder" if want_dir else "file"
        raise DtiError(f"metrics.{key}.{field}: {kind} not found: {path}")
    return path


def _check_timm_model(key: str, model: str) -> int:
    """Validate a timm name (architecture and optional .tag); return its native input size."""
    import timm

    if not timm.is_model(model):
        raise DtiError(f"metrics.{key}.model: unknown timm model {model!r}")
    try:
        cfg = timm.get_pretrained_cfg(model)
    except RuntimeError as err:  # raised for an unknown pretrained tag, e.g. "vit_small_patch16_224.foo"
        raise DtiError(f"metrics.{key}.model: unknown timm model {model!r} ({err})") from err
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224


def _check_open_clip_model(key: str, model: str, tag: str | None) -> None:
    import open_clip

    if model not in open_clip.list_models():
        raise DtiError(f"metrics.{key}.model: unknown open_clip model {model!r}")
    if tag is not None and tag not in open_clip.list_pretrained_tags_by_model(model):
        known = open_clip.list_pretrained_tags_by_model(model)
        raise DtiError(
            f"metrics.{key}.pretrained: unknown open_clip tag {tag!r} for {model!r}; known: {known}"
        )


def _tiny_folder(key: str, backend: str, tiny_dirs: dict) -> Path:
    """Where the tiny random model of `key` was built; only its own backend can load it."""
    if TINY_BACKENDS.get(key) != backend:
        where = f"backend {TINY_BACKENDS[key]!r}" if key in TINY_BACKENDS else "no backend"
        raise DtiError(f"metrics.{key}.model: there is no tiny {key} model for backend {backend!r} ({where} has one)")
    if key not in tiny_dirs:
        raise DtiError(f"metrics.{key}.model: 'tiny' needs the folder of the tiny random {key} model")
    return Path(tiny_dirs[key])


def _transformers_spec(key: str, model: str, raw: dict[str, Any], tiny_dirs: dict) -> MetricSpec:
    revision = raw.get("revision")
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise DtiError(f"metrics.{key}.revision: expected a hub revision (branch, tag or commit), got {revision!r}")
    if model == TINY:
        folder = _tiny_folder(key, "transformers", tiny_dirs)
    else:
        folder = local_path(model)
        if folder is not None and not folder.is_dir():
            raise DtiError(f"metrics.{key}.model: {model!r} is neither a local folder nor a hub id (org/name)")
    if folder is not None and revision is not None:
        raise DtiError(f"metrics.{key}.revision: a local folder ({folder}) has no revision")
    return MetricSpec(key, "transformers", model, None, None, None, None, revision, folder)


def parse_metric_spec(key: str, raw: dict[str, Any], tiny_dirs: dict | None = None) -> MetricSpec:
    """Validate one family's settings; errors name `metrics.<key>.<field>` and the bad value.

    `tiny_dirs` ({family: folder}) says where the tiny random models (`model: tiny`) were built.
    """
    _check_family(key)
    _enabled(key, raw)
    backend = raw.get("backend", FAMILY_BACKENDS[key][0])
    if backend not in _ALLOWED_KEYS:
        raise DtiError(f"metrics.{key}.backend: unknown backend {backend!r}; known: {sorted(_ALLOWED_KEYS)}")
    if backend not in FAMILY_BACKENDS[key]:
        raise DtiError(
            f"metrics.{key}.backend: {backend!r} cannot compute {key}; use one of {list(FAMILY_BACKENDS[key])}"
        )
    unknown = sorted(set(raw) - _ALLOWED_KEYS[backend])
    if unknown:
        raise DtiError(f"metrics.{key}: unknown setting(s) {unknown} for backend {backend!r}")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise DtiError(f"metrics.{key}.model: expected a model name, got {model!r}")
    if backend == "transformers":
        return _transformers_spec(key, model, raw, tiny_dirs or {})
    if model == TINY:
        folder = _tiny_folder(key, backend, tiny_dirs or {})
        extra = sorted(k for k in ("pretrained", "weights", "tokenizer") if raw.get(k) not in (None, False))
        if extra:
            raise DtiError(f"metrics.{key}: the tiny model brings its own weights and tokenizer; remove {extra}")
        return MetricSpec(key, backend, model, None, None, None, None, folder=folder)
    weights = _existing_path(key, "weights", raw.get("weights"), want_dir=False)
    pretrained = raw.get("pretrained")

    if backend == "timm":
        if pretrained is None:
            pretrained = False
        if not isinstance(pretrained, bool):
            raise DtiError(f"metrics.{key}.pretrained: timm expects true or false, got {pretrained!r}")
        if pretrained and weights is not None:
            raise DtiError(f"metrics.{key}: set either pretrained: true or weights ({weights}), not both")
        native = _check_timm_model(key, model)
        image_size = raw.get("image_size", native)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise DtiError(f"metrics.{key}.image_size: expected a positive integer, got {image_size!r}")
        return MetricSpec(key, backend, model, pretrained, weights, image_size, None)

    if pretrained is False:
        pretrained = None
    if pretrained is not None and (not isinstance(pretrained, str) or not pretrained):
        raise DtiError(
            f"metrics.{key}.pretrained: open_clip expects a tag such as 'openai' or null, got {pretrained!r}"
        )
    _check_open_clip_model(key, model, pretrained)
    tokenizer = _existing_path(key, "tokenizer", raw.get("tokenizer"), want_dir=True)
    return MetricSpec(key, backend, model, pretrained, weights, None, tokenizer)


def parse_metric_specs(config: dict[str, dict], tiny_dirs: dict | None = None) -> dict[str, MetricSpec]:
    """Validate every family and return the enabled ones, keyed by family."""
    if not isinstance(config, dict):
        raise DtiError(f"metrics: expected a mapping of metric families, got {config!r}")
    specs: dict[str, MetricSpec] = {}
    for key, raw in config.items():
        _check_family(key)
        if _enabled(key, raw):
            specs[key] = parse_metric_spec(key, raw, tiny_dirs)
    return specs


def tiny_families(config: dict[str, dict]) -> list[str]:
    """The enabled families that ask for a tiny random model (`model: tiny`, with the backend that loads it)."""
    return [key for key, raw in config.items() if isinstance(raw, dict) and raw.get("enabled", True)
            and raw.get("model") == TINY and key in TINY_BACKENDS
            and raw.get("backend", FAMILY_BACKENDS[key][0]) == TINY_BACKENDS[key]]

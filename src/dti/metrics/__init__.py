"""Image/text metrics for the benchmark: DINO, DINOv2, CLIP-I, CLIP-T and SigLIP (text).

The spec helpers are light; the scoring API imports torch, timm and open_clip only when first used,
so config-only callers (aggregation) stay fast.
"""

from dti.metrics.spec import (
    FAMILY_METRICS,
    MANIFEST_COLUMNS,
    METRICS,
    SCORE_COLUMNS,
    Metric,
    MetricSpec,
    metric_names,
    parse_metric_spec,
    parse_metric_specs,
)

_SCORING_NAMES = {"load_metric_models", "score_samples"}

__all__ = [
    "FAMILY_METRICS",
    "MANIFEST_COLUMNS",
    "METRICS",
    "Metric",
    "MetricSpec",
    "SCORE_COLUMNS",
    "load_metric_models",
    "metric_names",
    "parse_metric_spec",
    "parse_metric_specs",
    "score_samples",
]


def __getattr__(name: str):
    if name in _SCORING_NAMES:
        from dti.metrics import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module 'dti.metrics' has no attribute {name!r}")

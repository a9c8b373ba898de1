"""Vocabularies the whole project shares, each defined here once.

- Subject kinds: DreamBooth's split of subjects into objects and live ones (animals); each kind has its
  own prompt lists, and the tables report them apart.
- Subject sources: where a subject's photos come from (a generated synthetic subject, the pinned
  DreamBooth release, or a folder of the user's photos).
- Display names: how tables and figures name a method or a metric; the data (Parquet, file and folder
  names, configs) keeps the keys. Each method and metric declares its own (dti.methods.METHODS,
  dti.metrics.spec.METRICS); `display_name` is the one place that reads them.

src/dti/data/subject.schema.yaml repeats the kinds and sources as enums (tests check that they agree).
"""

from __future__ import annotations

from dti.errors import DtiError

OBJECT, LIVE = "object", "live"
SUBJECT_KINDS = (OBJECT, LIVE)
SUBJECT_SOURCES = ("synthetic", "dreambooth", "folder")


def check_kind(kind: object, what: str = "subject kind") -> str:
    """`kind` if it is a subject kind; else a DtiError naming `what` and the value."""
    if kind not in SUBJECT_KINDS:
        raise DtiError(f"{what} must be one of {list(SUBJECT_KINDS)}, got {kind!r}")
    return kind


def display_names() -> dict[str, str]:
    """{method or metric key: its display name}."""
    from dti.methods import METHODS
    from dti.metrics.spec import METRICS

    return {**{key: m.display for key, m in METHODS.items()}, **{key: m.display for key, m in METRICS.items()},
            "norm_ratio": "Norm / m"}


def display_name(key: object) -> str:
    """How tables and figures show a method or metric key; anything else is shown as it is."""
    return display_names().get(str(key), str(key))

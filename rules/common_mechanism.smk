# The mechanism analyses' settings, checked at planning time (errors name the key), and the helpers of
# rules/mechanism.smk. Definitions: docs/analysis.md, "Mechanism". Which measurement applies to a backbone
# is the family table's (src/dti/families.py): the position probe to text encoders that add a learned
# position row (CLIP), decoding to a text encoder that is a language model (SANA's Gemma-2), attention maps
# to denoisers whose cross-attention reads the tokenizer's positions (SD, SDXL).
from dti.analysis.mechanism import check_mechanism
from dti.planning import attention_subjects, mechanism_backbones

try:
    _mechanism = (config.get("analysis") or {}).get("mechanism") or {}
    MECHANISM = check_mechanism(_mechanism) if _mechanism.get("enabled", True) else None
    MECHANISM_BACKBONES = (
        _analysis_backbones(_mechanism.get("backbones"), "analysis.mechanism.backbones") if MECHANISM else []
    )
    _measured = mechanism_backbones(BACKBONES, MECHANISM_BACKBONES)  # by family (dti.families)
    # The subjects whose tokens the attention maps show: `attention.subjects`, or the first two.
    ATTENTION_SUBJECTS = attention_subjects(MECHANISM, SUBJECTS)
except DtiError as exc:
    _config_error(str(exc))
PROBE_BACKBONES = _measured["probe"]
DECODING_BACKBONES = _measured["decoding"]
ATTENTION_BACKBONES = _measured["attention"]


def mechanism_runs(wildcards):
    """Every trained run of the backbone: the encoder-side measurements read a token trained beside an
    adapter too (the adapter sits in the denoiser, never in a text encoder)."""
    return [{k: r[k] for k in ("path", "method", "subject")} for r in backbone_runs(wildcards.backbone)]


def attention_runs(wildcards):
    """The backbone's token-only runs of the attention subjects (a token trained beside an adapter is
    sampled with it; its maps without the adapter would measure neither)."""
    return [r for r in sweep_runs(wildcards) if r["subject"] in ATTENTION_SUBJECTS]


def mechanism_labels(wildcards):
    return {"backbone": wildcards.backbone}


def mechanism_path(kind, backbone, ext):
    return run_path(f"analysis/mechanism/{backbone}/{kind}.{ext}")


def mechanism_reports(kind, caption, subcategory, backbones):
    """The PNG figures of one measurement, marked for the report's Mechanism section."""
    return [
        reported(
            mechanism_path(kind, b, "png"),
            caption,
            category=REPORT_SECTIONS["Mechanism"],
            subcategory=subcategory,
            labels={"backbone": b},
        )
        for b in backbones
    ]


def direction_reports():
    """The semantic_directions rule's PNG figures, one per subject, each labelled with its subject."""
    return [
        reported(
            run_path(f"analysis/mechanism/{{backbone}}/directions/{s}.png"),
            "directions",
            category=REPORT_SECTIONS["Mechanism"],
            subcategory="Semantic directions",
            labels={"backbone": "{backbone}", "subject": s},
        )
        for s in SUBJECTS
    ]


def direction_figures(backbone, ext):
    return [run_path(f"analysis/mechanism/{backbone}/directions/{s}.{ext}") for s in SUBJECTS]


def mechanism_files():
    """Every output of the mechanism rules this config plans."""
    files = []
    for kind, backbones in (
        ("positional", PROBE_BACKBONES),
        ("residual", MECHANISM_BACKBONES),
        ("context", MECHANISM_BACKBONES),
        ("attention", ATTENTION_BACKBONES),
    ):
        files += [mechanism_path(kind, b, ext) for b in backbones for ext in ("png", "pdf", "parquet")]
    for b in MECHANISM_BACKBONES:
        files += direction_figures(b, "png") + direction_figures(b, "pdf")
        files += [mechanism_path(f"directions/{name}", b, "parquet") for name in ("points", "nearest")]
        files.append(mechanism_path("directions/nearest", b, "html"))
    files += [mechanism_path("decoding", b, ext) for b in DECODING_BACKBONES for ext in ("parquet", "html")]
    return files

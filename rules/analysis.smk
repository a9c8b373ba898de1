# The paper's analyses beyond the scores (docs/analysis.md): norm and direction curves from every training
# log with the vocabulary's norms (a local job), and the magnitude sweep: every trained token rescaled to
# several multiples of m, rendered and scored per backbone (GPU jobs), then one figure per backbone.
from dti.analysis.magnitude import check_sweep

localrules:
    norm_analysis,
    magnitude_outputs,


ANALYSIS = config.get("analysis") or {}
try:
    MAGNITUDE = check_sweep(ANALYSIS.get("magnitude") or {}) if ANALYSIS.get("magnitude", {}).get("enabled", True) else None
    if MAGNITUDE:
        pick_metrics(config["metrics"])
except DtiError as exc:
    _config_error(str(exc))


def backbone_runs(backbone):
    return [r for r in run_records() if r["backbone"] == backbone]


def norm_analysis_files():
    return [f"results/analysis/{kind}/{b}.{ext}" for kind in ("norm_curves", "vocab_norms") for b in BACKBONES
            for ext in ("png", "pdf", "parquet")]


def magnitude_files():
    if not MAGNITUDE:
        return []
    return [f"results/analysis/magnitude/{b}.{ext}" for b in BACKBONES for ext in ("png", "pdf", "parquet")]


def analysis_files():
    return norm_analysis_files() + magnitude_files()


def _figure_reports(kind, caption, subcategory):
    return [report(f"results/analysis/{kind}/{b}.png", caption=f"../workflow/report/{caption}.rst",
                   category="Norms and directions", subcategory=subcategory, labels={"backbone": b})
            for b in BACKBONES]


rule norm_analysis:
    input:
        runs=[r["path"] for r in run_records()],
        models=[f"resources/models/{b}.json" for b in BACKBONES],
    output:
        curves=_figure_reports("norm_curves", "norm_curves", "Training curves"),
        histograms=_figure_reports("vocab_norms", "vocab_norms", "Vocabulary norms"),
        other=[f for f in norm_analysis_files() if not f.endswith(".png")],
    params:
        runs=run_records(),
        models={b: f"resources/models/{b}.json" for b in BACKBONES},
        out_dir="results/analysis",
        code_version=CODE_VERSION,
    log:
        "logs/norm_analysis.log",
    benchmark:
        "benchmarks/norm_analysis.tsv"
    script:
        "../workflow/scripts/norm_analysis.py"


rule magnitude_sweep:
    input:
        runs=lambda wc: [r["path"] for r in backbone_runs(wc.backbone)],
        subjects=[f"resources/subjects/{s}/subject.json" for s in SUBJECTS],
        model=model_json,
    output:
        manifest="results/magnitude/{backbone}/manifest.parquet",
    params:
        runs=lambda wc: [{k: r[k] for k in ("path", "method", "subject")} for r in backbone_runs(wc.backbone)],
        subjects={s: f"resources/subjects/{s}/subject.json" for s in SUBJECTS},
        labels=lambda wc: {"backbone": wc.backbone},
        sweep=MAGNITUDE,
        sample=sample_settings,
        code_version=CODE_VERSION,
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(120),
    log:
        "logs/magnitude_sweep/{backbone}.log",
    benchmark:
        "benchmarks/magnitude_sweep/{backbone}.tsv"
    script:
        "../workflow/scripts/magnitude_sweep.py"


rule score_magnitude_sweep:
    input:
        manifest="results/magnitude/{backbone}/manifest.parquet",
        subjects=[f"resources/subjects/{s}/subject.json" for s in SUBJECTS],
        metrics="resources/metrics.json",
    output:
        "results/magnitude/{backbone}/scores.parquet",
    params:
        subjects={s: f"resources/subjects/{s}/subject.json" for s in SUBJECTS},
        metrics=lambda wc: analysis_metrics(),
        code_version=CODE_VERSION,
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(30),
    log:
        "logs/score_magnitude_sweep/{backbone}.log",
    benchmark:
        "benchmarks/score_magnitude_sweep/{backbone}.tsv"
    script:
        "../workflow/scripts/score_magnitude_sweep.py"


rule magnitude_outputs:
    input:
        scores=[f"results/magnitude/{b}/scores.parquet" for b in BACKBONES],
    output:
        figures=_figure_reports("magnitude", "magnitude", "Magnitude sweep"),
        other=[f for f in magnitude_files() if not f.endswith(".png")],
    params:
        scores={b: f"results/magnitude/{b}/scores.parquet" for b in BACKBONES},
        out_dir="results/analysis/magnitude",
        code_version=CODE_VERSION,
    log:
        "logs/magnitude_outputs.log",
    benchmark:
        "benchmarks/magnitude_outputs.tsv"
    script:
        "../workflow/scripts/magnitude_outputs.py"

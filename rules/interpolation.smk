# Concept interpolation (config key `interpolation`): per backbone and pair of subjects, one GPU job writes
# every method's blends as loadable embeddings and renders them along t, one scores the images against
# both subjects; a local job turns all scores into the table, the curves and the strips.
from dti.analysis.fidelity import pick_metrics
from dti.interpolation import parse_interpolation, schemes_for

localrules:
    interpolation_outputs,


try:
    INTERPOLATION = parse_interpolation(config.get("interpolation"), SUBJECTS, TRAINED_METHODS)
    if INTERPOLATION.pairs:
        pick_metrics(config["metrics"])
except DtiError as exc:
    _config_error(str(exc))
PAIRS = {pair.name: pair for pair in INTERPOLATION.pairs}


wildcard_constraints:
    pair=_alternatives(PAIRS) or "(?!)",  # no pairs: matches nothing


def analysis_metrics():
    """Only the two metric families the analyses score with: enabling another one reruns nothing here."""
    return {key: METRICS[key] for key in pick_metrics(METRICS)}


def pair_runs(wildcards):
    """{method: {"a": run.json, "b": run.json}} of the pair on this backbone."""
    pair = PAIRS[wildcards.pair]
    return {m: {end: f"{train_dir(wildcards.backbone, m, s)}/run.json" for end, s in (("a", pair.a), ("b", pair.b))}
            for m in pair.methods}


def pair_subject(end):
    return lambda wc: f"resources/subjects/{getattr(PAIRS[wc.pair], end)}/subject.json"


def interpolation_score_files():
    return [f"results/interpolation/{b}/{p}/scores.parquet" for b in BACKBONES for p in PAIRS]


def interpolation_figures(kind, ext):
    return [f"results/interpolation/{b}/{p}/{kind}.{ext}" for b in BACKBONES for p in PAIRS]


def interpolation_files():
    if not PAIRS:
        return []
    tables = [f"results/interpolation/{name}.parquet" for name in ("summary", "paths", "per_t")]
    return [*tables, "results/interpolation/summary.tex", *[f for kind in ("curves", "strip")
                                                           for ext in ("png", "pdf", "parquet")
                                                           for f in interpolation_figures(kind, ext)]]


rule interpolate:
    input:
        runs=lambda wc: [path for ends in pair_runs(wc).values() for path in ends.values()],
        model=model_json,
    output:
        manifest="results/interpolation/{backbone}/{pair}/manifest.parquet",
    params:
        runs=pair_runs,
        schemes=lambda wc: {m: list(schemes_for(get_method(m).on_sphere)) for m in PAIRS[wc.pair].methods},
        labels=lambda wc: {"backbone": wc.backbone},
        t=list(INTERPOLATION.t),
        prompts=list(INTERPOLATION.prompts),
        seeds=list(INTERPOLATION.seeds),
        neutral=INTERPOLATION.neutral,
        sample=sample_settings,
        code_version=CODE_VERSION,
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(60),
    log:
        "logs/interpolate/{backbone}/{pair}.log",
    benchmark:
        "benchmarks/interpolate/{backbone}/{pair}.tsv"
    script:
        "../workflow/scripts/interpolate.py"


rule score_interpolation:
    input:
        manifest="results/interpolation/{backbone}/{pair}/manifest.parquet",
        a=pair_subject("a"),
        b=pair_subject("b"),
        metrics="resources/metrics.json",
    output:
        "results/interpolation/{backbone}/{pair}/scores.parquet",
    params:
        metrics=lambda wc: analysis_metrics(),
        code_version=CODE_VERSION,
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(30),
    log:
        "logs/score_interpolation/{backbone}/{pair}.log",
    benchmark:
        "benchmarks/score_interpolation/{backbone}/{pair}.tsv"
    script:
        "../workflow/scripts/score_interpolation.py"


rule interpolation_outputs:
    input:
        scores=interpolation_score_files(),
        subjects=sorted({f"resources/subjects/{s}/subject.json" for p in PAIRS.values() for s in (p.a, p.b)}),
    output:
        tables=[f"results/interpolation/{name}.parquet" for name in ("summary", "paths", "per_t")],
        tex="results/interpolation/summary.tex",
        strips=[report(f, caption="../workflow/report/interpolation_strip.rst", category="Interpolation",
                       subcategory="Strips", labels={"backbone": f.split("/")[2], "pair": f.split("/")[3]})
                for f in interpolation_figures("strip", "png")],
        curves=[report(f, caption="../workflow/report/interpolation_curves.rst", category="Interpolation",
                       subcategory="Curves", labels={"backbone": f.split("/")[2], "pair": f.split("/")[3]})
                for f in interpolation_figures("curves", "png")],
        other=[f for kind in ("curves", "strip") for ext in ("pdf", "parquet") for f in interpolation_figures(kind, ext)],
    params:
        subjects=lambda wc, input: {Path(p).parent.name: p for p in input.subjects},
        out_dir="results/interpolation",
        code_version=CODE_VERSION,
    log:
        "logs/interpolation_outputs.log",
    benchmark:
        "benchmarks/interpolation_outputs.tsv"
    script:
        "../workflow/scripts/interpolation_outputs.py"

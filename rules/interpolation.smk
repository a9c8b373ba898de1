# Concept interpolation (config key `interpolation`): per backbone and pair of subjects, one GPU job writes
# every method's blends as loadable embeddings and renders them along t, one scores the images against
# both subjects; a local job turns all scores into the table, the curves and the strips.
localrules:
    interpolation_outputs,


rule interpolate:
    input:
        runs=pair_run_files,
        model=model_json,
    output:
        manifest=run_path("interpolation/{backbone}/{pair}/manifest.parquet"),
    log:
        "logs/interpolate/{backbone}/{pair}.log",
    benchmark:
        "benchmarks/interpolate/{backbone}/{pair}.tsv"
    conda:
        DTI_ENV
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(60),
    params:
        runs=pair_runs,
        schemes=pair_schemes,
        labels=lambda wc: {"backbone": wc.backbone},
        t=list(INTERPOLATION.t),
        prompts=list(INTERPOLATION.prompts),
        seeds=list(INTERPOLATION.seeds),
        neutral=INTERPOLATION.neutral,
        sample=sample_settings,
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/interpolate.py"


rule score_interpolation:
    input:
        manifest=run_path("interpolation/{backbone}/{pair}/manifest.parquet"),
        a=pair_subject("a"),
        b=pair_subject("b"),
        metrics="resources/metrics.json",
        tiny_metrics=lambda wc: list(analysis_tiny_metrics().values()),
    output:
        run_path("interpolation/{backbone}/{pair}/fidelity.parquet"),
    log:
        "logs/score_interpolation/{backbone}/{pair}.log",
    benchmark:
        "benchmarks/score_interpolation/{backbone}/{pair}.tsv"
    conda:
        DTI_ENV
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(30),
    params:
        metrics=lambda wc: analysis_metrics(),
        tiny_metrics=lambda wc: analysis_tiny_metrics(),
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/score_interpolation.py"


rule interpolation_outputs:
    input:
        scores=interpolation_fidelity_files(),
        subjects=list(subject_files(sorted({s for p in PAIRS.values() for s in (p.a, p.b)})).values()),
    output:
        tables=INTERPOLATION_TABLES,
        tex=run_path("interpolation/summary.tex"),
        strips=interpolation_reports("strip"),
        curves=interpolation_reports("curves"),
        other=[
            f
            for kind in ("curves", "strip")
            for ext in ("pdf", "parquet")
            for f in interpolation_figures(kind, ext)
        ],
    log:
        "logs/interpolation_outputs.log",
    benchmark:
        "benchmarks/interpolation_outputs.tsv"
    conda:
        DTI_ENV
    params:
        subjects=subject_files(sorted({s for p in PAIRS.values() for s in (p.a, p.b)})),
        out_dir=lambda wildcards, output: os.path.dirname(output.tex),
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/interpolation_outputs.py"

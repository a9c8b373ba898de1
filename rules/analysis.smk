# The paper's analyses beyond the scores (docs/analysis.md): norm and direction curves from every training
# log with the vocabulary's norms (a local job), and the magnitude sweep: every trained token rescaled to
# several multiples of m, rendered and scored per backbone (GPU jobs), then one figure per backbone.
localrules:
    norm_analysis,
    magnitude_outputs,


rule norm_analysis:
    input:
        runs=[r["path"] for r in run_records()],
        models=[f"resources/models/{b}.json" for b in BACKBONES],
    output:
        curves=analysis_reports("norm_curves", "norm_curves", "Training curves"),
        histograms=analysis_reports("vocab_norms", "vocab_norms", "Vocabulary norms"),
        other=[f for f in norm_analysis_files() if not f.endswith(".png")],
    log:
        "logs/norm_analysis.log",
    benchmark:
        "benchmarks/norm_analysis.tsv"
    conda:
        DTI_ENV
    params:
        runs=run_records(),
        models={b: f"resources/models/{b}.json" for b in BACKBONES},
        out_dir=lambda wildcards, output: os.path.dirname(os.path.dirname(output.curves[0])),
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/norm_analysis.py"


rule magnitude_sweep:
    input:
        runs=lambda wc: [r["path"] for r in sweep_runs(wc)],
        subjects=list(subject_files(SUBJECTS).values()),
        model=model_json,
    output:
        manifest=run_path("magnitude/{backbone}/manifest.parquet"),
    log:
        "logs/magnitude_sweep/{backbone}.log",
    benchmark:
        "benchmarks/magnitude_sweep/{backbone}.tsv"
    conda:
        DTI_ENV
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(120),
    params:
        runs=sweep_runs,
        subjects=subject_files(SUBJECTS),
        labels=lambda wc: {"backbone": wc.backbone},
        sweep=MAGNITUDE,
        sample=sample_settings,
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/magnitude_sweep.py"


rule score_magnitude_sweep:
    input:
        manifest=run_path("magnitude/{backbone}/manifest.parquet"),
        subjects=list(subject_files(SUBJECTS).values()),
        metrics="resources/metrics.json",
        tiny_metrics=lambda wc: list(analysis_tiny_metrics().values()),
    output:
        run_path("magnitude/{backbone}/fidelity.parquet"),
    log:
        "logs/score_magnitude_sweep/{backbone}.log",
    benchmark:
        "benchmarks/score_magnitude_sweep/{backbone}.tsv"
    conda:
        DTI_ENV
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(30),
    params:
        subjects=subject_files(SUBJECTS),
        metrics=lambda wc: analysis_metrics(),
        tiny_metrics=lambda wc: analysis_tiny_metrics(),
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/score_magnitude_sweep.py"


rule magnitude_outputs:
    input:
        [run_path(f"magnitude/{b}/fidelity.parquet") for b in SWEEP_BACKBONES],
    output:
        figures=analysis_reports("magnitude", "magnitude", "Magnitude sweep", SWEEP_BACKBONES),
        other=[f for f in magnitude_files() if not f.endswith(".png")],
    log:
        "logs/magnitude_outputs.log",
    benchmark:
        "benchmarks/magnitude_outputs.tsv"
    conda:
        DTI_ENV
    params:
        scores={b: run_path(f"magnitude/{b}/fidelity.parquet") for b in SWEEP_BACKBONES},
        out_dir=lambda wildcards, output: os.path.dirname(output.figures[0]),
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/magnitude_outputs.py"

# One GPU job per sample manifest: every image against the subject's reference photos (features
# computed once) and its prompt with the class noun.


rule score:
    input:
        manifest="results/{backbone}/{method}/{subject}/samples/manifest.parquet",
        subject=subject_json,
        metrics="resources/metrics.json",
    output:
        "results/{backbone}/{method}/{subject}/scores.parquet",
    params:
        metrics=METRICS,
        code_version=CODE_VERSION,
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(30),
    log:
        "logs/score/{backbone}/{method}/{subject}.log",
    benchmark:
        "benchmarks/score/{backbone}/{method}/{subject}.tsv"
    script:
        "../workflow/scripts/score.py"

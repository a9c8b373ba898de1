# One GPU job per sample manifest: every image against the subject's reference photos (features
# computed once; multiplied by their masks when data.reference_masks is set) and its prompt with the
# class noun.


rule score:
    input:
        manifest="results/{backbone}/{method}/{subject}/samples/step-{step}/manifest.parquet",
        subject=subject_json,
        metrics="resources/metrics.json",
        tiny_metrics=list(TINY_METRICS.values()),
        masks=reference_masks,
    output:
        "results/{backbone}/{method}/{subject}/scores/step-{step}.parquet",
    log:
        "logs/score/{backbone}/{method}/{subject}/step-{step}.log",
    benchmark:
        "benchmarks/score/{backbone}/{method}/{subject}/step-{step}.tsv"
    conda:
        DTI_ENV
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(15),
    params:
        metrics=METRICS,
        tiny_metrics=TINY_METRICS,
        mask_dir=mask_dir,
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/score.py"

# One GPU job per (backbone, method, subject): every prompt set x prompt x seed, batched, one model load.


rule sample:
    input:
        run=trained_run,
        subject=subject_json,
        model=model_json,
    output:
        manifest="results/{backbone}/{method}/{subject}/samples/manifest.parquet",
    params:
        labels=lambda wc: {"backbone": wc.backbone, "method": wc.method, "subject": wc.subject},
        prompt_sets=prompt_sets_for,
        seeds=SEEDS,
        sample=sample_settings,
        rescale_to=rescale_to,
        code_version=CODE_VERSION,
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(60),
    log:
        "logs/sample/{backbone}/{method}/{subject}.log",
    benchmark:
        "benchmarks/sample/{backbone}/{method}/{subject}.tsv"
    script:
        "../workflow/scripts/sample.py"

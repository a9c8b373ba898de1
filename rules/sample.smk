# One GPU job per (backbone, method, subject, checkpoint): every prompt set x prompt x seed, batched, one
# model load. A checkpoint is a training step whose embedding training saved (eval_steps), so a new step
# adds sample and score jobs and never retrains.


rule sample:
    input:
        run=trained_run,
        subject=subject_json,
        model=model_json,
        dti_prompts=dti_prompts_file,
    output:
        manifest="results/{backbone}/{method}/{subject}/samples/step-{step}/manifest.parquet",
    log:
        "logs/sample/{backbone}/{method}/{subject}/step-{step}.log",
    benchmark:
        "benchmarks/sample/{backbone}/{method}/{subject}/step-{step}.tsv"
    conda:
        DTI_ENV
    threads: 1
    resources:
        gpu=1,
        # A chain's submission asks for the sum of its jobs' times (one GPU, one job after the other): with
        # 8 checkpoints x (TI + TI-rescaled) that is 16 sample jobs, so each asks for what it needs (what an
        # SDXL subject's sampling takes: bench/README.md), not an hour.
        runtime=gpu_runtime(30),
    params:
        labels=lambda wc: {"backbone": wc.backbone, "method": wc.method, "subject": wc.subject},
        step=lambda wc: int(wc.step),
        prompt_sets=prompt_sets_for,
        seeds=SEEDS,
        sample=sample_settings,
        rescale_to=rescale_to,
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/sample.py"

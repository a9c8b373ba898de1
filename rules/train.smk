# One GPU job per (backbone, trained method, subject). checkpoints/state.safetensors is not an output, so a
# preempted job's state survives and the rerun resumes from it.


rule train:
    input:
        subject=subject_json,
        model=model_json,
        start=start_token,
    output:
        run="results/{backbone}/{method}/{subject}/run.json",
        embeds="results/{backbone}/{method}/{subject}/learned_embeds.safetensors",
    log:
        "logs/train/{backbone}/{method}/{subject}.log",
    benchmark:
        "benchmarks/train/{backbone}/{method}/{subject}.tsv"
    conda:
        DTI_ENV
    threads: 1
    resources:
        gpu=1,
        runtime=gpu_runtime(120),
    params:
        hyper_parameters=method_hp,
        train=train_settings,
        seed=config["training"]["seed"],
        placeholder=placeholder,
        initializer=initializer,
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/train.py"

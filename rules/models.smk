# Backbones and metric models are made available on the login node (local rules, the only ones that
# may touch the network); GPU jobs then load them offline.
localrules:
    tiny_model,
    tiny_metric_models,
    fetch_model,
    fetch_metrics,


rule tiny_model:
    output:
        directory("resources/models/tiny/{family}"),
    log:
        "logs/tiny_model/{family}.log",
    benchmark:
        "benchmarks/tiny_model/{family}.tsv"
    conda:
        DTI_ENV
    script:
        "../workflow/scripts/tiny_model.py"


rule fetch_model:
    input:
        tiny=tiny_model_dir,
    output:
        "resources/models/{backbone}.json",
    log:
        "logs/fetch_model/{backbone}.log",
    benchmark:
        "benchmarks/fetch_model/{backbone}.tsv"
    conda:
        DTI_ENV
    params:
        model=lambda wc: BACKBONES[wc.backbone]["model"],
        family=lambda wc: BACKBONES[wc.backbone]["family"],
        revision=lambda wc: BACKBONES[wc.backbone].get("revision"),
    script:
        "../workflow/scripts/fetch_model.py"


# One job builds every tiny metric model the config asks for: each takes well under a second once the
# libraries are imported, and the imports are most of a job's time.
rule tiny_metric_models:
    output:
        [directory(folder) for folder in TINY_METRICS.values()],
    log:
        "logs/tiny_metric_models.log",
    benchmark:
        "benchmarks/tiny_metric_models.tsv"
    conda:
        DTI_ENV
    params:
        folders=TINY_METRICS,
    script:
        "../workflow/scripts/tiny_metric_models.py"


rule fetch_metrics:
    input:
        tiny=list(TINY_METRICS.values()),
    output:
        "resources/metrics.json",
    log:
        "logs/fetch_metrics.log",
    benchmark:
        "benchmarks/fetch_metrics.tsv"
    conda:
        DTI_ENV
    params:
        metrics=METRICS,
        tiny_metrics=TINY_METRICS,
    script:
        "../workflow/scripts/fetch_metrics.py"

# Backbones and metric models are made available on the login node (local rules, the only ones that
# may touch the network); GPU jobs then load them offline.
localrules:
    tiny_model,
    tiny_metric_model,
    fetch_model,
    fetch_metrics,


rule tiny_model:
    output:
        directory("resources/models/tiny/{family}"),
    log:
        "logs/tiny_model/{family}.log",
    benchmark:
        "benchmarks/tiny_model/{family}.tsv"
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
    params:
        model=lambda wc: BACKBONES[wc.backbone]["model"],
        family=lambda wc: BACKBONES[wc.backbone]["family"],
        revision=lambda wc: BACKBONES[wc.backbone].get("revision"),
    script:
        "../workflow/scripts/fetch_model.py"


rule tiny_metric_model:
    output:
        directory("resources/metrics/tiny/{metric_family}"),
    log:
        "logs/tiny_metric_model/{metric_family}.log",
    benchmark:
        "benchmarks/tiny_metric_model/{metric_family}.tsv"
    script:
        "../workflow/scripts/tiny_metric_model.py"


rule fetch_metrics:
    input:
        tiny=list(TINY_METRICS.values()),
    output:
        "resources/metrics.json",
    log:
        "logs/fetch_metrics.log",
    benchmark:
        "benchmarks/fetch_metrics.tsv"
    params:
        metrics=METRICS,
        tiny_metrics=TINY_METRICS,
    script:
        "../workflow/scripts/fetch_metrics.py"

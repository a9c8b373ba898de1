"""Snakemake adapter: build a tiny random transformers metric model (offline demo and tests)."""
from dti.metrics.tiny import write_tiny_metric_model
from dti.pipeline import lighten_gc, redirect_output

lighten_gc()
redirect_output(snakemake.log[0])
write_tiny_metric_model(snakemake.wildcards.metric_family, snakemake.output[0])

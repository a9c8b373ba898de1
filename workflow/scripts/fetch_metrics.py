"""Snakemake adapter: build (and, for pretrained ones, download) every metric model once."""
from dti.pipeline import fetch_metrics, lighten_gc, redirect_output

lighten_gc()
redirect_output(snakemake.log[0])
fetch_metrics(snakemake.output[0], metric_specs=snakemake.params.metrics, tiny_dirs=snakemake.params.tiny_metrics)

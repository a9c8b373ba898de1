"""Snakemake adapter: build (and, for pretrained ones, download) every metric model once."""
from dti.jobs import run_job
from dti.pipeline import fetch_metrics

run_job(snakemake, fetch_metrics, snakemake.output[0], metric_specs=snakemake.params.metrics,
        tiny_dirs=snakemake.params.tiny_metrics)

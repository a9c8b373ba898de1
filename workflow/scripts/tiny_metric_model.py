"""Snakemake adapter: build a tiny random transformers metric model (offline demo and tests)."""
from dti.jobs import run_job
from dti.metrics.tiny import write_tiny_metric_model

run_job(snakemake, write_tiny_metric_model, snakemake.wildcards.metric_family, snakemake.output[0])

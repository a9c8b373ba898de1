"""Snakemake adapter: build the tiny random metric models (offline demo and tests)."""
from dti.jobs import run_job
from dti.metrics.tiny import write_tiny_metric_models

run_job(snakemake, write_tiny_metric_models, snakemake.params.folders)

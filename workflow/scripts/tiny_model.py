"""Snakemake adapter: build a tiny random pipeline of one family (offline demo and tests)."""
from dti.backbones.catalog import write_tiny_model
from dti.jobs import run_job

run_job(snakemake, write_tiny_model, snakemake.wildcards.family, snakemake.output[0])

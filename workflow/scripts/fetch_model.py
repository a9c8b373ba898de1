"""Snakemake adapter: make one backbone available offline and record where it lives."""
from dti.jobs import run_job
from dti.pipeline import fetch_model

run_job(snakemake, fetch_model, snakemake.output[0], model=snakemake.params.model, family=snakemake.params.family,
        revision=snakemake.params.revision, tiny_dir=next(iter(snakemake.input.tiny), None))

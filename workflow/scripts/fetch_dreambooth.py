"""Snakemake adapter: verify a local DreamBooth copy, or download the pinned release."""
from dti.jobs import run_job
from dti.pipeline import fetch_dataset

run_job(snakemake, fetch_dataset, snakemake.output.marker, source=snakemake.params.source, dest=snakemake.params.dest)

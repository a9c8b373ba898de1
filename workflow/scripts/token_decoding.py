"""Snakemake adapter: what a text encoder that is a language model says about one backbone's tokens."""
from dti.analysis.mechanism import write_decoding
from dti.jobs import run_job

run_job(snakemake, write_decoding, snakemake.input.model, snakemake.params.runs, snakemake.output.table, gpu=True,
        labels=snakemake.params.labels)

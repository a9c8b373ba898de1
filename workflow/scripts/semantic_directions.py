"""Snakemake adapter: every trained token of one backbone among the vocabulary's unit directions."""
from dti.analysis.mechanism import write_directions
from dti.jobs import run_job

run_job(snakemake, write_directions, snakemake.input.model, snakemake.params.runs, snakemake.params.out_dir,
        gpu=True, labels=snakemake.params.labels, **snakemake.params.directions)

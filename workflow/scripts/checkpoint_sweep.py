"""Snakemake adapter: the scores over training checkpoints."""
from dti.jobs import run_job
from dti.report import write_checkpoint_sweep

run_job(snakemake, write_checkpoint_sweep, list(snakemake.input.scores), snakemake.params.runs, snakemake.params.stem)

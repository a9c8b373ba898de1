"""Snakemake adapter: the figure of the scores over training checkpoints, from the over_steps table."""
from dti.jobs import run_job
from dti.report import write_checkpoint_sweep

run_job(snakemake, write_checkpoint_sweep, snakemake.input[0], snakemake.params.stem)

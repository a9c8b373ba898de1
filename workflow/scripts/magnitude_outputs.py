"""Snakemake adapter: one magnitude-sweep figure per backbone, with its numbers."""
from dti.analysis.magnitude import write_sweep_outputs
from dti.jobs import run_job

run_job(snakemake, write_sweep_outputs, snakemake.params.scores, snakemake.params.out_dir)

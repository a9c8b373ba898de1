"""Snakemake adapter: the interpolation table, curves and strips from every pair's scores."""
from dti.analysis.interpolation import write_outputs
from dti.jobs import run_job

run_job(snakemake, write_outputs, list(snakemake.input.scores), snakemake.params.subjects, snakemake.params.out_dir)

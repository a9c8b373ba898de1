"""Snakemake adapter: training curves and vocabulary-norm histograms, per backbone."""
from dti.analysis.norms import write_norm_analysis
from dti.jobs import run_job

run_job(snakemake, write_norm_analysis, snakemake.params.runs, snakemake.params.models, snakemake.params.out_dir)

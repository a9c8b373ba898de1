"""Snakemake adapter: every trained token of one backbone rendered at several multiples of m."""
from dti.analysis.magnitude import render_sweep
from dti.jobs import run_job

run_job(snakemake, render_sweep, snakemake.params.runs, snakemake.params.subjects, snakemake.input.model,
        snakemake.output.manifest, gpu=True, labels=snakemake.params.labels, sample=snakemake.params.sample,
        **snakemake.params.sweep)

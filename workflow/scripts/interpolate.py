"""Snakemake adapter: one pair's interpolated embeddings and images, every method and path."""
from dti.analysis.interpolation import render_pair
from dti.jobs import run_job

params = snakemake.params
run_job(snakemake, render_pair, params.runs, snakemake.input.model, snakemake.output.manifest, gpu=True,
        pair=snakemake.wildcards.pair, labels=params.labels, schemes=params.schemes, t=params.t,
        prompts=params.prompts, seeds=params.seeds, sample=params.sample, neutral=params.neutral)

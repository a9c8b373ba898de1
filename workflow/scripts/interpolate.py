"""Snakemake adapter: one pair's interpolated embeddings and images, every method and path."""
from dti.gpu_slots import claim_gpu
from dti.interpolation import render_pair
from dti.pipeline import lighten_gc, redirect_output, set_threads, work_offline

lighten_gc()
work_offline()
redirect_output(snakemake.log[0])
set_threads(snakemake.threads)
with claim_gpu():
    render_pair(snakemake.params.runs, snakemake.input.model, snakemake.output.manifest, pair=snakemake.wildcards.pair,
                labels=snakemake.params.labels, schemes=snakemake.params.schemes, t=snakemake.params.t,
                prompts=snakemake.params.prompts, seeds=snakemake.params.seeds, sample=snakemake.params.sample,
                neutral=snakemake.params.neutral)

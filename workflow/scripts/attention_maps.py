"""Snakemake adapter: the denoiser's cross-attention to each token of one backbone, as trained and rescaled."""
from dti.analysis.mechanism import write_attention
from dti.jobs import run_job

attention = snakemake.params.attention
run_job(snakemake, write_attention, snakemake.input.model, snakemake.params.runs, snakemake.params.out_stem,
        gpu=True, labels=snakemake.params.labels, prompts=attention["prompts"], scales=attention["scales"],
        seeds=attention["seeds"], sample=snakemake.params.sample)

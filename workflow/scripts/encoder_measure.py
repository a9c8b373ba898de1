"""Snakemake adapter: the residual-update ratio or the contextualization distance of one backbone's tokens."""
from dti.analysis.mechanism import write_encoder_measure
from dti.jobs import run_job

run_job(snakemake, write_encoder_measure, snakemake.input.model, snakemake.params.runs, snakemake.params.out_stem,
        gpu=True, measure=snakemake.params.measure, labels=snakemake.params.labels, scales=snakemake.params.scales,
        templates=snakemake.params.templates)

"""Snakemake adapter: the residual-update ratio and the contextualization distance of one backbone's tokens."""
from dti.analysis.mechanism import write_encoder_measures
from dti.jobs import run_job

params = snakemake.params
run_job(snakemake, write_encoder_measures, snakemake.input.model, params.runs, params.residual_stem,
        params.context_stem, gpu=True, labels=params.labels, scales=params.scales, templates=params.templates)

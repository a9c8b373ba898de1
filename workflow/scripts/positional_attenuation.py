"""Snakemake adapter: the probe's accuracy on every trained token of one backbone, as trained and rescaled."""
from dti.analysis.mechanism import write_positional
from dti.jobs import run_job

run_job(snakemake, write_positional, snakemake.input.probe, snakemake.input.model, snakemake.params.runs,
        snakemake.params.out_stem, gpu=True, labels=snakemake.params.labels, scales=snakemake.params.scales)

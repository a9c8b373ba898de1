"""Snakemake adapter: generate one synthetic subject's photos."""
from dti.jobs import run_job
from dti.pipeline import synthesize_subject

run_job(snakemake, synthesize_subject, list(snakemake.output), name=snakemake.wildcards.subject,
        kind=snakemake.params.kind, size=snakemake.params.size, seed=snakemake.params.seed)

"""Snakemake adapter: the position probe of each CLIP text encoder of one backbone, trained and saved."""
from dti.analysis.mechanism import write_probes
from dti.jobs import run_job

run_job(snakemake, write_probes, snakemake.input.model, snakemake.output[0], gpu=True, **snakemake.params.probe)

"""Snakemake adapter: subject and text fidelity of one backbone's magnitude sweep."""
from dti.analysis.magnitude import score_sweep
from dti.jobs import run_job

run_job(snakemake, score_sweep, snakemake.input.manifest, snakemake.params.subjects, snakemake.output[0], gpu=True,
        metric_specs=snakemake.params.metrics, tiny_dirs=snakemake.params.tiny_metrics)

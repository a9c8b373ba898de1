"""Snakemake adapter: score one manifest's images with every enabled metric."""
from dti.jobs import run_job
from dti.pipeline import score_subject

run_job(snakemake, score_subject, snakemake.input.manifest, snakemake.input.subject, snakemake.output[0], gpu=True,
        metric_specs=snakemake.params.metrics, tiny_dirs=snakemake.params.tiny_metrics,
        mask_dir=snakemake.params.mask_dir)

"""Snakemake adapter: one pair's images against both subjects' photos and the neutral prompt."""
from dti.analysis.interpolation import score_pair
from dti.jobs import run_job

run_job(snakemake, score_pair, snakemake.input.manifest, snakemake.input.a, snakemake.input.b, snakemake.output[0],
        gpu=True, metric_specs=snakemake.params.metrics, tiny_dirs=snakemake.params.tiny_metrics)

"""Snakemake adapter: one pair's images against both subjects' photos and the neutral prompt."""
from dti.gpu_slots import claim_gpu
from dti.interpolation import score_pair
from dti.pipeline import lighten_gc, redirect_output, set_threads, work_offline

lighten_gc()
work_offline()
redirect_output(snakemake.log[0])
set_threads(snakemake.threads)
with claim_gpu():
    score_pair(snakemake.input.manifest, snakemake.input.a, snakemake.input.b, snakemake.output[0],
               metric_specs=snakemake.params.metrics,
               tiny_dirs=snakemake.params.tiny_metrics)

"""Snakemake adapter: score one manifest's images with every enabled metric."""
from dti.gpu_slots import claim_gpu
from dti.pipeline import lighten_gc, redirect_output, score_subject, set_threads, work_offline

lighten_gc()
work_offline()
redirect_output(snakemake.log[0])
set_threads(snakemake.threads)
with claim_gpu():
    score_subject(snakemake.input.manifest, snakemake.input.subject, snakemake.output[0],
                  metric_specs=snakemake.params.metrics, tiny_dirs=snakemake.params.tiny_metrics,
                  mask_dir=snakemake.params.mask_dir)

"""Snakemake adapter: subject and text fidelity of one backbone's magnitude sweep."""
from dti.analysis.magnitude import score_sweep
from dti.gpu_slots import claim_gpu
from dti.pipeline import lighten_gc, redirect_output, set_threads, work_offline

lighten_gc()
work_offline()
redirect_output(snakemake.log[0])
set_threads(snakemake.threads)
with claim_gpu():
    score_sweep(snakemake.input.manifest, snakemake.params.subjects, snakemake.output[0],
                metric_specs=snakemake.params.metrics,
                tiny_dirs=snakemake.params.tiny_metrics)

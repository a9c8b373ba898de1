"""Snakemake adapter: every trained token of one backbone rendered at several multiples of m."""
from dti.analysis.magnitude import render_sweep
from dti.gpu_slots import claim_gpu
from dti.pipeline import lighten_gc, redirect_output, set_threads, work_offline

lighten_gc()
work_offline()
redirect_output(snakemake.log[0])
set_threads(snakemake.threads)
with claim_gpu():
    render_sweep(snakemake.params.runs, snakemake.params.subjects, snakemake.input.model, snakemake.output.manifest,
                 labels=snakemake.params.labels, sample=snakemake.params.sample, **snakemake.params.sweep)

"""Snakemake adapter: one magnitude-sweep figure per backbone, with its numbers."""
from dti.analysis.magnitude import write_sweep_outputs
from dti.pipeline import lighten_gc, redirect_output

lighten_gc()
redirect_output(snakemake.log[0])
write_sweep_outputs(snakemake.params.scores, snakemake.params.out_dir)

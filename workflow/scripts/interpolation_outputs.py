"""Snakemake adapter: the interpolation table, curves and strips from every pair's scores."""
from dti.interpolation import write_outputs
from dti.pipeline import lighten_gc, redirect_output

lighten_gc()
redirect_output(snakemake.log[0])
write_outputs(list(snakemake.input.scores), snakemake.params.subjects, snakemake.params.out_dir)

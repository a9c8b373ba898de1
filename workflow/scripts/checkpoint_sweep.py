"""Snakemake adapter: the scores over training checkpoints."""
from dti.pipeline import lighten_gc, redirect_output
from dti.report import write_checkpoint_sweep

lighten_gc()
redirect_output(snakemake.log[0])
write_checkpoint_sweep(list(snakemake.input.scores), snakemake.params.runs, snakemake.params.stem)

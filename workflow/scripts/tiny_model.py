"""Snakemake adapter: build a tiny random pipeline of one family (offline demo and tests)."""
from dti.pipeline import lighten_gc, redirect_output
from dti.tiny import write_tiny_model

lighten_gc()
redirect_output(snakemake.log[0])
write_tiny_model(snakemake.wildcards.family, snakemake.output[0])

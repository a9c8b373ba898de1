"""Snakemake adapter: make one backbone available offline and record where it lives."""
from dti.pipeline import fetch_model, lighten_gc, redirect_output

lighten_gc()
redirect_output(snakemake.log[0])
tiny = list(snakemake.input.tiny)
fetch_model(snakemake.output[0], model=snakemake.params.model, family=snakemake.params.family,
            revision=snakemake.params.revision, tiny_dir=tiny[0] if tiny else None)

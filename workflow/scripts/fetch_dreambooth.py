"""Snakemake adapter: verify a local DreamBooth copy, or download the pinned release."""
from dti.pipeline import fetch_dataset, lighten_gc, redirect_output

lighten_gc()
redirect_output(snakemake.log[0])
fetch_dataset(snakemake.output.marker, source=snakemake.params.source, dest=snakemake.params.dest)

"""Snakemake adapter: generate one synthetic subject's photos."""
from dti.pipeline import lighten_gc, redirect_output, synthesize_subject

lighten_gc()
redirect_output(snakemake.log[0])
synthesize_subject(list(snakemake.output), name=snakemake.wildcards.subject, kind=snakemake.params.kind,
                   size=snakemake.params.size, seed=snakemake.params.seed)

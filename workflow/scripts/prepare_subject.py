"""Snakemake adapter: normalize one subject's photos into resources/subjects/{subject}/."""
from dti.pipeline import lighten_gc, prepare, redirect_output

lighten_gc()
redirect_output(snakemake.log[0])
prepare(list(snakemake.input.images), snakemake.output[0], name=snakemake.wildcards.subject,
        class_noun=snakemake.params.class_noun, kind=snakemake.params.kind,
        initializer=snakemake.params.initializer, source=snakemake.params.source)

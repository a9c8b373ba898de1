"""Snakemake adapter: normalize one subject's photos into resources/subjects/{subject}/."""
from dti.jobs import run_job
from dti.pipeline import prepare

run_job(snakemake, prepare, list(snakemake.input.images), snakemake.output[0], name=snakemake.wildcards.subject,
        class_noun=snakemake.params.class_noun, kind=snakemake.params.kind,
        initializer=snakemake.params.initializer, source=snakemake.params.source,
        dataset=next(iter(snakemake.input.dataset), None))

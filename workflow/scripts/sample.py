"""Snakemake adapter: render one prompt set for one trained token."""
from pathlib import Path

from dti.jobs import run_job
from dti.pipeline import sample_subject

params = snakemake.params
run_job(snakemake, sample_subject, str(Path(snakemake.input.run).parent), snakemake.input.model,
        snakemake.input.subject, snakemake.output.manifest, gpu=True, labels=params.labels,
        prompt_sets=params.prompt_sets, seeds=params.seeds, sample=params.sample, step=params.step,
        rescale_to=params.rescale_to, dti_prompts=next(iter(snakemake.input.dti_prompts), None))

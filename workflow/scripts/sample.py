"""Snakemake adapter: render one prompt set for one trained token."""
from pathlib import Path

from dti.gpu_slots import claim_gpu
from dti.pipeline import lighten_gc, redirect_output, sample_subject, set_threads, work_offline

lighten_gc()
work_offline()
redirect_output(snakemake.log[0])
set_threads(snakemake.threads)
with claim_gpu():
    sample_subject(str(Path(snakemake.input.run).parent), snakemake.input.model, snakemake.input.subject,
                   snakemake.output.manifest, labels=snakemake.params.labels, prompt_sets=snakemake.params.prompt_sets,
                   seeds=snakemake.params.seeds, sample=snakemake.params.sample, step=snakemake.params.step,
                   rescale_to=snakemake.params.rescale_to, dti_prompts=next(iter(snakemake.input.dti_prompts), None))

"""Snakemake adapter: train one method on one subject with one backbone."""
from pathlib import Path

from dti.gpu_slots import claim_gpu
from dti.pipeline import lighten_gc, redirect_output, set_threads, train_subject, work_offline

lighten_gc()
work_offline()
redirect_output(snakemake.log[0])
set_threads(snakemake.threads)
with claim_gpu():
    train_subject(snakemake.input.subject, snakemake.input.model, str(Path(snakemake.output.run).parent),
                  method=snakemake.wildcards.method, hyper_parameters=snakemake.params.hyper_parameters,
                  train=snakemake.params.train, seed=snakemake.params.seed, placeholder=snakemake.params.placeholder,
                  initializer=snakemake.params.initializer)

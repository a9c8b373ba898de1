"""Snakemake adapter: train one method on one subject with one backbone."""
from pathlib import Path

from dti.jobs import run_job
from dti.pipeline import train_subject

params = snakemake.params
start = snakemake.input.get("start")  # a second stage's first run's token, or nothing
run_job(snakemake, train_subject, snakemake.input.subject, snakemake.input.model,
        str(Path(snakemake.output.run).parent), gpu=True, method=snakemake.wildcards.method,
        hyper_parameters=params.hyper_parameters, train=params.train, seed=params.seed,
        placeholder=params.placeholder, initializer=params.initializer,
        start_from=str(Path(start).parent) if start else None)

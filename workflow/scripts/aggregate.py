"""Snakemake adapter: every score file and run record -> the benchmark tables."""
from dti.jobs import run_job
from dti.pipeline import aggregate

run_job(snakemake, aggregate, list(snakemake.input.scores), snakemake.params.runs, snakemake.params.out_dir,
        n_boot=snakemake.params.n_boot, seed=snakemake.params.seed,
        summary_prompt_set=snakemake.params.summary["prompt_set"], summary_step=snakemake.params.summary["step"])

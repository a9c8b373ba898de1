"""Snakemake adapter: one grid of samples (prompt x method and seed) per backbone and subject."""
from dti.jobs import run_job
from dti.report import write_sample_grids

grid = snakemake.params.grid
run_job(snakemake, write_sample_grids, snakemake.params.manifests, snakemake.params.subjects,
        snakemake.params.out_dir, methods=snakemake.params.methods, prompts_per_set=grid["prompts"],
        seeds=grid["seeds"], thumb=grid["thumb"])

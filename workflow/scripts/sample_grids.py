"""Snakemake adapter: one grid of samples (prompt x method and seed) per backbone and subject."""
from dti.pipeline import lighten_gc, redirect_output
from dti.report import write_sample_grids

lighten_gc()
redirect_output(snakemake.log[0])
grid = snakemake.params.grid
write_sample_grids(snakemake.params.manifests, snakemake.params.subjects, snakemake.params.out_dir,
                   methods=snakemake.params.methods, prompts_per_set=grid["prompts"], seeds=grid["seeds"],
                   thumb=grid["thumb"])

"""Snakemake adapter: every score file and run record -> the benchmark tables."""
from dti.pipeline import aggregate, lighten_gc, redirect_output

lighten_gc()
redirect_output(snakemake.log[0])
aggregate(list(snakemake.input.scores), snakemake.params.runs, snakemake.params.out_dir,
          n_boot=snakemake.params.n_boot, seed=snakemake.params.seed,
          summary_prompt_set=snakemake.params.summary["prompt_set"], summary_step=snakemake.params.summary["step"])

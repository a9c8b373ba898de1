"""Snakemake adapter: verify a local copy of the DTI authors' prompts.py, or download the pinned one."""
from dti.dti_prompts import fetch_dti_prompts
from dti.pipeline import lighten_gc, redirect_output

lighten_gc()
redirect_output(snakemake.log[0])
fetch_dti_prompts(snakemake.output[0], source=snakemake.params.source)

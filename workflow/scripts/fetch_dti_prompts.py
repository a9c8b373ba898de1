"""Snakemake adapter: verify a local copy of the DTI authors' prompts.py, or download the pinned one."""
from dti.dti_prompts import fetch_dti_prompts
from dti.jobs import run_job

run_job(snakemake, fetch_dti_prompts, snakemake.output[0], source=snakemake.params.source)

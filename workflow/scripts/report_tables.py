"""Snakemake adapter: the result tables as HTML pages for the report."""
from dti.jobs import run_job
from dti.report import write_html_tables

run_job(snakemake, write_html_tables, snakemake.params.tables, snakemake.params.out_dir, notes=snakemake.params.notes)

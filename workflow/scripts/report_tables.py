"""Snakemake adapter: the result tables as HTML pages for the report."""
from dti.pipeline import lighten_gc, redirect_output
from dti.report import write_html_tables

lighten_gc()
redirect_output(snakemake.log[0])
write_html_tables(snakemake.params.tables, snakemake.params.out_dir, notes=snakemake.params.notes)

"""Snakemake adapter: training curves and vocabulary-norm histograms, per backbone."""
from dti.analysis.norms import write_norm_analysis
from dti.pipeline import lighten_gc, redirect_output

lighten_gc()
redirect_output(snakemake.log[0])
write_norm_analysis(snakemake.params.runs, snakemake.params.models, snakemake.params.out_dir)

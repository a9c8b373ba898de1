# All scores and learned-token norms -> Parquet + LaTeX tables (cheap: runs on the login node).
localrules:
    aggregate,


rule aggregate:
    input:
        scores=score_files(),
        runs=[r["path"] for r in run_records()],
    output:
        table_files(),
    log:
        "logs/aggregate.log",
    benchmark:
        "benchmarks/aggregate.tsv"
    conda:
        DTI_ENV
    params:
        runs=run_records(),
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
        n_boot=config["aggregate"]["n_boot"],
        seed=config["aggregate"]["seed"],
        summary=SUMMARY,
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/aggregate.py"

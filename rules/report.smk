# The report's own files (local jobs): per-subject sample grids, the result tables as HTML pages, and the
# figure of the scores over training checkpoints. `snakemake --report report.html` then gathers them with every analysis
# figure (the outputs marked report() in all rules) into one self-contained HTML page.
localrules:
    sample_grids,
    report_tables,
    checkpoint_sweep,


rule sample_grids:
    input:
        manifests=[m["path"] for m in sample_manifests()],
        subjects=list(subject_files(SUBJECTS).values()),
    output:
        grids=grid_reports(),
        pdf=grid_files("pdf"),
    log:
        "logs/sample_grids.log",
    benchmark:
        "benchmarks/sample_grids.tsv"
    conda:
        DTI_ENV
    params:
        manifests=sample_manifests(),
        subjects=subject_files(SUBJECTS),
        methods=list(METHODS),
        grid=GRID,
        out_dir=lambda wildcards, output: os.path.dirname(os.path.dirname(output.grids[0])),
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/sample_grids.py"


# Each page's caption is its LaTeX table's (the .tex beside the Parquet file). The report lists results by their
# labels' text: the numbered ones keep table_pages' order, the summary first.
rule report_tables:
    input:
        tables=list(table_pages().values()),
        latex=[os.path.splitext(path)[0] + ".tex" for path in table_pages().values()],
    output:
        [
            report(
                run_path(f"report/tables/{name}.html"),
                caption=f"../workflow/report/{TABLE_CAPTIONS.get(name, 'tables')}.rst",
                category=REPORT_SECTIONS["Tables"],
                labels={"table": f"{number:02d} {name.replace('_', ' ')}"},
            )
            for number, name in enumerate(table_pages(), start=1)
        ],
    log:
        "logs/report_tables.log",
    benchmark:
        "benchmarks/report_tables.tsv"
    conda:
        DTI_ENV
    params:
        tables=table_pages(),
        notes=TABLE_NOTES,
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/report_tables.py"


# The figure reads aggregate's over_steps table, the one home of the scores over checkpoints.
rule checkpoint_sweep:
    input:
        run_path("tables/over_steps.parquet"),
    output:
        figure=report(
            run_path("analysis/checkpoints.png"),
            caption="../workflow/report/checkpoints.rst",
            category=REPORT_SECTIONS["Checkpoints"],
            labels={"figure": "scores over training steps"},
        ),
        pdf=run_path("analysis/checkpoints.pdf"),
    log:
        "logs/checkpoint_sweep.log",
    benchmark:
        "benchmarks/checkpoint_sweep.tsv"
    conda:
        DTI_ENV
    params:
        stem=lambda wildcards, output: os.path.splitext(output.figure)[0],
        code_version=CODE_VERSION,
    script:
        "../workflow/scripts/checkpoint_sweep.py"

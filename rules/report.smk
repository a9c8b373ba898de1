# The report's own files (local jobs): per-subject sample grids, the result tables as HTML pages, and the
# scores over training checkpoints. `snakemake --report report.html` then gathers them with every analysis
# figure (the outputs marked report() in all rules) into one self-contained HTML page.
localrules:
    sample_grids,
    report_tables,
    checkpoint_sweep,


GRID = {"prompts": 2, "seeds": 2, "thumb": 192, **(config.get("report") or {}).get("grid", {})}
TABLE_NOTES = {
    "interpolation": "Smoothness of concept interpolation per method and path (docs/analysis.md); "
    "LaTeX: results/interpolation/summary.tex.",
}


def sample_manifests():
    return [{"path": f"results/{b}/{m}/{s}/samples/manifest.parquet", "backbone": b, "method": m, "subject": s}
            for b in BACKBONES for m in METHODS for s in SUBJECTS]


def grid_files(ext):
    return [f"results/report/grids/{b}/{s}.{ext}" for b in BACKBONES for s in SUBJECTS]


def table_pages():
    """{page name: Parquet file} of every table the report shows."""
    pages = {name: f"results/tables/{name}.parquet" for name in TABLE_NAMES}
    if PAIRS:
        pages["interpolation"] = "results/interpolation/summary.parquet"
    return pages


def report_files():
    return [*grid_files("png"), *grid_files("pdf"), *[f"results/report/tables/{n}.html" for n in table_pages()],
            *[f"results/analysis/checkpoints.{ext}" for ext in ("png", "pdf", "parquet")]]


rule sample_grids:
    input:
        manifests=[m["path"] for m in sample_manifests()],
        subjects=[f"resources/subjects/{s}/subject.json" for s in SUBJECTS],
    output:
        grids=[report(f, caption="../workflow/report/sample_grid.rst", category="Samples",
                      subcategory=f.split("/")[3], labels={"subject": Path(f).stem, "backbone": f.split("/")[3]})
               for f in grid_files("png")],
        pdf=grid_files("pdf"),
    params:
        manifests=sample_manifests(),
        subjects={s: f"resources/subjects/{s}/subject.json" for s in SUBJECTS},
        methods=list(METHODS),
        grid=GRID,
        out_dir="results/report/grids",
        code_version=CODE_VERSION,
    log:
        "logs/sample_grids.log",
    benchmark:
        "benchmarks/sample_grids.tsv"
    script:
        "../workflow/scripts/sample_grids.py"


rule report_tables:
    input:
        list(table_pages().values()),
    output:
        [report(f"results/report/tables/{name}.html", caption="../workflow/report/tables.rst", category="Tables",
                labels={"table": name}) for name in table_pages()],
    params:
        tables=table_pages(),
        notes=TABLE_NOTES,
        out_dir="results/report/tables",
        code_version=CODE_VERSION,
    log:
        "logs/report_tables.log",
    benchmark:
        "benchmarks/report_tables.tsv"
    script:
        "../workflow/scripts/report_tables.py"


rule checkpoint_sweep:
    input:
        scores=score_files(),
        runs=[r["path"] for r in run_records()],
    output:
        figure=report("results/analysis/checkpoints.png", caption="../workflow/report/checkpoints.rst",
                      category="Checkpoints", labels={"figure": "scores over training steps"}),
        other=[f"results/analysis/checkpoints.{ext}" for ext in ("pdf", "parquet")],
    params:
        runs=run_records(),
        stem="results/analysis/checkpoints",
        code_version=CODE_VERSION,
    log:
        "logs/checkpoint_sweep.log",
    benchmark:
        "benchmarks/checkpoint_sweep.tsv"
    script:
        "../workflow/scripts/checkpoint_sweep.py"

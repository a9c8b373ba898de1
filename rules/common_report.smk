# The report helpers: which images, tables and pages the report rules (rules/report.smk) read and write.
# Functions only: Snakemake's lint keeps functions and rules in separate files.
def sample_manifests():
    """The images of the headline checkpoint (aggregate.summary_step, default the last scored step)."""
    return [
        {
            "path": f"results/{b}/{m}/{s}/samples/step-{SUMMARY['step'][b]}/manifest.parquet",
            "backbone": b,
            "method": m,
            "subject": s,
        }
        for b in BACKBONES
        for m in BACKBONE_METHODS[b]
        for s in SUBJECTS
    ]


def grid_files(ext):
    return [run_path(f"report/grids/{b}/{s}.{ext}") for b in BACKBONES for s in SUBJECTS]


def grid_reports():
    return [
        reported(
            run_path(f"report/grids/{b}/{s}.png"),
            "sample_grid",
            category=REPORT_SECTIONS["Samples"],
            subcategory=b,
            labels={"subject": s, "backbone": b},
        )
        for b in BACKBONES
        for s in SUBJECTS
    ]


def table_pages():
    """{page name: Parquet file} of every table the report shows, in reading order: the summary first, then
    its breakdowns, the scores over checkpoints, the norms, the cost, the ablations, the interpolation (a
    table not named here after them); the report lists them in this order (report_tables' labels)."""
    pages = {name: run_path(f"tables/{name}.parquet") for name in table_names(METHODS)}
    if PAIRS and INTERPOLATION_BACKBONES:
        pages["interpolation"] = run_path("interpolation/summary.parquet")
    order = [
        "summary",
        "by_prompt_set",
        "by_kind",
        "per_subject",
        "per_prompt",
        "over_steps",
        "norms",
        "cost",
        "ablation",
        "interpolation",
    ]
    first = [name for name in order if name in pages]
    return {name: pages[name] for name in [*first, *(n for n in pages if n not in order)]}


# A table whose page needs its own caption in workflow/report/ (the others share tables.rst).
TABLE_CAPTIONS = {"cost": "cost_table"}
# A page's caption is its LaTeX table's (the .tex beside its Parquet file); a table without one shows its note.
TABLE_NOTES = {
    "interpolation": "Smoothness of concept interpolation per method and path (docs/analysis.md).",
}


def report_table_pages():
    """The report's HTML page of each table."""
    return [run_path(f"report/tables/{n}.html") for n in table_pages()]


def report_files():
    return [
        *grid_files("png"),
        *grid_files("pdf"),
        *report_table_pages(),
        *[run_path(f"analysis/checkpoints.{ext}") for ext in ("png", "pdf")],
    ]

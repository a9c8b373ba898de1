# The analyses' settings, checked at planning time (errors name the key), and the helpers their rules call
# (rules/interpolation.smk, analysis.smk). Definitions: docs/analysis.md. Every output here
# depends on the config as a whole, so it lives in the run's folder (run_path: results/runs/{run_name}/).
from dti.analysis import pick_backbones
from dti.analysis.fidelity import pick_metrics
from dti.analysis.magnitude import check_sweep
from dti.analysis.interpolation import parse_interpolation, schemes_for
from dti.methods import token_only
from dti.planning import check_interpolation_pairs, methods_trained_on


def _analysis_backbones(value, where):
    """The backbones an analysis runs on: named among all of `backbones` (null: all), planned on those that
    only_backbones keeps (so a layer such as config/paper-sana.yaml may leave an analysis none)."""
    return [b for b in pick_backbones(value, config["backbones"], where) if b in BACKBONES]


try:
    INTERPOLATION = parse_interpolation(config.get("interpolation"), SUBJECTS, TRAINED_METHODS)
    _sweep = (config.get("analysis") or {}).get("magnitude") or {}
    MAGNITUDE = check_sweep(_sweep) if _sweep.get("enabled", True) else None
    INTERPOLATION_BACKBONES = _analysis_backbones(
        (config.get("interpolation") or {}).get("backbones"), "interpolation.backbones"
    )
    SWEEP_BACKBONES = _analysis_backbones(_sweep.get("backbones"), "analysis.magnitude.backbones")
    if INTERPOLATION.pairs or MAGNITUDE:
        pick_metrics(config["metrics"])
except DtiError as exc:
    _config_error(str(exc))
PAIRS = {pair.name: pair for pair in INTERPOLATION.pairs}
GRID = {"prompts": 2, "seeds": 2, "thumb": 192, **(config.get("report") or {}).get("grid", {})}


# With no pairs, "(?!)" matches nothing.
wildcard_constraints:
    pair=_alternatives(PAIRS) or "(?!)",


def analysis_metrics():
    """Only the two metric families the analyses score with: enabling another one reruns nothing here."""
    return {m.family: METRICS[m.family] for m in pick_metrics(METRICS)}


def analysis_tiny_metrics():
    """The tiny random model folders (`model: tiny`) of those two, built by the tiny_metric_models rule."""
    return {key: path for key, path in TINY_METRICS.items() if key in analysis_metrics()}


def reported(path, caption, **options):
    """`path` marked for `snakemake --report`, captioned by workflow/report/{caption}.rst. (A line that
    starts with `report(` inside a function would read as the `report:` directive to snakefmt.)"""
    return report(path, caption=f"../workflow/report/{caption}.rst", **options)


def subject_files(names):
    return {s: f"resources/subjects/{s}/subject.json" for s in names}


# --- interpolation ---------------------------------------------------------------------------------------
def pair_methods(backbone, pair):
    """The pair's methods that train on this backbone (a backbone's only_methods may leave some out)."""
    return methods_trained_on(PAIRS[pair].methods, BACKBONE_METHODS[backbone])


def pair_runs(wildcards):
    """{method: {"a": run.json, "b": run.json}} of the pair on this backbone."""
    pair = PAIRS[wildcards.pair]
    return {
        m: {
            end: f"{train_dir(wildcards.backbone, m, s)}/run.json"
            for end, s in (("a", pair.a), ("b", pair.b))
        }
        for m in pair_methods(wildcards.backbone, wildcards.pair)
    }


def pair_run_files(wildcards):
    return [path for ends in pair_runs(wildcards).values() for path in ends.values()]


def pair_schemes(wildcards):
    return {
        m: list(schemes_for(get_method(m).on_sphere))
        for m in pair_methods(wildcards.backbone, wildcards.pair)
    }


try:  # every pair interpolates some method on each of its backbones
    check_interpolation_pairs(INTERPOLATION.pairs, INTERPOLATION_BACKBONES, BACKBONE_METHODS)
except DtiError as exc:
    _config_error(str(exc))


def pair_subject(end):
    return lambda wc: f"resources/subjects/{getattr(PAIRS[wc.pair], end)}/subject.json"


def interpolation_fidelity_files():
    return [
        run_path(f"interpolation/{b}/{p}/fidelity.parquet") for b in INTERPOLATION_BACKBONES for p in PAIRS
    ]


def interpolation_figures(kind, ext):
    return [run_path(f"interpolation/{b}/{p}/{kind}.{ext}") for b in INTERPOLATION_BACKBONES for p in PAIRS]


def interpolation_reports(kind):
    """The PNG figures of one kind, marked for the report (labels: backbone and pair)."""
    return [
        reported(
            run_path(f"interpolation/{b}/{p}/{kind}.png"),
            f"interpolation_{kind}",
            category=REPORT_SECTIONS["Interpolation"],
            subcategory={"strip": "Strips", "curves": "Curves"}[kind],
            labels={"backbone": b, "pair": p},
        )
        for b in INTERPOLATION_BACKBONES
        for p in PAIRS
    ]


INTERPOLATION_TABLES = [run_path(f"interpolation/{name}.parquet") for name in ("summary", "paths", "per_t")]


def interpolation_files():
    if not PAIRS or not INTERPOLATION_BACKBONES:
        return []
    figures = [
        f
        for kind in ("curves", "strip")
        for ext in ("png", "pdf", "parquet")
        for f in interpolation_figures(kind, ext)
    ]
    return [*INTERPOLATION_TABLES, run_path("interpolation/summary.tex"), *figures]


# --- norm analysis and magnitude sweep --------------------------------------------------------------------
def backbone_runs(backbone):
    return [r for r in run_records() if r["backbone"] == backbone]


def sweep_runs(wildcards):
    """The backbone's runs of methods whose result is their token alone: rescaling a token that was trained
    beside an adapter, and sampling it without that adapter, measures neither."""
    return [
        {k: r[k] for k in ("path", "method", "subject")}
        for r in backbone_runs(wildcards.backbone)
        if r["method"] in token_only([r["method"]])
    ]


def norm_analysis_files():
    return [
        run_path(f"analysis/{kind}/{b}.{ext}")
        for kind in ("norm_curves", "vocab_norms")
        for b in BACKBONES
        for ext in ("png", "pdf", "parquet")
    ]


def magnitude_files():
    if not MAGNITUDE:
        return []
    return [
        run_path(f"analysis/magnitude/{b}.{ext}")
        for b in SWEEP_BACKBONES
        for ext in ("png", "pdf", "parquet")
    ]


def analysis_files():
    return norm_analysis_files() + magnitude_files()


def analysis_reports(kind, caption, subcategory, backbones=BACKBONES):
    return [
        reported(
            run_path(f"analysis/{kind}/{b}.png"),
            caption,
            category=REPORT_SECTIONS["Norms and directions"],
            subcategory=subcategory,
            labels={"backbone": b},
        )
        for b in backbones
    ]

# The dti benchmark: subjects -> train (DTI, TI, CrossInit) -> sample -> score -> tables.
#   snakemake --cores 2                          # the embedded default (tiny models, CPU)
#   snakemake --configfile config/paper.yaml --profile slurm                         # SDXL, SANA and Wan
#   snakemake --configfile config/paper-sdxl.yaml --profile slurm   # SDXL alone (extends config/paper.yaml)
import os

from snakemake.utils import min_version, validate

min_version("9.0")

# On a cluster Snakemake starts twice more per job (in the sbatch job and in its srun step); lighter
# garbage collection, above all none at exit, makes each start cheaper (bench/gc_settings.py; figures in
# bench/README.md). Every job calls it too (dti.jobs.run_job), and saves more: jobs import torch.
from dti.jobs import lighten_gc

lighten_gc()

from dti.benchmark_config import check_config_files
from dti.config_layers import resolve_extends
from dti.errors import DtiError

# Software: jobs run in the environment Snakemake runs in (the pinned .venv `make demo` installs), or with
# `--sdm conda` in workflow/envs/dti.yaml (every rule names it), or with `--sdm apptainer` in the image the
# config's `container` names, built from workflow/envs/dti.def (docs/environments.md).


# The embedded default, found beside this file also when running with --directory elsewhere. A
# --configfile REPLACES it rather than merging into it: merged, the paper config would inherit the
# default's tiny backbones and synthetic subjects.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# A config may build on another (`extends: PATH`): config/paper-sdxl.yaml is config/paper.yaml with its own
# run name and only_backbones. The chain is merged here, as Snakemake merges --configfile files. Every file
# (each --configfile or the embedded default, and each base) is read bounded and strict first: a file of
# YAML aliases expanding to billions of values, nested too deep or giving a key twice is refused, naming
# it, before validation walks the config (dti.yaml_safety).
try:
    check_config_files(
        workflow.overwrite_configfiles or [os.path.join(workflow.basedir, "config", "config.yaml")]
    )
    _resolved = resolve_extends(config, workflow.basedir)
except DtiError as exc:
    raise WorkflowError(f"config error: {exc}")
config.clear()
config.update(_resolved)
validate(config, "config/schema.yaml")

if config.get("container"):

    container: config["container"]


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/train.smk"
include: "rules/sample.smk"
include: "rules/score.smk"
include: "rules/aggregate.smk"
include: "rules/common_analyses.smk"
include: "rules/interpolation.smk"
include: "rules/analysis.smk"
include: "rules/common_mechanism.smk"
include: "rules/mechanism.smk"
include: "rules/common_report.smk"
include: "rules/report.smk"


# `snakemake --report report.html`: the outputs marked report() in the rules, under this front page.
report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        table_files(),
        interpolation_files(),
        analysis_files(),
        mechanism_files(),
        report_files(),

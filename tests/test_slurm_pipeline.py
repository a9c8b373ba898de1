"""The embedded default through `snakemake --profile profiles/slurm` on a real single-node SLURM cluster.

The GPU jobs must go through sbatch with a GPU request, grouped per subject chain, and the tables must
equal those of the local run. Both runs are session fixtures (conftest.py) started in the background.
"""

from __future__ import annotations

import copy
import re

import pandas as pd
import pytest
from workflow_run import EMBEDDED_DEFAULT, SHARED, snakemake

from dti.benchmark_config import load_config_files
from dti.tables import table_names

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
_DEFAULT = load_config_files([EMBEDDED_DEFAULT])  # the SLURM run's config: the embedded default
_LOCAL = copy.deepcopy(SHARED)  # the local run's: the shared run's (tests/shared_run.yaml), a superset
RUN = f"results/runs/{_DEFAULT['run_name']}"  # the run's tables
CHAINS = len(_DEFAULT["backbones"]) * len(_DEFAULT["methods"]) * len(_DEFAULT["subjects"])
ANALYSIS_SUBMISSIONS = (len(_DEFAULT["interpolation"].get("backbones") or _DEFAULT["backbones"])
                        * len(_DEFAULT["interpolation"]["pairs"])
                        + len(_DEFAULT["analysis"]["magnitude"].get("backbones") or _DEFAULT["backbones"]))


def test_embedded_default_on_slurm_matches_the_local_run(slurm_run, default_run):
    work, result = slurm_run
    log = result.stdout + result.stderr
    calls = [line for line in log.splitlines() if line.startswith("sbatch call:")]
    gpu_calls = [c for c in calls if " --gpus=1" in c]
    # backbones x methods x subjects: one sbatch per train -> sample -> score chain; the analyses add one
    # per interpolated pair and backbone and one per swept backbone (render -> score, grouped the same way).
    chains = [c for c in gpu_calls if "--comment rule_chain_" in c]
    analyses = [c for c in gpu_calls if re.search(r"--comment rule_(interpolation|sweep)_", c)]
    assert len(chains) == CHAINS, calls
    assert len(analyses) == ANALYSIS_SUBMISSIONS and len(gpu_calls) == len(chains) + len(analyses), calls
    assert all(" -p debug" in c and "--cpus-per-gpu=4" in c and "--signal=TERM@120" in c for c in gpu_calls)
    assert not [c for c in calls if " --gpus" not in c and re.search(r"rule_(train|sample|score)\b", c)]

    assert set(_DEFAULT["methods"]) < set(_LOCAL["methods"]) and _DEFAULT["run_name"] == _LOCAL["run_name"]
    for name in table_names(_DEFAULT["methods"]):
        # Each group's numbers (its bootstrap too) depend on its own rows only: the local run's rows of the
        # methods both ran must equal the SLURM run's exactly.
        local = pd.read_parquet(default_run / f"{RUN}/tables/{name}.parquet")
        local = local[local["method"].isin(_DEFAULT["methods"])].reset_index(drop=True)
        remote = pd.read_parquet(work / f"{RUN}/tables/{name}.parquet")
        # The cost table's wall time and memory are each job's own measurement, never equal between runs.
        measured = [c for c in ("seconds_per_step", "peak_gpu_memory_gib") if c in local.columns]
        assert remote[measured].notna().eq(local[measured].notna()).all().all()
        pd.testing.assert_frame_equal(remote.drop(columns=measured), local.drop(columns=measured), check_exact=True)
    # Every GPU job left its log where the README says.
    assert len(list(work.glob("logs/train/*/*/*.log"))) == CHAINS


def test_failed_job_names_rule_subject_and_log_and_rerun_keeps_finished_work(slurm_cluster, default_run,
                                                                              tmp_path):
    import shutil

    work = tmp_path / "run"
    shutil.copytree(default_run, work, symlinks=True)
    (work / "resources/raw/striped_box/01.png").write_bytes(b"not an image")  # breaks only striped_box
    args = ("--profile", str(slurm_cluster.profile), *slurm_cluster.fast_status_args,
            "--seconds-between-status-checks", "2", "--retries", "0")
    finished = {p: p.stat().st_mtime_ns for p in work.glob("results/*/*/spotted_pup/run.json")}
    result = snakemake(work, *args, check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Error in rule prepare_subject" in out
    assert "subject=striped_box" in out
    assert "logs/prepare_subject/striped_box.log" in out
    assert {p: p.stat().st_mtime_ns for p in work.glob("results/*/*/spotted_pup/run.json")} == finished

"""dti.jobs.run_job: what every workflow job does around its step, in a fresh process each (as a job runs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

SCRIPT = """
import gc, os, sys, types
from dti.jobs import run_job

job = types.SimpleNamespace(log=[sys.argv[1]], threads=3)  # what Snakemake hands a script: log and threads

def work(x, *, y, step, job):  # keyword arguments named like run_job's own reach the step
    import torch
    from dti.progress import ProgressLog

    progress = ProgressLog("sampled", 3, every_s=0)  # its lines must reach the job's log, timestamped
    progress.advance(3)
    print("gc", gc.get_threshold()[0], "offline", os.environ.get("HF_HUB_OFFLINE"),
          "gpu", os.environ.get("CUDA_VISIBLE_DEVICES"), "threads", torch.get_num_threads())
    return x + y + step + job

result = run_job(job, work, 1, gpu=sys.argv[2] == "gpu", y=2, step=30, job=400)
print("result", result, "gpu after", os.environ.get("CUDA_VISIBLE_DEVICES"))
"""


def _job(tmp_path, kind: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "CUDA_", "DTI_"))}
    # One GPU as far as the job can tell, locked in a folder of this test.
    env.update(DTI_NUM_GPUS="1", DTI_GPU_LOCK_DIR=str(tmp_path / "locks"), OMP_NUM_THREADS="1")
    log = tmp_path / kind / "job.log"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(log), kind], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == done.stderr == ""  # everything went to the job's log
    return log.read_text()


def test_a_gpu_job_runs_offline_on_its_threads_holding_a_gpu(tmp_path):
    log = _job(tmp_path, "gpu")
    assert "gc 70000 offline 1 gpu 0 threads 3" in log
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d sampled 3/3 images", log, re.M), log
    assert "result 433 gpu after None" in log  # the GPU is given back when the step ends


def test_a_local_job_keeps_the_hub_and_claims_nothing(tmp_path):
    log = _job(tmp_path, "local")
    assert "gc 70000 offline None gpu None threads 1" in log
    assert "result 433" in log

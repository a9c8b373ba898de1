"""What every workflow job does around its step: the job runtime.

A job script is one call, `run_job(snakemake, step, *args, gpu=..., **kwargs)`: the object Snakemake hands
the script is an ordinary argument here (only its `log` and `threads` are read), so this module, like the
rest of the library, knows nothing of Snakemake. Around the step it
- lightens garbage collection (`lighten_gc`), first, before the deep-learning stack is imported;
- for GPU jobs, works offline (`work_offline`): compute nodes load only what the login node fetched;
- sends the process's output to the job's log (`redirect_output`);
- for GPU jobs, sets torch's threads to the job's and holds a GPU of its own while the step runs
  (dti.gpu_slots.claim_gpu; the CPU where there is none).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def run_job(job, step: Callable, /, *args, gpu: bool = False, **kwargs):
    """Run `step(*args, **kwargs)` as the workflow job `job` (anything with `.log` and `.threads`). `job` and
    `step` are positional-only, so a step may take keyword arguments of those names (sampling takes `step`)."""
    lighten_gc()
    if gpu:
        work_offline()
    redirect_output(job.log[0] if job.log else None)
    log_progress()
    from dti.io import settle_future_times, use_output_roots

    use_output_roots()  # every write stays inside the top folder of its output (results/, resources/)
    settle_future_times(getattr(job, "input", []))  # another node's clock must not cost this job's outputs
    if not gpu:
        return step(*args, **kwargs)
    from dti.gpu_slots import claim_gpu

    set_threads(job.threads)
    with claim_gpu():
        return step(*args, **kwargs)


def lighten_gc() -> None:
    """Garbage-collector settings for a short-lived process that imports the deep-learning stack.

    Importing torch, diffusers, transformers and open_clip creates millions of long-lived objects, and the
    default thresholds make the cyclic collector scan them again and again; collecting young objects 100x
    less often saves much of that. At exit the interpreter would also walk them all once more; freezing
    them first (atexit, so on every exit path) skips that. bench/gc_settings.py measures both (figures in
    bench/README.md). Memory stays bounded: collections still run, only less often; what exit skips is
    __del__ of objects caught in reference cycles, and every output here is written and closed explicitly.
    """
    import atexit
    import gc

    gc.set_threshold(70_000, 10, 10)  # the first generation: 100x the default 700
    atexit.register(gc.freeze)


def work_offline() -> None:
    """Compute nodes load only what the login node fetched: fail fast instead of reaching for the hub.

    Must run before huggingface_hub is imported (it reads the variables once). A user who exports
    HF_HUB_OFFLINE=0 keeps hub access.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))


def log_progress() -> None:
    """dti.progress's lines (images done / total, rate) into the job's log, timestamped: unconfigured,
    logging drops INFO lines, and `tail -f` on a long job's log would show nothing between start and end."""
    import logging
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("dti.progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def redirect_output(log_path: str | os.PathLike | None) -> None:
    """Send this process's stdout/stderr (Python and native) to the job's log file."""
    import sys

    if not log_path:
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(log_path, "a", buffering=1)  # noqa: SIM115  (lives as long as the process)
    os.dup2(handle.fileno(), 1)
    os.dup2(handle.fileno(), 2)
    sys.stdout = sys.stderr = handle

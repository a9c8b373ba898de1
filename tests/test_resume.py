"""Preemption: SIGTERM saves state and exits 143; rerunning the same command finishes the identical run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from dti.export import read_metadata
from dti.state import read_state

STEPS, SAVE_EVERY, STOP_AFTER = 20, 5, 7
FINAL_FILES = ("learned_embeds.safetensors", "run.json", "bear.safetensors")


def _command(model: Path, images: Path, out: Path, **overrides) -> list[str]:
    # DTI with beta > 0 so the optimizer carries state (the second-moment average) across the interruption.
    options = {"model": model, "images": images, "out": out, "initializer": "dog", "steps": STEPS,
               "save-every": SAVE_EVERY, "resolution": 64, "batch-size": 1, "seed": 3, "beta": 0.5,
               "kappa": 0.01, "name": "bear", **overrides}  # one name: the runs' folders differ
    args = [sys.executable, "-m", "dti.cli", "train", "--quiet"]
    for key, value in options.items():
        args += [f"--{key}", str(value)]
    return args


def _start(args: list[str]) -> subprocess.Popen:
    # Output goes to a file, not a pipe: nobody reads while we poll, and a full pipe would stall the child.
    log = Path(args[args.index("--out") + 1] + ".stderr")
    with open(log, "w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, text=True)
    proc.stderr_path = log
    return proc


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    proc.wait(timeout=timeout)
    return proc.returncode, proc.stderr_path.read_text()


def _logged_steps(out: Path) -> list[int]:
    log = out / "train_log.jsonl"
    if not log.exists():
        return []
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    steps = []
    for line in lines:
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:  # a line being written right now
            break
    return steps


def _interrupt_after(proc: subprocess.Popen, out: Path, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended (code {proc.returncode}) before step {step}: "
                                 f"{proc.stderr_path.read_text()}")
        steps = _logged_steps(out)
        if steps and steps[-1] >= step:
            proc.send_signal(signal.SIGTERM)
            return
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"step {step} not reached within {timeout} s")


def _assert_same_embedding_files(a: Path, b: Path) -> None:
    for name in ("learned_embeds.safetensors", "bear.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
        assert read_metadata(a / name) == read_metadata(b / name), name
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_sigterm_then_rerun_equals_an_uninterrupted_run(tiny_sd, subject_dir, tmp_path):
    straight, resumed, stale = tmp_path / "straight", tmp_path / "resumed", tmp_path / "stale"
    # The reference run goes alongside the one that gets interrupted.
    reference = _start(_command(tiny_sd, subject_dir, straight))
    first = _start(_command(tiny_sd, subject_dir, resumed))
    _interrupt_after(first, resumed, STOP_AFTER)
    code, err = _finish(first)
    assert code == 143, err
    assert "rerun to resume" in err
    assert (resumed / "checkpoints" / "state.safetensors").is_file()
    assert (resumed / "learned_embeds-steps-5.safetensors").is_file()
    for name in FINAL_FILES:
        assert not (resumed / name).exists(), name
    stopped_at = _logged_steps(resumed)[-1]
    assert STOP_AFTER <= stopped_at < STEPS
    assert read_state(resumed / "checkpoints" / "state.safetensors").step == stopped_at

    # Other settings in a copy of the interrupted folder must start over, not pick up the stale state.
    shutil.copytree(resumed, stale)
    other = _start(_command(tiny_sd, subject_dir, stale, seed=4, steps=6))
    again = _start(_command(tiny_sd, subject_dir, resumed))
    for proc in (again, other, reference):
        code, err = _finish(proc)
        assert code == 0, err

    run = json.loads((resumed / "run.json").read_text())
    assert run["resumed_from"] == stopped_at
    assert _logged_steps(resumed) == list(range(1, STEPS + 1))  # every step logged exactly once
    assert _logged_steps(straight) == list(range(1, STEPS + 1))
    assert json.loads((straight / "run.json").read_text())["resumed_from"] == 0
    _assert_same_embedding_files(resumed, straight)

    stale_run = json.loads((stale / "run.json").read_text())
    assert stale_run["resumed_from"] == 0 and stale_run["steps"] == 6
    assert _logged_steps(stale) == list(range(1, 7))

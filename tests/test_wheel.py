"""`dti` stands on its own: the wheel built from this project, installed into a fresh environment outside the
checkout, trains and inspects a token from a working folder outside the checkout, and carries every data
file the library reads (src/dti/data).

The fresh environment borrows this environment's installed dependencies (torch and the rest: nothing is
downloaded) through a .pth file, but not its editable `dti`, so every import of `dti` is the wheel's."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"  # the editable install's import path
DATA = SRC / "dti" / "data"
TIMEOUT = 300  # seconds per command; each takes a few to 25 s on 2 slow cores


def _run(args: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def _inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def _data_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A fresh virtual environment with the wheel installed, its clean environment variables, and a working
    folder: all outside the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    assert not _inside(root, REPO), f"the temporary folder {root} is inside the checkout"
    # Built from a copy: pip builds a local project in its own folder, and setuptools would write build/
    # and egg-info into the checkout that other work shares.
    project = root / "project"
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):  # README.md: the package's long description
        shutil.copy2(REPO / name, project / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", root / "dist", project], cwd=root)
    (wheel,) = (root / "dist").glob("dti-*.whl")

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    python = venv / "bin" / "python"
    # Installed before the dependencies become visible: pip would otherwise see this environment's
    # editable dti of the same version and keep it.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], cwd=root)
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=root).stdout.strip())
    # Plain folder lines: Python adds them to sys.path without running the .pth files inside them, so the
    # editable install's __editable__ .pth (which adds src/) stays out; src/ itself is never listed.
    deps = [p for p in site.getsitepackages() if not _inside(p, SRC)]
    assert deps, f"no site-packages outside {SRC} among {site.getsitepackages()}"
    (purelib / "_dti_test_dependencies.pth").write_text("".join(f"{p}\n" for p in deps))

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "HF_", "TRANSFORMERS_"))}
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf-home"))
    work = root / "work"
    work.mkdir()
    return {"venv": venv, "python": python, "dti": venv / "bin" / "dti", "env": env, "work": work,
            "purelib": purelib}


def test_the_installed_package_is_the_wheels_and_carries_its_data(installed):
    probe = """
import json, sys
import dti
from dti.data import DATA_DIR
from dti.dreambooth import DEFAULT_MANIFEST, read_manifest
from dti.prompts import load_prompt_set, prompt_set_path
from dti.subject_schema import SUBJECT_SCHEMA, subject_problem

print(json.dumps({
    "dti": dti.__file__, "sys_path": sys.path, "data": str(DATA_DIR),
    "files": [str(prompt_set_path("dreambooth", "live")), str(DEFAULT_MANIFEST), str(SUBJECT_SCHEMA)],
    "prompts": len(load_prompt_set("dreambooth", "live")), "manifest": len(read_manifest()),
    "good": subject_problem({"name": "dog", "class": "dog", "kind": "live", "source": "synthetic"}),
    "bad": subject_problem({"name": "../dog", "class": "dog", "kind": "live", "source": "synthetic"}),
}))
"""
    found = json.loads(_run([installed["python"], "-c", probe], installed["work"], installed["env"]).stdout)
    assert _inside(found["dti"], installed["venv"]), found["dti"]
    assert not any(p and _inside(p, SRC) for p in found["sys_path"]), found["sys_path"]
    for path in (found["data"], *found["files"]):
        assert _inside(path, installed["purelib"]), path
    assert found["prompts"] > 0 and found["manifest"] > 0
    assert found["good"] is None and "../dog" in found["bad"]
    # Every data file of the checkout is in the wheel: one left out of pyproject.toml's package-data fails.
    assert _data_files(Path(found["data"])) == _data_files(DATA)


def test_the_installed_command_trains_and_inspects_outside_the_checkout(installed):
    dti, env, work = installed["dti"], installed["env"], installed["work"]
    photos = work / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)).save(photos / f"{i}.png")

    _run([dti, "tiny-model", "--family", "sd", "--out", "tiny"], work, env)
    _run([dti, "train", "--quiet", "--model", "tiny", "--images", "photos", "--initializer", "dog",
          "--out", "run", "--steps", "2", "--save-every", "2", "--resolution", "64", "--batch-size", "2"],
         work, env)
    assert (work / "run" / "learned_embeds.safetensors").is_file()
    report = json.loads(_run([dti, "inspect", "run/learned_embeds.safetensors", "--model", "tiny", "--json"],
                             work, env).stdout)
    assert (report["token"], report["family"], report["metadata"]["dti.steps"]) == ("<subject>", "sd", "2")
    (row,) = report["encoders"][0]["rows"]
    assert row["ratio_to_vocab_mean"] == pytest.approx(1.0, rel=1e-5)  # DTI keeps the vocabulary's mean norm
    # Two small steps from "dog": the vector still points at it in the real CLIP vocabulary of the tiny model.
    assert "dog" in [n["token"] for n in row["nearest"]]

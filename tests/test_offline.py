"""Compute nodes run offline: anything the login node did not fetch fails fast with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dti.pipeline import fetch_model

PROBE = """
import os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
from dti.errors import DtiError
from {module} import {call}
start = time.time()
try:
    {body}
except DtiError as exc:
    print("DtiError:", exc)
    print("seconds:", round(time.time() - start, 1))
    sys.exit(3)
"""


def run_offline(call: str, body: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    module = "dti.model_record" if call == "load_recorded_backbone" else "dti.pipeline"
    probe = PROBE.format(module=module, call=call, body=body)
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=env)


def test_unfetched_metric_weights_fail_fast_naming_the_model(tmp_path):
    started = time.time()
    result = run_offline("fetch_metrics", f"fetch_metrics({str(tmp_path / 'm.json')!r}, metric_specs="
                                          "{'clip': {'model': 'ViT-B-32', 'pretrained': 'openai'}})")
    assert result.returncode == 3, result.stderr[-2000:]
    assert "ViT-B-32" in result.stdout
    assert time.time() - started < 120  # no network retries: HF_HUB_OFFLINE makes it fail at once
    assert not (tmp_path / "m.json").exists()


def test_unfetched_backbone_fails_naming_the_model(tmp_path):
    marker = tmp_path / "model.json"
    marker.write_text(json.dumps({"model": str(tmp_path / "gone"), "family": "sd", "revision": None}))
    result = run_offline("load_recorded_backbone", f"load_recorded_backbone({str(marker)!r}, 'cpu')")
    assert result.returncode == 3, result.stderr[-2000:]
    assert str(tmp_path / "gone") in result.stdout


def test_local_model_folder_is_recorded_without_download(tiny_sd, tmp_path):
    out = tmp_path / "m.json"
    fetch_model(str(out), model=str(tiny_sd), family="sd", revision=None, tiny_dir=None)
    assert json.loads(out.read_text())["model"] == str(tiny_sd.resolve())


def test_a_tiny_model_is_recorded_relative_so_a_moved_working_folder_loads_its_own(tiny_sd, tmp_path):
    """The workflow builds tiny models in the working folder (resources/models/tiny/<family>) and records them
    beside the record; after the folder is moved, the record names the moved copy, not the old place."""
    import shutil

    from dti.model_record import load_recorded_backbone, read_model_record

    work = tmp_path / "work"
    shutil.copytree(tiny_sd, work / "resources/models/tiny/sd")
    record = work / "resources/models/tiny_sd.json"
    fetch_model(str(record), model="tiny", family="sd", revision=None, tiny_dir=str(work / "resources/models/tiny/sd"))
    assert json.loads(record.read_text())["model"] == "tiny/sd"
    moved = tmp_path / "moved"
    work.rename(moved)
    assert read_model_record(moved / "resources/models/tiny_sd.json")["model"] == str(moved / "resources/models/tiny/sd")
    assert load_recorded_backbone(moved / "resources/models/tiny_sd.json", "cpu").family == "sd"


def test_work_offline_keeps_an_explicit_user_choice(monkeypatch):
    from dti.jobs import work_offline

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    work_offline()
    assert os.environ["HF_HUB_OFFLINE"] == "0" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_files_record_the_hub_id_or_the_folder_name_never_a_local_path(tmp_path):
    from dti.model_files import public_model

    # What fetch_model records for a hub model: its snapshot folder in the Hugging Face cache.
    snapshot = tmp_path / "hub" / "models--stabilityai--stable-diffusion-xl-base-1.0" / "snapshots" / "4621659"
    snapshot.mkdir(parents=True)
    hub_id = "stabilityai/stable-diffusion-xl-base-1.0"
    assert public_model(str(snapshot)) == (hub_id, "4621659")
    assert public_model(str(snapshot), "main") == (hub_id, "main")
    assert public_model(hub_id, "v1") == (hub_id, "v1")
    (tmp_path / "my-sdxl").mkdir()
    assert public_model(str(tmp_path / "my-sdxl")) == ("my-sdxl", None)


def test_one_rule_tells_a_local_folder_from_a_hub_id(tmp_path, monkeypatch):
    from dti.model_files import local_path

    monkeypatch.chdir(tmp_path)
    assert local_path("stabilityai/stable-diffusion-xl-base-1.0") is None  # org/name, nothing on disk
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert local_path("org/name") == Path("org/name")  # a folder of that form wins over the hub
    assert local_path("~/models/sd") == Path.home() / "models" / "sd"
    # A path whether or not it exists: a mistyped folder is reported missing, never looked up on the hub.
    for model in ("./sd", "/models/sd", "sd15", "models/sd/v1"):
        assert local_path(model) == Path(model)

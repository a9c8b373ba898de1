"""What any command-line tool owes its user, checked on the installed `dti` command run as a user runs it:
--version, every flag's default in --help, quiet exit when the reader of its output goes away, and errors
that stay one line (a model missing from the offline hub cache included)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from dti import cli
from dti.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DTI = Path(sys.executable).with_name("dti")  # the [project.scripts] entry point of this environment
MISSING_MODEL = "dti-tests/no-such-model"  # a hub id that no cache holds


def run_dti(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    assert DTI.is_file(), f"{DTI} is missing: install the project (pip install -e .)"
    return subprocess.run([str(DTI), *args], text=True, timeout=300, env={**os.environ, **(env or {})}, **kwargs)


def pyproject_field(name: str) -> str:
    """A string field of [project] in pyproject.toml (a regex: tomllib is Python 3.11+, this project 3.10+)."""
    project = re.search(r"^\[project\]\n(.*?)(?=^\[)", (REPO / "pyproject.toml").read_text(), re.S | re.M)[1]
    return re.search(rf'^{name} = "([^"]+)"', project, re.M)[1]


@pytest.fixture
def embedding(tmp_path) -> Path:
    path = tmp_path / "token.safetensors"
    save_file({"emb_params": np.random.default_rng(0).standard_normal((2, 768)).astype(np.float32)}, str(path))
    return path


def test_version_is_the_packages(tmp_path):
    result = run_dti("--version", capture_output=True, cwd=tmp_path)  # not the source tree: the installed one
    assert result.returncode == 0 and result.stderr == ""
    assert cli.DISTRIBUTION == pyproject_field("name")
    assert result.stdout == f"dti {pyproject_field('version')}\n" == f"dti {version(cli.DISTRIBUTION)}\n"


def test_version_of_a_source_tree_never_installed(monkeypatch):
    import importlib.metadata

    import dti

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert cli.package_version() == f"{dti.__version__} (not installed)"


def help_entries(text: str) -> dict[str, str]:
    """{first option string: its whole entry, header and help} from argparse's --help output (printed
    unwrapped: COLUMNS is wide)."""
    entries, current = {}, None
    for line in text.splitlines():
        if line.startswith("  -"):
            header = line.strip().split("  ")[0]
            current = header.split()[0].rstrip(",")
            entries[current] = line.strip()
        elif current and line.startswith("   "):  # the help text under a long header
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("command", sorted(build_parser()._subparsers._group_actions[0].choices))
def test_help_shows_each_flags_default_once(command):
    result = run_dti(command, "--help", capture_output=True, env={"COLUMNS": "1000"})
    assert result.returncode == 0, result.stderr
    entries = help_entries(result.stdout)
    flags = [a for a in build_parser()._subparsers._group_actions[0].choices[command]._actions
             if a.option_strings and a.dest != "help"]
    assert flags and set(entries) >= {a.option_strings[0] for a in flags}
    for action in flags:
        entry, default = entries[action.option_strings[0]], action.default
        assert entry.lower().count("default") <= 1, f"{command} {entry!r} says its default twice"
        if default is None or default is False:  # nothing worth printing: required, worked out later, or a switch
            assert "(default: None)" not in entry and "(default: False)" not in entry, entry
            continue
        shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)  # as typed
        assert re.search(rf"default: {re.escape(shown)}(?![\w.])", entry), f"{command} {entry!r} lacks {shown!r}"


def to_closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """Run dti with its stdout a pipe whose reader has already gone: every write to it fails (EPIPE), not only
    the ones past the pipe's buffer, so the test does not depend on how fast a `head` exits."""
    read, write = os.pipe()
    os.close(read)
    try:
        return run_dti(*args, stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)


def test_closed_pipe_exits_quietly_with_sigpipes_status(embedding):
    result = to_closed_pipe("inspect", "--json", str(embedding))
    assert (result.returncode, result.stderr) == (141, "")


@pytest.mark.parametrize("args", [["--version"], ["train", "--help"]])
def test_closed_pipe_is_quiet_for_help_and_version(args):
    result = to_closed_pipe(*args)
    # argparse itself ignores a failed write of help text (0); ours stops with 141: either is quiet.
    assert result.returncode in (0, 141) and result.stderr == ""


@pytest.mark.parametrize("command", ["inspect", "train", "train --family sd", "sample --family sana"])
def test_model_missing_from_the_offline_cache_is_one_line_naming_it(command, embedding, tmp_path):
    """Each loader reaches the hub its own way (diffusers' model_index.json, transformers' text encoder,
    huggingface_hub's snapshot); each fails with a message of several lines that names no model."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64), "red").save(photos / "a.png")
    out = tmp_path / "out"
    name, *rest = command.split()
    args = {"inspect": [str(embedding)],
            "train": ["--images", str(photos), "--initializer", "dog", "--out", str(out)],
            "sample": ["--embeds", str(tmp_path), "--prompt", "a {}", "--out", str(out)]}[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))  # an empty cache, whatever this machine has
    result = subprocess.run([str(DTI), name, *rest, "--model", MISSING_MODEL, *args], capture_output=True,
                            text=True, timeout=300, env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("dti: error: ") and f"'{MISSING_MODEL}'" in lines[0]
    assert "not (fully) in the local Hugging Face cache" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert f"`hf download {MISSING_MODEL}`" in lines[0] and "--model a local diffusers folder" in lines[0]
    assert not out.exists()

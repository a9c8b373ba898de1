"""tools/pip_sources.py: uv installs from the package sources pip is configured with."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "pip_sources.py"
_spec = importlib.util.spec_from_file_location("pip_sources", SCRIPT)
pip_sources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pip_sources)

# As `pip config list` prints it on a machine with a wheel folder, two local indexes and a constraint.
LISTING = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.find-links='/opt/wheels'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels'
global.timeout='60'
"""


def test_sources_become_uv_arguments_once_each():
    args = pip_sources.uv_arguments(pip_sources.package_sources(LISTING))
    assert args == [
        "--find-links", "/opt/wheels",
        "--constraint", "/etc/xdg/pip/constraints.txt",
        "--extra-index-url", "file:///opt/pypi/simple",
        "--extra-index-url", "file:///opt/pypi-more/simple",
        "--index-strategy", "unsafe-best-match",
    ]  # fmt: skip


def test_a_plain_mirror_keeps_uvs_index_strategy():
    listing = "global.index-url='https://mirror.example.edu/simple'\nglobal.cert='/x.pem'\n"
    assert pip_sources.uv_arguments(pip_sources.package_sources(listing)) == [
        "--index-url", "https://mirror.example.edu/simple"]
    assert pip_sources.uv_arguments(pip_sources.package_sources("")) == []


def test_script_reads_pips_environment_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    # os.devnull as the config file switches every pip config file off; only these variables remain.
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS=str(tmp_path),
               PIP_EXTRA_INDEX_URL="https://a.example/simple https://b.example/simple")
    out = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, check=True).stdout
    assert shlex.split(out) == [
        "--extra-index-url", "https://a.example/simple", "--extra-index-url", "https://b.example/simple",
        "--find-links", str(tmp_path), "--index-strategy", "unsafe-best-match",
    ]  # fmt: skip

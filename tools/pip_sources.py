"""Print, as uv arguments, the package sources that pip is configured with here.

uv reads neither pip.conf nor PIP_* variables. A site that points pip at a mirror, a wheel folder or a
constraints file (`pip config list` shows them) should install the same files through uv, so the
Makefile passes these arguments on:

    uv pip install $(python tools/pip_sources.py) -r requirements.lock.txt
"""

from __future__ import annotations

import shlex
import subprocess
import sys

# pip option -> the uv pip install option that means the same.
OPTIONS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}


def pip_config() -> str:
    """What `pip config list` prints: every config level, files and environment alike."""
    return subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                          check=True).stdout


def package_sources(listing: str) -> list[tuple[str, str]]:
    """(option, value) pairs for the options uv understands, from a `pip config list` listing."""
    pairs = []
    for line in listing.splitlines():
        key, _, raw = line.partition("=")
        option = key.rpartition(".")[2]  # "global.find-links" and ":env:.find-links" alike
        if option in OPTIONS:
            # pip prints the value quoted; multi-valued options are whitespace-separated inside.
            pairs += [(option, value) for value in raw.strip().strip("'\"").split()]
    return pairs


def uv_arguments(pairs: list[tuple[str, str]]) -> list[str]:
    args = []
    for option, value in dict.fromkeys(pairs):  # env and file levels often repeat a value
        args += [OPTIONS[option], value]
    if any(option in ("extra-index-url", "find-links") for option, _ in pairs):
        # pip takes the best match over all its sources; uv would stop at the first index with the name.
        args += ["--index-strategy", "unsafe-best-match"]
    return args


if __name__ == "__main__":
    print(shlex.join(uv_arguments(package_sources(pip_config()))))

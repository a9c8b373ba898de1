"""skip_exit_gc: job processes exit without the final garbage collection, and lose no output."""

from __future__ import annotations

import subprocess
import sys

# A reference cycle whose finalizer only the cyclic garbage collector can reach, and output written both
# through Python's buffered stdout and into a file that the script closes itself.
SCRIPT = """
import sys
from dti.pipeline import skip_exit_gc

class Cycle:
    def __del__(self):
        print("cycle collected", flush=True)

node = Cycle()
node.self = node
del node
if sys.argv[1] == "skip":
    skip_exit_gc()
with open(sys.argv[2], "w") as handle:
    handle.write("written")
sys.stdout.write("last line, unflushed")
"""


def _run(mode: str, out) -> str:
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(out)], capture_output=True, text=True,
                            check=True)
    return result.stdout


def test_exit_skips_the_final_collection_and_keeps_output(tmp_path):
    plain = _run("plain", tmp_path / "plain.txt")
    assert "cycle collected" in plain  # the interpreter's final collection reached the cycle
    assert "last line, unflushed" in plain

    skipped = _run("skip", tmp_path / "skip.txt")
    assert "cycle collected" not in skipped
    assert skipped.endswith("last line, unflushed")
    assert (tmp_path / "skip.txt").read_text() == "written"


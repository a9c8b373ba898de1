"""lighten_gc: job processes collect garbage less often, exit without the final collection, and lose no
output."""

from __future__ import annotations

import subprocess
import sys

# A reference cycle whose finalizer only the cyclic garbage collector can reach, and output written both
# through Python's buffered stdout and into a file that the script closes itself.
SCRIPT = """
import sys
from dti.jobs import lighten_gc

if sys.argv[1] == "light":
    lighten_gc()
    import gc
    print("threshold", gc.get_threshold()[0])

    # Collections still run while the job works: cyclic garbage does not pile up.
    freed = []

    class Counted:
        def __del__(self):
            freed.append(1)

    for _ in range(200_000):
        item = Counted()
        item.self = item
    print("freed while running", len(freed))
# Made last, so only the final collection could reach it.
class Cycle:
    def __del__(self):
        print("cycle collected", flush=True)

node = Cycle()
node.self = node
del node
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

    light = _run("light", tmp_path / "light.txt")
    assert "threshold 70000" in light
    freed = int(next(line for line in light.splitlines() if line.startswith("freed while running")).split()[-1])
    assert freed > 100_000
    assert "cycle collected" not in light
    assert light.endswith("last line, unflushed")
    assert (tmp_path / "light.txt").read_text() == "written"


"""Host memory of writing a large state file: dti.tensor_files (tensor by tensor) against the safetensors
library's in-memory save, which dti used before (the whole file built as bytes, then its header sorted).

Each writer runs in a fresh process that first makes the tensors (`--gb` of fp32, in 64 MB tensors, as a
fine-tuned denoiser's weights and AdamW moments would be), then writes them; the script prints each
process's peak resident memory (ru_maxrss) above what holding the tensors costs, side by side, and the
ratio. On a GPU node the tensors live on the GPU, so the host holds only what the writer copies.

    python bench/tensor_write_memory.py [--gb 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import json, resource, sys, torch
from pathlib import Path
gb, writer, out = float(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
n = max(1, int(gb * 2**30 / 2**26))
tensors = {f"t{i:04d}": torch.full((2**24,), float(i)) for i in range(n)}  # 64 MB each
held = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if writer == "dti":
    from dti.tensor_files import write_safetensors
    write_safetensors(out, tensors, {"note": "bench"})
else:  # the library's save, as dti.tensor_files' predecessor used it: bytes in memory, header re-sorted
    from safetensors.torch import save
    blob = save(tensors, metadata={"note": "bench"})
    size = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    out.write_bytes(len(header).to_bytes(8, "little") + header + blob[8 + size :])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"held_mb": held / 1024, "extra_mb": (peak - held) / 1024, "file_mb": out.stat().st_size / 2**20}))
"""


def measure(writer: str, gb: float) -> dict:
    import json

    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run([sys.executable, "-c", CHILD, str(gb), writer, f"{folder}/state.safetensors"],
                              capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    extra = {"dti": [], "library": []}
    for r in range(args.rounds):
        for writer in (["dti", "library"] if r % 2 == 0 else ["library", "dti"]):
            row = measure(writer, args.gb)
            extra[writer].append(row["extra_mb"])
            print(f"round {r + 1}  {writer:<8} tensors {row['held_mb']:8.0f} MB  extra while writing "
                  f"{row['extra_mb']:8.0f} MB  file {row['file_mb']:8.0f} MB", flush=True)
    dti, library = (statistics.median(extra[w]) for w in ("dti", "library"))
    print(f"median extra host memory: dti.tensor_files {dti:.0f} MB, library save {library:.0f} MB "
          f"({library / max(dti, 1):.1f}x)")


if __name__ == "__main__":
    main()

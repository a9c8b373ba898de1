#!/usr/bin/env bash
# The device check: the training-step benchmark on the full-size SD 1.5 and SDXL architectures.
# Run from the repo root on a GPU machine where diffusers is carried as wheels in .whl/.
set -uo pipefail
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
OUT=${OUT:-.bench-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
python3 bench/train_step.py --family ${FAMILIES:-sd sdxl} --steps "${STEPS:-8}" --rounds "${ROUNDS:-3}" \
  --json "$OUT/train_step.json" 2>&1 | grep -v "should be kept in float32" | tee "$OUT/train_step.log"

#!/usr/bin/env bash
# The device check, one command: sampling throughput (plain diffusers vs our sample job, then each speed
# switch) and the training step (with MFU), on the full-size SDXL and SD 1.5 architectures with random
# weights. Run from the repo root on a GPU machine; diffusers and open_clip travel as wheels in .whl/.
# Each part has its own time limit and writes its JSON as it goes, so a slow part loses only itself.
set -uo pipefail
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-.bench-out}; mkdir -p "$OUT/sdxl" "$OUT/sd"
exec > >(tee -a "$OUT/log.txt") 2>&1
quiet() { grep -v -e "should be kept in float32" -e "safety checker" -e "Loading " -e "Writing model" -e deprecate; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
# SAMPLE_ARGS / TRAIN_ARGS narrow a rerun to what is still to measure (see bench/README.md).
timeout "${SDXL_SAMPLE_S:-330}" python3 bench/sample_throughput.py --family sdxl --out "$OUT/sdxl" ${SAMPLE_ARGS:-} 2>&1 | quiet
timeout "${TRAIN_S:-150}" python3 bench/train_step.py --family sdxl --steps "${STEPS:-6}" --rounds "${ROUNDS:-3}" \
  --json "$OUT/train_sdxl.json" --profile-dir "$OUT" ${TRAIN_ARGS:-} 2>&1 | quiet
# CoRe and DTI + CoRe against TI and DTI on full-size SDXL (docs/method.md, "CoRe"): the step-time ratios.
timeout "${CORE_S:-120}" python3 bench/train_step.py --family sdxl --steps "${STEPS:-6}" --rounds 2 \
  --configs ti dti core dti_core ti_fast core_fast --json "$OUT/train_sdxl_core.json" 2>&1 | quiet
timeout "${SD_SAMPLE_S:-60}" python3 bench/sample_throughput.py --family sd --core-only --out "$OUT/sd" \
  ${SD_SAMPLE_ARGS:-} 2>&1 | quiet
[ -n "${TRAIN_SD_S:-}" ] && timeout "$TRAIN_SD_S" python3 bench/train_step.py --family sd --steps "${STEPS:-6}" \
  --rounds 2 --json "$OUT/train_sd.json" 2>&1 | quiet
# SANA 1.5 1.6B (1024 px, batch 2) and Wan 2.1 1.3B (512 px, batch 2), full size with random weights: a DTI and
# a TI step, plain and with each family's GPU defaults. Opt-in (TRAIN_NEW_S=300): building Wan's 5.7 B UMT5
# encoder and compiling both denoisers take minutes of device time.
[ -n "${TRAIN_NEW_S:-}" ] && timeout "$TRAIN_NEW_S" python3 bench/train_step.py --family sana wan \
  --steps "${STEPS:-6}" --rounds 2 --configs ti dti ti_fast dti_fast --json "$OUT/train_sana_wan.json" 2>&1 | quiet

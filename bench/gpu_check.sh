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
# part LIMIT COMMAND...: COMMAND under a limit of LIMIT seconds; a limit of 0 skips the part, so a rerun can
# measure one part alone (timeout itself would read 0 as no limit).
part() { [ "$1" != 0 ] && timeout "$@"; }
# SAMPLE_ARGS / TRAIN_ARGS narrow a rerun to what is still to measure (see bench/README.md).
part "${SDXL_SAMPLE_S:-330}" python3 bench/sample_throughput.py --family sdxl --out "$OUT/sdxl" ${SAMPLE_ARGS:-} 2>&1 | quiet
part "${TRAIN_S:-150}" python3 bench/train_step.py --family sdxl --steps "${STEPS:-6}" --rounds "${ROUNDS:-3}" \
  --json "$OUT/train_sdxl.json" --profile-dir "$OUT" ${TRAIN_ARGS:-} 2>&1 | quiet
# CoRe and DTI + CoRe against TI and DTI on full-size SDXL (docs/method.md, "CoRe"): the step-time ratios.
part "${CORE_S:-120}" python3 bench/train_step.py --family sdxl --steps "${STEPS:-6}" --rounds 2 \
  --configs ti dti core dti_core ti_fast core_fast --json "$OUT/train_sdxl_core.json" 2>&1 | quiet
part "${SD_SAMPLE_S:-60}" python3 bench/sample_throughput.py --family sd --core-only --out "$OUT/sd" \
  ${SD_SAMPLE_ARGS:-} 2>&1 | quiet
[ -n "${TRAIN_SD_S:-}" ] && timeout "$TRAIN_SD_S" python3 bench/train_step.py --family sd --steps "${STEPS:-6}" \
  --rounds 2 --json "$OUT/train_sd.json" 2>&1 | quiet
# SANA 1.5 1.6B (1024 px, batch 2) and Wan 2.1 1.3B (512 px, batch 2), full size with random weights: a DTI and
# a TI step, plain and with each family's GPU defaults. Opt-in (TRAIN_NEW_S=300): building Wan's 5.7 B UMT5
# encoder and compiling both denoisers take minutes of device time.
[ -n "${TRAIN_NEW_S:-}" ] && timeout "$TRAIN_NEW_S" python3 bench/train_step.py --family sana wan \
  --steps "${STEPS:-6}" --rounds 2 --configs ti dti ti_fast dti_fast --json "$OUT/train_sana_wan.json" 2>&1 | quiet
# DTI + DCO and DTI + OFT against DTI on full-size SDXL, plain, with the registry's defaults (rank 4 on the UNet's
# to_q/to_k/to_v): the step-time ratios, each configuration's peak memory and trainable parameters. Opt-in
# (ADAPTER_S=150): about a minute and a half (one SDXL build and two more UNet copies, 3 configurations x 2 rounds
# x 7 steps of 0.3 to 0.6 s, one FLOP-counted step each), and the default parts already take about 9 of the 10
# minutes one device command may run. Alone: SDXL_SAMPLE_S=0 TRAIN_S=0 CORE_S=0 SD_SAMPLE_S=0 ADAPTER_S=150.
[ -n "${ADAPTER_S:-}" ] && part "$ADAPTER_S" python3 bench/train_step.py --family sdxl --steps "${STEPS:-6}" \
  --rounds 2 --configs dti dti_dco dti_oft --json "$OUT/train_sdxl_adapters.json" 2>&1 | quiet
# CoRe's two stages against TI on full-size SDXL, plain: the CoRe step (its regularizers) and the second stage's
# (all 2.6 B UNet weights in fp32 with AdamW: about 41 GB more memory). Opt-in (CORE_UNET_S=150), alone like
# ADAPTER_S: SDXL_SAMPLE_S=0 TRAIN_S=0 CORE_S=0 SD_SAMPLE_S=0 CORE_UNET_S=150.
[ -n "${CORE_UNET_S:-}" ] && part "$CORE_UNET_S" python3 bench/train_step.py --family sdxl --steps "${STEPS:-6}" \
  --rounds 2 --configs ti core core_unet --json "$OUT/train_sdxl_core_unet.json" 2>&1 | quiet

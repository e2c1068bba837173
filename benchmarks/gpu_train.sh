#!/usr/bin/env bash
# Train the default weights on a GPU machine for a fixed time, resumably (issue 3; TRAINING.md).
#
#     bash benchmarks/gpu_train.sh
#
# with the session's `run` tool: run(command="bash benchmarks/gpu_train.sh", carry=["carry", "runs/gpu"],
# timeout_s=...). The device has no ../shared, so the data travels in carry/ (git-ignored), made here once by
# `bash benchmarks/prepare_device.sh carry`:
#   carry/y291.npz  the 291 set's Y planes (8-bit, LZMA, 23 MB)
#   carry/Set5      a copy of ../shared/data/eval/Set5, for the periodic Set5 PSNR
# runs/gpu holds the run so far (checkpoint last.pt: model, optimizer, step, RNG): carry it to continue.
# At the end last.pt (model, optimizer, step, RNG, config, history), the weights and train.log are
# copied to $OUT (default runs/gpu_out); put last.pt back in runs/gpu here so the next call (or a CPU
# run) resumes from it.
#
# At the end, the run's weights and the shipped ones are scored on Set5 and, when carried, Set14 (carry_eval/,
# made by prepare_device.sh; carry=["carry", "carry_eval"]): a table in train.log (SKIP_EVAL=1: none).
# Knobs (environment): PYTHON (default python3), TRAIN_MINUTES=5 (then a checkpoint and stop; the schedule follows STEPS, so a
# run cut into calls equals the uninterrupted one), STEPS=20000, BATCH=64, PATCH=48, LR=2e-4,
# EVAL_EVERY=2500, FIT_MINUTES=M (a new run: STEPS replaced by the steps that fit in M minutes, timed during the
# warm-up, so the cosine anneals within the call; keep it under TRAIN_MINUTES), EMA=0.999 (evaluate and save the moving average of the weights; default off), LOSS=l1 (default mse), INIT=weights to start a new run from (e.g. INIT=vdsr_fast/weights/vdsr_x234.safetensors:
# the shipped weights travel with the tree, so a longer schedule needs no carried checkpoint; ignored when
# runs/gpu/last.pt exists, which is resumed).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
OUT="${OUT:-runs/gpu_out}"
mkdir -p "$OUT" runs/gpu
export PYTHONUNBUFFERED=1
for need in carry/y291.npz carry/Set5; do
  [[ -e $need ]] || { echo "gpu_train: $need is missing (bash benchmarks/prepare_device.sh carry, on a machine with the data)"; exit 2; }
done

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# Piped, the trainer writes plain lines (at most one in 30 s, one at each evaluation and notices), no bars.
set +e
"$PY" -m vdsr_fast.train --cache carry/y291.npz --eval-set carry/Set5 --out runs/gpu \
  --steps "${STEPS:-20000}" --batch "${BATCH:-64}" --patch "${PATCH:-48}" --lr "${LR:-2e-4}" --warmup 500 \
  --eval-every "${EVAL_EVERY:-2500}" --ckpt-every 500 --max-minutes "${TRAIN_MINUTES:-5}" ${FIT_MINUTES:+--fit-minutes "$FIT_MINUTES"} ${INIT:+--init "$INIT"} \
  ${EMA:+--ema "$EMA"} ${LOSS:+--loss "$LOSS"} 2>&1 | tee "$OUT/train.log"
rc=${PIPESTATUS[0]}
set -e
# Three files come back (the device tool returns at most 8 in all): the checkpoint (which holds the
# config and the whole history), the weights, and the log.
cp runs/gpu/last.pt "$OUT/" 2>/dev/null || true
cp runs/gpu/vdsr_x234.safetensors "$OUT/" 2>/dev/null || true
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/train.log"
import torch
state = torch.load("runs/gpu/last.pt", map_location="cpu", weights_only=True)
hist = state["history"]
print(f"step {state['step']} of {state['config']['steps']}; last records:")
for h in hist[-3:]:
    print(" ", h)
print("Set5 during training:", [(h["step"], h["set5"]) for h in hist if "set5" in h])
EOF
# The run's weights against the shipped ones on Set5 and (when carried: carry_eval/Set14) Set14, x2/x3/x4, paper
# protocol, the fp32 reference backend on the GPU (TF32 off): the decision's first half in the same call (BSD100,
# 91 MB, does not travel: `vdsr-fast eval` here). SKIP_EVAL=1 skips it.
if [[ "${SKIP_EVAL:-0}" != 1 && -f runs/gpu/vdsr_x234.safetensors ]]; then
  "$PY" - <<'EOF' 2>&1 | tee -a "$OUT/train.log"
from pathlib import Path

import torch

import vdsr_fast
from vdsr_fast.engine import Engine
from vdsr_fast.evaluate import evaluate

device = "cuda" if torch.cuda.is_available() else "cpu"
runs = {"run": vdsr_fast.load("runs/gpu/vdsr_x234.safetensors"), "shipped": vdsr_fast.load()}
engines = {k: Engine(m, backend="torch", dtype=torch.float32, device=device) for k, m in runs.items()}
print("| set | scale | run PSNR | shipped PSNR | Δ (dB) | run SSIM | shipped SSIM |")
print("|---|---|---|---|---|---|---|")
for folder in (Path("carry/Set5"), Path("carry_eval/Set14")):
    if not folder.is_dir():
        continue
    for s in (2, 3, 4):
        a, b = (evaluate(folder, s, engines[k]) for k in ("run", "shipped"))
        print(f"| {folder.name} | x{s} | {a.mean('psnr'):.3f} | {b.mean('psnr'):.3f} | "
              f"{a.mean('psnr') - b.mean('psnr'):+.3f} | {a.mean('ssim'):.4f} | {b.mean('ssim'):.4f} |", flush=True)
EOF
fi
exit "$rc"

#!/usr/bin/env bash
# One GPU call for everything a short device session can do, in priority order:
#
#     bash benchmarks/gpu_session.sh
#
# with the session's `run` tool: run(command="bash benchmarks/gpu_session.sh", carry=[".whl", "carry"],
# timeout_s=600): the carried folders and the tree are ~61 MiB, under the 64 MiB a call may take (only with
# carry/y291.npz stored with LZMA: TRAINING.md).
#   1. benchmarks/gpu_check.sh in a shorter budget (build, GPU tests, sanitizer, video, latency) -> $OUT/check
#   2. benchmarks/gpu_train.sh for TRAIN_MINUTES (default: what is left of SESSION_BUDGET_S) -> $OUT/train
#   3. the check's summary and table again, last, so they end the output.
# Knobs: SESSION_BUDGET_S=560 (whole call), GPU_CHECK_BUDGET_S=380, TRAIN_MINUTES (default: the rest,
# minus 40 s for data loading and the final checkpoint), and every knob of the two scripts.
# The device may cut the call at its own limit: keep timeout_s >= SESSION_BUDGET_S + 30.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_ROOT="${OUT:-runs/gpu_session}"
mkdir -p "$OUT_ROOT/check" "$OUT_ROOT/train"
T0=$(date +%s)
SESSION=${SESSION_BUDGET_S:-560}

OUT="$OUT_ROOT/check" GPU_CHECK_BUDGET_S=${GPU_CHECK_BUDGET_S:-380} bash benchmarks/gpu_check.sh 2>&1 \
  | tee /tmp/gpu_session_check.log  # not under $OUT: the device returns 8 files at most
check_rc=${PIPESTATUS[0]}

left=$((SESSION - ($(date +%s) - T0) - 40))
minutes=${TRAIN_MINUTES:-$(awk -v s="$left" 'BEGIN { printf "%.1f", (s > 0 ? s : 0) / 60 }')}
train_rc=skipped
if awk -v m="$minutes" 'BEGIN { exit !(m >= 0.5) }'; then
  echo "[gpu_session] training for $minutes min -> $OUT_ROOT/train"
  OUT="$OUT_ROOT/train" TRAIN_MINUTES=$minutes bash benchmarks/gpu_train.sh 2>&1 | tail -n 40
  train_rc=${PIPESTATUS[0]}
else
  echo "[gpu_session] no time left to train ($minutes min)"
fi

echo
echo "[gpu_session] gpu_check rc=$check_rc, gpu_train rc=$train_rc, $(($(date +%s) - T0)) s in all"
# The check's summary and tables (everything from its summary line on), last.
sed -n '/\] summary$/,$p' /tmp/gpu_session_check.log

#!/usr/bin/env bash
# One GPU call for everything a short device session can do:
#
#     bash benchmarks/gpu_session.sh
#
# with the session's `run` tool: run(command="bash benchmarks/gpu_session.sh", carry=[".whl", "carry"],
# timeout_s=600): the carried folders and the tree are ~62 MiB, under the 64 MiB a call may take (only with
# carry/y291.npz stored with LZMA, as `bash benchmarks/prepare_device.sh` makes both folders).
#   1. benchmarks/gpu_train.sh starts at once in the background (TRAIN_MINUTES) -> $OUT/train; the
#      build, the GPU tests and the sanitizer run beside it (they time nothing);
#   2. benchmarks/gpu_check.sh -> $OUT/check, which waits for the training (TIMING_GATE) before the video
#      and latency benchmarks and the layer profile, so nothing else is on the GPU while they time;
#   3. the training's tail, then the check's summary and table, last.
# The training stops itself after TRAIN_MINUTES (with a checkpoint); at TRAIN_DEADLINE_S after the start it
# is stopped anyway (the last checkpoint, at most --ckpt-every steps old, is what comes back).
# Knobs: SESSION_BUDGET_S=570 (whole call; the check's budget is this minus 10 s), TRAIN_MINUTES=4.2,
# TRAIN_DEADLINE_S=270 (the check stops waiting at (570 - 10) - BENCH_MIN_S - AFTER_BENCH_S - VIDEO_CAP_S - 15
# = 275 s), and every knob of the two scripts (STEPS, BATCH, LR, INIT, ... for the training; BENCH_MIN_S=145
# (the benchmark; AFTER_BENCH_S the layer profile after it), VIDEO_CAP_S=75, TEST_CAP_S=200, LAYER_PROFILE=1,
# LAYER_PROFILE_CAP_S=45, AFTER_BENCH_S=50 here;
# OUT defaults to runs/gpu_session; GPU_CHECK_BUDGET_S, TIMING_GATE and the two scripts' OUT are set here and
# cannot be passed). A longer schedule from the shipped weights, for example:
#   INIT=vdsr_fast/weights/vdsr_x234.safetensors STEPS=30000 LR=1e-4 bash benchmarks/gpu_session.sh
# The device may cut the call at its own limit: keep timeout_s >= SESSION_BUDGET_S + 30.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_ROOT="${OUT:-runs/gpu_session}"
mkdir -p "$OUT_ROOT/check" "$OUT_ROOT/train"
T0=$(date +%s)
SESSION=${SESSION_BUDGET_S:-570}
GATE=/tmp/gpu_session_train_done
rm -f "$GATE"

# 1. training, in its own process group so that the deadline can stop the whole pipeline
echo "[gpu_session] training for ${TRAIN_MINUTES:-4.2} min in the background -> $OUT_ROOT/train"
SETSID=$(command -v setsid || true)  # without it the deadline stops the script only
OUT="$OUT_ROOT/train" SKIP_EVAL=1 TRAIN_MINUTES=${TRAIN_MINUTES:-4.2} $SETSID bash benchmarks/gpu_train.sh \
  >/tmp/gpu_session_train.log 2>&1 &
TRAIN_PID=$!
(
  deadline=$((T0 + ${TRAIN_DEADLINE_S:-270}))
  while kill -0 "$TRAIN_PID" 2>/dev/null && (($(date +%s) < deadline)); do sleep 2; done
  if kill -0 "$TRAIN_PID" 2>/dev/null; then
    echo "[gpu_session] training past its deadline: stopped" >>/tmp/gpu_session_train.log
    kill -TERM -- "-$TRAIN_PID" 2>/dev/null || kill -TERM "$TRAIN_PID"
    sleep 3
  fi
  # What gpu_train.sh copies at its end, again (it may have been stopped): the last checkpoint and weights.
  cp runs/gpu/last.pt "$OUT_ROOT/train/" 2>/dev/null
  [[ -f "$OUT_ROOT/train/vdsr_x234.safetensors" ]] || cp runs/gpu/vdsr_x234.safetensors "$OUT_ROOT/train/" 2>/dev/null
  touch "$GATE"
) &
WATCH_PID=$!

# 2. the checks; timing waits for the gate
# Shares measured on an H200 (benchmarks/results/README.md, run 1): the full benchmark took ~120 s, the
# video step ~30 s, the GPU tests ~105 s alone.
# The layer profile (every body/tail tile candidate, ~45 s) runs after the benchmark.
OUT="$OUT_ROOT/check" GPU_CHECK_BUDGET_S=$((SESSION - 10)) TIMING_GATE="$GATE" BENCH_MIN_S=${BENCH_MIN_S:-145} \
  VIDEO_CAP_S=${VIDEO_CAP_S:-75} TEST_CAP_S=${TEST_CAP_S:-200} LAYER_PROFILE=${LAYER_PROFILE:-1} \
  LAYER_PROFILE_CAP_S=${LAYER_PROFILE_CAP_S:-45} AFTER_BENCH_S=${AFTER_BENCH_S:-50} bash benchmarks/gpu_check.sh 2>&1 \
  | tee /tmp/gpu_session_check.log  # not under $OUT: the device returns 8 files at most
check_rc=${PIPESTATUS[0]}
wait "$WATCH_PID"
wait "$TRAIN_PID"
train_rc=$?
cp /tmp/gpu_session_train.log "$OUT_ROOT/train/train.log" 2>/dev/null

# 3. the training's tail, then the check's summary and tables (everything from its summary line on), last
echo
echo "[gpu_session] training (rc=$train_rc):"
tail -n 25 /tmp/gpu_session_train.log
echo
echo "[gpu_session] gpu_check rc=$check_rc, gpu_train rc=$train_rc, $(($(date +%s) - T0)) s in all"
sed -n '/\] summary$/,$p' /tmp/gpu_session_check.log

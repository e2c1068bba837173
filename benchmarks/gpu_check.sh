#!/usr/bin/env bash
# The one script to run on a GPU machine, from the repository root:
#
#     bash benchmarks/gpu_check.sh
#
# (with the session's `run` tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl", "carry/Set5"], timeout_s=540);
# carry/Set5 becomes $VDSR_FAST_DATA/eval/Set5 for the tests that score the shipped weights on it).
# It prints the card and versions, builds the CUDA extension vdsr_fast._C in place (a failed build is
# logged and the rest runs without the cuda backend), runs the GPU test suite, runs compute-sanitizer
# once on a tiny input when the extension built, measures `vdsr-fast video` (frames/s, GPU busy
# fraction; benchmarks/bench_video.py), runs the latency benchmark, and prints the markdown
# table LAST. Everything it writes goes to $OUT (default: benchmarks/results/gpu_check/): the results
# <date>_<HHMM>_<card>.json/.png, the video JSON and the layer profile's JSON (also copied to benchmarks/results/:
# commit them; see benchmarks/README.md), and gpu_check_logs.tgz with env.txt, build.log, pytest.log,
# junit.xml, sanitizer.log, video.log, bench.log, the benchmark's .md and the optional steps' logs (one
# archive: the device tool returns at most 8 files).
#
# Sized for an H100 in under 8 minutes: every step runs under `timeout`, and its share is cut so the
# benchmark keeps at least BENCH_MIN_S and the steps after it AFTER_BENCH_S (a benchmark squeezed below
# BENCH_MIN_S by steps that ran long takes it from them; under 40 s it is skipped). Knobs (environment):
#   GPU_CHECK_BUDGET_S=450  whole-script budget          BENCH_MIN_S=170   benchmark's reserved share
#   BUILD_CAP_S=180  TEST_CAP_S=150  SANITIZER_CAP_S=60   per-step caps
#   PYTHON (default python3), VDSR_FAST_BUILD_JOBS (default: every core), VDSR_FAST_DATA (default: ../shared/data,
#   else the carried carry/Set5)
#   VDSR_FAST_CUDA_ARCHS    default from the card (9.0 -> "90a", else e.g. "80")
#   BENCH_ARGS="..."        extra bench_latency flags, e.g. "--compile" or "--sizes 1080p"
#   VIDEO_CAP_S=90                                         vdsr-fast video throughput step
#   SKIP_BUILD=1 SKIP_TESTS=1 SKIP_SANITIZER=1 SKIP_VIDEO=1  skip a step
#   SKIP_PYBENCH=1, PYBENCH_CAP_S=45  benchmarks/test_bench_latency.py once with --benchmark-disable
#   TIMING_GATE=FILE        before timing, wait for FILE (another job still using the GPU; gpu_session.sh)
#   SKIP_BENCH=1            no latency benchmark (a follow-up call that has its results already; no share kept for it)
#   BENCH2_ARGS="..."       a second benchmark after the first (e.g. the full path list with --compile), its
#                           files in $OUT/bench2/: BENCH2_CAP_S=240, AFTER_BENCH2_S=0 (left to the steps after it)
#   PYTEST_ARGS="..."       extra pytest arguments (e.g. --deselect a test that crashes the process)
#   PYTEST_PATHS="..."      test files to run instead of tests/ (a follow-up call)
#   PYTEST_K="EXPR"         only the GPU tests whose names match pytest's -k EXPR (e.g. those never run on a GPU)
#   TEST_WORKERS=N          pytest-xdist processes for the tests (the device image has xdist; 0 or 1: one
#                           process; default one per 20 GiB of GPU memory, at most 6: the 4K tests' float64
#                           references take several GiB each). Expected, not yet measured: most of a GPU test's time is the host's
#                           (Triton's compiles, the float64 references, Python), so several processes sharing the
#                           GPU get through more of the ~420 GPU tests than one (run 11: 32% of them in 170 s). A
#                           kernel that faults poisons only its worker's CUDA context; xdist replaces a crashed worker.
#   SKIP_CANARY=1, CANARY_CAP_S=150  the experimental kernels' canaries (benchmarks/canary.py)
#   LAYER_PROFILE=1         also run benchmarks/layer_profile.py (per-layer times, every kernel variant),
#                           after the benchmark: LAYER_PROFILE_CAP_S=90, and AFTER_BENCH_S=0 (what the
#                           benchmark leaves to the steps after it)
#   CRASH_DIAG="PYTEST ARGS" also run those tests verbosely under cuda-gdb, which prints the native
#                           backtrace of a crash (e.g. "tests/test_cuda_backend.py -k argument_checks");
#                           CRASH_DIAG_CAP_S=60
#   NCU=1                   Nsight Compute (SpeedOfLight, compute/memory workload, warp stalls) on one 1080p
#                           body layer per CUDA variant (benchmarks/ncu_body.py; NCU_VARIANTS="0,4,6"),
#                           after the layer profile: NCU_CAP_S=60 -> ncu.log in gpu_check_logs.tgz; NCU_FUSED=1
#                           adds the fused-tail last layer and the fused-head first layer (ncu_body.py --fused)
set -uo pipefail  # no -e: one failing step must not cost the rest of a device call

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT="${OUT:-$ROOT/benchmarks/results/gpu_check}"
mkdir -p "$OUT" "$ROOT/benchmarks/results"
unset TRITON_INTERPRET  # the GPU runs the real kernels, never the interpreter
export PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python3 || command -v python)}"  # the device image has python3 only
# Python packages the device image lacks (PyAV, pypng) travel as wheels in .whl/ (git-ignored; made by
# benchmarks/prepare_device.sh): installed into /tmp/site for this run.
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The device has no ../shared: the tests that need Set5 read the carried copy (carry=[".whl", "carry/Set5"]).
if [[ ! -d "$ROOT/../shared/data" && -d carry/Set5 && -z "${VDSR_FAST_DATA:-}" ]]; then
  mkdir -p /tmp/vdsr_fast_data/eval && ln -sfn "$ROOT/carry/Set5" /tmp/vdsr_fast_data/eval/Set5
  export VDSR_FAST_DATA=/tmp/vdsr_fast_data
fi

# The device tool returns at most 8 files from $OUT: on exit the logs become one archive beside the results,
# and so does the benchmark's .md (make_table.py renders the same tables from its JSON).
pack_logs() {
  local f logs=()
  for f in env.txt build.log canary.log canary.json pytest.log junit.xml pybench.log sanitizer.log video.log bench.log bench2.log layer_profile.log ncu.log crash_diag.log; do
    if [[ -f "$OUT/$f" ]]; then logs+=("$f"); fi
  done
  for f in "$OUT"/*.md; do
    if [[ -f "$f" ]]; then logs+=("$(basename "$f")"); fi
  done
  if ((${#logs[@]})) && tar czf "$OUT/gpu_check_logs.tgz" -C "$OUT" "${logs[@]}"; then
    (cd "$OUT" && rm -f "${logs[@]}")
  fi
}
trap pack_logs EXIT

BUDGET=${GPU_CHECK_BUDGET_S:-450}
CRASH_DIAG=${CRASH_DIAG:-}
BENCH_MIN=${BENCH_MIN_S:-170}
if [[ "${SKIP_BENCH:-0}" == 1 ]]; then BENCH_MIN=0; fi  # no benchmark: nothing to keep its share for
AFTER_BENCH=${AFTER_BENCH_S:-0}
RESERVE=$((BENCH_MIN + AFTER_BENCH))  # what each step before the benchmark leaves to it and the steps after it
T0=$(date +%s)
elapsed() { echo $(($(date +%s) - T0)); }
left() { echo $((BUDGET - $(elapsed))); }
log() { echo "[gpu_check +$(elapsed)s] $*"; }
# share CAP RESERVE: seconds a step may take, leaving RESERVE for what follows (0 = no time)
share() {
  local cap=$1 reserve=$2 avail
  avail=$(($(left) - reserve))
  if ((avail < cap)); then cap=$avail; fi
  if ((cap < 0)); then cap=0; fi
  echo "$cap"
}
SUMMARY=()

# ---------------------------------------------------------------- 0. card and versions
log "card and versions"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv || echo "nvidia-smi failed"
  command -v nvcc >/dev/null && nvcc --version | tail -n 2 || echo "nvcc: not found"
  "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton: not importable:", e)
try:  # setup.py builds with it (and sets the licence in the form it takes)
    import setuptools
    print("setuptools", setuptools.__version__)
except Exception as e:
    print("setuptools: not importable:", e)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB")
else:
    print("device: NO CUDA")
EOF
} 2>&1 | tee "$OUT/env.txt"

if [[ -z "${VDSR_FAST_CUDA_ARCHS:-}" ]]; then
  VDSR_FAST_CUDA_ARCHS=$("$PY" -c 'import torch; M, m = torch.cuda.get_device_capability(); print(f"{M}{m}" + ("a" if M == 9 else ""))' 2>/dev/null || echo "90a")
fi
export VDSR_FAST_CUDA_ARCHS
export VDSR_FAST_BUILD_JOBS=${VDSR_FAST_BUILD_JOBS:-$(nproc)}

# ---------------------------------------------------------------- 1. build the CUDA extension
BUILT=0
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  T=$(share "${BUILD_CAP_S:-180}" $((RESERVE + 90)))
  if ((T < 60)); then  # a budget too small for the reserve (run 6: 0 s, no build): everything else needs the build
    T=$(share "${BUILD_CAP_S:-180}" 30)
    log "the budget leaves the build under 60 s after the benchmark's reserve: it gets ${T}s, the steps after it less"
  fi
  log "building vdsr_fast._C in place (archs $VDSR_FAST_CUDA_ARCHS, $VDSR_FAST_BUILD_JOBS jobs, timeout ${T}s) -> $OUT/build.log"
  if ((T > 0)) && timeout "$T" "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
    log "build finished"
  else
    log "BUILD FAILED or timed out (rc=$?); continuing without the cuda backend. Last lines:"
    tail -n 25 "$OUT/build.log" || true
  fi
fi
if "$PY" -c "import vdsr_fast._C" >>"$OUT/build.log" 2>&1; then
  BUILT=1
  "$PY" -c "import vdsr_fast._C as C; print('body variants:', C.body_variants(), 'auto variant:', C.body_auto_variant(0))" \
    >>"$OUT/build.log" 2>&1 || true
  SUMMARY+=("build: vdsr_fast._C imports (archs $VDSR_FAST_CUDA_ARCHS: $(cuobjdump --list-elf vdsr_fast/_C*.so 2>/dev/null | grep -Eo 'sm_[0-9]+a?' | sort -u | tr '\n' ' ' || true))")
else
  SUMMARY+=("build: vdsr_fast._C NOT available (see build.log)")
fi
"$PY" -m vdsr_fast.cli info 2>&1 | tee -a "$OUT/env.txt" || true  # versions, each backend (or why not), auto variant

# ---------------------------------------------------------------- 1b. canaries of the experimental kernels
# One process per experimental option (benchmarks/canary.py), in the background while the tests run; the
# ones that fail (a fault would poison the timing processes' CUDA context) are skipped when timing.
CANARY_PID=""
if [[ "${SKIP_CANARY:-0}" != 1 ]]; then
  log "canaries of the experimental kernels, one process each, in the background -> $OUT/canary.log"
  timeout "${CANARY_CAP_S:-150}" "$PY" -m benchmarks.canary --all --out "$OUT" --timeout-s $((${CANARY_CAP_S:-150} - 15)) \
    >"$OUT/canary.log" 2>&1 &
  CANARY_PID=$!
fi

# ---------------------------------------------------------------- 2. GPU test suite
if [[ "${SKIP_TESTS:-0}" != 1 ]]; then
  T=$(share "${TEST_CAP_S:-150}" $((RESERVE + 30)))
  log "pytest tests (timeout ${T}s) -> $OUT/pytest.log, $OUT/junit.xml"
  # Only the tests that exercise the GPU (tests/conftest.py): the rest is what CI runs on its CPU.
  # shellcheck disable=SC2086
  # -v: the log names every test even when the cap cuts the run; SIGINT first so pytest still writes its
  # summary and junit.xml.
  XDIST=()
  W=${TEST_WORKERS:-$("$PY" -c "import torch; print(min(6, (torch.cuda.get_device_properties(0).total_memory >> 30) // 20))" 2>/dev/null || echo 1)}
  if ((W > 1)) && "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n "$W"); fi
  SELECT=()
  if [[ -n "${PYTEST_K:-}" ]]; then SELECT=(-k "$PYTEST_K"); fi
  ((T > 0)) && VDSR_FAST_GPU_TESTS_ONLY=1 timeout -s INT -k 15 "$T" "$PY" -m pytest ${PYTEST_PATHS:-tests} "${XDIST[@]}" "${SELECT[@]}" -v -rfE --maxfail=10 --durations=10 -p no:cacheprovider ${PYTEST_ARGS:-} \
    --junitxml="$OUT/junit.xml" >"$OUT/pytest.log" 2>&1
  rc=$?
  tail -n 30 "$OUT/pytest.log" || true
  case $rc in
    0) SUMMARY+=("tests: passed ($(grep -Eo '[0-9]+ passed.*' "$OUT/pytest.log" | tail -n 1 || true))") ;;
    124) SUMMARY+=("tests: TIMED OUT after ${T}s (partial log in pytest.log)") ;;
    *) SUMMARY+=("tests: FAILED rc=$rc ($(grep -E '(passed|failed|error)' "$OUT/pytest.log" | tail -n 1 || true))") ;;
  esac
fi

if [[ -n "$CANARY_PID" ]]; then
  wait "$CANARY_PID"
  grep '^canary' "$OUT/canary.log" || true
  if grep -q '^VDSR_FAST_BROKEN=' "$OUT/canary.log"; then
    VDSR_FAST_BROKEN=$(sed -n 's/^VDSR_FAST_BROKEN=//p' "$OUT/canary.log" | tail -n 1)
  else  # the canaries did not finish: trust none of the options
    VDSR_FAST_BROKEN=$("$PY" -c "from benchmarks.canary import OPTIONS; print(','.join(OPTIONS))")
  fi
  export VDSR_FAST_BROKEN
  SUMMARY+=("canaries: failed (skipped when timing): ${VDSR_FAST_BROKEN:-none}")
fi

# ---------------------------------------------------------------- 2b. the pytest-benchmark file, untimed
# benchmarks/test_bench_latency.py (issue 6's regression-tracking tests) with --benchmark-disable: each test
# checks its path against the reference and runs it once, so a GPU run proves the file works.
if [[ "${SKIP_PYBENCH:-0}" != 1 ]]; then
  T=$(share "${PYBENCH_CAP_S:-45}" $((RESERVE + 20)))
  if ((T >= 15)); then
    log "pytest benchmarks/test_bench_latency.py --benchmark-disable (timeout ${T}s) -> $OUT/pybench.log"
    BD=$("$PY" -c "import pytest_benchmark" 2>/dev/null && echo --benchmark-disable)  # (else the file skips)
    # shellcheck disable=SC2086
    timeout -s INT -k 10 "$T" "$PY" -m pytest benchmarks/test_bench_latency.py -q -rfE $BD \
      -p no:cacheprovider >"$OUT/pybench.log" 2>&1
    rc=$?
    SUMMARY+=("pytest-benchmark file: rc=$rc ($(grep -E '(passed|failed|error)' "$OUT/pybench.log" | tail -n 1 || true))")
  else
    SUMMARY+=("pytest-benchmark file: skipped (no time left)")
  fi
fi

# ---------------------------------------------------------------- 3. compute-sanitizer on the extension
if [[ "${SKIP_SANITIZER:-0}" != 1 && $BUILT == 1 ]]; then
  CS=$(command -v compute-sanitizer || true)
  if [[ -z "$CS" ]]; then
    for c in "$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer; do
      [[ -x "$c" ]] && CS=$c && break
    done
  fi
  T=$(share "${SANITIZER_CAP_S:-60}" $((RESERVE + 15)))
  if [[ -z "$CS" ]]; then
    SUMMARY+=("sanitizer: compute-sanitizer not found, skipped")
  elif ((T < 20)); then
    SUMMARY+=("sanitizer: skipped (no time left)")
  else
    log "compute-sanitizer memcheck on the cuda backend, 2x1x37x53 (timeout ${T}s) -> $OUT/sanitizer.log"
    # No caching allocator, so an out-of-bounds access leaves its own cudaMalloc block and is seen.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$T" "$CS" --tool memcheck --error-exitcode 7 --print-limit 20 \
      "$PY" -c "
import torch
from vdsr_fast import VDSR, Engine
torch.manual_seed(0)
m = VDSR()
for dt in (torch.float16, torch.bfloat16):
  for opts in ({'fuse_tail': False}, {}, {'mma_head': True, 'pdl': True}, {'body_variant': 12}, {'body_variant': 14},
               {'fuse_head': True}, {'fuse_head': True, 'pdl': True}, {'fuse_head': True, 'head_schedule': 2},
               {'tail_spread': True}):
    e = Engine(m, backend='cuda', dtype=dt, device='cuda', **opts)
    y = e(torch.rand(2, 1, 37, 53, device='cuda'))
    torch.cuda.synchronize()
    print('cuda backend', dt, opts, tuple(y.shape), 'finite:', bool(torch.isfinite(y).all()))
" >"$OUT/sanitizer.log" 2>&1
    rc=$?
    tail -n 15 "$OUT/sanitizer.log" || true
    grep -q "Device not supported" "$OUT/sanitizer.log" && rc=unsupported
    case $rc in
      0) SUMMARY+=("sanitizer: memcheck clean") ;;
      7) SUMMARY+=("sanitizer: MEMCHECK ERRORS (see sanitizer.log)") ;;
      124) SUMMARY+=("sanitizer: timed out after ${T}s") ;;
      unsupported) SUMMARY+=("sanitizer: compute-sanitizer does not support this machine's runtime (gVisor); not a kernel fault") ;;
      *) SUMMARY+=("sanitizer: run failed rc=$rc (see sanitizer.log)") ;;
    esac
  fi
fi

# ---------------------------------------------------------------- 3a. nothing else on the GPU while timing
# TIMING_GATE=FILE (gpu_session.sh: training shares the GPU with the build and the tests): wait until FILE
# exists, at most until only the video and benchmark shares are left, before anything is timed.
if [[ -n "${TIMING_GATE:-}" && ! -e "${TIMING_GATE}" ]]; then
  log "waiting for $TIMING_GATE before timing anything"
  while [[ ! -e "$TIMING_GATE" ]] && (($(left) > RESERVE + (${SKIP_VIDEO:-0} == 1 ? 0 : ${VIDEO_CAP_S:-90}) + 15)); do sleep 2; done
  [[ -e "$TIMING_GATE" ]] || SUMMARY+=("timing: $TIMING_GATE did not appear in time; timed with the GPU possibly shared")
  log "timing starts"
fi

# ---------------------------------------------------------------- 3b. vdsr-fast video: frames/s, GPU busy
if [[ "${SKIP_VIDEO:-0}" != 1 ]]; then
  T=$(share "${VIDEO_CAP_S:-90}" $((RESERVE + 15)))
  if ((T < 30)); then
    SUMMARY+=("video: skipped (no time left)")
  else
    log "bench_video: 960x540 -> 1920x1080, 120 frames, batch 8 (timeout ${T}s) -> $OUT/video.log"
    timeout "$T" "$PY" -m benchmarks.bench_video --out "$OUT" >"$OUT/video.log" 2>&1
    rc=$?
    tail -n 3 "$OUT/video.log" || true
    if ((rc == 0)); then
      SUMMARY+=("video: $(tail -n 1 "$OUT/video.log" | sed 's/ -> [^ ]*$//' | cut -c1-200)")
      cp "$OUT"/*_video_*.json "$ROOT/benchmarks/results/" 2>/dev/null || true
    else
      SUMMARY+=("video: FAILED rc=$rc (see video.log)")
    fi
  fi
fi

# ---------------------------------------------------------------- 4. the benchmark
JSON=""
if [[ "${SKIP_BENCH:-0}" != 1 ]]; then
  T=$(share 100000 $((15 + AFTER_BENCH)))
  # steps before it that ran long: the steps after it give way (and `timeout 0` would mean no limit at all)
  if ((T < BENCH_MIN)); then T=$(share "$BENCH_MIN" 15); fi
  if ((T < 40)); then
    SUMMARY+=("bench: skipped (no time left)")
  else
    BUDGET_IN=$((T - 45))  # the benchmark stops starting new rows this early, then writes its files
    ((BUDGET_IN < 30)) && BUDGET_IN=30
    log "benchmark (timeout ${T}s, row budget ${BUDGET_IN}s) -> $OUT/bench.log"
    MARK=$(mktemp)  # its JSON is newer than this: not canary.json, nor a JSON of an earlier call left in $OUT
    # shellcheck disable=SC2086
    timeout "$T" "$PY" -m benchmarks.bench_latency --out "$OUT" --budget-s "$BUDGET_IN" ${BENCH_ARGS:-} >"$OUT/bench.log" 2>&1
    rc=$?
    JSON=$(find "$OUT" -maxdepth 1 -name '*.json' -newer "$MARK" ! -name canary.json ! -name '*_video_*' \
      ! -name '*layer_profile_*' -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -n 1 | cut -d' ' -f2- || true)
    rm -f "$MARK"
    case $rc in
      0) SUMMARY+=("bench: done") ;;
      3) SUMMARY+=("bench: done, SOME PATH FAILED ITS REFERENCE CHECK (rows marked FAIL)") ;;
      124) SUMMARY+=("bench: TIMED OUT after ${T}s; the table below is what was saved") ;;
      *) SUMMARY+=("bench: exited rc=$rc (see bench.log)"); tail -n 30 "$OUT/bench.log" || true ;;
    esac
    if [[ -n "$JSON" ]]; then
      cp "$JSON" "${JSON%.json}.md" "$ROOT/benchmarks/results/" 2>/dev/null || true
      SUMMARY+=("results: $JSON (copied to benchmarks/results/)")
    fi
  fi
fi

# ---------------------------------------------------------------- 4a. a second benchmark (BENCH2_ARGS="...")
# e.g. a focused first benchmark (the kernel variants at two sizes) and then the full path list with --compile:
# its JSON/PNG go to $OUT/bench2/ (copied to benchmarks/results/ too), its .md into the logs archive.
JSON2=""
if [[ -n "${BENCH2_ARGS:-}" && "${SKIP_BENCH:-0}" != 1 ]]; then
  T=$(share "${BENCH2_CAP_S:-240}" $((10 + ${AFTER_BENCH2_S:-0})))
  if ((T >= 60)); then
    log "second benchmark: $BENCH2_ARGS (timeout ${T}s, row budget $((T - 45))s) -> $OUT/bench2.log"
    # shellcheck disable=SC2086
    timeout "$T" "$PY" -m benchmarks.bench_latency --out "$OUT/bench2" --budget-s $((T - 45)) $BENCH2_ARGS \
      >"$OUT/bench2.log" 2>&1
    rc=$?
    JSON2=$(ls -t "$OUT"/bench2/*.json 2>/dev/null | head -n 1 || true)
    SUMMARY+=("second benchmark: rc=$rc ${JSON2:-no JSON}")
    if [[ -n "$JSON2" ]]; then
      cp "$JSON2" "${JSON2%.json}.md" "$ROOT/benchmarks/results/" 2>/dev/null || true
      mv "${JSON2%.json}.md" "$OUT/bench2.md" 2>/dev/null || true
    fi
  else
    SUMMARY+=("second benchmark: skipped (no time left)")
  fi
fi

# ---------------------------------------------------------------- 4b. per-layer profile (LAYER_PROFILE=1)
if [[ "${LAYER_PROFILE:-0}" == 1 ]]; then
  T=$(share "${LAYER_PROFILE_CAP_S:-90}" $((10 + (${#CRASH_DIAG} > 0 ? ${CRASH_DIAG_CAP_S:-60} : 0) + (${NCU:-0} == 1 ? ${NCU_CAP_S:-60} : 0))))
  log "layer profile, 1080p fp16 (timeout ${T}s) -> $OUT/layer_profile.log"
  rc=skipped
  ((T >= 10)) && { timeout "$T" "$PY" -m benchmarks.layer_profile --out "$OUT" --budget-s $((T > 40 ? T - 20 : T / 2)) \
    >"$OUT/layer_profile.log" 2>&1; rc=$?; }
  cp "$OUT"/layer_profile_*.json "$ROOT/benchmarks/results/" 2>/dev/null || true
  SUMMARY+=("layer profile: rc=$rc ($(ls "$OUT"/layer_profile_*.json 2>/dev/null | head -n 1))")
fi

# ---------------------------------------------------------------- 4b2. Nsight Compute on the body kernels (NCU=1)
if [[ "${NCU:-0}" == 1 && $BUILT == 1 ]]; then
  NCU_BIN=$(command -v ncu || true)
  if [[ -z "$NCU_BIN" ]]; then
    for c in /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu; do [[ -x "$c" ]] && NCU_BIN=$c && break; done
  fi
  T=$(share "${NCU_CAP_S:-60}" $((5 + (${#CRASH_DIAG} > 0 ? ${CRASH_DIAG_CAP_S:-60} : 0))))
  if [[ -z "$NCU_BIN" ]]; then
    SUMMARY+=("ncu: not found, skipped")
  elif ((T < 20)); then
    SUMMARY+=("ncu: skipped (no time left)")
  else
    log "Nsight Compute, one 1080p fp16 body layer per variant (timeout ${T}s) -> $OUT/ncu.log"
    FUSED=()
    if [[ "${NCU_FUSED:-0}" == 1 ]]; then FUSED=(--fused); fi  # NCU_FUSED=0 is off (it was "set", so on)
    # shellcheck disable=SC2086
    # --clock-control none: the card's clocks as they are (ncu would otherwise lock them to base while profiling)
    timeout "$T" "$NCU_BIN" --clock-control none -k regex:conv3x3_ --section SpeedOfLight --section ComputeWorkloadAnalysis \
      --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section InstructionStats \
      --section Occupancy "$PY" -m benchmarks.ncu_body ${NCU_VARIANTS:+--variants $NCU_VARIANTS} \
      "${FUSED[@]}" >"$OUT/ncu.log" 2>&1
    rc=$?
    SUMMARY+=("ncu: rc=$rc, $(grep -c 'conv3x3_.*Context' "$OUT/ncu.log" || true) kernels profiled (ncu.log)")
  fi
fi

# ---------------------------------------------------------------- 4c. crash diagnosis (CRASH_DIAG="pytest args")
if [[ -n "${CRASH_DIAG:-}" ]]; then
  T=$(share "${CRASH_DIAG_CAP_S:-60}" 5)
  log "crash diagnosis: pytest $CRASH_DIAG under cuda-gdb (timeout ${T}s) -> $OUT/crash_diag.log"
  GDB=()
  command -v cuda-gdb >/dev/null && GDB=(cuda-gdb -q -batch -ex run -ex bt --args)
  rc=skipped
  # shellcheck disable=SC2086
  ((T >= 10)) && { timeout "$T" "${GDB[@]}" "$PY" -X faulthandler -m pytest -v -p no:cacheprovider $CRASH_DIAG \
    >"$OUT/crash_diag.log" 2>&1; rc=$?; }
  SUMMARY+=("crash diagnosis: rc=$rc, last test line: $(grep -E 'PASSED|FAILED|SKIPPED|ERROR|SIGSEGV' "$OUT/crash_diag.log" | tail -n 1 | cut -c1-120 || true)")
fi

# ---------------------------------------------------------------- 5. summary, then the table last
echo
[[ -f "$OUT/bench.log" ]] && { grep -E '^(not run|ERROR|WRONG|note):' "$OUT/bench.log" | cut -c1-180 || true; }  # full lines: bench.log
echo
log "summary"
for s in "${SUMMARY[@]}"; do echo "  - $s"; done
echo
if [[ -f "$OUT/layer_profile.log" ]]; then
  sed -n '/^\*\*/,$p' "$OUT/layer_profile.log"
  echo
fi
if [[ -n "$JSON2" ]]; then
  "$PY" benchmarks/make_table.py "$JSON2" --pivot || true
  echo
fi
if [[ -n "$JSON" ]]; then
  "$PY" benchmarks/make_table.py "$JSON" --pivot || true
  echo
  "$PY" benchmarks/make_table.py "$JSON"
elif [[ "${SKIP_BENCH:-0}" != 1 ]]; then
  echo "no results JSON was written (see $OUT/bench.log)"
  exit 1
fi

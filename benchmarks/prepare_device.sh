#!/usr/bin/env bash
# Make the git-ignored folders a device call carries, on this (networked, CPU-only) machine, once per checkout:
#
#     bash benchmarks/prepare_device.sh            # both
#     bash benchmarks/prepare_device.sh whl        # .whl/ only   (gpu_check.sh: carry=[".whl"])
#     bash benchmarks/prepare_device.sh carry      # carry/ only  (gpu_train.sh: carry=["carry", "runs/gpu"])
#
#   .whl/   wheels of what the device image lacks (PyAV for the video tests and benchmark, pypng for the
#           PNG reader), for its Python (3.12, x86_64); gpu_check.sh installs them into /tmp/site.
#   carry/  carry/y291.npz, the 291 set's Y planes (8-bit, stored with LZMA: 23 MB instead of 27 MB, so
#           that carry/ and .whl/ fit the 64 MiB a call may take beside the tree: gpu_session.sh), and
#           carry/Set5, a copy of ../shared/data/eval/Set5 for the trainer's periodic PSNR.
#   carry_eval/  carry_eval/Set14 (17 MB), for gpu_train.sh's closing Set14 score (carry=["carry", "carry_eval"]
#           in a training call; it does not fit beside .whl/).
# It ends with the sizes and what is left of the 64 MiB a call may carry.
# Knobs: DEVICE_PYTHON=3.12, DEVICE_PLATFORM=manylinux_2_28_x86_64, DATA=../shared/data, PYTHON (default .venv/bin/python
# where it exists, else python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# the project's venv where there is one (it has torch, which the carry step needs), else python3
PY="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || command -v python3 || command -v python)}"
DATA="${DATA:-../shared/data}"
what="${1:-all}"
case "$what" in all | whl | carry) ;; *)
  echo "usage: $0 [all|whl|carry]" >&2
  exit 2
  ;;
esac

if [[ $what != carry ]]; then
  # The same lower bounds as pyproject.toml; binary wheels only (the device cannot build anything).
  rm -rf .whl.tmp
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest .whl.tmp \
    --python-version "${DEVICE_PYTHON:-3.12}" --platform "${DEVICE_PLATFORM:-manylinux_2_28_x86_64}" \
    "av>=18" "pypng>=0.20220715"
  rm -rf .whl && mv .whl.tmp .whl
fi

if [[ $what != whl ]]; then
  for need in "$DATA/train/T91" "$DATA/train/BSD200" "$DATA/eval/Set5"; do
    [[ -d $need ]] || { echo "prepare_device: $need is missing (the SR data sets: see the developers' guide)" >&2; exit 2; }
  done
  mkdir -p carry
  rm -rf carry/Set5 && cp -r "$DATA/eval/Set5" carry/Set5 && chmod -R u+w carry/Set5  # the data is read-only
  if [[ -d $DATA/eval/Set14 ]]; then
    rm -rf carry_eval && mkdir -p carry_eval && cp -r "$DATA/eval/Set14" carry_eval/Set14 && chmod -R u+w carry_eval
  fi
  if [[ ! -f carry/y291.npz ]]; then
    "$PY" - "$DATA" <<'EOF'
import os
import sys
import zipfile

from vdsr_fast.train import load_train_y

data = sys.argv[1]
load_train_y([f"{data}/train/T91", f"{data}/train/BSD200"], "carry/y291.raw.npz")
with zipfile.ZipFile("carry/y291.raw.npz") as src, zipfile.ZipFile("carry/y291.tmp.npz", "w", zipfile.ZIP_LZMA) as dst:
    for name in src.namelist():
        dst.writestr(name, src.read(name))
os.replace("carry/y291.tmp.npz", "carry/y291.npz")
os.remove("carry/y291.raw.npz")
EOF
  fi
fi

du -sh .whl carry carry_eval 2>/dev/null || true
tree_kib=$(git ls-files -z | du -ck --files0-from=- | tail -n 1 | cut -f1)
extra_kib=$(du -sk .whl carry 2>/dev/null | awk '{s += $1} END {print s + 0}')
echo "tracked tree $((tree_kib / 1024)) MiB + .whl/carry $((extra_kib / 1024)) MiB of the 64 MiB a call may carry (carry_eval/: training calls only)"

"""Shared test setup.

On a machine without CUDA the Triton kernels run in Triton's CPU interpreter: TRITON_INTERPRET must be
set before triton is first imported, which is why it is set here (conftest loads before any test).
The checkout's root goes on sys.path so tests can import ``benchmarks`` (a folder, not part of the package).
"""

import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:  # fp32 references in true fp32: PyTorch runs cuDNN's fp32 convolutions in TF32 by default (10-bit mantissa
    # products), which would loosen the kernel tests' fp32 "same dtype" bound from ~1e-5 to ~1e-3. Set here, not with
    # vdsr_fast.engine.tf32_mode (a lock the tests' threads take too); the tests of TF32 itself set it themselves.
    _conv = getattr(torch.backends.cudnn, "conv", None)
    if _conv is not None and hasattr(_conv, "fp32_precision") and hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        _conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The SR data sets: ../shared/data beside the checkout, or VDSR_FAST_DATA (gpu_check.sh points it at the carried
# copy of Set5 on a GPU machine, which has no ../shared).
DATA = Path(os.environ.get("VDSR_FAST_DATA") or ROOT.parent / "shared" / "data")


def need_data(*parts: str) -> Path:
    """The path under ../shared/data (or $VDSR_FAST_DATA), or skip the test with the reason when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test data not found at {path} (the SR data sets live in ../shared/data)")
    return path


# With VDSR_FAST_GPU_TESTS_ONLY=1 (benchmarks/gpu_check.sh sets it on a GPU machine, whose test time is
# short) only the tests that exercise the GPU run: the kernel test files, whose every test runs natively
# there, and the tests marked `gpu` elsewhere, and those marked `device_image` (a library whose release there
# differs from CI's, e.g. PyAV 19 against 18). Everything else is what CI runs on the CPU anyway.
GPU_TEST_FILES = {
    "test_cuda_backend.py",
    "test_fp8.py",
    "test_fused_color.py",
    "test_triton_backend.py",
    "test_triton_conv3x3.py",
    "test_triton_tail.py",
    "test_triton_tma.py",
    "test_triton_winograd.py",
}


# Tests of the experimental kernels (not yet defaults), run last on a GPU: a kernel that faults leaves the
# process's CUDA context unusable, and every test after it would fail too.
EXPERIMENTAL = ("winograd", "wgmma", "swap", "tune", "every_body_variant", "every_variant", "tensor_core_head", "fp8",
                "fused_head", "spread")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("VDSR_FAST_GPU_TESTS_ONLY") != "1":
        return
    keep = [i for i in items if i.get_closest_marker("gpu") or i.get_closest_marker("device_image")
            or i.path.name in GPU_TEST_FILES]  # fmt: skip
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    def order(item):  # stable sort: defaults, experimental Triton kernels, experimental CUDA kernels (hand-written PTX)
        experimental = any(k in item.nodeid.lower() for k in EXPERIMENTAL)
        return experimental, experimental and item.path.name == "test_cuda_backend.py"

    items[:] = sorted(keep, key=order)


def pytest_runtest_logreport(report):
    """On a GPU run (VDSR_FAST_GPU_TESTS_ONLY=1) a failure's traceback, and each phase of 5 s or more, go to the log at
    once: the device call's time cap may kill pytest before its summary (run 11 lost the tracebacks of its three
    failures that way)."""
    if os.environ.get("VDSR_FAST_GPU_TESTS_ONLY") != "1" or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # (with pytest-xdist the controller receives every worker's reports: it writes them once)
    if report.failed:
        sys.stderr.write(f"\n--- FAILED {report.nodeid} ({report.when}):\n{report.longreprtext}\n")
    elif report.duration >= 5:  # and the slow phases, for sizing the next device call's test share
        sys.stderr.write(f"\n--- SLOW {report.nodeid} ({report.when}): {report.duration:.1f} s\n")
    sys.stderr.flush()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_model():
    """A small random VDSR (depth 4, 8 channels) with non-zero biases: fast on a CPU."""
    from vdsr_fast import VDSR

    m = VDSR(depth=4, channels=8)
    with torch.no_grad():
        for conv in m.layers:
            conv.bias.uniform_(-0.05, 0.05)
    return m.eval()

"""The Triton kernels compile for the GPUs that are not here: sm_80 (A100) and sm_90a (H100).

The interpreter tests check what the kernels compute; this checks that Triton's real compiler accepts
them, exactly as the engine launches them (benchmarks/triton_aot.py captures the launchers' arguments
and specialises them like Triton's launcher), for fp16, bf16 and fp32 and for frame sizes with and
without multiples of 16. It also checks the properties a GPU run would otherwise be the first to
find: shared memory within the card's per-block limit, and the 16-bit body layer on tensor cores
(``wgmma`` on sm_90a, ``mma.sync`` on sm_80) fed by ``cp.async``.
It runs in a subprocess: the compiler needs a process where triton is not in interpreter mode.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "benchmarks.triton_aot", "--json", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, f"compilation failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return json.loads(out.read_text())


def test_every_kernel_compiles_for_sm80_and_sm90a(rows):
    kernels = {(r["kernel"], r["target"], r["dtype"], r["shape"]) for r in rows}
    for target in ("sm_80", "sm_90a"):
        for dtype in ("float16", "bfloat16", "float32"):
            for shape in ("aligned", "odd"):
                for kernel in ("_conv3x3_kernel(head)", "_conv3x3_kernel", "_tail_kernel"):
                    assert (kernel, target, dtype, shape) in kernels


def test_shared_memory_fits_the_card(rows):
    limit = {"sm_80": 163 * 1024, "sm_90a": 227 * 1024}
    for r in rows:
        assert r["shared_bytes"] <= limit[r["target"]], r


def test_16bit_body_runs_on_tensor_cores(rows):
    body = [r for r in rows if r["kernel"] == "_conv3x3_kernel" and r["dtype"] in ("float16", "bfloat16")]
    assert body
    for r in body:
        assert r["cp_async"], r
        assert r["wgmma"] if r["target"] == "sm_90a" else r["mma_sync"], r

"""The Triton kernels compile for the GPUs that are not here: sm_80 (A100) and sm_90a (H100).

The interpreter tests check what the kernels compute; this checks that Triton's real compiler accepts
them, exactly as the engine launches them (benchmarks/triton_aot.py captures the launchers' arguments
and specialises them like Triton's launcher), for fp16, bf16 and fp32 and for frame sizes with and
without multiples of 16. It also checks the properties a GPU run would otherwise be the first to
find: shared memory within the card's per-block limit, the 16-bit body layer on tensor cores
(``wgmma`` on sm_90a, ``mma.sync`` on sm_80) fed by ``cp.async``, 16-byte NHWC loads and stores, and
every body config the GPU benchmark sweeps compiling for sm_90a.
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


def _compile(tmp_path_factory, *args: str) -> list[dict]:
    out = tmp_path_factory.mktemp("aot") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "benchmarks.triton_aot", "--json", str(out), *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, f"compilation failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Every launch of a forward with the default configs: sm_80 and sm_90a, three dtypes, two shapes."""
    return _compile(tmp_path_factory)


@pytest.fixture(scope="module")
def candidate_rows(tmp_path_factory):
    """The fp16 body in every config the GPU benchmark sweeps (incl. the experimental SHARE_ROW and SWAP, and the
    Winograd kernel's candidates), for sm_90a."""
    return _compile(tmp_path_factory, "--candidates", "--dtypes", "float16", "--targets", "90", "--shapes", "aligned")


def test_every_kernel_compiles_for_sm80_and_sm90a(rows):
    kernels = {(r["kernel"], r["target"], r["dtype"], r["shape"]) for r in rows}
    for target in ("sm_80", "sm_90a"):
        for dtype in ("float16", "bfloat16", "float32"):
            for shape in ("aligned", "odd"):
                for kernel in ("_conv3x3_kernel(head)", "_conv3x3_kernel", "_tail_kernel", "_conv3x3_kernel(tail)",
                               "_tail_gather_kernel"):  # fmt: skip
                    assert (kernel, target, dtype, shape) in kernels


def test_shared_memory_fits_the_card(rows):
    limit = {"sm_80": 163 * 1024, "sm_90a": 227 * 1024}
    for r in rows:
        assert r["shared_bytes"] <= limit[r["target"]], r


def test_16bit_body_runs_on_tensor_cores(rows):
    """The body layer, and the last one with the tail's partial sums fused (fuse_tail)."""
    body = [r for r in rows if r["kernel"] in ("_conv3x3_kernel", "_conv3x3_kernel(tail)") and r["dtype"] in ("float16", "bfloat16")]
    assert body
    for r in body:
        assert r["cp_async"], r
        assert r["wgmma"] if r["target"] == "sm_90a" else r["mma_sync"], r


def test_hoppers_default_body_compiles_to_tma_and_wgmma(rows):
    """The body the engine runs on compute capability 9.0+ in fp16 and bf16 (``default_body_config``: the TMA kernel
    with ``tma_config``): TMA copies and wgmma on sm_90a, within shared memory, without spills, in both shapes."""
    body = [r for r in rows if r["kernel"] == "_conv3x3_tma_kernel" and r["target"] == "sm_90a"]
    assert {(r["dtype"], r["shape"]) for r in body} == {(d, s) for d in ("float16", "bfloat16") for s in ("aligned", "odd")}
    for r in body:
        assert "SWAP=True" in r["config"] and r["tma"] and r["wgmma"] and not r["spill_bytes"], r
        assert r["shared_bytes"] <= 227 * 1024, r


def test_nhwc_traffic_is_vectorised(rows):
    """16-byte accesses: the conv kernels' NHWC output stores, and the tail's 64-channel activation loads
    (not the fused tail's 9-float partial sums, 36-byte rows, nor their gather). The TMA body's tiles move by TMA."""
    for r in rows:
        if r["kernel"] in ("_conv3x3_kernel(tail)", "_tail_gather_kernel", "_upscale_kernel", "_finish_kernel"):
            continue
        if r["kernel"] == "_conv3x3_tma_kernel":
            assert r["tma"], r
            continue
        if r["kernel"].startswith("_conv3x3_kernel"):
            assert r["st_v4"], r
        else:
            assert r["ld_v4"], r


def test_colour_kernels_compile_without_fma(rows):
    """upscale(fused_color=True)'s kernels for both targets, 8-bit NHWC / 16-bit / float frames in and out: every
    product and sum rounded on its own (enable_fp_fusion=False: no fma.rn.f32), as PyTorch's operations round."""
    colour = [r for r in rows if r["kernel"] in ("_upscale_kernel", "_finish_kernel")]
    assert {(r["kernel"], r["target"]) for r in colour} == {
        (k, t) for k in ("_upscale_kernel", "_finish_kernel") for t in ("sm_80", "sm_90a")
    }
    for r in colour:
        assert not r["fp32_fma"] and not r["spill_bytes"], r


def test_every_swept_body_config_compiles_for_hopper(candidate_rows):
    body = [r for r in candidate_rows if r["kernel"] == "_conv3x3_kernel"]
    assert len(body) >= 10 and any("SHARE_ROW=True" in r["config"] for r in body)
    assert any("SWAP=True" in r["config"] for r in body)
    for r in body:
        assert r["shared_bytes"] <= 227 * 1024 and r["wgmma"] and r["cp_async"], r


def test_every_tma_candidate_compiles_to_tma_on_hopper(candidate_rows):
    """The tensor-descriptor body: TMA copies (cp.async.bulk.tensor) and wgmma in every swept config."""
    body = [r for r in candidate_rows if r["kernel"] == "_conv3x3_tma_kernel"]
    assert len(body) >= 5
    for r in body:
        assert r["shared_bytes"] <= 227 * 1024 and r["wgmma"] and r["tma"] and not r["spill_bytes"], r


def test_every_winograd_candidate_compiles_for_hopper(candidate_rows):
    """The Winograd body's sweep: within shared memory, on tensor cores (``wgmma`` needs 64-tile M blocks;
    the 32-tile candidate gets ``mma.sync``), and the default config without register spills."""
    rows = [r for r in candidate_rows if r["kernel"] == "_winograd_kernel"]
    assert len(rows) >= 10 and any("TILE_TW=16" in r["config"] for r in rows)
    for r in rows:
        assert r["shared_bytes"] <= 227 * 1024 and (r["wgmma"] or r["mma_sync"]), r
    default = [r for r in rows if r["config"].startswith("BLOCK_T=64, BLOCK_N=64, BLOCK_K=64, TILE_TW=0, num_warps=8, num_stages=2")]
    assert default and default[0]["wgmma"] and default[0]["cp_async"] and default[0]["spill_bytes"] == 0, default


@pytest.fixture(scope="module")
def fp8_rows(tmp_path_factory):
    """The opt-in FP8 engine's launches (vdsr_fast.fp8) and every TMA tile its benchmark sweeps, for sm_90a."""
    return _compile(tmp_path_factory, "--candidates", "--dtypes", "float8_e4m3fn", "--targets", "90")


def test_fp8_body_runs_on_8bit_wgmma(fp8_rows):
    """The FP8 body (and its fused-tail layer) compile to wgmma on e4m3 operands fed by TMA (an upcast to 16 bits
    would forfeit the 2x), within Hopper's shared memory, without spills, in every swept tile."""
    kernels = {(r["kernel"], r["shape"]) for r in fp8_rows}
    for shape in ("aligned", "odd"):
        for kernel in ("_conv3x3_kernel(head)", "_conv3x3_tma_kernel", "_conv3x3_tma_kernel(tail)", "_tail_gather_kernel"):
            assert (kernel, shape) in kernels
    body = [r for r in fp8_rows if r["kernel"].startswith("_conv3x3_tma_kernel")]
    assert len({r["config"] for r in body}) >= 8
    for r in body:
        assert r["e4m3_mma"] and r["wgmma"] and r["tma"], r
        assert r["shared_bytes"] <= 227 * 1024 and r["spill_bytes"] == 0, r

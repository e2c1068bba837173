"""VDSR latency benchmark: every available path, checked against the float64 reference, then timed.

    python -m benchmarks.bench_latency                       # GPU: 720p, 1080p, 4K, 720p x8 + upscale()
    python -m benchmarks.bench_latency --compile             # + torch.compile max-autotune (slow to build)
    python -m benchmarks.bench_latency --smoke --out /tmp/b  # CPU: tiny sizes, seconds (CI)

Paths (network only, Y plane ``(N, 1, H, W)`` of the output size):
  eager_fp32 / eager_tf32 / eager_fp16 (NCHW) / eager_fp16_cl  PyTorch ``F.conv2d`` chain
  cudnn_fused_fp16       ``torch.cudnn_convolution_relu`` for layers 0..L-2, fp16 channels_last, then a
                         plain conv and the residual add (the cuDNN baseline of DESIGN.md §7)
  compile_fp16_cl        ``torch.compile(mode="max-autotune-no-cudagraphs")`` of the eager fp16 CL chain
  engine_<backend>_<dt>  ``Engine(model, backend, dtype)`` for each backend ``available_backends()``
                         reports, fed the public contract's fp32 Y plane
and end to end, ``e2e_<backend>_<dt>``: ``upscale()`` on uint8 RGB frames 960x540 -> 1920x1080 (on a GPU the fast backends
also with the colour pipeline fused, ``e2e_<backend>_fused_<dt>``: ``upscale(fused_color=True)``), and
``e2e_<backend>_yuv_<dt>``: ``upscale_yuv()`` on the same frames as uint8 4:2:0 BT.709 planes (a decoder's).

Every path is first checked once on a small input against the float64 reference with DESIGN.md §6's
rule ``err(path) <= 2 * err(PyTorch, same precision) + atol[precision]``; a path that fails is reported
as ``check_failed`` and not timed. Timing: ``triton.testing.do_bench`` (CUDA events without triton,
``time.perf_counter`` on the CPU), after warm-up, rotating among preallocated inputs. The fp16 matmul
ceiling is measured in the same run with the same timer. Results: a JSON (card, driver, versions,
date, every row) and a markdown file under ``--out``, a PNG if matplotlib imports, and the markdown
table printed last. Exit status 0, or 3 when some path failed its reference check.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import functools
import gc
import itertools
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/bench_latency.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks.canary import broken
from benchmarks.make_table import render_markdown
from vdsr_fast.cli import size_arg
from vdsr_fast.engine import tf32_mode
from vdsr_fast.reference import VDSR, flops_per_pixel, vdsr_forward
from vdsr_fast.reference import channels_last as to_channels_last
from vdsr_fast.verify import ATOL as VERIFY_ATOL
from vdsr_fast.verify import compare

__all__ = [
    "BenchConfig",
    "BenchResult",
    "CheckResult",
    "PathSpec",
    "ATOL",
    "check_against_reference",
    "build_paths",
    "time_callable",
    "run",
    "main",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAMED_SIZES = {
    "720p": (1280, 720),
    "1080p": (1920, 1080),
    "1440p": (2560, 1440),
    "4k": (3840, 2160),
    "2160p": (3840, 2160),
}
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# DESIGN.md §6: err(path) <= 2 * err(PyTorch in the same precision) + ATOL[precision], errors being the
# max |difference| to the float64 reference on the same weights and input. The atol terms are about one
# output ulp near 1.0 (the Y plane is in [0, 1]) for the half types, a few fp32 ulps otherwise; fp8 (the opt-in
# vdsr_fast.fp8 scheme, whose "same precision" run is its PyTorch emulation): vdsr_fast.verify's.
ATOL = {"fp64": 1e-12, "fp32": 1e-5, "tf32": 1e-3, "fp16": 1e-3, "bf16": 1e-2, "fp8": VERIFY_ATOL[torch.float8_e4m3fn]}

# Table order of the network paths (rows are sorted by size, then by this rank).
_RANK = [
    "eager_fp32",
    "eager_tf32",
    "eager_fp16",
    "eager_fp16_cl",
    "compile_fp16_cl",
    "cudnn_fused_fp16",
    "engine_",
    "e2e_",
]
CUDNN_KEY, EAGER_FP16_KEY = "cudnn_fused_fp16", "eager_fp16_cl"
CUDNN_END_KEY = "cudnn_fused_fp16_end"  # cuDNN's chain timed again after every other row: the run's drift


# --------------------------------------------------------------------------------------------------
# configuration and results


@dataclass
class BenchConfig:
    """What to run and how to time it (defaults: the GPU run of DESIGN.md §7)."""

    device: str = "cuda"
    sizes: list[str] = field(default_factory=lambda: ["720p", "1080p", "4k", "720p:8"])
    paths: list[str] | None = None  # fnmatch patterns over path keys; None = every default path
    backends: list[str] | None = None  # engine backends; None = every available one
    # every storage dtype of the engines (the CUDA backend has no fp32 or fp8: its rows say so)
    engine_dtypes: list[str] = field(default_factory=lambda: ["fp16", "bf16", "fp32", "fp8"])
    compile: bool = False
    compile_sizes: list[str] = field(default_factory=lambda: ["1080p"])
    e2e_batches: list[int] = field(default_factory=lambda: [1, 8])
    e2e_lr_size: tuple[int, int] = (960, 540)  # (W, H) of the low-resolution RGB frame
    e2e_scale: float = 2  # any factor upscale() takes, e.g. 1.5 with e2e_lr_size (1280, 720): 720p -> 1080p
    e2e_dtype: str = "fp16"
    warmup_ms: float = 25.0
    rep_ms: float = 200.0
    min_iters: int = 10
    n_inputs: int = 3  # inputs rotated through while timing
    check_shape: tuple[int, int, int, int] = (2, 1, 48, 80)
    peak_size: int = 8192  # the M = N = K of the fp16 matmul timed for the ceiling
    cudnn_benchmark: bool = True
    weights: str | None = None
    model_depth: int = 20  # only for random weights (no --weights and no shipped file, or --smoke)
    model_channels: int = 64
    seed: int = 0
    smoke: bool = False
    budget_s: float | None = None  # stop timing new rows after this many seconds (rows left: skipped)
    out: str | None = None
    plot: bool = True

    @classmethod
    def smoke_config(cls, out: str | None = None) -> BenchConfig:
        """Tiny CPU run that exercises every code path in a few seconds."""
        return cls(
            device="cpu",
            sizes=["16x16", "16x16:2"],
            paths=["eager_fp32", "eager_fp16_cl", CUDNN_KEY, "engine_*", "e2e_*"],
            engine_dtypes=["fp32", "fp16"],
            e2e_batches=[1, 2],
            e2e_lr_size=(8, 8),
            e2e_dtype="fp32",
            warmup_ms=0.0,
            rep_ms=0.0,
            min_iters=2,
            n_inputs=2,
            check_shape=(1, 1, 12, 12),
            peak_size=256,
            model_depth=5,  # a small random VDSR: the code paths, not the numbers, are what CI checks
            model_channels=16,
            smoke=True,
            out=out,
            plot=False,
        )


@dataclass
class CheckResult:
    """One DESIGN.md §6 comparison against the float64 reference."""

    shape: list[int]
    precision: str
    err: float  # max |path - ref64|
    torch_err: float  # max |PyTorch same precision - ref64|
    atol: float
    bound: float  # 2 * torch_err + atol
    passed: bool
    note: str = ""


@dataclass
class BenchResult:
    """One row: a path at one size and batch."""

    key: str
    path: str
    kind: str  # "network" | "e2e"
    dtype: str
    size: str
    width: int
    height: int
    batch: int
    status: str = "ok"  # ok | check_failed | error | skipped
    note: str = ""
    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    n_iters: int | None = None
    fps: float | None = None
    tflops: float | None = None
    pct_peak: float | None = None
    speedup_vs_cudnn: float | None = None
    speedup_vs_eager_fp16: float | None = None
    peak_mem_mb: float | None = None
    check: dict | None = None


@dataclass
class PathSpec:
    """A network-only path: ``build(model, device)`` returns ``(fn, note)``, fn maps an input to y'."""

    key: str
    name: str
    precision: str  # fp32 | tf32 | fp16 | bf16: the "same precision" PyTorch run of the check
    input_dtype: torch.dtype
    channels_last: bool
    build: Callable[[VDSR, torch.device], tuple[Callable[[torch.Tensor], torch.Tensor], str]]
    unavailable: str | None = None  # a reason: the path is listed as skipped
    tf32: bool = False
    sizes: list[str] | None = None  # restrict to these sizes (torch.compile: it compiles per shape)


# --------------------------------------------------------------------------------------------------
# helpers


def parse_size(spec: str) -> tuple[str, int, int, int]:
    """``"720p"``, ``"4k:1"``, ``"1920x1080:8"`` -> (label, W, H, N)."""
    name, _, n = spec.partition(":")
    if n and not n.isdigit():
        raise ValueError(f"size {spec!r}: the batch after ':' must be a whole number")
    batch = int(n) if n else 1
    key = name.lower()
    if key in NAMED_SIZES:
        w, h = NAMED_SIZES[key]
        label = "4K" if key in ("4k", "2160p") else key
    else:
        m = re.fullmatch(r"(\d+)x(\d+)", key)
        if not m:
            raise ValueError(
                f"size {spec!r}: expected one of {sorted(NAMED_SIZES)} or WxH, optionally ':N' for the batch"
            )
        w, h = int(m.group(1)), int(m.group(2))
        label = f"{w}x{h}"
    if batch < 1 or w < 1 or h < 1:
        raise ValueError(f"size {spec!r}: width, height and batch must be positive")
    return label, w, h, batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _pack(model: VDSR, device: torch.device, dtype: torch.dtype, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ws = [w.detach().to(device, dtype).contiguous(memory_format=fmt) for w in model.weights]
    bs = [b.detach().to(device, dtype).contiguous() for b in model.biases]
    return ws, bs


def _to_input(x: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    x = x.to(dtype)
    return to_channels_last(x) if channels_last else x.contiguous()  # the head too, as cuDNN likes (reference.py)


def _percentile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of an ascending list."""
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = (len(sorted_vals) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def pick_timer(device: torch.device) -> str:
    if device.type != "cuda":
        return "perf_counter"
    try:
        import triton.testing  # noqa: F401

        return "do_bench"
    except Exception:
        return "cuda_events"


def matmul_peak(device: torch.device, cfg: BenchConfig, timer: str) -> dict:
    """The ceiling the TFLOP/s are compared with: a ``cfg.peak_size``^3 fp16 matmul (fp32 on the CPU)."""
    n = cfg.peak_size
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    mats = [torch.randn(n, n, device=device, dtype=dtype) for _ in range(2)]
    med = statistics.median(time_callable(lambda: torch.mm(mats[0], mats[1]), device, cfg, timer))
    mats.clear()
    _free(device)
    return {"dtype": DTYPE_NAMES[dtype], "shape": f"{n}^3", "median_ms": med, "tflops": 2 * n**3 / (med * 1e-3) / 1e12}


def time_callable(call: Callable[[], Any], device: torch.device, cfg: BenchConfig, timer: str) -> list[float]:
    """Per-call times in ms of ``call()`` (which rotates its own inputs), after warm-up.

    At least ``cfg.min_iters`` timed calls, and at least ``cfg.rep_ms`` of them in total.
    """
    call()  # first call: lazy init, autotuning, cudnn.benchmark's search
    _sync(device)
    t0 = time.perf_counter()
    call()
    _sync(device)
    est_ms = max((time.perf_counter() - t0) * 1e3, 1e-3)
    n = max(cfg.min_iters, int(cfg.rep_ms / est_ms))
    if timer == "do_bench":
        from triton.testing import do_bench

        times: list[float] = []
        while len(times) < cfg.min_iters:  # do_bench sizes its count from its own estimate: it took fewer at 4K
            times += do_bench(call, warmup=max(cfg.warmup_ms, 2 * est_ms), rep=max(cfg.rep_ms, cfg.min_iters * est_ms),
                              return_mode="all")  # fmt: skip
        return [float(t) for t in times]
    n_warm = max(1, int(cfg.warmup_ms / est_ms)) if cfg.warmup_ms > 0 else 0
    for _ in range(n_warm):
        call()
    _sync(device)
    if timer == "cuda_events":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for s, e in zip(starts, ends, strict=True):
            s.record()
            call()
            e.record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _rotating(fn: Callable, inputs: list) -> Callable[[], Any]:
    it = itertools.cycle(inputs)
    return lambda: fn(next(it))


def _allocated(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def _peak_mem_mb(fn: Callable, x: Any, device: torch.device, base: int | None, inputs_bytes: int) -> float | None:
    """The device memory a path needs for one call at this size, MiB (2**20 bytes): the peak during the call above
    ``base`` (what was allocated before the path was built) less the inputs. So what a path holds between calls counts (the
    engines' two activation buffers, their CUDA graphs, the packed weights) as well as what the call allocates
    (PyTorch's per-layer activations, the output, workspaces). The rows of a path are timed from the smallest
    frame up, so the buffers it holds are the ones this size needs."""
    if device.type != "cuda" or base is None:
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn(x)
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return (peak - base - inputs_bytes) / 2**20


# --------------------------------------------------------------------------------------------------
# the reference check (DESIGN.md §6)


def _torch_same_precision(x64: torch.Tensor, model: VDSR, precision: str) -> torch.Tensor:
    """PyTorch's own result in ``precision`` (fp16/bf16 in channels_last on CUDA, as cuDNN likes; fp8: the
    :mod:`vdsr_fast.fp8` scheme emulated in fp32)."""
    if precision == "fp8":
        from vdsr_fast import fp8

        return fp8.emulate(fp8.pack(model, x64.device), x64)
    dtype = torch.float32 if precision in ("fp32", "tf32") else DTYPES[precision]
    cl = x64.device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    ws, bs = _pack(model, x64.device, dtype, cl)
    with tf32_mode(precision == "tf32"):
        return vdsr_forward(_to_input(x64, dtype, cl), ws, bs)


@torch.inference_mode()
def check_against_reference(
    fn: Callable[[torch.Tensor], torch.Tensor],
    model: VDSR,
    device: torch.device,
    precision: str,
    input_dtype: torch.dtype,
    channels_last: bool = False,
    shape: tuple[int, ...] = (2, 1, 48, 80),
    seed: int = 0,
    tf32: bool = False,
) -> CheckResult:
    """Run ``fn`` once on a small random Y batch and apply the §6 rule against the float64 reference."""
    g = torch.Generator().manual_seed(seed)
    x64 = torch.rand(shape, generator=g, dtype=torch.float64).to(device)
    ws64, bs64 = _pack(model, device, torch.float64, False)
    ref = vdsr_forward(x64, ws64, bs64)
    same = _torch_same_precision(x64, model, precision)
    torch_err = (same.double() - ref).abs().max().item()
    atol = ATOL[precision]
    bound = 2 * torch_err + atol
    with tf32_mode(tf32):
        out = fn(_to_input(x64, input_dtype, channels_last))
    if not torch.is_tensor(out) or tuple(out.shape) != tuple(ref.shape):
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        return CheckResult(
            list(shape), precision, math.inf, torch_err, atol, bound, False, f"output shape {got} != {tuple(ref.shape)}"
        )
    err = (out.double() - ref).abs().max().item()
    passed = math.isfinite(err) and err <= bound
    note = "" if math.isfinite(err) else "non-finite output"
    if passed and precision == "fp8":  # the max rule is loose for FP8 (vdsr_fast.verify): its mean rule too
        c = compare(out, same, ref, torch.float8_e4m3fn, scaled=False)
        if not c.mean_ok:
            passed, note = False, f"mean error {c.mean_err:.3g} > {c.mean_bound:.3g} (vdsr_fast.verify's FP8 rule)"
    return CheckResult(list(shape), precision, err, torch_err, atol, bound, passed, note)


SPOT = 48  # the side of each output window checked at a timed size


@torch.inference_mode()
def spot_check(out: torch.Tensor, x: torch.Tensor, model: VDSR, precision: str, tf32: bool = False) -> dict:
    """A timed size's own output, checked by the §6 rule in five ``SPOT``-pixel windows (the corners of the first and
    last frame, where partial tiles are, and the centre): the reference of each is computed on its input window
    widened by the network's receptive radius (one pixel a layer; zeros past the frame's edges, as the frame's own
    padding), so it equals the whole frame's there, at a fraction of the cost. The small check before timing does not
    run the full-width tiles and the several tiles a row that the timed sizes do. Returns the worst window's
    ``err``, ``torch_err``, ``bound`` and ``passed``."""
    n, _, h, w = x.shape
    if not torch.is_tensor(out) or out.shape != x.shape:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        return {"err": math.inf, "bound": 0.0, "passed": False, "note": f"output {got} != {tuple(x.shape)}"}
    s, r = min(SPOT, h, w), model.depth
    corners = [(0, 0, 0), (0, 0, w - s), (n - 1, h - s, 0), (n - 1, h - s, w - s), (n // 2, (h - s) // 2, (w - s) // 2)]
    ws64, bs64 = _pack(model, x.device, torch.float64, False)
    worst = None
    for b, y0, x0 in corners:
        ya, yb, xa, xb = max(y0 - r, 0), min(y0 + s + r, h), max(x0 - r, 0), min(x0 + s + r, w)
        x64 = x[b : b + 1, :, ya:yb, xa:xb].double()
        win = (..., slice(y0 - ya, y0 - ya + s), slice(x0 - xa, x0 - xa + s))
        ref = vdsr_forward(x64, ws64, bs64)[win]
        with tf32_mode(tf32):
            same = _torch_same_precision(x64, model, precision)[win]
        got = out[b : b + 1, :, y0 : y0 + s, x0 : x0 + s].double()
        err, torch_err = (got - ref).abs().max().item(), (same.double() - ref).abs().max().item()
        rec = {"err": err, "torch_err": torch_err, "bound": 2 * torch_err + ATOL[precision], "window": [b, y0, x0]}
        if worst is None or not math.isfinite(err) or err - rec["bound"] > worst["err"] - worst["bound"]:
            worst = rec  # the window nearest its bound (or past it)
        if not math.isfinite(err):
            break
    return {**worst, "passed": math.isfinite(worst["err"]) and worst["err"] <= worst["bound"], "side": s}


# --------------------------------------------------------------------------------------------------
# the paths


def _eager(dtype: torch.dtype, channels_last: bool):
    def build(model: VDSR, device: torch.device):
        ws, bs = _pack(model, device, dtype, channels_last)
        return (lambda x: vdsr_forward(x, ws, bs)), ""

    return build


def _cudnn_relu_op():
    return getattr(torch, "cudnn_convolution_relu", None) or getattr(torch.ops.aten, "cudnn_convolution_relu", None)


def _build_cudnn_fused(model: VDSR, device: torch.device, dtype: torch.dtype = torch.float16):
    """``cudnn_convolution_relu(x, w, b, stride, padding, dilation, groups)`` for every layer but the
    last, then ``F.conv2d`` and the residual add; fp16 (or ``dtype``) channels_last."""
    op = _cudnn_relu_op()
    ws, bs = _pack(model, device, dtype, True)
    note = ""
    fuse_head = True
    try:  # cuDNN's fused kernels may refuse the 1-channel head: then it runs as conv + ReLU
        probe = to_channels_last(torch.zeros(1, 1, 8, 8, device=device, dtype=dtype))
        op(probe, ws[0], bs[0], [1, 1], [1, 1], [1, 1], 1)
    except RuntimeError as e:
        fuse_head = False
        note = f"head layer unfused (cudnn_convolution_relu refused 1 input channel: {str(e).splitlines()[0][:80]})"

    def fn(x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, (w, b) in enumerate(zip(ws[:-1], bs[:-1], strict=True)):
            if i == 0 and not fuse_head:
                h = F.relu(F.conv2d(h, w, b, padding=1))
            else:
                h = op(h, w, b, [1, 1], [1, 1], [1, 1], 1)
        return x + F.conv2d(h, ws[-1], bs[-1], padding=1)

    return fn, note


def _build_compile(model: VDSR, device: torch.device):
    ws, bs = _pack(model, device, torch.float16, True)
    fn = torch.compile(lambda x: vdsr_forward(x, ws, bs), mode="max-autotune-no-cudagraphs", dynamic=False)
    return fn, "compiled per shape (dynamic=False); compile time not included"


def _engine(backend: str, dtype: torch.dtype, body: str = ""):
    """An engine with its default kernels, or with an alternative that is not the default: ``body="winograd"``
    (Triton's Winograd body), ``"swap"`` (Triton's SWAP body: channels as the GEMM's M), ``"tma"`` (Triton's
    tensor-descriptor body), ``"direct"`` (Triton's direct body, where TMA is the default), ``"unfused_tail"``
    (Triton: the tail as its own kernel), ``"fused_tail"`` (CUDA: the tail fused into the last body layer) or
    ``"v<id>"`` (CUDA body variant ``id``)."""

    def build(model: VDSR, device: torch.device):
        from vdsr_fast.engine import Engine

        if not body:
            if dtype == torch.float8_e4m3fn and (why := broken(backend, {"dtype": dtype})):  # opt-in, a canary of its own
                raise RuntimeError(why)
            return Engine(model, backend=backend, dtype=dtype, device=device), ""
        opts = alternative_opts(body, dtype, model)
        if why := broken(backend, opts):
            raise RuntimeError(why)
        return Engine(model, backend=backend, dtype=dtype, device=device, **opts), f"not the default; {opts}"

    return build


def alternative_opts(body: str, dtype: torch.dtype, model: VDSR) -> dict:
    """The engine options of an alternative of :func:`alternatives` (also the layer profile's network rows)."""
    if body == "unfused_tail":
        return {"fuse_tail": False}
    if body == "mma_head":
        return {"mma_head": True}
    if body == "pdl":
        return {"pdl": True}
    if body == "mma_head_pdl":
        return {"mma_head": True, "pdl": True}
    if body == "fused_head":
        return {"fuse_head": True}
    if body == "tail_spread":
        return {"tail_spread": True}
    if body == "fused_head_tail_spread":
        return {"fuse_head": True, "tail_spread": True}
    if body.startswith("fused_head_s"):  # another schedule of the fused head's first layer
        return {"fuse_head": True, "head_schedule": int(body.removeprefix("fused_head_s"))}
    if body.startswith("v"):
        return {"body_variant": int(body[1:])}
    if body == "swap":
        from vdsr_fast.kernels.triton.conv3x3 import swap_configs

        return {"body_config": swap_configs(dtype)[0]}
    if body == "tma":
        from vdsr_fast.kernels.triton.conv3x3_tma import tma_config

        return {"body_config": tma_config(dtype)}
    if body == "direct":
        from vdsr_fast.kernels.triton.conv3x3 import conv3x3_config

        return {"body_config": conv3x3_config(model.channels, model.channels, dtype)}
    from vdsr_fast.kernels.triton.winograd import winograd_config

    return {"body_config": winograd_config(model.channels, model.channels, dtype)}


def alternatives(name: str, device: torch.device) -> dict[str, str]:
    """{body: label} of the alternatives to time beside a backend's defaults: for CUDA every body variant but
    the automatic one and the direct kernel's smaller-memory fallbacks (ids 1, 2), the unfused tail, programmatic
    dependent launch, the fused head and the spread tail schedule (and the two together) where the automatic variant is
    a strip variant that has them, and the tensor-core head; for Triton the Winograd
    SWAP bodies, the TMA body or (where that is the default: Hopper) the direct body, and the unfused tail."""
    if name == "triton":
        from vdsr_fast.kernels.triton.backend import default_body_config

        tma = default_body_config(device, torch.float16, 64) is not None
        other = {"direct": "direct body"} if tma else {"tma": "TMA body"}
        return {"winograd": "Winograd body", "swap": "swapped body", **other, "unfused_tail": "tail not fused"}
    if name != "cuda":
        return {}
    from vdsr_fast.kernels.cuda import load_extension

    ext = load_extension()
    auto = -1
    if device.type == "cuda":
        auto = ext.body_auto_variant(device.index if device.index is not None else torch.cuda.current_device())
    kinds = {}
    for v in ext.body_variants():
        if v["id"] != auto and (v["winograd"] or v["wgmma"] or v["id"] == 0):
            kind = "Winograd" if v["winograd"] else "wgmma" if v["wgmma"] else "mma.sync"
            kinds[f"v{v['id']}"] = f"body v{v['id']} ({kind})"
    if auto >= 0 and ext.body_variants()[auto]["tail_partials"]:
        kinds["unfused_tail"] = "tail not fused"
        kinds["pdl"] = "programmatic dependent launch"
        kinds["mma_head_pdl"] = "tensor-core head + PDL"  # whether the two opt-ins add up
        kinds["fused_head"] = "head fused into the first layer"
        for schedule in range(1, ext.HEAD_SCHEDULES):
            kinds[f"fused_head_s{schedule}"] = f"head fused into the first layer, schedule {schedule}"
        if ext.body_variants()[auto]["tail_spread"]:
            kinds["tail_spread"] = "tail partials spread over the epilogue"
            kinds["fused_head_tail_spread"] = "fused head + spread tail partials"  # whether the two add up
    kinds["mma_head"] = "tensor-core head"
    return kinds


def _engine_backends(device: torch.device, cfg: BenchConfig) -> tuple[list[str], dict[str, str]]:
    """(backends to run, {backend: why not}) from ``available_backends``, so new backends appear."""
    from vdsr_fast.engine import available_backends

    run, skipped = [], {}
    for name, reason in available_backends(device).items():
        if cfg.backends is not None and name not in cfg.backends:
            continue
        if reason is None and name == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            reason = "on the CPU only with TRITON_INTERPRET=1"
        if reason is None:
            run.append(name)
        else:
            skipped[name] = reason
    return run, skipped


def _backend_dtypes(name: str) -> tuple[torch.dtype, ...]:
    from vdsr_fast import engine as engine_mod

    try:
        return tuple(engine_mod._backend_class(name).dtypes)
    except Exception:  # unknown: let Engine() decide (and raise a clear error)
        return tuple(DTYPES.values())


def build_paths(device: torch.device, cfg: BenchConfig) -> list[PathSpec]:
    """Every network-only path for this device (unavailable ones carry their reason)."""
    cuda = device.type == "cuda"
    need_cuda = None if cuda else "needs CUDA"
    no_cudnn = need_cuda or (None if _cudnn_relu_op() is not None else "torch.cudnn_convolution_relu is missing in this torch")
    paths = [
        PathSpec(CUDNN_KEY, "cuDNN fused conv+bias+ReLU CL", "fp16", torch.float16, True, _build_cudnn_fused, no_cudnn),
        PathSpec(EAGER_FP16_KEY, "PyTorch eager CL", "fp16", torch.float16, True, _eager(torch.float16, True)),
    ]  # fmt: skip
    if "bf16" in cfg.engine_dtypes:  # the bf16 engines' own-precision baseline (their ratio column stays fp16's)
        paths.insert(1, PathSpec("cudnn_fused_bf16", "cuDNN fused conv+bias+ReLU CL", "bf16", torch.bfloat16, True,
                                 functools.partial(_build_cudnn_fused, dtype=torch.bfloat16), no_cudnn))  # fmt: skip
    backends, skipped = _engine_backends(device, cfg)
    for name in backends + sorted(skipped):
        for dname in cfg.engine_dtypes:
            dtype = DTYPES[dname]
            reason = skipped.get(name)
            if reason is None and dtype not in _backend_dtypes(name):
                reason = f"backend {name!r} does not support {dname}"
            if reason is None and cuda and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
                reason = "this GPU has no bf16"
            if reason is None and cuda and dtype == torch.float8_e4m3fn and torch.cuda.get_device_capability(device) < (8, 9):
                reason = "this GPU has no 8-bit tensor cores"
            spec = PathSpec(
                f"engine_{name}_{dname}", f"engine {name}", dname, torch.float32, False, _engine(name, dtype), reason
            )
            paths.append(spec)
            others = alternatives(name, device) if reason is None and dtype in (torch.float16, torch.bfloat16) else {}
            for body, label in others.items():  # the kernels that are not (or no longer) the defaults
                paths.append(PathSpec(f"engine_{name}_{body}_{dname}", f"engine {name} {label}", dname,
                                      torch.float32, False, _engine(name, dtype, body), reason))  # fmt: skip
    paths += [
        PathSpec("eager_fp16", "PyTorch eager NCHW", "fp16", torch.float16, False, _eager(torch.float16, False)),
        PathSpec("eager_tf32", "PyTorch eager NCHW", "tf32", torch.float32, False, _eager(torch.float32, False),
                 None if cuda else "TF32 is a CUDA mode", tf32=True),
        PathSpec("eager_fp32", "PyTorch eager NCHW", "fp32", torch.float32, False, _eager(torch.float32, False)),
    ]  # fmt: skip
    # right after cuDNN's chain: the slowest row to set up, asked for by a flag, so a --budget-s never skips it
    paths.insert(1, PathSpec("compile_fp16_cl", "torch.compile max-autotune CL", "fp16", torch.float16, True,
                             _build_compile, need_cuda, sizes=list(cfg.compile_sizes)))  # fmt: skip
    selected = []
    for p in paths:
        if p.key == "compile_fp16_cl" and not cfg.compile:
            continue
        if not path_chosen(p.key, cfg) and not (p.key == "compile_fp16_cl" and cfg.compile):
            continue
        selected.append(p)
    keys = [p.key for p in paths] + (e2e_keys(cfg) if cfg.e2e_batches else [])
    for pat in cfg.paths or []:  # a typo would otherwise be a silently shorter table
        if not any(fnmatch.fnmatchcase(k, pat) for k in keys):
            print(f"vdsr-fast bench: note: --paths {pat!r} matches no path here", file=sys.stderr)
    return selected


def e2e_key(backend: str, mode: str, cfg: BenchConfig) -> str:
    """The key of an end-to-end group: ``e2e_<backend>_<dtype>`` (``mode`` "rgb"), ``e2e_<backend>_fused_<dtype>``,
    ``e2e_<backend>_yuv_<dtype>``."""
    return f"e2e_{backend}_{'' if mode == 'rgb' else mode + '_'}{cfg.e2e_dtype}"


def e2e_keys(cfg: BenchConfig) -> list[str]:
    from vdsr_fast.engine import BACKENDS

    return [e2e_key(b, mode, cfg) for b in BACKENDS for mode in ("rgb", "fused", "yuv")]


def path_chosen(key: str, cfg: BenchConfig) -> bool:
    return cfg.paths is None or any(fnmatch.fnmatchcase(key, pat) for pat in cfg.paths)


def split_slow_paths(paths: list[PathSpec], e2e_dtype: str) -> tuple[list[PathSpec], list[PathSpec]]:
    """(paths timed before the end-to-end rows, paths timed after them): the fp32 and tf32 paths go last. On a GPU
    they are the slowest to time (Triton fp32 takes ~0.8 s a 4K frame, eager fp32 ~0.4 s) and the least asked
    about, so a ``--budget-s`` that runs out skips them rather than the end-to-end rows (run 10 lost those).
    The engine paths in the end-to-end dtype stay first: their checks are the end-to-end rows' verdicts."""
    slow = [p.precision in ("fp32", "tf32") and p.precision != e2e_dtype for p in paths]
    return [p for p, s in zip(paths, slow) if not s], [p for p, s in zip(paths, slow) if s]


# --------------------------------------------------------------------------------------------------
# environment


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _cudnn_version() -> str | None:
    try:
        v = torch.backends.cudnn.version()
    except Exception:
        return None
    if not v:
        return None
    if v >= 90000:
        return f"{v // 10000}.{(v % 10000) // 100}.{v % 100}"
    return f"{v // 1000}.{(v % 1000) // 100}.{v % 100}"


def _cmd(args: list[str]) -> str | None:
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def git_commit() -> str | None:
    """The commit the numbers are of, ``-dirty`` appended where the tree has uncommitted changes to tracked files
    (``git describe --always --dirty --abbrev=12 --exclude='*'``: the hash, never a tag's name). ``VDSR_FAST_GIT_COMMIT`` wins: a device machine's copy of the
    tree may carry a stale .git (run 5's JSON named the session's first commit), so the caller passes what that
    command says on its own machine."""
    root = str(Path(__file__).resolve().parents[1])
    return os.environ.get("VDSR_FAST_GIT_COMMIT") or _cmd(
        ["git", "-C", root, "describe", "--always", "--dirty", "--abbrev=12", "--exclude=*"]
    )


def environment(device: torch.device, smoke: bool) -> tuple[dict, dict]:
    """(device info, versions)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        driver = _cmd(
            ["nvidia-smi", f"--id={device.index or 0}", "--query-gpu=driver_version", "--format=csv,noheader"]
        )
        dev = {
            "name": props.name,
            "slug": _slug(props.name),
            "driver": driver,
            "capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
        }
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        dev = {
            "name": f"CPU: {name}",
            "slug": "cpu-smoke" if smoke else "cpu",
            "driver": None,
            "threads": torch.get_num_threads(),
        }
    try:
        import triton

        triton_v = triton.__version__
    except Exception:
        triton_v = None
    try:
        import vdsr_fast

        vdsr_v = vdsr_fast.__version__
    except Exception:
        vdsr_v = None
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": _cudnn_version() if device.type == "cuda" else None,
        "triton": triton_v,
        "vdsr_fast": vdsr_v,
        "git_commit": git_commit(),
        "cuda_extension_built": _has_cuda_extension(),
    }
    return dev, versions


def _has_cuda_extension() -> bool:
    try:
        import vdsr_fast._C  # noqa: F401
    except Exception:
        return False
    return True


def _load_model(cfg: BenchConfig) -> tuple[VDSR, str]:
    if cfg.weights is not None:
        from vdsr_fast.weights import load

        return load(cfg.weights), str(cfg.weights)
    small = (cfg.model_depth, cfg.model_channels) != (20, 64)
    if not small:
        try:
            from vdsr_fast.weights import default_weights_path, load

            if default_weights_path().is_file():
                return load(), "shipped weights"
        except Exception as e:  # unreadable shipped file: time random weights, and say so
            print(f"note: shipped weights unusable ({e}); using random weights", flush=True)
    torch.manual_seed(cfg.seed)
    model = VDSR(cfg.model_depth, cfg.model_channels)
    with torch.no_grad():  # non-zero biases, so a kernel that drops them fails the check
        for b in model.biases:
            b.normal_(0.0, 0.01)
    why = (
        f"reduced model depth {cfg.model_depth}, {cfg.model_channels} channels" if small else "no shipped weights found"
    )
    return model, f"random He-init weights, N(0, 0.01) biases ({why})"


# --------------------------------------------------------------------------------------------------
# the run


class _Run:
    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.timer = pick_timer(self.device)
        self.t0 = time.perf_counter()
        self.rows: list[BenchResult] = []
        self.notes: list[str] = []
        self.sizes = [parse_size(s) for s in cfg.sizes]
        self.date = datetime.now(timezone.utc)
        self.device_info, self.versions = environment(self.device, cfg.smoke)
        self.model, self.weights = _load_model(cfg)
        self.peak: dict = {}
        out = (
            Path(cfg.out)
            if cfg.out
            else (Path(tempfile.gettempdir()) / "vdsr_fast_bench" if cfg.smoke else RESULTS_DIR)
        )
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{self.date:%Y-%m-%d_%H%M}_{self.device_info['slug']}"  # with the time: a second run did not overwrite
        self.json_path, self.md_path, self.png_path = (out / f"{stem}{ext}" for ext in (".json", ".md", ".png"))

    # ---- bookkeeping
    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", flush=True)

    def over_budget(self) -> bool:
        return self.cfg.budget_s is not None and time.perf_counter() - self.t0 > self.cfg.budget_s

    def add(self, row: BenchResult) -> None:
        self.rows.append(row)
        self.fill_derived()
        self.save()
        timing = f"{row.median_ms:.3f} ms" if row.median_ms is not None else row.status
        self.log(f"{row.key:<24} {row.size:>18} x{row.batch}: {timing}{'  (' + row.note + ')' if row.note else ''}")

    def fill_derived(self) -> None:
        base: dict[tuple, dict[str, float]] = {}
        for r in self.rows:
            if r.status == "ok" and r.median_ms:
                base.setdefault((r.kind, r.size, r.batch), {})[r.key] = r.median_ms
        for r in self.rows:
            if r.status != "ok" or not r.median_ms:
                continue
            b = base.get((r.kind, r.size, r.batch), {})
            cudnn = b.get(CUDNN_KEY)
            eager = b.get(EAGER_FP16_KEY) if r.kind == "network" else b.get(f"e2e_torch_{self.cfg.e2e_dtype}")
            r.speedup_vs_cudnn = cudnn / r.median_ms if cudnn else None
            r.speedup_vs_eager_fp16 = eager / r.median_ms if eager else None

    def sorted_rows(self) -> list[BenchResult]:
        order: dict[tuple[str, int], int] = {}  # the --sizes order; by (label, batch): 720p and 720p:8 share a label
        for i, (label, _w, _h, n) in enumerate(self.sizes):
            order.setdefault((label, n), i)

        def rank(r: BenchResult) -> tuple:
            pr = next(
                (i for i, p in enumerate(_RANK) if r.key == p or (p.endswith("_") and r.key.startswith(p))), len(_RANK)
            )
            return (r.kind != "network", order.get((r.size, r.batch), len(order)), r.batch, pr, r.key)

        return sorted(self.rows, key=rank)

    def data(self) -> dict:
        return {
            "schema": 1,
            "date": self.date.isoformat(timespec="seconds"),
            "device": self.device_info,
            "versions": self.versions,
            "timer": self.timer,
            "cudnn_search": ("every plan timed (cudnn.benchmark, benchmark_limit 0)" if self.cfg.cudnn_benchmark else
                             "heuristics") if self.device.type == "cuda" else "n/a (no CUDA device)",  # fmt: skip
            "weights": self.weights,
            "flops_per_pixel": flops_per_pixel(self.model.depth, self.model.channels),
            "peak": self.peak,
            "config": dataclasses.asdict(self.cfg),
            "notes": self.notes,
            "rows": [dataclasses.asdict(r) for r in self.sorted_rows()],
        }

    def save(self) -> None:
        data = self.data()
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        tmp.replace(self.json_path)
        self.md_path.write_text(render_markdown(data) + "\n")

    # ---- measurements
    def measure_peak(self) -> None:
        """The fp16 matmul ceiling (fp32 on the CPU), with the same timer as the rows."""
        self.peak = matmul_peak(self.device, self.cfg, self.timer)
        p = self.peak
        self.log(f"{p['dtype']} matmul {p['shape']}: {p['median_ms']:.3f} ms = {p['tflops']:.1f} TFLOP/s")

    def _timed_row(self, row: BenchResult, fn: Callable, inputs: list, pixels: int, base: int | None,
                   spec: PathSpec | None = None) -> BenchResult:  # fmt: skip
        with torch.inference_mode():
            out = fn(inputs[0])  # first call: lazy init, autotuning, graph capture, cudnn.benchmark's search
            if spec is not None:  # the output at this size, before it is timed
                spot = spot_check(out, inputs[0], self.model, spec.precision, spec.tf32)
                row.check = {**(row.check or {}), "at_size": spot}
                if not spot["passed"]:
                    row.status = "check_failed"
                    row.note = spot.get("note") or (f"check at this size failed: err {spot['err']:.3g} > bound "
                                                    f"{spot['bound']:.3g} in the {spot['side']}-px window at (frame, y, "
                                                    f"x) {tuple(spot['window'])}")  # fmt: skip
                    return row
            del out
            inputs_bytes = sum(t.numel() * t.element_size() for x in inputs for t in (x if isinstance(x, tuple) else (x,)))
            row.peak_mem_mb = _peak_mem_mb(fn, inputs[0], self.device, base, inputs_bytes)
            times = sorted(time_callable(_rotating(fn, inputs), self.device, self.cfg, self.timer))
        row.median_ms = statistics.median(times)
        row.p10_ms, row.p90_ms = _percentile(times, 10), _percentile(times, 90)
        row.n_iters = len(times)
        row.fps = row.batch * 1e3 / row.median_ms
        row.tflops = flops_per_pixel(self.model.depth, self.model.channels) * pixels / (row.median_ms * 1e-3) / 1e12
        if self.peak.get("tflops"):
            row.pct_peak = 100.0 * row.tflops / self.peak["tflops"]
        return row

    def run_path(self, spec: PathSpec) -> str | None:
        """Check, then time at every size. Returns "ok", "check_failed", "error" or None (not checked)."""
        sizes = self.sizes
        if spec.sizes is not None:  # torch.compile: its own sizes, those of --sizes when they overlap
            own = [parse_size(x) for x in spec.sizes]
            sizes = [s for s in self.sizes if s in own] or own

        def row(label, w, h, n, **kw) -> BenchResult:
            return BenchResult(spec.key, spec.name, "network", spec.precision, label, w, h, n, **kw)

        if spec.unavailable:
            self.add(
                row(*sizes[0], status="skipped", note=spec.unavailable)
                if sizes
                else row("-", 0, 0, 0, status="skipped", note=spec.unavailable)
            )
            return None
        if self.over_budget():
            for s in sizes:
                self.add(row(*s, status="skipped", note="time budget spent"))
            return None
        fn = None
        base = _allocated(self.device)  # before the path holds anything (peak MiB)
        try:
            with torch.inference_mode():
                fn, note = spec.build(self.model, self.device)
                chk = check_against_reference(
                    fn,
                    self.model,
                    self.device,
                    spec.precision,
                    spec.input_dtype,
                    spec.channels_last,
                    self.cfg.check_shape,
                    self.cfg.seed,
                    spec.tf32,
                )
        except Exception as e:  # a path that cannot build or run is reported, not fatal
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            for s in sizes:
                self.add(row(*s, status="error", note=msg))
            del fn
            _free(self.device)
            return "error"
        if not chk.passed:
            why = (
                chk.note
                or f"err {chk.err:.3g} > bound {chk.bound:.3g} (2 x torch {chk.torch_err:.3g} + atol {chk.atol:g})"
            )
            for s in sizes:
                self.add(
                    row(*s, status="check_failed", note=f"reference check failed: {why}", check=dataclasses.asdict(chk))
                )
            del fn
            _free(self.device)
            return "check_failed"
        for label, w, h, n in sorted(sizes, key=lambda size: size[1] * size[2] * size[3]):  # smallest first (peak MiB)
            r = row(label, w, h, n, note=note, check=dataclasses.asdict(chk))
            if self.over_budget():
                r.status, r.note = "skipped", "time budget spent"
                self.add(r)
                continue
            inputs = None
            try:
                g = torch.Generator().manual_seed(self.cfg.seed + 1)
                inputs = [
                    _to_input(torch.rand(n, 1, h, w, generator=g).to(self.device), spec.input_dtype, spec.channels_last)
                    for _ in range(self.cfg.n_inputs)
                ]
                with tf32_mode(spec.tf32):
                    self.add(self._timed_row(r, fn, inputs, n * h * w, base, spec))
            except Exception as e:
                r.status, r.note = "error", f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                self.add(r)
            del inputs
            _free(self.device)
        del fn
        _free(self.device)
        return "ok"

    def run_e2e(self, verdicts: dict[str, str | None]) -> None:
        from vdsr_fast import upscale_yuv
        from vdsr_fast.api import output_plan, upscale

        cfg = self.cfg
        lw, lh = cfg.e2e_lr_size
        s = cfg.e2e_scale
        oh, ow = output_plan(lh, lw, s)[1]
        label = f"{lw}x{lh}->{ow}x{oh}"
        dname = cfg.e2e_dtype
        backends, skipped = _engine_backends(self.device, cfg)
        # The fast backends also with the colour pipeline fused (upscale(fused_color=True), Triton on a GPU), each
        # frame checked once against the unfused pipeline of the same backend before it is timed.
        # And upscale_yuv() on the 4:2:0 BT.709 planes a decoder hands out (no RGB), e2e_<backend>_yuv_<dt>.
        fused = [n for n in backends if n != "torch" and self.device.type == "cuda"]
        variants = [(n, "rgb") for n in backends + sorted(skipped)] + [(n, "fused") for n in fused] + [(n, "yuv") for n in backends]
        for name, mode in variants:
            fuse = mode == "fused"
            key = e2e_key(name, mode, cfg)
            if not path_chosen(key, cfg):  # --paths chooses these rows too
                continue
            verdict = verdicts.get(f"engine_{name}_{dname}")
            base = _allocated(self.device)  # before upscale() builds and caches this group's engine (peak MiB)
            for n in sorted(cfg.e2e_batches):
                title = f"upscale_yuv() {name}" if mode == "yuv" else f"upscale() {name}{' fused colour' if fuse else ''}"
                what = "uint8 4:2:0 BT.709 planes" if mode == "yuv" else "uint8 RGB"
                r = BenchResult(key, title, "e2e", dname, label, ow, oh, n, note=f"{what}, x{s:g}")
                if name in skipped:
                    r.status, r.note = "skipped", skipped[name]
                elif verdict == "check_failed":
                    r.status, r.note = "check_failed", f"engine_{name}_{dname} failed its reference check"
                elif verdict == "error":
                    r.status, r.note = "error", f"engine_{name}_{dname} raised (see its row)"
                elif verdict is None:
                    r.note += f"; engine_{name}_{dname} was not checked in this run"
                if r.status == "ok" and self.over_budget():
                    r.status, r.note = "skipped", "time budget spent"
                if r.status != "ok":
                    self.add(r)
                    continue
                inputs = None
                try:
                    g = torch.Generator().manual_seed(cfg.seed + 2)
                    kw = dict(backend=name, dtype=DTYPES[dname])
                    if mode == "yuv":
                        shapes = [(n, 1, lh, lw)] + [(n, 1, (lh + 1) // 2, (lw + 1) // 2)] * 2
                        inputs = [tuple(torch.randint(16, 236, sh, generator=g, dtype=torch.uint8).to(self.device) for sh in shapes)
                                  for _ in range(cfg.n_inputs)]  # fmt: skip
                        fn = lambda planes, kw=kw: upscale_yuv(*planes, s, self.model, matrix="bt709", **kw)  # noqa: E731
                    else:
                        inputs = [
                            torch.randint(0, 256, (n, 3, lh, lw), generator=g, dtype=torch.uint8).to(self.device)
                            for _ in range(cfg.n_inputs)
                        ]
                        fn = lambda img, kw=kw, fuse=fuse: upscale(img, s, self.model, fused_color=fuse, **kw)  # noqa: E731
                    if fuse:  # the same frame through both pipelines: at most one level apart (tests/test_fused_color.py)
                        diff = (fn(inputs[0]).int() - upscale(inputs[0], s, self.model, fused_color=False, **kw).int()).abs().max().item()
                        r.note += f"; max difference to the unfused pipeline {diff} level(s)"
                        if diff > 1:
                            r.status = "check_failed"
                            self.add(r)
                            continue
                    self.add(self._timed_row(r, fn, inputs, n * oh * ow, base))
                except Exception as e:
                    r.status, r.note = "error", f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                    self.add(r)
                del inputs
                _free(self.device)
            self.model.__dict__.pop("_vdsr_engines", None)  # drop the engines upscale() cached
            _free(self.device)

    def plot(self) -> None:
        if not self.cfg.plot:
            return
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except Exception:
            self.notes.append(
                "matplotlib is not installed: no PNG plot (run make_table.py / plot elsewhere from the JSON)"
            )
            return
        rows = [r for r in self.sorted_rows() if r.kind == "network" and r.status == "ok"]
        cols = []
        for r in rows:
            c = r.size + (f" x{r.batch}" if r.batch != 1 else "")
            if c not in cols:
                cols.append(c)
        series: dict[str, dict[str, float]] = {}
        for r in rows:
            series.setdefault(f"{r.path} {r.dtype}", {})[r.size + (f" x{r.batch}" if r.batch != 1 else "")] = (
                r.median_ms
            )
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cols) * max(1, len(series)) / 4), 4.5))
        width = 0.8 / max(1, len(series))
        for i, (name, vals) in enumerate(series.items()):
            xs = [j + i * width for j, c in enumerate(cols) if c in vals]
            ax.bar(xs, [vals[c] for c in cols if c in vals], width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols)
        ax.set_yscale("log")
        ax.set_ylabel("median latency (ms, log)")
        ax.set_title(f"VDSR network latency — {self.device_info['name']}")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(self.png_path, dpi=120)
        plt.close(fig)
        self.notes.append(f"plot: {self.png_path}")

    def run(self) -> dict:
        if self.device.type != "cuda":
            return self._run()
        # cudnn.benchmark times every plan cuDNN offers (benchmark_limit 0; PyTorch's default, 10, times the first
        # 10 of its heuristics' list only); and cuda:N is the current device, where do_bench and the events record
        with torch.cuda.device(self.device), cudnn_search(self.cfg.cudnn_benchmark):
            return self._run()

    def _run(self) -> dict:
        cfg = self.cfg
        self.log(f"{self.device_info['name']} | torch {self.versions['torch']} | timer {self.timer} | {self.weights}")
        with tf32_mode(False):
            self.measure_peak()
            verdicts: dict[str, str | None] = {}
            first, last = split_slow_paths(build_paths(self.device, cfg), cfg.e2e_dtype)
            for spec in first:
                verdicts[spec.key] = self.run_path(spec)
            if cfg.e2e_batches:
                self.run_e2e(verdicts)
            for spec in last:
                verdicts[spec.key] = self.run_path(spec)
            cudnn = next((s for s in first if s.key == CUDNN_KEY), None)
            if cudnn is not None and verdicts.get(CUDNN_KEY) == "ok" and len(self.rows) > len(self.sizes):
                # the baseline again, last: clocks and temperature drift over minutes (run 11: cuDNN 7.07-7.12 ms at
                # 1080p in three calls), and every ratio is against its first timing; this row shows by how much
                self.run_path(dataclasses.replace(cudnn, key=CUDNN_END_KEY, name=cudnn.name + " (again, at the end)"))
        self.plot()
        self.save()
        return self.data()


@contextlib.contextmanager
def cudnn_search(on: bool):
    """``torch.backends.cudnn.benchmark = on`` with every plan timed (``benchmark_limit = 0``), put back after."""
    cudnn = torch.backends.cudnn
    old = cudnn.benchmark, cudnn.benchmark_limit
    cudnn.benchmark, cudnn.benchmark_limit = on, 0
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.benchmark_limit = old


def run(cfg: BenchConfig) -> tuple[dict, Path]:
    """Run the benchmark; returns (the results dict, the JSON path)."""
    threads = torch.get_num_threads()
    if cfg.smoke:  # tiny ops: one thread; OpenMP barriers on a busy shared CPU cost 100x the work
        torch.set_num_threads(1)
    try:
        r = _Run(cfg)
        return r.run(), r.json_path
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# CLI


def _csv(text: str) -> list[str]:
    return [t for t in (x.strip() for x in text.split(",")) if t]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vdsr-fast bench", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny CPU run of every code path (CI); ignores the size/timing flags' GPU defaults",
    )
    ap.add_argument("--device", default=None, help="torch device (default: cuda; cpu with --smoke)")
    ap.add_argument(
        "--sizes",
        type=_csv,
        default=None,
        help="comma list of 720p,1080p,4k or WxH, ':N' for a batch (default: 720p,1080p,4k,720p:8)",
    )
    ap.add_argument(
        "--paths",
        type=_csv,
        default=None,
        help="comma list of path-key patterns, e.g. 'cudnn*,engine_*' (default: all)",
    )
    ap.add_argument("--backends", type=_csv, default=None, help="engine backends to run (default: every available one)")
    ap.add_argument("--engine-dtypes", type=_csv, default=None, help="engine dtypes (default: fp16,bf16,fp32,fp8)")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="add torch.compile(max-autotune-no-cudagraphs) fp16 CL (compiles for minutes)",
    )
    ap.add_argument("--compile-sizes", type=_csv, default=None, help="sizes for --compile (default: 1080p)")
    ap.add_argument(
        "--e2e-batches",
        type=lambda t: [int(x) for x in _csv(t)],
        default=None,
        help="upscale() batches (default: 1,8; '' for none)",
    )
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end upscale() rows")
    ap.add_argument("--e2e-size", type=size_arg, default=None, help="WIDTHxHEIGHT of the end-to-end rows' input (default 960x540)")
    ap.add_argument("--e2e-scale", type=float, default=None, help="their factor (default 2; e.g. 1.5 with --e2e-size 1280x720)")
    ap.add_argument("--rep-ms", type=float, default=None, help="timed milliseconds per row (default 200)")
    ap.add_argument("--min-iters", type=int, default=None, help="at least this many timed calls per row (default 10)")
    ap.add_argument("--peak-size", type=int, default=None, help="M=N=K of the fp16 matmul ceiling (default 8192)")
    ap.add_argument("--no-cudnn-benchmark", action="store_true", help="leave torch.backends.cudnn.benchmark off")
    ap.add_argument("--weights", default=None, help="weights file (default: the shipped weights, else random)")
    ap.add_argument("--budget-s", type=float, default=None, help="after this many seconds, skip the rows not yet timed")
    ap.add_argument(
        "--out",
        default=None,
        help="folder for the JSON/markdown/PNG (default: benchmarks/results; a temp folder with --smoke)",
    )
    ap.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    return ap


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    cfg = BenchConfig.smoke_config() if args.smoke else BenchConfig()
    if args.device is not None:
        cfg.device = args.device
    for name in (
        "sizes",
        "paths",
        "backends",
        "engine_dtypes",
        "compile_sizes",
        "e2e_batches",
        "rep_ms",
        "min_iters",
        "peak_size",
        "weights",
        "budget_s",
        "out",
    ):
        val = getattr(args, name)
        if val is not None:
            setattr(cfg, name, val)
    if args.out is not None:
        cfg.out = str(args.out)
    cfg.compile = cfg.compile or args.compile
    if args.no_e2e:
        cfg.e2e_batches = []
    if args.e2e_size is not None:
        cfg.e2e_lr_size = args.e2e_size
    if args.e2e_scale is not None:
        cfg.e2e_scale = args.e2e_scale
    if args.no_cudnn_benchmark:
        cfg.cudnn_benchmark = False
    if args.no_plot:
        cfg.plot = False
    from vdsr_fast.engine import BACKENDS

    for d in cfg.engine_dtypes:
        if d not in DTYPES:
            raise ValueError(f"--engine-dtypes: unknown dtype {d!r} (expected one of {', '.join(DTYPES)})")
    if unknown := [b for b in cfg.backends or [] if b not in BACKENDS]:
        raise ValueError(f"--backends: unknown backend(s) {', '.join(unknown)} (expected some of {', '.join(BACKENDS)})")
    if not cfg.sizes:
        raise ValueError("--sizes: no size given (e.g. 1080p,4k or 640x360:4)")
    if cfg.min_iters < 1:
        raise ValueError(f"--min-iters must be at least 1, got {cfg.min_iters}")
    for s in cfg.sizes + cfg.compile_sizes:
        parse_size(s)
    if cfg.e2e_batches:  # before the network rows, which the end-to-end ones follow
        from vdsr_fast.api import output_plan

        try:
            output_plan(cfg.e2e_lr_size[1], cfg.e2e_lr_size[0], cfg.e2e_scale)
        except ValueError as e:
            raise ValueError(f"--e2e-scale: {str(e).removeprefix('upscale: ')}") from None
    if cfg.weights is not None and not Path(cfg.weights).is_file():
        raise ValueError(f"--weights: {cfg.weights}: no such file")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"vdsr-fast bench: error: {e}", file=sys.stderr)
        return 2
    if torch.device(cfg.device).type == "cuda" and not torch.cuda.is_available():
        print("vdsr-fast bench: error: CUDA is not available here (use --smoke or --device cpu)", file=sys.stderr)
        return 2
    data, json_path = run(cfg)
    failed = [r for r in data["rows"] if r["status"] == "check_failed"]
    errors = [r for r in data["rows"] if r["status"] == "error"]
    skipped = [r for r in data["rows"] if r["status"] == "skipped"]
    print()
    for r in skipped:
        print(f"not run: {r['key']} {r['size']} x{r['batch']}: {r['note']}")
    for r in errors:
        print(f"ERROR:   {r['key']} {r['size']} x{r['batch']}: {r['note']}")
    for r in failed:
        print(f"WRONG:   {r['key']} {r['size']} x{r['batch']}: {r['note']}")
    for n in data["notes"]:
        print(f"note: {n}")
    print(f"results: {json_path}  (table: {json_path.with_suffix('.md')})")
    print()
    print(render_markdown(data))
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

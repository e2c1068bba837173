"""Run each experimental kernel option once, each in its own process, before anything is timed.

    python -m benchmarks.canary --all --out DIR      # every option in parallel; DIR/canary.json
    python -m benchmarks.canary cuda-v5              # one option, in this process

A kernel that faults on the GPU (an illegal address, a trap) leaves the CUDA context unusable: in the
latency benchmark or the layer profile every later row of that process would fail too. So
``gpu_check.sh`` runs this first: one process per option builds the engine with that option (the
engine's self-check), runs a 20-layer VDSR on a 2 x 37 x 53 input in fp16 and in bf16 and compares it
with the float64 reference under the same bound; the options that fail are written to ``canary.json`` and
exported as ``VDSR_FAST_BROKEN`` (comma-separated names), which :func:`broken` reads: the benchmark and
the layer profile skip them (listed with the reason) instead of crashing on them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# name -> (backend, engine options); the defaults need no canary (the GPU tests run them first)
OPTIONS: dict[str, tuple[str, dict]] = {
    "cuda-v3": ("cuda", {"body_variant": 3}),  # Winograd F(2x2, 3x3)
    "cuda-v5": ("cuda", {"body_variant": 5}),  # wgmma, row reuse
    "cuda-v6": ("cuda", {"body_variant": 6}),  # wgmma strip, copies after the epilogue (the default is 10)
    "cuda-v7": ("cuda", {"body_variant": 7}),  # wgmma strip, the next rows' copies before the epilogue
    "cuda-v8": ("cuda", {"body_variant": 8}),  # wgmma strip, two wgmma groups per item (10 has four)
    "cuda-v9": ("cuda", {"body_variant": 9}),  # three groups
    "cuda-v11": ("cuda", {"body_variant": 11}),  # six groups
    "cuda-v12": ("cuda", {"body_variant": 12}),  # wgmma strip, weights in registers, 64-pixel strips, four groups
    "cuda-v13": ("cuda", {"body_variant": 13}),  # the same, six groups
    "cuda-v14": ("cuda", {"body_variant": 14}),  # weights in registers, the warpgroups on their own rows in turns
    "cuda-v15": ("cuda", {"body_variant": 15}),  # mma.sync, 4x16-pixel tiles in 99 KB (the sm_86/sm_89 cards' choice)
    "cuda-v16": ("cuda", {"body_variant": 16}),  # the same with 8 warps
    "cuda-mma-head": ("cuda", {"mma_head": True}),  # the head on tensor cores
    "cuda-pdl": ("cuda", {"pdl": True}),  # strip body layers by programmatic dependent launch
    "cuda-fused-head": ("cuda", {"fuse_head": True}),  # the first body layer computes the head from the Y plane
    "cuda-fused-head-s1": ("cuda", {"fuse_head": True, "head_schedule": 1}),  # its other schedules (other kernels)
    "cuda-fused-head-s2": ("cuda", {"fuse_head": True, "head_schedule": 2}),
    "cuda-tail-spread": ("cuda", {"tail_spread": True}),  # the fused tail's partial sums in every epilogue part
    "triton-winograd": ("triton", {"body_config": "winograd"}),  # with the (default) fused tail
    "triton-swap": ("triton", {"body_config": "swap"}),  # channels as the GEMM's M (conv3x3.swap_configs)
    "triton-tma": ("triton", {"body_config": "tma"}),  # tensor-descriptor tiles (conv3x3_tma.tma_config)
    "triton-fp8": ("triton", {"dtype": "fp8"}),  # the opt-in FP8 engine (vdsr_fast.fp8), its default kernels
}


def name_of(backend: str, opts: dict) -> str | None:
    """The canary name of an engine configuration (None for a default one)."""
    import torch

    from vdsr_fast.kernels.triton.conv3x3_tma import TmaConfig
    from vdsr_fast.kernels.triton.winograd import WinogradConfig

    def short(v):
        if isinstance(v, (WinogradConfig, TmaConfig)):
            return "winograd" if isinstance(v, WinogradConfig) else "tma"
        if v == torch.float8_e4m3fn:
            return "fp8"
        return "swap" if getattr(v, "swap", False) else v

    norm = {k: short(v) for k, v in opts.items()}
    return next((name for name, (b, o) in OPTIONS.items() if b == backend and o == norm), None)


def broken(backend: str, opts: dict) -> str | None:
    """Why this configuration must not run here (its canary, or the canary of one of its options, failed), else None."""
    failed = [s for s in os.environ.get("VDSR_FAST_BROKEN", "").split(",") if s]
    for name in [name_of(backend, opts)] + [name_of(backend, {k: v}) for k, v in opts.items()]:
        if name in failed:
            return f"its canary ({name}) failed on this GPU: not run"
    return None


def run_one(name: str) -> None:
    """Raises if the option cannot run correctly here."""
    import torch

    from vdsr_fast import VDSR, Engine
    from vdsr_fast.engine import gross_error_bound
    from vdsr_fast.kernels.triton.conv3x3 import swap_configs
    from vdsr_fast.kernels.triton.conv3x3_tma import tma_config
    from vdsr_fast.kernels.triton.winograd import winograd_config
    from vdsr_fast.reference import vdsr_forward

    backend, opts = OPTIONS[name]
    torch.manual_seed(0)
    model = VDSR().cuda()
    with torch.no_grad():
        model.layers[-1].weight.mul_(0.1)
    y = torch.rand(2, 1, 37, 53, device="cuda")
    ref = vdsr_forward(y.double(), [w.double() for w in model.weights], [b.double() for b in model.biases])
    dtypes = (torch.float16, torch.bfloat16)  # the benchmark times both
    if opts.get("dtype") == "fp8":
        dtypes, opts = (torch.float8_e4m3fn,), {}
    for dtype in dtypes:
        bound = gross_error_bound(model, y, ref, dtype)  # the engine's self-check bound
        if "body_config" in opts:
            kind = OPTIONS[name][1]["body_config"]
            cfg = {"swap": swap_configs(dtype)[0], "tma": tma_config(dtype)}.get(kind) or winograd_config(64, 64, dtype)
            opts = {**opts, "body_config": cfg}
        out = Engine(model, backend=backend, dtype=dtype, device="cuda", **opts)(y)
        torch.cuda.synchronize()
        err = (out.double() - ref).abs().max().item()
        if not err <= bound:
            raise AssertionError(f"{dtype}: max error {err:.3g} > {bound:.3g}")


def run_all(out_dir: Path, timeout_s: float) -> list[str]:
    """Every option in its own process, in parallel; returns the names that failed (also canary.json)."""
    procs = {
        name: subprocess.Popen([sys.executable, "-m", "benchmarks.canary", name], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for name in OPTIONS
    }
    deadline = time.monotonic() + timeout_s
    results = {}
    for name, p in procs.items():
        try:  # past the deadline, no wait at all: 22 waits of a second each overran the caller's timeout (a review)
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(p.args, 0)
            log, _ = p.communicate(timeout=left)
            results[name] = {"ok": p.returncode == 0, "log": log[-1500:]}
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()  # reaped: no zombie, its pipe closed
            results[name] = {"ok": False, "log": f"timed out after {timeout_s:.0f} s"}
    failed = [n for n, r in results.items() if not r["ok"]]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "canary.json").write_text(json.dumps(results, indent=1) + "\n")
    for name, r in results.items():
        last = r["log"].strip().splitlines()[-1] if r["log"].strip() else ""
        print(f"canary {name:28s} {'ok' if r['ok'] else 'FAILED: ' + last[:150]}")
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", nargs="?", choices=sorted(OPTIONS), help="one option, in this process")
    ap.add_argument("--all", action="store_true", help="every option, each in its own process")
    ap.add_argument("--out", default="runs/canary", help="folder for canary.json (with --all)")
    ap.add_argument("--timeout-s", type=float, default=120.0)
    args = ap.parse_args(argv)
    if args.all:
        failed = run_all(Path(args.out), args.timeout_s)
        print("VDSR_FAST_BROKEN=" + ",".join(failed))
        return 0
    if args.name is None:
        ap.error("give an option name or --all")
    run_one(args.name)
    print(f"ok {args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

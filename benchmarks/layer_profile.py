"""Where the time goes: one VDSR layer at a time on a GPU, every fast kernel variant beside cuDNN.

    python -m benchmarks.layer_profile --out DIR            # 1080p fp16 (issue 4's and 5's reference size)
    python -m benchmarks.layer_profile --size 3840x2160 --dtype bf16

Times (``triton.testing.do_bench`` medians after warm-up), at one frame size, in one process, in this order:
  - the fp16 matmul peak (8192^3), the ceiling the TFLOP/s are compared with;
  - one 64->64 body layer: cuDNN's fused conv+bias+ReLU (channels_last), every CUDA body variant
    (``vdsr_fast._C.body_variants()``: direct mma.sync, Winograd, wgmma), Triton's default direct and
    Winograd F(2x2, 3x3) tiles (Winograd rows count the direct convolution's FLOPs, so they compare with
    the other rows as speed);
  - the head (1->64 + ReLU) and the tail (64->1 + bias + residual) of each backend (the Triton tail
    also fused into the last body layer, its default), and cuDNN's head;
  - the whole network per backend and per alternative to its defaults, beside the estimate head + 18 x body +
    tail from the rows above;
  - last, the Triton sweeps: tail tiles, every ``winograd_candidates`` and ``body_config_candidates`` config.
Every kernel's output is checked against cuDNN's (fp32 reference for the head/tail) before it is timed.
``--budget-s`` stops timing new rows after that many seconds (they are listed as not timed). Writes
``layer_profile_<card>_<size>_<dtype>.json`` to ``--out`` and prints a markdown table last.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

C = 64


def _flops(n: int, h: int, w: int, c_in: int, c_out: int) -> float:
    return 2.0 * 9 * c_in * c_out * n * h * w


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1920x1080", help="WxH of the Y plane (default 1920x1080)")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    ap.add_argument("--out", default="benchmarks/results", help="folder for the JSON")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop timing new rows after this many seconds and write what was measured")  # fmt: skip
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("layer_profile needs a CUDA GPU")
    from benchmarks.bench_latency import cudnn_search

    # cuDNN's fused layer chooses its plan as the latency benchmark's chain does: every plan timed (it was left to
    # the heuristics here, against the benchmark's search); the flags are put back after
    with cudnn_search(True):
        return _profile(args)


def _profile(args: argparse.Namespace) -> int:
    """Time every row of the profile (``main``'s arguments); writes the JSON, prints the table."""
    from benchmarks.bench_latency import (
        BenchConfig,
        _cudnn_relu_op,
        alternative_opts,
        alternatives,
        environment,
        matmul_peak,
        time_callable,
    )
    from benchmarks.canary import broken
    from vdsr_fast import VDSR, Engine
    from vdsr_fast.fp8 import quantize_weight
    from vdsr_fast.kernels.triton import conv3x3 as tconv
    from vdsr_fast.kernels.triton import conv3x3_tma as ttma
    from vdsr_fast.kernels.triton import tail as ttail
    from vdsr_fast.kernels.triton import winograd as twino
    from vdsr_fast.reference import flops_per_pixel
    from vdsr_fast.verify import fill_nan

    dev = torch.device("cuda")
    dt = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    wd, ht = (int(v) for v in args.size.lower().split("x"))
    n = 1
    torch.manual_seed(0)
    rows: list[dict] = []

    start = time.monotonic()

    def add(kind, path, fn, flops, note="", out=None, check=None):
        """Run ``fn`` once (``out`` NaN-poisoned first), ``check(out)`` it, then time it; failures are printed.
        Past ``--budget-s`` the row is listed as not timed (the defaults and networks come first)."""
        if args.budget_s is not None and time.monotonic() - start > args.budget_s:
            rows.append({"layer": kind, "path": path, "ms": None, "tflops": None, "note": "not timed: --budget-s"})
            return
        try:
            if out is not None:
                fill_nan(out)
            res = fn()
            if check is not None:
                check(out if out is not None else res)
            ms = statistics.median(time_callable(fn, dev, timing, "do_bench"))
        except Exception as e:  # one path that fails (or does not compile on this card) is reported, not fatal
            print(f"{kind:6s} {path:48s} FAILED: {type(e).__name__}: {str(e)[:160]}", flush=True)
            rows.append({"layer": kind, "path": path, "ms": None, "tflops": None, "note": f"FAILED: {e}"[:200]})
            return
        rows.append({"layer": kind, "path": path, "ms": ms, "tflops": flops / ms / 1e9, "note": note})
        print(f"{kind:6s} {path:48s} {ms:8.4f} ms  {flops / ms / 1e9:7.1f} TFLOP/s  {note}", flush=True)

    # ceiling, timed as the rows are (the latency benchmark's timer and settings)
    timing = BenchConfig()  # (not `cfg`: the sweeps below loop over kernel configs named cfg)
    peak = matmul_peak(dev, timing, "do_bench")["tflops"]
    print(f"fp16 matmul peak {peak:.0f} TFLOP/s", flush=True)

    # one body layer, NHWC activations with non-trivial values
    w = torch.randn(C, C, 3, 3, device=dev) * (2.0 / (9 * C)) ** 0.5
    b = torch.randn(C, device=dev) * 0.01
    x_nhwc = torch.rand(n, ht, wd, C, device=dev).to(dt)
    x_cl = x_nhwc.permute(0, 3, 1, 2)  # NCHW view, channels_last memory
    fl = _flops(n, ht, wd, C, C)
    ref = torch.relu(F.conv2d(x_cl.float(), w, b, padding=1)).permute(0, 2, 3, 1)
    tol = 2e-2 * float(ref.abs().max())

    def check(out):
        err = float((out.float() - ref).abs().max())
        assert err <= tol, f"max error {err:.3g} > {tol:.3g} against cuDNN in fp32: not timed"

    wd_c, b_dt = w.to(dt).contiguous(memory_format=torch.channels_last), b.to(dt)  # cast once, not in the timed call
    relu_op = _cudnn_relu_op()
    if relu_op is not None:
        add("body", "cuDNN fused conv+bias+ReLU (CL)", lambda: relu_op(x_cl, wd_c, b_dt, (1, 1), (1, 1), (1, 1), 1),
            fl, check=lambda r: check(r.permute(0, 2, 3, 1)))

    ext = None
    try:
        from vdsr_fast import _C as ext
    except ImportError as e:
        print(f"cuda backend: not built ({e})")
    stream = lambda: torch.cuda.current_stream().cuda_stream  # noqa: E731
    if ext is not None:
        from vdsr_fast.kernels import pack_winograd_weight
        from vdsr_fast.kernels.cuda import pack_body_weight, variant_unavailable

        code = ext.DTYPE_FLOAT16 if dt == torch.float16 else ext.DTYPE_BFLOAT16
        packed = {False: pack_body_weight(w, dt), True: pack_winograd_weight(w, dt)}
        out = torch.full_like(x_nhwc, float("nan"))
        auto = ext.body_auto_variant(0)
        for v in ext.body_variants():
            if why := variant_unavailable(v, dev) or broken("cuda", {"body_variant": v["id"]}):
                print(f"cuda variant {v['id']}: {why}")
                continue
            wb = packed[v["winograd"]]
            f = lambda v=v, wb=wb: ext.body(x_nhwc.data_ptr(), out.data_ptr(), wb.data_ptr(), b.data_ptr(),  # noqa: E731
                                            n, ht, wd, code, 0, stream(), v["id"])  # fmt: skip
            desc = f"{v['tile_h']}x{v['tile_w']} px, {v['threads']} thr, {v['stages']} stages, {v['smem_bytes'] // 1024} KB"
            desc += ", Winograd F(2x2,3x3), direct-conv FLOPs" if v["winograd"] else ", wgmma" if v["wgmma"] else ""
            add("body", f"cuda variant {v['id']}" + (" (auto)" if v["id"] == auto else ""), f, fl, desc, out, check)

    # Triton's default body tiles now (direct, and Winograd F(2x2, 3x3): its TFLOP/s count the direct
    # convolution's FLOPs, it does 2.25x fewer multiplies); their sweeps come last, after the network rows,
    # so that a run cut short by its time cap still has every default and every whole network.
    out = torch.empty_like(x_nhwc)
    wu = twino.pack_winograd_weight(w, dt)
    wino_default = twino.winograd_config(C, C, dt)
    wt = tconv.pack_conv3x3_weight(w, dt)
    default = tconv.conv3x3_config(C, C, dt)

    def triton_direct(cfg):
        tile = f" {cfg.block_m // cfg.tile_w}x{cfg.tile_w}" if cfg.tile_w else ""
        name = f"triton M{cfg.block_m}{tile} w{cfg.num_warps} s{cfg.num_stages}" + (" share_row" if cfg.share_row else "")
        name += " swap" if cfg.swap else ""
        add("body", name + (" (default)" if cfg == default else ""),
            lambda: tconv.conv3x3_bias_relu(x_nhwc, wt, b, out, config=cfg), fl, out=out, check=check)  # fmt: skip

    def triton_winograd(cfg):
        tile = f" {cfg.block_t // cfg.tile_tw}x{cfg.tile_tw} tiles" if cfg.tile_tw else ""
        name = f"triton winograd T{cfg.block_t}{tile} N{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages}"
        add("body", name + (" (default)" if cfg == wino_default else ""),
            lambda: twino.conv3x3_winograd(x_nhwc, wu, b, out, config=cfg), fl, "direct-conv FLOPs", out, check)  # fmt: skip

    wino_ok = not broken("triton", {"body_config": wino_default})
    swap_default = tconv.swap_configs(dt)[0]
    swap_ok = not broken("triton", {"body_config": swap_default})
    tma_default = ttma.tma_config(dt)
    tma_ok = not broken("triton", {"body_config": tma_default})

    def triton_tma(cfg):
        name = f"triton tma {cfg.tile_h}x{cfg.tile_w} K{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages}" + (" swap" if cfg.swap else "")
        add("body", name + (" (default)" if cfg == tma_default else ""),
            lambda: ttma.conv3x3_tma(x_nhwc, wt, b, out, config=cfg), fl, out=out, check=check)  # fmt: skip

    # the opt-in FP8 body (vdsr_fast.fp8): e4m3 activations and weights with the scheme's scales, checked against the
    # fp32 layer (8-bit inputs: within 10% of its largest value); 8-bit tensor cores need compute capability 8.9+
    fp8 = torch.float8_e4m3fn
    fp8_default = ttma.tma_config(fp8)
    if torch.cuda.get_device_capability(dev) >= (8, 9) and not broken("triton", {"dtype": fp8}):
        s_in, s_out = 1 / 448, 2 * float(ref.abs().max()) / 448
        q8, sw = quantize_weight(w)  # the scheme's weights: one scale per output channel
        x8 = (x_nhwc.float() / s_in).to(fp8)
        w8 = tconv.pack_conv3x3_weight(q8, fp8)
        alpha8, beta8 = (s_in * sw / s_out).contiguous(), (b / s_out).contiguous()
        out8 = torch.empty(n, ht, wd, C, device=dev, dtype=fp8)

        def check8(o):
            err = float((o.float() * s_out - ref).abs().max())
            assert err <= 0.1 * float(ref.abs().max()), f"max error {err:.3g}: not timed"

        def triton_tma_fp8(cfg):
            name = f"triton tma fp8 {cfg.tile_h}x{cfg.tile_w} K{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages}" + (" swap" if cfg.swap else "")
            add("body", name + (" (default)" if cfg == fp8_default else ""),
                lambda: ttma.conv3x3_tma(x8, w8, beta8, out8, config=cfg, alpha=alpha8), fl, out=out8, check=check8)  # fmt: skip
    else:
        triton_tma_fp8 = None

    triton_direct(default)
    if swap_ok:
        triton_direct(swap_default)
    if tma_ok:
        triton_tma(tma_default)
    if triton_tma_fp8 is not None:
        triton_tma_fp8(fp8_default)
    if wino_ok:
        triton_winograd(wino_default)

    # head and tail, and the whole network per backend
    y = torch.rand(n, 1, ht, wd, device=dev)
    model = VDSR().to(dev).eval()
    hw, hb = model.layers[0].weight, model.layers[0].bias
    fl_head, fl_tail = _flops(n, ht, wd, 1, C), _flops(n, ht, wd, C, 1)
    add("head", "cuDNN conv+bias+ReLU (fp32 in)", lambda: torch.relu(F.conv2d(y, hw, hb, padding=1)), fl_head)
    th_w = tconv.pack_conv3x3_weight(hw, dt)
    th_out = torch.empty(n, ht, wd, C, device=dev, dtype=dt)
    add("head", "triton head", lambda: tconv.conv3x3_head(y, th_w, hb, th_out), fl_head)
    tw = ttail.pack_tail_weight(model.layers[-1].weight, dt)
    tb = model.layers[-1].bias
    ty = torch.empty_like(y)
    tail_default = ttail.tail_config(C)

    def triton_tail(cfg):
        tile = f" {cfg.block_m // cfg.tile_w}x{cfg.tile_w}" if cfg.tile_w else ""
        add("tail", f"triton tail + residual M{cfg.block_m}{tile} w{cfg.num_warps}" + (" (default)" if cfg == tail_default else ""),
            lambda: ttail.conv3x3_tail_residual(x_nhwc, tw, tb, y, ty, config=cfg), fl_tail)  # fmt: skip

    triton_tail(tail_default)
    # the tail fused into the last body layer: that layer writing partial sums (compare with the body rows),
    # then the gather (compare with the tail rows)
    tw16 = tconv.pack_tail_partials_weight(model.layers[-1].weight, dt)
    z = torch.empty(n * ht * wd, 9, device=dev)
    add("last", "triton last body layer + tail partials (default tile)",
        lambda: tconv.conv3x3_bias_relu_tail_partials(x_nhwc, wt, b, tw16, z), fl + _flops(n, ht, wd, C, 1))  # fmt: skip
    if tma_ok:  # the TMA body's own TAIL epilogue (the fused tail's last layer when the body is TMA)
        add("last", "triton TMA last body layer + tail partials (default tile)",
            lambda: ttma.conv3x3_tma_tail_partials(x_nhwc, wt, b, tw16, z, config=tma_default),
            fl + _flops(n, ht, wd, C, 1))  # fmt: skip
    add("tail", "triton tail gather + residual (after the partials)",
        lambda: ttail.tail_gather_residual(z, tb, y, ty), fl_tail)  # fmt: skip
    if ext is not None:
        hw32, tw32 = hw.reshape(C, 9).contiguous(), model.layers[-1].weight.permute(2, 3, 1, 0).reshape(9, C).contiguous()
        add("head", "cuda head", lambda: ext.head(y.data_ptr(), th_out.data_ptr(), hw32.data_ptr(), hb.data_ptr(),
                                                  n, ht, wd, code, 0, stream()), fl_head)  # fmt: skip
        head_fma = th_out.clone()

        def check_head(o):  # the Y values and weights rounded to the dtype: within a few roundings of the FMA head
            err = float((o.float() - head_fma.float()).abs().max())
            assert err <= 2e-2 * float(head_fma.float().abs().max()), f"tensor-core head off by {err:.3g}: not timed"

        add("head", "cuda head on tensor cores (mma_head)",
            lambda: ext.head(y.data_ptr(), th_out.data_ptr(), hw32.data_ptr(), hb.data_ptr(), n, ht, wd, code, 0,
                             stream(), True), fl_head, out=th_out, check=check_head)  # fmt: skip
        # the fused head: the first body layer computing the head itself, against the FMA head's activation
        # through the automatic body kernel (the same bits); beside "cuda head" + a body layer
        if ext.body_variants()[auto]["tail_partials"] and not broken("cuda", {"fuse_head": True}):
            wl0, head_body_out = packed[False], torch.empty_like(x_nhwc)
            want_hb = torch.empty_like(x_nhwc)
            ext.body(head_fma.data_ptr(), want_hb.data_ptr(), wl0.data_ptr(), b.data_ptr(), n, ht, wd, code, 0,
                     stream(), auto)  # fmt: skip

            def check_head_body(o):
                assert torch.equal(o, want_hb), "fused head differs from head + body: not timed"

            labels = {0: "4 wgmma groups, the default", 1: "1 wgmma group", 2: "4 wgmma groups, rows between them"}
            for sched in range(ext.HEAD_SCHEDULES):
                add("first", f"cuda first body layer with the head fused ({labels.get(sched, f'schedule {sched}')})",
                    lambda sched=sched: ext.head_body(y.data_ptr(), head_body_out.data_ptr(), hw32.data_ptr(),
                                                      hb.data_ptr(), wl0.data_ptr(), b.data_ptr(), n, ht, wd, code, 0,
                                                      stream(), False, sched),
                    fl + fl_head, out=head_body_out, check=check_head_body)  # fmt: skip
        add("tail", "cuda tail + residual", lambda: ext.tail(x_nhwc.data_ptr(), y.data_ptr(), ty.data_ptr(),
                                                             tw32.data_ptr(), tb.data_ptr(), n, ht, wd, code, 0,
                                                             stream()), fl_tail)  # fmt: skip
        # the fused tail (the automatic variant's TAIL kernel writing partial sums, then the gather)
        if ext.body_variants()[auto]["tail_partials"]:
            wl = packed[False]
            z_ref = ref.reshape(-1, C) @ tw32.T  # (pixels, 9) from cuDNN's fp32 layer

            def check_z(zz):
                err = float((zz - z_ref).abs().max())
                assert err <= 2e-2 * float(z_ref.abs().max()), f"partial sums off by {err:.3g}: not timed"

            add("last", f"cuda last body layer + tail partials (variant {auto})",
                lambda: ext.body_tail_partials(x_nhwc.data_ptr(), z.data_ptr(), wl.data_ptr(), b.data_ptr(),
                                               tw32.data_ptr(), n, ht, wd, code, 0, stream(), auto),
                fl + _flops(n, ht, wd, C, 1), out=z, check=check_z)  # fmt: skip
            if ext.body_variants()[auto]["tail_spread"] and not broken("cuda", {"tail_spread": True}):
                add("last", f"cuda last body layer + tail partials spread (variant {auto})",
                    lambda: ext.body_tail_partials(x_nhwc.data_ptr(), z.data_ptr(), wl.data_ptr(), b.data_ptr(),
                                                   tw32.data_ptr(), n, ht, wd, code, 0, stream(), auto, spread=True),
                    fl + _flops(n, ht, wd, C, 1), out=z, check=check_z)  # fmt: skip
            add("tail", "cuda tail gather + residual (after the partials)",
                lambda: ext.tail_gather(z.data_ptr(), y.data_ptr(), ty.data_ptr(), tb.data_ptr(), n, ht, wd, 0,
                                        stream()), fl_tail)  # fmt: skip
    fl_net = flops_per_pixel(model.depth, model.channels) * n * ht * wd
    with torch.inference_mode():
        # each backend's defaults, then the alternatives the latency benchmark times (one list: bench_latency)
        nets = [("cuda", "cuda", {}), ("triton", "triton", {})]
        for backend in ("cuda", "triton") if ext is not None else ("triton",):
            nets += [(f"{backend} {label}", backend, alternative_opts(body, dt, model))
                     for body, label in alternatives(backend, dev).items()]  # fmt: skip
        wino = twino.winograd_config(C, C, dt)
        nets.append(("triton Winograd body, tail not fused", "triton", {"body_config": wino, "fuse_tail": False}))
        for label, backend, opts in nets:
            if why := broken(backend, opts):
                print(f"engine {label}: {why}")
                continue
            try:
                eng = Engine(model, backend=backend, dtype=dt, device=dev, **opts)
            except Exception as e:
                print(f"engine {label}: {type(e).__name__}: {e}")
                continue
            add("net", f"engine {label} (eager launches)", lambda eng=eng: eng(y), fl_net)

    # the Triton sweeps around the defaults (Winograd first: its candidates are the newer ones)
    for block_m, warps, tile_w in ((32, 2, 0), (128, 4, 0), (256, 8, 0), (64, 4, 16), (128, 4, 32), (128, 8, 16),
                                   (256, 8, 32)):
        if (cfg := ttail.TailConfig(block_m, 64, warps, tile_w)) != tail_default:
            triton_tail(cfg)
    for cfg in twino.winograd_candidates(dt) if wino_ok else ():
        if cfg != wino_default:
            triton_winograd(cfg)
    for cfg in ttma.tma_candidates(dt) if tma_ok else ():
        if cfg != tma_default:
            triton_tma(cfg)
    for cfg in ttma.tma_candidates(fp8) if triton_tma_fp8 is not None else ():
        if cfg != fp8_default:
            triton_tma_fp8(cfg)
    for cfg in tconv.body_config_candidates(dt):
        if cfg not in (default, swap_default) and not (cfg.swap and not swap_ok):
            triton_direct(cfg)

    # the network's time if it were head + 18 x the best body row + tail, per backend
    best = {}
    for r in rows:
        if r["layer"] == "body" and r["ms"] is not None:
            key = " ".join(r["path"].split()[: 2 if "winograd" in r["path"] else 1]) + (" fp8" if " fp8 " in r["path"] else "")
            if key not in best or r["ms"] < best[key]["ms"]:
                best[key] = r
    device_info, versions = environment(dev, False)
    data = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_info,
        "versions": versions,  # with the commit (VDSR_FAST_GIT_COMMIT where the caller knows it) and the driver
        "timer": "do_bench",
        "card": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "size": [wd, ht],
        "dtype": args.dtype,
        "fp16_matmul_peak_tflops": peak,
        "rows": rows,
        "best_body": {k: v["path"] for k, v in best.items()},
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    card = data["card"].replace(" ", "_")
    path = out_dir / f"layer_profile_{card}_{wd}x{ht}_{args.dtype}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")

    print(f"\n**{data['card']}**, {wd}x{ht} {args.dtype}, torch {data['torch']}, cuDNN {data['cudnn']}; "
          f"fp16 matmul peak {peak:.0f} TFLOP/s (measured here)\n")
    print("| layer | path | ms | TFLOP/s | % of matmul peak | note |\n|---|---|---|---|---|---|")
    for r in rows:
        if r["ms"] is None:
            print(f"| {r['layer']} | {r['path']} | - | - | - | {r['note'][:80]} |")
        else:
            print(f"| {r['layer']} | {r['path']} | {r['ms']:.4f} | {r['tflops']:.1f} | {100 * r['tflops'] / peak:.1f} | {r['note']} |")
    print(f"\nbest body per path: {data['best_body']} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

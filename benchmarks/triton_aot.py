"""Compile the Triton kernels for GPUs that are not here, and report what the compiler made of them.

    python -m benchmarks.triton_aot                 # sm_80 and sm_90, every kernel the engine launches
    python -m benchmarks.triton_aot --json out.json

Needs no GPU: the engine's own launchers run on small CPU tensors with ``JITFunction.run`` replaced by a
recorder, so each kernel is captured with exactly the arguments, constexprs, ``num_warps`` and
``num_stages`` a real launch passes. Each capture is then specialised the way Triton's launcher
specialises it (16-byte-aligned pointers, integers divisible by 16, integers equal to 1) for the target
and compiled to PTX and a cubin with Triton's bundled ``ptxas``. Reported per kernel and target: shared
memory, registers and spills (``ptxas -v``), and which instructions carry the work (``wgmma``,
``mma.sync``, ``cp.async``, TMA). Two frame shapes are captured, one with every size a multiple of 16
and one odd, because they specialise (and compile) differently.

``tests/test_triton_aot.py`` runs :func:`compile_all` in CI, so a kernel that would not compile on the
GPU, or would need more shared memory than the card has, fails before anyone gets a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":  # must be decided before triton is imported
    os.environ.pop("TRITON_INTERPRET")
    if "triton" in sys.modules:
        raise RuntimeError("triton_aot: triton was already imported in interpreter mode; run this in a fresh process")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, MockTensor, create_function_from_signature  # noqa: E402

from vdsr_fast import VDSR, fp8, tiling  # noqa: E402
from vdsr_fast.kernels.triton import color, conv3x3, conv3x3_tma, tail, winograd  # noqa: E402

SHAPES = {"aligned": (2, 32, 48), "odd": (1, 37, 53)}  # (N, H, W) of the Y plane


@dataclass
class Compiled:
    kernel: str
    target: str
    shape: str
    dtype: str
    config: str
    shared_bytes: int
    registers: int | None
    spill_bytes: int | None
    wgmma: bool
    mma_sync: bool
    cp_async: bool
    tma: bool
    ld_v4: bool  # 16-byte global loads (the NHWC activations, when Triton proves the alignment)
    st_v4: bool  # 16-byte global stores (the NHWC output)
    fp32_fma: bool  # fma.rn.f32 in the PTX (the colour kernels must have none: enable_fp_fusion=False)
    e4m3_mma: bool = False  # a tensor-core instruction on e4m3 operands (the FP8 body), not an upcast to 16 bits


def _capture(dtype: torch.dtype, shape: tuple[int, int, int], body_configs=(None,)) -> list[tuple[JITFunction, tuple, dict]]:
    """Every kernel launch of one network forward, as (kernel, args, kwargs), without running any;
    the body layer once per entry of ``body_configs`` (None: the default heuristic)."""
    launches = []
    real_run = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))

    model = VDSR(depth=3, channels=64)  # head, one 64->64 body layer, tail: every kernel and config
    n, h, w = shape
    y = torch.rand(n, 1, h, w)
    JITFunction.run = record
    try:
        if dtype == torch.float8_e4m3fn:  # the FP8 engine's launches (vdsr_fast.fp8): fp32 head, TMA body, fused tail
            q = fp8.pack(model)
            a = conv3x3.conv3x3_head(y, conv3x3.pack_conv3x3_weight(q.head_w, torch.float32), q.head_b, out_dtype=dtype)
            w1 = conv3x3.pack_conv3x3_weight(q.body_w[0], dtype)
            for config in body_configs:
                cfg = config if isinstance(config, conv3x3_tma.TmaConfig) else None
                conv3x3_tma.conv3x3_tma(a, w1, q.beta[0], config=cfg, alpha=q.alpha[0])
            tw = conv3x3.pack_tail_partials_weight(model.layers[2].weight, torch.float16)
            z = conv3x3_tma.conv3x3_tma_tail_partials(a, w1, q.beta[0], tw, alpha=q.alpha[0])
            tail.tail_gather_residual(z, model.layers[2].bias.float().reshape(1), y)
            return launches
        a = conv3x3.conv3x3_head(y, conv3x3.pack_conv3x3_weight(model.layers[0].weight, dtype), model.layers[0].bias.float())
        w1, b1 = model.layers[1].weight, model.layers[1].bias.float()
        for config in body_configs:
            if isinstance(config, winograd.WinogradConfig):
                b = winograd.conv3x3_winograd(a, winograd.pack_winograd_weight(w1, dtype), b1, config=config)
            elif isinstance(config, conv3x3_tma.TmaConfig):
                b = conv3x3_tma.conv3x3_tma(a, conv3x3.pack_conv3x3_weight(w1, dtype), b1, config=config)
            else:
                b = conv3x3.conv3x3_bias_relu(a, conv3x3.pack_conv3x3_weight(w1, dtype), b1, config=config)
        w2, b2 = model.layers[2].weight, model.layers[2].bias.float().reshape(1)
        tail.conv3x3_tail_residual(b, tail.pack_tail_weight(w2, dtype), b2, y)
        # fuse_tail=True: the last body layer writing the tail's partial sums, then the gather
        z = conv3x3.conv3x3_bias_relu_tail_partials(a, conv3x3.pack_conv3x3_weight(w1, dtype), b1,
                                                    conv3x3.pack_tail_partials_weight(w2, dtype))  # fmt: skip
        tail.tail_gather_residual(z, b2, y)
        # the same with a TMA body (Hopper's default): its TAIL epilogue
        conv3x3_tma.conv3x3_tma_tail_partials(a, conv3x3.pack_conv3x3_weight(w1, dtype), b1,
                                              conv3x3.pack_tail_partials_weight(w2, dtype))  # fmt: skip
        if dtype == torch.float16:  # upscale(fused_color=True)'s kernels (independent of the engine's dtype): x2
            rows, cols = tiling.Window(h // 2, 2, 0, h, 0), tiling.Window(w // 2, 2, 0, w, 0)
            taps = (*rows.taps("cpu", torch.float32), *cols.taps("cpu", torch.float32))
            for lr in (torch.zeros(n, h // 2, w // 2, 3, dtype=torch.uint8).permute(0, 3, 1, 2),  # NHWC frames
                       torch.zeros(n, 1, h // 2, w // 2, dtype=torch.uint16), torch.zeros(n, 3, h // 2, w // 2)):
                color.upscale_planes(lr, *taps)
            planes = torch.zeros(n, 1, h, w), torch.zeros(n, 2, h, w)
            color.finish_frame(*planes, torch.zeros(n, h, w, 3, dtype=torch.uint8).permute(0, 3, 1, 2))
            color.finish_frame(planes[0], None, torch.zeros(n, 1, h, w, dtype=torch.float16))
    finally:
        JITFunction.run = real_run
    return launches


def _ptxas_usage(ptx: str, arch: str) -> tuple[int | None, int | None]:
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        r = subprocess.run([str(ptxas), f"-arch={arch}", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                           capture_output=True, text=True, check=False)
    info = r.stdout + r.stderr
    regs = re.search(r"Used (\d+) registers", info)
    spills = re.findall(r"(\d+) bytes spill stores", info)
    return (int(regs.group(1)) if regs else None, sum(map(int, spills)) if spills else None)


def compile_launch(fn: JITFunction, args: tuple, kwargs: dict, capability: int):
    """Specialise and compile one captured launch for ``sm_<capability>``; returns the CompiledKernel."""
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    wrap = lambda v: MockTensor(v.dtype) if torch.is_tensor(v) else v  # data_ptr 0: 16-byte aligned
    kwargs = {k: wrap(v) for k, v in kwargs.items()} | {"debug": False}
    bound, specialization, options = binder(*map(wrap, args), **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def compile_all(capabilities=(80, 90), dtypes=(torch.float16, torch.bfloat16, torch.float32), candidates=False,
                shapes=tuple(SHAPES)) -> list[Compiled]:
    """Compile every launch of a forward for each dtype, frame shape and target, the 16-bit body layer in both of
    its defaults (the direct kernel, and the TMA kernel that
    :func:`~vdsr_fast.kernels.triton.backend.default_body_config` picks on compute capability 9.0+); with
    ``candidates`` the body layer also in every :func:`~vdsr_fast.kernels.triton.conv3x3.body_config_candidates`
    config and every :func:`~vdsr_fast.kernels.triton.winograd.winograd_candidates` config."""
    rows = []
    for dtype in dtypes:
        body = [None]  # the default: the direct body (the TMA one for float8_e4m3fn)
        if dtype in (torch.float16, torch.bfloat16):  # and the TMA body, the default on Hopper (default_body_config)
            body.append(conv3x3_tma.tma_config(dtype))
        if candidates and dtype == torch.float8_e4m3fn:  # the TMA body only
            body += conv3x3_tma.tma_candidates(dtype)[1:]
        elif candidates:
            body += [*conv3x3.body_config_candidates(dtype)[1:], *winograd.winograd_candidates(dtype),
                     *conv3x3_tma.tma_candidates(dtype)]
        body = list(dict.fromkeys(body))
        for shape_name in shapes:
            shape = SHAPES[shape_name]
            for fn, args, kwargs in _capture(dtype, shape, body):
                config = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k.startswith(("BLOCK", "num_", "SHARE", "TILE", "SWAP")))
                name = fn.fn.__name__ + ("(head)" if kwargs.get("HEAD") else "(tail)" if kwargs.get("TAIL") else "")
                for cap in capabilities:
                    if dtype == torch.float8_e4m3fn and cap < 89:  # no 8-bit tensor cores: the engine refuses it there
                        continue
                    if fn.fn.__name__ == "_conv3x3_tma_kernel" and dtype != torch.float8_e4m3fn and cap < 90:
                        continue  # the 16/32-bit engines launch the TMA body on compute capability 9.0+ only
                    k = compile_launch(fn, args, kwargs, cap)
                    ptx = k.asm["ptx"]
                    arch = re.search(r"\.target (sm_\w+)", ptx).group(1)
                    regs, spills = _ptxas_usage(ptx, arch)
                    rows.append(Compiled(
                        name, arch, shape_name, str(dtype).replace("torch.", ""), config, k.metadata.shared, regs, spills,
                        "wgmma" in ptx, "mma.sync" in ptx, "cp.async" in ptx, "cp.async.bulk.tensor" in ptx,
                        "ld.global.v4" in ptx, "st.global.v4" in ptx, "fma.rn.f32" in ptx,
                        re.search(r"(wgmma\.mma_async|mma\.sync)\S*\.e4m3\.e4m3", ptx) is not None,
                    ))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="triton_aot", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--targets", default="80,90", help="compute capabilities, e.g. 80,90")
    p.add_argument("--dtypes", default="float16,bfloat16,float32", help="torch dtype names; float8_e4m3fn: the FP8 engine (sm_89+ only)")
    p.add_argument("--candidates", action="store_true", help="also every body config the GPU benchmark sweeps")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"frame shapes, from {', '.join(SHAPES)}")
    args = p.parse_args(argv)
    dtypes = tuple(getattr(torch, d) for d in args.dtypes.split(","))
    rows = compile_all(tuple(int(c) for c in args.targets.split(",")), dtypes, args.candidates, args.shapes.split(","))
    print("| kernel | target | shape | dtype | config | shared KB | regs | spill B | wgmma | mma.sync | cp.async | TMA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    yes = lambda b: "yes" if b else "-"
    for r in rows:
        print(f"| {r.kernel} | {r.target} | {r.shape} | {r.dtype} | {r.config} | {r.shared_bytes / 1024:.0f} | {r.registers} | "
              f"{r.spill_bytes} | {yes(r.wgmma)} | {yes(r.mma_sync)} | {yes(r.cp_async)} | {yes(r.tma)} |")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

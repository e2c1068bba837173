"""One 64->64 body layer per CUDA body variant, once each: the workload ``gpu_check.sh`` (``NCU=1``) runs
under Nsight Compute to see where a variant's time goes (tensor-pipe and shared-memory utilisation, stall
reasons), which a timing alone does not say.

    ncu --section SpeedOfLight --section ComputeWorkloadAnalysis ... python -m benchmarks.ncu_body [--variants 0,4,6]

Each variant runs once on a random 1080p fp16 input (no timing here: ncu replays each kernel for its
counters); variants this GPU cannot run, or whose canary failed (``VDSR_FAST_BROKEN``), are skipped with
the reason.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.canary import broken


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="", help="comma list of variant ids (default: every variant)")
    ap.add_argument("--size", default="1920x1080", help="WxH (default 1920x1080)")
    ap.add_argument("--fused", action="store_true",
                    help="also the automatic variant's fused-tail last layer and the fused-head first layer (every schedule)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("ncu_body: needs a CUDA GPU")
        return 1
    from vdsr_fast.kernels import pack_winograd_weight
    from vdsr_fast.kernels.cuda import load_extension, pack_body_weight, variant_unavailable

    ext = load_extension()
    wd, ht = (int(v) for v in args.size.lower().split("x"))
    dev = torch.device("cuda", torch.cuda.current_device())
    x = torch.randn(1, ht, wd, 64, device=dev).half()
    w = torch.randn(64, 64, 3, 3, device=dev) * (2.0 / 576) ** 0.5
    b = torch.randn(64, device=dev) * 0.1
    out = torch.empty_like(x)
    wanted = {int(v) for v in args.variants.split(",") if v.strip()}
    stream = torch.cuda.current_stream().cuda_stream
    for v in ext.body_variants():
        if wanted and v["id"] not in wanted:
            continue
        if why := variant_unavailable(v, dev) or broken("cuda", {"body_variant": v["id"]}):
            print(f"variant {v['id']}: {why}")
            continue
        packed = (pack_winograd_weight if v["winograd"] else pack_body_weight)(w, torch.float16)
        ext.body(x.data_ptr(), out.data_ptr(), packed.data_ptr(), b.data_ptr(), 1, ht, wd, ext.DTYPE_FLOAT16,
                 dev.index, stream, v["id"])  # fmt: skip
        torch.cuda.synchronize()
        print(f"variant {v['id']}: ran ({v['tile_h']}x{v['tile_w']} px tiles, {v['smem_bytes'] // 1024} KB)")
    if args.fused:
        auto = ext.body_variants()[ext.body_auto_variant(dev.index)]
        if why := variant_unavailable(auto, dev) or (None if auto["tail_partials"] else "no fused tail"):
            print(f"fused layers: {why}")
            return 0
        packed = pack_body_weight(w, torch.float16)
        tw = torch.randn(9, 64, device=dev) * (2.0 / 576) ** 0.5  # [tap][c] fp32, as CudaBackend packs the tail
        z = torch.empty(1, ht, wd, 9, device=dev)
        ext.body_tail_partials(x.data_ptr(), z.data_ptr(), packed.data_ptr(), b.data_ptr(), tw.data_ptr(), 1, ht, wd,
                               ext.DTYPE_FLOAT16, dev.index, stream, auto["id"])  # fmt: skip
        torch.cuda.synchronize()
        print(f"fused tail (variant {auto['id']}): ran")
        if broken("cuda", {"fuse_head": True}):
            print("fused head: its canary failed")
            return 0
        y = torch.rand(1, ht, wd, device=dev)
        hw, hb = torch.randn(64, 9, device=dev) / 3, torch.randn(64, device=dev) * 0.1
        for schedule in range(ext.HEAD_SCHEDULES):
            ext.head_body(y.data_ptr(), out.data_ptr(), hw.data_ptr(), hb.data_ptr(), packed.data_ptr(), b.data_ptr(), 1,
                          ht, wd, ext.DTYPE_FLOAT16, dev.index, stream, schedule=schedule)  # fmt: skip
            torch.cuda.synchronize()
            print(f"fused head, schedule {schedule}: ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())

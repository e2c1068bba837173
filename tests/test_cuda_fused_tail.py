"""The CUDA backend's fused tail (``CudaBackend(fuse_tail=True)``): the last body layer, run by a wgmma strip
variant with ``TAIL``, writes the tail conv's nine per-tap partial sums of each pixel instead of its activation,
and ``tail_gather_kernel`` adds the neighbours' partials, the bias and the residual.

On the CPU the numpy emulator (tests/cuda_emulation.py) replays both kernels: the partial sums must equal, to
fp32 summation error, the float64 products of the layer's own rounded activations (the same kernel without
``TAIL``, bit for bit the activation the separate tail would read) with the tail weights, and the gather the
float64 tail conv of those activations plus the residual.  On a GPU the whole network with the fused tail
against the float64 reference (the rule of DESIGN.md §6, as tests/test_cuda_backend.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from equivalence import HALF_DTYPES as DTYPES
from equivalence import assert_equivalent, ref64
from test_cuda_backend import _ext, _model, cuda_device  # noqa: F401  (the fixture)

from tests import cuda_emulation as emu
from tests.test_cuda_emulation import STRIP_IDS, STRIP_KERNELS, STRIP_VARIANTS, TYPES, body_case
from vdsr_fast.engine import BackendUnavailable, Engine
from vdsr_fast.kernels.cuda import CudaBackend, variant_unavailable

# fp32 sums of 64 (partials) or 9 (gather) terms of magnitude <= ~1: a few ulps of fp32 relative to the
# sum of absolute terms; the rounding of the stored activations is not in it (the reference uses the kernel's
# own rounded activations).
RTOL_FP32 = 64 * 2.0**-23


def _tail_case(size, dtype, seed=0):
    x, w, b, _ = body_case(*size, dtype, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    tail_w = (torch.randn(9, 64, generator=g) / 8).numpy().astype(np.float32)  # [ky*3+kx][c], as CudaBackend
    return x, w, b, tail_w


@pytest.mark.parametrize("variant", STRIP_KERNELS, ids=STRIP_IDS)
@pytest.mark.parametrize("size", [(1, 5, 7), (2, 6, 130), (3, 2, 1)], ids=lambda s: "x".join(map(str, s)))
def test_fused_tail_partials_and_gather_in_the_emulator(size, variant):
    """Partial strips, two strips, several images, one pixel; each schedule; the partials against the float64
    products of the same kernel's activations, every in-image pixel's nine partials written once, nothing else."""
    T = TYPES[torch.float16]
    x, w, b, tail_w = _tail_case(size, torch.float16)
    act_bits, _ = emu.launch_strip(variant, T, x, w, b, resident_ctas=3)
    act = T.to_float(act_bits).astype(np.float64)  # (N, H, W, 64): what the separate tail would read
    z, writes = emu.launch_strip(variant, T, x, w, b, resident_ctas=3, tail_w=tail_w)
    assert (writes == 1).all(), "every pixel's nine partial sums must be written exactly once"
    z_ref = np.einsum("nhwc,tc->nhwt", act, tail_w.astype(np.float64))
    scale = np.einsum("nhwc,tc->nhwt", np.abs(act), np.abs(tail_w.astype(np.float64)))
    assert not np.isnan(z).any()
    np.testing.assert_array_less(np.abs(z - z_ref), RTOL_FP32 * scale + 1e-30)

    y = np.random.default_rng(5).uniform(0, 1, size).astype(np.float32)  # the Y plane (N, H, W)
    bias = np.float32(0.0625)
    out = emu.launch_tail_gather(z, y, bias)
    w4 = torch.from_numpy(tail_w.astype(np.float64)).T.reshape(64, 3, 3)[None]  # (1, 64, 3, 3)
    conv = F.conv2d(torch.from_numpy(act).permute(0, 3, 1, 2), w4, padding=1)[:, 0].numpy()
    np.testing.assert_allclose(out, y + bias + conv, rtol=0, atol=1e-5)


# The strip variants with a spread schedule of the partial sums (sb kStripSpreadTail: SS strips, SPLIT 2 or 4).
SPREAD_VARIANTS = [v for v in STRIP_VARIANTS if not v[2] and v[1] in (2, 4)]


def test_spread_tail_variants_match_the_source():
    text = (emu.CSRC / "wgmma_strip_body.cuh").read_text()
    assert "constexpr bool kStripSpreadTail = !RS && (SPLIT == 2 || SPLIT == 4);" in text
    assert SPREAD_VARIANTS == [(True, 2, False), (True, 4, False)]  # variants 8 and 10


def _check_partials(z, writes, act, tail_w):
    assert (writes == 1).all(), "every pixel's nine partial sums must be written exactly once"
    assert not np.isnan(z).any()
    tw = tail_w.astype(np.float64)
    scale = np.einsum("nhwc,tc->nhwt", np.abs(act), np.abs(tw))
    np.testing.assert_array_less(np.abs(z - np.einsum("nhwc,tc->nhwt", act, tw)), RTOL_FP32 * scale + 1e-30)


@pytest.mark.parametrize("variant", SPREAD_VARIANTS, ids=lambda v: f"split{v[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size, ctas", [((1, 5, 7), 3), ((2, 6, 130), 3), ((3, 2, 1), 2), ((1, 3, 300), 4)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"ctas{v}")  # fmt: skip
def test_spread_tail_partials_in_the_emulator(size, ctas, dtype, variant):
    """tail_spread: the partial sums of each epilogue part's pixels, summed in that part (a quarter or a half
    of the row, two or four threads a pixel): the float64 products of the kernel's own activations to fp32 summation
    error, every in-image pixel's nine written once -- partial strips, several strips and images, one pixel, CTAs
    starting mid-strip -- and the same sums as the plain TAIL's up to their order."""
    T = TYPES[dtype]
    x, w, b, tail_w = _tail_case(size, dtype, seed=4)
    act = T.to_float(emu.launch_strip(variant, T, x, w, b, resident_ctas=ctas)[0]).astype(np.float64)
    z, writes = emu.launch_strip(variant, T, x, w, b, resident_ctas=ctas, tail_w=tail_w, spread=True)
    _check_partials(z, writes, act, tail_w)
    plain, _ = emu.launch_strip(variant, T, x, w, b, resident_ctas=ctas, tail_w=tail_w)
    np.testing.assert_allclose(z, plain, rtol=RTOL_FP32, atol=1e-6)


def test_spread_tail_eager_copies():
    T = TYPES[torch.float16]
    x, w, b, tail_w = _tail_case((2, 7, 131), torch.float16, seed=6)
    act = T.to_float(emu.launch_strip(SPREAD_VARIANTS[1], T, x, w, b, resident_ctas=4)[0]).astype(np.float64)
    z, writes = emu.launch_strip(SPREAD_VARIANTS[1], T, x, w, b, resident_ctas=4, eager=True, tail_w=tail_w,
                                 spread=True)  # fmt: skip
    _check_partials(z, writes, act, tail_w)


@pytest.mark.parametrize("dropped", [0, 1], ids=["after-stmatrix", "after-staging"])
def test_spread_tail_detects_a_missing_barrier(monkeypatch, dropped):
    """Each part's two warpgroup barriers (each over the staging tile and the partials' staging): before its reads
    of the activations its stmatrix staged, and between the partials' staging and the coalesced loads; either one
    dropped (in the first part, warpgroup 0) is a race."""
    calls = []
    real = emu.Cta.named_barrier

    def drop(self, lo, hi):
        calls.append((lo, hi))
        # warpgroup 0's first part calls it for the staging tile and the partials' staging at each of its two barriers
        if len(calls) - 1 not in (2 * dropped, 2 * dropped + 1):
            real(self, lo, hi)

    monkeypatch.setattr(emu.Cta, "named_barrier", drop)
    x, w, b, tail_w = _tail_case((1, 4, 9), torch.float16)
    with pytest.raises(emu.Hazard, match=("ld.shared reads" if dropped else "ld.shared.v4 reads") + " shared memory written without"):
        emu.launch_strip(SPREAD_VARIANTS[1], TYPES[torch.float16], x, w, b, resident_ctas=1, tail_w=tail_w, spread=True)


@pytest.mark.parametrize("size", [(2, 3, 600), (1, 1, 257), (1, 4, 256)], ids=lambda s: "x".join(map(str, s)))
def test_tail_gather_in_the_emulator(size):
    """The gather over rows wider than a CTA's 256 threads, one pixel past them, exactly them: the bits of the
    per-pixel sum in tap order from the bias, zero-padded at the borders."""
    rng = np.random.default_rng(11)
    z = rng.standard_normal(size + (9,)).astype(np.float32)
    y = rng.uniform(0, 1, size).astype(np.float32)
    bias = np.float32(-0.03125)
    out = emu.launch_tail_gather(z, y, bias)
    n, h, w_ = size
    zp = np.zeros((n, h + 2, w_ + 2, 9), np.float32)
    zp[:, 1:-1, 1:-1] = z
    s = np.full(size, bias, np.float32)
    for tap in range(9):
        s = (s + zp[:, tap // 3 : tap // 3 + h, tap % 3 : tap % 3 + w_, tap]).astype(np.float32)
    np.testing.assert_array_equal(out, (y + s).astype(np.float32))


def test_fused_tail_bf16_eager_copies():
    T = TYPES[torch.bfloat16]
    x, w, b, tail_w = _tail_case((2, 7, 131), torch.bfloat16, seed=2)
    act = T.to_float(emu.launch_strip(STRIP_VARIANTS[-1], T, x, w, b, resident_ctas=4)[0]).astype(np.float64)
    z, writes = emu.launch_strip(STRIP_VARIANTS[-1], T, x, w, b, resident_ctas=4, eager=True, tail_w=tail_w)
    assert (writes == 1).all()
    scale = np.einsum("nhwc,tc->nhwt", np.abs(act), np.abs(tail_w.astype(np.float64)))
    np.testing.assert_array_less(np.abs(z - np.einsum("nhwc,tc->nhwt", act, tail_w.astype(np.float64))),
                                 RTOL_FP32 * scale + 1e-30)  # fmt: skip


def test_fused_tail_detects_a_missing_barrier(monkeypatch):
    """The partials read the staging tile after the warpgroup barrier: without it, a read-before-write."""
    monkeypatch.setattr(emu.Cta, "named_barrier", lambda self, lo, hi: None)
    x, w, b, tail_w = _tail_case((1, 4, 9), torch.float16)
    with pytest.raises(emu.Hazard):
        emu.launch_strip(STRIP_VARIANTS[0], TYPES[torch.float16], x, w, b, resident_ctas=1, tail_w=tail_w)


@pytest.mark.parametrize("dropped", [2, 3], ids=["before-staging", "before-stores"])
def test_fused_tail_detects_a_missing_staging_barrier(monkeypatch, dropped):
    """The partials are staged in the tile the activations were read from and stored from there: a warpgroup
    barrier between the reads and the staging stores (call 2 of the first epilogue: its two warpgroups' barriers
    come first), and one between those and the coalesced loads (call 3); without either, a race."""
    calls = []
    real = emu.Cta.named_barrier

    def drop_one(self, lo, hi):
        calls.append((lo, hi))
        if len(calls) - 1 != dropped:
            real(self, lo, hi)

    monkeypatch.setattr(emu.Cta, "named_barrier", drop_one)
    x, w, b, tail_w = _tail_case((1, 4, 9), torch.float16)
    with pytest.raises(emu.Hazard, match="write-after-read" if dropped == 2 else "without a __syncthreads"):
        emu.launch_strip(STRIP_VARIANTS[0], TYPES[torch.float16], x, w, b, resident_ctas=1, tail_w=tail_w)


# --- on a GPU --------------------------------------------------------------------------------------------------


def _strip_variants(device, key="tail_partials"):
    """The ids of the body variants with ``key`` (``tail_partials``, ``tail_spread``) that run on ``device``."""
    out = [v["id"] for v in _ext().body_variants() if v[key] and variant_unavailable(v, device) is None]
    if not out:
        pytest.skip(f"no body variant with {key} runs here (the wgmma strip kernels need Hopper, sm_90a)")
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 7, 5), (3, 37, 53), (2, 19, 130)])
def test_fused_tail_network_matches_reference(cuda_device, dtype, shape):  # noqa: F811
    model = _model(depth=6).to(cuda_device)
    x = torch.rand(shape[0], 1, *shape[1:], device=cuda_device)
    ref = ref64(model, x)
    same = Engine(model, backend="torch", dtype=dtype, device=cuda_device)(x)
    for variant in _strip_variants(cuda_device):
        out = Engine(model, backend="cuda", dtype=dtype, device=cuda_device, body_variant=variant, fuse_tail=True)(x)
        assert_equivalent(out, same, ref, dtype, f"cuda fused tail, variant {variant}, {shape} {dtype}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
def test_fused_tail_network_at_1080p(cuda_device, dtype):  # noqa: F811
    _strip_variants(cuda_device)
    model = _model().to(cuda_device)
    x = torch.rand(1, 1, 1080, 1920, device=cuda_device)
    ref = ref64(model, x)
    same = Engine(model, backend="torch", dtype=dtype, device=cuda_device)(x)
    out = Engine(model, backend="cuda", dtype=dtype, device=cuda_device, fuse_tail=True)(x)
    assert_equivalent(out, same, ref, dtype, f"cuda fused tail 1080p {dtype}")


@pytest.mark.gpu
def test_fused_tail_one_body_layer_and_poisoned_buffers(cuda_device):  # noqa: F811
    """Depth 3 (the only body layer is the fused one); outputs must not depend on what the buffers held."""
    _strip_variants(cuda_device)
    for depth in (3, 5):
        model = _model(depth=depth).to(cuda_device)
        x = torch.rand(2, 1, 23, 141, device=cuda_device)
        engine = Engine(model, backend="cuda", dtype=torch.float16, device=cuda_device, fuse_tail=True)
        first = engine(x)
        same = Engine(model, backend="torch", dtype=torch.float16, device=cuda_device)(x)
        assert_equivalent(first, same, ref64(model, x), torch.float16, f"cuda fused tail VDSR-{depth}")
        for buf in engine._impl.buffers(2, 23, 141):
            buf.fill_(float("nan"))
        torch.testing.assert_close(engine(x), first, rtol=0, atol=0)


@pytest.mark.gpu
def test_fused_tail_needs_a_strip_variant(cuda_device):  # noqa: F811
    model = _model(depth=4).to(cuda_device)
    with pytest.raises(BackendUnavailable, match="tail_partials"):
        CudaBackend(model, cuda_device, torch.float16, body_variant=0, fuse_tail=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 7, 5), (3, 37, 53), (2, 19, 130), (1, 1080, 1920)])
def test_spread_tail_network_matches_reference(cuda_device, dtype, shape):  # noqa: F811
    """tail_spread: the whole network against the float64 reference (DESIGN.md §6), eager and in a CUDA graph (the two
    bit-identical), for every variant with the schedule; poisoned buffers change nothing."""
    model = _model(depth=6 if shape[1] < 1080 else 20).to(cuda_device)
    x = torch.rand(shape[0], 1, *shape[1:], device=cuda_device)
    ref = ref64(model, x)
    same = Engine(model, backend="torch", dtype=dtype, device=cuda_device)(x)
    for variant in _strip_variants(cuda_device, "tail_spread"):
        eager = CudaBackend(model, cuda_device, dtype, body_variant=variant, tail_spread=True)
        out = eager(x)
        assert_equivalent(out, same, ref, dtype, f"cuda spread tail, variant {variant}, {shape} {dtype}")
        for buf in eager.buffers(shape[0], shape[1], shape[2]):
            buf.fill_(float("nan"))
        graphed = CudaBackend(model, cuda_device, dtype, body_variant=variant, tail_spread=True, cuda_graphs=True)
        torch.testing.assert_close(graphed(x), out, rtol=0, atol=0)
        torch.testing.assert_close(eager(x), out, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
def test_spread_tail_partials_equal_the_plain_ones_up_to_order(cuda_device, dtype):  # noqa: F811
    """_C.body_tail_partials(spread=True) against spread=False on one layer: the same sums in another fp32 order."""
    ext = _ext()
    n, h, w_ = 2, 45, 263
    g = torch.Generator(device=cuda_device).manual_seed(3)
    x = torch.rand(n, h, w_, 64, device=cuda_device, generator=g).to(dtype)
    wt = (torch.randn(64, 64, 3, 3, device=cuda_device, generator=g) * (2.0 / 576) ** 0.5)
    from vdsr_fast.kernels.cuda import pack_body_weight

    packed = pack_body_weight(wt, dtype)
    b = torch.randn(64, device=cuda_device, generator=g) * 0.05
    tw = torch.randn(9, 64, device=cuda_device, generator=g) / 8
    code = ext.DTYPE_FLOAT16 if dtype == torch.float16 else ext.DTYPE_BFLOAT16
    stream = torch.cuda.current_stream(cuda_device).cuda_stream
    for variant in _strip_variants(cuda_device, "tail_spread"):
        zs = []
        for spread in (False, True):
            z = torch.full((n, h, w_, 9), float("nan"), device=cuda_device)
            ext.body_tail_partials(x.data_ptr(), z.data_ptr(), packed.data_ptr(), b.data_ptr(), tw.data_ptr(), n, h,
                                   w_, code, cuda_device.index, stream, variant, spread=spread)  # fmt: skip
            zs.append(z)
        torch.cuda.synchronize(cuda_device)
        assert not zs[1].isnan().any(), f"variant {variant}: a partial sum was never written"
        torch.testing.assert_close(zs[1], zs[0], rtol=64 * 2.0**-23, atol=1e-6)


@pytest.mark.gpu
def test_spread_tail_refusals(cuda_device):  # noqa: F811
    model = _model(depth=4).to(cuda_device)
    _strip_variants(cuda_device, "tail_spread")
    with pytest.raises(BackendUnavailable, match="tail is not fused"):
        CudaBackend(model, cuda_device, torch.float16, fuse_tail=False, tail_spread=True)
    without = [v["id"] for v in _ext().body_variants() if v["tail_partials"] and not v["tail_spread"]
               and variant_unavailable(v, cuda_device) is None]  # fmt: skip
    with pytest.raises(BackendUnavailable, match="tail_spread=True"):
        CudaBackend(model, cuda_device, torch.float16, body_variant=without[0], tail_spread=True)

"""The CUDA backend's fused head (``CudaBackend(fuse_head=True)``): the first body layer, run by the wgmma strip kernel
with ``HEAD``, computes its halo rows from the fp32 Y plane (the head conv + bias + ReLU, rounded) instead of copying
them from the activation the head kernel would have written.

The promise is bit equality: the same head arithmetic in the same order as ``head_kernel``, then the same body
layer.  On the CPU the numpy emulator (tests/cuda_emulation.py) replays the fused kernel against the head kernel
followed by the plain strip kernel, bit for bit, with its shared-memory, barrier and proxy checks; on a GPU the
extension's fused network against its unfused one, bit for bit, and against the float64 reference.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from equivalence import HALF_DTYPES as DTYPES
from equivalence import assert_equivalent, ref64
from test_cuda_backend import _model, cuda_device  # noqa: F401  (the fixture)

from tests import cuda_emulation as emu
from tests.test_cuda_emulation import TYPES, body_case
from vdsr_fast.engine import BackendUnavailable, Engine
from vdsr_fast.kernels.cuda import CudaBackend


def _head_case(size, dtype, seed=0):
    """A body layer (``body_case``), a Y plane in [0, 1] with a few exact zeros and ones, head weights and biases."""
    _, w, b, _ = body_case(*size, dtype, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    y = torch.rand(size, generator=g)
    y.view(-1)[:: max(1, y.numel() // 5)] = 0.0
    y.view(-1)[1 :: max(1, y.numel() // 7)] = 1.0
    head_w = torch.randn(64, 9, generator=g) / 3  # [n][ky*3+kx], as CudaBackend packs it
    head_b = torch.rand(64, generator=g) * 0.4 - 0.2  # some channels negative: ReLU clips
    return y.numpy(), w, b, head_w.numpy(), head_b.numpy()


def test_head_schedule_matches_the_source():
    text = (emu.CSRC / "wgmma_strip_body.cuh").read_text()

    def array(kind, name):
        return [v.strip() for v in re.search(rf"constexpr {kind} {name}\[\] = \{{([^}}]+)\}};", text).group(1).split(",")]

    loads_first, splits, spread = array("bool", "kHeadLoadsFirst"), array("int", "kHeadSplits"), array("bool", "kHeadSpread")
    assert emu.HEAD_SCHEDULES == [(lf == "true", int(sp), False, sd == "true")
                                  for lf, sp, sd in zip(loads_first, splits, spread, strict=True)]  # fmt: skip
    assert int(re.search(r"constexpr int kHeadStride = (\d+);", text).group(1)) == emu.HEAD_STRIDE


@pytest.mark.parametrize("schedule", range(len(emu.HEAD_SCHEDULES)), ids=lambda s: f"schedule{s}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "size, ctas", [((1, 5, 7), 3), ((2, 6, 130), 3), ((1, 9, 20), 2), ((3, 2, 1), 3), ((1, 4, 257), 5), ((2, 1, 3), 2)],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"ctas{v}",
)  # fmt: skip
def test_fused_head_equals_head_then_body_in_the_emulator(size, ctas, dtype, schedule):
    """Partial strips, two and three strips, several images, one pixel, CTAs whose item ranges start mid-strip:
    the fused layer's output bits equal the head kernel's activation through the plain strip kernel (same
    schedule), every pixel written once."""
    T = TYPES[dtype]
    y, w, b, head_w, head_b = _head_case(size, dtype)
    act, _ = emu.launch_head(T, y, head_w, head_b)
    want, _ = emu.launch_strip(emu.HEAD_SCHEDULES[schedule], T, act, w, b, resident_ctas=ctas)
    got, writes = emu.launch_strip_head(T, y, w, b, head_w, head_b, schedule=schedule, resident_ctas=ctas)
    assert (writes == 1).all(), "every output chunk must be written exactly once"
    np.testing.assert_array_equal(got, want)


def test_fused_head_eager_copies_and_bf16():
    """The weights' cp.async completing at issue (eager) changes nothing."""
    T = TYPES[torch.bfloat16]
    y, w, b, head_w, head_b = _head_case((2, 7, 131), torch.bfloat16, seed=3)
    want, _ = emu.launch_strip(emu.HEAD_SCHEDULES[0], T, emu.launch_head(T, y, head_w, head_b)[0], w, b, resident_ctas=4)
    got, _ = emu.launch_strip_head(T, y, w, b, head_w, head_b, resident_ctas=4, eager=True)
    np.testing.assert_array_equal(got, want)


def test_fused_head_mutants_fail_in_the_emulator(monkeypatch):
    """The checks can fail: no barrier after the head weights' stores (the first rows read them), and the zero
    padding of the Y plane lost (reads past the plane)."""
    T = TYPES[torch.float16]
    y, w, b, head_w, head_b = _head_case((1, 5, 9), torch.float16, seed=1)
    real_store = emu.strip_store_head_weights

    def store_then_skip_barrier(cta, *a):
        real_store(cta, *a)
        cta.epoch -= 1  # cancels the barrier the kernel issues next

    monkeypatch.setattr(emu, "strip_store_head_weights", store_then_skip_barrier)
    with pytest.raises(emu.Hazard, match="without a __syncthreads"):
        emu.launch_strip_head(T, y, w, b, head_w, head_b, resident_ctas=2)
    monkeypatch.setattr(emu, "strip_store_head_weights", real_store)

    real_rows = emu.strip_head_rows

    def no_padding(K, T_, cta, ring, hw, g_y, b_, x0, h0, rows, H, W):
        real_rows(K, T_, cta, ring, hw, g_y, b_, x0, h0, rows, H + 1, W + 1)  # pixels past the edge count as inside

    monkeypatch.setattr(emu, "strip_head_rows", no_padding)
    with pytest.raises(emu.Hazard, match="out-of-bounds"):
        emu.launch_strip_head(T, y, w, b, head_w, head_b, resident_ctas=2)


# --- on a GPU: the extension ------------------------------------------------------------------------------------


def _fused_and_plain(model, device, dtype, x, **opts):
    outs = []
    for fuse_head in (False, True):
        try:
            engine = CudaBackend(model, device, dtype, fuse_head=fuse_head, **opts)
        except BackendUnavailable as e:
            pytest.skip(str(e))
        outs.append(engine(x.clone()))
    return outs


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 37, 53), (2, 1, 130, 260), (1, 1, 1, 1), (1, 1, 1080, 1920)],
                         ids=lambda s: "x".join(map(str, s)))  # fmt: skip
def test_network_fused_head_bit_equals_unfused(cuda_device, dtype, shape):  # noqa: F811
    """The fused head's network equals the unfused one bit for bit (eager, and as a CUDA graph; every schedule of the
    first layer), and the float64 reference within DESIGN §6's rule."""
    torch.manual_seed(0)
    model = _model().to(cuda_device)
    x = torch.rand(shape, device=cuda_device)
    plain, fused = _fused_and_plain(model, cuda_device, dtype, x)
    torch.testing.assert_close(fused, plain, rtol=0, atol=0)
    for schedule in range(1, len(emu.HEAD_SCHEDULES)):
        _, other = _fused_and_plain(model, cuda_device, dtype, x, head_schedule=schedule)
        torch.testing.assert_close(other, plain, rtol=0, atol=0, msg=f"head_schedule={schedule}")
    same = Engine(model, backend="torch", dtype=dtype, device=cuda_device)(x)
    assert_equivalent(fused, same, ref64(model, x), dtype, "cuda fused head")
    _, graphed = _fused_and_plain(model, cuda_device, dtype, x, cuda_graphs=True)
    torch.testing.assert_close(graphed, plain, rtol=0, atol=0)
    _, launched_early = _fused_and_plain(model, cuda_device, dtype, x, pdl=True)  # programmatic dependent launch
    torch.testing.assert_close(launched_early, plain, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_head_body_schedules_equal_head_then_body(cuda_device, dtype):  # noqa: F811
    """_C.head_body in every schedule against _C.head then _C.body (the automatic variant), bit for bit, with the
    output NaN-poisoned first; an unknown schedule is refused."""
    from test_cuda_backend import _ext

    C = _ext()
    if C.body_variants()[C.body_auto_variant(cuda_device.index)]["tail_partials"] is False:
        pytest.skip("the fused head runs on the wgmma strip kernel (Hopper, sm_90a)")
    y_np, _, b_np, head_w, head_b = _head_case((2, 67, 300), dtype, seed=4)
    g = torch.Generator().manual_seed(9)
    w = (torch.randn(64, 64, 3, 3, generator=g) / 24).to(cuda_device)
    from vdsr_fast.kernels.cuda import pack_body_weight

    wp = pack_body_weight(w, dtype)
    y, b = torch.from_numpy(y_np).to(cuda_device), torch.from_numpy(b_np).float().to(cuda_device)
    hw, hb = torch.from_numpy(head_w).to(cuda_device), torch.from_numpy(head_b).to(cuda_device)
    code = C.DTYPE_FLOAT16 if dtype == torch.float16 else C.DTYPE_BFLOAT16
    n, h, w_ = y.shape
    act, want = (torch.empty(n, h, w_, 64, device=cuda_device, dtype=dtype) for _ in range(2))
    stream = torch.cuda.current_stream().cuda_stream
    C.head(y.data_ptr(), act.data_ptr(), hw.data_ptr(), hb.data_ptr(), n, h, w_, code, cuda_device.index, stream)
    C.body(act.data_ptr(), want.data_ptr(), wp.data_ptr(), b.data_ptr(), n, h, w_, code, cuda_device.index, stream)
    assert C.HEAD_SCHEDULES == len(emu.HEAD_SCHEDULES)
    for schedule in range(C.HEAD_SCHEDULES):
        got = torch.full_like(want, float("nan"))
        C.head_body(y.data_ptr(), got.data_ptr(), hw.data_ptr(), hb.data_ptr(), wp.data_ptr(), b.data_ptr(), n, h, w_,
                    code, cuda_device.index, stream, False, schedule)  # fmt: skip
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"schedule {schedule}")
    with pytest.raises((ValueError, RuntimeError), match="schedule"):
        C.head_body(y.data_ptr(), got.data_ptr(), hw.data_ptr(), hb.data_ptr(), wp.data_ptr(), b.data_ptr(), n, h, w_,
                    code, cuda_device.index, stream, False, C.HEAD_SCHEDULES)  # fmt: skip


@pytest.mark.gpu
def test_fused_head_refusals(cuda_device):  # noqa: F811
    """fuse_head with the tensor-core head, with Winograd weights, or with no body layer besides the fused tail's is
    a clear error; with another body variant for the other layers it runs (the first layer is the strip kernel)."""
    model = _model(depth=4).to(cuda_device)
    kw = dict(backend="cuda", device=cuda_device, dtype=torch.float16, fuse_head=True)
    with pytest.raises(BackendUnavailable, match="mma_head"):
        Engine(model, mma_head=True, **kw)
    with pytest.raises(BackendUnavailable, match="Winograd"):
        Engine(model, body_variant=3, **kw)
    with pytest.raises(BackendUnavailable, match="besides the fused tail"):
        Engine(_model(depth=3).to(cuda_device), **kw)
    with pytest.raises(ValueError, match="no fused-head schedule"):
        Engine(model, head_schedule=len(emu.HEAD_SCHEDULES), **kw)
    x = torch.rand(1, 1, 29, 31, device=cuda_device)
    same = Engine(model, backend="torch", dtype=torch.float16, device=cuda_device)(x)
    out = Engine(model, body_variant=0, **kw)(x)  # other accumulation orders than the strip kernel's: not bit-equal
    assert_equivalent(out, same, ref64(model, x), torch.float16, "fused head + body variant 0")

"""The fused tail kernel (conv3x3 C -> 1 + bias + residual add, optional clamp) against float64 PyTorch.

Equivalence rule (DESIGN.md §6): ``err(triton) <= 2 * err(torch, fp32) + atol[fp32] * scale``,
err = max |out - ref64|, ref64 = ``y + conv3x3(x) + b`` in float64 on the operands the kernel has: x in
the storage dtype, the weights rounded to it as packed, y the fp32 plane; ``scale = max(1, max |ref64|)``.
The kernel multiplies and accumulates those in fp32 (a product of two fp16 or bf16 values is exact in
fp32), adds the residual in fp32 and writes y's dtype (fp32 here), so every dtype is held to fp32's
bound: atol 1e-5 (summation-order noise of 576-term sums is ~1e-7 here), far below the tail's bias
(up to 0.05) or one tap's share.

The tail has no tl.dot, so all three dtypes run in Triton's CPU interpreter too.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from equivalence import DTYPES, assert_equivalent, nan_tailed, triton_device

HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

if HAS_TRITON:
    import triton

    from vdsr_fast.kernels.triton.tail import TailConfig, conv3x3_tail_residual, pack_tail_weight


def _inputs(n, h, w, c, dtype, device, seed):
    torch.manual_seed(seed)
    # Residual-sized outputs, as in VDSR: small tail weights on ReLU activations of order 1.
    wt = torch.randn(1, c, 3, 3, device=device) * (2.0 / (9 * c)) ** 0.5 * 0.1
    b = torch.empty(1, device=device).uniform_(-0.05, 0.05)
    x_nchw = torch.rand(n, c, h, w, device=device).to(dtype)
    y = torch.rand(n, 1, h, w, device=device)
    return wt, b, x_nchw, y


CASES = [(1, 1, 1, 64), (3, 7, 5, 64), (1, 37, 53, 64), (3, 6, 11, 5)]  # (N, H, W, C_IN)
GPU_CASES = [(1, 720, 1280, 64), (1, 2160, 3840, 64)]


def _check(n, h, w, c, dtype, device, clamp=False, config=None):
    wt, b, x_nchw, y = _inputs(n, h, w, c, dtype, device, 1000 * n + 100 * h + w + c)
    x = x_nchw.permute(0, 2, 3, 1).contiguous()
    out = torch.full_like(y, float("nan"))
    res = conv3x3_tail_residual(x, pack_tail_weight(wt, dtype), b.float(), y, out, clamp=clamp, config=config)
    assert res is out
    # The kernel's arithmetic is fp32 on operands already in the storage dtype (x, and the weights as packed), and it
    # writes y's dtype (fp32 here): so the reference is float64 on those rounded operands, and the bound fp32's. The
    # same-dtype torch path rounds the output to the storage dtype, which made the bound (up to 0.02 in bf16) larger
    # than the tail's bias: a kernel without its bias passed 4 of the 12 CPU cases (found by a review of the tests).
    wt_q = wt.to(dtype)
    ref64 = y.double() + F.conv2d(x_nchw.double(), wt_q.double(), b.double(), padding=1)
    same = y + F.conv2d(x_nchw.float(), wt_q.float(), b, padding=1)
    if clamp:
        ref64, same = ref64.clamp(0, 1), same.clamp(0, 1)
    assert_equivalent(out, same, ref64, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_tail_matches_float64(case, dtype):
    _check(*case, dtype, triton_device(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "x".join(map(str, c)))
def test_tail_matches_float64_large_gpu(case, dtype):
    device = triton_device(dtype)
    if device.type != "cuda":
        pytest.skip("large sizes run on CUDA only (the CPU interpreter is too slow)")
    _check(*case, dtype, device)


@pytest.mark.parametrize("tile", [(64, 16), (128, 32)], ids=lambda t: f"{t[0] // t[1]}x{t[1]}")
@pytest.mark.parametrize("case", [(2, 19, 37, 64), (1, 1, 1, 64), (3, 5, 40, 24)], ids=lambda c: "x".join(map(str, c)))
def test_tail_2d_pixel_tiles(case, tile):
    """TILE_W: each program covers a 2-D pixel tile of one image (partial tiles in both directions)."""
    device = triton_device()
    config = TailConfig(tile[0], max(16, triton.next_power_of_2(case[3])), 4, tile_w=tile[1])
    _check(*case, torch.float16 if device.type == "cuda" else torch.float32, device, config=config)
    with pytest.raises(ValueError, match="tile_w"):
        TailConfig(128, 64, 4, tile_w=48)


def test_tail_clamp():
    device = triton_device()
    _check(2, 9, 13, 64, torch.float32, device, clamp=True)
    # Large weights push many outputs outside [0, 1]: the clamp must bring them back.
    wt, b, x_nchw, y = _inputs(1, 8, 8, 16, torch.float32, device, 7)
    out = conv3x3_tail_residual(x_nchw.permute(0, 2, 3, 1), pack_tail_weight(wt * 100, torch.float32), b, y, clamp=True)
    assert out.min() >= 0 and out.max() <= 1 and ((out == 0) | (out == 1)).any()


def test_tail_strided_y_and_output_dtype():
    """y as a strided (N, 1, H, W) view in fp16; the output takes y's dtype and a fresh contiguous layout."""
    device = triton_device()
    wt, b, x_nchw, _ = _inputs(2, 9, 13, 64, torch.float32, device, 3)
    y = torch.rand(2, 3, 12, 17, device=device).half()[:, 1:2, 2:11, 3:16]
    assert not y.is_contiguous()
    out = conv3x3_tail_residual(x_nchw.permute(0, 2, 3, 1), pack_tail_weight(wt, torch.float32), b, y)
    assert out.dtype == torch.float16 and out.shape == y.shape and out.is_contiguous()
    ref64 = y.double() + F.conv2d(x_nchw.double(), wt.double(), b.double(), padding=1)
    # one fp16 rounding of the fp32 result
    torch.testing.assert_close(out.double(), ref64, atol=2.0**-11 * max(1.0, ref64.abs().max().item()), rtol=0)


def test_tail_in_place_on_y():
    """out may be y itself: each pixel reads its own y before writing it."""
    device = triton_device()
    wt, b, x_nchw, y = _inputs(1, 7, 9, 16, torch.float32, device, 5)
    ref64 = y.double() + F.conv2d(x_nchw.double(), wt.double(), b.double(), padding=1)
    res = conv3x3_tail_residual(x_nchw.permute(0, 2, 3, 1).contiguous(), pack_tail_weight(wt, torch.float32), b, y, y)
    assert res is y
    torch.testing.assert_close(y.double(), ref64, atol=1e-5, rtol=0)


def test_pack_tail_layout():
    w = torch.arange(3 * 9, dtype=torch.float32).reshape(1, 3, 3, 3)
    p = pack_tail_weight(w, torch.float32)
    for kh in range(3):
        for kw in range(3):
            for ci in range(3):
                assert p[(kh * 3 + kw) * 3 + ci] == w[0, ci, kh, kw]


def test_tail_errors():
    device = triton_device()
    x = torch.rand(1, 4, 4, 16, device=device)
    w = torch.rand(9 * 16, device=device)
    b = torch.zeros(1, device=device)
    y = torch.rand(1, 1, 4, 4, device=device)
    with pytest.raises(ValueError, match="does not match activations"):
        conv3x3_tail_residual(x, w, b, torch.rand(1, 1, 4, 5, device=device))
    with pytest.raises(ValueError, match=r"packed weights of shape \(144,\)"):
        conv3x3_tail_residual(x, w[:-1], b, y)
    with pytest.raises(TypeError, match="activations are torch.float16"):
        conv3x3_tail_residual(x.half(), w, b, y)
    with pytest.raises(ValueError, match="Y plane is on meta"):
        conv3x3_tail_residual(x, w, b, y.to("meta"))
    with pytest.raises(ValueError, match="out must have y's shape"):
        conv3x3_tail_residual(x, w, b, y, torch.empty(1, 1, 4, 3, device=device))


# --- the tail fused into the last body layer (conv3x3_bias_relu_tail_partials + tail_gather_residual) -------
if HAS_TRITON:
    from vdsr_fast.kernels.triton.conv3x3 import (
        ConvConfig,
        conv3x3_bias_relu_tail_partials,
        pack_conv3x3_weight,
        pack_tail_partials_weight,
    )
    from vdsr_fast.kernels.triton.tail import tail_gather_residual


def _fused_case(n, h, w, c, dtype, device, seed):
    """The last body layer's input, weights and bias, the tail's weights and bias, and the Y plane (x_nchw, wl, bl,
    wt, b, y): He-initialised weights, residual-sized tail weights."""
    g = torch.Generator().manual_seed(seed)
    x_nchw = torch.rand(n, c, h, w, generator=g).to(device, dtype)
    wl = (torch.randn(c, c, 3, 3, generator=g) * (2.0 / (9 * c)) ** 0.5).to(device, dtype)
    bl = (torch.rand(c, generator=g) * 0.1 - 0.05).to(device)
    wt = (torch.randn(1, c, 3, 3, generator=g) * (2.0 / (9 * c)) ** 0.5 * 0.1).to(device, dtype)
    b = torch.empty(1).uniform_(-0.05, 0.05, generator=g).to(device)
    y = torch.rand(n, 1, h, w, generator=g).to(device)
    return x_nchw, wl, bl, wt, b, y


def _fused_ref(x_nchw, wl, bl, wt, b, y, dtype):
    """(float64 reference, PyTorch in ``dtype``) of y + tail(relu(conv(x) + bl)) + b: the torch same-dtype path rounds
    the layer's output as the kernel does."""
    act64 = F.conv2d(x_nchw.double(), wl.double(), bl.double(), padding=1).relu()
    act_same = F.conv2d(x_nchw, wl, bl.to(dtype), padding=1).relu()
    ref64 = y.double() + F.conv2d(act64, wt.double(), b.double(), padding=1)
    return ref64, y.to(dtype) + F.conv2d(act_same, wt, b.to(dtype), padding=1)


def _check_fused(n, h, w, c, dtype, device, clamp=False, config=None):
    """Last body layer + tail through the partial sums, against float64 (relu(conv(x)) -> tail + residual)
    on the same rounded operands."""
    x_nchw, wl, bl, wt, b, y = _fused_case(n, h, w, c, dtype, device, 1000 * n + 100 * h + w + c)
    z = torch.full((n * h * w, 9), float("nan"), device=device)
    x = x_nchw.permute(0, 2, 3, 1).contiguous()
    res = conv3x3_bias_relu_tail_partials(x, pack_conv3x3_weight(wl, dtype), bl, pack_tail_partials_weight(wt, dtype), z,
                                          config=config)  # fmt: skip
    assert res is z and not z.isnan().any()
    out = torch.full_like(y, float("nan"))
    assert tail_gather_residual(z, b, y, out, clamp=clamp) is out
    ref64, same = _fused_ref(x_nchw, wl, bl, wt, b, y, dtype)
    if clamp:
        ref64, same = ref64.clamp(0, 1), same.clamp(0, 1)
    assert_equivalent(out, same, ref64, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [(1, 1, 1, 64), (3, 7, 5, 64), (1, 37, 53, 64), (2, 6, 11, 24)],
                         ids=lambda c: "x".join(map(str, c)))  # fmt: skip
def test_fused_tail_matches_float64(case, dtype):
    _check_fused(*case, dtype, triton_device(dtype, bf16_dot=True))


def test_fused_tail_2d_tiles_clamp_and_large_gpu():
    device = triton_device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    _check_fused(2, 19, 37, 64, dtype, device, clamp=True, config=ConvConfig(64, 64, 64, 4, 2, tile_w=16))
    if device.type == "cuda":
        _check_fused(1, 1080, 1920, 64, torch.float16, device)
        _check_fused(1, 1080, 1920, 64, torch.bfloat16, device)


def test_fused_tail_gather_strided_y_and_output():
    """tail_gather_residual reads y and writes out through their own strides: a strided fp16 y view and a strided
    fp32 out view (different layouts) give the same values as contiguous ones. Exact (atol 0): the fp16 y values
    are exact in fp32, so both calls compute the same fp32 sums; the contiguous call is held to float64 by
    test_fused_tail_matches_float64."""
    device = triton_device()
    n, h, w, c = 2, 9, 13, 16
    g = torch.Generator().manual_seed(21)
    x = torch.rand(n, h, w, c, generator=g).to(device)
    wl = (torch.randn(c, c, 3, 3, generator=g) * (2.0 / (9 * c)) ** 0.5).to(device)
    wt = (torch.randn(1, c, 3, 3, generator=g) * 0.1).to(device)
    bl, b = torch.zeros(c, device=device), torch.full((1,), 0.02, device=device)
    z = conv3x3_bias_relu_tail_partials(x, pack_conv3x3_weight(wl, torch.float32), bl,
                                        pack_tail_partials_weight(wt, torch.float32))  # fmt: skip
    y = torch.rand(n, 3, h + 3, w + 4, generator=g).to(device).half()[:, 1:2, 2 : h + 2, 3 : w + 3]
    out = torch.full((n, 2, w + 1, h + 5), float("nan"), device=device).transpose(2, 3)[:, :1, 1 : h + 1, :w]
    assert not y.is_contiguous() and not out.is_contiguous() and y.stride() != out.stride()
    assert tail_gather_residual(z, b, y, out) is out
    want = tail_gather_residual(z, b, y.float().contiguous())
    torch.testing.assert_close(out, want, atol=0, rtol=0)


def test_fused_tail_errors():
    device = triton_device()
    x = torch.rand(1, 4, 4, 64, device=device)
    wl = pack_conv3x3_weight(torch.rand(64, 64, 3, 3, device=device), torch.float32)
    tw = pack_tail_partials_weight(torch.rand(1, 64, 3, 3, device=device), torch.float32)
    bl = torch.zeros(64, device=device)
    with pytest.raises(ValueError, match="all 64 channels in one tile"):
        conv3x3_bias_relu_tail_partials(x, wl, bl, tw, config=ConvConfig(64, 32, 64, 4, 2))
    with pytest.raises(ValueError, match=r"tail weights \(64, 16\)"):
        conv3x3_bias_relu_tail_partials(x, wl, bl, tw[:, :9].contiguous())
    with pytest.raises(ValueError, match=r"z must be a contiguous fp32 \(16, 9\)"):
        conv3x3_bias_relu_tail_partials(x, wl, bl, tw, torch.empty(16, 8, device=device))
    y = torch.rand(1, 1, 4, 4, device=device)
    with pytest.raises(ValueError, match=r"partial sums \(16, 9\)"):
        tail_gather_residual(torch.empty(15, 9, device=device), torch.zeros(1, device=device), y)
    p = pack_tail_partials_weight(torch.arange(2 * 9.0).reshape(1, 2, 3, 3), torch.float32)
    assert p.shape == (2, 16) and p[1, 4] == 9 + 4 and (p[:, 9:] == 0).all()  # column kh*3+kw


# --- several channel blocks, strides, and reads and writes at the edges of views (a mutation audit of the kernels)
@pytest.mark.parametrize("tile_w", [0, 16])
def test_tail_several_channel_blocks(tile_w):
    """BLOCK_C < C_IN: 40 channels in loads of 16 (two whole blocks and a masked one); every other tail test loads
    all channels at once. fp32, the rule of _check (atol 1e-5): a block read at the wrong channel offset is O(0.01)."""
    _check(2, 5, 7, 40, torch.float32, triton_device(), config=TailConfig(64, 16, 4, tile_w=tile_w))


@pytest.mark.parametrize("tile_w", [0, 16])
def test_tail_reads_and_writes_only_its_views(tile_w):
    """x a crop of a NaN tensor (one NaN pixel around each image, 3 NaN channels after the 5 real ones: BLOCK_C 16),
    the weights a view at the front of a NaN buffer, out a view of a NaN buffer one image larger: an unmasked read
    of padding, of a channel >= C_IN or past the weights is NaN (times a zero weight still NaN), a write past the
    batch leaves a non-NaN behind. fp32, the rule of _check (atol 1e-5)."""
    device = triton_device()
    n, h, w, c = 2, 6, 9, 5
    wt, b, x_nchw, y = _inputs(n, h, w, c, torch.float32, device, 31)
    big = torch.full((n, h + 2, w + 2, c + 3), float("nan"), device=device)
    x = big[:, 1 : h + 1, 1 : w + 1, :c]
    x.copy_(x_nchw.permute(0, 2, 3, 1))
    big_out = torch.full((n + 1, 1, h, w), float("nan"), device=device)
    out = big_out[:n]
    config = TailConfig(64, 16, 4, tile_w=tile_w)
    conv3x3_tail_residual(x, nan_tailed(pack_tail_weight(wt, torch.float32)), b, y, out, config=config)
    assert big_out[n].isnan().all(), "wrote past the batch"
    ref64 = y.double() + F.conv2d(x_nchw.double(), wt.double(), b.double(), padding=1)
    same = y + F.conv2d(x_nchw, wt, b, padding=1)
    assert_equivalent(out, same, ref64, torch.float32, "tail on views")


def test_fused_tail_reads_and_writes_only_its_views():
    """The fused tail with C = 24 (BLOCK_K = BLOCK_N = 32: channels masked on both sides): the layer's weights and
    bias and the tail weights as views at the front of NaN buffers (an unmasked read past them is NaN, and in TAIL
    mode even a masked output channel's NaN reaches z through its zero tail weight), z a view at the front of a NaN
    buffer (a partial sum written past the last pixel shows there), the gather's out a view of a NaN buffer four
    images larger. fp32, the rule of _check_fused (atol 1e-5)."""
    device = triton_device()
    n, h, w, c = 2, 6, 11, 24
    x_nchw, wl, bl, wt, b, y = _fused_case(n, h, w, c, torch.float32, device, 41)
    z_buf = torch.full(((n * h * w + 1) * 9,), float("nan"), device=device)
    z = z_buf[: n * h * w * 9].view(n * h * w, 9)
    x = x_nchw.permute(0, 2, 3, 1).contiguous()
    conv3x3_bias_relu_tail_partials(x, nan_tailed(pack_conv3x3_weight(wl, torch.float32)), nan_tailed(bl),
                                    nan_tailed(pack_tail_partials_weight(wt, torch.float32)), z)  # fmt: skip
    assert z_buf[n * h * w * 9 :].isnan().all() and not z.isnan().any()
    big_out = torch.full((n + 4, 1, h, w), float("nan"), device=device)  # room for a 256-pixel program's slots
    out = big_out[:n]
    tail_gather_residual(z, b, y, out)
    assert big_out[n:].isnan().all(), "the gather wrote past the batch"
    ref64, same = _fused_ref(x_nchw, wl, bl, wt, b, y, torch.float32)
    assert_equivalent(out, same, ref64, torch.float32, "fused tail on views")

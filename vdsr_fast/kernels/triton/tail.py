"""VDSR's tail: conv3x3 C_IN -> 1 + bias + the global residual add, in one kernel.

Reads the last NHWC activation once and the input Y plane once, writes the final Y plane: no residual
tensor, no separate add pass. Plain launcher :func:`conv3x3_tail_residual`; weights packed by
:func:`pack_tail_weight`; block sizes from :func:`tail_config`.

Or fused into the last body layer (``TritonBackend(fuse_tail=True)``): that layer writes the tail's 9
per-tap partial sums of each pixel instead of its activation
(:func:`~vdsr_fast.kernels.triton.conv3x3.conv3x3_bias_relu_tail_partials`) and :func:`tail_gather_residual`
adds the neighbours' partials, the bias and the residual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .pixels import program_count, program_pixels

__all__ = ["TailConfig", "tail_config", "pack_tail_weight", "conv3x3_tail_residual", "tail_gather_residual"]


@triton.jit
def _tail_kernel(
    x_ptr,  # activations (N, H, W, C_IN), storage dtype, any strides (NHWC-contiguous in the engine)
    w_ptr,  # packed weights (9 * C_IN,), k = (kh * 3 + kw) * C_IN + ci, storage dtype
    b_ptr,  # bias (1,) fp32 (a pointer, not a Python float: no host sync, CUDA-graph safe)
    y_ptr,  # input Y plane (N, H, W), any float dtype and strides
    out_ptr,  # output Y plane (N, H, W), any float dtype and strides (the caller's dtype)
    M,  # number of pixels, N * H * W
    H,
    W,
    stride_xn,  # activation strides in elements
    stride_xh,
    stride_xw,
    stride_xc,
    stride_yn,  # input Y strides
    stride_yh,
    stride_yw,
    stride_on,  # output Y strides
    stride_oh,
    stride_ow,
    C_IN: tl.constexpr,  # input channels (64 in VDSR); constexpr so the channel loop is unrolled
    CLAMP: tl.constexpr,  # clamp the result to [0, 1]
    BLOCK_M: tl.constexpr,  # pixels per program
    BLOCK_C: tl.constexpr,  # channels per load (power of two); C_IN is covered in ceil(C_IN / BLOCK_C) loads
    TILE_W: tl.constexpr,  # 0: BLOCK_M consecutive pixels in raster order over N*H*W; else a 2-D tile of
    # (BLOCK_M // TILE_W) rows x TILE_W columns of one image, so the 9 taps' loads overlap in L1
):
    """out[n, h, w] = clamp?(y[n, h, w] + b + sum_{kh, kw, ci} x[n, h + kh - 1, w + kw - 1, ci] * w[ci, kh, kw]).

    Layouts: activations NHWC; weights (9 * C_IN,) in (kh, kw, ci) order; y and out (N, H, W) planes
    through their strides (the caller's (N, 1, H, W) tensors). Dtypes: activations and weights fp16 /
    bf16 / fp32, bias fp32, y and out any float dtype; accumulation and the residual add in fp32.
    Zero padding 1 by masked loads. A 1-output-channel conv has no tensor-core shape (N = 1), so each
    program multiplies its (BLOCK_M, BLOCK_C) activation tiles by the tap's weight row on the CUDA
    cores, accumulates elementwise in fp32 over all taps and reduces over channels once at the end.
    Fused: bias, residual add, optional clamp, cast to the output dtype.
    """
    img, oh, ow, m_ok = program_pixels(tl.program_id(0), M, H, W, BLOCK_M, TILE_W, BLOCK_M)
    offs_c = tl.arange(0, BLOCK_C)
    img64 = img.to(tl.int64)
    x_img = x_ptr + img64 * stride_xn

    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for tap in tl.static_range(9):
        ih = oh + (tap // 3 - 1)
        iw = ow + (tap % 3 - 1)
        ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_pix = x_img + ih * stride_xh + iw * stride_xw
        for c0 in tl.static_range(0, C_IN, BLOCK_C):
            ci = c0 + offs_c
            ci_ok = ci < C_IN
            a = tl.load(x_pix[:, None] + ci[None, :] * stride_xc, mask=ok[:, None] & ci_ok[None, :], other=0.0)
            wv = tl.load(w_ptr + tap * C_IN + ci, mask=ci_ok, other=0.0)
            acc += a.to(tl.float32) * wv.to(tl.float32)[None, :]

    res = tl.sum(acc, axis=1) + tl.load(b_ptr).to(tl.float32)
    yv = tl.load(y_ptr + img64 * stride_yn + oh * stride_yh + ow * stride_yw, mask=m_ok, other=0.0)
    o = yv.to(tl.float32) + res
    if CLAMP:
        o = tl.minimum(tl.maximum(o, 0.0), 1.0)
    tl.store(out_ptr + img64 * stride_on + oh * stride_oh + ow * stride_ow, o.to(out_ptr.dtype.element_ty), mask=m_ok)


@triton.jit
def _tail_gather_kernel(
    z_ptr,  # (N * H * W, 9) fp32: the tail's per-tap partial sums of every pixel (conv3x3_bias_relu_tail_partials)
    b_ptr,  # bias (1,) fp32
    y_ptr,  # input Y plane (N, H, W), any float dtype and strides
    out_ptr,  # output Y plane (N, H, W), any float dtype and strides
    M,
    H,
    W,
    stride_yn,
    stride_yh,
    stride_yw,
    stride_on,
    stride_oh,
    stride_ow,
    CLAMP: tl.constexpr,  # clamp the result to [0, 1]
    BLOCK_M: tl.constexpr,  # pixels per program
    TILE_W: tl.constexpr,  # 0: raster order; else 2-D tiles (BLOCK_M // TILE_W) x TILE_W (see program_pixels)
):
    """out[n, h, w] = clamp?(y[n, h, w] + b + sum_{kh, kw} z[(n, h + kh - 1, w + kw - 1), kh * 3 + kw]).

    The second half of the tail fused into the last body layer: 9 fp32 loads per pixel (the neighbours'
    partial sums, zero outside the image: the conv's zero padding), bias, residual, optional clamp,
    cast to the output dtype. Accumulation fp32, taps in order.
    """
    img, oh, ow, m_ok = program_pixels(tl.program_id(0), M, H, W, BLOCK_M, TILE_W, BLOCK_M)
    img64 = img.to(tl.int64)
    acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for tap in tl.static_range(9):
        ih = oh + (tap // 3 - 1)
        iw = ow + (tap % 3 - 1)
        ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        acc += tl.load(z_ptr + ((img64 * H + ih) * W + iw) * 9 + tap, mask=ok, other=0.0)
    res = acc + tl.load(b_ptr).to(tl.float32)
    yv = tl.load(y_ptr + img64 * stride_yn + oh * stride_yh + ow * stride_yw, mask=m_ok, other=0.0)
    o = yv.to(tl.float32) + res
    if CLAMP:
        o = tl.minimum(tl.maximum(o, 0.0), 1.0)
    tl.store(out_ptr + img64 * stride_on + oh * stride_oh + ow * stride_ow, o.to(out_ptr.dtype.element_ty), mask=m_ok)


@dataclass(frozen=True)
class TailConfig:
    """Launch parameters of :func:`_tail_kernel` (see its constexpr comments)."""

    block_m: int
    block_c: int
    num_warps: int
    tile_w: int = 0  # 0: raster-order pixel blocks; else 2-D tiles (block_m // tile_w) x tile_w

    def __post_init__(self) -> None:
        if self.tile_w and self.block_m % self.tile_w:
            raise ValueError(f"TailConfig: block_m={self.block_m} is not a multiple of tile_w={self.tile_w}")


# Memory-bound (2 FLOP per loaded activation): 64 pixels x 64 channels per program keeps each warp's
# loads contiguous 128-byte NHWC rows in fp16. On an H200 at 1080p fp16 (benchmarks/layer_profile.py)
# 64 pixels with 4 warps took 0.335 ms, 32/2 0.344, 256/8 0.356, 128/8 0.412 and 128/4 (the default
# before) 0.447. Change them here, or pass ``config=`` to the launcher.
TAIL_BLOCK_M = 64
TAIL_MAX_BLOCK_C = 64
TAIL_NUM_WARPS = 4


def tail_config(c_in: int) -> TailConfig:
    """Block sizes for the tail: only the channel count changes the choice."""
    return TailConfig(TAIL_BLOCK_M, max(16, min(TAIL_MAX_BLOCK_C, triton.next_power_of_2(c_in))), TAIL_NUM_WARPS)


def pack_tail_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(1, C_IN, 3, 3) -> (9 * C_IN,) in ``dtype``: k = (kh * 3 + kw) * C_IN + ci."""
    if weight.dim() != 4 or weight.shape[0] != 1 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"pack_tail_weight: expected a (1, C_IN, 3, 3) weight, got {tuple(weight.shape)}")
    return weight.detach()[0].permute(1, 2, 0).reshape(-1).to(dtype).contiguous()


def _y_output(name: str, y: torch.Tensor, out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``out`` checked against ``y`` (same shape and device; any float dtype and strides), or allocated like
    ``y``; returned with its (N, H, W) plane view."""
    if out is None:
        out = torch.empty(y.shape, device=y.device, dtype=y.dtype)
    elif out.shape != y.shape or out.device != y.device:
        raise ValueError(
            f"{name}: out must have y's shape {tuple(y.shape)} on {y.device}, got {tuple(out.shape)} on {out.device}"
        )
    return out, _plane(name, out, "output")


def _plane(name: str, t: torch.Tensor, what: str) -> torch.Tensor:
    if t.dim() == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 3:
        raise ValueError(f"{name}: expected {what} of shape (N, 1, H, W) or (N, H, W), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point {what}, got {t.dtype}")
    return t


# Gather: 9 x 4 bytes per pixel mostly from L1 (neighbouring pixels' rows), 256 pixels per program.
GATHER_BLOCK_M = 256
GATHER_NUM_WARPS = 4


def tail_gather_residual(
    z: torch.Tensor,
    b: torch.Tensor,
    y: torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    clamp: bool = False,
) -> torch.Tensor:
    """``y + b + sum_t z[p + offset_t, t]`` (optionally clamped): the final VDSR output from the partial sums
    that :func:`~vdsr_fast.kernels.triton.conv3x3.conv3x3_bias_relu_tail_partials` wrote.

    Args:
        z: contiguous fp32 (N * H * W, 9).
        b: fp32 bias, shape (1,).
        y, out, clamp: as :func:`conv3x3_tail_residual` (``out`` may be ``y``).
    """
    name = "tail_gather_residual"
    y3 = _plane(name, y, "Y plane")
    n, h, w_ = y3.shape
    if z.shape != (n * h * w_, 9) or z.dtype != torch.float32 or not z.is_contiguous() or z.device != y.device:
        raise ValueError(f"{name}: expected contiguous fp32 partial sums ({n * h * w_}, 9) on {y.device}, got "
                         f"{z.dtype} {tuple(z.shape)} on {z.device}")  # fmt: skip
    if b.shape != (1,) or b.dtype != torch.float32 or b.device != y.device:
        raise ValueError(f"{name}: expected an fp32 bias of shape (1,) on {y.device}, got {b.dtype} {tuple(b.shape)}")
    if n * h * w_ >= 2**31:
        raise ValueError(f"{name}: {n}x{h}x{w_} pixels is too many for one launch (32-bit pixel offsets)")
    out, o3 = _y_output(name, y, out)
    m = n * h * w_
    _tail_gather_kernel[(program_count(n, h, w_, GATHER_BLOCK_M, 0),)](
        z, b, y3, o3, m, h, w_, *y3.stride(), *o3.stride(),
        CLAMP=clamp, BLOCK_M=GATHER_BLOCK_M, TILE_W=0, num_warps=GATHER_NUM_WARPS,
    )  # fmt: skip
    return out


def conv3x3_tail_residual(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    y: torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    clamp: bool = False,
    config: TailConfig | None = None,
) -> torch.Tensor:
    """``y + conv3x3(x, w) + b`` (optionally clamped to [0, 1]), the final VDSR output.

    Args:
        x: (N, H, W, C_IN) activations (fp16, bf16 or fp32; any strides).
        w: packed weights (9 * C_IN,) from :func:`pack_tail_weight`.
        b: fp32 bias, shape (1,).
        y: the input Y plane, (N, 1, H, W) or (N, H, W), any float dtype and strides.
        out: optional output with y's shape (any float dtype and strides, must not alias ``x``);
            if None, a contiguous tensor of y's shape and dtype is allocated. ``out`` may be ``y``
            itself (each pixel reads its own y before writing it).
        clamp: clamp the result to [0, 1].
        config: block sizes; default :func:`tail_config`.
    """
    name = "conv3x3_tail_residual"
    if x.dim() != 4:
        raise ValueError(f"{name}: expected NHWC activations (N, H, W, C), got shape {tuple(x.shape)}")
    for t, what in ((w, "weight"), (b, "bias"), (y, "Y plane")):
        if t.device != x.device:
            raise ValueError(f"{name}: {what} is on {t.device} but the activations are on {x.device}")
    n, h, w_, c_in = x.shape
    if w.shape != (9 * c_in,) or not w.is_contiguous():
        raise ValueError(f"{name}: expected contiguous packed weights of shape ({9 * c_in},), got {tuple(w.shape)}")
    if b.shape != (1,) or b.dtype != torch.float32:
        raise ValueError(f"{name}: expected an fp32 bias of shape (1,), got {b.dtype} {tuple(b.shape)}")
    if x.dtype != w.dtype:
        raise TypeError(f"{name}: activations are {x.dtype} but weights are {w.dtype}")
    y3 = _plane(name, y, "Y plane")
    if y3.shape != (n, h, w_):
        raise ValueError(f"{name}: Y plane {tuple(y.shape)} does not match activations {tuple(x.shape)}")
    if h * w_ * c_in >= 2**31 or n * h * w_ >= 2**31:
        raise ValueError(f"{name}: {n}x{h}x{w_}x{c_in} is too large for 32-bit in-image offsets")
    if out is not None and out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        raise ValueError(f"{name}: out must not alias the activations")
    out, o3 = _y_output(name, y, out)
    config = config or tail_config(c_in)
    m = n * h * w_
    _tail_kernel[(program_count(n, h, w_, config.block_m, config.tile_w),)](
        x, w, b, y3, o3, m, h, w_, *x.stride(), *y3.stride(), *o3.stride(),
        C_IN=c_in, CLAMP=clamp, BLOCK_M=config.block_m, BLOCK_C=config.block_c, TILE_W=config.tile_w,
        num_warps=config.num_warps,
    )  # fmt: skip
    return out

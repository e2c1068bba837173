"""Fused conv3x3 + bias + ReLU with tensor-descriptor (TMA) tiles: VDSR's 64->64 body, experimental.

The same layer as :func:`~vdsr_fast.kernels.triton.conv3x3.conv3x3_bias_relu` (an implicit GEMM, M = output
pixels, N = output channels, K = 9 taps x C_IN, fp32 accumulation, bias + ReLU + rounding fused), but each
tap's input tile is one tensor-descriptor load: a program covers a 2-D tile of TILE_H x TILE_W pixels of one
image, and the tile of tap (dy, dx) is the (1, TILE_H, TILE_W, BLOCK_K) box of the NHWC activations at
(n, y0 + dy - 1, x0 + dx - 1, k0). On Hopper that box is one TMA copy (the copy engine computes the
addresses and zero-fills the padding: no per-element address, mask or bounds arithmetic in the kernel),
and the output tile leaves by one TMA store, which clips at the image border. On other GPUs (and in
Triton's interpreter, which the CPU tests use) the descriptor loads and stores are ordinary memory
accesses with the same semantics.

SWAP: the GEMM turned around (channels as M, the TILE_H * TILE_W pixels as N), as ``ConvConfig(swap=True)``.
TAIL (:func:`conv3x3_tma_tail_partials`, the last body layer of a fused tail): instead of the output tile, the
tail conv's nine per-tap partial sums of each pixel (one more small dot with the (C_OUT, 16) tail weights), as
the direct kernel's TAIL.

Requirements (checked by the launcher): NHWC activations with channel stride 1 and the other strides
multiples of 16 bytes (any contiguous NHWC tensor of 8+ fp16 channels), C_IN a multiple of BLOCK_K >= 16,
C_OUT a power of two >= 16 (one program holds every output channel). VDSR's 64 -> 64 layer meets them.
The default body of ``TritonBackend`` on Hopper in fp16/bf16 (``backend.default_body_config``): with the SWAP
tile of :func:`tma_config` it was the fastest Triton body on an H200 (benchmarks/results, run 6).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .conv3x3 import _check_body, _check_tail_partials, _nhwc_output, e4m3_epilogue, interpreted

__all__ = ["TmaConfig", "tma_config", "tma_candidates", "tma_unsupported", "conv3x3_tma", "conv3x3_tma_tail_partials"]

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32, torch.float8_e4m3fn: tl.float8e4nv}


@triton.jit
def _conv3x3_tma_kernel(
    x_desc,  # descriptor of the input activations (N, H, W, C_IN), block (1, TILE_H, TILE_W, BLOCK_K)
    w_ptr,  # packed weights (C_OUT, 9 * C_IN), K contiguous, k = (kh * 3 + kw) * C_IN + ci (pack_conv3x3_weight)
    b_ptr,  # bias (C_OUT,) fp32 (FP8: beta, the bias divided by the next layer's activation scale)
    alpha_ptr,  # FP8: (C_OUT,) fp32, the dequantisation and the next layer's scale (vdsr_fast.fp8); else unused
    out_desc,  # descriptor of the output (N, H, W, C_OUT), block (1, TILE_H, TILE_W, C_OUT) (unused with TAIL)
    tw_ptr,  # TAIL: the tail's 64 -> 1 weights as (C_OUT, 16), column t = kh * 3 + kw (< 9), storage dtype
    z_ptr,  # TAIL: output (N * H * W, 9) fp32, contiguous: the tail's per-tap partial sums of each pixel
    H,
    W,
    C_IN: tl.constexpr,  # input channels, a multiple of BLOCK_K
    C_OUT: tl.constexpr,  # output channels, a power of two: one program holds them all
    TILE_H: tl.constexpr,  # output rows per program
    TILE_W: tl.constexpr,  # output columns per program; TILE_H * TILE_W = the GEMM's pixel tile
    BLOCK_K: tl.constexpr,  # input channels per K step (>= 16: tl.dot and the 16-byte TMA box minimum)
    SWAP: tl.constexpr,  # channels as the GEMM's M (acc^T = W @ X^T) instead of the pixels
    TAIL: tl.constexpr,  # the last body layer of a fused tail: store the tail's partial sums instead of the output
    DOT_PRECISION: tl.constexpr,  # tl.dot input precision for fp32 storage ("ieee": no TF32 rounding)
    OUT_DTYPE: tl.constexpr,  # the storage dtype (tl.float16 / tl.bfloat16 / tl.float32 / tl.float8e4nv)
    FP8: tl.constexpr,  # e4m3 activations and weights: the epilogue is relu(acc * alpha + beta), e4m3 out (or TAIL)
    EXACT_E4M3: tl.constexpr,  # FP8: round to e4m3 in fp32 before the cast (Triton's CPU interpreter)
):
    """out[n, y, x, co] = relu(b[co] + sum_{ky, kx, ci} in[n, y + ky - 1, x + kx - 1, ci] * w[co, ci, ky, kx]).

    Program ``pid`` computes the TILE_H x TILE_W output tile ``pid`` of the (image, tile row, tile column)
    raster; its K loop is one flat loop over (tap, channel block), software-pipelined by Triton (the
    descriptor loads of the next steps in flight while the current step's dot runs).
    """
    BLOCK_M: tl.constexpr = TILE_H * TILE_W
    K_STEPS: tl.constexpr = C_IN // BLOCK_K
    pid = tl.program_id(0)
    tiles_w = tl.cdiv(W, TILE_W)
    tiles = tl.cdiv(H, TILE_H) * tiles_w
    n = pid // tiles
    t = pid - n * tiles
    y0 = (t // tiles_w) * TILE_H
    x0 = (t % tiles_w) * TILE_W
    offs_n = tl.arange(0, C_OUT)
    offs_k = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + offs_n[:, None] * (9 * C_IN) + offs_k[None, :]  # (C_OUT, BLOCK_K) of tap 0, block 0
    if SWAP:
        acc = tl.zeros((C_OUT, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, C_OUT), dtype=tl.float32)
    for step in range(9 * K_STEPS):
        tap = step // K_STEPS
        k0 = (step % K_STEPS) * BLOCK_K
        # the box starts one row / column before the tile for the taps of the row above / column left
        a = x_desc.load([n, y0 + tap // 3 - 1, x0 + tap % 3 - 1, k0]).reshape(BLOCK_M, BLOCK_K)
        w = tl.load(w_rows + (tap * C_IN + k0))  # (C_OUT, BLOCK_K)
        if SWAP:
            acc = tl.dot(w, tl.trans(a), acc, input_precision=DOT_PRECISION)
        else:
            acc = tl.dot(a, tl.trans(w), acc, input_precision=DOT_PRECISION)
    if SWAP:
        acc = tl.trans(acc)
    if FP8:  # the accumulator is in units of the two 8-bit scales: alpha takes it to the next layer's
        acc = acc * tl.load(alpha_ptr + offs_n)[None, :]
    acc = tl.maximum(acc + tl.load(b_ptr + offs_n)[None, :], 0.0)
    if TAIL:  # as conv3x3's TAIL: z[p, t] = sum_c tw[c, t] * act[p, c], the activation rounded to the storage dtype
        offs_t = tl.arange(0, 16)
        tw = tl.load(tw_ptr + offs_n[:, None] * 16 + offs_t[None, :])
        z = tl.dot(acc.to(tw_ptr.dtype.element_ty), tw, input_precision=DOT_PRECISION)  # (BLOCK_M, 16); FP8: fp16
        offs_m = tl.arange(0, BLOCK_M)
        oh = y0 + offs_m // TILE_W
        ow = x0 + offs_m % TILE_W
        pix = (n.to(tl.int64) * H + oh) * W + ow
        tl.store(z_ptr + pix[:, None] * 9 + offs_t[None, :], z, mask=((oh < H) & (ow < W))[:, None] & (offs_t < 9)[None, :])
    else:
        if FP8:
            acc = e4m3_epilogue(acc, EXACT_E4M3)
        out_desc.store([n, y0, x0, 0], acc.to(OUT_DTYPE).reshape(1, TILE_H, TILE_W, C_OUT))


@dataclass(frozen=True)
class TmaConfig:
    """Launch parameters of :func:`conv3x3_tma` (see the kernel's constexpr comments)."""

    tile_h: int = 8
    tile_w: int = 16
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 3
    swap: bool = False

    def __post_init__(self) -> None:
        m = self.tile_h * self.tile_w
        if m < 16 or m & (m - 1) or self.tile_w & (self.tile_w - 1):
            raise ValueError(f"TmaConfig: tile {self.tile_h}x{self.tile_w} must have power-of-two width and area >= 16")
        if self.block_k < 16 or self.block_k & (self.block_k - 1):
            raise ValueError(f"TmaConfig: block_k={self.block_k} must be a power of two >= 16")


def tma_config(dtype: torch.dtype) -> TmaConfig:
    """The default TMA body tile. fp16/bf16: 8 x 32 pixels x 64 channels, SWAP (channels as the GEMM's M),
    4 warps, 2 stages -- the fastest of :func:`tma_candidates` on an H200 (0.367 ms per 1080p fp16 layer against
    0.400 for the 8 x 16 unswapped 3-stage tile, benchmarks/results run 7). fp32 (not timed): 8 x 16 pixels x
    32 channels, whose 128-byte rows are the widest box row the 128-byte swizzle takes, 2 stages. float8_e4m3fn:
    the fp16 tile with 3 stages."""
    if dtype == torch.float32:
        return TmaConfig(block_k=32, num_stages=2)
    if dtype == torch.float8_e4m3fn:  # the fp16 tile, one more stage (half the bytes): 0.229 ms a 1080p layer, H200 run 11
        return TmaConfig(8, 32, 64, 4, 3, swap=True)
    return TmaConfig(8, 32, 64, 4, 2, swap=True)


def tma_candidates(dtype: torch.dtype) -> list[TmaConfig]:
    """The default first, then a small sweep (tile shapes of 128 and 256 pixels, warps, SWAP) for a GPU run."""
    d = tma_config(dtype)
    k, st = d.block_k, 3 if dtype != torch.float32 else 2
    out = [d, TmaConfig(8, 16, k, 4, st)]
    for th, tw, warps in ((4, 32, 4), (16, 16, 8), (8, 32, 8)):
        out.append(TmaConfig(th, tw, k, warps, st))
    out += [TmaConfig(8, 16, k, 4, st, swap=True), TmaConfig(8, 32, k, 4, 2, swap=True), TmaConfig(8, 32, k, 4, 3, swap=True),
            TmaConfig(16, 16, k, 4, 2, swap=True), TmaConfig(8, 32, k, 8, 2, swap=True), TmaConfig(16, 32, k, 8, 2, swap=True)]  # fmt: skip
    if dtype == torch.float8_e4m3fn:  # half the bytes per stage: deeper pipelines fit
        out += [TmaConfig(8, 32, k, 4, 4, swap=True), TmaConfig(16, 32, k, 8, 3, swap=True), TmaConfig(16, 16, k, 4, 3, swap=True)]
    return list(dict.fromkeys(out))


def tma_unsupported(x: torch.Tensor, c_in: int, c_out: int, block_k: int) -> str | None:
    """Why :func:`conv3x3_tma` cannot take this input / layer shape, or None."""
    if c_in % block_k or block_k < 16:
        return f"C_IN={c_in} is not a multiple of block_k={block_k} (>= 16)"
    if x.element_size() == 1 and block_k < 32:
        return f"8-bit activations need block_k >= 32 (tl.dot's K), got {block_k}"
    if c_out < 16 or c_out & (c_out - 1):
        return f"C_OUT={c_out} is not a power of two >= 16"
    if x.stride(-1) != 1 or any((s * x.element_size()) % 16 for s in x.stride()[:-1]):
        return f"the activations' strides {tuple(x.stride())} are not channel stride 1 and 16-byte multiples"
    if x.data_ptr() % 16:
        return "the activations are not 16-byte aligned"
    return None


def conv3x3_tma(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    config: TmaConfig | None = None,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """Body layer ``relu(conv3x3(x, w) + b)`` with tensor-descriptor tiles (see the module docstring).

    Args:
        x: (N, H, W, C_IN) NHWC activations in the storage dtype of ``w`` (channel stride 1, 16-byte strides).
        w: packed weights (C_OUT, 9 * C_IN) from :func:`~vdsr_fast.kernels.triton.conv3x3.pack_conv3x3_weight`.
        b: fp32 bias (C_OUT,).
        out: optional (N, H, W, C_OUT) output (the same stride rules), not aliasing ``x``; allocated if None.
        config: tile sizes; default :func:`tma_config`.
        alpha: float8_e4m3fn ``x`` and ``w`` only, and required there: the (C_OUT,) fp32 epilogue scale of
            :mod:`vdsr_fast.fp8` (``b`` is then its beta): ``e4m3(relu(acc * alpha + b))``.
    """
    name = "conv3x3_tma"
    n, h, w_, c_in, c_out = _check_body(name, x, w, b, fp8=True)
    out = _nhwc_output(name, x, out, n, h, w_, c_out, x.dtype, max(c_in, c_out))
    return _launch(name, x, w, b, out, None, config, alpha)


def conv3x3_tma_tail_partials(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    tw: torch.Tensor,
    z: torch.Tensor | None = None,
    *,
    config: TmaConfig | None = None,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """The last body layer of a fused tail on tensor-descriptor tiles: ``z[p, t] = sum_c tw[c, t] *
    relu(conv3x3(x, w) + b)[p, c]`` (the activation rounded to the storage dtype, never written), as
    :func:`~vdsr_fast.kernels.triton.conv3x3.conv3x3_bias_relu_tail_partials`; then
    :func:`~vdsr_fast.kernels.triton.tail.tail_gather_residual`.

    Args:
        x, w, b, config, alpha: as :func:`conv3x3_tma` (FP8: the activation is rounded to fp16 instead).
        tw: (C_OUT, 16) from :func:`~vdsr_fast.kernels.triton.conv3x3.pack_tail_partials_weight`, storage dtype
            (fp16 for float8_e4m3fn ``x``).
        z: optional contiguous fp32 (N * H * W, 9) output; allocated if None.
    """
    z = _check_tail_partials("conv3x3_tma_tail_partials", x, w, b, tw, z, fp8=True)[-1]
    return _launch("conv3x3_tma_tail_partials", x, w, b, None, (tw, z), config, alpha)


def _launch(name, x, w, b, out, tail, config, alpha):
    """One launch: ``out`` (NHWC) or, with ``tail`` = (tw, z), the partial sums z (returned)."""
    n, h, w_, c_in = x.shape
    c_out = w.shape[0]
    fp8 = x.dtype == torch.float8_e4m3fn
    if fp8 != (alpha is not None):
        raise ValueError(f"{name}: alpha is required with float8_e4m3fn activations and only there")
    if fp8 and (alpha.shape != (c_out,) or alpha.dtype != torch.float32 or not alpha.is_contiguous() or alpha.device != x.device):
        raise ValueError(f"{name}: alpha must be a contiguous fp32 ({c_out},) tensor on {x.device}")
    config = config or tma_config(x.dtype)
    for t, what in ((x, "input"), (out, "output")):
        if t is not None and (why := tma_unsupported(t, c_in, c_out, config.block_k)):
            raise ValueError(f"{name}: {what}: {why}")
    x_desc = TensorDescriptor.from_tensor(x, [1, config.tile_h, config.tile_w, config.block_k])
    out_desc = x_desc if out is None else TensorDescriptor.from_tensor(out, [1, config.tile_h, config.tile_w, c_out])
    tw, z = tail if tail is not None else (w, b)  # unused placeholders without TAIL
    grid = (n * triton.cdiv(h, config.tile_h) * triton.cdiv(w_, config.tile_w),)
    _conv3x3_tma_kernel[grid](
        x_desc, w, b, alpha if fp8 else b, out_desc, tw, z, h, w_, C_IN=c_in, C_OUT=c_out, TILE_H=config.tile_h, TILE_W=config.tile_w,
        BLOCK_K=config.block_k, SWAP=config.swap, TAIL=tail is not None,
        DOT_PRECISION="ieee" if w.dtype == torch.float32 else "tf32", OUT_DTYPE=_TL_DTYPES[x.dtype],
        FP8=fp8, EXACT_E4M3=fp8 and interpreted(), num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return out if tail is None else z

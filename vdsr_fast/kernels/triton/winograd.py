"""Fused conv3x3 + bias + ReLU by Winograd F(2x2, 3x3) on tensor cores (VDSR's 64->64 body, experimental).

Each 2x2 block of output pixels ("tile") is computed from the 4x4 input patch around it as

    Y = A^T [ sum_ci (B^T d_ci B) * U_ci ] A,    U = G g G^T (packed once per layer),

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

so the channel sum is 16 GEMMs (one per transformed position (xi, nu)) of (tiles x C_IN) by
(C_IN x C_OUT): 16 * C_IN * C_OUT multiply-adds per 4 output pixels, against 36 * C_IN * C_OUT for
the direct convolution (2.25x fewer tensor-core FLOPs). The input transform (additions only) and the
output transform (additions only) run on the CUDA cores, in the storage dtype and in fp32.

Numerics (checked by tests/test_triton_winograd.py against the float64 reference with DESIGN.md §6's
rule): the transformed weights are computed in float64 from the fp32 master weights
and rounded once to the storage dtype; the input transform rounds twice (after the row and the column
transform, each a sum or difference of two values); the GEMMs and the output transform accumulate in
fp32. A float64 emulation of the 20-layer network (random He-init and the shipped weights, 2x61x47)
gave max errors 1.1-1.2x (fp16) and 1.3-1.7x (bf16) those of the direct convolution in the same dtype.

Not the default body until a GPU run ranks it: ``benchmarks/layer_profile.py`` times every
:func:`winograd_candidates` config beside the direct kernel and cuDNN; ``TritonBackend`` (and ``Engine``)
run it with ``body_config=WinogradConfig(...)``. The CUDA backend has the same algorithm as body
variant 3 (csrc/winograd_body.cuh).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .. import pack_winograd_weight
from .conv3x3 import _check_common, _nhwc_output, _pow2_clamp
from .pixels import program_count, program_pixels

__all__ = ["WinogradConfig", "winograd_config", "winograd_candidates", "pack_winograd_weight", "conv3x3_winograd"]

@triton.jit
def _load_u(ptrs, mask, EVEN: tl.constexpr):
    """One (BLOCK_K, BLOCK_N) tile of transformed weights; unmasked when the tiles divide the channels."""
    if EVEN:
        u = tl.load(ptrs)
    else:
        u = tl.load(ptrs, mask=mask, other=0.0)
    return u


@triton.jit
def _patch_row(x_tile, h0, w0, t_ok, H, W, stride_xh, stride_xw, k_off, k_ok, A):
    """Row ``A`` of each tile's 4x4 input patch: four (BLOCK_T, BLOCK_K) column tiles, 0 outside the image.

    ``x_tile``: address of patch element (0, 0) of each tile (pixel (h0, w0) = (2 th - 1, 2 tw - 1));
    ``k_off``/``k_ok``: channel offsets (elements) and mask of this K block, shaped (1, BLOCK_K).
    Column 1 (pixel 2 tw) is inside the image whenever the tile is; columns 0, 2, 3 can fall outside.
    """
    ok = (t_ok & (h0 + A >= 0) & (h0 + A < H))[:, None] & k_ok
    row = (x_tile + A * stride_xh)[:, None] + k_off
    v0 = tl.load(row, mask=ok & (w0 >= 0)[:, None], other=0.0)
    v1 = tl.load(row + stride_xw, mask=ok, other=0.0)
    v2 = tl.load(row + 2 * stride_xw, mask=ok & (w0 + 2 < W)[:, None], other=0.0)
    v3 = tl.load(row + 3 * stride_xw, mask=ok & (w0 + 3 < W)[:, None], other=0.0)
    return v0, v1, v2, v3


@triton.jit
def _winograd_kernel(
    x_ptr,  # activations (N, H, W, C_IN), any strides (NHWC-contiguous in the engine); storage dtype
    u_ptr,  # transformed weights (16, C_OUT, C_IN), K contiguous: u[xi * 4 + nu, co, ci] = (G g G^T)[xi, nu]
    b_ptr,  # bias (C_OUT,) fp32
    out_ptr,  # output (N, H, W, C_OUT), channel stride 1; its dtype is the storage dtype
    TILES,  # number of 2x2 output tiles, N * TH * TW
    H,
    W,
    TH,  # tile rows, ceil(H / 2)
    TW,  # tile columns, ceil(W / 2)
    stride_xn,  # input strides in elements
    stride_xh,
    stride_xw,
    stride_xc,
    stride_on,  # output strides in elements (channel stride is 1)
    stride_oh,
    stride_ow,
    C_IN: tl.constexpr,  # input channels; constexpr so the channel masks fold away when BLOCK_K divides it
    C_OUT: tl.constexpr,  # output channels; constexpr for the masks and the weight strides
    RELU: tl.constexpr,  # apply ReLU in the epilogue
    DOT_PRECISION: tl.constexpr,  # tl.dot input precision for fp32 storage ("ieee": no TF32 rounding)
    BLOCK_T: tl.constexpr,  # 2x2 output tiles per program (GEMM M tile): 4 * BLOCK_T output pixels
    BLOCK_N: tl.constexpr,  # output channels per program (GEMM N tile)
    BLOCK_K: tl.constexpr,  # input channels per K step (GEMM K tile); >= 16 for tl.dot
    TILE_TW: tl.constexpr,  # 0: BLOCK_T consecutive tiles in raster order; else a 2-D block of
    # (BLOCK_T // TILE_TW) x TILE_TW tiles of one image, so neighbouring patches' loads overlap in L1
):
    """out[n, h, w, co] = act(b[co] + sum_{kh, kw, ci} x[n, h + kh - 1, w + kw - 1, ci] * g[co, ci, kh, kw]).

    Layouts: activations NHWC (channel stride 1 on the output); transformed weights (16, C_OUT, C_IN),
    K contiguous; bias (C_OUT,). Dtypes: storage fp16 / bf16 / fp32; the input transform runs in the
    storage dtype, GEMMs and the output transform accumulate in fp32.
    Zero padding 1: taps outside the image are masked loads with ``other=0`` (no padded copy).
    Fused: bias, ReLU and the cast to the storage dtype in the epilogue.
    Program (pid_t, pid_n) computes BLOCK_T tiles (4 * BLOCK_T pixels) x BLOCK_N output channels. Per
    transformed row xi (a loop): the two patch rows B^T needs are loaded (8 column tiles per K block),
    combined into B^T d, then for each nu the column transform gives V[xi, nu] (BLOCK_T x BLOCK_K) and
    one ``tl.dot`` with U[xi, nu] gives M[xi, nu]; A^T M A is folded into four fp32 accumulators, one per
    output pixel of the tile, as the M[xi, :] arrive.
    """
    pid_t = tl.program_id(0)
    pid_n = tl.program_id(1)
    img, th, tw, t_ok = program_pixels(pid_t, TILES, TH, TW, BLOCK_T, TILE_TW, BLOCK_T)
    h0 = 2 * th - 1
    w0 = 2 * tw - 1
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_OUT
    offs_k = tl.arange(0, BLOCK_K)
    # 64-bit image offset: a batch of 4K frames has more than 2**31 activation elements.
    x_tile = x_ptr + img.to(tl.int64) * stride_xn + h0 * stride_xh + w0 * stride_xw
    K_STEPS: tl.constexpr = (C_IN + BLOCK_K - 1) // BLOCK_K
    EVEN: tl.constexpr = C_IN % BLOCK_K == 0 and C_OUT % BLOCK_N == 0  # no weight masks (VDSR: 64, 64)
    u_base = u_ptr + offs_n[None, :] * C_IN + offs_k[:, None]  # (BLOCK_K, BLOCK_N) tile of U[p], K block 0

    # y_ij: output pixel (2 th + i, 2 tw + j) of each tile
    y00 = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    y01 = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    y10 = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    y11 = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for xi in range(4):  # a loop, not unrolled: one row's loads and GEMM results live at a time
        # B^T row xi = d[a0] + sgn * d[a1]: rows (0, 2, -), (1, 2, +), (2, 1, -), (1, 3, -)
        a0 = xi - 2 * (xi // 3)
        a1 = 2 + xi // 3 - (xi // 2) * (1 - xi // 3)
        sgn = tl.where(xi == 1, 1.0, -1.0).to(x_ptr.dtype.element_ty)
        # A^T column xi: weight of this row's (M A) in output row 0 (1, 1, 1, 0) and row 1 (0, 1, -1, -1)
        top = tl.where(xi < 3, 1.0, 0.0)
        bottom = tl.where(xi == 1, 1.0, tl.where(xi == 0, 0.0, -1.0))
        m0 = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)  # M[xi, nu] for nu = 0..3
        m1 = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
        m2 = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
        m3 = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
        u_row = u_base + xi * (4 * C_OUT * C_IN)
        for kb in tl.static_range(K_STEPS):
            k_ok = ((kb * BLOCK_K + offs_k) < C_IN)[None, :]
            k_off = ((kb * BLOCK_K + offs_k) * stride_xc)[None, :]
            p0, p1, p2, p3 = _patch_row(x_tile, h0, w0, t_ok, H, W, stride_xh, stride_xw, k_off, k_ok, a0)
            q0, q1, q2, q3 = _patch_row(x_tile, h0, w0, t_ok, H, W, stride_xh, stride_xw, k_off, k_ok, a1)
            r0, r1, r2, r3 = p0 + sgn * q0, p1 + sgn * q1, p2 + sgn * q2, p3 + sgn * q3  # (B^T d)[xi, :]
            # V[xi, nu] = ((B^T d) B)[xi, nu]: r0 - r2, r1 + r2, r2 - r1, r1 - r3
            u_k = u_row + kb * BLOCK_K
            u_mask = ((kb * BLOCK_K + offs_k) < C_IN)[:, None] & n_ok[None, :]
            m0 = tl.dot(r0 - r2, _load_u(u_k, u_mask, EVEN), m0, input_precision=DOT_PRECISION)
            m1 = tl.dot(r1 + r2, _load_u(u_k + C_OUT * C_IN, u_mask, EVEN), m1, input_precision=DOT_PRECISION)
            m2 = tl.dot(r2 - r1, _load_u(u_k + 2 * C_OUT * C_IN, u_mask, EVEN), m2, input_precision=DOT_PRECISION)
            m3 = tl.dot(r1 - r3, _load_u(u_k + 3 * C_OUT * C_IN, u_mask, EVEN), m3, input_precision=DOT_PRECISION)
        # (M A)[xi, j] = sum over nu of A[nu, j] M[xi, nu], A^T row 0 = (1, 1, 1, 0), row 1 = (0, 1, -1, -1)
        ma0 = m0 + m1 + m2
        ma1 = m1 - m2 - m3
        # A^T (M A): output row 0 gets top * (M A)[xi, :], row 1 bottom * (M A)[xi, :]
        y00 += top * ma0
        y01 += top * ma1
        y10 += bottom * ma0
        y11 += bottom * ma1

    bias = tl.load(b_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    o_tile = out_ptr + img.to(tl.int64) * stride_on + (2 * th) * stride_oh + (2 * tw) * stride_ow
    _store_pixel(o_tile, y00, bias, t_ok, 2 * th < H, 2 * tw < W, offs_n, n_ok, RELU)
    _store_pixel(o_tile + stride_ow, y01, bias, t_ok, 2 * th < H, 2 * tw + 1 < W, offs_n, n_ok, RELU)
    _store_pixel(o_tile + stride_oh, y10, bias, t_ok, 2 * th + 1 < H, 2 * tw < W, offs_n, n_ok, RELU)
    _store_pixel(o_tile + stride_oh + stride_ow, y11, bias, t_ok, 2 * th + 1 < H, 2 * tw + 1 < W, offs_n, n_ok, RELU)


@triton.jit
def _store_pixel(o_ptr, acc, bias, t_ok, h_ok, w_ok, offs_n, n_ok, RELU: tl.constexpr):
    """Epilogue of one output pixel of each tile: + bias, ReLU, cast, masked store."""
    acc = acc + bias
    if RELU:
        acc = tl.maximum(acc, 0.0)
    ok = (t_ok & h_ok & w_ok)[:, None] & n_ok[None, :]
    tl.store(o_ptr[:, None] + offs_n[None, :], acc.to(o_ptr.dtype.element_ty), mask=ok)


@dataclass(frozen=True)
class WinogradConfig:
    """Launch parameters of :func:`_winograd_kernel` (see its constexpr comments)."""

    block_t: int  # 2x2 tiles per program (4 * block_t output pixels)
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int = 2  # software pipelining of the loop over the 4 transformed rows (1: none)
    tile_tw: int = 0  # 0: raster-order tiles; else 2-D blocks of (block_t // tile_tw) x tile_tw tiles

    def __post_init__(self) -> None:
        if self.tile_tw and self.block_t % self.tile_tw:
            raise ValueError(f"WinogradConfig: tile_tw={self.tile_tw} must divide block_t={self.block_t}")


def winograd_config(c_in: int, c_out: int, dtype: torch.dtype) -> WinogradConfig:
    """A starting point, not a measured optimum: 64 tiles (256 pixels) x 64 channels, 8 warps.

    Four fp32 accumulators of (64, 64) plus four per-row GEMM results are ~128 registers per thread at
    8 warps; :func:`winograd_candidates` lists the neighbours a GPU benchmark times.
    """
    return WinogradConfig(64, _pow2_clamp(c_out, 16, 64), _pow2_clamp(c_in, 16, 64), 8, 2)


def winograd_candidates(dtype: torch.dtype) -> list[WinogradConfig]:
    """Tile sizes for a GPU sweep (``benchmarks/layer_profile.py``): tiles per program x N, warps, 2-D blocks."""
    out = [winograd_config(64, 64, dtype)]
    for block_t, block_n, warps, tile_tw, stages in (
        (64, 64, 8, 0, (1, 2)), (64, 64, 8, 16, (1, 2)), (64, 32, 4, 0, (1, 2, 3)), (32, 64, 4, 0, (1, 2, 3)),
        (128, 32, 8, 0, (1, 2)), (128, 32, 8, 16, (1, 2)),
    ):  # fmt: skip  (3 stages of the 64 x 64 and 128 x 32 tiles need more than Hopper's 227 KB of shared memory)
        out.extend(WinogradConfig(block_t, block_n, 64, warps, st, tile_tw) for st in stages)
    return list(dict.fromkeys(out))


def conv3x3_winograd(
    x: torch.Tensor,
    u: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    relu: bool = True,
    config: WinogradConfig | None = None,
) -> torch.Tensor:
    """Body layer ``relu(conv3x3(x, g) + b)`` on NHWC activations, by Winograd F(2x2, 3x3).

    Args:
        x: (N, H, W, C_IN) activations in the storage dtype of ``u`` (any strides; NHWC-contiguous is fast).
        u: transformed weights (16, C_OUT, C_IN) from :func:`pack_winograd_weight`.
        b: fp32 bias (C_OUT,).
        out: optional (N, H, W, C_OUT) output with channel stride 1, not aliasing ``x``; allocated if None.
        relu: fuse the ReLU.
        config: block sizes; default :func:`winograd_config`.
    """
    name = "conv3x3_winograd"
    if u.dim() != 3 or u.shape[0] != 16 or not u.is_contiguous():
        raise ValueError(f"{name}: expected packed (16, C_OUT, C_IN) contiguous weights, got {tuple(u.shape)}")
    _check_common(name, x, u.view(u.shape[1], -1), b)
    if x.dim() != 4:
        raise ValueError(f"{name}: expected NHWC activations (N, H, W, C), got shape {tuple(x.shape)}")
    n, h, w_, c_in = x.shape
    c_out = u.shape[1]
    if u.shape[2] != c_in:
        raise ValueError(f"{name}: weights {tuple(u.shape)} do not match {c_in} input channels")
    if x.dtype != u.dtype:
        raise TypeError(f"{name}: activations are {x.dtype} but weights are {u.dtype}")
    out = _nhwc_output(name, x, out, n, h, w_, c_out, x.dtype, max(c_in, c_out))
    cfg = config or winograd_config(c_in, c_out, x.dtype)
    th, tw = triton.cdiv(h, 2), triton.cdiv(w_, 2)
    grid = (program_count(n, th, tw, cfg.block_t, cfg.tile_tw), triton.cdiv(c_out, cfg.block_n))
    _winograd_kernel[grid](
        x, u, b, out, n * th * tw, h, w_, th, tw, *x.stride(), out.stride(0), out.stride(1), out.stride(2),
        C_IN=c_in, C_OUT=c_out, RELU=relu, DOT_PRECISION="ieee" if u.dtype == torch.float32 else "tf32",
        BLOCK_T=cfg.block_t, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, TILE_TW=cfg.tile_tw,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out

"""Fused conv3x3 + bias + ReLU as an implicit GEMM on NHWC activations (VDSR's head and body layers).

One kernel, ``_conv3x3_kernel``, two modes:

* body (``HEAD=False``): ``C_IN -> C_OUT`` (64 -> 64 in VDSR), an implicit GEMM with
  M = output pixels, N = output channels, K = 9 * C_IN, on tensor cores (``tl.dot``);
* head (``HEAD=True``): ``1 -> C_OUT``, reads the caller's Y plane (any float dtype, any strides)
  directly and casts it in-kernel; K = 9 is too small for ``tl.dot`` (it needs K >= 16), so the head
  is nine rank-1 updates on the CUDA cores (18 FLOP per output value: memory-bound anyway).

Plain launchers: :func:`conv3x3_bias_relu` (body), :func:`conv3x3_head` (head); weights are packed once
by :func:`pack_conv3x3_weight`; block sizes come from :func:`conv3x3_config`, and
:func:`body_config_candidates` lists a small sweep (including the experimental ``SHARE_ROW`` body
mode) for a GPU benchmark to time through the launchers' ``config=`` argument.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .pixels import program_count, program_pixels

__all__ = [
    "ConvConfig",
    "conv3x3_config",
    "body_config_candidates",
    "swap_configs",
    "pack_conv3x3_weight",
    "conv3x3_bias_relu",
    "conv3x3_bias_relu_tail_partials",
    "pack_tail_partials_weight",
    "conv3x3_head",
]

STORAGE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8 = torch.float8_e4m3fn  # the FP8 engine's body storage (vdsr_fast.fp8): the TMA kernel only (conv3x3_tma)


@triton.jit
def e4m3_epilogue(acc, EXACT: tl.constexpr):
    """A non-negative fp32 tile for an e4m3 store: saturated at 448 and, with ``EXACT`` (Triton's CPU interpreter,
    whose fp32 -> fp8 cast is not round-to-nearest), rounded to the nearest e4m3 value (ties to even) in fp32 first,
    so the cast is exact. On a GPU the cast itself rounds that way (``cvt.rn.satfinite``)."""
    acc = tl.minimum(acc, 448.0)
    if EXACT:
        bits = acc.to(tl.uint32, bitcast=True)
        normal = ((bits + (0x7FFFF + ((bits >> 20) & 1))) & 0xFFF00000).to(tl.float32, bitcast=True)  # 3 mantissa bits
        sub = (acc + 16384.0) - 16384.0  # below 2**-6: multiples of 2**-9 (the fp32 ulp at 2**14)
        acc = tl.where(acc >= 0.015625, normal, sub)
    return acc


@triton.jit
def _tap_step(step, K_STEPS: tl.constexpr, BLOCK_K: tl.constexpr, oh, ow, m_ok, H, W):
    """Step ``step`` of the flat (tap, channel block) K loop: (tap, first channel k0, row and column offsets
    dh, dw, and which output pixels' tap pixel is inside the image)."""
    tap = step // K_STEPS
    k0 = (step % K_STEPS) * BLOCK_K
    dh = tap // 3 - 1
    dw = tap % 3 - 1
    ih = oh + dh
    iw = ow + dw
    return tap, k0, dh, dw, m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)


@triton.jit
def _conv3x3_kernel(
    x_ptr,  # body: activations (N, H, W, C_IN), any strides (NHWC-contiguous in the engine); head: Y plane (N, H, W)
    w_ptr,  # packed weights (C_OUT, 9 * C_IN), K contiguous, k = (kh * 3 + kw) * C_IN + ci; storage dtype
    b_ptr,  # bias (C_OUT,) fp32
    out_ptr,  # output (N, H, W, C_OUT), channel stride 1; its dtype is the storage dtype (unused with TAIL)
    tw_ptr,  # TAIL: the next layer's 64 -> 1 weights as (C_OUT, 16), column t = kh * 3 + kw (< 9), storage dtype
    z_ptr,  # TAIL: output (N * H * W, 9) fp32, contiguous: the tail's per-tap partial sums of each pixel
    M,  # number of output pixels, N * H * W
    H,
    W,
    stride_xn,  # input strides in elements (stride_xc is unused by the head)
    stride_xh,
    stride_xw,
    stride_xc,
    stride_on,  # output strides in elements (channel stride is 1)
    stride_oh,
    stride_ow,
    C_IN: tl.constexpr,  # input channels; constexpr so channel masks fold away when BLOCK_K divides C_IN
    C_OUT: tl.constexpr,  # output channels; constexpr for the same reason and for the weight row stride
    HEAD: tl.constexpr,  # True: 1 -> C_OUT head (rank-1 updates, Y plane input); False: tl.dot body
    RELU: tl.constexpr,  # apply ReLU in the epilogue (every VDSR layer except the tail)
    DOT_PRECISION: tl.constexpr,  # tl.dot input precision for fp32 storage ("ieee": no TF32 rounding)
    BLOCK_M: tl.constexpr,  # output pixels per program (GEMM M tile), flat over N*H*W in raster order
    BLOCK_N: tl.constexpr,  # output channels per program (GEMM N tile); 64 covers VDSR's C_OUT in one tile
    BLOCK_K: tl.constexpr,  # input channels per K step of one tap (GEMM K tile); >= 16 for tl.dot
    SHARE_ROW: tl.constexpr,  # body only, experimental: load each kernel row's tile once and derive its
    # three horizontal taps by a register gather (3x less L2 traffic; BLOCK_M - 2 outputs per program)
    TILE_W: tl.constexpr,  # 0: BLOCK_M consecutive pixels in raster order; else a 2-D tile of
    # (BLOCK_M // TILE_W) rows x TILE_W columns of one image, so the 9 taps' loads overlap in L1
    TAIL: tl.constexpr,  # body, BLOCK_N >= C_OUT: instead of the activation, store the tail's partial sums
    # z[p, t] = sum_co act[p, co] * tw[co, t] (act rounded to the storage dtype, as stored otherwise)
    SWAP: tl.constexpr,  # body, experimental: the GEMM turned around, channels as its M and the BLOCK_M
    # pixels as its N (acc^T = W @ X^T), so the pixel tile is the wide side of the tensor-core instruction
    EXACT_E4M3: tl.constexpr,  # an e4m3 output (the FP8 head) is rounded in fp32 first (the CPU interpreter)
):
    """out[n, h, w, co] = act(b[co] + sum_{kh, kw, ci} x[n, h + kh - 1, w + kw - 1, ci] * w[co, ci, kh, kw]).

    Layouts: activations NHWC (body input and every output; channel stride 1 on the output), the head's
    input is the (N, H, W) Y plane through its strides; weights packed K-major (C_OUT, 9 * C_IN), each
    output channel's filter contiguous in (kh, kw, ci) order; bias (C_OUT,).
    Dtypes: storage fp16 / bf16 / fp32 for activations and weights (fp32 uses IEEE dot, no TF32), bias
    fp32, the head's Y plane any float dtype (cast in-kernel); accumulation always fp32.
    Zero padding 1: taps outside the image are masked loads with ``other=0`` (no padded copy).
    Fused: bias, ReLU and the cast to the storage dtype in the epilogue; the head also fuses reading
    (and casting) the caller's NCHW Y plane, so no NHWC/dtype conversion pass exists.
    Program (pid_m, pid_n) computes BLOCK_M output pixels x BLOCK_N output channels: consecutive
    pixels in raster order, or with TILE_W a 2-D tile of one image; its K loop is one flat loop over
    (tap, channel block) so Triton can software-pipeline it. Each input pixel is thus fetched 9 times
    (once per tap): in raster order the taps of the rows above and below come from L2, in a 2-D tile
    most of them overlap the tile's own rows.
    SWAP (experimental, off by default): the same K loop on transposed tiles, ``acc^T (BLOCK_N x BLOCK_M) +=
    W (BLOCK_N x BLOCK_K) @ X^T (BLOCK_K x BLOCK_M)``: on Hopper one warpgroup's wgmma is then m64 x
    BLOCK_M (the pixels) instead of BLOCK_M / warpgroups x 64, fewer operand bytes per multiply-add
    (csrc/wgmma_strip_body.cuh does the same in CUDA); ``acc = acc^T^T`` before the usual epilogue.
    SHARE_ROW (experimental, off by default): per kernel row kh, one (BLOCK_M, BLOCK_K) tile of pixels
    m - 1 .. m + BLOCK_M - 2 is loaded and the three horizontal taps are register gathers of it
    (``tl.gather``), so each pixel is fetched 3 times; a program then writes BLOCK_M - 2 pixels.
    TAIL (the last body layer with the tail fused into it): the 64 -> 1 tail conv is linear, so
    ``tail(p) = sum_t z[p + offset_t, t]`` with ``z[q, t] = sum_c wL[c, t] * act[q, c]``: one more small
    ``tl.dot`` (BLOCK_M x C_OUT x 16) per program writes 9 fp32 per pixel (36 bytes) instead of the
    activation (128 bytes in fp16), and :func:`~vdsr_fast.kernels.triton.tail.tail_gather_residual` sums
    the 9 neighbours' partials: the last activation never goes through memory.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    OUT_M: tl.constexpr = BLOCK_M - 2 if SHARE_ROW else BLOCK_M  # SHARE_ROW: first and last pixels are halo
    img, oh, ow, m_ok = program_pixels(pid_m, M, H, W, BLOCK_M, TILE_W, OUT_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_OUT
    # 64-bit image offset: a batch of 4K frames has more than 2**31 activation elements.
    x_img = x_ptr + img.to(tl.int64) * stride_xn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if HEAD:
        for tap in tl.static_range(9):
            ih = oh + (tap // 3 - 1)
            iw = ow + (tap % 3 - 1)
            ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_img + ih * stride_xh + iw * stride_xw, mask=ok, other=0.0).to(tl.float32)
            wv = tl.load(w_ptr + offs_n * 9 + tap, mask=n_ok, other=0.0).to(tl.float32)
            acc += a[:, None] * wv[None, :]
    elif SHARE_ROW:
        K_STEPS_R: tl.constexpr = (C_IN + BLOCK_K - 1) // BLOCK_K  # channel blocks per kernel row
        offs_k = tl.arange(0, BLOCK_K)
        # Loaded pixel j of the tile is flat pixel pid_m * OUT_M - 1 + j; output i needs, for tap column
        # kw, loaded pixel j = i + kw (same image row, or masked below).
        hw = H * W
        p = pid_m * OUT_M - 1 + rows
        p_ok = (p >= 0) & (p < M)
        p_img = p // hw
        p_rem = p - p_img * hw
        ph = p_rem // W
        pw = p_rem - ph * W
        l_base = (x_ptr + p_img.to(tl.int64) * stride_xn + ph * stride_xh + pw * stride_xw)[:, None]
        l_base = l_base + offs_k[None, :] * stride_xc
        w_base = w_ptr + offs_n[None, :] * (9 * C_IN) + offs_k[:, None]
        for step in range(3 * K_STEPS_R):
            kh = step // K_STEPS_R
            k0 = (step % K_STEPS_R) * BLOCK_K
            lh = ph + (kh - 1)
            l_mask = (p_ok & (lh >= 0) & (lh < H))[:, None]
            if C_IN % BLOCK_K != 0:
                l_mask = l_mask & ((k0 + offs_k) < C_IN)[None, :]
            tile = tl.load(l_base + ((kh - 1) * stride_xh + k0 * stride_xc), mask=l_mask, other=0.0)
            for kw in tl.static_range(3):
                src = tl.broadcast_to(tl.minimum(rows + kw, BLOCK_M - 1)[:, None], (BLOCK_M, BLOCK_K))
                iw = ow + (kw - 1)
                a = tl.where(((iw >= 0) & (iw < W))[:, None], tl.gather(tile, src, axis=0), 0.0)
                w_tile = w_base + ((kh * 3 + kw) * C_IN + k0)
                if C_IN % BLOCK_K == 0 and C_OUT % BLOCK_N == 0:
                    b = tl.load(w_tile)
                else:
                    b = tl.load(w_tile, mask=((k0 + offs_k) < C_IN)[:, None] & n_ok[None, :], other=0.0)
                acc = tl.dot(a.to(tile.dtype), b, acc, input_precision=DOT_PRECISION)
    elif SWAP:
        K_STEPS_S: tl.constexpr = (C_IN + BLOCK_K - 1) // BLOCK_K
        offs_k = tl.arange(0, BLOCK_K)
        xt_base = (x_img + oh * stride_xh + ow * stride_xw)[None, :] + offs_k[:, None] * stride_xc
        wt_base = w_ptr + offs_n[:, None] * (9 * C_IN) + offs_k[None, :]
        acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for step in range(9 * K_STEPS_S):
            tap, k0, dh, dw, ok = _tap_step(step, K_STEPS_S, BLOCK_K, oh, ow, m_ok, H, W)
            x_mask = ok[None, :]
            if C_IN % BLOCK_K != 0:
                x_mask = x_mask & ((k0 + offs_k) < C_IN)[:, None]
            xt = tl.load(xt_base + (dh * stride_xh + dw * stride_xw + k0 * stride_xc), mask=x_mask, other=0.0)
            if C_IN % BLOCK_K == 0 and C_OUT % BLOCK_N == 0:
                wt = tl.load(wt_base + (tap * C_IN + k0))
            else:
                wt = tl.load(wt_base + (tap * C_IN + k0), mask=n_ok[:, None] & ((k0 + offs_k) < C_IN)[None, :], other=0.0)
            acc_t = tl.dot(wt, xt, acc_t, input_precision=DOT_PRECISION)
        acc = tl.trans(acc_t)
    else:
        K_STEPS: tl.constexpr = (C_IN + BLOCK_K - 1) // BLOCK_K  # channel blocks per tap
        EVEN_K: tl.constexpr = C_IN % BLOCK_K == 0  # no channel mask needed (VDSR: 64 % 64)
        EVEN_N: tl.constexpr = C_OUT % BLOCK_N == 0  # no output-channel mask on the weights
        offs_k = tl.arange(0, BLOCK_K)
        # Loop-invariant address tiles: centre pixel x channel block 0, and weight rows of tap 0.
        a_base = (x_img + oh * stride_xh + ow * stride_xw)[:, None] + offs_k[None, :] * stride_xc
        w_base = w_ptr + offs_n[None, :] * (9 * C_IN) + offs_k[:, None]
        for step in range(9 * K_STEPS):
            tap, k0, dh, dw, ok = _tap_step(step, K_STEPS, BLOCK_K, oh, ow, m_ok, H, W)
            a_mask = ok[:, None]
            if not EVEN_K:
                a_mask = a_mask & ((k0 + offs_k) < C_IN)[None, :]
            a = tl.load(a_base + (dh * stride_xh + dw * stride_xw + k0 * stride_xc), mask=a_mask, other=0.0)
            w_tile = w_base + (tap * C_IN + k0)
            if EVEN_K and EVEN_N:
                b = tl.load(w_tile)
            else:
                b = tl.load(w_tile, mask=((k0 + offs_k) < C_IN)[:, None] & n_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    if TAIL:
        offs_t = tl.arange(0, 16)
        tw = tl.load(tw_ptr + offs_n[:, None] * 16 + offs_t[None, :], mask=n_ok[:, None], other=0.0)
        z = tl.dot(acc.to(tw_ptr.dtype.element_ty), tw, input_precision=DOT_PRECISION)
        pix = (img.to(tl.int64) * H + oh) * W + ow
        tl.store(z_ptr + pix[:, None] * 9 + offs_t[None, :], z, mask=m_ok[:, None] & (offs_t < 9)[None, :])
    else:
        if out_ptr.dtype.element_ty == tl.float8e4nv:  # the FP8 engine's head (weights pre-divided by the scale)
            acc = e4m3_epilogue(acc, EXACT_E4M3)
        o_pix = img.to(tl.int64) * stride_on + oh * stride_oh + ow * stride_ow
        out_ptrs = out_ptr + o_pix[:, None] + offs_n[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def interpreted() -> bool:
    """True when the kernels were built for Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return type(_conv3x3_kernel).__name__ == "InterpretedFunction"


@dataclass(frozen=True)
class ConvConfig:
    """Launch parameters of :func:`_conv3x3_kernel` (see its constexpr comments)."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    share_row: bool = False  # experimental SHARE_ROW body mode (see the kernel); not the default
    tile_w: int = 0  # 0: raster-order pixel tiles; else 2-D tiles (block_m // tile_w) x tile_w (see the kernel)
    swap: bool = False  # experimental SWAP body mode: channels as the GEMM's M (see the kernel); not the default

    def __post_init__(self) -> None:
        if self.tile_w and (self.share_row or self.block_m % self.tile_w):
            raise ValueError(f"ConvConfig: tile_w={self.tile_w} needs block_m divisible by it and no share_row")
        if self.swap and self.share_row:
            raise ValueError("ConvConfig: swap and share_row are two different body modes")


# Hopper-oriented defaults (the same tile Inductor's conv template picks for VDSR's 64->64 layer):
# 128 pixels x 64 channels x 64 K per step. Change them here, or pass ``config=`` to a launcher.
BODY_BLOCK_M = 128
BODY_MAX_BLOCK_N = 64
BODY_MAX_BLOCK_K = 64
BODY_NUM_WARPS = 8
# 3 stages: 3 x (16 KB A + 8 KB B) = 72 KB of shared memory per CTA in fp16/bf16. On an H200 at 1080p
# (benchmarks/layer_profile.py, two runs) 3 stages took 0.479 / 0.483 ms per layer and 4 took 0.485 / 0.494.
BODY_NUM_STAGES_16BIT = 3
BODY_NUM_STAGES_FP32 = 2  # fp32 tiles are twice as large
HEAD_BLOCK_M = 128
HEAD_NUM_WARPS = 4


def _pow2_clamp(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(n)))


def conv3x3_config(c_in: int, c_out: int, dtype: torch.dtype, head: bool = False) -> ConvConfig:
    """Block sizes for one layer: depends on the channel counts (tile N/K), the dtype (stages), the mode."""
    block_n = _pow2_clamp(c_out, 16, BODY_MAX_BLOCK_N)
    if head:
        return ConvConfig(HEAD_BLOCK_M, block_n, 16, HEAD_NUM_WARPS, 1)
    block_k = _pow2_clamp(c_in, 16, BODY_MAX_BLOCK_K)  # tl.dot needs K >= 16: small C_IN is zero-masked
    stages = BODY_NUM_STAGES_FP32 if dtype == torch.float32 else BODY_NUM_STAGES_16BIT
    warps = BODY_NUM_WARPS if BODY_BLOCK_M * block_n >= 128 * 64 else 4
    return ConvConfig(BODY_BLOCK_M, block_n, block_k, warps, stages)


def body_config_candidates(dtype: torch.dtype) -> list[ConvConfig]:
    """A small sweep around the default body tile, for a GPU benchmark to time (``config=`` of the launcher).

    M tile 64/128/256 pixels, N = K = 64 (one tile covers VDSR's 64 channels), 4 or 8 warps, 2-4 stages
    (fp32 tiles are twice as large, so at most 3 stages there); plus the experimental SHARE_ROW mode,
    whose stages hold one A tile and three weight tiles (40 KB in fp16 at 128 x 64), so fewer stages;
    and 2-D pixel tiles (8 x 16, 4 x 32, 8 x 32, 4 x 16).
    Every candidate fits Hopper's 227 KB of shared memory per CTA.
    """
    fp32 = dtype == torch.float32
    out = [conv3x3_config(64, 64, dtype)]
    for block_m, warps in ((64, 4), (128, 4), (128, 8), (256, 8)):
        for st in (2, 3) if fp32 else (3, 4):
            if not (block_m == 256 and st == 3 and fp32):  # 288 KB
                out.append(ConvConfig(block_m, 64, 64, warps, st))
    for block_m, warps, st in ((128, 8, 2),) if fp32 else ((128, 8, 2), (128, 8, 3), (128, 4, 3), (256, 8, 2)):
        out.append(ConvConfig(block_m, 64, 64, warps, st, share_row=True))
    # 2-D pixel tiles (rows x columns), the raster tiles' best warps/stages on an H200
    for block_m, tile_w, warps in ((128, 16, 8), (128, 32, 8), (256, 32, 8), (64, 16, 4)):
        out.append(ConvConfig(block_m, 64, 64, warps, 2 if fp32 else 3, tile_w=tile_w))
    # the experimental SWAP mode (channels as M): pixel tiles of 128 or 256, raster or 2-D
    out += swap_configs(dtype)
    return list(dict.fromkeys(out))


def swap_configs(dtype: torch.dtype) -> list[ConvConfig]:
    """The SWAP mode's candidates, its default (what ``TritonBackend`` tunes and the benchmarks time) first."""
    st = 2 if dtype == torch.float32 else 3
    return [ConvConfig(128, 64, 64, 4, st, swap=True), ConvConfig(256, 64, 64, 8, st, swap=True),
            ConvConfig(256, 64, 64, 4, 2, swap=True), ConvConfig(128, 64, 64, 4, st, tile_w=32, swap=True)]  # fmt: skip


def pack_conv3x3_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(C_OUT, C_IN, 3, 3) -> (C_OUT, 9 * C_IN) in ``dtype``, K contiguous: k = (kh * 3 + kw) * C_IN + ci."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"pack_conv3x3_weight: expected a (C_OUT, C_IN, 3, 3) weight, got {tuple(weight.shape)}")
    c_out, c_in = weight.shape[:2]
    return weight.detach().permute(0, 2, 3, 1).reshape(c_out, 9 * c_in).to(dtype).contiguous()


def _check_common(name: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> None:
    for t, what in ((w, "weight"), (b, "bias")):
        if t.device != x.device:
            raise ValueError(f"{name}: {what} is on {t.device} but the input is on {x.device}")
    if w.dim() != 2 or not w.is_contiguous():
        raise ValueError(f"{name}: expected packed (C_OUT, 9*C_IN) contiguous weights, got {tuple(w.shape)}")
    if w.dtype not in (*STORAGE_DTYPES, FP8):
        raise TypeError(f"{name}: weight dtype {w.dtype} is not a storage dtype (fp16, bf16, fp32, float8_e4m3fn)")
    if b.shape != (w.shape[0],) or b.dtype != torch.float32 or not b.is_contiguous():
        raise ValueError(
            f"{name}: expected a contiguous fp32 bias of shape ({w.shape[0]},), got {b.dtype} {tuple(b.shape)}"
        )


def _check_body(name: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, fp8: bool = False) -> tuple[int, int, int, int, int]:
    """A body layer's inputs (NHWC activations, packed (C_OUT, 9*C_IN) weights, bias) checked against each
    other; returns (N, H, W, C_IN, C_OUT). ``fp8``: the launcher takes float8_e4m3fn layers (conv3x3_tma)."""
    _check_common(name, x, w, b)
    if x.dim() != 4:
        raise ValueError(f"{name}: expected NHWC activations (N, H, W, C), got shape {tuple(x.shape)}")
    n, h, w_, c_in = x.shape
    c_out = w.shape[0]
    if w.shape[1] != 9 * c_in:
        raise ValueError(
            f"{name}: weights {tuple(w.shape)} do not match {c_in} input channels (expected ({c_out}, {9 * c_in}))"
        )
    if x.dtype != w.dtype:
        raise TypeError(f"{name}: activations are {x.dtype} but weights are {w.dtype}")
    if x.dtype == FP8 and not fp8:
        raise TypeError(f"{name}: float8_e4m3fn body layers run on conv3x3_tma (its epilogue applies the 8-bit scales)")
    return n, h, w_, c_in, c_out


def _check_out(name: str, out: torch.Tensor, x: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if out.shape != shape or out.dtype != dtype or out.device != x.device:
        raise ValueError(
            f"{name}: out must be {dtype} {shape} on {x.device}, got {out.dtype} {tuple(out.shape)} on {out.device}"
        )
    if out.stride(-1) != 1:
        raise ValueError(f"{name}: out must have channel stride 1 (NHWC), got strides {out.stride()}")
    # A 3x3 conv cannot run in place: programs read pixels that neighbouring programs write.
    if x.untyped_storage().data_ptr() == out.untyped_storage().data_ptr():
        raise ValueError(f"{name}: out must not alias the input")


def _check_size(name: str, n: int, h: int, w: int, c: int) -> None:
    # In-image offsets are 32-bit in the kernel (the image offset is 64-bit).
    if h * w * c >= 2**31:
        raise ValueError(f"{name}: one image of {h}x{w}x{c} elements is too large for 32-bit in-image offsets")
    if n * h * w >= 2**31:
        raise ValueError(f"{name}: {n}x{h}x{w} pixels is too many for one launch")


def _nhwc_output(name, x, out, n, h, w, c_out, dtype, size_c):
    """The launch's size limits (``_check_size`` with ``size_c`` channels), then ``out`` checked, or
    allocated when None: (N, H, W, C_OUT) NHWC in ``dtype`` on ``x``'s device."""
    _check_size(name, n, h, w, size_c)
    if out is None:
        return torch.empty((n, h, w, c_out), device=x.device, dtype=dtype)
    _check_out(name, out, x, (n, h, w, c_out), dtype)
    return out


def _launch(x, strides, w, b, out, n, h, w_, c_in, c_out, head, relu, config, tail=None):
    """``tail``: (tw, z) for the TAIL epilogue (z is then written instead of ``out``, which may be None)."""
    m = n * h * w_
    share_row = config.share_row and not head
    if share_row and m + config.block_m >= 2**31:  # its programs step by block_m - 2: the last one's rows wrap int32
        raise ValueError(f"conv3x3: {n}x{h}x{w_} pixels is too many for one share_row launch (block_m {config.block_m})")
    tiles = program_count(n, h, w_, config.block_m, config.tile_w, config.block_m - 2 if share_row else None)
    grid = (tiles, triton.cdiv(c_out, config.block_n))
    tw, z = tail if tail is not None else (w, b)  # unused placeholders without TAIL
    out_strides = out.stride()[:3] if out is not None else (0, 0, 0)
    _conv3x3_kernel[grid](
        x, w, b, out if out is not None else z, tw, z, m, h, w_, *strides, *out_strides,
        C_IN=c_in, C_OUT=c_out, HEAD=head, RELU=relu,
        DOT_PRECISION="ieee" if w.dtype == torch.float32 else "tf32",
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, SHARE_ROW=share_row,
        TILE_W=config.tile_w, TAIL=tail is not None, SWAP=config.swap and not head, EXACT_E4M3=interpreted(),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return out if tail is None else z


def conv3x3_bias_relu(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    relu: bool = True,
    config: ConvConfig | None = None,
) -> torch.Tensor:
    """Body layer: ``relu(conv3x3(x, w) + b)`` on NHWC activations.

    Args:
        x: (N, H, W, C_IN) activations in the storage dtype of ``w`` (any strides; NHWC-contiguous is fast).
        w: packed weights (C_OUT, 9 * C_IN) from :func:`pack_conv3x3_weight`.
        b: fp32 bias (C_OUT,).
        out: optional (N, H, W, C_OUT) output with channel stride 1, not aliasing ``x``; allocated if None.
        relu: fuse the ReLU (True for every VDSR body layer).
        config: block sizes; default :func:`conv3x3_config`.
    """
    name = "conv3x3_bias_relu"
    n, h, w_, c_in, c_out = _check_body(name, x, w, b)
    out = _nhwc_output(name, x, out, n, h, w_, c_out, x.dtype, max(c_in, c_out))
    config = config or conv3x3_config(c_in, c_out, x.dtype)
    return _launch(x, x.stride(), w, b, out, n, h, w_, c_in, c_out, False, relu, config)


def pack_tail_partials_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(1, C, 3, 3) tail weight -> (C, 16) in ``dtype``: column t = kh * 3 + kw holds ``weight[0, :, kh, kw]``,
    columns 9 .. 15 zero (``tl.dot`` needs N >= 16)."""
    if weight.dim() != 4 or weight.shape[0] != 1 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"pack_tail_partials_weight: expected a (1, C, 3, 3) weight, got {tuple(weight.shape)}")
    c = weight.shape[1]
    packed = torch.zeros(c, 16, device=weight.device, dtype=dtype)
    packed[:, :9] = weight.detach()[0].reshape(c, 9).to(dtype)
    return packed


def conv3x3_bias_relu_tail_partials(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    tw: torch.Tensor,
    z: torch.Tensor | None = None,
    *,
    config: ConvConfig | None = None,
) -> torch.Tensor:
    """The last body layer with the tail's first half fused: ``z[p, t] = sum_c tw[c, t] * relu(conv3x3(x, w) + b)[p, c]``.

    The activation itself is rounded to the storage dtype (as :func:`conv3x3_bias_relu` would store it) and
    never written. :func:`~vdsr_fast.kernels.triton.tail.tail_gather_residual` turns ``z`` into the output.

    Args:
        x, w, b: as :func:`conv3x3_bias_relu`.
        tw: (C_OUT, 16) from :func:`pack_tail_partials_weight`, in the storage dtype.
        z: optional contiguous fp32 (N * H * W, 9) output; allocated if None.
        config: block sizes (``block_n`` must cover C_OUT: one program holds a pixel's every channel);
            default :func:`conv3x3_config`.
    """
    name = "conv3x3_bias_relu_tail_partials"
    n, h, w_, c_in, c_out, z = _check_tail_partials(name, x, w, b, tw, z)
    config = config or conv3x3_config(c_in, c_out, x.dtype)
    if config.block_n < c_out or config.share_row:
        raise ValueError(f"{name}: the config must hold all {c_out} channels in one tile (block_n) and not share_row")
    return _launch(x, x.stride(), w, b, None, n, h, w_, c_in, c_out, False, True, config, tail=(tw, z))


def _check_tail_partials(name, x, w, b, tw, z, fp8=False):
    """A TAIL launch's inputs (a body layer's, the (C_OUT, 16) tail weights, ``z`` checked or allocated as
    fp32 (N * H * W, 9)); returns (N, H, W, C_IN, C_OUT, z). ``fp8``: the launcher takes float8_e4m3fn layers."""
    n, h, w_, c_in, c_out = _check_body(name, x, w, b, fp8)
    t_dtype = torch.float16 if w.dtype == FP8 else w.dtype  # FP8: the last activation is rounded to fp16
    if tw.shape != (c_out, 16) or tw.dtype != t_dtype or not tw.is_contiguous() or tw.device != x.device:
        raise ValueError(f"{name}: expected contiguous tail weights ({c_out}, 16) {t_dtype}, got {tw.dtype} {tuple(tw.shape)}")
    _check_size(name, n, h, w_, max(c_in, c_out))
    if z is None:
        z = torch.empty((n * h * w_, 9), device=x.device, dtype=torch.float32)
    elif z.shape != (n * h * w_, 9) or z.dtype != torch.float32 or not z.is_contiguous() or z.device != x.device:
        raise ValueError(f"{name}: z must be a contiguous fp32 ({n * h * w_}, 9) tensor on {x.device}")
    return n, h, w_, c_in, c_out, z


def conv3x3_head(
    y: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    config: ConvConfig | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Head layer: ``relu(conv3x3(y, w) + b)`` from the Y plane straight to NHWC activations.

    Args:
        y: the Y plane, (N, 1, H, W) or (N, H, W), any float dtype and strides (cast to fp32 in-kernel).
        w: packed weights (C_OUT, 9) from :func:`pack_conv3x3_weight`.
        b: fp32 bias (C_OUT,).
        out: optional (N, H, W, C_OUT) output with channel stride 1; allocated if None.
        config: block sizes; default :func:`conv3x3_config` with ``head=True``.
        out_dtype: the output's dtype, default ``w``'s; ``torch.float8_e4m3fn`` (the FP8 engine, fp32 weights
            divided by the activation scale) rounds to nearest e4m3, saturating at 448.
    """
    name = "conv3x3_head"
    _check_common(name, y, w, b)
    if y.dim() == 4 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 3:
        raise ValueError(f"{name}: expected a Y plane (N, 1, H, W) or (N, H, W), got shape {tuple(y.shape)}")
    if not y.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point Y plane, got {y.dtype}")
    if w.shape[1] != 9:
        raise ValueError(f"{name}: expected head weights (C_OUT, 9), got {tuple(w.shape)}")
    n, h, w_ = y.shape
    c_out = w.shape[0]
    out_dtype = out_dtype or w.dtype
    if out_dtype not in (*STORAGE_DTYPES, FP8):
        raise TypeError(f"{name}: out_dtype {out_dtype} is not a storage dtype (fp16, bf16, fp32, float8_e4m3fn)")
    out = _nhwc_output(name, y, out, n, h, w_, c_out, out_dtype, c_out)
    config = config or conv3x3_config(1, c_out, w.dtype, head=True)
    return _launch(y, (*y.stride(), 0), w, b, out, n, h, w_, 1, c_out, True, True, config)

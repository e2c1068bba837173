"""The colour pipeline of :func:`vdsr_fast.upscale` around the network, fused into two kernels.

``upscale()`` of an RGB frame is, per output window (``vdsr_fast.api._run_window``): input pixels to float,
RGB -> YCbCr (MATLAB ``rgb2ycbcr``), MATLAB bicubic upscale of the three planes, the network on Y, YCbCr ->
RGB, clamp and rounding to the input's dtype. In PyTorch that is ~40 small elementwise and gather kernels,
each reading and writing whole float planes: ~0.5 ms at 960x540 -> 1080p on an H200 (benchmarks/results run 4:
``upscale()`` 8.91 ms, the network alone 8.37). Here the same arithmetic, in the same order, is two kernels:

* :func:`upscale_planes`: reads the LR window once (any dtype of the public API but float64, any strides),
  converts each of a pixel's 4 x 4 bicubic taps to YCbCr and resizes them separably (height first, the taps
  summed in MATLAB's order, as :func:`vdsr_fast.imaging._apply_taps` does), and writes the network's input Y
  plane and the upscaled CbCr planes in fp32;
* :func:`finish_frame`: reads the network's output Y and the CbCr planes of the output tile, converts to RGB,
  clamps, rounds (uint8 / uint16: half up, as MATLAB's ``im2uint8``) and stores straight into the caller's
  output tensor (any strides: NCHW or NHWC).

Every product and sum is rounded to fp32 as PyTorch rounds it: the kernels are compiled without
multiply-add contraction (``enable_fp_fusion=False``), the constants are the fp32 values PyTorch's scalar
operations use, and 8/16-bit inputs are scaled by the fp32 reciprocal of 255 / 65535, as PyTorch's CUDA
division by a Python scalar does (on the CPU PyTorch divides: at most one rounding apart). So on a GPU the
fused pipeline computes the PyTorch pipeline's bits; the tests check it against the CPU one within that
rounding.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ...imaging import _M_FWD, _M_INV, _OFF, on_this_stream

__all__ = ["upscale_planes", "finish_frame", "window_taps"]

_BLOCK = 256
_NO_FMA = {"enable_fp_fusion": False}  # launch option: keep every product and sum rounded to fp32
_LEVELS = {torch.uint8: 255, torch.uint16: 65535}  # the integer pixel dtypes and their full scale


@functools.cache
def _consts(device: torch.device, in_dtype: torch.dtype | None) -> torch.Tensor:
    """fp32 constants: [0:9] rgb2ycbcr rows, [9:12] offsets, [12:21] the inverse rows, [21] the input scale.
    Cached per device: a copy from host memory would wait for the stream (upscale() makes no host sync)."""
    scale = _LEVELS.get(in_dtype)
    inv = (torch.tensor(1.0) / torch.tensor(float(scale))).item() if scale else 1.0  # fp32 1 / 255, as PyTorch's CUDA div
    vals = [v for row in _M_FWD for v in row] + list(_OFF) + [v for row in _M_INV for v in row] + [inv]
    return torch.tensor(vals, dtype=torch.float32).to(device)


_TAPS: dict = {}


def window_taps(win, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``win.taps(device, torch.float32)`` (a :class:`vdsr_fast.tiling.Window`) as :func:`upscale_planes` takes
    them, contiguous fp32 weights and int32 indices, made once per window geometry and device: a video's
    frames reuse them instead of slicing, shifting and converting the tables again (3 small launches an axis).
    They are made on the host and copied (a copy from pageable memory is complete when ``.to`` returns): made with
    launches on one stream, a frame on another stream could read them before those launches ran."""
    key = (win.in_len, win.scale, win.net, win.lr, str(device))
    hit = _TAPS.get(key)
    if hit is None:
        w, idx = win.taps(torch.device("cpu"), torch.float32)
        hit = (w.contiguous().to(device), idx.to(torch.int32).contiguous().to(device))
        if len(_TAPS) > 256:
            _TAPS.clear()
        _TAPS[key] = hit
    return on_this_stream(hit)


@triton.jit
def _to_ycbcr(r, g, b, k_ptr):
    """MATLAB rgb2ycbcr of fp32 values, in vdsr_fast.imaging.rgb_to_ycbcr's order: (r m0 + g m1) + b m2, + offset."""
    y = (r * tl.load(k_ptr + 0) + g * tl.load(k_ptr + 1)) + b * tl.load(k_ptr + 2)
    cb = (r * tl.load(k_ptr + 3) + g * tl.load(k_ptr + 4)) + b * tl.load(k_ptr + 5)
    cr = (r * tl.load(k_ptr + 6) + g * tl.load(k_ptr + 7)) + b * tl.load(k_ptr + 8)
    return y + tl.load(k_ptr + 9), cb + tl.load(k_ptr + 10), cr + tl.load(k_ptr + 11)


@triton.jit
def _upscale_kernel(
    x_ptr,  # LR window (N, C, h, w), any strides, uint8 / uint16 / float16 / bfloat16 / float32
    wh_ptr,  # (P, OH) fp32: row i's tap weights, column p
    ih_ptr,  # (P, OH) int32: row i's LR rows (relative to the window)
    ww_ptr,  # (P, OW) fp32
    iw_ptr,  # (P, OW) int32
    k_ptr,  # _consts
    y_ptr,  # out: Y (N, 1, OH, OW) fp32, contiguous
    c_ptr,  # out: Cb, Cr (N, 2, OH, OW) fp32, contiguous (COLOR only)
    NPIX,  # N * OH * OW
    OH,
    OW,
    sxn,
    sxc,
    sxh,
    sxw,
    P: tl.constexpr,  # bicubic taps per output pixel and axis (4 when upscaling)
    COLOR: tl.constexpr,  # RGB in (Y, Cb, Cr out); else one plane, resized as it is
    SCALED: tl.constexpr,  # 8/16-bit input: multiply by the fp32 reciprocal k[21]
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < NPIX
    plane = OH * OW
    n = offs // plane
    rem = offs - n * plane
    i = (rem // OW).to(tl.int32)
    j = (rem - (rem // OW) * OW).to(tl.int32)
    x_img = x_ptr + n * sxn
    inv = tl.load(k_ptr + 21)
    for q in tl.static_range(P):  # the width pass: out = sum_q ww[q] * t_q, in order
        col = tl.load(iw_ptr + q * OW + j, mask=ok, other=0).to(tl.int64)
        wq = tl.load(ww_ptr + q * OW + j, mask=ok, other=0.0)
        for p in tl.static_range(P):  # the height pass of column col: t_q = sum_p wh[p] * pixel(row_p, col)
            row = tl.load(ih_ptr + p * OH + i, mask=ok, other=0).to(tl.int64)
            wp = tl.load(wh_ptr + p * OH + i, mask=ok, other=0.0)
            src = x_img + row * sxh + col * sxw
            v0 = tl.load(src, mask=ok, other=0).to(tl.float32)
            if SCALED:
                v0 = v0 * inv
            if COLOR:
                v1 = tl.load(src + sxc, mask=ok, other=0).to(tl.float32)
                v2 = tl.load(src + 2 * sxc, mask=ok, other=0).to(tl.float32)
                if SCALED:
                    v1 = v1 * inv
                    v2 = v2 * inv
                v0, v1, v2 = _to_ycbcr(v0, v1, v2, k_ptr)
                if p == 0:
                    t1 = v1 * wp
                    t2 = v2 * wp
                else:
                    t1 = t1 + v1 * wp
                    t2 = t2 + v2 * wp
            if p == 0:
                t0 = v0 * wp
            else:
                t0 = t0 + v0 * wp
        if q == 0:
            o0 = t0 * wq
            if COLOR:
                o1 = t1 * wq
                o2 = t2 * wq
        else:
            o0 = o0 + t0 * wq
            if COLOR:
                o1 = o1 + t1 * wq
                o2 = o2 + t2 * wq
    tl.store(y_ptr + offs, o0, mask=ok)
    if COLOR:
        c_img = c_ptr + n * (2 * plane) + rem
        tl.store(c_img, o1, mask=ok)
        tl.store(c_img + plane, o2, mask=ok)


@triton.jit
def _finish(v, LEVELS: tl.constexpr):
    """vdsr_fast.api._from_float: clamp to [0, 1] (NaN stays NaN); LEVELS > 0: floor(v * LEVELS + 0.5)."""
    v = tl.where(v < 0.0, 0.0, v)
    v = tl.where(v > 1.0, 1.0, v)
    if LEVELS > 0:
        v = tl.floor(v * LEVELS + 0.5)
    return v


@triton.jit
def _finish_kernel(
    y_ptr,  # network output Y of the tile (N, 1, TH, TW), any strides, fp32
    c_ptr,  # Cb, Cr of the tile (N, 2, TH, TW), any strides, fp32 (COLOR only)
    k_ptr,  # _consts
    o_ptr,  # the output tile (N, 3 or 1, TH, TW), any strides, the output dtype
    NPIX,
    TW,
    TPLANE,  # TH * TW
    syn,
    syh,
    syw,
    scn,
    scc,
    sch,
    scw,
    son,
    soc,
    soh,
    sow,
    COLOR: tl.constexpr,
    LEVELS: tl.constexpr,  # 255 (uint8), 65535 (uint16) or 0 (float output)
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < NPIX
    n = offs // TPLANE
    rem = offs - n * TPLANE
    i = rem // TW
    j = rem - i * TW
    y = tl.load(y_ptr + n * syn + i * syh + j * syw, mask=ok, other=0.0)
    dst = o_ptr + n * son + i * soh + j * sow
    if COLOR:  # vdsr_fast.imaging.ycbcr_to_rgb: subtract the offsets, then (p0 m0 + p1 m1) + p2 m2
        c = c_ptr + n * scn + i * sch + j * scw
        p0 = y - tl.load(k_ptr + 9)
        p1 = tl.load(c, mask=ok, other=0.0) - tl.load(k_ptr + 10)
        p2 = tl.load(c + scc, mask=ok, other=0.0) - tl.load(k_ptr + 11)
        for ch in tl.static_range(3):
            v = (p0 * tl.load(k_ptr + 12 + 3 * ch) + p1 * tl.load(k_ptr + 13 + 3 * ch)) + p2 * tl.load(k_ptr + 14 + 3 * ch)
            v = _finish(v, LEVELS)
            tl.store(dst + ch * soc, v.to(o_ptr.dtype.element_ty), mask=ok)
    else:
        tl.store(dst, _finish(y, LEVELS).to(o_ptr.dtype.element_ty), mask=ok)


def _grid(npix: int) -> tuple[int]:
    return (triton.cdiv(npix, _BLOCK),)


def upscale_planes(
    x: torch.Tensor, wh: torch.Tensor, ih: torch.Tensor, ww: torch.Tensor, iw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RGB or one-plane LR window ``x`` (N, 3 | 1, h, w) -> (Y (N, 1, OH, OW) fp32, CbCr (N, 2, OH, OW) fp32 or None).

    ``wh``/``ih`` (P, OH) and ``ww``/``iw`` (P, OW): the bicubic tap weights (fp32) and LR indices (relative to
    the window) of the output rows and columns, as :class:`vdsr_fast.tiling.Window` slices MATLAB's table.
    """
    n, c, _, _ = x.shape
    p, oh = wh.shape
    ow = ww.shape[1]
    color = c == 3
    y = torch.empty((n, 1, oh, ow), dtype=torch.float32, device=x.device)
    cc = torch.empty((n, 2, oh, ow), dtype=torch.float32, device=x.device) if color else None
    npix = n * oh * ow
    k = _consts(x.device, x.dtype if x.dtype in _LEVELS else None)
    _upscale_kernel[_grid(npix)](
        x, wh.contiguous(), ih.to(torch.int32).contiguous(), ww.contiguous(), iw.to(torch.int32).contiguous(), k,
        y, cc if color else y, npix, oh, ow, *x.stride(), P=p, COLOR=color,
        SCALED=x.dtype in _LEVELS, BLOCK=_BLOCK, **_NO_FMA,
    )  # fmt: skip
    return y, cc


def finish_frame(y: torch.Tensor, cc: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """Network output ``y`` (N, 1, TH, TW) fp32 and ``cc`` (N, 2, TH, TW) (None: a one-plane frame) -> ``out``
    (N, 3 | 1, TH, TW) in its dtype (uint8 / uint16 rounded half up, floats clamped), written in place."""
    n, _, th, tw = y.shape
    npix = n * th * tw
    levels = _LEVELS.get(out.dtype, 0)
    k = _consts(y.device, None)
    cs = cc.stride() if cc is not None else (0, 0, 0, 0)
    ys = y.stride()
    _finish_kernel[_grid(npix)](
        y, cc if cc is not None else y, k, out, npix, tw, th * tw, ys[0], ys[2], ys[3], *cs, *out.stride(),
        COLOR=cc is not None, LEVELS=levels, BLOCK=_BLOCK, **_NO_FMA,
    )  # fmt: skip
    return out

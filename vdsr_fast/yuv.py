"""VDSR on video frames as decoders hand them out: Y'CbCr planes, no RGB.

:func:`upscale_yuv` takes a frame's (or a batch's) luma and chroma planes in their own matrix, range and bit
depth and returns the upscaled planes in the same format: what RGB -> :func:`vdsr_fast.upscale` -> the same
matrix gives (the paper's pipeline), computed without the RGB conversions. ``vdsr-fast video`` runs its yuv
pipeline with it.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import numpy as np
import torch

from .imaging import _is_size, imresize

__all__ = ["upscale_yuv", "MATRICES"]

# Kr, Kb of the Y'CbCr matrices (BT.601 = BT.470BG = SMPTE 170M; BT.2020 non-constant luminance)
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593),
            "smpte240m": (0.212, 0.087), "fcc": (0.30, 0.11)}  # fmt: skip


def studio_ycbcr(kr: float, kb: float) -> np.ndarray:
    """RGB in [0, 1] -> studio-range (Y, Cb, Cr) less their offsets (16, 128, 128 of 255) with a matrix's Kr, Kb."""
    k = np.array([kr, 1 - kr - kb, kb])
    return np.stack([219 / 255 * k, 224 / 255 * (np.eye(3)[2] - k) / (2 * (1 - kb)), 224 / 255 * (np.eye(3)[0] - k) / (2 * (1 - kr))])


def bt601_y_from(matrix: str) -> tuple[float, float] | None:
    """``(a, b)`` with the paper's Y (BT.601, MATLAB's ``rgb2ycbcr``) = Y + a Cb + b Cr for a picture's studio-range
    Y'CbCr in ``matrix`` (Cb, Cr less their 128 of 255; all are linear in RGB, and a grey's Y is the same in every
    matrix); None for BT.601 itself. BT.709: a = 0.0993, b = 0.1917."""
    if matrix == "bt601":
        return None
    c = studio_ycbcr(*MATRICES["bt601"])[0] @ np.linalg.inv(studio_ycbcr(*MATRICES[matrix]))
    return float(c[1]), float(c[2])


def _as_nchw(plane, name: str) -> tuple[torch.Tensor, int]:
    if not torch.is_tensor(plane):
        raise TypeError(f"upscale_yuv: {name} must be a torch tensor, got {type(plane).__name__}")
    if plane.dim() not in (2, 3, 4) or (plane.dim() == 4 and plane.shape[1] != 1):
        raise ValueError(f"upscale_yuv: {name} must be (H, W), (N, H, W) or (N, 1, H, W), got shape {tuple(plane.shape)}")
    if plane.numel() == 0:
        raise ValueError(f"upscale_yuv: {name} is empty (shape {tuple(plane.shape)})")
    rank = plane.dim()
    return (plane if rank == 4 else plane.reshape(-1, 1, *plane.shape[-2:])), rank


def _back(x: torch.Tensor, rank: int) -> torch.Tensor:
    return x if rank == 4 else x[:, 0] if rank == 3 else x[0, 0]


def upscale_yuv(
    y: torch.Tensor,
    u: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    scale: float | None = None,
    model=None,
    *,
    size: tuple[int, int] | None = None,
    matrix: str = "bt601",
    full_range: bool = False,
    bits: int | None = None,
    chroma_size: tuple[int, int] | None = None,
    **kw,
) -> tuple[torch.Tensor, ...]:
    """Upscale a frame given as Y'CbCr planes; returns ``(y, u, v)`` (``(y,)`` for a gray frame) in the input's
    dtype, bit depth, range, chroma subsampling and shape convention.

    Args:
        y: the luma plane, ``(H, W)``, ``(N, H, W)`` or ``(N, 1, H, W)``, uint8 or uint16 (``bits`` significant
            bits, low-aligned: 10 for yuv420p10le; P010's high-aligned 10 bits are 16-bit samples), on any device.
        u, v: the Cb and Cr planes at their own size (4:2:0: ``ceil(H/2) x ceil(W/2)``; an NV12 frame's
            interleaved plane ``uv`` gives ``uv[..., 0::2]`` and ``uv[..., 1::2]``), same dtype and batch; None for
            gray. Each axis must be a standard subsampling, ``ceil(n / f)`` samples with ``f`` 1, 2 or 4 (else a
            ValueError); an axis of 1 or 2 luma samples, which fits several, takes the other axis's factor. The
            chroma samples are taken as centred between their luma samples (MPEG-1, JPEG); left-sited 4:2:0 chroma
            (MPEG-2, H.264 and HEVC's default) comes out ``0.5 - 0.5 / scale`` input luma pixels off horizontally
            (a quarter at x2), as in any resize that ignores the siting.
        scale, size, model: as :func:`vdsr_fast.upscale` (``size`` is the luma's ``(H, W)``); the chroma planes
            are scaled by the same factors on their own sample grid and cut to the subsampled size (4:2:0 stays
            4:2:0; an odd luma's chroma stays where the luma is).
        matrix: the planes' Y'CbCr matrix, one of :data:`MATRICES` (``bt601``, ``bt709``, ``bt2020``, ...).
        full_range: JPEG/full-range samples instead of studio range (16-235 of 255, 10-bit 64-940).
        bits: significant bits of uint16 samples (9-16; required for uint16); 8 for uint8. Samples above
            ``2**bits - 1`` (P010's high-aligned samples with ``bits=10``, 12-bit data) are not checked, which would
            wait for the GPU every frame: they come out clipped and wrong.
        chroma_size: the output chroma planes' ``(H, W)`` (default: the input's subsampling applied to the luma's
            output size, e.g. ``ceil(H/2) x ceil(W/2)`` for 4:2:0).
        **kw: :func:`vdsr_fast.upscale`'s ``backend``, ``dtype``, ``tile``, ``max_memory``, ``tune``, ``stream``
            (every step runs on that stream)...

    The network gets the paper's Y (BT.601, studio range, as MATLAB's ``rgb2ycbcr`` of the RGB picture): the luma
    itself for BT.601; for another matrix the luma plus ``a Cb + b Cr`` (:func:`bt601_y_from`, the chroma resized
    to the luma's size with MATLAB's bicubic), whose resize is taken off the network's output again. Every term
    is linear and the network adds its residual to the bicubic upscale, so the output luma is the input's bicubic
    upscale plus the residual the RGB pipeline would add: RGB -> :func:`vdsr_fast.upscale` -> this matrix, without
    the conversions, their rounding and their clipping; one clip stays: the network's output BT.601 luma is clipped
    to 0-255 (8-bit scale) as ``upscale()`` clips, before the chroma term is taken off. In-gamut pictures (BT.601
    luma 16-235) do not reach it; with another matrix, samples outside the RGB gamut (Y 16 with Cb and Cr 16, say)
    can, and come out shifted. The chroma planes are resized with the same MATLAB bicubic
    the RGB pipeline uses for Cb and Cr. Full-range samples are mapped to the studio range and back; studio levels
    of more than 8 bits are the 8-bit ones scaled (10-bit: 64 = 16, 940 = 235).
    """
    from .api import output_plan

    if matrix not in MATRICES:
        raise ValueError(f"upscale_yuv: matrix must be one of {', '.join(MATRICES)}, got {matrix!r}")
    if bad := sorted(set(kw) & {"out", "layout", "fused_color", "channel_order", "progress"}):
        raise TypeError(f"upscale_yuv: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} upscale()'s, for RGB frames; "
                        "upscale_yuv returns new planes")  # fmt: skip
    if (u is None) != (v is None):
        raise ValueError("upscale_yuv: give both chroma planes u and v, or neither (gray)")
    y, rank = _as_nchw(y, "y")
    if y.dtype == torch.uint8:
        if bits not in (None, 8):
            raise ValueError(f"upscale_yuv: uint8 planes have 8 bits, got bits={bits}")
        bits = 8
    elif y.dtype == torch.uint16:
        if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 9 <= bits <= 16:
            raise ValueError("upscale_yuv: uint16 planes need bits= (9 to 16): 10 for yuv420p10le, 16 for P010's high-aligned samples")
    else:
        raise TypeError(f"upscale_yuv: planes must be uint8 or uint16 samples, got {y.dtype}")
    chroma = []
    for name, c in (("u", u), ("v", v)) if u is not None else ():
        c, _ = _as_nchw(c, name)
        if c.dtype != y.dtype or c.device != y.device or c.shape[0] != y.shape[0]:
            raise ValueError(f"upscale_yuv: {name} must have y's dtype, device and batch: {c.dtype} {c.device} "
                             f"{tuple(c.shape)} against {y.dtype} {y.device} {tuple(y.shape)}")  # fmt: skip
        chroma.append(c)
    if chroma and chroma[0].shape != chroma[1].shape:
        raise ValueError(f"upscale_yuv: u and v differ in shape: {tuple(chroma[0].shape)} and {tuple(chroma[1].shape)}")
    sub = _chroma_factors(*y.shape[-2:], *chroma[0].shape[-2:]) if chroma else None  # 4:2:0: (2, 2)
    k, (H, W) = output_plan(*y.shape[-2:], scale, size)
    if chroma_size is not None:
        if not chroma:
            raise ValueError("upscale_yuv: chroma_size= for a gray frame (no u, v)")
        if not _is_size(chroma_size):
            raise ValueError(f"upscale_yuv: chroma_size must be (height, width) in pixels, got {chroma_size!r}")
        chroma_size = int(chroma_size[0]), int(chroma_size[1])
        if not (1 <= chroma_size[0] <= H and 1 <= chroma_size[1] <= W):
            raise ValueError(f"upscale_yuv: chroma_size {chroma_size} for a {H}x{W} luma output: each side must be 1 "
                             "to the luma's")  # fmt: skip

    stream = kw.get("stream")
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        return _upscale_yuv(y, chroma, sub, rank, model, k, (H, W), matrix, full_range, bits, chroma_size, kw)


def _round_levels(v: torch.Tensor, top: float) -> torch.Tensor:
    """Samples ``v`` on the 0..``top`` scale rounded half up (floor(v + 0.5)) and clipped to [0, top], in place: as
    upscale() rounds its uint8/uint16 output (MATLAB's im2uint8), not torch.round's half to even, so a gray plane gets
    the same levels from both."""
    return v.add_(0.5).floor_().clamp_(0, top)


def _standard(n: int, m: int, prefer: int | None = None) -> int | None:
    """The standard subsampling factor (1, 2, 4: 4:4:4, 4:2:x, 4:1:x) that gives ``m`` of ``n`` samples rounding up
    as the formats round (4:2:0 of an odd 5 is 3, 4:1:1 of 10 is 3): ``prefer`` where it fits (an axis of 1 or 2
    samples fits several), else the first that fits; None where none does."""
    fits = [f for f in (1, 2, 4) if -(-n // f) == m]
    return prefer if prefer in fits else fits[0] if fits else None


def _chroma_factors(h: int, w: int, ch: int, cw: int) -> tuple[int, int]:
    """The input's subsampling (rows, columns) of an ``h x w`` luma with ``ch x cw`` chroma planes; an axis that fits
    several factors (1 or 2 samples) takes the other axis's (a one-row 4:2:0 frame stays 4:2:0). A ValueError where
    an axis fits no standard factor: the planes' sample grids cannot be lined up."""
    fh, fw = _standard(h, ch), _standard(w, cw)
    if fh is None or fw is None:
        raise ValueError(f"upscale_yuv: u and v of {ch}x{cw} (rows x columns) are no standard subsampling of the "
                         f"{h}x{w} luma: each axis must have ceil(n / f) samples with f 1, 2 or 4 (4:4:4, 4:2:2, "
                         f"4:2:0, 4:1:1, 4:1:0), here {h}: {sorted({-(-h // f) for f in (1, 2, 4)})} rows, "
                         f"{w}: {sorted({-(-w // f) for f in (1, 2, 4)})} columns")  # fmt: skip
    return _standard(h, ch, prefer=fw), _standard(w, cw, prefer=fh)


def _on_grid(x: torch.Tensor, factors: tuple[float, float] | None, out_hw: tuple[int, int]) -> torch.Tensor:
    """Plane ``x`` resized by ``factors`` (per axis) and cut to ``out_hw``: a subsampled plane keeps its own sample
    grid, so it stays where the luma is (4:2:0 of an odd 9 wide has 5 chroma samples: resized to 9 by size they
    were stretched by 1.8 where the luma is by 2, up to half a chroma sample off at the right). ``factors`` None
    (a ``chroma_size`` of no standard subsampling): resized to ``out_hw``."""
    if factors is None:
        return imresize(x, size=out_hw)
    return imresize(x, scale=factors)[..., : out_hw[0], : out_hw[1]]


def _upscale_yuv(y, chroma, sub, rank, model, k, HW, matrix, full_range, bits, chroma_size, kw):
    from .api import upscale

    (h, w), (H, W) = y.shape[-2:], HW
    top = float((1 << bits) - 1)
    white = top if full_range else float(255 << (bits - 8))  # the sample value of 1.0 on the network's scale
    center = float(128 << (bits - 8))
    luma = y.float() / white
    if full_range:
        luma = 16 / 255 + luma * (219 / 255)
    extra = None
    if chroma and (ab := bt601_y_from(matrix)) is not None:  # a Cb + b Cr, at the luma's size, in its units
        unit = (224 / 255 if full_range else 1) / white
        term = (ab[0] * (chroma[0].float() - center) + ab[1] * (chroma[1].float() - center)) * unit
        extra = _on_grid(term, sub, (h, w))  # on the chroma's own sample grid
        luma = luma + extra
    luma = upscale(luma, model=model, size=(H, W), **kw)
    if extra is not None:  # its resize as upscale() resizes: at the network's scale, then to the size asked
        extra = imresize(extra, size=(k * h, k * w))
        luma = luma - (extra if (H, W) == (k * h, k * w) else imresize(extra, size=(H, W)))
    if full_range:
        luma = (luma - 16 / 255) * (255 / 219)
    outs = [_round_levels(luma * white, top)]
    if chroma:
        sub_h, sub_w = sub
        out_hw = chroma_size or (math.ceil(H / sub_h), math.ceil(W / sub_w))
        to_h, to_w = _standard(H, out_hw[0], prefer=sub_h), _standard(W, out_hw[1], prefer=sub_w)  # chroma_size's
        # the luma's factors, times the change of subsampling chroma_size asks for
        factors = (H / h * sub_h / to_h, W / w * sub_w / to_w) if to_h and to_w else None
        outs += [_round_levels(_on_grid(c.float() / top, factors, out_hw) * top, top) for c in chroma]
    return tuple(_back(o.to(y.dtype), rank) for o in outs)

"""MATLAB-compatible color conversion and bicubic resize.

VDSR's weights were trained on data made with MATLAB's ``rgb2ycbcr`` and ``imresize(..., 'bicubic')``;
PyTorch's ``F.interpolate(mode="bicubic")`` uses another kernel (a = -0.75) and replicated edges and
costs PSNR. This module reproduces MATLAB to ~2e-13 on the 0-255 scale in float64 (tested to 1e-12 against MATLAB's own outputs).

All functions are batched, differentiable-free tensor code that runs on the input's device.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["rgb_to_ycbcr", "ycbcr_to_rgb", "imresize", "resize_output_size"]

# MATLAB rgb2ycbcr for double input in [0, 1] (ITU-R BT.601, studio range). Rows give Y, Cb, Cr.
_RGB2YCBCR = np.array(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ],
    dtype=np.float64,
) / 255.0
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0], dtype=np.float64) / 255.0
_YCBCR2RGB = np.linalg.inv(_RGB2YCBCR)  # the exact inverse, not MATLAB's rounded ycbcr2rgb table


# Python floats, not device tensors: no host->device copy (which would synchronise) on any call.
_M_FWD = _RGB2YCBCR.tolist()
_M_INV = _YCBCR2RGB.tolist()
_OFF = _YCBCR_OFFSET.tolist()


def _planes(x: torch.Tensor, name: str) -> list[torch.Tensor]:
    if not torch.is_tensor(x):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name}: expected a floating-point tensor in [0, 1], got dtype {x.dtype}")
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"{name}: expected shape (..., 3, H, W), got {tuple(x.shape)}")
    return list((x if x.dtype in (torch.float32, torch.float64) else x.float()).unbind(-3))


def _mix(planes: list[torch.Tensor], m: list[list[float]]) -> torch.Tensor:
    # Plain per-pixel arithmetic in a fixed order: every pixel gets the same operations whatever the
    # image size (a matmul does not promise that), so a tile matches the whole frame bit for bit.
    return torch.stack([planes[0] * r[0] + planes[1] * r[1] + planes[2] * r[2] for r in m], dim=-3)


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """RGB (..., 3, H, W) in [0, 1] -> YCbCr (..., 3, H, W) in [0, 1], as MATLAB ``rgb2ycbcr``.

    Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255 (so Y spans [16/255, 235/255]).
    Computed in float32 (float64 for float64 input); returns the input's dtype.
    """
    out = _mix(_planes(x, "rgb_to_ycbcr"), _M_FWD)
    return torch.stack([p + o for p, o in zip(out.unbind(-3), _OFF)], dim=-3).to(x.dtype)


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """YCbCr (..., 3, H, W) in [0, 1] -> RGB (..., 3, H, W), the exact inverse of :func:`rgb_to_ycbcr`.

    Not clamped: out-of-gamut values stay visible to the caller.
    """
    planes = [p - o for p, o in zip(_planes(x, "ycbcr_to_rgb"), _OFF)]
    return _mix(planes, _M_INV).to(x.dtype)


# ----------------------------------------------------------------------------------------------------
# imresize


def _cubic(x: np.ndarray) -> np.ndarray:
    """MATLAB's bicubic kernel (Keys, a = -0.5)."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * (
        (ax > 1) & (ax <= 2)
    )


_MAX_TAP_ENTRIES = 1 << 25  # out_len x P taps (weights + indices: 512 MiB of float64 and int64)


def _kernel_width(scale: float, antialias: bool) -> float:
    """The cubic's support in input pixels: 4, widened to 4 / scale when shrinking with antialiasing."""
    return 4.0 / scale if scale < 1 and antialias else 4.0


@functools.lru_cache(maxsize=256)
def _contributions(in_len: int, out_len: int, scale: float, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out_len, P) and 0-based source indices (out_len, P), as MATLAB ``contributions``."""
    kernel_width = _kernel_width(scale, antialias)
    if scale < 1 and antialias:
        kernel = lambda t: scale * _cubic(scale * t)  # noqa: E731 - widened, antialiasing kernel
    else:
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = np.floor(u - kernel_width / 2)
    p = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(p, dtype=np.float64)[None, :]
    w = kernel(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    # Symmetric edge handling: mirror the index sequence 1..n, n..1 periodically.
    aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx = aux[np.mod(idx.astype(np.int64) - 1, aux.size)]
    keep = np.any(w != 0, axis=0)  # MATLAB drops all-zero columns
    return np.ascontiguousarray(w[:, keep]), np.ascontiguousarray(idx[:, keep])


_device_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _contributions_on(in_len, out_len, scale, antialias, device, dtype):
    key = (in_len, out_len, scale, antialias, str(device), dtype)
    hit = _device_cache.get(key)
    if hit is None:
        w, idx = _contributions(in_len, out_len, scale, antialias)
        # Columns as separate tensors: the resize loops over the P taps in MATLAB's order.
        hit = (
            torch.as_tensor(w.T.copy(), dtype=dtype).to(device),
            torch.as_tensor(idx.T.copy(), dtype=torch.int64).to(device),
        )
        if len(_device_cache) > 512:
            _device_cache.clear()
        _device_cache[key] = hit
    return on_this_stream(hit)


def on_this_stream(tables: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Cached device tables, recorded on the current CUDA stream before work is queued there that reads them: a
    cache that drops them (full) while that work is pending would otherwise let the allocator hand their memory
    to the next tensor of the stream they were made on, and another stream's kernels read that tensor's values."""
    for t in tables:
        if t.is_cuda:
            t.record_stream(torch.cuda.current_stream(t.device))
    return tables


def _apply_taps(x: torch.Tensor, dim: int, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``out[i] = sum_p w[p, i] * x[idx[p, i]]`` along ``dim``, the taps summed in MATLAB's order."""
    shape = [1] * x.dim()
    shape[dim] = w.shape[1]
    out = None
    for p in range(w.shape[0]):
        term = x.index_select(dim, idx[p]) * w[p].view(shape)
        out = term if out is None else out.add_(term)
    return out


def _resize_dim(x: torch.Tensor, dim: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    w, idx = _contributions_on(x.shape[dim], out_len, scale, antialias, x.device, x.dtype)
    return _apply_taps(x, dim, w, idx)


def resize_output_size(in_size: Sequence[int], scale: float | Sequence[float]) -> tuple[int, int]:
    """Output (H, W) of :func:`imresize` for a scale: MATLAB's ``ceil(scale * n)``.

    A product within 1e-9 of an integer counts as that integer: ``scale=1.1`` on 50 gives 55 and on 90 gives 99,
    where the float64 products are 55.000000000000007 and 99.00000000000001 and MATLAB's plain ``ceil`` gives 56 and
    100 (a deliberate departure: the size a user means; the evaluation protocol's exact products, such as 1/3 of 288 =
    96.0, are not affected).
    """
    sh, sw = _pair(scale)
    out = []
    for n, s in zip(in_size, (sh, sw)):
        v = n * s
        r = round(v)
        out.append(max(1, int(r) if abs(v - r) < 1e-9 else int(math.ceil(v))))  # ceil of a positive product: >= 1
    return out[0], out[1]


def _is_number(v, kind=numbers.Real) -> bool:
    return isinstance(v, kind) and not isinstance(v, bool)


def _is_size(v) -> bool:
    """Whether ``v`` is a size ``(height, width)``: a tuple or list of two ints (bools are not sizes)."""
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_number(n, numbers.Integral) for n in v)


def _pair(scale) -> tuple[float, float]:
    """A scale (a number, or (factor_h, factor_w)) as two floats; anything else is a ValueError."""
    if _is_number(scale):
        return float(scale), float(scale)
    if isinstance(scale, (tuple, list)) and len(scale) == 2 and all(_is_number(v) for v in scale):
        return float(scale[0]), float(scale[1])
    raise ValueError(f"imresize: scale must be a number or (factor_h, factor_w), got {scale!r}")


def imresize(
    x: torch.Tensor,
    scale: float | Sequence[float] | None = None,
    *,
    size: Sequence[int] | None = None,
    antialias: bool = True,
) -> torch.Tensor:
    """Resize the last two dims of ``x`` exactly as MATLAB ``imresize(x, scale, 'bicubic')``.

    Args:
        x: float tensor (..., H, W) on any device (uint8 is not accepted: MATLAB would round, we don't).
        scale: a factor or (factor_h, factor_w); output size is ``ceil(scale * n)``.
        size: (H_out, W_out) instead of ``scale``; the factors become ``out / in``.
        antialias: widen the kernel when shrinking (MATLAB's default).

    The dimension with the smaller factor is resized first, as MATLAB does. float32 and float64 inputs
    are computed in their own precision; float16/bfloat16 are computed in float32 and cast back.
    """
    if not torch.is_tensor(x):
        raise TypeError(f"imresize: expected a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"imresize: expected a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"imresize: expected shape (..., H, W), got {tuple(x.shape)}")
    if (scale is None) == (size is None):
        raise ValueError("imresize: give exactly one of scale= or size=")
    in_h, in_w = x.shape[-2], x.shape[-1]
    if in_h == 0 or in_w == 0:
        raise ValueError(f"imresize: cannot resize an empty image of shape {tuple(x.shape)}")
    if size is not None:
        if not _is_size(size):
            raise ValueError(f"imresize: size must be (height, width) in pixels, got {size!r}")
        out_h, out_w = int(size[0]), int(size[1])
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"imresize: size must be positive, got {tuple(size)}")
        sh, sw = out_h / in_h, out_w / in_w
    else:
        sh, sw = _pair(scale)
        if not (sh > 0 and sw > 0 and math.isfinite(sh) and math.isfinite(sw)):
            raise ValueError(f"imresize: scale must be positive and finite, got {scale}")
        out_h, out_w = resize_output_size((in_h, in_w), (sh, sw))
    # A shrink by s weighs ~4/s input pixels per output pixel (the widened kernel, mirrored at the borders):
    # refuse a factor so small that the weight tables alone would take gigabytes.
    for n, f in ((out_h, sh), (out_w, sw)):
        if n * (_kernel_width(f, antialias) + 3) > _MAX_TAP_ENTRIES:
            raise ValueError(f"imresize: scale {f:g} is too small to resize {in_h}x{in_w} "
                             f"(its kernel would span {_kernel_width(f, antialias):.3g} input pixels)")  # fmt: skip
    orig_dtype = x.dtype
    if orig_dtype not in (torch.float32, torch.float64):
        x = x.float()
    # MATLAB: [~, order] = sort(scale), a stable sort, so height goes first on ties.
    steps = [(-2, out_h, sh), (-1, out_w, sw)]
    if sw < sh:
        steps.reverse()
    for dim, n, s in steps:
        x = _resize_dim(x, x.dim() + dim, n, s, antialias)
    return x.to(orig_dtype)

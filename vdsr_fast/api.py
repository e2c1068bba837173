"""The user-facing calls: :func:`load` and :func:`upscale` (DESIGN.md §2 pipeline)."""

from __future__ import annotations

import threading

import torch

from .engine import Engine
from .imaging import imresize, rgb_to_ycbcr, ycbcr_to_rgb
from .reference import VDSR
from .weights import load

__all__ = ["load", "upscale", "get_engine", "SCALES"]

SCALES = (2, 3, 4)  # the scales the model was trained on

_default_model: VDSR | None = None
_lock = threading.Lock()


def _default() -> VDSR:
    global _default_model
    with _lock:
        if _default_model is None:
            _default_model = load()
        return _default_model


def get_engine(model: VDSR, device: torch.device, backend: str = "auto", dtype: torch.dtype | None = None) -> Engine:
    """The :class:`Engine` for ``model`` on ``device``, built once and cached on the model."""
    cache = model.__dict__.setdefault("_vdsr_engines", {})
    key = (backend, str(device), dtype)
    with _lock:
        engine = cache.get(key)
        if engine is None:
            engine = cache[key] = Engine(model, backend=backend, dtype=dtype, device=device)
    return engine


def _check_scale(scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES} (the scales VDSR is trained on), got {scale!r}")
    return int(scale)


def _to_float(img: torch.Tensor) -> torch.Tensor:
    """Input pixels -> float in [0, 1] (float64 stays float64, everything else computes in float32)."""
    if img.dtype == torch.uint8:
        return img.float() / 255.0
    if img.dtype == torch.uint16:
        return img.float() / 65535.0
    if img.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return img if img.dtype == torch.float64 else img.float()
    raise TypeError(f"upscale: img has dtype {img.dtype}; expected uint8, uint16 or a float dtype in [0, 1]")


def _from_float(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    if dtype == torch.uint8:  # round half up, as MATLAB's im2uint8
        return (x * 255.0 + 0.5).floor_().to(torch.uint8)
    if dtype == torch.uint16:
        return (x * 65535.0 + 0.5).floor_().to(torch.int32).to(torch.uint16)
    return x.to(dtype)


@torch.no_grad()
def upscale(
    img: torch.Tensor,
    scale: int = 2,
    model: VDSR | None = None,
    *,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Super-resolve ``img`` by ``scale`` with VDSR.

    Args:
        img: a tensor on any device: RGB ``(N, 3, H, W)`` or ``(3, H, W)``; RGBA ``(N, 4, H, W)`` or
            ``(4, H, W)`` (alpha is resized bicubically and kept); Y/gray ``(N, 1, H, W)``,
            ``(1, H, W)`` or ``(H, W)``. uint8/uint16, or float in [0, 1].
        scale: 2, 3 or 4.
        model: a :class:`VDSR` from :func:`load`; default: the weights shipped with the package.
        backend: engine backend (``"auto"``, ``"cuda"``, ``"triton"``, ``"torch"``).
        dtype: the engine's activation dtype (default: see :class:`~vdsr_fast.engine.Engine`).

    Returns:
        A tensor of the same layout, dtype and device with H and W multiplied by ``scale``, clamped to
        the valid range (uint8/uint16 rounded). Color images go RGB -> YCbCr (MATLAB BT.601) -> MATLAB
        bicubic upscale of all channels -> VDSR on Y -> RGB. NaN pixels propagate to the output.
    """
    if not torch.is_tensor(img):
        raise TypeError(f"upscale: img must be a torch.Tensor, got {type(img).__name__}")
    s = _check_scale(scale)
    if img.dim() == 2:
        batch = img[None, None]
    elif img.dim() == 3:
        batch = img[None]
    elif img.dim() == 4:
        batch = img
    else:
        raise ValueError(f"upscale: img must have 2, 3 or 4 dims (H,W / C,H,W / N,C,H,W), got shape {tuple(img.shape)}")
    c = batch.shape[1]
    if c not in (1, 3, 4):
        raise ValueError(f"upscale: img must have 1 (Y), 3 (RGB) or 4 (RGBA) channels, got {c} in shape {tuple(img.shape)}")
    if batch.shape[0] == 0 or batch.shape[-1] == 0 or batch.shape[-2] == 0:
        raise ValueError(f"upscale: img is empty (shape {tuple(img.shape)})")
    model = _default() if model is None else model
    if not isinstance(model, VDSR):
        raise TypeError(f"upscale: model must be a vdsr_fast VDSR (from vdsr_fast.load), got {type(model).__name__}")
    engine = get_engine(model, batch.device, backend, dtype)

    x = _to_float(batch)
    if c == 1:
        out = engine(imresize(x, s))
    else:
        up = imresize(rgb_to_ycbcr(x[:, :3]), s)
        y = engine(up[:, :1].contiguous())
        out = ycbcr_to_rgb(torch.cat([y, up[:, 1:3]], dim=1))
        if c == 4:
            out = torch.cat([out, imresize(x[:, 3:4], s)], dim=1)
    out = _from_float(out, img.dtype)
    return out.reshape(*img.shape[:-2], *out.shape[-2:])

"""PSNR and SSIM as the super-resolution literature computes them (DESIGN.md §3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim"]

_INT_RANGE = {torch.uint8: 255.0, torch.uint16: 65535.0}


def _default_range(dtype: torch.dtype, name: str) -> float:
    if dtype.is_floating_point:
        return 1.0
    if dtype in _INT_RANGE:
        return _INT_RANGE[dtype]
    raise TypeError(f"{name}: pass data_range= for {dtype} images (defaults exist for float, uint8, uint16)")


def _prepare(pred: torch.Tensor, target: torch.Tensor, shave: int, data_range: float | None, name: str):
    if not (torch.is_tensor(pred) and torch.is_tensor(target)):
        raise TypeError(f"{name}: expected two tensors")
    if pred.shape != target.shape:
        raise ValueError(f"{name}: shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.dim() < 2:
        raise ValueError(f"{name}: expected images of shape (..., H, W), got {tuple(pred.shape)}")
    if shave < 0:
        raise ValueError(f"{name}: shave must be >= 0, got {shave}")
    if 2 * shave >= min(pred.shape[-2:]):
        raise ValueError(f"{name}: shave={shave} leaves nothing of a {tuple(pred.shape[-2:])} image")
    if data_range is None:
        ranges = {_default_range(t.dtype, name) for t in (pred, target)}
        if len(ranges) > 1:  # e.g. a float network output in [0, 1] against uint8 ground truth in [0, 255]
            raise TypeError(f"{name}: pred is {pred.dtype} and target {target.dtype}, whose value ranges differ "
                            f"({' and '.join(f'{r:g}' for r in sorted(ranges))}): convert one, or pass data_range=")
        data_range = ranges.pop()
    if shave:
        pred = pred[..., shave:-shave, shave:-shave]
        target = target[..., shave:-shave, shave:-shave]
    return pred.double(), target.double(), float(data_range)


def psnr(pred: torch.Tensor, target: torch.Tensor, *, shave: int = 0, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB over all elements, after cropping ``shave`` pixels per border.

    ``data_range`` defaults to 255 for uint8, 65535 for uint16 and 1 for float inputs; tensors whose defaults differ
    (float against uint8) are a TypeError without it. Identical images give ``inf``; one level off everywhere on uint8
    gives 48.13 dB."""
    p, t, r = _prepare(pred, target, shave, data_range, "psnr")
    mse = torch.mean((p - t) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(r * r / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    g = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(g**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(pred: torch.Tensor, target: torch.Tensor, *, shave: int = 0, data_range: float | None = None) -> float:
    """Structural similarity (Wang et al. 2004): Gaussian window 11, sigma 1.5, K1 = 0.01, K2 = 0.03,
    'valid' filtering (as Wang's ``ssim_index.m``, without its later automatic downsampling); the mean SSIM map,
    averaged over any leading dims (channels, batch). ``data_range`` and ``shave`` as for :func:`psnr`; the images must
    be at least 11x11 after the shave (a ValueError otherwise)."""
    p, t, r = _prepare(pred, target, shave, data_range, "ssim")
    if min(p.shape[-2:]) < 11:
        raise ValueError(f"ssim: images must be at least 11x11 after shaving, got {tuple(p.shape[-2:])}")
    h, w = p.shape[-2:]
    p = p.reshape(-1, 1, h, w)
    t = t.reshape(-1, 1, h, w)
    win = _gaussian_window(device=p.device)
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    mu_p, mu_t = F.conv2d(p, win), F.conv2d(t, win)
    s_pp = F.conv2d(p * p, win) - mu_p**2
    s_tt = F.conv2d(t * t, win) - mu_t**2
    s_pt = F.conv2d(p * t, win) - mu_p * mu_t
    m = ((2 * mu_p * mu_t + c1) * (2 * s_pt + c2)) / ((mu_p**2 + mu_t**2 + c1) * (s_pp + s_tt + c2))
    return m.mean().item()

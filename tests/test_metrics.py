"""PSNR and SSIM (vdsr_fast.metrics, what `vdsr-fast eval` reports) against direct formulas."""

import math

import numpy as np
import pytest
import torch

from vdsr_fast.metrics import psnr, ssim


def _ssim_direct(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Wang et al. 2004 written out window by window: 11x11 Gaussian (sigma 1.5), 'valid' positions."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            x, y = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            mx, my = (win * x).sum(), (win * y).sum()
            vx, vy = (win * (x - mx) ** 2).sum(), (win * (y - my) ** 2).sum()
            cxy = (win * (x - mx) * (y - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_psnr_is_the_mse_formula_after_shaving():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(17, 23, generator=g, dtype=torch.float64), torch.rand(17, 23, generator=g, dtype=torch.float64)
    b[:2] = 5.0  # outside the shaved region: must not count
    mse = ((a[2:-2, 2:-2] - b[2:-2, 2:-2]) ** 2).mean().item()
    assert psnr(a, b, shave=2) == pytest.approx(10 * math.log10(1 / mse), abs=1e-12)
    assert psnr(a, a) == math.inf


@pytest.mark.parametrize("dtype, peak", [(torch.uint8, 255), (torch.uint16, 65535)])
def test_integer_images_default_to_their_full_range(dtype, peak):
    a = torch.zeros(4, 4, dtype=dtype)
    b = a.clone()
    b[0, 0] = peak // 2
    mse = (peak // 2) ** 2 / 16
    assert psnr(a, b) == pytest.approx(10 * math.log10(peak**2 / mse), abs=1e-9)
    assert psnr(a, b) == pytest.approx(psnr(a.double() / peak, b.double() / peak), abs=1e-9)


def test_ssim_matches_the_windowed_definition():
    rng = np.random.default_rng(3)
    a = rng.random((19, 16))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    got = ssim(torch.from_numpy(a), torch.from_numpy(b))
    assert got == pytest.approx(_ssim_direct(a, b, 1.0), abs=1e-12)
    assert ssim(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(1.0, abs=1e-12)
    a8, b8 = torch.from_numpy(np.round(a * 255)).to(torch.uint8), torch.from_numpy(np.round(b * 255)).to(torch.uint8)
    assert ssim(a8, b8, shave=1) == pytest.approx(_ssim_direct(a8.numpy()[1:-1, 1:-1] * 1.0, b8.numpy()[1:-1, 1:-1] * 1.0, 255.0), abs=1e-12)


def test_errors():
    x = torch.rand(12, 12)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(x, torch.rand(12, 13))
    with pytest.raises(ValueError, match="leaves nothing"):
        psnr(x, x, shave=6)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x, x, shave=1)
    with pytest.raises(TypeError, match="data_range"):
        psnr(torch.zeros(4, 4, dtype=torch.int32), torch.zeros(4, 4, dtype=torch.int32))

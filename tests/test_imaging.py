"""MATLAB conformance of the color conversion and bicubic resize."""

import fractions
import glob

import numpy as np
import pytest
import torch
from conftest import need_data

from vdsr_fast import imresize, rgb_to_ycbcr, ycbcr_to_rgb
from vdsr_fast.imaging import resize_output_size


def _matlab_files():
    files = sorted(glob.glob(str(need_data("matlab") / "*.npz")))
    if not files:
        pytest.skip("no MATLAB reference arrays in ../shared/data/matlab")
    return files


def test_matlab_reference_arrays_to_1e12():
    """Every array MATLAB produced (rgb2ycbcr, imresize down, imresize up) to <= 1e-12 on the 0-255 scale in
    float64 (2026-11-27: at most 2.1e-13 over the 12 files)."""
    for f in _matlab_files():
        d = np.load(f)
        s = int(f.split("_x")[-1][0])
        rgb = torch.from_numpy(d["im_gt"]).permute(2, 0, 1).double() / 255.0
        y = rgb_to_ycbcr(rgb)[0] * 255.0
        np.testing.assert_allclose(y.numpy(), d["im_gt_y"], rtol=0, atol=1e-12, err_msg=f"{f}: rgb2ycbcr")
        lr = imresize(torch.from_numpy(d["im_gt_y"]), 1.0 / s)
        np.testing.assert_allclose(lr.numpy(), d["im_l_y"], rtol=0, atol=1e-12, err_msg=f"{f}: imresize 1/{s}")
        up = imresize(torch.from_numpy(d["im_l_y"]), s)
        np.testing.assert_allclose(up.numpy(), d["im_b_y"], rtol=0, atol=1e-12, err_msg=f"{f}: imresize x{s}")


def test_ycbcr_known_values_and_exact_inverse():
    white, black = torch.ones(3, 1, 1, dtype=torch.float64), torch.zeros(3, 1, 1, dtype=torch.float64)
    assert rgb_to_ycbcr(white)[:, 0, 0].tolist() == pytest.approx([235 / 255, 128 / 255, 128 / 255], abs=1e-12)
    assert rgb_to_ycbcr(black)[:, 0, 0].tolist() == pytest.approx([16 / 255, 128 / 255, 128 / 255], abs=1e-12)
    x = torch.rand(2, 3, 7, 5, dtype=torch.float64)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, rtol=0, atol=1e-12)
    # the common 64.738 typo would move Y of pure red by 0.7 levels
    red = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)[:, None, None]
    assert rgb_to_ycbcr(red)[0, 0, 0].item() * 255 == pytest.approx(16 + 65.481, abs=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_color_keeps_dtype(dtype):
    x = torch.rand(3, 4, 4).to(dtype)
    assert rgb_to_ycbcr(x).dtype == dtype and ycbcr_to_rgb(x).dtype == dtype


@pytest.mark.parametrize("n, s, expected", [(288, 1 / 3, 96), (10, 0.5, 5), (11, 0.5, 6), (7, 3, 21), (5, 0.3, 2)])
def test_output_size_is_matlab_ceil(n, s, expected):
    assert resize_output_size((n, n), s) == (expected, expected)
    assert imresize(torch.rand(n, n, dtype=torch.float64), s).shape == (expected, expected)


def test_batched_equals_per_image_and_float32_close():
    x = torch.rand(2, 3, 17, 23, dtype=torch.float64)
    out = imresize(x, 3)
    assert out.shape == (2, 3, 51, 69)
    for i in range(2):
        for c in range(3):
            torch.testing.assert_close(out[i, c], imresize(x[i, c], 3), rtol=0, atol=0)
    torch.testing.assert_close(imresize(x.float(), 3), out.float(), rtol=0, atol=1e-6)
    down = imresize(x, 0.25)
    assert down.shape == (2, 3, 5, 6)


def test_identity_and_constant_images():
    x = torch.rand(9, 13, dtype=torch.float64)
    torch.testing.assert_close(imresize(x, 1), x, rtol=0, atol=1e-15)
    c = torch.full((12, 10), 0.3, dtype=torch.float64)
    for s in (0.5, 2, 3, 1 / 3):  # weights sum to one, so a constant stays constant
        torch.testing.assert_close(imresize(c, s), torch.full_like(imresize(c, s), 0.3), rtol=0, atol=1e-14)


def test_anisotropic_scale_and_size_argument():
    x = torch.rand(10, 20, dtype=torch.float64)
    assert imresize(x, (2, 0.5)).shape == (20, 10)
    assert imresize(x, size=(30, 40)).shape == (30, 40)
    torch.testing.assert_close(imresize(x, size=(20, 40)), imresize(x, 2), rtol=0, atol=0)


def test_non_contiguous_input():
    x = torch.rand(3, 16, 12, dtype=torch.float64)
    xt = x.transpose(-1, -2)
    torch.testing.assert_close(imresize(xt, 2), imresize(xt.contiguous(), 2), rtol=0, atol=0)


@pytest.mark.parametrize(
    "call, err",
    [
        (lambda: imresize(torch.zeros(4, 4, dtype=torch.uint8), 2), TypeError),
        (lambda: imresize(torch.rand(4, 4), 2, size=(8, 8)), ValueError),
        (lambda: imresize(torch.rand(4, 4)), ValueError),
        (lambda: imresize(torch.rand(4, 4), -2), ValueError),
        (lambda: imresize(torch.rand(4, 4), float("nan")), ValueError),
        (lambda: imresize(torch.rand(0, 4), 2), ValueError),
        (lambda: rgb_to_ycbcr(torch.rand(4, 4, 4)), ValueError),
        (lambda: rgb_to_ycbcr(torch.zeros(3, 4, 4, dtype=torch.uint8)), TypeError),
    ],
)
def test_bad_arguments(call, err):
    with pytest.raises(err):
        call()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(scale=(1, 2, 3)), "scale must be a number or"),
        (dict(scale="2"), "scale must be a number or"),
        (dict(scale=True), "scale must be a number or"),
        (dict(size=8), "size must be \\(height, width\\)"),
        (dict(size=(2.7, 3.9)), "size must be \\(height, width\\)"),  # not truncated to (2, 3)
        (dict(size=(True, True)), "size must be \\(height, width\\)"),
        (dict(scale=1e-9), "too small"),  # would allocate ~30 GiB of kernel weights
        (dict(scale=5e-324), "too small"),  # 16 * 5e-324 rounds to 0 output pixels; MATLAB's ceil gives 1
    ],
)
def test_bad_scale_and_size_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        imresize(torch.rand(16, 16, dtype=torch.float64), **kw)


def test_numeric_scale_types_and_tiny_products():
    x = torch.rand(16, 16, dtype=torch.float64)
    ref = imresize(x, 0.5)
    for scale in (np.float32(0.5), fractions.Fraction(1, 2), (np.float64(0.5), 0.5)):
        torch.testing.assert_close(imresize(x, scale), ref, rtol=0, atol=0)
    assert imresize(x, 0.01).shape == (1, 1)  # ceil(0.16) = 1 as MATLAB
    assert resize_output_size((16, 16), 1e-12) == (1, 1)

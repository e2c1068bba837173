"""MATLAB conformance of the color conversion and bicubic resize."""

import fractions
import glob
import math

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
        (lambda: imresize(torch.rand(5), 2), ValueError),  # 1-D: no (H, W)
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
        (dict(scale=float("inf")), "scale must be positive and finite"),
        (dict(scale=(2, -1)), "scale must be positive and finite"),  # the width's factor checked too
        (dict(size=(0, 4)), "size must be positive"),
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


# --- checks that need no MATLAB data (CI machines without ../shared/data run these too) ---------------------------


def _keys(t: float, a: float = -0.5) -> float:
    """Keys' cubic convolution kernel with parameter ``a`` (MATLAB's 'bicubic' is a = -0.5), from its definition."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def _resize_1d(x, s: float, antialias: bool = True) -> list[float]:
    """One axis of MATLAB's ``imresize(x, s, 'bicubic')`` written out pixel by pixel in float64: output pixel i
    (1-based) is centred on input coordinate (i - 0.5) / s + 0.5; a shrink with antialiasing stretches the kernel by
    1 / s; the weights are normalised to sum to 1; the input is extended symmetrically (x1 x1 x2 ... / ... xn xn)."""
    n, m = len(x), math.ceil(len(x) * s - 1e-9)
    wide = antialias and s < 1
    half = 2 / s if wide else 2
    out = []
    for i in range(1, m + 1):
        u = (i - 0.5) / s + 0.5
        acc = total = 0.0
        for j in range(math.floor(u - half), math.ceil(u + half) + 1):
            wgt = s * _keys(s * (u - j)) if wide else _keys(u - j)
            k = j
            while not 1 <= k <= n:  # mirror, as often as a wide kernel on a small image needs
                k = 1 - k if k < 1 else 2 * n + 1 - k
            acc += wgt * float(x[k - 1])
            total += wgt
        out.append(acc / total)
    return out


def _resize_direct(x: torch.Tensor, sh: float, sw: float, antialias: bool = True) -> torch.Tensor:
    rows = torch.tensor([_resize_1d(col, sh, antialias) for col in x.T.tolist()], dtype=torch.float64).T
    return torch.tensor([_resize_1d(row, sw, antialias) for row in rows.tolist()], dtype=torch.float64)


@pytest.mark.parametrize("scale", [2, 3, 4, 0.5, 1 / 3, 0.25, 0.3, 0.75, 1.5, (2, 0.6), (0.45, 3)])
def test_imresize_is_the_written_out_matlab_bicubic(scale):
    """imresize against MATLAB's algorithm written out in float64 (kernel a = -0.5, pixel-centre mapping,
    antialiasing width 4 / s, normalised weights, symmetric borders) on a random 11x7 image: up, down (also by
    factors whose stretched weights do not sum to one, 0.3 and 0.75), anisotropic, and a shrink whose kernel
    mirrors more than once. Tolerance: float64 rounding of sums of at most ~30 terms of values in [0, 1] (~1e-15)."""
    x = torch.rand(11, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    sh, sw = scale if isinstance(scale, tuple) else (scale, scale)
    torch.testing.assert_close(imresize(x, scale), _resize_direct(x, sh, sw), rtol=0, atol=1e-12)


def test_bicubic_reproduces_quadratics_away_from_the_borders():
    """Keys' kernel with a = -0.5 (and no other a) interpolates quadratics exactly: an upscale of samples of q(t) is
    q at the output pixel centres (i - 0.5) / s + 0.5, except within two input pixels of the borders."""
    q = lambda t: 0.3 + 0.05 * t - 0.002 * t * t  # noqa: E731
    n, s = 20, 3
    x = torch.tensor([q(j) for j in range(1, n + 1)], dtype=torch.float64)
    got = imresize(x[None], (1, s))[0]
    want = torch.tensor([q((i - 0.5) / s + 0.5) for i in range(1, n * s + 1)], dtype=torch.float64)
    inner = slice(3 * s, (n - 3) * s)
    torch.testing.assert_close(got[inner], want[inner], rtol=0, atol=1e-14)
    assert (got[:2] - want[:2]).abs().max() > 1e-6  # the mirrored border is not the quadratic: the check is not vacuous


def test_a_nan_pixel_reaches_only_the_outputs_whose_taps_weigh_it():
    """MATLAB drops the taps whose weight is zero for every output pixel: a NaN at input pixel j (1-based) reaches
    exactly the output pixels i with |u_i - j| < 2 (u_i = (i - 0.5) / s + 0.5), not one tap further."""
    n, j, s = 12, 6, 2
    x = torch.rand(1, n, dtype=torch.float64)
    x[0, j - 1] = float("nan")
    got = torch.isnan(imresize(x, (1, s))[0]).tolist()
    assert got == [abs((i - 0.5) / s + 0.5 - j) < 2 for i in range(1, n * s + 1)]


def test_ycbcr_of_the_primaries_is_matlabs_table():
    """MATLAB's rgb2ycbcr of pure red, green and blue on the 0-255 scale: 16/128/128 plus the columns of its
    documented matrix [65.481 128.553 24.966; -37.797 -74.203 112; 112 -93.786 -18.214] (Cb and Cr included: a
    chroma row mistyped but still summing to zero keeps grey and the RGB pipeline's output, not rgb_to_ycbcr's)."""
    primaries = torch.eye(3, dtype=torch.float64)[:, :, None, None]  # (3 colours, RGB, 1, 1)
    want = [[81.481, 90.203, 240.0], [144.553, 53.797, 34.214], [40.966, 240.0, 109.786]]
    got = (rgb_to_ycbcr(primaries)[:, :, 0, 0] * 255).tolist()
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-9)
    torch.testing.assert_close(ycbcr_to_rgb(torch.tensor(want, dtype=torch.float64)[:, :, None, None] / 255),
                               primaries, rtol=0, atol=1e-12)  # fmt: skip


def test_products_a_rounding_error_above_an_integer_are_that_integer():
    """50 x 1.1 is 55.000000000000007 in floating point and 90 x 1.1 is 99.00000000000001: the documented 1e-9
    rule gives 55 and 99, not the ceil's 56 and 100 (upscale(scale=1.1) of a 50-pixel side is 55 pixels). (The
    example was 10 x 0.7, which is exactly 7.0: a review found that half of the test checked nothing.)"""
    assert 50 * 1.1 > 55 and 90 * 1.1 > 99  # the products really are above
    assert resize_output_size((50, 90), 1.1) == (55, 99)
    assert imresize(torch.rand(90, 50, dtype=torch.float64), 1.1).shape == (99, 55)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_imresize_of_half_precision_is_computed_in_float32_and_cast_back(dtype):
    """float16 / bfloat16 in: the float32 resize of the same values, cast back to the input's dtype."""
    x = torch.rand(2, 9, 7).to(dtype)
    for scale in (2, 0.5):
        got = imresize(x, scale)
        assert got.dtype == dtype
        assert torch.equal(got, imresize(x.float(), scale).to(dtype))


@pytest.mark.parametrize("scale", [0.5, 0.3, (0.45, 0.75), 2])
def test_a_shrink_without_antialiasing_is_the_plain_cubic(scale):
    """antialias=False: the a = -0.5 cubic over 4 input pixels whatever the factor (MATLAB's 'Antialiasing', false),
    against the written-out resize; the antialiased taps of the same geometry are made first, so a cache that mixed
    the two would show. With 4 taps a factor of 1e-9 needs no large weight table, so it is not refused."""
    x = torch.rand(11, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    sh, sw = scale if isinstance(scale, tuple) else (scale, scale)
    imresize(x, scale)
    torch.testing.assert_close(imresize(x, scale, antialias=False), _resize_direct(x, sh, sw, antialias=False), rtol=0, atol=1e-12)
    if sh < 1:
        assert (imresize(x, scale, antialias=False) - imresize(x, scale)).abs().max() > 1e-3  # not vacuous
    assert imresize(x, 1e-9, antialias=False).shape == (1, 1)  # 4 taps whatever the factor: not "too small"


def test_float64_keeps_its_precision_after_a_float32_resize_of_the_same_geometry(monkeypatch):
    """The device copies of the tap weights are kept per dtype: a float64 resize after a float32 one of the same
    sizes still matches the written-out MATLAB resize to 1e-12 (float32 weights would be off by ~1e-8)."""
    import vdsr_fast.imaging as imaging

    monkeypatch.setattr(imaging, "_device_cache", {})
    x = torch.rand(13, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    imresize(x.float(), 2.5)
    torch.testing.assert_close(imresize(x, 2.5), _resize_direct(x, 2.5, 2.5), rtol=0, atol=1e-12)


def test_only_products_within_1e9_of_an_integer_snap_to_it():
    """The 1e-9 rule and no wider: 10 x (1 + 2e-8) = 10.0000002 is not a rounding error, so MATLAB's ceil gives 11;
    10 x (1 + 1e-11) gives 10."""
    assert resize_output_size((10, 10), (1 + 2e-8, 1 + 1e-11)) == (11, 10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_colour_of_half_precision_is_computed_in_float32(dtype):
    """float16 / bfloat16 colour conversions: the float32 conversion of the same values, cast back (documented:
    computed in float32), not the sums taken in half precision."""
    x = torch.rand(2, 3, 9, 7).to(dtype)
    assert torch.equal(rgb_to_ycbcr(x), rgb_to_ycbcr(x.float()).to(dtype))
    assert torch.equal(ycbcr_to_rgb(x), ycbcr_to_rgb(x.float()).to(dtype))


def test_ycbcr_to_rgb_leaves_out_of_gamut_values_unclamped():
    """Grey (Cb = Cr = 128) with Y = 255 and Y = 0, outside the studio range 16..235: R = G = B = (Y - 16) / 219 (the
    Y row of MATLAB's matrix sums to 219), so 239/219 and -16/219, not clipped to [0, 1] (documented)."""
    ycc = torch.tensor([[1.0, 0.0], [128 / 255] * 2, [128 / 255] * 2], dtype=torch.float64)[:, None, :]
    want = torch.tensor([239 / 219, -16 / 219], dtype=torch.float64).expand(3, 1, 2)
    torch.testing.assert_close(ycbcr_to_rgb(ycc), want, rtol=0, atol=1e-12)


def test_outputs_are_written_through_a_symlink_keeping_the_mode_of_the_file_replaced(tmp_path):
    """write_image (and vdsr_fast.save, the same temporary-then-rename helper) over a symbolic link writes the file
    it names, and over an existing file keeps its mode, as open() would (the link became a file, the file it named
    untouched; a 0600 file became 0644); a dangling link's target is created with the default mode."""
    import vdsr_fast
    from vdsr_fast.images import default_file_mode, read_image, write_image

    arr = np.full((4, 5, 3), 7, np.uint8)
    real, link = tmp_path / "real.png", tmp_path / "link.png"
    write_image(real, arr + 1)
    real.chmod(0o600)
    link.symlink_to(real)
    write_image(link, arr)
    assert link.is_symlink() and (read_image(real) == arr).all() and real.stat().st_mode & 0o777 == 0o600
    w = tmp_path / "w.safetensors"
    vdsr_fast.save(vdsr_fast.VDSR(depth=3, channels=4), w)
    w.chmod(0o640)
    vdsr_fast.save(vdsr_fast.VDSR(depth=3, channels=4), w)
    assert w.stat().st_mode & 0o777 == 0o640
    (tmp_path / "dangling.png").symlink_to(tmp_path / "new.png")
    write_image(tmp_path / "dangling.png", arr)
    assert (read_image(tmp_path / "new.png") == arr).all() and (tmp_path / "new.png").stat().st_mode & 0o777 == default_file_mode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.png", "link.png", "new.png", "real.png", "w.safetensors"]

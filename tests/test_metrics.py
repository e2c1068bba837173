"""PSNR and SSIM (vdsr_fast.metrics, what `vdsr-fast eval` reports) against direct formulas."""

import math
from pathlib import Path

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


def test_known_values():
    """Identical images: inf dB and SSIM 1; one level off everywhere on uint8: 10 log10(255^2) = 48.13 dB."""
    a = torch.randint(0, 255, (32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert psnr(a + 1, a) == pytest.approx(48.1308036, abs=1e-6) == psnr((a + 1) / 255.0, a / 255.0)
    assert psnr(a.float(), a.double()) == math.inf  # float32 against float64: the same [0, 1] range


def test_ssim_on_exactly_one_window():
    """11x11 after the shave: one window position, the direct formula's value."""
    rng = np.random.default_rng(1)
    a, b = rng.random((13, 13)), rng.random((13, 13))
    assert ssim(torch.from_numpy(a), torch.from_numpy(b), shave=1) == pytest.approx(_ssim_direct(a[1:-1, 1:-1], b[1:-1, 1:-1], 1.0), abs=1e-12)


def test_ranges_that_differ_are_refused():
    """A float network output in [0, 1] against uint8 ground truth (was: scored with pred's range, a silently wrong
    number); with data_range= both are taken as they are."""
    gt = torch.full((16, 16), 100, dtype=torch.uint8)
    for f in (psnr, ssim):
        with pytest.raises(TypeError, match="value ranges differ"):
            f(gt.double() / 255, gt)
        with pytest.raises(TypeError, match="value ranges differ"):
            f(gt, gt.to(torch.uint16))
    assert psnr(gt.double() + 1, gt, data_range=255) == pytest.approx(48.1308036, abs=1e-6)
    with pytest.raises(ValueError, match="shave must be >= 0, got -1"):
        psnr(gt, gt, shave=-1)


# --- vdsr_fast.evaluate: the folders `vdsr-fast eval` reads --------------------------------------------


def _img(h=24, w=28, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c)).astype(np.uint8)


def _write(path, arr):
    from vdsr_fast.images import write_image

    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, arr)


@pytest.mark.parametrize("layout", ["selfexsr", "edsr", "lowercase", "uppercase_suffix", "mixed_suffix"])
def test_eval_reads_the_common_set_layouts(tmp_path, layout):
    """SelfExSR's image_SRF_2/ and EDSR's HR/ + LR_bicubic/X2/ (were: 'no images found'), *_hr/*_lr (was: the LR
    files scored as HR images too), .PNG, an LR file of another suffix (was: 'no LR file')."""
    from vdsr_fast.evaluate import evaluate

    hr, lr = _img(), _img(12, 14, seed=1)
    files = {"selfexsr": ("image_SRF_2/img_001_SRF_2_HR.png", "image_SRF_2/img_001_SRF_2_LR.png"),
             "edsr": ("HR/baby.png", "LR_bicubic/X2/babyx2.png"),
             "lowercase": ("baby_hr.png", "baby_lr.png"),
             "uppercase_suffix": ("baby_HR.PNG", "baby_LR.PNG"),
             "mixed_suffix": ("baby_HR.png", "baby_LR.bmp")}[layout]  # fmt: skip
    _write(tmp_path / files[0], hr)
    _write(tmp_path / files[1], lr)
    for lr_given in (False, True):
        r = evaluate(tmp_path, 2, lr_given=lr_given)
        assert r.n == 1 and r.images[0].name == Path(files[0]).stem and Path(r.folder) == (tmp_path / files[0]).parent
    assert r.images[0].bicubic_psnr < 20  # the given LR (random) was read, not a downscale of the HR


def test_eval_skips_hidden_files_and_subfolders(tmp_path):
    """A macOS ._ resource fork (was: ImageReadError, the whole run lost) and a folder named *.png are not images."""
    from vdsr_fast.evaluate import evaluate

    _write(tmp_path / "baby.png", _img())
    (tmp_path / "._baby.png").write_bytes(b"\0\5\26\7 resource fork")
    (tmp_path / "odd.png").mkdir()
    assert [i.name for i in evaluate(tmp_path, 2).images] == ["baby"]


def test_eval_lr_given_errors_name_the_file(tmp_path):
    from vdsr_fast.evaluate import evaluate

    _write(tmp_path / "a" / "baby.png", _img())
    with pytest.raises(FileNotFoundError, match="baby.png is not named \\*_HR"):
        evaluate(tmp_path / "a", 2, lr_given=True)
    _write(tmp_path / "b" / "baby_HR.png", _img(25, 29))
    with pytest.raises(FileNotFoundError, match="no LR file for .*baby_HR.png \\(expected .*baby_LR.png\\)"):
        evaluate(tmp_path / "b", 2, lr_given=True)
    _write(tmp_path / "b" / "baby_LR.png", _img(13, 15))  # from the uncropped 29x25 HR, rounded up
    with pytest.raises(ValueError, match=r"baby_LR.png is 15x13; its HR baby_HR.png, cropped to a multiple of 2 "
                                         r"\(28x24\), needs a 14x12 LR at x2"):
        evaluate(tmp_path / "b", 2, lr_given=True)
    with pytest.raises(FileNotFoundError, match="its subfolders: sub; pass the one with the HR images"):
        (tmp_path / "c" / "sub").mkdir(parents=True)
        evaluate(tmp_path / "c", 2)
    (tmp_path / "d" / "x2").mkdir(parents=True)
    (tmp_path / "d" / "X3").mkdir()
    with pytest.raises(FileNotFoundError, match="d: no HR images for x4: it has X3, x2 but no x4 or X4 or image_SRF_4 or HR$"):
        evaluate(tmp_path / "d", 4)


def test_eval_summary_fields(tmp_path):
    """The --json object's keys, as SetScore.summary documents them; protocol is a token."""
    from vdsr_fast.evaluate import evaluate

    _write(tmp_path / "x2" / "a_HR.png", _img())
    _write(tmp_path / "x2" / "a_LR.png", _img(12, 14, seed=1))
    for lr_given, protocol in ((False, "paper"), (True, "lr-given")):
        out = evaluate(tmp_path, 2, lr_given=lr_given).summary()
        assert set(out) == {"folder", "scale", "protocol", "n", "psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "seconds", "images"}
        assert out["protocol"] == protocol and out["psnr"] is None and out["seconds"] is None
        assert set(out["images"][0]) == {"name", "psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "seconds"}


def _interrupt_at_the_third_image(monkeypatch) -> None:
    """evaluate() gets a Ctrl-C while it scores its third image."""
    import vdsr_fast.evaluate as ev

    real, calls = ev._score, []

    def score(*a):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(ev, "_score", score)


def test_eval_ctrl_c_keeps_the_images_scored(tmp_path, monkeypatch, capsys):
    """Ctrl-C on the third of four images: the means of the first two in the message (what `vdsr-fast eval` prints)
    and as .partial (was: a bare KeyboardInterrupt, an hour of BSD100 lost); the progress bar shows them meanwhile."""
    import vdsr_fast.evaluate as ev

    for k in range(4):
        _write(tmp_path / f"img_{k}.png", _img(seed=k))
    _interrupt_at_the_third_image(monkeypatch)
    with pytest.raises(KeyboardInterrupt) as e:
        ev.evaluate(tmp_path, 2, progress=True)
    mean = np.mean([i.bicubic_psnr for i in e.value.partial.images])
    assert e.value.partial.n == 2 and str(e.value).startswith(f"2 of 4 images of {tmp_path} scored at x2; ")
    assert f"bicubic {mean:.2f} dB" in str(e.value)
    assert "eval x2" in capsys.readouterr().err


def test_ssim_of_a_batch_is_the_mean_over_its_images():
    """The mean SSIM map over the leading dims: for images of one size, the mean of their SSIMs (three images of
    different noise levels, so a median or a single image's value would differ)."""
    rng = np.random.default_rng(5)
    a = rng.random((3, 14, 15))
    b = np.clip(a + rng.normal(0, 1, a.shape) * np.array([0.02, 0.1, 0.3])[:, None, None], 0, 1)
    want = np.mean([_ssim_direct(a[i], b[i], 1.0) for i in range(3)])
    assert ssim(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(want, abs=1e-12)


def test_eval_scores_follow_the_protocol(tmp_path, tiny_model):
    """DESIGN.md §3 written out for one RGB image at x3 (37x41: cropped to 36x39): MATLAB's Y of the HR, MATLAB
    bicubic down and up (bicubic) and the network on that (VDSR), each rounded half up to 8 bits, PSNR and SSIM after
    shaving 3 pixels a border against the HR Y rounded the same way. The same float64 arithmetic: 1e-9."""
    from vdsr_fast import Engine, imresize, rgb_to_ycbcr
    from vdsr_fast.evaluate import evaluate

    s, arr = 3, _img(37, 41, seed=4)
    _write(tmp_path / "a.png", arr)
    engine = Engine(tiny_model, backend="torch", device="cpu")
    hr = rgb_to_ycbcr(torch.from_numpy(arr).permute(2, 0, 1).double() / 255)[0][:36, :39]
    bic = imresize(imresize(hr, 1 / s), s)
    sr = engine(bic.float()[None, None])[0, 0].double()
    u8 = lambda t: (t.clamp(0, 1) * 255 + 0.5).floor()  # noqa: E731
    gt = u8(hr)
    got = evaluate(tmp_path, s, engine).images[0]
    assert [got.bicubic_psnr, got.bicubic_ssim, got.psnr, got.ssim] == pytest.approx(
        [psnr(u8(bic), gt, shave=s, data_range=255), ssim(u8(bic), gt, shave=s, data_range=255),
         psnr(u8(sr), gt, shave=s, data_range=255), ssim(u8(sr), gt, shave=s, data_range=255)], abs=1e-9)  # fmt: skip


def test_eval_reads_16_bit_and_gray_alpha_images_as_their_luminance(tmp_path):
    """A 16-bit PNG is read on its own scale (v / 65535: the 8-bit image x 257 gives the same Y), a gray + alpha
    PNG as its gray channel (the alpha ignored)."""
    from vdsr_fast.evaluate import load_y

    rgb, ga = _img(9, 8, seed=2), _img(9, 8, c=2, seed=3)
    _write(tmp_path / "rgb8.png", rgb)
    _write(tmp_path / "rgb16.png", rgb.astype(np.uint16) * 257)
    _write(tmp_path / "ga.png", ga)
    torch.testing.assert_close(load_y(tmp_path / "rgb16.png"), load_y(tmp_path / "rgb8.png"), rtol=0, atol=1e-12)
    torch.testing.assert_close(load_y(tmp_path / "ga.png"), torch.from_numpy(ga[:, :, 0] / 255.0), rtol=0, atol=0)


@pytest.mark.parametrize("side, ok", [(15, False), (16, True)])
def test_eval_names_an_image_too_small_at_x2(tmp_path, side, ok):
    """At x2 the protocol needs 2 x 2 + 11 = 15 pixels a side after cropping to a multiple of 2, so 16: a 15x15
    image (cropped to 14) is refused naming the file, not by SSIM's own error."""
    from vdsr_fast.evaluate import evaluate

    _write(tmp_path / "small.png", _img(side, side, c=1, seed=side))
    if ok:
        assert evaluate(tmp_path, 2).n == 1
    else:
        with pytest.raises(ValueError, match=r"small.png: 15x15 is too small to score at x2.*\(at least 16x16\)"):
            evaluate(tmp_path, 2)


def test_refusals_at_the_edges():
    """1-D signals (no H, W), a shave that leaves nothing of the shorter side of a non-square image, integer types
    without a default range (documented: float, uint8 and uint16 only) and non-tensors."""
    x = torch.rand(12, 40)
    for f in (psnr, ssim):
        with pytest.raises(ValueError, match=r"expected images of shape \(..., H, W\), got \(30,\)"):
            f(torch.rand(30), torch.rand(30))
        with pytest.raises(ValueError, match=r"shave=6 leaves nothing of a \(12, 40\) image"):
            f(x, x, shave=6)
        with pytest.raises(TypeError, match="expected two tensors"):
            f(np.zeros((16, 16)), np.zeros((16, 16)))
    for dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.bool):
        with pytest.raises(TypeError, match=f"pass data_range= for {dtype} images"):
            psnr(torch.zeros(4, 4, dtype=dtype), torch.zeros(4, 4, dtype=dtype))


def test_ssim_of_anticorrelated_images_is_negative():
    """An image against its negative: the structure term (2 cov + C2) / (var + var + C2) is negative, and so is SSIM
    (the direct formula's value; a covariance taken as its magnitude would make it positive)."""
    rng = np.random.default_rng(7)
    a = rng.random((16, 17))
    want = _ssim_direct(a, 1 - a, 1.0)
    assert want < -0.5
    assert ssim(torch.from_numpy(a), torch.from_numpy(1 - a)) == pytest.approx(want, abs=1e-12)


def test_set_means_of_no_images_and_of_exact_images(tmp_path):
    """SetScore.mean: None for a set of no images (nothing scored yet); infinite when every image is reproduced
    exactly (flat images: bicubic gives them back), which summary() writes as None (JSON's null)."""
    from vdsr_fast.evaluate import SetScore, evaluate

    empty = SetScore("f", 2, False)
    assert empty.mean("psnr") is None and empty.mean("bicubic_psnr") is None and empty.summary()["n"] == 0
    for level in (40, 200):
        _write(tmp_path / f"flat{level}.png", np.full((20, 22, 3), level, np.uint8))
    r = evaluate(tmp_path, 2)
    assert [i.bicubic_psnr for i in r.images] == [math.inf, math.inf] and r.mean("bicubic_psnr") == math.inf
    assert r.summary()["bicubic_psnr"] is None and r.summary()["bicubic_ssim"] == pytest.approx(1.0, abs=1e-12)


def test_find_images_takes_the_first_set_subfolder_and_only_the_hr_images(tmp_path):
    """The subfolders in their documented order (x{s}, then image_SRF_{s}, then HR) and, where there are *_HR files,
    only those: SelfExSR's folders also hold each method's output (*_bicubic, *_SelfExSR), which are not ground
    truth. A stem ending in 'hr' without the underscore ('tahr') is no HR marker."""
    from vdsr_fast.evaluate import find_images

    for rel in ("x2/a_HR.png", "image_SRF_2/img_001_SRF_2_HR.png", "image_SRF_2/img_001_SRF_2_LR.png",
                "image_SRF_2/img_001_SRF_2_bicubic.png", "image_SRF_2/img_001_SRF_2_SelfExSR.png", "HR/baby.png",
                "plain/tahr.png", "plain/zebra.png"):  # fmt: skip
        _write(tmp_path / rel, _img(4, 4))
    names = lambda found: (found[0].name, [p.name for p in found[1]])  # noqa: E731
    assert names(find_images(tmp_path, 2)) == ("x2", ["a_HR.png"])
    assert names(find_images(tmp_path, 3)) == ("HR", ["baby.png"])
    for p in (tmp_path / "x2").iterdir():
        p.unlink()
    (tmp_path / "x2").rmdir()
    assert names(find_images(tmp_path, 2)) == ("image_SRF_2", ["img_001_SRF_2_HR.png"])
    assert names(find_images(tmp_path / "plain", 2)) == ("plain", ["tahr.png", "zebra.png"])


def test_lr_files_of_another_suffix_case_and_of_edsr_at_x3(tmp_path):
    """lr_file: NAME_LR.PNG beside NAME_HR.png (the suffix in either case), and EDSR's LR_bicubic/X3/NAMEx3.png for
    HR/NAME.png at x3."""
    from vdsr_fast.evaluate import lr_file

    for rel in ("a/baby_HR.png", "a/baby_LR.PNG", "HR/bird.png", "LR_bicubic/X2/birdx2.png", "LR_bicubic/X3/birdx3.png"):
        _write(tmp_path / rel, _img(4, 4))
    assert lr_file(tmp_path / "a" / "baby_HR.png", 2) == tmp_path / "a" / "baby_LR.PNG"
    assert lr_file(tmp_path / "HR" / "bird.png", 3) == tmp_path / "LR_bicubic" / "X3" / "birdx3.png"


def test_load_y_of_an_rgba_image_is_the_luminance_of_its_rgb(tmp_path):
    """RGBA: the alpha is ignored; Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255 (MATLAB rgb2ycbcr, R, G, B in
    [0, 1]), written out here. float64: 1e-12."""
    from vdsr_fast.evaluate import load_y

    rgba = _img(7, 9, c=4, seed=8)
    _write(tmp_path / "a.png", rgba)
    r, g, b = (rgba[..., i] / 255.0 for i in range(3))
    want = (16 + 65.481 * r + 128.553 * g + 24.966 * b) / 255
    np.testing.assert_allclose(load_y(tmp_path / "a.png").numpy(), want, rtol=0, atol=1e-12)


class _ConstantNet:
    """Stands in for an Engine: returns ``value`` everywhere, in float64."""

    device = torch.device("cpu")

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, x):
        return torch.full(x.shape, self.value, dtype=torch.float64)


def test_eval_rounds_the_network_output_half_up(tmp_path):
    """The network's Y' is rounded to 8 bits half up (MATLAB's im2uint8), not half to even: an output of exactly
    level 180.5 everywhere is level 181 (torch.round would give 180), and scored against a flat HR of level 181
    it is exact (PSNR inf); the out-of-range outputs 1.3 and -0.2 clip to 255 and 0."""
    from vdsr_fast.evaluate import evaluate

    assert (180.5 / 255) * 255 == 180.5  # the tie is exact in float64
    _write(tmp_path / "a.png", np.full((20, 20, 1), 181, np.uint8))
    got = evaluate(tmp_path, 2, _ConstantNet(180.5 / 255)).images[0]
    assert got.psnr == math.inf and got.ssim == pytest.approx(1.0, abs=1e-12)
    for level, value in ((255, 1.3), (0, -0.2)):
        _write(tmp_path / "a.png", np.full((20, 20, 1), level, np.uint8))
        assert evaluate(tmp_path, 2, _ConstantNet(value)).images[0].psnr == math.inf


def test_eval_with_a_network_reports_its_means_when_interrupted_and_on_the_bar(tmp_path, monkeypatch, tiny_model):
    """With an engine, Ctrl-C's message has VDSR's means before bicubic's, and the progress bar shows the running mean
    PSNR of VDSR (not of bicubic)."""
    import tqdm

    import vdsr_fast.evaluate as ev
    from vdsr_fast import Engine

    shown = []

    class Bar:  # records what the bar is given to show
        def __init__(self, *a, **k):
            pass

        def set_postfix_str(self, s, refresh=True):
            shown.append(s)

        def update(self, n=1):
            pass

        def close(self):
            pass

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    for k in range(3):
        _write(tmp_path / f"img_{k}.png", _img(seed=k))
    _interrupt_at_the_third_image(monkeypatch)
    with pytest.raises(KeyboardInterrupt) as e:
        ev.evaluate(tmp_path, 2, Engine(tiny_model, backend="torch", device="cpu"), progress=True)
    done = e.value.partial.images
    mean = lambda attr: np.mean([getattr(i, attr) for i in done])  # noqa: E731
    assert abs(mean("psnr") - mean("bicubic_psnr")) > 0.01  # the two columns can be told apart
    assert str(e.value).endswith(f"VDSR {mean('psnr'):.2f} dB / {mean('ssim'):.4f}, bicubic {mean('bicubic_psnr'):.2f} dB "
                                 f"/ {mean('bicubic_ssim'):.4f}")  # fmt: skip
    assert shown == [f"PSNR {done[0].psnr:.2f} dB", f"PSNR {mean('psnr'):.2f} dB"]


def test_eval_refuses_a_network_output_with_nan_or_inf(tmp_path):
    """A NaN in the network's output (an fp16/fp8 overflow) is a ValueError naming the image: clamped and rounded
    it scored as some level, and its NaN PSNR was dropped from the mean (every image NaN: a mean PSNR of inf)."""
    from vdsr_fast.evaluate import evaluate

    _write(tmp_path / "a.png", _img())
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"a.png: the network's output at x2 has 672 NaN or infinite values of 672"):
            evaluate(tmp_path, 2, _ConstantNet(bad))


def test_eval_checks_the_whole_set_before_the_network_runs(tmp_path, monkeypatch):
    """An image too small, a missing LR file or one of the wrong size, last in the set: refused before the first
    image is scored (was: after every image before it had run through the network)."""
    import vdsr_fast.evaluate as ev

    scored = []
    monkeypatch.setattr(ev, "_score", lambda *a: scored.append(a) or pytest.fail("scored before the set was checked"))
    for k in range(3):
        _write(tmp_path / "a" / f"img_{k}.png", _img(seed=k))
        _write(tmp_path / "b" / f"img_{k}_HR.png", _img(seed=k))
        _write(tmp_path / "b" / f"img_{k}_LR.png", _img(12, 14, seed=k))
    _write(tmp_path / "a" / "img_9.png", _img(14, 28))
    with pytest.raises(ValueError, match="img_9.png: 28x14 is too small to score at x2"):
        ev.evaluate(tmp_path / "a", 2)
    _write(tmp_path / "b" / "img_9_HR.png", _img())
    with pytest.raises(FileNotFoundError, match="no LR file for .*img_9_HR.png"):
        ev.evaluate(tmp_path / "b", 2, lr_given=True)
    _write(tmp_path / "b" / "img_9_LR.png", _img(13, 14))
    with pytest.raises(ValueError, match="img_9_LR.png is 14x13"):
        ev.evaluate(tmp_path / "b", 2, lr_given=True)
    assert scored == []


def test_eval_lr_given_reads_the_lr_as_its_hr_was_read_gray_or_colour(tmp_path):
    """A gray HR image's LR saved as RGB with equal channels (as OpenCV writes a gray image) is read as gray (was: its
    rgb2ycbcr Y, squeezed into [16, 235], a lower PSNR and no error); a colour LR of a gray HR is refused; a colour
    HR's gray LR is read as the colour image of equal channels, as the HR's Y is."""
    from vdsr_fast.evaluate import evaluate

    hr, lr = _img(c=1), _img(12, 14, c=1, seed=1)
    _write(tmp_path / "g" / "a_HR.png", hr)
    _write(tmp_path / "g" / "a_LR.png", lr)
    want = evaluate(tmp_path / "g", 2, lr_given=True).images[0]
    _write(tmp_path / "g" / "a_LR.png", np.repeat(lr, 3, axis=2))
    assert evaluate(tmp_path / "g", 2, lr_given=True).images[0] == want
    colour = np.repeat(lr, 3, axis=2)
    colour[0, 0, 1] ^= 1
    _write(tmp_path / "g" / "a_LR.png", colour)
    with pytest.raises(ValueError, match="a_LR.png: a colour image, read as the LR of a gray HR image"):
        evaluate(tmp_path / "g", 2, lr_given=True)
    _write(tmp_path / "c" / "a_HR.png", np.repeat(hr, 3, axis=2))
    _write(tmp_path / "c" / "a_LR.png", np.repeat(lr, 3, axis=2))
    want = evaluate(tmp_path / "c", 2, lr_given=True).images[0]
    _write(tmp_path / "c" / "a_LR.png", lr)
    assert evaluate(tmp_path / "c", 2, lr_given=True).images[0] == want


def test_eval_rows_of_files_sharing_a_stem_are_named_by_file(tmp_path):
    """a.png and a.bmp: two rows told apart by their file names (were: two rows named 'a'); other rows keep the stem."""
    from vdsr_fast.evaluate import evaluate

    for name, seed in (("a.png", 0), ("a.bmp", 1), ("b.png", 2)):
        _write(tmp_path / name, _img(seed=seed))
    assert [i.name for i in evaluate(tmp_path, 2).images] == ["a.bmp", "a.png", "b"]

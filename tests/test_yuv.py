"""vdsr_fast.upscale_yuv: a frame's Y'CbCr planes upscaled as the RGB pipeline would, without RGB."""

import numpy as np
import pytest
import torch

import vdsr_fast
from vdsr_fast import imresize, rgb_to_ycbcr, upscale, upscale_yuv
from vdsr_fast.yuv import MATRICES, bt601_y_from, studio_ycbcr


def _smooth(n, c, h, w, seed):
    t = torch.rand(n, c, h // 3 + 2, w // 3 + 2, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(t, size=(h, w), mode="bicubic", align_corners=True).clamp(0, 1)


def test_bt601_luma_from_another_matrix():
    """The network's input for BT.709/2020 video: the paper's Y = Y + a Cb + b Cr of that matrix."""
    rgb = torch.rand(3, 5, 7, dtype=torch.float64)
    y601 = rgb_to_ycbcr(rgb)[0].numpy() - 16 / 255
    assert bt601_y_from("bt601") is None
    for matrix in ("bt709", "bt2020", "smpte240m", "fcc"):
        ycc = np.einsum("ij,jhw->ihw", studio_ycbcr(*MATRICES[matrix]), rgb.numpy())
        a, b = bt601_y_from(matrix)
        np.testing.assert_allclose(ycc[0] + a * ycc[1] + b * ycc[2], y601, atol=1e-12)


@pytest.mark.parametrize("matrix", ["bt709", "bt2020", "bt601"])
def test_the_luma_is_the_rgb_pipelines_for_any_matrix(matrix):
    """On unrounded 4:4:4 planes of an in-gamut picture the output luma is RGB -> upscale() -> the matrix's, to the
    rounding (exact here); VDSR run on the video's own luma instead is off by up to 4 levels (BT.709, BT.2020)."""
    model = vdsr_fast.load()
    rgb = 0.2 + 0.6 * _smooth(1, 3, 24, 40, 5)
    want_rgb = upscale(rgb, 2, model=model, backend="torch")
    m = torch.from_numpy(studio_ycbcr(*MATRICES[matrix])).float()
    ycc = torch.einsum("ij,njhw->nihw", m, rgb) + torch.tensor([16, 128, 128]).view(1, 3, 1, 1) / 255
    planes = [(ycc[:, i : i + 1] * 255 * 256).round().to(torch.uint16) for i in range(3)]  # 16 bits: nearly unrounded
    want = (torch.einsum("j,njhw->nhw", m[0], want_rgb) + 16 / 255) * 255 * 256
    got = upscale_yuv(*planes, 2, model, matrix=matrix, bits=16, backend="torch")[0][:, 0].float()
    assert (got - want).abs().max() <= 256 * 0.05  # a twentieth of an 8-bit level
    if matrix != "bt601":
        off = upscale_yuv(*planes, 2, model, matrix="bt601", bits=16, backend="torch")[0][:, 0].float()
        assert (off - want).abs().max() >= 256 * 2


def test_shapes_subsampling_depths_and_ranges():
    """(H, W), (N, H, W) and (N, 1, H, W) planes; 4:2:0 of odd size stays 4:2:0 (ceil); 10-bit low-aligned and
    P010's high-aligned 16-bit samples agree; a full-range frame is the studio one mapped (to the rounding)."""
    model = vdsr_fast.load()
    g = torch.Generator().manual_seed(0)
    y = (16 + 219 * _smooth(2, 1, 25, 31, 1)).round().to(torch.uint8)
    u = (128 + 60 * (torch.rand(2, 1, 13, 16, generator=g) - 0.5)).round().to(torch.uint8)
    v = (128 + 60 * (torch.rand(2, 1, 13, 16, generator=g) - 0.5)).round().to(torch.uint8)
    Y, U, V = upscale_yuv(y, u, v, 2, model, matrix="bt709")
    assert (Y.shape, U.shape, V.shape, Y.dtype) == ((2, 1, 50, 62), (2, 1, 25, 31), (2, 1, 25, 31), torch.uint8)
    Y3, U3, _ = upscale_yuv(y[:, 0], u[:, 0], v[:, 0], 2, model, matrix="bt709")
    Y2, U2, _ = upscale_yuv(y[0, 0], u[0, 0], v[0, 0], 2, model, matrix="bt709")
    assert torch.equal(Y3, Y[:, 0]) and torch.equal(U3, U[:, 0]) and Y2.shape == (50, 62) and torch.equal(U2, U[0, 0])
    assert upscale_yuv(y, scale=1.5, model=model)[0].shape == (2, 1, 38, 47)  # gray; MATLAB's ceil
    y10, u10, v10 = ((p.to(torch.int32) * 4).to(torch.uint16) for p in (y, u, v))
    Y10 = upscale_yuv(y10, u10, v10, 2, model, matrix="bt709", bits=10)[0]
    p010 = [(p.to(torch.int32) * 64).to(torch.uint16) for p in (y10, u10, v10)]  # high-aligned
    Y16 = upscale_yuv(*p010, 2, model, matrix="bt709", bits=16)[0]
    assert (Y10.float() - Y16.float() / 64).abs().max() <= 0.51 and (Y10.float() / 4 - Y.float()).abs().max() <= 1
    full = [(p.float() - 16) * 255 / 219 if i == 0 else (p.float() - 128) * 255 / 224 + 128 for i, p in enumerate((y, u, v))]
    full = [p.round().clamp(0, 255).to(torch.uint8) for p in full]
    Yf = upscale_yuv(*full, 2, model, matrix="bt709", full_range=True)[0]
    assert ((Yf.float() * 219 / 255 + 16) - Y.float()).abs().mean() < 0.6


@pytest.mark.parametrize(("hw", "chw", "out_chw"), [
    ((8, 10), (8, 3), (16, 5)),  # 4:1:1 of a width not a multiple of 4 (ceil(10 / 4) = 3): was read as 3, (16, 7)
    ((9, 10), (3, 3), (5, 5)),  # 4:1:0 (yuv410p), both axes by 4
    ((8, 6), (8, 2), (16, 3)),  # 4:1:1 of 6: ceil(6 / 4) = 2, also ceil(6 / 3): the standard factor 4
    ((7, 5), (7, 3), (14, 5)),  # 4:2:2
    ((7, 5), (4, 5), (7, 10)),  # 4:4:0
    ((7, 5), (7, 5), (14, 10)),  # 4:4:4
    ((1, 8), (1, 4), (1, 8)),  # a one-row 4:2:0 frame: its row fits every factor, the columns' 2 decides (was 4:2:2)
    ((8, 2), (2, 1), (4, 1)),  # a two-column 4:1:0 frame: 1 column fits 2 and 4, the rows' 4 decides
])  # fmt: skip
def test_chroma_subsampling_of_any_size_is_kept(tiny_model, hw, chw, out_chw):
    """The chroma planes keep their subsampling (1, 2 or 4 per axis, rounded up as the formats round) at the
    output size."""
    y = torch.randint(16, 236, hw, dtype=torch.uint8)
    u, v = (torch.randint(16, 241, chw, dtype=torch.uint8) for _ in range(2))
    Y, U, V = upscale_yuv(y, u, v, 2, tiny_model)
    assert Y.shape == (2 * hw[0], 2 * hw[1]) and U.shape == V.shape == out_chw


def test_refusals():
    y = torch.zeros(4, 6, dtype=torch.uint8) + 100
    c = torch.zeros(2, 3, dtype=torch.uint8) + 128
    with pytest.raises(ValueError, match="matrix must be one of bt601, bt709"):
        upscale_yuv(y, c, c, matrix="rec709")
    with pytest.raises(ValueError, match="give both chroma planes"):
        upscale_yuv(y, c)
    with pytest.raises(ValueError, match="uint16 planes need bits="):
        upscale_yuv(y.to(torch.uint16))
    with pytest.raises(TypeError, match="must be uint8 or uint16 samples, got torch.float32"):
        upscale_yuv(y.float())
    with pytest.raises(ValueError, match="u and v differ in shape"):
        upscale_yuv(y, c, c[:1])
    y8 = torch.zeros(8, 8, dtype=torch.uint8) + 100
    for bad in ((3, 3), (5, 5), (16, 16), (4, 3)):  # no ceil(8 / f), f 1, 2, 4 (were resized by the nearest ratio)
        c8 = torch.zeros(bad, dtype=torch.uint8) + 128
        with pytest.raises(ValueError, match=rf"{bad[0]}x{bad[1]} \(rows x columns\) are no standard subsampling of the 8x8"):
            upscale_yuv(y8, c8, c8, 2)
    with pytest.raises(ValueError, match="u must have y's dtype, device and batch"):
        upscale_yuv(y, c.to(torch.uint16), c.to(torch.uint16))
    with pytest.raises(TypeError, match=r"out is upscale\(\)'s, for RGB frames"):
        upscale_yuv(y, c, c, out=torch.empty(8, 12, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint16 planes need bits="):
        upscale_yuv(y.to(torch.uint16), bits=10.5)
    for bad in ((0, 0), (9, 12), "ab", 5, (2.5, 3)):  # out of range (the luma output is 8x12), not a pair of ints
        with pytest.raises(ValueError, match="chroma_size"):
            upscale_yuv(y, c, c, chroma_size=bad)
    with pytest.raises(ValueError, match="chroma_size= for a gray frame"):
        upscale_yuv(y, chroma_size=(4, 6))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_the_gpu_as_on_the_cpu():
    """A 1080p 4:2:0 frame on the GPU (default backend and dtype, on a side stream) against the CPU's fp32 PyTorch
    reference: within a level or two (the fast backends store fp16 activations)."""
    model = vdsr_fast.load()
    for dtype, bits, unit in ((torch.uint8, 8, 1), (torch.uint16, 10, 4)):  # 10-bit samples in uint16
        y = (unit * (16 + 219 * _smooth(1, 1, 540, 960, 2))).round().to(torch.int32).to(dtype)
        u, v = ((unit * (16 + 224 * _smooth(1, 1, 270, 480, s))).round().to(torch.int32).to(dtype) for s in (3, 4))
        want = upscale_yuv(y, u, v, 2, model, matrix="bt709", bits=bits, backend="torch")
        side = torch.cuda.Stream()
        got = upscale_yuv(y.cuda(), u.cuda(), v.cuda(), 2, model, matrix="bt709", bits=bits, stream=side)
        side.synchronize()
        for g, w in zip(got, want, strict=True):
            d = (g.cpu().float() - w.float()).abs() / unit
            assert g.dtype == dtype and d.max() <= 2 and d.mean() < 0.05


def test_planes_are_upscale_and_bicubic_of_the_samples_rounded(tiny_model):
    """BT.601 studio-range planes (no matrix change): the luma is upscale() of y / 255 rounded to the nearest level
    (half up), each chroma plane MATLAB's bicubic of c / 255 by the luma's factors (38/25, 47/31), cut to
    ceil(H / 2) x ceil(W / 2) and rounded: 4:2:0 of odd size at 1.5x gives 19x24 chroma of a 38x47 luma (resized to
    19x24 by size, the chroma was stretched by 19/13, not the luma's 38/25); 4:2:2 stays 4:2:2 (25x16 chroma of a
    25x31 luma: 50x31 at 2x). Chroma against float64: half a level plus float32's resize error (1e-3 allowed)."""
    g = torch.Generator().manual_seed(3)
    y = torch.randint(16, 236, (2, 1, 25, 31), generator=g).to(torch.uint8)
    u, v = (torch.randint(16, 241, (2, 1, 13, 16), generator=g).to(torch.uint8) for _ in range(2))
    Y, U, V = upscale_yuv(y, u, v, 1.5, tiny_model)
    assert Y.shape == (2, 1, 38, 47) and U.shape == V.shape == (2, 1, 19, 24) and U.dtype == torch.uint8
    want = upscale(y.float() / 255, model=tiny_model, size=(38, 47))  # the same float32 call upscale_yuv makes
    assert torch.equal(Y, (want * 255 + 0.5).floor().clamp(0, 255).to(torch.uint8))  # half up, as upscale() rounds
    for got, c in ((U, u), (V, v)):
        ref = (imresize(c.double() / 255, scale=(38 / 25, 47 / 31))[..., :19, :24] * 255).clamp(0, 255)
        assert (got.double() - ref).abs().max() <= 0.5 + 1e-3
    u422, v422 = u.repeat_interleave(2, dim=2)[:, :, :25], v.repeat_interleave(2, dim=2)[:, :, :25]  # 25x16 chroma
    assert [tuple(p.shape[-2:]) for p in upscale_yuv(y, u422, v422, 2, tiny_model)] == [(50, 62), (50, 31), (50, 31)]


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
def test_subsampled_chroma_stays_where_the_luma_is_at_odd_sizes(tiny_model, monkeypatch, matrix):
    """4:2:0 of an odd 9 wide has 5 chroma samples: the chroma is resized by the luma's factor (2) on its own grid
    and cut, so one luma column less changes no chroma sample left of it (resized to 9 by size, it was stretched by
    1.8: a 16-level shift). For BT.709 the chroma term added to the network's input is resized so too (x2 on the
    chroma grid, cut to the luma's 15x21): the input the network gets, captured."""
    import vdsr_fast.api

    g = torch.Generator().manual_seed(9)
    y = torch.randint(16, 236, (1, 1, 8, 10), generator=g).to(torch.uint8)
    u, v = (torch.randint(16, 241, (1, 1, 4, 5), generator=g).to(torch.uint8) for _ in range(2))
    _, U10, V10 = upscale_yuv(y, u, v, 2, tiny_model, matrix=matrix)
    _, U9, V9 = upscale_yuv(y[..., :9], u, v, 2, tiny_model, matrix=matrix)
    assert U9.shape[-1] == 9 and torch.equal(U9, U10[..., :9]) and torch.equal(V9, V10[..., :9])
    if matrix == "bt601":
        return
    seen = []
    real = vdsr_fast.api.upscale
    monkeypatch.setattr(vdsr_fast.api, "upscale", lambda x, *a, **k: seen.append(x.clone()) or real(x, *a, **k))
    y = torch.randint(16, 236, (1, 1, 15, 21), generator=g).to(torch.uint8)
    u, v = (torch.randint(16, 241, (1, 1, 8, 11), generator=g).to(torch.uint8) for _ in range(2))
    upscale_yuv(y, u, v, 2, tiny_model, matrix=matrix)
    a, b = bt601_y_from(matrix)
    term = imresize((a * (u.float() - 128) + b * (v.float() - 128)) / 255, scale=2)[..., :15, :21]
    torch.testing.assert_close(seen[0], y.float() / 255 + term, rtol=0, atol=1e-6)


def _bt601_y_from_the_standard(kr: float, kb: float) -> tuple[float, float]:
    """d(BT.601 studio Y) / d(Cb), d(Cr) of a picture given in studio Y'CbCr with Kr, Kb, from the standards'
    equations: E'R = E'Y + 2 (1 - Kr) E'Cr, E'B = E'Y + 2 (1 - Kb) E'Cb, E'G = (E'Y - Kr E'R - Kb E'B) / (1 - Kr - Kb),
    C = 128 + 224 E'C, and Y601 = 16 + 219 (0.299 E'R + 0.587 E'G + 0.114 E'B)."""
    kg = 1 - kr - kb
    a = 219 / 224 * (0.587 * (-kb * 2 * (1 - kb) / kg) + 0.114 * 2 * (1 - kb))
    b = 219 / 224 * (0.299 * 2 * (1 - kr) + 0.587 * (-kr * 2 * (1 - kr) / kg))
    return a, b


@pytest.mark.parametrize("matrix, kr, kb", [("bt709", 0.2126, 0.0722), ("bt2020", 0.2627, 0.0593),
                                            ("smpte240m", 0.212, 0.087), ("fcc", 0.30, 0.11)])  # fmt: skip
def test_bt601_luma_coefficients_are_the_standards(matrix, kr, kb):
    """bt601_y_from's (a, b) against the standards' equations written out, with Kr and Kb as ITU-R BT.709,
    BT.2020, SMPTE 240M and FCC 73.682 give them (not read from MATRICES); BT.709's are the docstring's 0.0993 and
    0.1917. float64 throughout: 1e-12."""
    want = _bt601_y_from_the_standard(kr, kb)
    assert bt601_y_from(matrix) == pytest.approx(want, abs=1e-12)
    if matrix == "bt709":
        assert want == pytest.approx((0.0993, 0.1917), abs=5e-5)


def test_a_full_range_frame_gets_the_rgb_pipelines_luma():
    """Full-range BT.709 (JPEG-style levels, 16 bits so nearly unrounded), planes written out from the standard: the
    output luma is RGB -> upscale() -> full-range BT.709, as for studio range (to a twentieth of an 8-bit level). The
    picture stays in gamut through the network, so the RGB pipeline's clamp never acts."""
    kr, kb = 0.2126, 0.0722

    def ycbcr(c):  # E'Y, E'Cb, E'Cr
        r, g, b = (c[:, i : i + 1].double() for i in range(3))
        e_y = kr * r + (1 - kr - kb) * g + kb * b
        return e_y, (b - e_y) / (2 * (1 - kb)), (r - e_y) / (2 * (1 - kr))

    model = vdsr_fast.load()
    rgb = 0.3 + 0.4 * _smooth(1, 3, 16, 24, 6)
    want_rgb = upscale(rgb, 2, model, backend="torch")
    assert 0 < want_rgb.min() and want_rgb.max() < 1
    e = ycbcr(rgb)
    planes = [(p * 65535 + off).round().to(torch.int32).to(torch.uint16) for p, off in zip(e, (0, 32768, 32768))]
    got = upscale_yuv(*planes, 2, model, matrix="bt709", full_range=True, bits=16, backend="torch")[0]
    want = ycbcr(want_rgb)[0] * 65535
    assert (got.to(torch.int32).double() - want).abs().max() <= 256 * 0.05


def test_refusals_of_shapes_batches_bit_depths_and_rgb_options():
    """A 4-D plane of several channels (an RGB batch passed as y), an empty plane, bits= that contradict the samples
    (uint8 with 10; uint16 with 8), chroma of another batch size, and each of upscale()'s RGB-only options."""
    y = torch.zeros(2, 4, 6, dtype=torch.uint8) + 100
    c = torch.zeros(2, 2, 3, dtype=torch.uint8) + 128
    with pytest.raises(ValueError, match=r"y must be \(H, W\), \(N, H, W\) or \(N, 1, H, W\), got shape \(1, 3, 4, 6\)"):
        upscale_yuv(torch.zeros(1, 3, 4, 6, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"y is empty \(shape \(0, 6\)\)"):
        upscale_yuv(torch.zeros(0, 6, dtype=torch.uint8), scale=2)
    with pytest.raises(ValueError, match="uint8 planes have 8 bits, got bits=10"):
        upscale_yuv(y, c, c, 2, bits=10)
    with pytest.raises(ValueError, match=r"uint16 planes need bits= \(9 to 16\)"):
        upscale_yuv(y.to(torch.uint16), scale=2, bits=8)
    with pytest.raises(ValueError, match="u must have y's dtype, device and batch"):
        upscale_yuv(y, c[:1], c[:1], 2)
    for option, value in (("layout", "nchw"), ("fused_color", False), ("channel_order", "rgb"), ("progress", False)):
        with pytest.raises(TypeError, match=rf"{option} is upscale\(\)'s, for RGB frames"):
            upscale_yuv(y, c, c, 2, **{option: value})
    with pytest.raises(TypeError, match=r"out, progress are upscale\(\)'s"):
        upscale_yuv(y, c, c, 2, out=None, progress=False)


@pytest.mark.parametrize("chroma_size", [(16, 20), (5, 7)])
def test_chroma_size_sets_the_chroma_planes_size(tiny_model, chroma_size):
    """chroma_size= as large as the luma output (4:2:0 in, 4:4:4 out) or smaller than the default: each chroma plane
    is MATLAB's bicubic of c / 255 to that size, rounded (half a level plus float32's error, 1e-3, allowed)."""
    g = torch.Generator().manual_seed(4)
    y = torch.randint(16, 236, (1, 1, 8, 10), generator=g).to(torch.uint8)
    u, v = (torch.randint(16, 241, (1, 1, 4, 5), generator=g).to(torch.uint8) for _ in range(2))
    Y, U, V = upscale_yuv(y, u, v, 2, tiny_model, chroma_size=chroma_size)
    assert Y.shape == (1, 1, 16, 20) and U.shape == V.shape == (1, 1, *chroma_size)
    for got, c in ((U, u), (V, v)):
        ref = (imresize(c.double() / 255, size=chroma_size) * 255).clamp(0, 255)
        assert (got.double() - ref).abs().max() <= 0.5 + 1e-3


def _constant_residual_model(level: float) -> vdsr_fast.VDSR:
    """A VDSR whose residual is ``level / 255`` everywhere: zero weights, the last bias."""
    m = vdsr_fast.VDSR(depth=3, channels=2)
    with torch.no_grad():
        for conv in m.layers:
            conv.weight.zero_()
            conv.bias.zero_()
        m.layers[-1].bias.fill_(level / 255)
    return m


@pytest.mark.parametrize("level, want", [(2.5, 3), (3.5, 4), (-7.0, 0), (300.0, 255)])
def test_output_levels_are_rounded_half_up_and_clipped(level, want):
    """A black frame and a network adding exactly `level` 8-bit levels (k + 0.5 is exact in float32 here): the output
    is floor(level + 0.5) clipped to 0..255, so 2.5 gives 3 (torch.round's half to even would give 2), as upscale()
    rounds the same gray frame."""
    model = _constant_residual_model(level)
    y = torch.zeros(1, 1, 4, 6, dtype=torch.uint8)
    got = upscale_yuv(y, scale=2, model=model, backend="torch")[0]
    assert got.unique().tolist() == [want]
    assert torch.equal(got, upscale(y, 2, model, backend="torch"))


@pytest.mark.parametrize("matrix", ["bt709", "bt2020"])
def test_the_chroma_term_is_taken_off_as_it_was_added_at_any_size(matrix):
    """With a network whose residual is zero the output luma is the luma's own bicubic upscale whatever the matrix:
    the chroma term a Cb + b Cr added to the network's input is taken off again resized as upscale() resizes it (at
    the network's scale, then to the size asked), here at 2.5x (30x50 from 12x20). 16-bit samples: the two runs'
    float32 rounding differs by at most a level."""
    model = _constant_residual_model(0.0)
    g = torch.Generator().manual_seed(6)
    y = torch.randint(20000, 45000, (1, 1, 12, 20), generator=g).to(torch.int32).to(torch.uint16)
    u, v = (torch.randint(24000, 41000, (1, 1, 6, 10), generator=g).to(torch.int32).to(torch.uint16) for _ in range(2))
    got = upscale_yuv(y, u, v, model=model, size=(30, 50), matrix=matrix, bits=16, backend="torch")[0]
    gray = upscale_yuv(y, model=model, size=(30, 50), bits=16, backend="torch")[0]
    assert (got.to(torch.int32) - gray.to(torch.int32)).abs().max() <= 1

"""``upscale(fused_color=True)``: the colour pipeline around the network as two Triton kernels
(vdsr_fast/kernels/triton/color.py) against the PyTorch operations they replace.

The kernels promise the PyTorch pipeline's fp32 arithmetic in its order, so the checks are bit for bit: the
upscaled planes against ``rgb_to_ycbcr`` + the windowed MATLAB bicubic (:class:`vdsr_fast.tiling.Window`) of the
same scaled input, the finished frame against ``ycbcr_to_rgb`` + ``_from_float``. Two documented exceptions:
8/16-bit inputs are scaled by the fp32 reciprocal of 255 / 65535 (PyTorch's CUDA division by a scalar; its CPU
division rounds once more or less: a 16-bit frame may then differ by one level after the network), and
bfloat16 outputs are off by one bf16 rounding in Triton's CPU interpreter (its fp32 -> bf16 conversion
truncates; a GPU rounds to nearest even). Without a GPU these run in Triton's interpreter (tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch
from equivalence import random_vdsr, triton_device

from vdsr_fast import api, tiling, upscale
from vdsr_fast.imaging import rgb_to_ycbcr, ycbcr_to_rgb


@pytest.fixture(scope="module")
def device():
    return triton_device()


def _frame(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.rand(shape, generator=g).to(dtype).to(device)
    top = 256 if dtype == torch.uint8 else 65536
    return torch.randint(0, top, shape, generator=g).to(dtype).to(device)


def _scaled(x: torch.Tensor) -> torch.Tensor:
    """The kernels' input scaling: as api._to_float, with PyTorch's CUDA reciprocal for 8/16-bit pixels."""
    levels = {torch.uint8: 255.0, torch.uint16: 65535.0}.get(x.dtype)
    if levels is None:
        return x.float()
    return x.float() * (torch.tensor(1.0) / torch.tensor(levels)).item()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.float16, torch.float32])
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("scale, tile", [(2, None), (3, (5, 7)), (4, (9, 6))])
def test_upscale_planes_equal_the_pytorch_pipeline(device, dtype, channels, scale, tile):
    """Whole frames and the windows of a tile plan (interior and border windows, LR slices of NHWC views); the
    whole frame with Window.taps as they come (int64 indices), the tiles with window_taps' cached int32 ones."""
    from vdsr_fast.kernels.triton.color import upscale_planes, window_taps

    n, h, w = 2, 6, 7
    batch = _frame((n, h, w, channels), dtype, device).permute(0, 3, 1, 2)  # NHWC memory, as decoders hand out
    H, W = h * scale, w * scale
    plan = [(0, H, 0, W)] if tile is None else tiling.tile_plan(H, W, tile)
    for r0, r1, c0, c1 in plan:
        rows, cols = tiling.Window(h, scale, r0, r1, 3), tiling.Window(w, scale, c0, c1, 3)
        x = batch[:, :, rows.lr[0] : rows.lr[1], cols.lr[0] : cols.lr[1]]
        taps = (lambda win: win.taps(device, torch.float32)) if tile is None else (lambda win: window_taps(win, device))
        y, cc = upscale_planes(x, *taps(rows), *taps(cols))
        ref = _scaled(x) if channels == 1 else rgb_to_ycbcr(_scaled(x))
        ref = cols.resize(rows.resize(ref, 2), 3)
        assert y.shape == (n, 1, *ref.shape[-2:]) and y.dtype == torch.float32
        torch.testing.assert_close(y, ref[:, :1], rtol=0, atol=0)
        if channels == 1:
            assert cc is None
        else:
            torch.testing.assert_close(cc, ref[:, 1:], rtol=0, atol=0)


def test_window_taps_are_the_window_tables_made_once(device):
    from vdsr_fast.kernels.triton.color import window_taps

    for start, stop in [(0, 42), (10, 25), (30, 42)]:
        win = tiling.Window(14, 3, start, stop, 4)
        w, idx = window_taps(win, device)
        w_ref, idx_ref = win.taps(device, torch.float32)
        assert w.is_contiguous() and idx.is_contiguous() and idx.dtype == torch.int32
        assert torch.equal(w, w_ref) and torch.equal(idx.long(), idx_ref)
        again = window_taps(tiling.Window(14, 3, start, stop, 4), device)  # a new Window of the same geometry
        assert again[0] is w and again[1] is idx


def test_cached_tables_are_made_on_the_host_and_recorded_on_each_stream_that_reads_them(device, monkeypatch):
    """The windows' tap tables are cached on the device and read by frames on any stream: made on the host and
    copied (made there with launches on one stream, another stream's frame could read them before those ran), and
    recorded on the current stream at every use, from both caches (dropped when full while a stream's work still
    read them, their memory could go to that stream's next tensor)."""
    from vdsr_fast import imaging
    from vdsr_fast.kernels.triton import color

    class Table:
        is_cuda, device = True, "cuda:1"

        def __init__(self):
            self.streams = []

        def record_stream(self, stream):
            self.streams.append(stream)

    tables = (Table(), Table())
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "current_stream", lambda dev=None: f"current stream of {dev}")
        assert imaging.on_this_stream(tables) is tables
    assert [t.streams for t in tables] == [["current stream of cuda:1"]] * 2

    made_on, recorded = [], {color: [], imaging: []}
    real_taps = tiling.Window.taps
    monkeypatch.setattr(tiling.Window, "taps", lambda self, dev, dt, rows=None: made_on.append(dev) or real_taps(self, dev, dt, rows))
    for module, calls in recorded.items():
        monkeypatch.setattr(module, "on_this_stream", lambda t, calls=calls: calls.append(len(t)) or t)
    color._TAPS.clear()
    win = tiling.Window(13, 2, 4, 20, 3)
    on = torch.empty(0, device=device).device  # a tensor's device has an index (cuda:0) that triton_device()'s lacks
    for _ in range(2):  # a miss, then a hit
        w, idx = color.window_taps(win, device)
        assert w.device == idx.device == on
    assert made_on == [torch.device("cpu")] and recorded[color] == [2, 2]
    recorded[imaging].clear()
    imaging._device_cache.clear()
    for _ in range(2):
        imaging._contributions_on(13, 26, 2.0, True, device, torch.float32)
    assert recorded[imaging] == [2, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: frames on two streams")
def test_two_streams_upscale_the_same_geometry_right_from_the_first_frame():
    """A frame on stream s2 straight after the first frame of its geometry on a busy stream s1: s2 reads the tap
    tables s1's call cached (made with launches on s1, they would wait behind its work). s1's memory pool is filled
    with zeros first, so tables read before they are written give a wrong frame (not an out-of-bounds gather)."""
    from vdsr_fast.kernels.triton import color

    model = _model().cuda()
    img = _frame((1, 20, 24, 3), torch.uint8, torch.device("cuda"), seed=7)
    ref = upscale(img, 2, model, backend="torch", layout="NHWC", fused_color=True)  # warms all but the tables
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    for _ in range(3):
        color._TAPS.clear()
        with torch.cuda.stream(s1):
            junk = [torch.zeros(n, device="cuda") for n in (16, 64, 256, 1024, 4096) for _ in range(8)]
            del junk
            torch.cuda._sleep(200_000_000)
        a = upscale(img, 2, model, backend="torch", layout="NHWC", fused_color=True, stream=s1)
        b = upscale(img, 2, model, backend="torch", layout="NHWC", fused_color=True, stream=s2)
        torch.cuda.synchronize()
        torch.testing.assert_close(a, ref, rtol=0, atol=0)
        torch.testing.assert_close(b, ref, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels", [3, 1])
def test_finish_frame_equals_the_pytorch_pipeline(device, dtype, channels):
    """Out-of-range values (clamped), NaN (kept in floats), a strided NHWC output written in place and nowhere
    else (poisoned first)."""
    from vdsr_fast.kernels.triton.color import finish_frame

    g = torch.Generator().manual_seed(1)
    n, th, tw = 2, 5, 9
    y = (torch.rand((n, 1, th + 2, tw + 3), generator=g) * 1.4 - 0.2).to(device)[:, :, 1:-1, 2:-1]  # a view
    cc = (torch.rand((n, 2, th, tw), generator=g) * 1.2 - 0.1).to(device) if channels == 3 else None
    if dtype.is_floating_point:  # NaN stays NaN (an integer output of NaN is undefined, in PyTorch too)
        y[0, 0, 0, 0] = float("nan")
    ycc = y if cc is None else torch.cat([y, cc], dim=1)
    ref = api._from_float(ycc if cc is None else ycbcr_to_rgb(ycc), dtype)
    poison = 7 if not dtype.is_floating_point else -3.0
    frame = torch.full((n, th + 1, tw, channels + 1), poison, dtype=dtype, device=device)
    out = frame[:, 1:, :, :channels].permute(0, 3, 1, 2)  # an NHWC tile of a larger frame
    assert finish_frame(y, cc, out) is out
    got = out.clone()
    if dtype.is_floating_point:
        assert got[0, :, 0, 0].isnan().all() and ref[0, :, 0, 0].isnan().all()
        got[0, :, 0, 0] = ref[0, :, 0, 0] = 0
    if dtype == torch.bfloat16 and device.type == "cpu":  # the interpreter truncates fp32 -> bf16 (a GPU rounds)
        torch.testing.assert_close(got.float(), ref.float(), rtol=2**-7, atol=0)
    else:
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert (frame[:, 0] == poison).all() and (frame[..., channels] == poison).all()  # nothing else written


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16])
def test_finish_frame_rounds_exact_halves_up(device, dtype):
    """Values whose fp32 ``v * levels`` is exactly k + 0.5 (plus their fp32 neighbours) round up, as MATLAB's
    im2uint8 (``api._from_float``: floor(v * levels + 0.5)); random values almost never land on a half, so an
    offset a hair under 0.5, or round-half-to-even, would pass the random tests. Bit for bit (atol 0): the
    kernel's products and sums are PyTorch's fp32 ones."""
    from vdsr_fast.kernels.triton.color import finish_frame

    levels = 255 if dtype == torch.uint8 else 65535
    k = torch.arange(levels) if dtype == torch.uint8 else torch.randint(0, levels, (600,), generator=torch.Generator().manual_seed(2))
    v = ((k.double() + 0.5) / levels).float()
    v = torch.cat([v, v.nextafter(torch.tensor(2.0)), v.nextafter(torch.tensor(-1.0))])
    halves = v * levels + 0.5 == (v * levels + 0.5).floor()
    assert halves.sum() >= 100  # many exact halves: the case under test
    y = v[: v.numel() // 4 * 4].reshape(1, 1, 4, -1).to(device)
    out = torch.zeros(y.shape, dtype=dtype, device=device)
    finish_frame(y, None, out)
    torch.testing.assert_close(out, api._from_float(y, dtype), rtol=0, atol=0)


def _model():
    return random_vdsr(5, 16, seed=0)


@pytest.mark.parametrize(
    "shape, dtype, layout, scale, tile",
    [((1, 9, 11, 3), torch.uint8, "NHWC", 2, None), ((2, 3, 7, 6), torch.float32, "NCHW", 3, None),
     ((1, 10, 12, 3), torch.uint8, "NHWC", 2, 9), ((1, 1, 6, 8), torch.uint16, "NCHW", 2, None),
     ((8, 7), torch.float32, None, 4, None)],
)  # fmt: skip
def test_upscale_fused_color_matches_the_pytorch_pipeline(device, shape, dtype, layout, scale, tile):
    """Through upscale(): whole frames, a tiled frame, a Y plane; the same network (the PyTorch reference
    engine) either way, so the frames agree bit for bit -- but for 8/16-bit frames on the CPU, where PyTorch
    divides by 255 / 65535 and the kernel multiplies by the reciprocal as PyTorch's CUDA kernels do: a pixel
    whose network output lies that close to a rounding boundary may then be one level apart."""
    model = _model().to(device)
    img = _frame(shape, dtype, device, seed=3)
    kw = dict(model=model, backend="torch", layout=layout, tile=tile)
    ref = upscale(img, scale, **kw)
    got = upscale(img, scale, fused_color=True, **kw)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    diff = (got.double() - ref.double()).abs()
    if device.type == "cuda" or dtype.is_floating_point:
        assert diff.max() == 0
    else:
        assert diff.max() <= 1 and (diff > 0).double().mean() < 0.05, f"{int((diff > 0).sum())} of {diff.numel()}"


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.float32, torch.float16])
def test_default_fuses_on_a_gpu_only(device, dtype, monkeypatch):
    """fused_color=None (the default) takes the fused kernels for uint8, uint16 and float32 frames on a GPU, where
    they give the PyTorch pipeline's bits; on the CPU (Triton's interpreter) and for other dtypes the PyTorch
    operations."""
    model = _model().to(device)
    img = _frame((1, 9, 11, 3), dtype, device, seed=5)
    ref = upscale(img, 2, model, backend="torch", layout="NHWC", fused_color=False)
    calls = []
    real = api._run_window_fused
    monkeypatch.setattr(api, "_run_window_fused", lambda *a: calls.append(1) or real(*a))
    got = upscale(img, 2, model, backend="torch", layout="NHWC")
    assert bool(calls) == (device.type == "cuda" and dtype != torch.float16)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_fused_color_falls_back_for_rgba_and_float64_and_refuses_without_triton(device, monkeypatch):
    model = _model().to(device)
    for img in (_frame((1, 4, 5, 6), torch.float32, device), _frame((1, 3, 5, 6), torch.float64, device)):
        ref = upscale(img, 2, model, backend="torch")
        torch.testing.assert_close(upscale(img, 2, model, backend="torch", fused_color=True), ref, rtol=0, atol=0)
    monkeypatch.setattr(api, "_why_unavailable", lambda name, dev: "no Triton here")
    with pytest.raises(ValueError, match="fused_color=True needs Triton on this device: no Triton here"):
        upscale(_frame((1, 3, 5, 6), torch.uint8, device), 2, model, backend="torch", fused_color=True)


# --- writes at the edges of the batch (a mutation audit of the kernels)
@pytest.mark.parametrize("channels", [3, 1])
def test_finish_frame_writes_nothing_past_the_batch(device, channels):
    """The output tile is the first N images of a larger frame batch (poisoned): a pixel slot past N * TH * TW that is
    not masked writes into image N. Bit for bit (atol 0) as test_finish_frame_equals_the_pytorch_pipeline: the
    kernel's products and sums are PyTorch's fp32 ones."""
    from vdsr_fast.kernels.triton.color import finish_frame

    g = torch.Generator().manual_seed(4)
    n, th, tw = 2, 5, 9
    y = torch.rand((n, 1, th, tw), generator=g).to(device)
    cc = torch.rand((n, 2, th, tw), generator=g).to(device) if channels == 3 else None
    frame = torch.full((n + 1, channels, th, tw), 7, dtype=torch.uint8, device=device)
    out = frame[:n]
    finish_frame(y, cc, out)
    ref = api._from_float(y if cc is None else ycbcr_to_rgb(torch.cat([y, cc], dim=1)), torch.uint8)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert (frame[n] == 7).all(), "wrote past the batch"


def test_upscale_planes_write_nothing_past_their_planes(device, monkeypatch):
    """upscale_planes' Y and CbCr planes allocated (torch.empty) as the first N images of NaN buffers one image
    larger: a pixel slot past N * OH * OW that is not masked writes into image N. Bit for bit (atol 0) as
    test_upscale_planes_equal_the_pytorch_pipeline."""
    from vdsr_fast.kernels.triton.color import upscale_planes

    n, h, w, scale = 2, 6, 7, 2
    x = _frame((n, h, w, 3), torch.uint8, device).permute(0, 3, 1, 2)
    rows, cols = tiling.Window(h, scale, 0, h * scale, 3), tiling.Window(w, scale, 0, w * scale, 3)
    bigs, real_empty = [], torch.empty

    def empty(shape, **kw):
        big = torch.full((shape[0] + 1, *shape[1:]), float("nan"), **kw)
        bigs.append(big)
        return big[: shape[0]]

    taps = [*rows.taps(device, torch.float32), *cols.taps(device, torch.float32)]
    monkeypatch.setattr(torch, "empty", empty)
    y, cc = upscale_planes(x, *taps)
    monkeypatch.setattr(torch, "empty", real_empty)
    assert len(bigs) == 2 and all(big[n].isnan().all() for big in bigs), "wrote past the batch"
    ref = cols.resize(rows.resize(rgb_to_ycbcr(_scaled(x)), 2), 3)
    torch.testing.assert_close(y, ref[:, :1], rtol=0, atol=0)
    torch.testing.assert_close(cc, ref[:, 1:], rtol=0, atol=0)

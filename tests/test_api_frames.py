"""upscale() for video pipelines: frame conventions (layout=), out=, stream=, exact tiling (tile=/max_memory=)."""

import numpy as np
import pytest
import torch

from vdsr_fast import VDSR, upscale
from vdsr_fast.tiling import Window, receptive_radius, tile_plan

# --- conventions -------------------------------------------------------------------------------------


def _u8(*shape):
    return torch.randint(0, 256, shape, dtype=torch.uint8)


def test_uint8_nhwc_is_inferred_and_returned(tiny_model):
    x = _u8(2, 6, 5, 3)  # (N, H, W, 3) as decoders hand it out
    out = upscale(x, 2, tiny_model)
    assert out.shape == (2, 12, 10, 3) and out.dtype == torch.uint8
    ref = upscale(x.permute(0, 3, 1, 2).contiguous(), 2, tiny_model)
    assert torch.equal(out, ref.permute(0, 2, 3, 1))
    assert torch.equal(upscale(x[0], 2, tiny_model), out[0])  # (H, W, 3)
    assert torch.equal(upscale(x, 2, tiny_model, layout="NHWC"), out)


def test_float_nhwc_needs_layout(tiny_model):
    x = torch.rand(1, 6, 5, 3)
    with pytest.raises(ValueError, match="layout='NHWC'"):
        upscale(x, 2, tiny_model)
    out = upscale(x, 2, tiny_model, layout="NHWC")
    assert out.shape == (1, 12, 10, 3) and out.dtype == torch.float32
    assert torch.equal(out, upscale(x.permute(0, 3, 1, 2), 2, tiny_model).permute(0, 2, 3, 1))


def test_y_planes_in_every_convention(tiny_model):
    y = _u8(2, 1, 6, 5)
    ref = upscale(y, 3, tiny_model)
    assert ref.shape == (2, 1, 18, 15)
    assert torch.equal(upscale(y.permute(0, 2, 3, 1), 3, tiny_model), ref.permute(0, 2, 3, 1))  # (N, H, W, 1)
    assert torch.equal(upscale(y[0, 0], 3, tiny_model), ref[0, 0])  # (H, W)


def test_ambiguous_shapes_read_as_nchw_unless_told(tiny_model):
    x = _u8(1, 3, 4, 3)  # NCHW 3x4x3 image, or NHWC 3x4 RGB
    assert upscale(x, 2, tiny_model).shape == (1, 3, 8, 6)
    assert upscale(x, 2, tiny_model, layout="NHWC").shape == (1, 6, 8, 3)


def test_layout_errors(tiny_model):
    with pytest.raises(ValueError, match="layout must be one of"):
        upscale(_u8(1, 6, 5, 3), 2, tiny_model, layout="NWHC")
    with pytest.raises(ValueError, match="channels.*NHWC"):
        upscale(_u8(1, 6, 5, 7), 2, tiny_model, layout="NHWC")
    with pytest.raises(ValueError, match="channels"):
        upscale(_u8(1, 6, 5, 7), 2, tiny_model)


# --- out= and stream= ---------------------------------------------------------------------------------


def test_out_is_written_and_returned(tiny_model):
    x = _u8(2, 6, 5, 3)
    ref = upscale(x, 2, tiny_model)
    out = torch.zeros(2, 12, 10, 3, dtype=torch.uint8)
    assert upscale(x, 2, tiny_model, out=out) is out
    assert torch.equal(out, ref)
    big = torch.zeros(2, 14, 10, 3, dtype=torch.uint8)  # a strided view into a bigger buffer
    upscale(x, 2, tiny_model, out=big[:, 1:13])
    assert torch.equal(big[:, 1:13], ref) and not big[:, 0].any() and not big[:, 13].any()
    f = torch.rand(1, 3, 5, 4)
    out_f = torch.empty(1, 3, 10, 8)
    upscale(f, 2, tiny_model, out=out_f)
    assert torch.equal(out_f, upscale(f, 2, tiny_model))


def test_out_may_have_a_stride_0_dim_of_size_1(tiny_model):
    """A dim of size 1 holds one element whatever its stride (DLPack producers and numpy's broadcast_to hand out such
    views, stride 0 or 1): an (H, W, 3) buffer viewed as (1, H, W, 3) with stride 0 on the new dim shares no address
    between pixels, and is written as out=."""
    x = _u8(1, 6, 5, 3)
    buf = torch.zeros(12, 10, 3, dtype=torch.uint8)
    out = buf.as_strided((1, 12, 10, 3), (0, 30, 3, 1))
    assert upscale(x, 2, tiny_model, out=out) is out
    assert torch.equal(buf, upscale(x, 2, tiny_model)[0])


def test_out_errors(tiny_model):
    x = _u8(1, 6, 5, 3)
    with pytest.raises(ValueError, match=r"out has shape \(1, 12, 10, 4\), expected \(1, 12, 10, 3\)"):
        upscale(x, 2, tiny_model, out=torch.empty(1, 12, 10, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="out has dtype torch.float32, expected torch.uint8"):
        upscale(x, 2, tiny_model, out=torch.empty(1, 12, 10, 3))
    with pytest.raises(ValueError, match="meta"):
        upscale(x, 2, tiny_model, out=torch.empty(1, 12, 10, 3, dtype=torch.uint8, device="meta"))
    with pytest.raises(TypeError, match="out must be a torch.Tensor"):
        upscale(x, 2, tiny_model, out=[0])


def _inference_tensor():
    with torch.inference_mode():
        return torch.empty(12, 10, 3, dtype=torch.uint8)


def _read_only(shape):
    a = np.zeros(shape, np.uint8)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("kw, error, match", [
    (dict(out=lambda: torch.empty(1, 1, 3, dtype=torch.uint8).expand(12, 10, 3)), ValueError, "out's elements overlap"),
    (dict(out=lambda: torch.empty(100, dtype=torch.uint8).as_strided((12, 10, 3), (1, 1, 0))), ValueError, "out's elements overlap"),
    (dict(out=lambda: torch.empty(400, dtype=torch.uint8).as_strided((12, 10, 3), (30, 2, 1))), ValueError, "out's elements overlap"),
    (dict(out=lambda: torch.zeros(12, 10, 3, dtype=torch.uint8).to_sparse()), TypeError, "out has layout torch.sparse_coo"),
    (dict(numpy=True, out=lambda: _read_only((12, 10, 3))), ValueError, "out is a read-only numpy array"),
    (dict(numpy=True, out=lambda: np.lib.stride_tricks.as_strided(np.zeros((12, 10), np.uint8), (12, 10, 3), (10, 1, 0))),
     ValueError, r"out's elements overlap in memory \(strides \(10, 1, 0\)"),
    (dict(out=_inference_tensor), ValueError, "out is an inference tensor"),
    (dict(progress=1), TypeError, "progress must be a callable"),
    (dict(numpy=True, progress="bar"), TypeError, "progress must be a callable"),
    (dict(tile=1), ValueError, "tile must be at least 8 output pixels a side"),
    (dict(tile=(8, 7), scale=1.5), ValueError, "tile must be at least 8"),
    (dict(tile=True), ValueError, "tile must be a positive int or a pair of them"),
    (dict(tile=(16, True)), ValueError, "tile must be a positive int or a pair of them"),
], ids=["out_expanded", "out_stride_0", "out_overlapping", "out_sparse", "out_read_only_numpy", "out_overlapping_numpy",
        "out_inference_tensor", "progress_int",
        "progress_numpy", "tile_1", "tile_8x7_scale_1.5", "tile_bool", "tile_pair_with_a_bool"])  # fmt: skip
def test_bad_options_are_refused_before_any_work(tiny_model, monkeypatch, kw, error, match):
    """out= that several pixels share, read-only or sparse; progress= not callable; tiles below the 8x8 minimum:
    refused before anything is computed (a pipeline step that ran first would fail this test)."""
    import vdsr_fast.api as api

    def work(*args):
        raise AssertionError("work was queued before the arguments were checked")

    monkeypatch.setattr(api, "_run_window", work)
    kw = dict(kw)
    x = _u8(6, 5, 3).numpy() if kw.pop("numpy", False) else _u8(6, 5, 3)
    if "out" in kw:
        kw["out"] = kw["out"]()
    with pytest.raises(error, match=f"upscale: {match}"):
        upscale(x, kw.pop("scale", 2), tiny_model, **kw)


def test_stream_errors(tiny_model):
    with pytest.raises(TypeError, match="torch.cuda.Stream"):
        upscale(_u8(1, 6, 5, 3), 2, tiny_model, stream=object())


@pytest.mark.parametrize("kw", [dict(scale=1.5), dict(size=(13, 20)), dict(scale=2, tile=8)], ids=["1.5", "size", "tiled"])
def test_every_step_runs_on_the_callers_stream(tiny_model, monkeypatch, kw):
    """stream=: reading the input, the network, the resize to another factor, clamping and rounding all run on that
    stream (the non-integer factors once read the input and resized on the current one). Recorded on the CPU with
    the stream context replaced by a counter."""
    import contextlib

    import vdsr_fast.api as api

    depth, outside = [0], []

    @contextlib.contextmanager
    def on_stream(stream):
        depth[0] += stream is not None
        try:
            yield
        finally:
            depth[0] -= stream is not None

    monkeypatch.setattr(api, "_on_stream", on_stream)
    monkeypatch.setattr(api, "_check_stream", lambda stream, device: None)
    def recorded(name, real):
        def step(*args, **kwargs):
            if not depth[0]:
                outside.append(name)
            return real(*args, **kwargs)

        return step

    for name in ("_to_float", "imresize", "_from_float", "_run_window"):
        monkeypatch.setattr(api, name, recorded(name, getattr(api, name)))
    got = upscale(_u8(1, 7, 10, 3), model=tiny_model, stream=object(), **kw)
    assert got.shape[1:3] == ((13, 20) if "size" in kw else (14, 20) if kw["scale"] == 2 else (11, 15))
    assert not outside, f"ran outside the stream: {outside}"


# --- tiling -------------------------------------------------------------------------------------------


def test_tile_plan_and_windows():
    assert tile_plan(10, 7, 4) == [(0, 4, 0, 4), (0, 4, 4, 7), (4, 8, 0, 4), (4, 8, 4, 7), (8, 10, 0, 4), (8, 10, 4, 7)]
    assert tile_plan(5, 5, (8, 2))[:2] == [(0, 5, 0, 2), (0, 5, 2, 4)]
    w = Window(20, 2, 16, 24, radius=4)  # output rows 16..24 of 40, network rows 12..28
    assert w.net == (12, 28) and w.center == slice(4, 12)
    assert w.lr[0] <= 12 // 2 - 1 and w.lr[1] >= 28 // 2 + 1  # bicubic taps beyond the window
    assert receptive_radius(VDSR(depth=20, channels=1)) == 20


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_windowed_bicubic_is_bit_exact(dtype):
    from vdsr_fast import imresize

    x = torch.rand(2, 3, 9, 11, dtype=dtype)
    for s in (2, 3, 4):
        full = imresize(x, s)
        for r0, r1, c0, c1 in tile_plan(9 * s, 11 * s, 7):
            rows, cols = Window(9, s, r0, r1, radius=3), Window(11, s, c0, c1, radius=3)
            crop = x[:, :, rows.lr[0] : rows.lr[1], cols.lr[0] : cols.lr[1]]
            got = cols.resize(rows.resize(crop, 2), 3)
            assert torch.equal(got, full[:, :, rows.net[0] : rows.net[1], cols.net[0] : cols.net[1]])


_CASES = [(3, 2, 8), (1, 3, 11), (4, 4, (9, 20)), (3, 3, (8, 40))]  # tiles of 8 (the minimum) leave edge tiles of 2 and 3


# Tiles leaving 1-pixel edge tiles, at factors that are not the network's (1.5 and 2.5: the network at 2 and 3, then
# MATLAB's bicubic down) and at 3, on odd sizes: (c, scale, (h, w), tile).
_EDGE_CASES = [(3, 1.5, (13, 11), (25, 21)), (3, 1.5, (9, 11), 17), (3, 3, (9, 11), (26, 32)), (4, 3, (11, 9), 8),
               (1, 2.5, (13, 7), (38, 20)), (3, 3, (9, 11), 10_000)]  # fmt: skip


@pytest.mark.parametrize("c,scale,tile", _CASES)
def test_tiled_is_identical_float32(tiny_model, c, scale, tile):
    # Within the last bit: oneDNN's float32 convolution (channels_last, the CPU engine's layout) of this 8-channel
    # model can round a pixel differently for another window width (measured: up to 9e-8). With the shipped
    # 64-channel weights it gives the same bits (test_tiled_is_identical_with_the_shipped_weights). A halo error
    # would be ~1e-2.
    x = torch.rand(2, c, 9, 11)
    ref = upscale(x, scale, tiny_model)
    got = upscale(x, scale, tiny_model, tile=tile)
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("c,scale,hw,tile", _EDGE_CASES)
def test_tiled_edge_tiles_and_other_factors(tiny_model, c, scale, hw, tile):
    """1-pixel edge tiles, factors 1.5/2.5/3 on odd sizes: float32 within the last bit (as above), float64 within
    BLAS's (as below), uint8 the same levels but where an ulp crosses a rounding boundary."""
    x = torch.rand(1, c, *hw)
    torch.testing.assert_close(upscale(x, scale, tiny_model, tile=tile), upscale(x, scale, tiny_model), rtol=0, atol=2e-6)
    x64 = x.double()
    got, ref = (upscale(x64, scale, tiny_model, dtype=torch.float64, **kw) for kw in ({"tile": tile}, {}))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-14)
    u = (x * 255).round().to(torch.uint8)
    assert (upscale(u, scale, tiny_model, layout="NCHW", tile=tile).int() - upscale(u, scale, tiny_model, layout="NCHW").int()).abs().max() <= 1


def test_tiled_is_identical_with_the_shipped_weights():
    """The README's claim: with the shipped weights a tiled frame is the untiled one bit for bit on the CPU (float32,
    and uint8 RGBA), edge tiles of 1 pixel, factors 1.5/2.5/3 and frames of 80-120 px included; a frame 10 px tall (oneDNN computes
    it and its windows other ways) within 2e-6 (a fuzzer found up to 8e-7; a halo error would be ~1e-2)."""
    from vdsr_fast import load

    model = load()
    for c, scale, hw, tile in _EDGE_CASES:
        x = torch.rand(1, c, *hw)
        assert torch.equal(upscale(x, scale, model, tile=tile), upscale(x, scale, model)), (c, scale, hw, tile)
    u = torch.randint(0, 256, (11, 9, 4), dtype=torch.uint8)
    assert torch.equal(upscale(u, 3, model, tile=(32, 8)), upscale(u, 3, model))
    for c, hw, tile in ((3, (80, 80), 64), (1, (100, 120), 64)):  # a review found frames this size differ by 2e-6:
        x = torch.rand(1, c, *hw)  # the whole Y plane's first conv ran NCHW (reference.channels_last), a window's not
        assert torch.equal(upscale(x, 2, model, tile=tile), upscale(x, 2, model)), (c, hw, tile)
    x = torch.rand(1, 1, 5, 17, generator=torch.Generator().manual_seed(0))
    assert (upscale(x, 2, model, tile=8) - upscale(x, 2, model)).abs().max() <= 2e-6


@pytest.mark.parametrize("c,scale,tile", _CASES)
def test_tiled_matches_float64(tiny_model, c, scale, tile):
    # float64 convolutions go through BLAS, whose vector/remainder split depends on the input's size:
    # the same pixel can move by an ulp (measured: 2.2e-16). A halo error would be ~1e-2.
    x = torch.rand(2, c, 9, 11, dtype=torch.float64)
    ref = upscale(x, scale, tiny_model, dtype=torch.float64)
    got = upscale(x, scale, tiny_model, dtype=torch.float64, tile=tile)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-14)


def test_tiled_uint8_nhwc_into_out(tiny_model):
    f = _u8(2, 12, 16, 3)
    ref = upscale(f, 2, tiny_model)
    out = torch.empty_like(ref)
    upscale(f, 2, tiny_model, tile=(8, 13), out=out)
    assert torch.equal(out, ref)
    assert torch.equal(upscale(f, 2, tiny_model, tile=64), ref)  # one tile: the untiled path


def test_halo_is_needed(tiny_model):
    """Without the halo the tiles would differ: the identity above is not vacuous."""
    x = torch.rand(1, 1, 10, 10, dtype=torch.float64)
    whole = upscale(x, 2, tiny_model, dtype=torch.float64)
    cut = upscale(x[..., :5], 2, tiny_model, dtype=torch.float64)  # the left half alone
    assert not torch.equal(cut, whole[..., :10])


def _tile_plans_seen(monkeypatch) -> list:
    """The tile sizes upscale() plans, in call order (tiling.tile_plan's third argument)."""
    from vdsr_fast import tiling

    seen, real = [], tiling.tile_plan
    monkeypatch.setattr(tiling, "tile_plan", lambda h, w, t: seen.append(t) or real(h, w, t))
    return seen


def test_max_memory_picks_a_tile(tiny_model, monkeypatch):
    import vdsr_fast.api as api
    from vdsr_fast import tiling

    seen = _tile_plans_seen(monkeypatch)
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    ref = upscale(x, 2, tiny_model, dtype=torch.float64)
    seen.clear()  # (on the CPU the default is max_memory="auto": one tile, the frame)
    per_px = tiling.bytes_per_pixel(tiny_model.channels, torch.float64, torch.float64)
    r = receptive_radius(tiny_model)
    got = upscale(x, 2, tiny_model, dtype=torch.float64, max_memory=per_px * (10 + 2 * r) ** 2)
    assert seen == [(10, 10)]
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-14)
    upscale(x, 2, tiny_model, dtype=torch.float64, max_memory=per_px * (30 + 2 * r) ** 2, tile=(9, 40))
    assert seen[-1] == (9, 30)
    with pytest.raises(ValueError, match=r"max_memory=100 bytes \(9.31e-08 GiB\) is too small"):
        upscale(x, 2, tiny_model, max_memory=100)
    with pytest.raises(ValueError, match="max_memory must be a positive int"):
        upscale(x, 2, tiny_model, max_memory=-1)
    with pytest.raises(ValueError, match="tile must be a positive int"):
        upscale(x, 2, tiny_model, tile=0)
    assert api.tiling is tiling


def test_max_memory_below_an_8x8_tile_is_refused(tiny_model):
    """A budget that fits a 7x7 output tile and its halo, but not an 8x8 one, is a ValueError (tiles below 8 spend
    nearly all their work on the halo); one that fits 8x8 runs, tiled, with the untiled result."""
    from vdsr_fast import tiling

    x = torch.rand(1, 1, 12, 12, dtype=torch.float64)
    per_px = tiling.bytes_per_pixel(tiny_model.channels, torch.float64, torch.float64)
    r = receptive_radius(tiny_model)
    with pytest.raises(ValueError, match="is too small: a 8x8 output tile"):
        upscale(x, 2, tiny_model, dtype=torch.float64, max_memory=per_px * (7 + 2 * r) ** 2)
    got = upscale(x, 2, tiny_model, dtype=torch.float64, max_memory=per_px * (8 + 2 * r) ** 2)
    torch.testing.assert_close(got, upscale(x, 2, tiny_model, dtype=torch.float64), rtol=0, atol=1e-14)


def test_max_memory_auto_is_a_share_of_the_free_memory(tiny_model, monkeypatch):
    """max_memory="auto": 70% of what the device has free; the whole frame when it fits, exact tiles when not."""
    from vdsr_fast import tiling

    free = tiling.available_memory(torch.device("cpu"))
    assert free is None or free > 0  # Linux: MemAvailable
    seen = _tile_plans_seen(monkeypatch)
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    ref = upscale(x, 2, tiny_model, dtype=torch.float64)
    seen.clear()  # (on the CPU the default is max_memory="auto" too)
    assert torch.equal(upscale(x, 2, tiny_model, dtype=torch.float64, max_memory="auto"), ref)
    assert seen == ([] if free is None else [seen[0]]) and (not seen or min(seen[0]) >= 24)  # one tile: the frame
    per_px = tiling.bytes_per_pixel(tiny_model.channels, torch.float64, torch.float64)
    r = receptive_radius(tiny_model)
    monkeypatch.setattr(tiling, "available_memory", lambda device: int(per_px * (10 + 2 * r) ** 2 / tiling.AUTO_FRACTION) + 1)
    got = upscale(x, 2, tiny_model, dtype=torch.float64, max_memory="auto")
    assert seen[-1] == (10, 10)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-14)
    monkeypatch.setattr(tiling, "available_memory", lambda device: None)  # unknown: no limit
    assert torch.equal(upscale(x, 2, tiny_model, dtype=torch.float64, max_memory="auto"), ref)
    with pytest.raises(ValueError, match="positive int \\(bytes\\) or 'auto'"):
        upscale(x, 2, tiny_model, max_memory="half")


def test_max_memory_defaults_to_auto_on_the_cpu(tiny_model, monkeypatch):
    """On the CPU a frame too big for the free memory is tiled by default (an untiled one would get the process
    killed); the same exact result."""
    from vdsr_fast import tiling

    seen = _tile_plans_seen(monkeypatch)
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    ref = upscale(x, 2, tiny_model, dtype=torch.float64, tile=24)  # the whole frame as one tile
    per_px = tiling.bytes_per_pixel(tiny_model.channels, torch.float64, torch.float64)
    r = receptive_radius(tiny_model)
    monkeypatch.setattr(tiling, "available_memory", lambda device: int(per_px * (10 + 2 * r) ** 2 / tiling.AUTO_FRACTION) + 1)
    got = upscale(x, 2, tiny_model, dtype=torch.float64)
    assert seen[-1] == (10, 10)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-14)


def test_max_memory_counts_every_frame_of_the_batch(tiny_model, monkeypatch):
    """The budget covers the whole batch: a budget that fits a 10x10 tile (and its halo) for two frames gives two
    frames 10x10 tiles, not the larger tile it would give one frame; the same result as untiled."""
    from vdsr_fast import tiling

    seen = _tile_plans_seen(monkeypatch)
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    ref = upscale(x, 2, tiny_model, dtype=torch.float64, tile=24)  # the whole frame as one tile
    per_px = tiling.bytes_per_pixel(tiny_model.channels, torch.float64, torch.float64)
    r = receptive_radius(tiny_model)
    got = upscale(x, 2, tiny_model, dtype=torch.float64, max_memory=2 * per_px * (10 + 2 * r) ** 2)
    assert seen[-1] == (10, 10)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-14)
    upscale(x[:1], 2, tiny_model, dtype=torch.float64, max_memory=2 * per_px * (10 + 2 * r) ** 2)
    assert min(seen[-1]) > 10  # one frame: the same budget fits a larger tile


def test_a_budget_too_small_names_one_that_suffices(tiny_model):
    """The error for a budget below an 8x8 tile gives the bytes that tile needs with its halo for the batch: that
    budget runs (tiled, the untiled result), one byte less is refused again."""
    import re

    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="is too small") as info:
        upscale(x, 2, tiny_model, dtype=torch.float64, max_memory=1000)
    need = int(re.search(r"needs about (\d+) bytes", str(info.value)).group(1))
    got = upscale(x, 2, tiny_model, dtype=torch.float64, max_memory=need)
    torch.testing.assert_close(got, upscale(x, 2, tiny_model, dtype=torch.float64, tile=24), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match=rf"max_memory={need - 1} bytes \(\S+ GiB\) is too small"):
        upscale(x, 2, tiny_model, dtype=torch.float64, max_memory=need - 1)


@pytest.mark.parametrize("max_memory", [0, True, 2.5e6, "AUTO"])
def test_max_memory_that_is_not_a_positive_int_is_refused(tiny_model, max_memory):
    """max_memory is a positive int of bytes or "auto": 0, a bool, a float or another string is a ValueError that
    says so (not a budget "too small" for a tile)."""
    with pytest.raises(ValueError, match="max_memory must be a positive int \\(bytes\\) or 'auto'"):
        upscale(torch.rand(1, 3, 6, 6), 2, tiny_model, max_memory=max_memory)


def test_bytes_per_pixel_counts_activations_in_the_engine_dtype_and_planes_in_the_frames():
    """The estimate's model (its docstring): three activations ``channels`` deep in the engine's dtype, and about a
    dozen float planes of the colour pipeline in the frame's float dtype. Each part checked by what changes it."""
    from vdsr_fast.tiling import bytes_per_pixel

    for engine_dtype in (torch.float8_e4m3fn, torch.float16, torch.float32, torch.float64):
        for float_dtype in (torch.float32, torch.float64):
            per_channel = bytes_per_pixel(9, engine_dtype, float_dtype) - bytes_per_pixel(8, engine_dtype, float_dtype)
            assert per_channel == 3 * engine_dtype.itemsize, (engine_dtype, float_dtype)
            planes = bytes_per_pixel(8, engine_dtype, float_dtype) - 3 * 8 * engine_dtype.itemsize
            assert planes == 12 * float_dtype.itemsize, (engine_dtype, float_dtype)


def test_available_memory_on_the_cpu_is_linux_memavailable(monkeypatch):
    """On the CPU the free memory is /proc/meminfo's MemAvailable (in KiB: x 1024), not MemFree; unreadable: None."""
    import io

    from vdsr_fast import tiling

    meminfo = "MemTotal:       16000000 kB\nMemFree:          123456 kB\nMemAvailable:    7654321 kB\nBuffers: 1 kB\n"
    monkeypatch.setattr(tiling, "open", lambda path, *a, **k: io.StringIO(meminfo), raising=False)
    assert tiling.available_memory(torch.device("cpu")) == 7654321 * 1024

    def unreadable(path, *a, **k):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(tiling, "open", unreadable, raising=False)
    assert tiling.available_memory(torch.device("cpu")) is None
    assert tiling.available_memory(torch.device("meta")) is None


@pytest.mark.parametrize("files, room", [
    ({"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "4294967296\n",
      "/sys/fs/cgroup/memory.current": "1073741824\n"}, 3 << 30),  # a container with --memory 4g (cgroup v2)
    ({"/proc/self/cgroup": "0::/user.slice/s\n", "/sys/fs/cgroup/user.slice/s/memory.max": "2147483648",
      "/sys/fs/cgroup/user.slice/s/memory.current": "536870912"}, 3 << 29),  # a systemd slice's limit
    ({"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "max\n", "/sys/fs/cgroup/memory.current": "1"}, None),
    ({"/proc/self/cgroup": "4:memory:/docker/abc\n1:cpu:/\n", "/sys/fs/cgroup/memory/memory.limit_in_bytes": "2147483648",
      "/sys/fs/cgroup/memory/memory.usage_in_bytes": "1073741824"}, 1 << 30),  # cgroup v1, mounted at its own
    ({"/proc/self/cgroup": "4:memory:/\n", "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712",
      "/sys/fs/cgroup/memory/memory.usage_in_bytes": "1"}, None),  # v1 without a limit
    ({"/sys/fs/cgroup/memory.max": "1000", "/sys/fs/cgroup/memory.current": "5000"}, 0),  # over it: no room
])  # fmt: skip
def test_available_memory_on_the_cpu_respects_the_cgroup_limit(monkeypatch, files, room):
    """In a container (docker --memory, a Kubernetes limit) MemAvailable is the host's: max_memory="auto" takes the
    room left under the cgroup's limit where that is less (simulated files)."""
    import io

    from vdsr_fast import tiling

    files = {"/proc/meminfo": "MemAvailable:    16777216 kB\n", **files}  # 16 GiB

    def fake_open(path, *a, **k):
        if path not in files:
            raise FileNotFoundError(2, "No such file", path)
        return io.StringIO(files[path])

    monkeypatch.setattr(tiling, "open", fake_open, raising=False)
    assert tiling._cgroup_room() == room
    assert tiling.available_memory(torch.device("cpu")) == (16 << 30 if room is None else room)


def test_available_memory_on_a_gpu_counts_what_the_caching_allocator_holds_unused(monkeypatch):
    """On a GPU: the driver's free memory plus what PyTorch's caching allocator has reserved but not allocated (it
    hands that out first), asked of the device given, not the current one (simulated: no GPU is needed)."""
    from vdsr_fast import tiling

    asked = []

    def query(value):
        return lambda device=None: asked.append(torch.device(device)) or value

    monkeypatch.setattr(torch.cuda, "mem_get_info", query((5 << 30, 80 << 30)))  # (free, total)
    monkeypatch.setattr(torch.cuda, "memory_reserved", query(3 << 30))
    monkeypatch.setattr(torch.cuda, "memory_allocated", query(1 << 30))
    assert tiling.available_memory(torch.device("cuda", 1)) == (5 + 3 - 1) << 30
    assert asked == [torch.device("cuda", 1)] * 3


def test_memory_budget_is_seventy_percent_of_the_free_memory_and_the_engines_buffers(monkeypatch):
    """max_memory="auto" (README, docs/INPUTS.md): 70% of the free memory and the engine's own buffers together;
    None (no limit) where the free memory is unknown."""
    from vdsr_fast import tiling

    free = 10_000_000 + int(torch.randint(0, 10_000_000, ()))
    monkeypatch.setattr(tiling, "available_memory", lambda device: free)
    cpu = torch.device("cpu")
    assert tiling.memory_budget(cpu) == pytest.approx(0.7 * free, abs=1)
    assert tiling.memory_budget(cpu, reusable=4_000_000) == pytest.approx(0.7 * (free + 4_000_000), abs=1)
    monkeypatch.setattr(tiling, "available_memory", lambda device: None)
    assert tiling.memory_budget(cpu, reusable=4_000_000) is None


def test_progress_is_called_after_each_tile(tiny_model):
    calls = []
    x = torch.rand(1, 3, 12, 12)
    whole = upscale(x, 2, tiny_model, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 1)]
    calls.clear()
    tiled = upscale(x, 2, tiny_model, tile=8, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(k, 9) for k in range(1, 10)] and torch.equal(tiled, whole)
    calls.clear()
    frame = (x[0].permute(1, 2, 0) * 255).to(torch.uint8).numpy()  # an OpenCV-style array: through the numpy path
    upscale(frame, 2, tiny_model, tile=12, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(k, 4) for k in range(1, 5)]


def test_max_memory_auto_counts_the_engines_own_buffers(tiny_model, monkeypatch):
    """The activation buffers a fast engine keeps after a call are reused by the next: "auto" counts them as
    available, so the free memory a first call leaves does not turn the next call of the same size into tiles."""
    from vdsr_fast import available_backends, get_engine, tiling

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if (why := available_backends(dev)["triton"]) is not None:
        pytest.skip(why)
    seen = _tile_plans_seen(monkeypatch)
    x = torch.rand(1, 1, 12, 12, device=dev)
    engine = get_engine(tiny_model, dev, backend="triton")
    per_px = tiling.bytes_per_pixel(tiny_model.channels, engine.dtype, torch.float32)
    free = int(per_px * (24 + 2 * receptive_radius(tiny_model)) ** 2 / tiling.AUTO_FRACTION) + 1  # the frame just fits
    monkeypatch.setattr(tiling, "available_memory", lambda device: free)
    first = upscale(x, 2, tiny_model, backend="triton", max_memory="auto")
    assert min(seen[-1]) >= 24 and engine.buffer_bytes > 0
    monkeypatch.setattr(tiling, "available_memory", lambda device: free - engine.buffer_bytes)  # what the call left
    assert torch.equal(upscale(x, 2, tiny_model, backend="triton", max_memory="auto"), first)
    assert min(seen[-1]) >= 24  # still the whole frame


def test_out_of_memory_is_raised(tiny_model):
    from vdsr_fast.api import get_engine

    engine = get_engine(tiny_model, torch.device("cpu"))

    def oom(y):
        raise torch.OutOfMemoryError("fake OOM")

    engine._impl, impl = oom, engine._impl
    try:
        with pytest.raises(torch.OutOfMemoryError):
            upscale(torch.rand(1, 3, 8, 8), 2, tiny_model, tile=8)
    finally:
        engine._impl = impl


# --- GPU ----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (sync-free check of the hot path)")
@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_gpu_hot_path_does_not_synchronise(tiny_model, backend):
    """After the first call per frame size (engine, self-check, resize tables, CUDA graph capture),
    upscale() never waits for the device: plain, into `out=` on a side stream, and tiled."""
    from vdsr_fast import VDSR, available_backends

    dev = torch.device("cuda")
    reason = available_backends(dev)[backend]
    if reason is not None:
        pytest.skip(f"backend {backend!r}: {reason}")
    model = (tiny_model if backend == "torch" else VDSR(depth=4, channels=64)).to(dev)  # the fast kernels are for 64 channels
    frames = torch.randint(0, 256, (2, 36, 52, 3), dtype=torch.uint8, device=dev)
    out = torch.empty(2, 72, 104, 3, dtype=torch.uint8, device=dev)
    stream = torch.cuda.Stream()
    kw = {"backend": backend, "dtype": torch.float32 if backend == "torch" else torch.float16}
    ref = upscale(frames, 2, model, **kw)  # warm-up: engine, resize tables
    upscale(frames, 2, model, tile=40, **kw)
    with torch.cuda.stream(stream):
        upscale(frames, 2, model, **kw)  # the same engine from another stream
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stream.wait_stream(torch.cuda.current_stream())
        upscale(frames, 2, model, out=out, stream=stream, **kw)
        tiled = upscale(frames, 2, model, tile=40, **kw)
        plain = upscale(frames, 2, model, **kw)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert torch.equal(plain, ref) and (out.int() - ref.int()).abs().max() <= 1
    assert (tiled.int() - ref.int()).abs().max() <= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_tiled_float64_matches_untiled(tiny_model):
    dev = torch.device("cuda")
    model = tiny_model.to(dev)
    x64 = torch.rand(1, 3, 30, 34, dtype=torch.float64, device=dev)
    kw64 = {"backend": "torch", "dtype": torch.float64}
    torch.testing.assert_close(upscale(x64, 3, model, tile=25, **kw64), upscale(x64, 3, model, **kw64), rtol=0, atol=1e-14)


def test_available_memory_on_the_cpu_respects_ulimit_v():
    """Under ``ulimit -v`` an allocation fails past the address-space limit however much memory is free: the room
    max_memory="auto" sees is at most the limit less the process's virtual size (a child process with a real limit)."""
    import subprocess
    import sys

    code = (
        "import resource, torch\n"
        "from vdsr_fast import tiling\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
        "size = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:'))\n"
        "room = tiling.available_memory(torch.device('cpu'))\n"
        "assert 0 < room <= limit - size, (room, limit, size)\n"
        "torch.empty(int(room * 0.9), dtype=torch.uint8)  # what it reports can be allocated\n"
        "try:\n"
        "    torch.empty(room + (256 << 20), dtype=torch.uint8)\n"
        "except RuntimeError:\n"
        "    print('refused')\n"
    )
    import resource

    if resource.getrlimit(resource.RLIMIT_AS)[1] != resource.RLIM_INFINITY:
        pytest.skip("this process already runs under a hard address-space limit")
    probe = subprocess.run([sys.executable, "-c", "import torch, vdsr_fast.tiling; "
                            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize:')))"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    limit = int(probe.stdout) * 1024 + (2 << 30)  # 2 GiB above what the imports take
    run = subprocess.run([sys.executable, "-c", f"limit = {limit}\n" + code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "refused"

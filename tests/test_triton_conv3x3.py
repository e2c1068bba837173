"""The fused conv3x3 (+bias+ReLU) Triton kernel, body and head modes, against float64 PyTorch.

Equivalence rule (DESIGN.md §6): ``err(triton) <= 2 * err(torch, same dtype) + atol[dtype] * scale``,
err = max |out - ref64|, ref64 = the same layer in float64 on the same weights and the same input
(the input the kernel reads: already in the storage dtype for the body, the fp32 Y plane for the head).
``scale = max(1, max |ref64|)``: atol is in units of the output's magnitude.

atol per dtype = one unit in the last place of the storage dtype at magnitude 1 (the kernel and torch
each round the fp32 accumulator to the storage dtype once, and may round to neighbouring values);
fp32: 1e-5, far above fp32 summation-order noise on 576-term dot products (~1e-6) yet far below any
indexing or masking bug (those are O(1)).

Without a GPU the kernels run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1);
the interpreter computes tl.dot wrongly on bf16 operands, so the bf16 body is checked on GPU only.
Sizes are tiny to keep the interpreter fast; on CUDA, large sizes run too.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from equivalence import DTYPES, assert_equivalent, he_layer, nan_tailed, triton_device

HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

if HAS_TRITON:
    from vdsr_fast.kernels.triton.conv3x3 import (
        ConvConfig,
        body_config_candidates,
        conv3x3_bias_relu,
        conv3x3_config,
        conv3x3_head,
        pack_conv3x3_weight,
    )


def _nan_out(n: int, h: int, w: int, c: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.full((n, h, w, c), float("nan"), dtype=dtype, device=device)


BODY_CASES = [  # (N, H, W, C_IN, C_OUT)
    (1, 1, 1, 64, 64),  # every tap but the centre is padding
    (3, 7, 5, 64, 64),  # VDSR's channels, batch > 1, odd sizes; 105 pixels: one partial M tile
    (1, 37, 53, 5, 24),  # few channels: K and N masked (tl.dot pads them to 16)
    (3, 5, 7, 16, 16),
]
GPU_BODY_CASES = [(1, 720, 1280, 64, 64), (2, 1080, 1920, 64, 64)]


def _check_body(n, h, w, c_in, c_out, dtype, device, channels_last_input=False):
    torch.manual_seed(1000 * n + 100 * h + w + c_in)
    wt, b = he_layer(c_in, c_out, device)
    x_nchw = torch.rand(n, c_in, h, w, device=device).to(dtype)
    # The kernel's input: NHWC-contiguous, or a permuted (non-contiguous) view when asked.
    x = x_nchw.permute(0, 2, 3, 1) if channels_last_input else x_nchw.permute(0, 2, 3, 1).contiguous()
    out = _nan_out(n, h, w, c_out, dtype, device)
    res = conv3x3_bias_relu(x, pack_conv3x3_weight(wt, dtype), b.float(), out=out)
    assert res is out
    ref64 = F.relu(F.conv2d(x_nchw.double(), wt.double(), b.double(), padding=1))
    same = F.relu(F.conv2d(x_nchw, wt.to(dtype), b.to(dtype), padding=1))
    assert_equivalent(out.permute(0, 3, 1, 2), same, ref64, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", BODY_CASES, ids=lambda c: "x".join(map(str, c)))
def test_body_matches_float64(case, dtype):
    device = triton_device(dtype, bf16_dot=True)
    _check_body(*case, dtype, device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GPU_BODY_CASES, ids=lambda c: "x".join(map(str, c)))
def test_body_matches_float64_large_gpu(case, dtype):
    device = triton_device(dtype)
    if device.type != "cuda":
        pytest.skip("large sizes run on CUDA only (the CPU interpreter is too slow)")
    _check_body(*case, dtype, device)


SHARE_ROW_CASES = [(3, 7, 5, 64, 64), (2, 3, 130, 16, 16), (1, 1, 1, 64, 64)]  # 130: rows end mid-tile


@pytest.mark.parametrize("case", SHARE_ROW_CASES, ids=lambda c: "x".join(map(str, c)))
def test_body_share_row_matches_float64(case, monkeypatch):
    """The experimental SHARE_ROW mode (one load per kernel row, horizontal taps by gather)."""
    import vdsr_fast.kernels.triton.conv3x3 as mod

    device = triton_device()
    dtype = torch.float16
    default = mod.conv3x3_config

    def share_row_config(c_in, c_out, dt, head=False):
        cfg = default(c_in, c_out, dt, head)
        return cfg if head else mod.ConvConfig(cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps, 3, share_row=True)

    monkeypatch.setattr(mod, "conv3x3_config", share_row_config)
    _check_body(*case, dtype, device)


SWAP_CASES = [(3, 7, 5, 64, 64), (1, 1, 1, 64, 64), (1, 37, 53, 5, 24), (2, 9, 20, 16, 16)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("tile_w", [0, 32])
@pytest.mark.parametrize("case", SWAP_CASES, ids=lambda c: "x".join(map(str, c)))
def test_body_swap_matches_float64(case, tile_w, dtype, monkeypatch):
    """The experimental SWAP mode (channels as the GEMM's M, the pixel tile as its N), raster and 2-D tiles,
    masked channels (5 -> 24) included."""
    import vdsr_fast.kernels.triton.conv3x3 as mod

    device = triton_device(dtype, bf16_dot=True)
    default = mod.conv3x3_config

    def swap_config(c_in, c_out, dt, head=False):
        cfg = default(c_in, c_out, dt, head)
        return cfg if head else mod.ConvConfig(128, cfg.block_n, cfg.block_k, 4, 3, tile_w=tile_w, swap=True)

    monkeypatch.setattr(mod, "conv3x3_config", swap_config)
    _check_body(*case, dtype, device)
    with pytest.raises(ValueError, match="two different body modes"):
        mod.ConvConfig(128, 64, 64, 4, 3, share_row=True, swap=True)


TILE_2D_CASES = [(2, 19, 37, 64, 64), (1, 1, 1, 64, 64), (3, 5, 40, 16, 24)]  # partial tiles in both directions


@pytest.mark.parametrize("tile", [(64, 16), (128, 32)], ids=lambda t: f"{t[0] // t[1]}x{t[1]}")
@pytest.mark.parametrize("case", TILE_2D_CASES, ids=lambda c: "x".join(map(str, c)))
def test_2d_pixel_tiles_match_float64(case, tile, monkeypatch):
    """TILE_W: each program covers a 2-D pixel tile of one image (body and head)."""
    import vdsr_fast.kernels.triton.conv3x3 as mod

    device = triton_device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    default = mod.conv3x3_config

    def tiled_config(c_in, c_out, dt, head=False):
        cfg = default(c_in, c_out, dt, head)
        return mod.ConvConfig(tile[0], cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages, tile_w=tile[1])

    monkeypatch.setattr(mod, "conv3x3_config", tiled_config)
    _check_body(*case, dtype, device)
    _check_head(*case[:3], case[4], dtype, device)
    with pytest.raises(ValueError, match="tile_w"):
        mod.ConvConfig(128, 64, 64, 4, 3, tile_w=48)


def test_body_non_contiguous_input():
    """A channels-last view of an NCHW tensor (channel stride H*W) is read through its strides."""
    device = triton_device()
    _check_body(1, 9, 11, 16, 16, torch.float16 if device.type == "cuda" else torch.float32, device, True)


VIEW_MODES = {"raster": {}, "swap": dict(swap=True), "share_row": dict(share_row=True), "tile_2d": dict(tile_w=16)}


def _body_ref(x, wt, b):
    """(float64 reference, PyTorch in x's dtype) of relu(conv3x3(x) + b) for an NHWC ``x``, NCHW out."""
    x_nchw = x.permute(0, 3, 1, 2)
    return (F.relu(F.conv2d(x_nchw.double(), wt.double(), b.double(), padding=1)),
            F.relu(F.conv2d(x_nchw.contiguous(), wt.to(x.dtype), b.to(x.dtype), padding=1)))  # fmt: skip


def _mode_config(mode: str, c_in: int, c_out: int, dtype: torch.dtype, block_m: int = 64) -> ConvConfig:
    """The default config's channel blocks, in body ``mode`` (a key of VIEW_MODES)."""
    cfg = conv3x3_config(c_in, c_out, dtype)
    return ConvConfig(block_m, cfg.block_n, cfg.block_k, 4, 2, **VIEW_MODES[mode])


@pytest.mark.parametrize("mode", VIEW_MODES)
def test_body_reads_nothing_outside_its_view(mode):
    """The input is a crop of a larger NaN-filled tensor (one pixel of NaN around each image, 3 NaN channels after
    the 5 real ones): a load of a padding tap or of a channel >= C_IN that is not masked to 0 -- even one whose
    weight is masked to 0, since NaN * 0 = NaN -- shows as NaN outputs. fp32 (the interpreter's tl.dot is exact
    there), DESIGN.md §6's rule as in _check_body: atol 1e-5 (fp32), indexing bugs give NaN or O(1) errors."""
    device = triton_device()
    dtype = torch.float32
    n, h, w, c_in, c_out = 2, 6, 9, 5, 24
    torch.manual_seed(7)
    wt, b = he_layer(c_in, c_out, device)
    big = torch.full((n, h + 2, w + 2, c_in + 3), float("nan"), dtype=dtype, device=device)
    x = big[:, 1 : h + 1, 1 : w + 1, :c_in]
    x.copy_(torch.rand(n, h, w, c_in, device=device))
    cfg = _mode_config(mode, c_in, c_out, dtype, block_m=128) if VIEW_MODES[mode] else conv3x3_config(c_in, c_out, dtype)
    out = _nan_out(n, h, w, c_out, dtype, device)
    conv3x3_bias_relu(x, pack_conv3x3_weight(wt, dtype), b, out=out, config=cfg)
    ref64, same = _body_ref(x, wt, b)
    assert_equivalent(out.permute(0, 3, 1, 2), same, ref64, dtype, f"{mode} body on a cropped view")


HEAD_CASES = [(1, 1, 1, 64), (3, 7, 5, 64), (1, 37, 53, 64), (2, 6, 9, 8)]  # (N, H, W, C_OUT)


def _check_head(n, h, w, c_out, dtype, device, y_dtype=torch.float32, strided=False):
    torch.manual_seed(1000 * n + 100 * h + w + c_out)
    wt, b = he_layer(1, c_out, device)
    if strided:  # a (N, 1, H, W) view with gaps between rows and images
        y = torch.rand(n, 2, h + 3, w + 4, device=device)[:, :1, 1 : h + 1, 2 : w + 2].to(y_dtype)
        assert not y.is_contiguous()
    else:
        y = torch.rand(n, 1, h, w, device=device).to(y_dtype)
    out = _nan_out(n, h, w, c_out, dtype, device)
    conv3x3_head(y, pack_conv3x3_weight(wt, dtype), b.float(), out=out)
    ref64 = F.relu(F.conv2d(y.double(), wt.double(), b.double(), padding=1))
    # torch "same dtype" = what the torch backend does: the Y plane cast to the storage dtype first.
    same = F.relu(F.conv2d(y.to(dtype), wt.to(dtype), b.to(dtype), padding=1))
    assert_equivalent(out.permute(0, 3, 1, 2), same, ref64, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", HEAD_CASES, ids=lambda c: "x".join(map(str, c)))
def test_head_matches_float64(case, dtype):
    # The head has no tl.dot (rank-1 updates), so bf16 runs in the interpreter too.
    _check_head(*case, dtype, triton_device(dtype))


def test_head_reads_strided_and_half_y_plane():
    device = triton_device()
    _check_head(2, 9, 13, 64, torch.float16, device, strided=True)
    _check_head(2, 9, 13, 64, torch.float16, device, y_dtype=torch.float16)
    _check_head(1, 5, 6, 64, torch.float32, device, y_dtype=torch.float64)


def test_head_accepts_3d_plane_and_allocates_output():
    device = triton_device()
    wt, b = he_layer(1, 64, device)
    y = torch.rand(2, 5, 7, device=device)
    out = conv3x3_head(y, pack_conv3x3_weight(wt, torch.float32), b)
    assert out.shape == (2, 5, 7, 64) and out.dtype == torch.float32 and out.is_contiguous()
    ref = F.relu(F.conv2d(y[:, None].double(), wt.double(), b.double(), padding=1)).permute(0, 2, 3, 1)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)


def test_pack_layout():
    w = torch.arange(2 * 3 * 9, dtype=torch.float32).reshape(2, 3, 3, 3)
    p = pack_conv3x3_weight(w, torch.float32)
    assert p.shape == (2, 27) and p.is_contiguous()
    for co in range(2):
        for kh in range(3):
            for kw in range(3):
                for ci in range(3):
                    assert p[co, (kh * 3 + kw) * 3 + ci] == w[co, ci, kh, kw]


def test_config_heuristic():
    cfg = conv3x3_config(64, 64, torch.float16)
    assert (cfg.block_m, cfg.block_n, cfg.block_k) == (128, 64, 64)
    assert conv3x3_config(5, 24, torch.float32).block_k == 16  # tl.dot needs K >= 16
    assert conv3x3_config(1, 64, torch.float16, head=True).block_n == 64


def test_every_candidate_config_is_correct():
    """The tiles a GPU benchmark may sweep all compute the same layer (one partial M tile each)."""
    device = triton_device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(11)
    wt, b = he_layer(64, 64, device)
    x = torch.rand(1, 5, 7, 64, device=device).to(dtype)
    w = pack_conv3x3_weight(wt, dtype)
    ref = conv3x3_bias_relu(x, w, b.float())
    configs = body_config_candidates(dtype)
    assert len(configs) > 1 and len(set(configs)) == len(configs)
    if device.type == "cpu":  # the interpreter ignores warps and stages: one run per tile shape
        configs = list({(c.block_m, c.block_n, c.block_k, c.share_row, c.swap, c.tile_w): c for c in configs}.values())
    for cfg in configs:
        out = _nan_out(1, 5, 7, 64, dtype, device)
        conv3x3_bias_relu(x, w, b.float(), out=out, config=cfg)
        # Same K order (tap, channel) in every tile, but the dot's internal order may differ: at most a
        # final rounding to a neighbouring value (one fp16 ulp at the output's magnitude).
        ulp = 1e-6 if dtype == torch.float32 else 2.0**-10
        atol = ulp * max(1.0, ref.abs().max().item())
        torch.testing.assert_close(out, ref, atol=atol, rtol=0, msg=lambda m, cfg=cfg: f"{cfg}: {m}")


def test_launcher_errors():
    device = triton_device()
    wt, b = he_layer(16, 16, device)
    w = pack_conv3x3_weight(wt, torch.float32)
    x = torch.rand(1, 4, 4, 16, device=device)
    with pytest.raises(ValueError, match="do not match 8 input channels"):
        conv3x3_bias_relu(torch.rand(1, 4, 4, 8, device=device), w, b)
    with pytest.raises(TypeError, match="activations are torch.float16"):
        conv3x3_bias_relu(x.half(), w, b)
    with pytest.raises(ValueError, match="must not alias"):
        conv3x3_bias_relu(x, w, b, out=x)
    with pytest.raises(ValueError, match="out must be"):
        conv3x3_bias_relu(x, w, b, out=torch.empty(1, 4, 5, 16, device=device))
    with pytest.raises(ValueError, match="fp32 bias"):
        conv3x3_bias_relu(x, w, b.double())
    with pytest.raises(ValueError, match="expected a Y plane"):
        conv3x3_head(
            torch.rand(1, 3, 4, 4, device=device),
            pack_conv3x3_weight(torch.rand(16, 1, 3, 3), torch.float32).to(device),
            b,
        )
    with pytest.raises(ValueError, match="is on meta"):
        conv3x3_bias_relu(x, w.to("meta"), b)


def test_share_row_refuses_a_launch_whose_last_rows_would_wrap_int32():
    """SHARE_ROW's programs step by block_m - 2 pixels (not a power of two): within block_m of 2**31 pixels the last
    program's row offsets passed 2**31 - 1 and wrapped negative, unmasked (a review's finding; the default configs
    step by powers of two and cannot). Refused before the launch: 64 x 18631 x 1801 = 2**31 - 64 pixels."""
    from vdsr_fast.kernels.triton.conv3x3 import _launch

    cfg = ConvConfig(128, 16, 16, 8, 2, share_row=True)
    x = torch.zeros(1, 1, 1, 16).expand(64, 18631, 1801, 16)  # no memory behind the pixels: refused first
    with pytest.raises(ValueError, match=r"64x18631x1801 pixels is too many for one share_row launch \(block_m 128\)"):
        _launch(x, x.stride(), None, None, None, 64, 18631, 1801, 16, 16, False, True, cfg)


# --- several channel blocks, strides, and reads and writes at the edges of views (a mutation audit of the kernels)
@pytest.mark.parametrize("c_in", [48, 40], ids=lambda c: f"c_in{c}")
@pytest.mark.parametrize("mode", VIEW_MODES)
def test_body_several_channel_blocks_per_tap(mode, c_in):
    """BLOCK_K < C_IN: each tap's K loop walks several channel blocks (48 = three whole blocks of 16; 40 = two and a
    masked one). Every other body test has C_IN <= BLOCK_K (one block per tap), so a K loop that pairs a channel block
    with the wrong tap or offset passed them. fp32 (the interpreter's tl.dot is exact there), DESIGN.md §6's rule as in
    _check_body: atol 1e-5, while a dropped, repeated or misplaced channel block is an O(0.1-1) error."""
    device = triton_device()
    dtype = torch.float32
    n, h, w, c_out = 2, 5, 7, 16
    torch.manual_seed(c_in)
    wt, b = he_layer(c_in, c_out, device)
    x = torch.rand(n, h, w, c_in, device=device)
    out = _nan_out(n, h, w, c_out, dtype, device)
    conv3x3_bias_relu(x, pack_conv3x3_weight(wt, dtype), b, out=out, config=ConvConfig(64, 16, 16, 4, 2, **VIEW_MODES[mode]))
    ref64, same = _body_ref(x, wt, b)
    assert_equivalent(out.permute(0, 3, 1, 2), same, ref64, dtype, f"{mode} body, {c_in} channels in blocks of 16")


@pytest.mark.parametrize("mode", VIEW_MODES)
def test_body_reads_channels_through_their_stride_in_every_mode(mode):
    """A channels-last view of an NCHW tensor (channel stride H*W) in each body mode (test_body_non_contiguous_input
    covers the default raster mode only). fp32, the rule of _check_body (atol 1e-5); a channel stride taken as 1
    reads other pixels' values, an O(1) error."""
    device = triton_device()
    dtype = torch.float32
    n, h, w, c_in, c_out = 2, 6, 9, 16, 16
    torch.manual_seed(3)
    wt, b = he_layer(c_in, c_out, device)
    x = torch.rand(n, c_in, h, w, device=device).permute(0, 2, 3, 1)
    assert x.stride(3) == h * w
    out = _nan_out(n, h, w, c_out, dtype, device)
    conv3x3_bias_relu(x, pack_conv3x3_weight(wt, dtype), b, out=out, config=_mode_config(mode, c_in, c_out, dtype))
    ref64, same = _body_ref(x, wt, b)
    assert_equivalent(out.permute(0, 3, 1, 2), same, ref64, dtype, f"{mode} body on a channels-last view")


@pytest.mark.parametrize("mode", VIEW_MODES)
def test_body_reads_no_weight_or_bias_beyond_its_tensor(mode):
    """Packed weights and bias as contiguous views at the front of NaN-filled buffers, with C_IN = 5 and C_OUT = 24
    (K and N masked: BLOCK_K 16, BLOCK_N 32): a weight load whose channel mask is dropped reads past the last filter's
    end (NaN; times a zero-masked activation still NaN) -- finite garbage on a GPU, or a fault. fp32, the rule of
    _check_body (atol 1e-5): any such read shows as NaN."""
    device = triton_device()
    dtype = torch.float32
    n, h, w, c_in, c_out = 2, 5, 7, 5, 24
    torch.manual_seed(5)
    wt, b = he_layer(c_in, c_out, device)
    x = torch.rand(n, h, w, c_in, device=device)
    out = _nan_out(n, h, w, c_out, dtype, device)
    conv3x3_bias_relu(x, nan_tailed(pack_conv3x3_weight(wt, dtype)), nan_tailed(b), out=out,
                      config=_mode_config(mode, c_in, c_out, dtype))  # fmt: skip
    ref64, same = _body_ref(x, wt, b)
    assert_equivalent(out.permute(0, 3, 1, 2), same, ref64, dtype, f"{mode} body, NaN after its weights and bias")


@pytest.mark.parametrize("mode", [*VIEW_MODES, "head"])
def test_writes_nothing_outside_its_output_view(mode):
    """The output is a view into a larger NaN buffer: 8 more channels after its 24 (BLOCK_N 32: the masked channels of
    each pixel) and one more image after the batch (a pixel slot past N*H*W). Only the view may be written: the rest
    stays NaN, the view is finite and holds the layer (fp32, the rule of _check_body / _check_head, atol 1e-5)."""
    device = triton_device()
    dtype = torch.float32
    n, h, w, c_in, c_out = 2, 5, 7, 16, 24
    torch.manual_seed(9)
    big = torch.full((n + 1, h, w, c_out + 8), float("nan"), dtype=dtype, device=device)
    out = big[:n, :, :, :c_out]
    if mode == "head":
        wt, b = he_layer(1, c_out, device)
        y = torch.rand(n, 1, h, w, device=device)
        conv3x3_head(y, pack_conv3x3_weight(wt, dtype), b, out=out)
        ref64 = F.relu(F.conv2d(y.double(), wt.double(), b.double(), padding=1))
        same = F.relu(F.conv2d(y, wt, b, padding=1))
    else:
        wt, b = he_layer(c_in, c_out, device)
        x = torch.rand(n, h, w, c_in, device=device)
        conv3x3_bias_relu(x, pack_conv3x3_weight(wt, dtype), b, out=out, config=_mode_config(mode, c_in, c_out, dtype))
        ref64, same = _body_ref(x, wt, b)
    assert big[n].isnan().all(), f"{mode}: wrote past the batch"
    assert big[:n, :, :, c_out:].isnan().all(), f"{mode}: wrote channels >= C_OUT"
    assert_equivalent(out.permute(0, 3, 1, 2), same, ref64, dtype, f"{mode} into an output view")


@pytest.mark.parametrize("mode", VIEW_MODES)
def test_a_program_writes_only_its_own_pixels(mode, monkeypatch):
    """No program may store into pixels that another program owns: on a GPU that is a race (programs run in no set
    order), but the interpreter runs them in order, so a later program's store hides an earlier one's stray write
    (SHARE_ROW's two halo slots past its BLOCK_M - 2 outputs, say). So the layer is launched again with one program
    only (program_count patched to 1): every pixel it writes holds the full launch's value, the rest stays NaN.
    Exact (atol 0): the same program computes the same fp32 sums in both launches."""
    import vdsr_fast.kernels.triton.conv3x3 as mod

    device = triton_device()
    dtype = torch.float32
    n, h, w, c = 2, 5, 7, 16  # 70 pixels: more than one program of 64
    torch.manual_seed(13)
    wt, b = he_layer(c, c, device)
    x = torch.rand(n, h, w, c, device=device)
    wp = pack_conv3x3_weight(wt, dtype)
    cfg = ConvConfig(64, 16, 16, 4, 2, **VIEW_MODES[mode])
    full = conv3x3_bias_relu(x, wp, b, config=cfg)
    assert not full.isnan().any()
    monkeypatch.setattr(mod, "program_count", lambda *a, **k: 1)
    out = _nan_out(n, h, w, c, dtype, device)
    conv3x3_bias_relu(x, wp, b, out=out, config=cfg)
    written = ~out.isnan()
    assert written.any() and not written.all()
    torch.testing.assert_close(out[written], full[written], atol=0, rtol=0)

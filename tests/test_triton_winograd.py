"""The Winograd F(2x2, 3x3) body kernel (experimental) against float64 PyTorch: one layer and the network.

Equivalence rule (DESIGN.md §6, tests/equivalence.py): ``err(winograd) <= 2 * err(torch, same dtype) +
atol[dtype] * scale``, err = max |out - ref64|, ref64 = the direct convolution in float64 on the same
weights and input. The factor 2 is what makes Winograd's extra roundings (the transformed input is
rounded to the storage dtype twice, the transformed weights once) a measured quantity: a float64
emulation of the 20-layer network put them at 1.1-1.2x (fp16) and 1.3-1.7x (bf16) the direct
convolution's error, so the rule holds with margin and an indexing or transform bug (O(1)) cannot pass.
Outputs are NaN-poisoned before each run; the odd sizes put partial 2x2 tiles on the right and bottom
edges (their missing pixels must not be written) and the 1x1 image makes every tap but the centre padding.
Without a GPU the kernel runs in Triton's CPU interpreter (fp32 and fp16; bf16 on GPU only, as
tests/equivalence.py explains).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from equivalence import DTYPES, assert_equivalent, he_layer, nan_tailed, random_vdsr, ref64, triton_device

HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

if HAS_TRITON:
    from vdsr_fast import Engine
    from vdsr_fast.kernels.triton.winograd import (
        WinogradConfig,
        conv3x3_winograd,
        pack_winograd_weight,
        winograd_candidates,
        winograd_config,
    )

CASES = [  # (N, H, W, C_IN, C_OUT)
    (1, 1, 1, 64, 64),  # one partial tile: every tap but the centre is padding, 3 of its 4 pixels unwritten
    (3, 7, 5, 64, 64),  # batch > 1, odd height and width: partial tiles on two edges, one partial program
    (1, 10, 12, 64, 64),  # even sizes: whole tiles only
    (2, 9, 6, 5, 24),  # few channels: K and N masked (tl.dot pads them to 16)
]
GPU_CASES = [(1, 720, 1280, 64, 64), (2, 1080, 1920, 64, 64), (1, 2160, 3840, 64, 64), (3, 37, 53, 64, 64)]


def _check(n, h, w, c_in, c_out, dtype, device, *, config=None, permuted_input=False):
    torch.manual_seed(1000 * n + 100 * h + w + c_in)
    g, b = he_layer(c_in, c_out, device)
    x_nchw = torch.rand(n, c_in, h, w, device=device).to(dtype)
    x = x_nchw.permute(0, 2, 3, 1) if permuted_input else x_nchw.permute(0, 2, 3, 1).contiguous()
    out = torch.full((n, h, w, c_out), float("nan"), dtype=dtype, device=device)
    res = conv3x3_winograd(x, pack_winograd_weight(g, dtype), b.float(), out=out, config=config)
    assert res is out
    ref = F.relu(F.conv2d(x_nchw.double(), g.double(), b.double(), padding=1))
    same = F.relu(F.conv2d(x_nchw, g.to(dtype), b.to(dtype), padding=1))
    assert_equivalent(out.permute(0, 3, 1, 2), same, ref, dtype, "winograd layer")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_layer_matches_float64(case, dtype):
    _check(*case, dtype, triton_device(dtype, bf16_dot=True))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "x".join(map(str, c)))
def test_layer_matches_float64_large_gpu(case, dtype):
    device = triton_device(dtype)
    if device.type != "cuda":
        pytest.skip("large sizes run on CUDA only (the CPU interpreter is too slow)")
    _check(*case, dtype, device)


def test_permuted_input_and_2d_tile_blocks():
    """A non-contiguous (NCHW memory) input, and 2-D blocks of tiles with partial blocks on both edges."""
    device = triton_device()
    dtype = torch.float16
    _check(1, 9, 13, 64, 64, dtype, device, permuted_input=True)
    _check(2, 11, 19, 64, 64, dtype, device, config=WinogradConfig(16, 64, 64, 4, 1, tile_tw=4))


def test_reads_nothing_outside_its_view():
    """The input is a crop of a larger NaN-filled tensor (one pixel of NaN around each image, 3 NaN channels after
    the 5 real ones): a patch load of padding or of a channel >= C_IN that is not masked to 0 -- even one whose
    transformed weight is masked to 0, since NaN * 0 = NaN -- shows as NaN outputs. fp32: the rule of _check
    (atol 1e-5), far below the O(1) errors of an indexing bug."""
    device = triton_device()
    dtype = torch.float32
    n, h, w, c_in, c_out = 2, 7, 6, 5, 24
    torch.manual_seed(17)
    g, b = he_layer(c_in, c_out, device)
    big = torch.full((n, h + 2, w + 2, c_in + 3), float("nan"), dtype=dtype, device=device)
    x = big[:, 1 : h + 1, 1 : w + 1, :c_in]
    x.copy_(torch.rand(n, h, w, c_in, device=device))
    out = torch.full((n, h, w, c_out), float("nan"), dtype=dtype, device=device)
    conv3x3_winograd(x, pack_winograd_weight(g, dtype), b, out=out)
    x_nchw = x.permute(0, 3, 1, 2)
    ref = F.relu(F.conv2d(x_nchw.double(), g.double(), b.double(), padding=1))
    same = F.relu(F.conv2d(x_nchw.contiguous(), g, b, padding=1))
    assert_equivalent(out.permute(0, 3, 1, 2), same, ref, dtype, "winograd layer on a cropped view")


def test_every_candidate_on_a_small_frame():
    """Each config the GPU sweep times computes the layer (on CUDA: all of them; interpreted: three)."""
    device = triton_device()
    dtype = torch.float16
    configs = winograd_candidates(dtype)
    assert configs[0] == winograd_config(64, 64, dtype) and len(set(configs)) == len(configs)
    if device.type != "cuda":
        configs = [configs[0], *(c for c in configs if c.tile_tw)][:3]
    for cfg in configs:
        _check(1, 13, 10, 64, 64, dtype, device, config=cfg)


def test_packed_weights_are_the_winograd_transform_in_float64():
    """pack_winograd_weight's U, used with the F(2x2, 3x3) input and output transforms (B^T, A^T: Lavin & Gray 2016,
    written out here), gives the 3x3 convolution of a 4x4 tile to float64 precision: the layout is U[xi * 4 + nu] and
    the transform is computed in float64 (in float32 the error would be ~1e-7)."""
    bt = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=torch.float64)
    at = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=torch.float64)
    g = torch.randn(3, 2, 3, 3, dtype=torch.float64)  # (C_OUT, C_IN, 3, 3)
    d = torch.randn(2, 4, 4, dtype=torch.float64)  # one 4x4 input tile per input channel
    u = pack_winograd_weight(g, torch.float64)
    assert u.shape == (16, 3, 2) and u.dtype == torch.float64 and u.is_contiguous()
    v = bt @ d @ bt.T  # (C_IN, 4, 4)
    m = torch.einsum("xyoc,cxy->oxy", u.reshape(4, 4, 3, 2), v)
    y = at @ m @ at.T  # (C_OUT, 2, 2)
    torch.testing.assert_close(y, F.conv2d(d[None], g)[0], rtol=0, atol=1e-12)


def test_argument_errors():
    device = triton_device()
    x = torch.rand(1, 4, 4, 8, device=device)
    u = pack_winograd_weight(torch.randn(8, 8, 3, 3), torch.float32).to(device)
    b = torch.zeros(8, device=device)
    with pytest.raises(ValueError, match="expected a \\(C_OUT, C_IN, 3, 3\\) weight"):
        pack_winograd_weight(torch.randn(8, 8, 5, 5), torch.float32)
    with pytest.raises(ValueError, match="packed \\(16, C_OUT, C_IN\\)"):
        conv3x3_winograd(x, u[:9], b)
    with pytest.raises(ValueError, match="do not match 4 input channels"):
        conv3x3_winograd(x[..., :4], u, b)
    with pytest.raises(TypeError, match="activations are torch.float16"):
        conv3x3_winograd(x.half(), u, b)
    with pytest.raises(ValueError, match="must not alias"):
        conv3x3_winograd(x, u, b, out=x)
    with pytest.raises(ValueError, match="must divide block_t"):
        WinogradConfig(64, 64, 64, 8, 2, tile_tw=24)


def _check_network(depth, channels, n, h, w, dtype, device):
    model = random_vdsr(depth, channels, seed=depth + h).to(device)
    y = torch.rand(n, 1, h, w, device=device)
    engine = Engine(model, backend="triton", dtype=dtype, device=device, body_config=winograd_config(64, 64, dtype))
    assert engine._impl.winograd
    for buf in engine._impl.buffers(n, h, w):
        buf.fill_(float("nan"))
    out = engine(y)
    with torch.no_grad():
        same = Engine(model, backend="torch", dtype=dtype, device=device)(y)
        ref = ref64(model, y)
    assert_equivalent(out, same, ref, dtype, "winograd network", scaled=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_network_matches_float64(dtype):
    """The published depth on a small odd batch through the engine (head and tail: the direct kernels)."""
    _check_network(20, 64, 2, 7, 5, dtype, triton_device(dtype, bf16_dot=True))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", [(720, 1280), (1080, 1920), (2160, 3840)], ids=lambda s: f"{s[1]}x{s[0]}")
def test_network_matches_float64_large_gpu(size, dtype):
    device = triton_device(dtype)
    if device.type != "cuda":
        pytest.skip("large sizes run on CUDA only (the CPU interpreter is too slow)")
    _check_network(20, 64, 1, *size, dtype, device)


def test_custom_op_and_compile():
    """The Winograd body's custom op (schema, fake tensor) and an engine call traced in one graph."""
    device = triton_device()
    model = random_vdsr(3, 16, seed=9).to(device)
    engine = Engine(model, backend="triton", dtype=torch.float32, device=device, body_config=winograd_config(16, 16, torch.float32))
    impl = engine._impl
    x = torch.rand(2, 5, 7, 16, device=device)
    torch.library.opcheck(
        torch.ops.vdsr_fast.triton_conv3x3_winograd, (x, impl.w_body[0], impl.b_body[0]),
        test_utils=("test_schema", "test_faketensor"),
    )  # fmt: skip
    y = torch.rand(1, 1, 5, 6, device=device)
    compiled = torch.compile(lambda t: engine(t), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(y), engine(y), atol=0, rtol=0)


# --- several channel blocks, strides, and reads and writes at the edges of views (a mutation audit of the kernels)
def test_several_channel_blocks():
    """BLOCK_K < C_IN: 40 channels in K blocks of 16 (two whole, one masked); the other tests have one K block.
    fp32, the rule of _check (atol 1e-5): a block paired with the wrong weights is an O(0.1) error."""
    _check(1, 5, 7, 40, 16, torch.float32, triton_device(), config=WinogradConfig(16, 16, 16, 4, 1))


def test_reads_no_weight_beyond_and_writes_only_its_view():
    """C_IN = 5, C_OUT = 24 (K and N masked: 16, 32); the transformed weights and bias as views at the front of NaN
    buffers (an unmasked read past U's end is NaN, times a zero patch value still NaN); the output a view into a NaN
    buffer with 8 more channels and one more image (a write of a masked channel or past the batch leaves a non-NaN
    there); odd sizes (partial 2x2 tiles). fp32, the rule of _check (atol 1e-5)."""
    device = triton_device()
    dtype = torch.float32
    n, h, w, c_in, c_out = 2, 7, 5, 5, 24
    torch.manual_seed(23)
    g, b = he_layer(c_in, c_out, device)
    x_nchw = torch.rand(n, c_in, h, w, device=device)
    big = torch.full((n + 1, h, w, c_out + 8), float("nan"), dtype=dtype, device=device)
    out = big[:n, :, :, :c_out]
    conv3x3_winograd(x_nchw.permute(0, 2, 3, 1).contiguous(), nan_tailed(pack_winograd_weight(g, dtype)), nan_tailed(b), out=out)
    assert big[n].isnan().all() and big[:n, :, :, c_out:].isnan().all(), "wrote outside the output view"
    ref = F.relu(F.conv2d(x_nchw.double(), g.double(), b.double(), padding=1))
    same = F.relu(F.conv2d(x_nchw, g, b, padding=1))
    assert_equivalent(out.permute(0, 3, 1, 2), same, ref, dtype, "winograd layer on views")

"""The FP8 (e4m3) engine: the scheme (vdsr_fast/fp8.py), its Triton kernels against its PyTorch emulation, and the
network against float64 (DESIGN.md §6's rule, PyTorch's same dtype being the emulation).

Without a GPU the kernels run in Triton's interpreter, whose tl.dot on e4m3 operands is exact (fp32 products and
sums) but whose fp32 -> e4m3 cast is not round-to-nearest: the kernels round in fp32 first there
(``e4m3_epilogue(EXACT=True)``), and the first test holds that rounding to PyTorch's cast value by value.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import need_data
from equivalence import assert_equivalent, random_vdsr, ref64, triton_device

import vdsr_fast
from vdsr_fast import fp8
from vdsr_fast.engine import Engine, tf32_mode
from vdsr_fast.verify import fill_nan

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
E4M3 = torch.float8_e4m3fn

if HAS_TRITON:
    from vdsr_fast.kernels.triton.conv3x3 import ConvConfig, conv3x3_bias_relu, conv3x3_head, pack_conv3x3_weight
    from vdsr_fast.kernels.triton.conv3x3_tma import TmaConfig, conv3x3_tma, conv3x3_tma_tail_partials


def _e4m3_values() -> torch.Tensor:
    """Every finite non-negative e4m3 value, ascending."""
    v = torch.arange(128, dtype=torch.uint8).view(E4M3).float()
    return v[torch.isfinite(v)].unique()


def test_round_e4m3_is_nearest_even_and_saturates():
    x = torch.tensor([1.0625, 1.1875, 500.0, 448.0, 2.0**-10, 3 * 2.0**-10, -1.0625, 0.0])
    want = torch.tensor([1.0, 1.25, 448.0, 448.0, 0.0, 2.0**-8, -1.0, 0.0])
    assert torch.equal(fp8.round_e4m3(x), want)


@needs_triton
def test_kernel_rounding_equals_torch_cast():
    """The head kernel with a centre-tap identity filter writes e4m3(relu(y)): every e4m3 value, every midpoint
    between neighbours (ties: to even), points just off them, subnormals, values above 448 (saturate)."""
    device = triton_device(torch.float32)
    v = _e4m3_values()
    mid = (v[1:] + v[:-1]) / 2
    eps = torch.finfo(torch.float32).eps
    y = torch.cat([v, mid, mid * (1 + 4 * eps), mid * (1 - 4 * eps), torch.tensor([449.0, 463.9, 464.0, 1e6, -3.0])])
    y = torch.cat([y, torch.rand(64 * 16 - y.numel() % (64 * 16)) * 500])  # random values, to a whole shape
    y = y.reshape(-1, 16, 64).to(device)
    c = 16
    w = torch.zeros(c, 9, device=device)
    w[:, 4] = 1.0  # centre tap
    out = conv3x3_head(y, w, torch.zeros(c, device=device), out_dtype=E4M3)
    assert out.dtype == E4M3
    want = fp8.round_e4m3(F.relu(y))[..., None].expand(*y.shape, c)
    assert torch.equal(out.float(), want), "e4m3 rounding differs from torch's cast"


def _layer_inputs(n, h, w, c, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(n, h, w, c, generator=g) * 40  # activations in scaled units (as the engine's)
    q = (q * (torch.rand(n, h, w, c, generator=g) >= 0.4)).to(E4M3)  # 40% post-ReLU zeros
    wq = (torch.randn(c, c, 3, 3, generator=g) * 100).clamp(-448, 448).to(E4M3)
    alpha = torch.rand(c, generator=g) * 1e-3 + 1e-4
    beta = torch.randn(c, generator=g) * 2
    return q.to(device), wq.to(device), alpha.to(device), beta.to(device)


def _emulated_layer(q, wq, alpha, beta):
    with tf32_mode(False):  # on a GPU, PyTorch's fp32 convolutions would otherwise round their inputs to TF32
        acc = F.conv2d(q.float().permute(0, 3, 1, 2), wq.float(), padding=1)
    return F.relu(acc * alpha[None, :, None, None] + beta[None, :, None, None]).permute(0, 2, 3, 1)


@needs_triton
@pytest.mark.parametrize("case", [(2, 7, 19, 64), (1, 1, 1, 64), (1, 9, 33, 32)], ids=lambda c: "{}x{}x{}x{}".format(*c))
@pytest.mark.parametrize("tile", ["default", "swap4x8", "k32"])
def test_tma_fp8_layer_equals_emulation(case, tile):
    """One body layer: e4m3 out, equal to the emulation's rounding of the same fp32 epilogue. A different summation
    order moves a value across a rounding midpoint now and then: on Hopper the 8-bit wgmma accumulates with ~14
    significant bits (Triton's default there), which flips ~0.1% of the outputs by one step; 1% is allowed."""
    device = triton_device(torch.float16)
    n, h, w, c = case
    config = {"default": None, "swap4x8": TmaConfig(4, 8, 64, 4, 2, swap=True), "k32": TmaConfig(4, 8, 32, 4, 2)}[tile]
    if c % (config.block_k if config else 64):
        pytest.skip("channels not a multiple of block_k")
    q, wq, alpha, beta = _layer_inputs(n, h, w, c, device)
    out = fill_nan(torch.empty((n, h, w, c), device=device, dtype=E4M3))
    conv3x3_tma(q, pack_conv3x3_weight(wq, E4M3), beta, out, config=config, alpha=alpha)
    want = fp8.round_e4m3(_emulated_layer(q, wq, alpha, beta))
    got = out.float()
    assert torch.isfinite(got).all(), "unwritten outputs (NaN poison left)"
    differ = got != want
    assert differ.float().mean() <= 1e-2, f"{int(differ.sum())} of {got.numel()} outputs differ"
    codes = (out.view(torch.uint8).int() - want.to(E4M3).view(torch.uint8).int()).abs()
    assert codes.max() <= 1, "an output is more than one e4m3 step from the emulation"


@needs_triton
def test_tma_fp8_tail_partials_equal_emulation():
    device = triton_device(torch.float16)
    n, h, w, c = 2, 6, 11, 64
    q, wq, alpha, beta = _layer_inputs(n, h, w, c, device, seed=3)
    tail = torch.randn(1, c, 3, 3, generator=torch.Generator().manual_seed(4)).to(device)
    tw = torch.zeros(c, 16, device=device, dtype=torch.float16)
    tw[:, :9] = tail[0].reshape(c, 9).half()
    z = conv3x3_tma_tail_partials(q, pack_conv3x3_weight(wq, E4M3), beta, tw, config=TmaConfig(4, 8, 64, 4, 2, swap=True), alpha=alpha)
    act = _emulated_layer(q, wq, alpha, beta).half().float().reshape(-1, c)
    torch.testing.assert_close(z, act @ tw[:, :9].float(), rtol=1e-4, atol=1e-4)


@needs_triton
def test_fp8_launcher_errors():
    device = triton_device(torch.float16)
    q, wq, alpha, beta = _layer_inputs(1, 4, 8, 64, device)
    packed = pack_conv3x3_weight(wq, E4M3)
    with pytest.raises(ValueError, match="alpha is required"):
        conv3x3_tma(q, packed, beta)
    half = torch.zeros(1, 4, 8, 64, device=device, dtype=torch.float16)
    with pytest.raises(ValueError, match="alpha is required"):
        conv3x3_tma(half, pack_conv3x3_weight(wq.float(), torch.float16), beta, alpha=alpha)
    with pytest.raises(ValueError, match="alpha must be"):
        conv3x3_tma(q, packed, beta, alpha=alpha.double())
    with pytest.raises(TypeError, match="run on conv3x3_tma"):
        conv3x3_bias_relu(q, packed, beta)


def _check_network(model, y, **options):
    engine = Engine(model, backend="triton", dtype=E4M3, device=y.device, **options)
    for buf in engine._impl.buffers(y.shape[0], y.shape[2], y.shape[3]):
        fill_nan(buf)
    out = engine(y)
    with torch.no_grad():
        ref = ref64(model, y)
    same = Engine(model, backend="torch", dtype=E4M3, device=y.device)(y)
    # The rule's float8 form checks the mean error too: a rounding flip (last test) changes an activation by a whole
    # e4m3 step and the next layers carry it on, so the network's outputs are not the emulation's (with 2**-14
    # relative noise in the sums, the emulation itself moves by 0.017 on average, as much as its own error) but must
    # be as accurate on average.
    assert_equivalent(out, same, ref, E4M3, "fp8 network", scaled=False)
    return out


@needs_triton
@pytest.mark.parametrize("case", [(20, 64, 3, 7, 5), (3, 64, 1, 13, 11), (3, 64, 1, 1, 1), (4, 32, 2, 9, 6)],
                         ids=lambda c: "d{}c{}_{}x{}x{}".format(*c))  # fmt: skip
def test_network_fp8_matches_float64(case):
    depth, channels, n, h, w = case
    device = triton_device(torch.float16)
    model = random_vdsr(depth, channels, seed=depth).to(device)
    _check_network(model, torch.rand(n, 1, h, w, device=device))


@needs_triton
@pytest.mark.parametrize("size", [(1, 720, 1280), (1, 1080, 1920), (3, 37, 53)], ids=lambda s: "{}x{}x{}".format(*s))
def test_network_fp8_large_gpu(size):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device("cuda")
    if torch.cuda.get_device_capability(device) < (8, 9):
        pytest.skip("no 8-bit tensor cores (compute capability < 8.9)")
    for model in (vdsr_fast.load(), random_vdsr(seed=1)):
        model = model.to(device)
        y = torch.rand(size[0], 1, *size[1:], device=device)
        out = _check_network(model, y)
        graphs = Engine(model, backend="triton", dtype=E4M3, device=device, cuda_graphs=True)
        assert torch.equal(graphs(y), out) and torch.equal(graphs(y), out), "CUDA-graph replays differ from the eager run"


@needs_triton
def test_fp8_backend_options():
    device = triton_device(torch.float16)
    model = random_vdsr(3, 64, seed=3).to(device)
    with pytest.raises(ValueError, match="fuse_tail=True"):
        Engine(model, backend="triton", dtype=E4M3, device=device, fuse_tail=False)
    with pytest.raises(ValueError, match="TMA body only"):
        Engine(model, backend="triton", dtype=E4M3, device=device, body_config=ConvConfig(128, 64, 64, 4, 2))
    with pytest.raises(ValueError, match="C_IN=16"):  # 8-bit tl.dot needs K >= 32
        Engine(random_vdsr(3, 16), backend="triton", dtype=E4M3, device=device)
    engine = Engine(model, backend="triton", dtype=E4M3, device=device)
    with pytest.raises(NotImplementedError, match="torch.compile"):
        engine._impl.forward_ops(torch.rand(1, 1, 4, 4, device=device))
    assert engine.buffer_bytes == 0
    engine(torch.rand(1, 1, 5, 6, device=device))
    assert engine.buffer_bytes == 2 * 5 * 6 * 64  # one byte per activation


def test_cuda_backend_refuses_fp8():
    """The CUDA extension has no FP8 kernels: asked for them, it says so (where it runs)."""
    from vdsr_fast.engine import BackendUnavailable, _backend_class, available_backends

    assert E4M3 not in _backend_class("cuda").dtypes
    if torch.cuda.is_available() and available_backends("cuda")["cuda"] is None:
        with pytest.raises(BackendUnavailable, match="does not support dtype torch.float8_e4m3fn"):
            Engine(random_vdsr(3, 64), backend="cuda", dtype=E4M3, device="cuda")


def test_calibration_is_deterministic_and_weight_dependent():
    a, b = fp8.activation_amax(random_vdsr(seed=1)), fp8.activation_amax(random_vdsr(seed=1))
    assert a == b and a[0] == 1.0 and all(x > 0 for x in a)
    assert fp8.activation_amax(random_vdsr(seed=2)) != a
    p = fp8.pack(random_vdsr(seed=1))
    assert len(p.body_w) == len(p.alpha) == len(p.scales) == 18 and p.body_w[0].dtype == E4M3
    assert p.body_w[0].float().abs().amax(dim=(1, 2, 3)).eq(448).all()  # each channel's largest weight at the top
    with pytest.raises(ValueError, match="body layer"):
        fp8.pack(random_vdsr(2, 8))


def test_calibration_covers_natural_images():
    """The random 0/1 calibration planes drive every layer of the shipped weights harder than a real image's
    bicubic upscale at x2, x3 and x4 does (the scheme's claim: no calibration data needed)."""
    from vdsr_fast.evaluate import load_y
    from vdsr_fast.imaging import imresize

    hr = load_y(sorted(need_data("eval", "Set5", "x2").glob("*_HR.png"))[2])[:120, :120]
    model = vdsr_fast.load()
    amax = fp8.activation_amax(model)
    for s in (2, 3, 4):
        h = imresize(imresize(hr[: 120 - 120 % s, : 120 - 120 % s], 1 / s), s).float()[None, None]
        with torch.no_grad():
            for i, conv in enumerate(model.layers[:-1]):
                assert h.abs().max() <= amax[i], f"x{s}: layer {i}'s input {h.abs().max():.3f} > calibrated {amax[i]:.3f}"
                h = F.relu(conv(h))


def test_fp8_quality_on_set5():
    """The scheme's quality claim: Set5 x2 PSNR within 0.03 dB of fp32 (measured +0.005; README's table)."""
    from vdsr_fast.evaluate import evaluate

    folder = need_data("eval", "Set5")
    model = vdsr_fast.load()
    base = evaluate(folder, 2, Engine(model, backend="torch", device="cpu")).mean("psnr")
    q = evaluate(folder, 2, Engine(model, backend="torch", dtype=E4M3, device="cpu")).mean("psnr")
    assert abs(q - base) <= 0.03, f"fp8 {q:.3f} dB vs fp32 {base:.3f} dB"
    assert np.isfinite(q)


@needs_triton
def test_self_check_allows_the_scheme_error_only():
    """Engine's self-check (run on a GPU at construction) bounds an FP8 backend by the emulation's own error too:
    the kernels pass it, a backend that drops the residual does not."""
    from vdsr_fast.engine import self_check

    device = triton_device(torch.float16)
    model = vdsr_fast.load().to(device)
    impl = Engine(model, backend="triton", dtype=E4M3, device=device)._impl
    assert self_check(impl, model, device) is None

    class NoResidual:
        dtype = E4M3

        def __call__(self, y):
            return y

    assert "failed" in self_check(NoResidual(), model, device)


@needs_triton
def test_verify_checks_fp8_by_the_mean_too(monkeypatch):
    """vdsr-fast verify on the FP8 engine: the real kernels pass; a 0.004 bias (one 8-bit level) everywhere stays
    inside the loose max rule but fails the mean."""
    from vdsr_fast.engine import _backend_class
    from vdsr_fast.verify import verify

    device = triton_device(torch.float16)
    args = dict(models={"random": random_vdsr(depth=4, channels=32, seed=2)}, device=device, shapes=[(1, 12, 16)],
                dtypes=[E4M3], seed=5, backends=["triton"])  # fmt: skip
    r = verify(**args)
    assert r["ok"], r["rows"]
    cls = _backend_class("triton")
    orig = cls.__call__
    monkeypatch.setattr(cls, "__call__", lambda self, y: orig(self, y) + 0.004)
    r = verify(**args)
    row = next(x for x in r["rows"] if x.backend == "triton")
    assert row.err <= row.bound and "mean error" in row.status, row


def test_round_e4m3_keeps_the_input_dtype():
    """round_e4m3 returns ``x``'s own dtype (float64, float16, bfloat16 here), holding the e4m3 values of fp32 input."""
    x = (torch.rand(257) - 0.3) * 600  # both signs, some beyond ±448
    want = fp8.round_e4m3(x.float())
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        got = fp8.round_e4m3(x.to(dtype))
        assert got.dtype == dtype
        assert torch.equal(got.float(), fp8.round_e4m3(x.to(dtype).float())), dtype
    assert torch.equal(fp8.round_e4m3(x.double()).float(), want)


def test_pack_layout_and_scales():
    """The packed tensors' dtypes and shapes (the kernels read them as such) and the activation scales
    ``s_i = 2 amax_i / 448`` of the body layers' inputs (the headroom of 2 over the calibrated amax)."""
    model = random_vdsr(6, 16, seed=4)
    p = fp8.pack(model)
    amax = fp8.activation_amax(model)
    assert p.scales == pytest.approx([2 * a / 448 for a in amax[1:-1]], rel=1e-12) and len(p.scales) == 4
    assert p.head_w.shape == (16, 1, 3, 3) and p.head_w.dtype == p.head_b.dtype == torch.float32
    assert [(w.shape, w.dtype) for w in p.body_w] == [((16, 16, 3, 3), E4M3)] * 4
    assert all(t.shape == (16,) and t.dtype == torch.float32 for t in (*p.alpha, *p.beta))
    assert p.tail_w.shape == (1, 16, 3, 3) and p.tail_w.dtype == torch.float16  # the fused tail's weights are fp16
    assert p.tail_b.dtype == torch.float32
    # the head writes q_1 = a_1 / s_1: its bias is the model's divided by s_1; body layer i's epilogue writes
    # a_{i+1} / s_{i+1} (s = 1 after the last body layer, whose output only the tail reads): beta = b / s_{i+1}
    torch.testing.assert_close(p.head_b.double() * p.scales[0], model.biases[0].detach().double(), rtol=1e-6, atol=0)
    for beta, s_next, b in zip(p.beta, [*p.scales[1:], 1.0], model.biases[1:-1], strict=True):
        torch.testing.assert_close(beta.double() * s_next, b.detach().double(), rtol=1e-6, atol=0)


def test_pack_handles_dead_channels_and_layers():
    """An output channel with all-zero weights (its weight scale would be 0) and a layer that never fires on the
    calibration planes (amax 0, so a zero activation scale) pack to finite scales: the emulation stays finite and as
    accurate as the scheme is, instead of turning every output into NaN (0/0, inf - inf)."""
    model = random_vdsr(5, 16, seed=3)
    with torch.no_grad():
        model.layers[1].weight[0].zero_()  # a dead output channel of the first body layer
        model.layers[2].bias.fill_(-10.0)  # layer 2's ReLU output is 0 on inputs in [0, 1]: layer 3's input amax is 0
    assert fp8.activation_amax(model)[3] == 0.0
    p = fp8.pack(model)
    assert all(torch.isfinite(t).all() for t in (*p.alpha, *p.beta, *(w.float() for w in p.body_w)))
    y = torch.rand(2, 1, 11, 9)
    out = fp8.emulate(p, y)
    with torch.no_grad():
        ref = ref64(model, y)
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max() <= 1e-3


def test_emulate_takes_any_float_input_dtype():
    """emulate's input may be any float dtype (the PyTorch FP8 engine passes the caller's): it computes in fp32 on
    the input's values and returns fp32."""
    p = fp8.pack(random_vdsr(4, 16, seed=2))
    y = torch.rand(1, 1, 7, 10, dtype=torch.float64)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        out = fp8.emulate(p, y.to(dtype))
        assert out.dtype == torch.float32
        assert torch.equal(out, fp8.emulate(p, y.to(dtype).float())), dtype


@needs_triton
def test_fp8_engine_equals_its_emulation_in_the_interpreter():
    """On the CPU, where Triton's interpreter computes the e4m3 products exactly (module docstring), the FP8 engine
    is its emulation up to fp32 summation order: the same scales, e4m3 roundings, the last body layer's output rounded
    to fp16 for the tail, fp16 tail weights. (On a GPU the 8-bit wgmma's shorter accumulator flips some roundings:
    the network tests' rule applies there.)"""
    if torch.cuda.is_available():
        pytest.skip("exact e4m3 sums: Triton's CPU interpreter only")
    model = random_vdsr(4, 32, seed=7)
    y = torch.rand(2, 1, 9, 13)
    out = Engine(model, backend="triton", dtype=E4M3, device="cpu")(y)
    want = fp8.emulate(fp8.pack(model), y)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)  # an fp16 rounding of the last activation is ~3e-5 here

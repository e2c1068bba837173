"""The reference model itself: architecture as DESIGN.md §1, any float dtype."""

import math

import pytest
import torch
import torch.nn.functional as F

from vdsr_fast import VDSR, vdsr_forward
from vdsr_fast.reference import channels_last, flops_per_pixel


def test_architecture_matches_the_paper():
    m = VDSR()
    assert m.depth == 20 and len(m.layers) == 20
    shapes = [tuple(c.weight.shape) for c in m.layers]
    assert shapes[0] == (64, 1, 3, 3) and shapes[-1] == (1, 64, 3, 3)
    assert all(s == (64, 64, 3, 3) for s in shapes[1:-1])
    assert all(c.padding == (1, 1) and c.stride == (1, 1) and c.bias is not None for c in m.layers)
    assert flops_per_pixel() == 2 * (576 + 18 * 36864 + 576)  # ~1.33 MFLOP per output pixel


def test_forward_is_residual_of_conv_relu_chain():
    m = VDSR(depth=5, channels=6).double()
    with torch.no_grad():
        for c in m.layers:
            c.bias.uniform_(-0.1, 0.1)
    x = torch.rand(2, 1, 9, 7, dtype=torch.float64)
    h = x
    for i, c in enumerate(m.layers):  # written out independently of vdsr_forward
        h = F.conv2d(h, c.weight, c.bias, padding=1)
        h = h if i == 4 else torch.clamp_min(h, 0)
    torch.testing.assert_close(m(x), x + h, rtol=0, atol=1e-14)


def test_functional_forward_casts_weights_to_input_dtype():
    m = VDSR(depth=3, channels=4)
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64)
    out = vdsr_forward(x, m.weights, m.biases)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), m(x.float()), rtol=1e-5, atol=1e-6)


def test_forward_on_inputs_outside_0_1():
    """The chain as written out above on a Y plane with values below 0 and above 1 (float frames are not clamped on
    the way in): a ReLU applied to the input itself, or after the last layer, would change it."""
    m = VDSR(depth=4, channels=5).double()
    with torch.no_grad():
        for c in m.layers:
            c.bias.uniform_(-0.1, 0.1)
    x = torch.rand(1, 1, 8, 9, dtype=torch.float64) * 2 - 0.5
    h = x
    for i, c in enumerate(m.layers):
        h = F.conv2d(h, c.weight, c.bias, padding=1)
        h = h if i == 3 else torch.clamp_min(h, 0)
    assert (x < 0).any() and (h < 0).any()
    torch.testing.assert_close(m(x), x + h, rtol=0, atol=1e-14)


def test_initialisation_is_he_fan_out():
    """reset_parameters: weights N(0, 2 / (9 out_channels)) (He, fan-out, as the paper), zero biases. Each 64x64x3x3
    body layer has 36864 samples: its standard deviation is within 2% of the target (the estimate's own spread is
    0.4%)."""
    m = VDSR(depth=4, channels=64)
    for c in m.layers:
        target = math.sqrt(2 / (9 * c.out_channels))
        if c.weight.numel() > 10_000:
            assert c.weight.std().item() == pytest.approx(target, rel=0.02)
            assert abs(c.weight.mean().item()) < 0.05 * target
        assert not c.bias.any()


def test_sizes_and_inputs_outside_the_architecture_are_refused():
    """depth < 2 (no head and tail: depth 1 would build two layers), channels < 1, and an input that is not a
    (N, 1, H, W) Y-plane batch (an RGB batch, a bare plane): ValueErrors saying so."""
    for kw, message in ((dict(depth=1), "depth >= 2 .* got 1"), (dict(depth=0), "depth >= 2"),
                        (dict(channels=0), "channels >= 1, got 0")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            VDSR(**kw)
    m = VDSR(depth=3, channels=4)
    for shape in ((1, 3, 8, 8), (8, 8), (1, 8, 8)):
        with pytest.raises(ValueError, match=r"Y plane batch of shape \(N, 1, H, W\)"):
            m(torch.rand(shape))


def test_head_and_tail_initialisation_is_he_fan_out_too():
    """The 1 -> 64 head and the 64 -> 1 tail: std sqrt(2 / (9 out_channels)), so 0.059 for the head and 0.471 for the
    tail (fan-in would swap them, a factor 8). 576 samples each: the std estimate's spread is ~3%; 15% allowed."""
    m = VDSR(depth=3, channels=64)
    for conv, out_channels in ((m.layers[0], 64), (m.layers[-1], 1)):
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * out_channels)), rel=0.15)


@pytest.mark.parametrize("depth, channels", [(5, 8), (3, 1), (20, 64)])
def test_flops_are_two_per_weight(depth, channels):
    """One multiply-add per weight per output pixel: 2 x the number of conv weights (counted on the model)."""
    assert flops_per_pixel(depth, channels) == 2 * sum(c.weight.numel() for c in VDSR(depth, channels).layers)


@pytest.mark.parametrize("dtype, bound", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_the_half_precision_reference_engine_is_checked_itself(dtype, bound):
    """Every fp16/bf16 equivalence bound is 2 x the PyTorch reference engine's own error + atol (DESIGN.md §6), so
    a wrong reference loosens every bound by twice its error: a +0.05 bias on its bf16 output passed the whole CPU
    suite (found by a review of the tests). Here the reference engine is (a) the network written out layer by layer
    in ``dtype`` (channels_last, as the engine runs it), bit for bit, and (b) within two storage steps at 1.0 of the
    float64 network (measured on the shipped architecture: fp16 8.5e-4, bf16 5.8e-3; one step is 9.8e-4 / 7.8e-3, and
    the output's own rounding takes half of one)."""
    from vdsr_fast import Engine
    from vdsr_fast.verify import random_vdsr

    for seed in range(3):
        model = random_vdsr(seed=seed)
        y = torch.rand(2, 1, 23, 31, generator=torch.Generator().manual_seed(seed))
        out = Engine(model, backend="torch", dtype=dtype, device="cpu")(y)
        cl = torch.channels_last
        x = h = channels_last(y.to(dtype))  # channels_last strides from the first conv on, as the engine gives it
        for i, conv in enumerate(model.layers):
            w, b = conv.weight.detach().to(dtype).contiguous(memory_format=cl), conv.bias.detach().to(dtype)
            h = F.conv2d(h, w, b, padding=1)
            h = F.relu(h) if i < len(model.layers) - 1 else x + h
        torch.testing.assert_close(out, h.to(torch.float32), rtol=0, atol=0)
        ref = vdsr_forward(y.double(), [w.double() for w in model.weights], [b.double() for b in model.biases])
        err = (out.double() - ref).abs().max().item()
        assert 0 < err <= bound, (seed, err)


def test_channels_last_gives_a_one_channel_plane_channels_last_strides():
    """``x.contiguous(memory_format=torch.channels_last)`` keeps a 1-channel plane's NCHW strides, which PyTorch reads
    as NCHW: the first conv of a Y plane ran NCHW and gave other bits than a window cut out of it (found by a review:
    tiled output off by 2e-6). ``channels_last`` gives channels_last strides, as a view of the same memory."""
    y = torch.rand(2, 1, 5, 7)
    assert y.contiguous(memory_format=torch.channels_last).stride() == (35, 35, 7, 1)  # why the helper exists
    got = channels_last(y)
    assert got.stride() == (35, 1, 7, 1) and got.data_ptr() == y.data_ptr() and torch.equal(got, y)
    w = torch.rand(4, 1, 3, 3)
    assert F.conv2d(got, w, padding=1).is_contiguous(memory_format=torch.channels_last)
    assert not F.conv2d(y, w, padding=1).is_contiguous(memory_format=torch.channels_last)
    rgb = torch.rand(1, 3, 4, 6)[..., ::2, :]  # a strided view: copied, with channels_last's strides
    assert channels_last(rgb).stride() == rgb.contiguous(memory_format=torch.channels_last).stride() == (36, 1, 18, 3)
    assert torch.equal(channels_last(rgb), rgb) and channels_last(torch.rand(1, 2, 1, 1)).stride() == (2, 1, 2, 2)

"""The tensor-descriptor (TMA) body kernel (vdsr_fast/kernels/triton/conv3x3_tma.py) against float64 PyTorch.

On a machine without a GPU these run in Triton's interpreter (TRITON_INTERPRET=1, fp32/fp16; the
interpreter's bf16 tl.dot is wrong, so bf16 runs on a GPU only), where the descriptor loads and stores are
ordinary memory accesses with the same out-of-bounds rules as the hardware's TMA (zero-fill, clipping).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from tests.equivalence import DTYPES, assert_equivalent, triton_device

HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

if HAS_TRITON:
    from vdsr_fast.kernels.triton.conv3x3 import (
        conv3x3_bias_relu,
        conv3x3_bias_relu_tail_partials,
        pack_conv3x3_weight,
        pack_tail_partials_weight,
    )
    from vdsr_fast.kernels.triton.conv3x3_tma import (
        TmaConfig,
        conv3x3_tma,
        conv3x3_tma_tail_partials,
        tma_candidates,
        tma_config,
    )

CASES = [  # (N, H, W, C): tiles cut by every border, one-pixel images, batches, 16 channels
    (2, 7, 19, 64),
    (1, 1, 1, 64),
    (3, 9, 33, 16),
    (1, 17, 5, 32),
]


def _layer(n, h, w, c, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, h, w, c, generator=g).to(device=device, dtype=dtype)
    wt = (torch.randn(c, c, 3, 3, generator=g) * (2.0 / (9 * c)) ** 0.5).to(device)
    b = (torch.rand(c, generator=g) * 0.2 - 0.1).to(device)
    return x, wt, b


def _check(case, dtype, config, device):
    n, h, w, c = case
    x, wt, b = _layer(n, h, w, c, dtype, device, seed=h * 100 + w)
    out = torch.full_like(x, float("nan"))
    assert conv3x3_tma(x, pack_conv3x3_weight(wt, dtype), b, out, config=config) is out
    x_nchw = x.permute(0, 3, 1, 2)
    ref64 = F.relu(F.conv2d(x_nchw.double(), wt.double(), b.double(), padding=1))
    same = F.relu(F.conv2d(x_nchw, wt.to(dtype), b.to(dtype), padding=1))
    assert_equivalent(out.permute(0, 3, 1, 2), same, ref64, dtype, f"tma {config} {case}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_tma_body_matches_float64(case, dtype):
    device = triton_device(dtype, bf16_dot=True)
    _check(case, dtype, TmaConfig(4, 8, 16, 4, 2), device)  # small tiles: several per image
    if case[3] == 64:
        _check(case, dtype, tma_config(dtype), device)


@pytest.mark.parametrize("swap", [False, True])
def test_tma_body_swap_and_tile_shapes(swap):
    device = triton_device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    for tile in ((2, 16), (8, 8), (1, 32)):
        _check((2, 9, 21, 32), dtype, TmaConfig(*tile, 16, 4, 2, swap=swap), device)


def test_every_tma_candidate_agrees_with_the_direct_kernel():
    """The configs a GPU run sweeps compute the same layer as the default direct kernel (a final rounding
    apart: the dot's internal order may differ)."""
    device = triton_device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    x, wt, b = _layer(1, 11, 37, 64, dtype, device, seed=5)
    w = pack_conv3x3_weight(wt, dtype)
    ref = conv3x3_bias_relu(x, w, b)
    configs = tma_candidates(dtype)
    assert len(configs) > 1 and len(set(configs)) == len(configs)
    if device.type == "cpu":  # the interpreter ignores warps and stages: one run per tile shape
        configs = list({(c.tile_h, c.tile_w, c.block_k, c.swap): c for c in configs}.values())
    ulp = 1e-6 if dtype == torch.float32 else 2.0**-10
    for cfg in configs:
        out = conv3x3_tma(x, w, b, config=cfg)
        torch.testing.assert_close(out, ref, atol=ulp * max(1.0, ref.abs().max().item()), rtol=0,
                                   msg=lambda m, cfg=cfg: f"{cfg}: {m}")  # fmt: skip


@pytest.mark.parametrize("config", [None, "small", "swap-small"])
@pytest.mark.parametrize("size", [(2, 7, 19), (1, 1, 1), (1, 9, 33)], ids=lambda s: "x".join(map(str, s)))
def test_tma_tail_partials_match_the_direct_kernels(size, config):
    """The TMA body's TAIL epilogue (the last layer of a fused tail): the nine partial sums of the activation
    the same TMA kernel stores (fp32 summation apart), every pixel written; against the direct kernel's, one
    fp16 rounding of the activation apart (the two convs sum in different orders)."""
    device = triton_device()
    dtype = torch.float16
    cfg = {None: None, "small": TmaConfig(4, 8, 16, 4, 2), "swap-small": TmaConfig(2, 16, 32, 4, 2, swap=True)}[config]
    x, wt, b = _layer(*size, 64, dtype, device, seed=7)
    w = pack_conv3x3_weight(wt, dtype)
    g = torch.Generator().manual_seed(8)
    tw = pack_tail_partials_weight((torch.randn(1, 64, 3, 3, generator=g) * 0.1).to(device), dtype)
    z = torch.full((size[0] * size[1] * size[2], 9), float("nan"), device=device)
    assert conv3x3_tma_tail_partials(x, w, b, tw, z, config=cfg) is z
    ref = conv3x3_bias_relu_tail_partials(x, w, b, tw)
    act = conv3x3_tma(x, w, b, config=cfg).reshape(-1, 64).double()  # the rounded activation it starts from
    scale = act.abs() @ tw[:, :9].double().abs()  # sum of |terms|: fp32 summation bounds
    assert torch.isfinite(z).all()
    assert ((z.double() - act @ tw[:, :9].double()).abs() <= 64 * 2.0**-24 * scale + 1e-30).all()
    assert ((z.double() - ref.double()).abs() <= 2.0**-10 * scale + 1e-30).all()


def test_tma_refuses_what_a_descriptor_cannot_describe():
    device = triton_device()
    x, wt, b = _layer(1, 4, 5, 48, torch.float32, device, seed=1)
    with pytest.raises(ValueError, match="C_OUT=48 is not a power of two"):
        conv3x3_tma(x, pack_conv3x3_weight(wt, torch.float32), b, config=TmaConfig(block_k=16))
    x, wt, b = _layer(1, 4, 5, 16, torch.float32, device, seed=2)
    strided = torch.rand(1, 4, 5, 32, device=device)[..., ::2]  # channel stride 2
    with pytest.raises(ValueError, match="strides"):
        conv3x3_tma(strided, pack_conv3x3_weight(wt, torch.float32), b, config=TmaConfig(block_k=16))
    with pytest.raises(ValueError, match="power-of-two width"):
        TmaConfig(3, 8)
    with pytest.raises(ValueError, match="block_k"):
        TmaConfig(block_k=8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_tma_body_at_1080p_gpu(dtype):
    device = triton_device(dtype)
    if device.type != "cuda":
        pytest.skip("large sizes run on CUDA only (the CPU interpreter is too slow)")
    _check((1, 1080, 1920, 64), dtype, tma_config(dtype), device)

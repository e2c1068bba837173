"""Property test: upscale() against the float64 reference composition over shapes, dtypes and scales."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vdsr_fast import VDSR, imresize, rgb_to_ycbcr, upscale, vdsr_forward, ycbcr_to_rgb

_MODEL = VDSR(depth=3, channels=4).eval()
_W64 = [w.detach().double() for w in _MODEL.weights]
_B64 = [b.detach().double() for b in _MODEL.biases]

# Output tolerance per input dtype, in units of the output's value range [0, 1]:
#   uint8/uint16 outputs are rounded, so half a level plus the float32 network error;
#   float16/bfloat16 outputs are rounded to their mantissa (2^-11 and 2^-8 relative, values <= 1);
#   float32 only carries the float32 network/resize error (~1e-6 here).
_ATOL = {torch.uint8: 0.5 / 255 + 1e-5, torch.uint16: 0.5 / 65535 + 1e-5, torch.float16: 2**-11 + 1e-5,
         torch.bfloat16: 2**-8 + 1e-5, torch.float32: 1e-5, torch.float64: 1e-5}


def _reference(x: torch.Tensor, s: int) -> torch.Tensor:
    c = x.shape[1]
    if c == 1:
        return vdsr_forward(imresize(x, s), _W64, _B64).clamp(0, 1)
    up = imresize(rgb_to_ycbcr(x[:, :3]), s)
    out = ycbcr_to_rgb(torch.cat([vdsr_forward(up[:, :1], _W64, _B64), up[:, 1:]], 1)).clamp(0, 1)
    return torch.cat([out, imresize(x[:, 3:], s).clamp(0, 1)], 1) if c == 4 else out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 2),
    c=st.sampled_from([1, 3, 4]),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    scale=st.sampled_from([2, 3, 4]),
    dtype=st.sampled_from(list(_ATOL)),
    seed=st.integers(0, 2**31 - 1),
)
def test_upscale_matches_reference(n, c, h, w, scale, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x64 = torch.rand(n, c, h, w, generator=g, dtype=torch.float64)
    if dtype == torch.uint8:
        x = (x64 * 255).round().to(dtype)
        x64 = x.double() / 255
    elif dtype == torch.uint16:
        x = (x64 * 65535).round().to(torch.int32).to(dtype)
        x64 = x.to(torch.int32).double() / 65535
    else:
        x = x64.to(dtype)
        x64 = x.double()
    out = upscale(x, scale, _MODEL)
    assert out.shape == (n, c, h * scale, w * scale) and out.dtype == dtype and out.device == x.device
    got = out.to(torch.int32).double() if dtype == torch.uint16 else out.double()
    if dtype in (torch.uint8, torch.uint16):
        got = got / (255 if dtype == torch.uint8 else 65535)
    err = (got - _reference(x64, scale)).abs().max().item()
    assert err <= _ATOL[dtype], f"max error {err:.3g} > {_ATOL[dtype]:.3g}"


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_nan_pixels_propagate_and_stay_local(scale):
    x = torch.rand(1, 1, 40, 40)
    x[0, 0, 20, 20] = float("nan")
    out = upscale(x, scale, _MODEL)
    assert torch.isnan(out).any()
    assert torch.isfinite(out[..., :4, :4]).all()  # far from the NaN (receptive field + bicubic taps)

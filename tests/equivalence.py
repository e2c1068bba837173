"""Shared helpers for the fast-backend tests: the DESIGN.md §6 equivalence rule and the Triton device picker.

The rule, its per-dtype ATOL (and why), the float64 reference and the random test model live in
:mod:`vdsr_fast.verify`, which ``vdsr-fast verify`` runs on a user's own GPU; the tests use the same code.

Imported by the test files as ``from equivalence import ...`` (pytest puts tests/ on sys.path, as for
``from conftest import need_data``). Nothing here imports triton at import time.
"""

from __future__ import annotations

import os

import pytest
import torch

from vdsr_fast.verify import ATOL, BF16_DOT_REASON, compare, random_vdsr, ref64  # noqa: F401 (re-exported)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HALF_DTYPES = [torch.float16, torch.bfloat16]


def triton_device(dtype: torch.dtype | None = None, *, bf16_dot: bool = False) -> torch.device:
    """The device the Triton kernels run on here; skips when they cannot run or the dtype cannot be checked.

    ``bf16_dot=True``: the code under test uses ``tl.dot``, which Triton's CPU interpreter computes wrongly
    on bf16 operands, so bf16 is skipped there (checked on GPU only).
    """
    if torch.cuda.is_available():
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            pytest.skip("this GPU has no bf16")
        return torch.device("cuda")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set: the Triton kernels cannot run")
    if bf16_dot and dtype == torch.bfloat16:
        pytest.skip(BF16_DOT_REASON)
    return torch.device("cpu")


def he_layer(c_in: int, c_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3x3 conv layer's He-initialised weights (as VDSR) and small non-zero biases: outputs of order 1."""
    w = torch.randn(c_out, c_in, 3, 3, device=device) * (2.0 / (9 * c_in)) ** 0.5
    b = torch.empty(c_out, device=device).uniform_(-0.1, 0.1)
    return w, b


def nan_tailed(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values in a contiguous view at the front of a NaN-filled buffer: a kernel's unmasked read past its end
    (weights, biases) reads NaN, which reaches the output."""
    buf = torch.full((t.numel() + 256,), float("nan"), dtype=t.dtype, device=t.device)
    view = buf[: t.numel()].view(t.shape)
    view.copy_(t)
    return view


def assert_equivalent(
    fast: torch.Tensor,
    same: torch.Tensor,
    ref: torch.Tensor,
    dtype: torch.dtype,
    what: str = "",
    *,
    scaled: bool = True,
) -> None:
    """DESIGN.md §6 with a message that says what, where and how much the outputs differ.

    ``scaled=False``: atol is absolute (``scale = 1``), for outputs known to be of order 1.
    """
    label = f"{what}: " if what else ""
    c = compare(fast, same, ref, dtype, scaled=scaled)
    assert not c.nonfinite, f"{label}{c.nonfinite} non-finite outputs (unwritten pixels?), first near {c.where}"
    assert c.err <= c.bound, (
        f"{label}{dtype}: max |fast - ref64| = {c.err:.3e} at {c.where} "
        f"(fast {fast[tuple(c.where)].item():.6g}, ref {ref[tuple(c.where)].item():.6g}) > bound {c.bound:.3e} "
        f"= 2 * err(torch same dtype) {c.same_err:.3e} + atol {ATOL[dtype]:.1e} * scale {c.scale:.3g}"
    )
    assert c.mean_ok, f"{label}{dtype}: mean |fast - ref64| = {c.mean_err:.3e} > bound {c.mean_bound:.3e} (float8: the mean too)"

"""Shared helpers for the fast-backend tests: the DESIGN.md §6 equivalence rule and the Triton device picker.

Equivalence rule (DESIGN.md §6): ``err(fast) <= 2 * err(torch, same dtype) + atol[dtype] * scale``,
err = max |out - ref64|, ref64 = the same computation in float64 on the same weights and input,
``scale = max(1, max |ref64|)``: atol is in units of the output's magnitude.

atol per dtype = one unit in the last place of the storage dtype at magnitude 1: the fast path and torch
each round the fp32 accumulator to the storage dtype once and may round to neighbouring values (in a
network, a rounding that lands on the other neighbour can propagate through the following layers);
fp32: 1e-5, far above fp32 summation-order noise (~1e-6 on 576-term dot products, ~1e-6 over 20 layers)
yet far below any indexing or masking bug (those are O(1)).

Imported by the test files as ``from equivalence import ...`` (pytest puts tests/ on sys.path, as for
``from conftest import need_data``). Nothing here imports triton at import time.
"""

from __future__ import annotations

import os

import pytest
import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HALF_DTYPES = [torch.float16, torch.bfloat16]
ATOL = {torch.float32: 1e-5, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}

BF16_DOT_REASON = "the Triton interpreter computes tl.dot wrongly on bf16 operands: bf16 is checked on GPU only"


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


def random_vdsr(depth: int, channels: int, seed: int):
    """A random VDSR as the network tests use it: He init (as the paper), biases U(-0.05, 0.05), and the
    last layer scaled by 0.1 so the residual has the size a trained VDSR predicts."""
    from vdsr_fast.reference import VDSR

    torch.manual_seed(seed)
    m = VDSR(depth=depth, channels=channels)
    with torch.no_grad():
        for conv in m.layers:
            conv.bias.uniform_(-0.05, 0.05)
        m.layers[-1].weight.mul_(0.1)
    return m.eval()


def ref64(model, x: torch.Tensor) -> torch.Tensor:
    """The whole VDSR network in float64 (:func:`vdsr_forward`) on the model's weights and input ``x``."""
    from vdsr_fast.reference import vdsr_forward

    return vdsr_forward(x.double(), [w.double() for w in model.weights], [b.double() for b in model.biases])


def assert_equivalent(
    fast: torch.Tensor,
    same: torch.Tensor,
    ref64: torch.Tensor,
    dtype: torch.dtype,
    what: str = "",
    *,
    scaled: bool = True,
) -> None:
    """DESIGN.md §6 with a message that says what, where and how much the outputs differ.

    ``scaled=False``: atol is absolute (``scale = 1``), for outputs known to be of order 1.
    """
    label = f"{what}: " if what else ""
    assert fast.shape == ref64.shape, f"{label}shape {tuple(fast.shape)} != reference {tuple(ref64.shape)}"
    fast, same = fast.double(), same.double()
    bad = ~torch.isfinite(fast)
    assert not bad.any(), (
        f"{label}{int(bad.sum())} non-finite outputs (unwritten pixels?), first at {bad.nonzero()[:5].tolist()}"
    )
    err_fast = (fast - ref64).abs()
    err_same = (same - ref64).abs().max().item()
    scale = max(1.0, ref64.abs().max().item()) if scaled else 1.0
    bound = 2 * err_same + ATOL[dtype] * scale
    worst = err_fast.max().item()
    where = err_fast.flatten().argmax().item()
    idx = torch.unravel_index(torch.tensor(where), err_fast.shape)
    assert worst <= bound, (
        f"{label}{dtype}: max |fast - ref64| = {worst:.3e} at {[int(i) for i in idx]} "
        f"(fast {fast.flatten()[where].item():.6g}, ref {ref64.flatten()[where].item():.6g}) > bound {bound:.3e} "
        f"= 2 * err(torch same dtype) {err_same:.3e} + atol {ATOL[dtype]:.1e} * scale {scale:.3g}"
    )

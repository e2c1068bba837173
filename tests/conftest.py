"""Shared test setup.

On a machine without CUDA the Triton kernels run in Triton's CPU interpreter: TRITON_INTERPRET must be
set before triton is first imported, which is why it is set here (conftest loads before any test).
"""

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def need_data(*parts: str) -> Path:
    """The path under ../shared/data, or skip the test with the reason when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test data not found at {path} (the SR data sets live in ../shared/data)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_model():
    """A small random VDSR (depth 4, 8 channels) with non-zero biases: fast on a CPU."""
    from vdsr_fast import VDSR

    m = VDSR(depth=4, channels=8)
    with torch.no_grad():
        for conv in m.layers:
            conv.bias.uniform_(-0.05, 0.05)
    return m.eval()

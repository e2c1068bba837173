"""Long runs and shared use: no memory growth over 10,000 frames, two threads sharing one model."""

import resource
import threading

import pytest
import torch

from vdsr_fast import upscale


def test_check_finite_opt_in(tiny_model):
    x = torch.rand(1, 3, 6, 6)
    x[0, 1, 2, 3] = float("inf")
    assert not torch.isfinite(upscale(x, 2, tiny_model)).all()  # default: propagates
    with pytest.raises(ValueError, match="NaN or Inf"):
        upscale(x, 2, tiny_model, check_finite=True)
    upscale(torch.rand(1, 3, 6, 6), 2, tiny_model, check_finite=True)


def test_ten_thousand_frames_without_memory_growth(tiny_model):
    frames = [(torch.rand(1, 3, 6, 8) * 255).to(torch.uint8) for _ in range(4)]
    out = torch.empty(1, 3, 12, 16, dtype=torch.uint8)
    for i in range(500):  # warm-up: engine, resize tables, allocator pools
        upscale(frames[i % 4], 2, tiny_model, out=out)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for i in range(10_000):
        upscale(frames[i % 4], 2, tiny_model, out=out)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    # A leak of one small tensor per frame (>= ~1 KiB) would add >= 10 MiB; allow 4 MiB of noise.
    assert grown < 4 * 1024, f"peak RSS grew by {grown} KiB over 10,000 frames"
    assert len(tiny_model.__dict__["_vdsr_engines"]) == 1


def test_two_threads_share_one_model(tiny_model):
    inputs = [torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    expected = [upscale(x, 3, tiny_model) for x in inputs]
    errors = []

    def work(k):
        try:
            for _ in range(25):
                torch.testing.assert_close(upscale(inputs[k], 3, tiny_model), expected[k], rtol=0, atol=0)
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]

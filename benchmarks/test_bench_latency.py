"""pytest-benchmark latency tests, for tracking regressions across commits on one GPU.

    python -m pytest benchmarks/test_bench_latency.py --benchmark-json=bench.json
    python -m pytest benchmarks/test_bench_latency.py --benchmark-compare      # against the last saved run
    VDSR_BENCH_SIZE=4k python -m pytest benchmarks/test_bench_latency.py -k "cudnn or triton"

pytest-benchmark times on the host, so each timed call ends with ``torch.cuda.synchronize()``. Every
path is checked against the float64 reference first (DESIGN.md §6); a wrong path fails its test instead
of reporting a time. Skipped without CUDA or without pytest-benchmark. The size comes from
``VDSR_BENCH_SIZE`` (default 1080p, e.g. ``720p:8`` for a batch of 8). For the full table, card and
versions, use ``python -m benchmarks.bench_latency``.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("pytest_benchmark")

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_latency as bl  # noqa: E402
from vdsr_fast.engine import BACKENDS  # noqa: E402  (importing it never touches the GPU)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Candidate path keys, known without asking the GPU; the unavailable ones skip at run time.
_KEYS = ["eager_fp32", "eager_tf32", "eager_fp16", bl.EAGER_FP16_KEY, bl.CUDNN_KEY]
_KEYS += [f"engine_{name}_{dt}" for name in BACKENDS for dt in ("fp16", "bf16")]


@pytest.fixture(scope="module")
def model():
    m, _ = bl._load_model(bl.BenchConfig())
    return m


def _spec(key: str, device: torch.device) -> bl.PathSpec:
    cfg = bl.BenchConfig(device=str(device), paths=[key], engine_dtypes=["fp16", "bf16"])
    specs = [s for s in bl.build_paths(device, cfg) if s.key == key]
    if not specs:
        pytest.skip(f"{key}: not available here")
    if specs[0].unavailable:
        pytest.skip(f"{key}: {specs[0].unavailable}")
    return specs[0]


def _checked(spec: bl.PathSpec, model, device: torch.device):
    """The path's callable, once it passed the reference check (DESIGN.md §6): a wrong path fails, untimed."""
    fn, _note = spec.build(model, device)
    chk = bl.check_against_reference(fn, model, device, spec.precision, spec.input_dtype, spec.channels_last, tf32=spec.tf32)
    assert chk.passed, f"{spec.key} fails the reference check: err {chk.err:.3g} > {chk.bound:.3g} {chk.note}"
    return fn


@needs_cuda
@pytest.mark.parametrize("key", _KEYS)
def test_latency(benchmark, model, key):
    device = torch.device("cuda", torch.cuda.current_device())
    spec = _spec(key, device)
    label, w, h, n = bl.parse_size(os.environ.get("VDSR_BENCH_SIZE", "1080p"))
    # cuDNN's search as the main benchmark's (every plan timed), put back after
    with bl.cudnn_search(True), bl.tf32_mode(spec.tf32), torch.inference_mode():
        fn = _checked(spec, model, device)
        g = torch.Generator().manual_seed(1)
        inputs = [
            bl._to_input(torch.rand(n, 1, h, w, generator=g).to(device), spec.input_dtype, spec.channels_last)
            for _ in range(3)
        ]
        it = itertools.cycle(inputs)

        def step():
            out = fn(next(it))
            torch.cuda.synchronize(device)  # pytest-benchmark's clock is the host's
            return out

        for _ in range(3):  # warm-up: autotuning, cudnn.benchmark's search, graph capture
            step()
        benchmark.extra_info.update(path=key, size=label, batch=n, device=torch.cuda.get_device_name(device))
        benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)
    ms = benchmark.stats.stats.median * 1e3 if getattr(benchmark, "stats", None) else None
    if ms:
        benchmark.extra_info["tflops"] = (
            bl.flops_per_pixel(model.depth, model.channels) * n * h * w / (ms * 1e-3) / 1e12
        )


@needs_cuda
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_upscale_latency(benchmark, model, backend):
    from vdsr_fast.api import upscale
    from vdsr_fast.engine import available_backends

    device = torch.device("cuda", torch.cuda.current_device())
    reason = available_backends(device).get(backend)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
    with bl.tf32_mode(False), torch.inference_mode():  # the network upscale() runs, checked as test_latency's are
        _checked(_spec(f"engine_{backend}_fp16", device), model, device)
    g = torch.Generator().manual_seed(2)
    frames = [torch.randint(0, 256, (1, 3, 540, 960), generator=g, dtype=torch.uint8).to(device) for _ in range(3)]
    it = itertools.cycle(frames)

    def step():
        out = upscale(next(it), 2, model, backend=backend, dtype=torch.float16)
        torch.cuda.synchronize(device)
        return out

    with torch.inference_mode():
        for _ in range(3):
            step()
        benchmark.extra_info.update(path=f"upscale() {backend}", size="960x540->1920x1080", batch=1)
        benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)

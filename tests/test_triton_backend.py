"""The whole network on the Triton backend (``Engine(model, backend="triton")``) against float64.

Equivalence rule (DESIGN.md §6): ``err(triton) <= 2 * err(torch, same dtype) + atol[dtype]``, err = max
|out - ref64| over the output Y, ref64 = :func:`vdsr_forward` in float64 on the same weights and input,
torch same dtype = the torch backend (``vdsr_forward`` with input, weights and every activation in that
dtype: PyTorch runs fp16/bf16 convs on the CPU too, so this is measured, not emulated).
atol (outputs are Y values of order 1): fp32 1e-5 (20 layers of fp32 summation-order noise ~1e-6);
fp16 2**-10 and bf16 2**-7: one storage ulp at 1 — the kernels round each activation once, like torch,
but a rounding that lands on the other neighbour can propagate through the following layers.

Every uninitialised allocation is NaN-filled (``torch.utils.deterministic.fill_uninitialized_memory``
under deterministic mode) and the backend's ping-pong buffers are NaN-filled before each run, so any
unwritten pixel shows up as a NaN in the output. Without a GPU the kernels run in Triton's CPU
interpreter (tests/conftest.py sets TRITON_INTERPRET=1), whose tl.dot is wrong on bf16: bf16 networks
are checked on GPU only.
"""

from __future__ import annotations

import contextlib
import importlib.util

import pytest
import torch
from equivalence import DTYPES, assert_equivalent, random_vdsr, ref64, triton_device

from vdsr_fast import VDSR
from vdsr_fast.engine import BackendUnavailable, Engine

HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

if HAS_TRITON:
    from vdsr_fast.kernels.triton import backend as triton_backend
    from vdsr_fast.kernels.triton.backend import TritonBackend, default_body_config
    from vdsr_fast.kernels.triton.conv3x3 import ConvConfig, conv3x3_config, pack_conv3x3_weight, swap_configs
    from vdsr_fast.kernels.triton.conv3x3_tma import TmaConfig, tma_candidates, tma_config
    from vdsr_fast.kernels.triton.winograd import winograd_config


def _needs_cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device("cuda")


@pytest.fixture
def poison():
    """torch.empty & co. return NaN-filled memory while the test runs."""
    det, fill = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(det)
    torch.utils.deterministic.fill_uninitialized_memory = fill


_model = random_vdsr


def _poison_buffers(engine: Engine, y: torch.Tensor) -> None:
    for buf in engine._impl.buffers(y.shape[0], y.shape[2], y.shape[3]):
        buf.fill_(float("nan"))


def _check_network(model: VDSR, y: torch.Tensor, dtype: torch.dtype, **options) -> torch.Tensor:
    engine = Engine(model, backend="triton", dtype=dtype, device=y.device, **options)
    _poison_buffers(engine, y)
    out = engine(y)
    assert out.shape == y.shape and out.dtype == y.dtype
    with torch.no_grad():
        ref = ref64(model, y)
        same = Engine(model, backend="torch", dtype=dtype, device=y.device)(y)
    # atol is absolute here (scale 1): the outputs are Y values of order 1.
    assert_equivalent(out, same, ref, dtype, "triton network", scaled=False)
    return out


NET_CASES = [  # (depth, channels, N, H, W); the interpreter costs ~0.3-1 s per layer and 128-pixel tile
    (20, 64, 3, 7, 5),  # the published network on a tiny odd-sized batch (one partial M tile)
    (3, 64, 1, 1, 1),  # every tap of every layer but the centre one is padding
    (3, 64, 1, 13, 11),  # 143 pixels: two M tiles, the boundary inside an image row (37x53 is in the kernel tests)
    (4, 8, 3, 6, 9),  # few channels (masked K/N tiles)
]
GPU_NET_CASES = [(20, 64, 1, 720, 1280), (20, 64, 1, 1080, 1920), (20, 64, 1, 2160, 3840), (20, 64, 3, 37, 53)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", NET_CASES, ids=lambda c: "d{}c{}_{}x{}x{}".format(*c))
def test_network_matches_float64(case, dtype, poison):
    depth, channels, n, h, w = case
    device = triton_device(dtype, bf16_dot=True)
    model = _model(depth, channels, seed=depth * 100 + channels).to(device)
    _check_network(model, torch.rand(n, 1, h, w, device=device), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GPU_NET_CASES, ids=lambda c: "d{}c{}_{}x{}x{}".format(*c))
def test_network_matches_float64_large_gpu(case, dtype, poison):
    depth, channels, n, h, w = case
    device = _needs_cuda()
    triton_device(dtype, bf16_dot=True)
    model = _model(depth, channels, seed=1).to(device)
    _check_network(model, torch.rand(n, 1, h, w, device=device), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", [(3, 64, 1, 13, 11), (4, 8, 3, 6, 9), (2, 16, 1, 5, 4)], ids=lambda c: "d{}c{}_{}x{}x{}".format(*c))
def test_network_fused_tail(case, dtype, poison):
    """The default fused tail: the last body layer writes the tail's partial sums into the free ping-pong
    buffer and a gather adds them (depth 2 has no body layer: the plain tail runs); with a Winograd body too,
    and against fuse_tail=False (the last activation stored, then the tail kernel)."""
    depth, channels, n, h, w = case
    device = triton_device(dtype, bf16_dot=True)
    model = _model(depth, channels, seed=depth * 10 + channels).to(device)
    y = torch.rand(n, 1, h, w, device=device)
    out = _check_network(model, y, dtype)
    assert Engine(model, backend="triton", dtype=dtype, device=device)._impl.fuse_tail == (depth > 2)
    assert not Engine(model, backend="triton", dtype=dtype, device=device, fuse_tail=False)._impl.fuse_tail
    unfused = _check_network(model, y, dtype, fuse_tail=False)
    torch.testing.assert_close(out, unfused, atol=1e-5 if dtype == torch.float32 else 2e-3, rtol=0)
    if depth > 2 and channels == 64:
        cfg = winograd_config(channels, channels, dtype)
        _check_network(model, y, dtype, body_config=cfg)
        share_row = ConvConfig(128, 64, 64, 4, 2, share_row=True)  # the last layer falls back to the default tile
        _check_network(model, y, dtype, body_config=share_row)
        _check_network(model, y, dtype, body_config=swap_configs(dtype)[0])  # the last layer too: SWAP + TAIL
        _check_network(model, y, dtype, body_config=TmaConfig(4, 8, 16, 4, 2))  # TMA body, direct last layer
        _check_network(model, y, dtype, body_config=TmaConfig(4, 8, 16, 4, 2), fuse_tail=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_network_swap_body_large_gpu(dtype, poison):
    """The SWAP body (a candidate for the default) through the whole network at 1080p, and a small batch."""
    device = _needs_cuda()
    model = _model(20, 64, seed=3).to(device)
    cfg = swap_configs(dtype)[0]
    _check_network(model, torch.rand(1, 1, 1080, 1920, device=device), dtype, body_config=cfg)
    _check_network(model, torch.rand(2, 1, 37, 53, device=device), dtype, body_config=cfg, cuda_graphs=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_network_tma_body_large_gpu(dtype, poison):
    """The TMA body (the default on Hopper) through the whole network at 1080p, and a small batch."""
    device = _needs_cuda()
    model = _model(20, 64, seed=4).to(device)
    cfg = tma_config(dtype)
    _check_network(model, torch.rand(1, 1, 1080, 1920, device=device), dtype, body_config=cfg)
    _check_network(model, torch.rand(2, 1, 37, 53, device=device), dtype, body_config=cfg, cuda_graphs=True)


@pytest.mark.parametrize("fuse_tail", [True, False], ids=["fused-tail", "tail"])
def test_network_tma_body(fuse_tail, poison):
    """The TMA body through a small network (its TAIL epilogue as the fused tail's last layer), fp16, in the
    interpreter on the CPU."""
    device = triton_device()
    model = _model(4, 64, seed=6).to(device)
    _check_network(model, torch.rand(2, 1, 9, 37, device=device), torch.float16,
                   body_config=TmaConfig(4, 16, 64, 4, 2, swap=True), fuse_tail=fuse_tail)  # fmt: skip


def test_tma_body_needs_power_of_two_channels():
    device = triton_device()
    with pytest.raises(ValueError, match="power of two"):
        TritonBackend(_model(3, 48, seed=1).to(device), device, torch.float32, body_config=TmaConfig(block_k=16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_network_unfused_tail_large_gpu(dtype, poison):
    device = _needs_cuda()
    model = _model(20, 64, seed=2).to(device)
    _check_network(model, torch.rand(1, 1, 1080, 1920, device=device), dtype, fuse_tail=False)
    _check_network(model, torch.rand(2, 1, 37, 53, device=device), dtype, fuse_tail=False, cuda_graphs=True)


def test_engine_tune_gpu():
    """Engine(tune=True) times the defaults and each alternative (Winograd body, unfused tail) and keeps a
    correct one."""
    device = _needs_cuda()
    model = _model(8, 64, seed=5).to(device)
    e = Engine(model, backend="triton", dtype=torch.float16, device=device, tune=True)
    offered = TritonBackend.tuning_candidates(model, device, torch.float16)
    assert len(e.tuning) == 1 + len(offered) and all(isinstance(ms, float) for ms in e.tuning.values()), e.tuning
    print(f"triton tuning (ms, 720p, VDSR-8): {e.tuning}")
    y = torch.rand(2, 1, 45, 38, device=device)
    same = Engine(model, backend="torch", dtype=torch.float16, device=device)(y)
    assert_equivalent(e(y), same, ref64(model, y), torch.float16, "tuned triton engine", scaled=False)


def test_network_non_contiguous_and_double_input(poison):
    device = triton_device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = _model(4, 16, seed=3).to(device)
    y = torch.rand(2, 3, 11, 14, device=device)[:, 1:2, 1:10, 2:13]  # (2, 1, 9, 11), strided
    assert not y.is_contiguous()
    _check_network(model, y, dtype)
    _check_network(model, torch.rand(1, 1, 5, 6, device=device, dtype=torch.float64), dtype)


def test_buffers_are_reused():
    device = triton_device()
    model = _model(4, 8, seed=4).to(device)
    engine = Engine(model, backend="triton", dtype=torch.float32, device=device)
    impl = engine._impl
    y = torch.rand(1, 1, 6, 7, device=device)
    first = engine(y)
    a, b = impl.buffers(1, 6, 7)
    ptrs = (a.data_ptr(), b.data_ptr())
    a.fill_(float("nan"))
    b.fill_(float("nan"))
    second = engine(y)
    assert (impl.buffers(1, 6, 7)[0].data_ptr(), impl.buffers(1, 6, 7)[1].data_ptr()) == ptrs
    assert torch.isfinite(a).all() and torch.isfinite(b).all(), "the kernels did not write the cached buffers"
    assert torch.equal(first, second)
    # Other shapes get views of the same two allocations, which grow only for a larger shape.
    numel = impl.buffer_numel
    y_small = torch.rand(1, 1, 3, 7, device=device)
    small = engine(y_small)
    assert impl.buffer_numel == numel and impl.buffers(1, 3, 7)[0].data_ptr() == ptrs[0]
    assert torch.equal(small, TritonBackend(model, device, torch.float32)(y_small))  # fresh buffers, same result
    engine(torch.rand(2, 1, 6, 7, device=device))
    assert impl.buffer_numel == max(numel, 2 * 6 * 7 * 8)


def test_body_config_share_row():
    """The backend runs its body layers with a given config (here the experimental SHARE_ROW mode)."""
    device = triton_device()
    model = _model(4, 16, seed=13).to(device)
    y = torch.rand(2, 1, 5, 9, device=device)
    plain = TritonBackend(model, device, torch.float32)(y)
    cfg = ConvConfig(128, 16, 16, 8, 2, share_row=True)
    shared = TritonBackend(model, device, torch.float32, body_config=cfg)(y)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)


def test_buffers_are_one_pair_for_every_shape():
    """A tiled frame's windows and changing batches share two allocations sized for the largest
    window: working memory stays what ``max_memory`` budgets, whatever the number of shapes."""
    device = triton_device()
    backend = TritonBackend(_model(3, 8, seed=5).to(device), device, torch.float32)
    shapes = [(1, 2, 3), (1, 5, 4), (2, 2, 5), (1, 1, 1)]
    results = {}
    for n, h, w in shapes:
        y = torch.rand(n, 1, h, w, device=device)
        results[(n, h, w)] = (y, backend(y))
    assert backend.buffer_numel == max(n * h * w for n, h, w in shapes) * 8
    fresh = TritonBackend(_model(3, 8, seed=5).to(device), device, torch.float32)
    for y, out in results.values():
        assert torch.equal(out, fresh(y))


@pytest.mark.parametrize("fuse_tail", [True, False])
def test_clamp_option(fuse_tail):
    """clamp=True on either tail: the gather of the fused tail's partial sums, or the tail kernel (fuse_tail=False)."""
    device = triton_device()
    model = _model(3, 8, seed=6).to(device)
    with torch.no_grad():
        model.layers[-1].bias.fill_(0.5)  # pushes most outputs above 1
    y = torch.rand(1, 1, 5, 7, device=device)
    backend = TritonBackend(model, device, torch.float32, clamp=True, fuse_tail=fuse_tail)
    assert backend.fuse_tail == fuse_tail
    out = backend(y)
    ref = ref64(model, y).clamp(0, 1)
    assert out.max() <= 1 and out.min() >= 0
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)


def test_input_errors():
    device = triton_device()
    model = _model(3, 8, seed=7).to(device)
    engine = Engine(model, backend="triton", dtype=torch.float32, device=device)
    backend = engine._impl
    for call in (engine, backend):
        with pytest.raises(ValueError, match="is on meta"):
            call(torch.rand(1, 1, 4, 4, device="meta"))
        with pytest.raises(ValueError, match=r"shape \(N, 1, H, W\), got \(1, 3, 4, 4\)"):
            call(torch.rand(1, 3, 4, 4, device=device))
        with pytest.raises(ValueError, match=r"got \(4, 4\)"):
            call(torch.rand(4, 4, device=device))
        with pytest.raises(TypeError, match="floating-point"):
            call(torch.ones(1, 1, 4, 4, dtype=torch.int32, device=device))
    with pytest.raises(BackendUnavailable, match="does not support dtype torch.float64"):
        Engine(model, backend="triton", dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        TritonBackend(model.cpu(), torch.device("cpu"), torch.float32, cuda_graphs=True)


def test_available():
    assert "does not run on device type 'meta'" in TritonBackend.available(torch.device("meta"))
    if torch.cuda.is_available():
        assert TritonBackend.available(torch.device("cuda")) is None
    else:
        triton_device()
        assert TritonBackend.available(torch.device("cpu")) is None
        assert "CUDA is not available" in TritonBackend.available(torch.device("cuda"))


def _op_args(device: torch.device, dtype: torch.dtype):
    backend = TritonBackend(_model(3, 16, seed=8).to(device), device, dtype, fuse_tail=False)
    y = torch.rand(2, 1, 5, 7, device=device)
    x = torch.rand(2, 5, 7, 16, device=device).to(dtype)
    return backend, y, x


def test_custom_ops_opcheck():
    """Schema, fake (meta) implementations and AOT dispatch of the three ops agree with the real ones."""
    device = triton_device()
    backend, y, x = _op_args(device, torch.float32)
    ops = torch.ops.vdsr_fast
    torch.library.opcheck(
        ops.triton_conv3x3_head, (y, backend.w_head, backend.b_head), test_utils=("test_schema", "test_faketensor")
    )
    torch.library.opcheck(
        ops.triton_conv3x3_bias_relu,
        (x, backend.w_body[0], backend.b_body[0]),
        test_utils=("test_schema", "test_faketensor"),
    )
    torch.library.opcheck(
        ops.triton_conv3x3_tail_residual,
        (x, backend.w_tail, backend.b_tail, y, False),
        test_utils=("test_schema", "test_faketensor"),
    )
    fused = TritonBackend(_model(3, 16, seed=8).to(device), device, torch.float32)
    z = ops.triton_conv3x3_tail_partials(x, fused.w_last, fused.b_body[-1], fused.w_tail16)
    torch.library.opcheck(ops.triton_conv3x3_tail_partials, (x, fused.w_last, fused.b_body[-1], fused.w_tail16),
                          test_utils=("test_schema", "test_faketensor"))  # fmt: skip
    torch.library.opcheck(ops.triton_tail_gather_residual, (z, fused.b_tail, y, False),
                          test_utils=("test_schema", "test_faketensor"))  # fmt: skip


def test_compile_aot_eager():
    """The custom ops trace in one graph (checks the fake implementations); runs on CPU too."""
    device = triton_device()
    model = _model(3, 16, seed=9).to(device)
    engine = Engine(model, backend="triton", dtype=torch.float32, device=device)
    y = torch.rand(1, 1, 5, 6, device=device)
    compiled = torch.compile(lambda t: engine(t), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(y), engine(y), atol=0, rtol=0)
    unfused = Engine(model, backend="triton", dtype=torch.float32, device=device, fuse_tail=False)
    compiled = torch.compile(lambda t: unfused(t), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(y), unfused(y), atol=0, rtol=0)


def test_custom_ops_launch_on_their_tensors_device(monkeypatch):
    """Each custom op's body launches inside its tensor's device guard (``_on_device``): under
    ``torch.compile(backend="aot_eager")`` no engine guard is around them, and Triton launches on the current
    device. Checked on the CPU by recording the guard around every launcher the ops call (the TMA op: GPU only)."""
    device = triton_device()
    guarded, launched = [], []

    real_guard = triton_backend._on_device

    @contextlib.contextmanager
    def guard(t):
        with real_guard(t):
            guarded.append(t.device)
            yield
            guarded.pop()

    monkeypatch.setattr(triton_backend, "_on_device", guard)
    for name in ("conv3x3_head", "conv3x3_bias_relu", "conv3x3_winograd", "conv3x3_tail_residual",
                 "conv3x3_bias_relu_tail_partials", "tail_gather_residual"):  # fmt: skip
        def recording(real, name=name):
            def launcher(*args, **kwargs):
                launched.append((name, list(guarded)))
                return real(*args, **kwargs)

            return launcher

        monkeypatch.setattr(triton_backend, name, recording(getattr(triton_backend, name)))
    model = _model(4, 16, seed=9).to(device)
    y = torch.rand(1, 1, 5, 6, device=device)
    for opts in ({}, {"fuse_tail": False}, {"body_config": winograd_config(16, 16, torch.float32)}):
        # check=False: on a GPU the self-check runs the eager path (its own guard, not _on_device) through these launchers
        engine = Engine(model, backend="triton", dtype=torch.float32, device=device, check=False, **opts)
        torch.compile(lambda t, e=engine: e(t), backend="aot_eager", fullgraph=True)(y)
    assert {name for name, _ in launched} == {"conv3x3_head", "conv3x3_bias_relu", "conv3x3_winograd",
                                             "conv3x3_tail_residual", "conv3x3_bias_relu_tail_partials",
                                             "tail_gather_residual"}  # fmt: skip
    assert all(inside == [y.device] for _, inside in launched), launched


def test_on_device_names_the_tensors_gpu():
    """The guard a tensor on ``cuda:1`` gets is device 1's (built without a GPU: the guard is only entered on one)."""
    on_gpu1 = type("T", (), {"device": torch.device("cuda", 1)})()
    assert triton_backend._on_device(on_gpu1).idx == 1
    assert isinstance(triton_backend._on_device(torch.zeros(1)), contextlib.nullcontext)


def test_compile_aot_eager_second_gpu():
    """An engine on cuda:1 traced with aot_eager runs there while cuda:0 is current (no engine guard around the ops)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    device = torch.device("cuda", 1)
    model = _model(3, 16, seed=9).to(device)
    engine = Engine(model, backend="triton", dtype=torch.float16, device=device)
    y = torch.rand(1, 1, 40, 56, device=device)
    with torch.cuda.device(0):
        out = torch.compile(lambda t: engine(t), backend="aot_eager", fullgraph=True)(y)
        torch.cuda.synchronize(device)
    torch.testing.assert_close(out, engine(y), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_compile_inductor_gpu(dtype):
    device = _needs_cuda()
    triton_device(dtype, bf16_dot=True)
    model = _model(20, 64, seed=10).to(device)
    engine = Engine(model, backend="triton", dtype=dtype, device=device)
    y = torch.rand(2, 1, 37, 53, device=device)

    def fn(t):
        return engine(t * 1.0) - 0.0  # torch ops around the engine call, fused by Inductor

    compiled = torch.compile(fn, fullgraph=True)
    torch.testing.assert_close(compiled(y), engine(y), atol=0, rtol=0)
    # the op alone, too
    x = torch.rand(1, 9, 11, 64, device=device).to(dtype)
    w, b = engine._impl.w_body[0], engine._impl.b_body[0]
    op = torch.compile(
        lambda t: torch.relu(torch.ops.vdsr_fast.triton_conv3x3_bias_relu(t, w, b) + 1.0), fullgraph=True
    )
    torch.testing.assert_close(op(x), torch.relu(torch.ops.vdsr_fast.triton_conv3x3_bias_relu(x, w, b) + 1.0))


def test_cuda_graphs_gpu():
    device = _needs_cuda()
    model = _model(20, 64, seed=11).to(device)
    eager = TritonBackend(model, device, torch.float16)
    graphed = TritonBackend(model, device, torch.float16, cuda_graphs=True)
    for shape in ((1, 1, 37, 53), (2, 1, 64, 48), (1, 1, 37, 53)):
        for _ in range(2):
            y = torch.rand(shape, device=device)
            torch.testing.assert_close(graphed(y), eager(y), atol=0, rtol=0)
    assert len(graphed._graphs) == 2


def test_runs_on_current_stream_gpu():
    device = _needs_cuda()
    model = _model(20, 64, seed=12).to(device)
    engine = Engine(model, backend="triton", dtype=torch.float16, device=device)
    y = torch.rand(1, 1, 256, 256, device=device)
    expected = engine(y)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = engine(y)
        event = side.record_event()
    event.synchronize()
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_tiled_upscale_reserves_the_largest_window_first(monkeypatch):
    """upscale() sizes the buffers for a tiled frame's largest window before the first tile, so they
    never grow mid-frame (growing drops the CUDA graphs captured for the windows before)."""
    from vdsr_fast import get_engine, upscale

    device = triton_device()
    model = _model(3, 8, seed=9).to(device)
    x = torch.rand(1, 1, 13, 11, device=device)
    impl = get_engine(model, device, "triton", torch.float32)._impl
    sizes = []
    real = type(impl).buffers
    monkeypatch.setattr(type(impl), "buffers", lambda self, n, h, w: sizes.append(n * h * w) or real(self, n, h, w))
    tiled = upscale(x, 2, model, backend="triton", dtype=torch.float32, tile=9)
    assert len(sizes) > 2 and sizes[0] == max(sizes)  # the reservation came first and was the largest
    # (the same pixels up to float32 rounding: the kernels' reduction order depends on the window width)
    untiled = upscale(x, 2, model, backend="triton", dtype=torch.float32)
    torch.testing.assert_close(tiled, untiled, rtol=0, atol=1e-6)


def test_custom_op_fakes_give_the_real_shapes_and_dtypes():
    """The fake implementations torch.compile traces agree with the real ops where the output's shape or dtype is not
    the input's: fp16 weights on an fp32 Y plane (the head's output is in the weights' dtype, the tail's partial sums
    fp32), C_IN != C_OUT (the direct body op), a Winograd layer of 8 channels (its weights are (16, C_OUT, C_IN)); and
    the TMA op takes a channels-first view (the ops are public: a caller may pass any strides)."""
    device = triton_device()
    ops, utils = torch.ops.vdsr_fast, ("test_schema", "test_faketensor")
    y = torch.rand(2, 1, 5, 7, device=device)
    half = TritonBackend(_model(3, 16, seed=14).to(device), device, torch.float16)
    torch.library.opcheck(ops.triton_conv3x3_head, (y, half.w_head, half.b_head), test_utils=utils)
    x16 = torch.rand(2, 5, 7, 16, device=device).half()
    torch.library.opcheck(ops.triton_conv3x3_tail_partials, (x16, half.w_last, half.b_body[-1], half.w_tail16), test_utils=utils)
    w = pack_conv3x3_weight(torch.randn(16, 8, 3, 3, device=device) * 0.1, torch.float32)  # 8 -> 16 channels
    torch.library.opcheck(ops.triton_conv3x3_bias_relu, (torch.rand(2, 5, 7, 8, device=device), w, torch.rand(16, device=device)),
                          test_utils=utils)  # fmt: skip
    wino = TritonBackend(_model(4, 8, seed=15).to(device), device, torch.float32, body_config=winograd_config(8, 8, torch.float32))
    torch.library.opcheck(ops.triton_conv3x3_winograd, (torch.rand(2, 5, 7, 8, device=device), wino.w_body[0], wino.b_body[0]),
                          test_utils=utils)  # fmt: skip
    tma = TritonBackend(_model(4, 32, seed=16).to(device), device, torch.float32, body_config=tma_config(torch.float32))
    planar = torch.rand(2, 32, 5, 7, device=device).permute(0, 2, 3, 1)  # NHWC view of NCHW memory: channel stride 35
    got = ops.triton_conv3x3_tma(planar, tma.w_body[0], tma.b_body[0])
    torch.testing.assert_close(got, ops.triton_conv3x3_tma(planar.contiguous(), tma.w_body[0], tma.b_body[0]), atol=0, rtol=0)


def test_default_body_config_is_the_tma_body_on_hopper_in_16_bits_only(monkeypatch):
    """The host-side choice of the body kernel, on a CUDA device made to look like a GPU of the given compute
    capability (nothing runs on it): the TMA body on 9.0+ in fp16/bf16 for a channel count it takes; the direct
    kernel (None) in fp32, before Hopper (8.9), for 48 channels (not a power of two), and in the interpreter."""
    device = torch.device("cuda")
    capability = [(9, 0)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[0])
    monkeypatch.setattr(triton_backend, "interpreted", lambda: True)
    assert default_body_config(device, torch.float16, 64) is None
    monkeypatch.setattr(triton_backend, "interpreted", lambda: False)
    assert default_body_config(device, torch.float16, 64) == tma_config(torch.float16)
    assert default_body_config(device, torch.bfloat16, 64) == tma_config(torch.bfloat16)
    assert default_body_config(device, torch.float32, 64) is None
    assert default_body_config(device, torch.float16, 48) is None
    capability[0] = (8, 9)
    assert default_body_config(device, torch.float16, 64) is None


def test_tuning_candidates_are_the_alternatives_to_the_default(monkeypatch):
    """What Engine(tune=True) times beside the default: Winograd and SWAP bodies, the body that is not the default (TMA
    where the direct kernel is the default, the direct kernel on Hopper), the unfused tail alone and with Winograd;
    for float8_e4m3fn the other TMA tiles, not the default tile again."""
    model = _model(4, 64, seed=17)
    fp16, e4m3 = torch.float16, torch.float8_e4m3fn
    wino = winograd_config(64, 64, fp16)

    def expected(other):
        return [{"body_config": wino}, {"body_config": swap_configs(fp16)[0]}, {"body_config": other}, {"fuse_tail": False},
                {"body_config": wino, "fuse_tail": False}]  # fmt: skip

    assert [o for _, o in TritonBackend.tuning_candidates(model, torch.device("cpu"), fp16)] == expected(tma_config(fp16))
    fp8 = [o["body_config"] for _, o in TritonBackend.tuning_candidates(model, torch.device("cpu"), e4m3)]
    assert tma_config(e4m3) not in fp8 and set(fp8) == set(tma_candidates(e4m3)) - {tma_config(e4m3)}
    monkeypatch.setattr(triton_backend, "interpreted", lambda: False)  # a Hopper GPU: the TMA body is the default
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    got = [o for _, o in TritonBackend.tuning_candidates(model, torch.device("cuda"), fp16)]
    assert got == expected(conv3x3_config(64, 64, fp16))


def test_backend_refuses_what_it_cannot_run_naming_itself():
    """TritonBackend used directly (Engine checks first): a storage dtype it has no kernels for is refused when built
    (an fp64 or int8 backend was built, to fail later), and an empty, integer or other-device Y plane when called,
    naming the backend (an empty batch failed inside the buffers with "'NoneType' object is not iterable")."""
    device = triton_device()
    model = _model(3, 8, seed=18).to(device)
    for dtype in (torch.float64, torch.int8):
        with pytest.raises(ValueError, match=f"TritonBackend: unsupported storage dtype {dtype}"):
            TritonBackend(model, device, dtype)
    backend = TritonBackend(model, device, torch.float32)
    for shape in ((0, 1, 4, 4), (1, 1, 0, 4)):
        with pytest.raises(ValueError, match=rf"TritonBackend: empty input of shape \({shape[0]}, 1, {shape[2]}, 4\)"):
            backend(torch.rand(shape, device=device))
    with pytest.raises(TypeError, match="TritonBackend: expected a floating-point Y plane, got torch.int32"):
        backend(torch.ones(1, 1, 4, 4, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="TritonBackend: input is on meta"):
        backend(torch.rand(1, 1, 4, 4, device="meta"))


def test_a_model_of_other_layer_shapes_is_refused_when_packed():
    """A head that is not 1 -> C (an RGB-input network) or a body layer that is not C -> C: refused when the backend
    is built, naming the layer (an RGB head was packed, to fail at the first call)."""
    from torch import nn

    device = triton_device()
    rgb_head = VDSR(depth=4, channels=8)
    rgb_head.layers[0] = nn.Conv2d(3, 8, 3, padding=1)
    with pytest.raises(ValueError, match="expected a VDSR with a 1->C head and a C->1 tail of 3x3 convs"):
        TritonBackend(rgb_head.to(device), device, torch.float32)
    wide = VDSR(depth=4, channels=8)
    wide.layers[1], wide.layers[2] = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)
    with pytest.raises(ValueError, match=r"layer 1 has shape \(16, 8, 3, 3\), expected \(8, 8, 3, 3\)"):
        TritonBackend(wide.to(device), device, torch.float32)


def test_max_pixels_keep_the_in_image_offsets_within_32_bits():
    """The kernels index an image's NHWC activations with 32-bit offsets: upscale() tiles an image whose H * W * C would
    pass 2**31 - 1 (max_pixels), so the bound depends on the channel count."""
    device = triton_device()
    for channels in (8, 64):
        backend = TritonBackend(_model(3, channels, seed=19).to(device), device, torch.float32)
        assert backend.max_pixels * channels <= 2**31 - 1 < (backend.max_pixels + 1) * channels
        assert backend.max_batch_pixels == 2**31 - 1


def test_the_fused_tail_runs_the_body_config_where_it_can():
    """The fused tail's last layer needs every channel in one program: it runs a direct body_config whose block_n
    holds all of them (block_n == C included) without share_row, and a TMA body_config (its TAIL kernel); other
    configs (fewer channels a tile, Winograd) take the default tile (None)."""
    device = triton_device()
    model = _model(4, 32, seed=20).to(device)
    kept = [ConvConfig(128, 32, 32, 4, 2), ConvConfig(64, 64, 32, 4, 2), TmaConfig(block_k=32)]
    for cfg in kept:
        assert TritonBackend(model, device, torch.float32, body_config=cfg).last_config == cfg
    for cfg in (ConvConfig(128, 16, 32, 4, 2), ConvConfig(128, 32, 32, 4, 2, share_row=True), winograd_config(32, 32, torch.float32)):
        assert TritonBackend(model, device, torch.float32, body_config=cfg).last_config is None


def test_the_fused_tails_partial_sums_go_into_the_free_buffer(monkeypatch):
    """The 9 fp32 partial sums a pixel (36 bytes) are written into the free ping-pong buffer when it holds them (16
    fp32 channels: 64 bytes a pixel), so a call allocates nothing; with 8 channels (32 bytes) the kernel allocates."""
    device = triton_device()
    seen = []
    real = triton_backend.conv3x3_bias_relu_tail_partials
    monkeypatch.setattr(triton_backend, "conv3x3_bias_relu_tail_partials", lambda *a, **k: seen.append(a[4]) or real(*a, **k))
    for channels in (16, 8):
        backend = TritonBackend(_model(3, channels, seed=21).to(device), device, torch.float32)
        backend(torch.rand(2, 1, 5, 6, device=device))
        buffers = {buf.untyped_storage().data_ptr() for buf in backend.buffers(2, 5, 6)}
        z = seen[-1]
        if channels == 16:
            assert z is not None and z.shape == (2 * 5 * 6, 9) and z.untyped_storage().data_ptr() in buffers
        else:
            assert z is None


@pytest.mark.parametrize("options", [{"body_config": "winograd"}, {"body_config": "tma"}, {"fuse_tail": False, "clamp": True}],
                         ids=["winograd", "tma", "unfused-clamped-tail"])  # fmt: skip
def test_compile_runs_the_same_body_and_tail_as_the_eager_path(options):
    """An engine call traced by torch.compile (the custom ops) with a body layer of each kind before the fused tail
    (depth 4: a VDSR of depth 3 has none, the last body layer being the tail's), and the unfused tail clamped."""
    device = triton_device()
    channels = 32 if options.get("body_config") == "tma" else 16
    model = _model(4, channels, seed=22).to(device)
    with torch.no_grad():
        model.layers[-1].bias.fill_(0.5)  # pushes most outputs above 1: the clamp shows
    body = {"winograd": winograd_config(channels, channels, torch.float32), "tma": tma_config(torch.float32)}
    options = {**options, "body_config": body.get(options.get("body_config"))}
    engine = Engine(model, backend="triton", dtype=torch.float32, device=device, **options)
    y = torch.rand(1, 1, 5, 6, device=device)
    compiled = torch.compile(lambda t: engine(t), backend="aot_eager", fullgraph=True)
    # (the TMA body's last layer is its own tail kernel eagerly, the direct kernel's op when compiled: fp32 rounding)
    torch.testing.assert_close(compiled(y), engine(y), atol=1e-5, rtol=0)

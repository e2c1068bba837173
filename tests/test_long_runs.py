"""Long runs and shared use: no memory growth over 10,000 frames, threads sharing one model or
engine, frames beyond a backend's index range, engines bound to one device, and (on a GPU) a batch and an 8K
frame at the edge of the kernels' index ranges."""

import importlib.util
import resource
import threading
from types import SimpleNamespace

import pytest
import torch
from equivalence import triton_device

from vdsr_fast import upscale
from vdsr_fast.api import get_engine
from vdsr_fast.engine import Engine, TorchBackend


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


def _in_two_threads(run, expected, repeats: int) -> None:
    """Thread k calls ``run(k)`` ``repeats`` times; every result must equal ``expected[k]`` exactly."""
    errors = []

    def work(k):
        try:
            for _ in range(repeats):
                torch.testing.assert_close(run(k), expected[k], rtol=0, atol=0)
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_two_threads_share_one_model(tiny_model):
    inputs = [torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    expected = [upscale(x, 3, tiny_model) for x in inputs]
    _in_two_threads(lambda k: upscale(inputs[k], 3, tiny_model), expected, repeats=25)


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_two_threads_share_one_buffered_engine(tiny_model):
    """The fast backends keep persistent ping-pong buffers: two threads calling one engine must not
    interleave their layers on them (Engine serialises the calls). Runs the Triton kernels (the
    interpreter on a CPU), whose buffers are shared, on inputs of one shape."""
    device = triton_device(torch.float32)
    engine = Engine(tiny_model, backend="triton", dtype=torch.float32, device=device)
    inputs = [torch.rand(1, 1, 6, 5, generator=torch.Generator().manual_seed(i)).to(device) for i in range(2)]
    expected = [engine(x) for x in inputs]
    assert not torch.equal(expected[0], expected[1])
    _in_two_threads(lambda k: engine(inputs[k]), expected, repeats=6)


def test_frames_beyond_the_backend_index_range_are_tiled_exactly(tiny_model, monkeypatch):
    """Fast backends declare the largest window one call may take (32-bit offsets in the kernels);
    upscale() tiles bigger frames so no call exceeds it, with the untiled result. Simulated with a
    small limit on the reference backend (a real 2**31-element frame does not fit a CI machine)."""
    x = torch.rand(2, 3, 37, 29, dtype=torch.float64)
    expected = upscale(x, 2, tiny_model, backend="torch")
    limit = 2100  # H*W per image; the 74x58 output is 4292
    monkeypatch.setattr(TorchBackend, "max_pixels", limit, raising=False)
    tiny_model.__dict__.pop("_vdsr_engines", None)
    seen = []
    call = TorchBackend.__call__
    monkeypatch.setattr(TorchBackend, "__call__", lambda self, y: seen.append(tuple(y.shape)) or call(self, y))
    got = upscale(x, 2, tiny_model, backend="torch")
    assert len(seen) > 1 and all(h * w <= limit for _, _, h, w in seen), seen
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # A batch limit smaller than one minimal tile per frame: a clear error, not a kernel crash.
    monkeypatch.setattr(TorchBackend, "max_batch_pixels", 1600, raising=False)
    tiny_model.__dict__.pop("_vdsr_engines", None)
    with pytest.raises(ValueError, match="too large for backend 'torch'; pass fewer frames"):
        upscale(torch.rand(8, 3, 37, 29), 2, tiny_model, backend="torch")


def test_a_frame_at_the_backend_index_limit_is_not_tiled(tiny_model, monkeypatch):
    """max_pixels is the largest H*W one call may take: a frame of exactly that many output pixels runs whole (one
    network call), one pixel fewer allowed tiles it. Simulated on the reference backend, as above."""
    x = torch.rand(1, 1, 10, 7)
    seen = []
    call = TorchBackend.__call__
    monkeypatch.setattr(TorchBackend, "__call__", lambda self, y: seen.append(tuple(y.shape)) or call(self, y))
    for limit, calls in ((20 * 14, 1), (20 * 14 - 1, None)):
        monkeypatch.setattr(TorchBackend, "max_pixels", limit, raising=False)
        tiny_model.__dict__.pop("_vdsr_engines", None)
        seen.clear()
        upscale(x, 2, tiny_model, backend="torch", max_memory=None)
        assert (len(seen) == calls) if calls else (len(seen) > 1 and all(h * w <= limit for _, _, h, w in seen)), seen


def test_engines_are_per_device(tiny_model):
    """An engine belongs to one device: inputs from another are refused by name, and upscale()
    keeps one engine per device (here the CPU and PyTorch's shape-only 'meta' device)."""
    cpu = get_engine(tiny_model, torch.device("cpu"), "torch")
    meta = get_engine(tiny_model, torch.device("meta"), "torch")
    assert cpu is not meta and meta.device.type == "meta"
    assert get_engine(tiny_model, torch.device("cpu"), "torch") is cpu
    with pytest.raises(ValueError, match="input is on cpu but this engine's weights are on meta"):
        meta(torch.rand(1, 1, 4, 4))
    assert upscale(torch.rand(1, 3, 5, 4, device="meta"), 2, tiny_model, backend="torch").shape == (1, 3, 10, 8)
    with pytest.raises(ValueError, match="out is on cpu but img is on meta"):
        upscale(torch.rand(1, 3, 5, 4, device="meta"), 2, tiny_model, out=torch.empty(1, 3, 10, 8))


def _stand_in_buffers(channels: int = 4, max_cached_shapes: int = 2):
    from vdsr_fast.kernels import PingPongBuffers

    pp = PingPongBuffers()
    pp.device, pp.dtype, pp.channels, pp._packed = torch.device("cpu"), torch.float32, channels, []
    pp.max_cached_shapes = max_cached_shapes
    pp._init_buffers()
    return pp


def test_stream_change_orders_the_gpu_work_without_a_host_sync(monkeypatch):
    """The fast backends' activation buffers are shared by every stream: when a call comes from
    another stream than the previous one, that stream waits (on the GPU) for the previous stream's
    queued work, and the buffers are recorded as used on it (so the caching allocator cannot hand
    them out while it still runs). Checked on the bookkeeping with stand-in streams (no GPU here)."""
    class Stream:
        def __init__(self, name):
            self.name, self.waited = name, []

        def wait_stream(self, other):
            self.waited.append(other.name)

    class Buf:
        def __init__(self):
            self.used_on = []

        def record_stream(self, s):
            self.used_on.append(s.name)

    pp = _stand_in_buffers()
    pp._packed, pp._flat = [Buf()], (Buf(), Buf())
    static = Buf()
    pp._graphs[(1, 4, 4)] = ("graph", static, static)
    a, b = Stream("a"), Stream("b")
    current = [a]
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[0])
    pp._enter_stream()
    pp._enter_stream()
    assert a.waited == [] and pp._flat[0].used_on == []  # same stream: nothing to order
    current[0] = b
    pp._enter_stream()
    assert b.waited == ["a"] and [f.used_on for f in pp._flat] == [["b"], ["b"]] and static.used_on == ["b", "b"]
    assert pp._packed[0].used_on == ["b"]  # the weights too: a dropped engine's memory is not reused early
    current[0] = a
    pp._enter_stream()
    assert a.waited == ["b"]


def test_buffers_grow_only_for_a_larger_shape_and_then_drop_the_graphs():
    """Every shape gets views at the start of the same two allocations; only a larger one reallocates, and that drops
    the CUDA graphs captured on the old addresses (kept otherwise: a same-size or smaller shape must not cost a
    re-capture). On the CPU, with a stand-in graph entry."""
    pp = _stand_in_buffers()
    a, b = pp.buffers(1, 3, 5)
    assert a.shape == b.shape == (1, 3, 5, 4) and a.data_ptr() != b.data_ptr()  # two buffers, not one
    ptrs = (a.data_ptr(), b.data_ptr())
    pp._graphs[(1, 3, 5)] = ("graph", None, None)
    for n, h, w in [(1, 3, 5), (1, 5, 3), (3, 1, 1)]:  # the same size, then a smaller one
        views = pp.buffers(n, h, w)
        assert (views[0].data_ptr(), views[1].data_ptr()) == ptrs and views[0].shape == (n, h, w, 4)
    assert list(pp._graphs) == [(1, 3, 5)] and pp.buffer_numel == 60
    pp.buffers(2, 3, 5)
    assert pp.buffer_numel == 120 and not pp._graphs, "graphs captured on the old buffers must go"


def test_graph_cache_is_lru_bounded_and_returns_fresh_outputs(monkeypatch):
    """_replay's bookkeeping, with stand-ins for CUDA streams and graphs (a stand-in graph's replay runs the forward
    it captured): the first call of a shape returns the warm-up's result, a replay copies the new input in and
    returns a fresh tensor (a later replay must not overwrite an earlier result), at most ``max_cached_shapes``
    graphs are kept and the least recently used one goes."""
    import contextlib

    class Graph:
        def replay(self):
            forward(*self.args)

    captured = []

    @contextlib.contextmanager
    def graph(g, stream=None, capture_error_mode=None):
        start = len(captured)
        yield
        g.args = captured[start]

    def forward(x, out):
        captured.append((x, out))
        out.copy_(x * 2 + 1)

    stream = SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    pp = _stand_in_buffers()
    xs = [torch.rand(1, 1, 3, 5) for _ in range(3)]
    with torch.inference_mode():  # a first call under inference_mode, the next ones outside it
        first = pp._replay((1, 3, 5), xs[0], forward)
    assert pp.buffer_numel == 1 * 3 * 5 * 4, "the buffers are sized before the capture"
    torch.testing.assert_close(first, xs[0] * 2 + 1, rtol=0, atol=0)
    second, third = pp._replay((1, 3, 5), xs[1], forward), pp._replay((1, 3, 5), xs[2], forward)
    torch.testing.assert_close(second, xs[1] * 2 + 1, rtol=0, atol=0)  # not overwritten by the third call's replay
    torch.testing.assert_close(third, xs[2] * 2 + 1, rtol=0, atol=0)
    pp._replay((1, 2, 2), torch.rand(1, 1, 2, 2), forward)
    pp._replay((1, 3, 5), xs[0], forward)  # (1, 3, 5) used last: (1, 2, 2) is now the least recently used
    pp._replay((1, 4, 1), torch.rand(1, 1, 4, 1), forward)
    assert list(pp._graphs) == [(1, 3, 5), (1, 4, 1)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (streams)")
@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_streams_share_one_engine_safely(tiny_model, backend):
    """Pipelines upscale on several streams: one engine serves them all, and its shared buffers never
    mix two streams' frames (each call's stream waits for the previous call's on the GPU)."""
    from vdsr_fast import VDSR, available_backends

    device = torch.device("cuda", torch.cuda.current_device())
    reason = available_backends(device).get(backend)
    if reason is not None:
        pytest.skip(f"backend {backend!r}: {reason}")
    model = (tiny_model if backend == "torch" else VDSR(depth=6, channels=64)).to(device)
    streams = [torch.cuda.Stream(device) for _ in range(3)]
    engine = get_engine(model, device, backend)
    for s in streams:
        with torch.cuda.stream(s):
            assert get_engine(model, device, backend) is engine
    xs = [torch.rand(2, 3, 96 + 8 * i, 64, device=device) for i in range(len(streams))]
    expected = [upscale(x, 2, model, backend=backend) for x in xs]
    torch.cuda.synchronize(device)
    outs = []
    for _ in range(4):  # back-to-back calls on alternating streams, no host sync in between
        for s, x in zip(streams, xs, strict=True):
            s.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(s):
                outs.append(upscale(x, 2, model, backend=backend))
    torch.cuda.synchronize(device)
    for i, o in enumerate(outs):
        torch.testing.assert_close(o, expected[i % len(xs)], rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_1080p_frames_without_memory_growth():
    """1,000 uint8 RGB frames 960x540 -> 1920x1080 through upscale() into one `out=` on the GPU, with
    the default engine: allocated memory after warm-up does not move, and the peak does not grow."""
    from vdsr_fast import VDSR

    device = torch.device("cuda", torch.cuda.current_device())
    model = VDSR().to(device)
    frames = [torch.randint(0, 256, (1, 540, 960, 3), dtype=torch.uint8, device=device) for _ in range(2)]
    out = torch.empty(1, 1080, 1920, 3, dtype=torch.uint8, device=device)
    for i in range(20):  # warm-up: engine, self-check, kernels, resize tables, allocator pools
        upscale(frames[i % 2], 2, model, out=out)
    torch.cuda.synchronize(device)
    before, peak = torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)
    for i in range(1000):
        upscale(frames[i % 2], 2, model, out=out)
    torch.cuda.synchronize(device)
    assert torch.cuda.memory_allocated(device) == before
    assert torch.cuda.max_memory_allocated(device) <= peak


def _gpu_engine(backend: str, model, dtype):
    """``model`` on the GPU and an Engine of ``backend`` for it, or a skip saying why it cannot run here."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: frames at the edge of the kernels' index ranges")
    from vdsr_fast.engine import BackendUnavailable

    model = model.cuda()
    try:
        return model, Engine(model, backend=backend, dtype=dtype, device="cuda")
    except BackendUnavailable as e:
        pytest.skip(f"{backend} backend unavailable: {e}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_a_batch_beyond_2_31_activation_values_is_right_in_its_last_frame(backend):
    """17 1080p frames hold 2.26e9 64-channel activation values, past 2**31: the last frame's offsets need the
    kernels' 64-bit image offsets (read, not run, until now). That frame (and the first) against the float64
    reference of it alone; a depth-3 net keeps it to a few hundred milliseconds and ~10 GB."""
    from equivalence import assert_equivalent, random_vdsr, ref64

    model, engine = _gpu_engine(backend, random_vdsr(3, 64, seed=5), torch.float16)
    x = torch.rand(17, 1, 1080, 1920, device="cuda")
    out = engine(x)
    same = Engine(model, backend="torch", dtype=torch.float16, device="cuda")
    for i in (0, 16):
        assert_equivalent(out[i : i + 1], same(x[i : i + 1]), ref64(model, x[i : i + 1]), torch.float16, f"{backend} frame {i} of 17")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_an_8k_frame_is_right_to_its_last_pixel(backend):
    """7680x4320 with 64 channels is 98.9% of the 32-bit range of one image's offsets: the bottom-right corner
    (where they are largest) against the float64 reference of that corner with the net's 3-pixel reach around it
    (its own zero padding spoils only those 3 rows and columns, which are not compared)."""
    from equivalence import assert_equivalent, random_vdsr, ref64

    model, engine = _gpu_engine(backend, random_vdsr(3, 64, seed=6), torch.float16)
    x = torch.rand(1, 1, 4320, 7680, device="cuda")
    out = engine(x)[..., -64:, -64:]
    corner = x[..., -67:, -67:]
    ref = ref64(model, corner)[..., 3:, 3:]
    same = Engine(model, backend="torch", dtype=torch.float16, device="cuda")(corner)[..., 3:, 3:]
    assert_equivalent(out, same, ref, torch.float16, f"{backend} 8K corner")

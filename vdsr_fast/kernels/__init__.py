"""Fast kernels: Triton (``kernels/triton``) and the CUDA extension wrapper (``kernels/cuda.py``)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import torch

# PyTorch allows one CUDA graph capture at a time per process: engines capturing from several
# threads take turns.
_CAPTURE_LOCK = threading.Lock()


# G of Winograd F(2x2, 3x3): U = G g G^T turns a 3x3 filter into the 4x4 transformed filter.
_WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def pack_winograd_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(C_OUT, C_IN, 3, 3) -> U = G g G^T as (16, C_OUT, C_IN) in ``dtype`` (index xi * 4 + nu), K contiguous:
    the Winograd F(2x2, 3x3) body kernels' weights (Triton ``conv3x3_winograd``, the CUDA Winograd variants).

    Computed in float64 from the given (fp32 master) weights and rounded once to ``dtype``.
    """
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"pack_winograd_weight: expected a (C_OUT, C_IN, 3, 3) weight, got {tuple(weight.shape)}")
    g = torch.tensor(_WINOGRAD_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ia,ocab,jb->ijoc", g, weight.detach().double(), g)  # (4, 4, C_OUT, C_IN)
    return u.reshape(16, *weight.shape[:2]).to(dtype).contiguous()


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, a bare ``"cuda"`` pinned to the current CUDA device (what torch
    itself allocates on), so it compares equal to the ``cuda:N`` of the tensors made there."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class PingPongBuffers:
    """Mixin for the fast backends: two NHWC activation buffers, reused by every call.

    Layer i reads one buffer and writes the other, so a whole network needs two, not one per layer.
    Both are flat allocations grown to the largest (N, H, W) seen so far; every input shape gets
    views at their start, so a tiled frame (up to nine window shapes) or a changing batch costs two
    planes of its largest window, never one pair per shape. Growing reallocates them and drops the
    CUDA graphs captured on the old ones (``_graphs``: at most ``max_cached_shapes``, LRU).

    Streams: calls may come from different CUDA streams (the caller's current one). The GPU work of
    consecutive calls is ordered through the buffers: when the stream changes, the new one waits for
    the old one's queued work (``wait_stream``: no host synchronisation), and the buffers, the packed
    weights and the graphs' tensors are marked as used on it so the caching allocator never hands
    their memory out early. A stream the caller destroys (``torch.cuda.ExternalStream``) must not be
    the last one an engine ran on.
    The backend sets ``device``, ``dtype``, ``channels``, ``max_cached_shapes`` and ``_packed`` (its
    weight tensors), then calls :meth:`_init_buffers` (on the stream it packed the weights on); it
    calls :meth:`_enter_stream` at the start of every CUDA call and :meth:`_replay` for graphs.
    """

    device: torch.device
    dtype: torch.dtype
    channels: int
    max_cached_shapes: int

    _packed: list[torch.Tensor]

    def _init_buffers(self) -> None:
        self._flat: tuple[torch.Tensor, torch.Tensor] | None = None
        self._graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = OrderedDict()
        self._capture_stream: torch.cuda.Stream | None = None
        # The weights were packed on this stream: a first call from another one waits for that work.
        cuda = self.device.type == "cuda"
        self._last_stream = torch.cuda.current_stream(self.device) if cuda else None

    @property
    def buffer_numel(self) -> int:
        """Elements in each of the two activation buffers now (0 before the first call)."""
        return 0 if self._flat is None else self._flat[0].numel()

    def buffers(self, n: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The two ping-pong NHWC activation buffers ``(n, h, w, channels)`` (views of the flat ones)."""
        numel = n * h * w * self.channels
        if numel > self.buffer_numel:
            self._graphs.clear()  # captured on the old addresses
            self._flat = None  # free the old pair before allocating the new one
            with torch.inference_mode(False):  # see _replay: normal tensors, whichever mode this call runs in
                self._flat = tuple(torch.empty(numel, device=self.device, dtype=self.dtype) for _ in range(2))
        return tuple(f[:numel].view(n, h, w, self.channels) for f in self._flat)

    def _enter_stream(self) -> None:
        """Order this call's GPU work after the previous call's, if that ran on another stream."""
        stream = torch.cuda.current_stream(self.device)
        last = self._last_stream
        if last is not None and last != stream:
            stream.wait_stream(last)
            tensors = [*(self._flat or ()), *self._packed] + [t for _, *statics in self._graphs.values() for t in statics]
            for t in tensors:
                t.record_stream(stream)
        self._last_stream = stream

    def _replay(self, key: tuple, x: torch.Tensor, forward: Callable[[torch.Tensor, torch.Tensor], object]) -> torch.Tensor:
        """``forward(x, out)`` through the CUDA graph captured for ``key`` (its first three entries are
        (N, H, W)), capturing it on first use (that call returns the warm-up run's output); returns a
        fresh tensor like ``x``.

        The capture runs on this backend's own stream (on its device, also with several GPUs in one
        process), after a warm-up there that compiles and configures every kernel. Nothing is
        allocated inside the capture: the output is a static tensor made beforehand.
        """
        entry = self._graphs.get(key)
        if entry is None:
            self.buffers(*key[:3])  # allocate (or grow) on the caller's stream, outside the capture
            # Normal tensors even when this first call runs under torch.inference_mode: tensors made there are
            # inference tensors, and copy_ into one from a later call outside that mode raises.
            with torch.inference_mode(False):
                static_in, static_out = torch.empty_like(x), torch.empty_like(x)
            static_in.copy_(x)
            if self._capture_stream is None:
                self._capture_stream = torch.cuda.Stream(self.device)
            cap, current = self._capture_stream, torch.cuda.current_stream(self.device)
            cap.wait_stream(current)
            try:
                with torch.cuda.stream(cap):
                    forward(static_in, static_out)  # warm-up: Triton JIT, shared-memory opt-in
            finally:
                current.wait_stream(cap)
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads (a video pipeline's decoder and encoder) keep using CUDA
            with _CAPTURE_LOCK, torch.cuda.graph(graph, stream=cap, capture_error_mode="thread_local"):
                forward(static_in, static_out)
            self._graphs[key] = (graph, static_in, static_out)
            while len(self._graphs) > self.max_cached_shapes:
                self._graphs.popitem(last=False)
            # A capture records without running: static_out still holds the warm-up's result for x,
            # so a shape seen once costs one network run, not two.
            return static_out.clone()
        self._graphs.move_to_end(key)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

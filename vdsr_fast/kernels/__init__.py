"""Fast kernels: Triton (``kernels/triton``) and the CUDA extension wrapper (``kernels/cuda.py``)."""

from __future__ import annotations

from collections import OrderedDict

import torch


class PingPongBuffers:
    """Mixin for the fast backends: two NHWC activation buffers per input shape, reused by every call.

    Layer i reads one buffer and writes the other, so a whole network needs two, not one per layer.
    Buffers are kept for the ``max_cached_shapes`` most recently used (N, H, W), LRU; CUDA graphs
    captured on them (``_graphs``, keyed by tuples that start with (N, H, W)) are dropped with them.
    The backend sets ``device``, ``dtype``, ``channels`` and ``max_cached_shapes``, then calls
    :meth:`_init_buffers`.
    """

    device: torch.device
    dtype: torch.dtype
    channels: int
    max_cached_shapes: int

    def _init_buffers(self) -> None:
        self._buffers: OrderedDict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def buffers(self, n: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The two ping-pong NHWC activation buffers for an (N, H, W) input, allocated on first use."""
        key = (n, h, w)
        bufs = self._buffers.get(key)
        if bufs is None:
            shape = (n, h, w, self.channels)
            bufs = (
                torch.empty(shape, device=self.device, dtype=self.dtype),
                torch.empty(shape, device=self.device, dtype=self.dtype),
            )
            self._buffers[key] = bufs
            while len(self._buffers) > self.max_cached_shapes:
                old, _ = self._buffers.popitem(last=False)
                for gkey in [k for k in self._graphs if k[:3] == old]:
                    del self._graphs[gkey]
        else:
            self._buffers.move_to_end(key)
        return bufs

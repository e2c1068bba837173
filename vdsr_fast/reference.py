"""The pure-PyTorch VDSR: the source of truth every fast path is checked against.

VDSR (Kim, Lee & Lee, CVPR 2016): ``depth`` conv3x3 layers (stride 1, zero padding 1, with bias),
``1 -> C``, ``depth - 2`` times ``C -> C``, ``C -> 1``; ReLU after every layer but the last; the output
is the input plus the last layer's residual. The published model has depth 20 and C = 64.

Tests and benchmarks import :func:`vdsr_forward` and :class:`VDSR` from here; never copy them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VDSR", "vdsr_forward", "flops_per_pixel", "channels_last"]


def vdsr_forward(
    x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Functional VDSR: ``x + conv_L(relu(conv_{L-1}(... relu(conv_1(x)))))`` for x of shape (N,1,H,W).

    Runs in the dtype of ``x``; weights are cast to it (so float64 here gives the float64 reference).
    """
    h = x
    last = len(weights) - 1
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = F.conv2d(h, w.to(x.dtype), b.to(x.dtype), padding=1)
        if i < last:
            h = F.relu(h)
    return x + h


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) in channels_last memory with channels_last's own strides, also where C (or H, W) is 1.

    ``x.contiguous(memory_format=torch.channels_last)`` hands back a contiguous 1-channel plane as it is, with NCHW
    strides, and PyTorch reads such strides as NCHW: the first convolution of a Y plane then ran NCHW (cuDNN,
    oneDNN), and its 64-channel output was converted for the next layer, which runs channels_last. So a frame gave
    other bits than a window cut out of it (a copy, which gets channels_last strides). Here the strides are
    channels_last's whatever the sizes: a view of the same memory, no copy where ``x`` already is channels_last."""
    x = x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    return x.as_strided(x.shape, (h * w * c, 1, w * c, c), x.storage_offset())


def flops_per_pixel(depth: int = 20, channels: int = 64) -> int:
    """Multiply-adds x 2 per output pixel (bias, ReLU and the residual add not counted)."""
    c = channels
    return 2 * 9 * (c + (depth - 2) * c * c + c)


class VDSR(nn.Module):
    """VDSR as an ``nn.Module``; ``layers[i]`` is the i-th ``Conv2d``.

    ``metadata`` holds the string metadata read from or written to a weights file.
    """

    def __init__(self, depth: int = 20, channels: int = 64) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"VDSR needs depth >= 2 (head and tail), got {depth}")
        if channels < 1:
            raise ValueError(f"VDSR needs channels >= 1, got {channels}")
        self.depth = depth
        self.channels = channels
        io = [(1, channels)] + [(channels, channels)] * (depth - 2) + [(channels, 1)]
        self.layers = nn.ModuleList(nn.Conv2d(cin, cout, 3, padding=1) for cin, cout in io)
        self.metadata: dict[str, str] = {}
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He initialisation (fan-out, as the paper and its PyTorch port), zero biases."""
        for conv in self.layers:
            fan_out = conv.out_channels * 9
            conv.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
            conv.bias.zero_()

    def __getstate__(self) -> dict:
        """Pickling and ``copy.deepcopy`` leave out the engines ``upscale`` caches on the model
        (GPU buffers, locks): a copy builds its own on first use."""
        state = self.__dict__.copy()
        state.pop("_vdsr_engines", None)
        return state

    @property
    def weights(self) -> list[torch.Tensor]:
        return [c.weight for c in self.layers]

    @property
    def biases(self) -> list[torch.Tensor]:
        return [c.bias for c in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"VDSR expects a Y plane batch of shape (N, 1, H, W), got {tuple(x.shape)}")
        return vdsr_forward(x, self.weights, self.biases)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, channels={self.channels}"

"""The Triton engine backend: VDSR as 1 + (depth - 2) + 1 fused kernel launches.

head  ``conv3x3_head``         Y plane (caller's tensor, any float dtype) -> NHWC buffer A   (conv+bias+ReLU)
body  ``conv3x3_tma`` (Hopper, fp16/bf16) or ``conv3x3_bias_relu``   A -> B, B -> A, ... (two ping-pong NHWC
      buffers per input shape; :func:`default_body_config` picks the kernel)
last  ``conv3x3_bias_relu_tail_partials`` (TMA body: ``conv3x3_tma_tail_partials``)  the last body layer: instead of its activation, the tail conv's
      9 per-tap partial sums per pixel (its epilogue multiplies the tile by the tail weights)
tail  ``tail_gather_residual``  partials + Y plane -> Y' = Y + sum of the neighbours' partials + bias

Weights are packed once (K contiguous, storage dtype; biases fp32). Kernels run on the caller's current
CUDA stream. The fused kernels are also registered as custom ops ``torch.ops.vdsr_fast.triton_conv3x3_{head,bias_relu}``
(with fake implementations), which is what an engine call traced by ``torch.compile`` runs; with a Winograd body
(``body_config=WinogradConfig(...)``) the body layers are ``conv3x3_winograd`` / ``triton_conv3x3_winograd``,
with ``body_config=TmaConfig(...)`` ``conv3x3_tma`` / ``triton_conv3x3_tma``.
The last two launches are ops ``triton_conv3x3_tail_partials`` and ``triton_tail_gather_residual``: the
last activation is never stored (the default since it was timed faster on an H200: 8.70 against 8.98 ms
at 1080p fp16, benchmarks/results). With ``fuse_tail=False`` the last body layer stores its activation and
the tail is ``conv3x3_tail_residual`` (op ``triton_conv3x3_tail_residual``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import torch

from ... import fp8 as fp8_scheme
from ...engine import BackendUnavailable
from ...reference import VDSR
from .. import PingPongBuffers, resolve_device
from .conv3x3 import (
    ConvConfig,
    conv3x3_bias_relu,
    conv3x3_bias_relu_tail_partials,
    conv3x3_config,
    conv3x3_head,
    interpreted,
    pack_conv3x3_weight,
    pack_tail_partials_weight,
    swap_configs,
)
from .conv3x3_tma import TmaConfig, conv3x3_tma, conv3x3_tma_tail_partials, tma_candidates, tma_config, tma_unsupported
from .tail import conv3x3_tail_residual, pack_tail_weight, tail_gather_residual
from .winograd import WinogradConfig, conv3x3_winograd, pack_winograd_weight, winograd_config

__all__ = ["TritonBackend"]


# --- custom ops: functional wrappers of the launchers, visible to torch.compile --------------------


def _on_device(t: torch.Tensor):
    """``t``'s CUDA device as the current one while an op body launches (Triton launches on the current device; an
    op traced by ``torch.compile(backend="aot_eager")`` runs without the engine's device guard, so on a second GPU
    it would launch on the first with the second's pointers); nothing for a CPU tensor (the interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@torch.library.custom_op("vdsr_fast::triton_conv3x3_head", mutates_args=())
def conv3x3_head_op(y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Y plane (N, 1, H, W) -> relu(conv3x3 + b) as contiguous NHWC (N, H, W, C_OUT) in ``w``'s dtype."""
    with _on_device(y):
        return conv3x3_head(y, w, b)


@conv3x3_head_op.register_fake
def _(y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n, h, w_ = y.shape[0], y.shape[-2], y.shape[-1]
    return y.new_empty((n, h, w_, w.shape[0]), dtype=w.dtype)


@torch.library.custom_op("vdsr_fast::triton_conv3x3_bias_relu", mutates_args=())
def conv3x3_bias_relu_op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """NHWC (N, H, W, C_IN) -> relu(conv3x3 + b) as contiguous NHWC (N, H, W, C_OUT)."""
    with _on_device(x):
        return conv3x3_bias_relu(x, w, b)


@conv3x3_bias_relu_op.register_fake
def _(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:3], w.shape[0]))


@torch.library.custom_op("vdsr_fast::triton_conv3x3_winograd", mutates_args=())
def conv3x3_winograd_op(x: torch.Tensor, u: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """NHWC (N, H, W, C_IN) -> relu(conv3x3 + b) by Winograd F(2x2, 3x3), contiguous NHWC (N, H, W, C_OUT)."""
    with _on_device(x):
        return conv3x3_winograd(x, u, b)


@conv3x3_winograd_op.register_fake
def _(x: torch.Tensor, u: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:3], u.shape[1]))


@torch.library.custom_op("vdsr_fast::triton_conv3x3_tma", mutates_args=())
def conv3x3_tma_op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """NHWC (N, H, W, C_IN) -> relu(conv3x3 + b) with tensor-descriptor tiles, contiguous NHWC (N, H, W, C_OUT)."""
    with _on_device(x):
        return conv3x3_tma(x.contiguous(), w, b)


@conv3x3_tma_op.register_fake
def _(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:3], w.shape[0]))


@torch.library.custom_op("vdsr_fast::triton_conv3x3_tail_residual", mutates_args=())
def conv3x3_tail_residual_op(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, y: torch.Tensor, clamp: bool
) -> torch.Tensor:
    """NHWC activations + Y plane -> y + conv3x3(x) + b (clamped if asked), contiguous, y's shape and dtype."""
    with _on_device(x):
        return conv3x3_tail_residual(x, w, b, y, clamp=clamp)


@conv3x3_tail_residual_op.register_fake
def _(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, y: torch.Tensor, clamp: bool) -> torch.Tensor:
    return y.new_empty(y.shape)


@torch.library.custom_op("vdsr_fast::triton_conv3x3_tail_partials", mutates_args=())
def conv3x3_tail_partials_op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, tw: torch.Tensor) -> torch.Tensor:
    """NHWC (N, H, W, C_IN) -> the tail's per-tap partial sums of relu(conv3x3 + b), fp32 (N * H * W, 9)."""
    with _on_device(x):
        return conv3x3_bias_relu_tail_partials(x, w, b, tw)


@conv3x3_tail_partials_op.register_fake
def _(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, tw: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0] * x.shape[1] * x.shape[2], 9), dtype=torch.float32)


@torch.library.custom_op("vdsr_fast::triton_tail_gather_residual", mutates_args=())
def tail_gather_residual_op(z: torch.Tensor, b: torch.Tensor, y: torch.Tensor, clamp: bool) -> torch.Tensor:
    """Partial sums + Y plane -> y + tail + b (clamped if asked), contiguous, y's shape and dtype."""
    with _on_device(z):
        return tail_gather_residual(z, b, y, clamp=clamp)


@tail_gather_residual_op.register_fake
def _(z: torch.Tensor, b: torch.Tensor, y: torch.Tensor, clamp: bool) -> torch.Tensor:
    return y.new_empty(y.shape)


def default_body_config(device: torch.device, dtype: torch.dtype, channels: int) -> TmaConfig | None:
    """The body kernel a backend uses when ``body_config`` is None: on a CUDA GPU with TMA (compute capability
    9.0+) in fp16/bf16 the tensor-descriptor kernel with :func:`tma_config` (timed fastest on an H200: 0.367
    against the direct kernel's 0.477 ms per 1080p layer, benchmarks/results run 7); elsewhere (older GPUs, fp32,
    the interpreter, channel counts TMA cannot take) None, i.e. the direct kernel's ``conv3x3_config`` heuristic.
    float8_e4m3fn (the TMA body only, everywhere): :func:`tma_config`, its K step narrowed to the channels (>= 32)."""
    device = torch.device(device)
    if dtype == torch.float8_e4m3fn:
        cfg = tma_config(dtype)
        return dataclasses.replace(cfg, block_k=min(cfg.block_k, max(channels, 32)))
    if device.type != "cuda" or dtype == torch.float32 or interpreted():
        return None
    if torch.cuda.get_device_capability(device)[0] < 9:
        return None
    cfg = tma_config(dtype)
    probe = torch.empty((1, 1, 1, channels), dtype=dtype)  # channel count and stride rules only
    return None if tma_unsupported(probe, channels, channels, cfg.block_k) else cfg


class TritonBackend(PingPongBuffers):
    """VDSR on the fused Triton kernels.

    Args:
        model: the :class:`~vdsr_fast.reference.VDSR` to pack.
        device: a CUDA device (or the CPU under ``TRITON_INTERPRET=1``, for tests).
        dtype: activation and weight storage dtype (fp16, bf16 or fp32); accumulation is fp32. ``float8_e4m3fn``:
            the opt-in FP8 scheme of :mod:`vdsr_fast.fp8` (compute capability 8.9+; the TMA body with its fused
            tail, fp32 head and tail; no torch.compile path).
        clamp: clamp the output Y to [0, 1] inside the tail kernel (the reference does not clamp).
        cuda_graphs: capture one CUDA graph per input shape and dtype and replay it (CUDA only).
        max_cached_shapes: how many input shapes keep a captured CUDA graph, LRU (the activation
            buffers are one pair, sized for the largest shape seen).
        body_config: block sizes of the 64->64 layers (e.g. one of ``conv3x3.body_config_candidates``);
            default :func:`default_body_config` (the TMA body on Hopper in fp16/bf16, else the direct kernel's
            ``conv3x3_config`` heuristic). Used by the eager and CUDA-graph paths. A
            :class:`~vdsr_fast.kernels.triton.winograd.WinogradConfig` selects the experimental Winograd
            F(2x2, 3x3) body kernel instead (weights packed as G g G^T; every path, torch.compile too).
            A :class:`~vdsr_fast.kernels.triton.conv3x3_tma.TmaConfig` selects the tensor-descriptor (TMA) body
            kernel (channels a power of two >= 16; every path, torch.compile too, with its default tile).
        fuse_tail: fuse the tail's conv into the last body layer (default; 3% faster on an H200): that layer
            writes 9 fp32 partial sums per pixel instead of its activation and a gather kernel adds the
            neighbours' partials, the bias and the residual (``conv3x3_bias_relu_tail_partials`` +
            ``tail_gather_residual``; the last layer then runs the direct kernel, with ``body_config`` if
            that is a direct config holding every channel in one tile without ``share_row``, else the
            default one; with a TMA body, ``conv3x3_tma_tail_partials`` with its config -- the eager and
            CUDA-graph paths; under torch.compile the direct kernel's op). Needs at least one body layer;
            ignored otherwise.

    Activation buffers are owned by the backend and shared by its calls: calls from different CUDA
    streams are ordered on the GPU (see :class:`~vdsr_fast.kernels.PingPongBuffers`), and
    :class:`~vdsr_fast.engine.Engine` serialises calls from several threads.
    """

    name = "triton"
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float8_e4m3fn)
    # What backend="auto" picks it for: in fp32 (no tensor cores) the PyTorch reference path is faster (H200, 1080p:
    # 211.5 ms here against 92.3 for cuDNN's fp32 convolutions; benchmarks/results run 10), so auto goes on to it.
    auto_dtypes = (torch.float16, torch.bfloat16, torch.float8_e4m3fn)

    @staticmethod
    def available(device: torch.device) -> str | None:
        device = torch.device(device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                return "CUDA is not available"
            if interpreted():
                return "triton was imported with TRITON_INTERPRET=1 (CPU interpreter), not for the GPU"
            return None
        if device.type == "cpu":
            if os.environ.get("TRITON_INTERPRET") == "1" and interpreted():
                return None
            return "Triton kernels need a CUDA device; on the CPU they run only in Triton's interpreter (TRITON_INTERPRET=1 set before triton is imported), which is for tests"
        return f"Triton backend does not run on device type {device.type!r}"

    @staticmethod
    def tuning_candidates(model: VDSR, device: torch.device, dtype: torch.dtype) -> list[tuple[str, dict]]:
        """The Winograd, SWAP (channels as the GEMM's M) and TMA bodies and the unfused tail beside the defaults
        (``Engine(tune=True)`` times them); for float8_e4m3fn, the other TMA tiles."""
        if dtype == torch.float8_e4m3fn:
            return [(f"TMA body {c}", {"body_config": c}) for c in tma_candidates(dtype)[1:]]
        cfg = winograd_config(model.channels, model.channels, dtype)
        swap, tma = swap_configs(dtype)[0], tma_config(dtype)
        if default_body_config(device, dtype, model.channels) is None:
            other = (f"TMA body {tma}", {"body_config": tma})
        else:  # the TMA body is the default here: the direct kernel is the alternative
            direct = conv3x3_config(model.channels, model.channels, dtype)
            other = (f"direct body {direct}", {"body_config": direct})
        return [(f"Winograd body {cfg}", {"body_config": cfg}), (f"swapped body {swap}", {"body_config": swap}),
                other, ("tail not fused", {"fuse_tail": False}),
                (f"Winograd body {cfg}, tail not fused", {"body_config": cfg, "fuse_tail": False})]  # fmt: skip

    def __init__(
        self,
        model: VDSR,
        device: torch.device,
        dtype: torch.dtype,
        *,
        clamp: bool = False,
        cuda_graphs: bool = False,
        max_cached_shapes: int = 4,
        body_config: ConvConfig | WinogradConfig | TmaConfig | None = None,
        fuse_tail: bool = True,
    ) -> None:
        device = resolve_device(device)
        if dtype not in self.dtypes:
            raise ValueError(f"TritonBackend: unsupported storage dtype {dtype}; expected fp16, bf16, fp32 or float8_e4m3fn")
        self.fp8 = dtype == torch.float8_e4m3fn
        if self.fp8:
            if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
                name = torch.cuda.get_device_name(device)
                raise BackendUnavailable(f"TritonBackend: float8_e4m3fn needs 8-bit tensor cores (compute capability 8.9+: "
                                         f"Ada, Hopper or newer); {name} is {torch.cuda.get_device_capability(device)}")  # fmt: skip
            if body_config is not None and not isinstance(body_config, TmaConfig):
                raise ValueError(f"TritonBackend: float8_e4m3fn runs the TMA body only, got body_config={body_config}")
            if not fuse_tail:
                raise ValueError("TritonBackend: float8_e4m3fn needs fuse_tail=True (the tail reads the last activation in fp16)")
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"TritonBackend: cuda_graphs=True needs a CUDA device, got {device}")
        # copies (an engine is a snapshot: packing hands back the model's own tensor where nothing converts)
        ws = [w.detach().to(device, copy=True) for w in model.weights]
        bs = [b.detach().to(device, copy=True) for b in model.biases]
        c = ws[0].shape[0]
        if len(ws) < 2 or ws[0].shape != (c, 1, 3, 3) or ws[-1].shape != (1, c, 3, 3):
            raise ValueError("TritonBackend: expected a VDSR with a 1->C head and a C->1 tail of 3x3 convs")
        for i, w in enumerate(ws[1:-1], 1):
            if w.shape != (c, c, 3, 3):
                raise ValueError(f"TritonBackend: layer {i} has shape {tuple(w.shape)}, expected ({c}, {c}, 3, 3)")
        self.device, self.dtype, self.channels = device, dtype, c
        # In-image offsets are 32-bit in the kernels (conv3x3._check_size): upscale() tiles within these.
        self.max_pixels, self.max_batch_pixels = (2**31 - 1) // c, 2**31 - 1
        self.clamp, self.cuda_graphs, self.max_cached_shapes = clamp, cuda_graphs, max(1, max_cached_shapes)
        if body_config is None:
            body_config = default_body_config(device, dtype, c)
        self.body_config = body_config
        fp32 = torch.float32
        # FP8 (vdsr_fast.fp8): an fp32 head divided by the first scale, e4m3 body weights, per-layer epilogue vectors
        # (the biases are then the betas), fp16 tail weights; the engine's buffers hold e4m3 activations.
        q = fp8_scheme.pack(model, device) if self.fp8 else None
        if q is not None:
            ws = [q.head_w, *q.body_w, ws[-1]]
            bs = [q.head_b, *q.beta, bs[-1]]
        self.alpha = q.alpha if q is not None else [None] * (len(ws) - 2)
        self._epilogue = [{"alpha": a} if a is not None else {} for a in self.alpha]  # FP8's per-layer kwargs
        self.w_head = pack_conv3x3_weight(ws[0], fp32 if self.fp8 else dtype)
        self.b_head = bs[0].to(fp32).contiguous()
        self.winograd = isinstance(body_config, WinogradConfig)
        self.tma = isinstance(body_config, TmaConfig)
        if self.tma and len(ws) > 2:
            probe = torch.empty((1, 1, 1, c), dtype=dtype)  # channel count and stride rules only
            if why := tma_unsupported(probe, c, c, body_config.block_k):
                raise ValueError(f"TritonBackend: body_config={body_config}: {why}")
        pack = pack_winograd_weight if self.winograd else pack_conv3x3_weight
        self.w_body = [pack(w, dtype) for w in ws[1:-1]]
        self.b_body = [b.to(fp32).contiguous() for b in bs[1:-1]]
        self.w_tail = pack_tail_weight(ws[-1], dtype) if not self.fp8 else None  # FP8: the tail is always fused
        self.b_tail = bs[-1].to(fp32).reshape(1).contiguous()
        self._packed = [self.w_head, self.b_head, *self.w_body, *self.b_body, self.b_tail]
        self._packed += [t for t in (self.w_tail, *self.alpha) if t is not None]
        # The fused tail: the last body layer in the direct kernel's packing, the tail as (C, 16) columns.
        self.fuse_tail = bool(fuse_tail) and len(ws) > 2
        if self.fuse_tail:
            self.w_last = pack_conv3x3_weight(ws[-2], dtype)
            self.w_tail16 = pack_tail_partials_weight(ws[-1], torch.float16 if self.fp8 else dtype)
            # the partial sums need every channel in one program: a TMA body's last layer is its TAIL kernel, a
            # direct config holding all channels without share_row is kept, other configs take the default tile
            usable = isinstance(body_config, ConvConfig) and not body_config.share_row and body_config.block_n >= c
            self.last_config = body_config if usable or self.tma else None
            self._packed += [self.w_last, self.w_tail16]
        self._init_buffers()  # two ping-pong NHWC buffers; graphs keyed (N, H, W, y dtype)

    def _check(self, y: torch.Tensor) -> None:
        if not torch.is_tensor(y) or y.dim() != 4 or y.shape[1] != 1:
            shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise ValueError(f"TritonBackend: expected a Y-plane batch of shape (N, 1, H, W), got {shape}")
        if not y.is_floating_point():
            raise TypeError(f"TritonBackend: expected a floating-point Y plane, got {y.dtype}")
        if y.device != self.device:
            raise ValueError(f"TritonBackend: input is on {y.device} but the weights are on {self.device}")
        if y.numel() == 0:
            raise ValueError(f"TritonBackend: empty input of shape {tuple(y.shape)}")

    def _forward(self, y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        a, b = self.buffers(y.shape[0], y.shape[2], y.shape[3])
        conv3x3_head(y, self.w_head, self.b_head, out=a, out_dtype=self.dtype)
        body = conv3x3_winograd if self.winograd else conv3x3_tma if self.tma else conv3x3_bias_relu
        layers = list(zip(self.w_body, self.b_body, self._epilogue, strict=True))
        for w, bias, scale in layers[:-1] if self.fuse_tail else layers:
            body(a, w, bias, out=b, config=self.body_config, **scale)
            a, b = b, a
        if not self.fuse_tail:
            return conv3x3_tail_residual(a, self.w_tail, self.b_tail, y, out, clamp=self.clamp)
        # The partial sums (36 bytes per pixel) go into the free buffer when it is large enough (VDSR's 64
        # channels: 128 bytes per pixel in fp16, 256 in fp32): no allocation per call.
        pixels = b.shape[0] * b.shape[1] * b.shape[2]
        z = None
        if b.numel() * b.element_size() >= pixels * 9 * 4:
            z = b.view(-1)[: pixels * 9 * 4 // b.element_size()].view(torch.float32).view(pixels, 9)
        last = conv3x3_tma_tail_partials if self.tma else conv3x3_bias_relu_tail_partials
        z = last(a, self.w_last, self.b_body[-1], self.w_tail16, z, config=self.last_config, **self._epilogue[-1])
        return tail_gather_residual(z, self.b_tail, y, out, clamp=self.clamp)

    def forward_ops(self, y: torch.Tensor) -> torch.Tensor:
        """The same network through the ``torch.ops.vdsr_fast`` custom ops (what torch.compile traces)."""
        if self.fp8:
            raise NotImplementedError("TritonBackend: float8_e4m3fn has no torch.compile path; call the engine "
                                      "eagerly (cuda_graphs=True removes the launch overhead instead)")  # fmt: skip
        ops = torch.ops.vdsr_fast
        h = ops.triton_conv3x3_head(y, self.w_head, self.b_head)
        body = ops.triton_conv3x3_bias_relu
        if self.winograd or self.tma:
            body = ops.triton_conv3x3_winograd if self.winograd else ops.triton_conv3x3_tma
        layers = list(zip(self.w_body, self.b_body, strict=True))
        for w, bias in layers[:-1] if self.fuse_tail else layers:
            h = body(h, w, bias)
        if not self.fuse_tail:
            return ops.triton_conv3x3_tail_residual(h, self.w_tail, self.b_tail, y, self.clamp)
        z = ops.triton_conv3x3_tail_partials(h, self.w_last, self.b_body[-1], self.w_tail16)
        return ops.triton_tail_gather_residual(z, self.b_tail, y, self.clamp)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """``y + residual(y)`` for a Y-plane batch (N, 1, H, W) of any float dtype; returns y's dtype."""
        self._check(y)
        if torch.compiler.is_compiling():
            return self.forward_ops(y)
        if self.device.type != "cuda":
            return self._forward(y)
        with torch.cuda.device(self.device):
            self._enter_stream()
            if self.cuda_graphs:
                return self._replay((y.shape[0], y.shape[2], y.shape[3], y.dtype), y, self._forward)
            return self._forward(y)

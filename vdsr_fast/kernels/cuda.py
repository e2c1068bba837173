"""The CUDA C++ engine backend: VDSR on the hand-written kernels of ``csrc/`` (module ``vdsr_fast._C``).

head  Y plane (fp32) -> NHWC buffer A                       relu(conv3x3 1->64 + b), CUDA cores (``mma_head=True``:
                                                            tensor cores, opt-in: not faster on an H200, run 11;
                                                            ``fuse_head=True``: computed by the first body layer
                                                            itself, Hopper, opt-in: slower at 1080p, run 12)
body  A -> B, B -> A, ... (two ping-pong NHWC buffers)      relu(conv3x3 64->64 + b), tensor cores
                                                            (mma.sync m16n8k16, weight-stationary; opt-in
                                                            variants: Winograd F(2x2,3x3), Hopper wgmma)
tail  last buffer + Y plane -> Y + conv3x3 64->1 + b        fp32 out, residual fused
      (fused into the last body layer where the body variant can: the wgmma strip variants, Hopper's default;
      that layer writes the tail conv's 9 per-tap partial sums per pixel instead of its activation, and a
      gather kernel adds the neighbours' partials, the bias and the residual; ``fuse_tail=False`` runs the
      separate tail kernel on the stored activation)

The whole chain is one ``_C.forward`` call (20 launches on the caller's current stream, no host
synchronisation); under ``torch.compile`` it is the custom op ``torch.ops.vdsr_fast.cuda_vdsr``.  Weights are packed once here: body layers ``[L][9][64][64]`` (tap, out channel,
in channel; storage dtype), head ``[64][9]`` and tail ``[9][64]`` in fp32, biases fp32.

The extension is optional: when it is not built, :meth:`CudaBackend.available` says so and
``Engine(..., backend="cuda")`` raises :class:`~vdsr_fast.engine.BackendUnavailable`.
"""

from __future__ import annotations

import torch

from ..reference import VDSR
from . import PingPongBuffers, pack_winograd_weight, resolve_device

__all__ = ["CudaBackend", "cuda_vdsr_op", "load_extension", "pack_body_weight", "variant_unavailable"]

_CHANNELS = 64  # the body kernel is written for exactly 64 channels (the published VDSR)


def load_extension():
    """Import ``vdsr_fast._C``; raises ImportError with a build hint when it is absent."""
    try:
        from .. import _C
    except ImportError as e:
        raise ImportError(
            "the CUDA extension vdsr_fast._C is not built (install vdsr_fast with nvcc, cmake and pybind11 "
            f"available and VDSR_FAST_SKIP_CUDA_BUILD unset; see csrc/README.md): {e}"
        ) from e
    return _C


def variant_unavailable(variant: dict, device: torch.device) -> str | None:
    """Why body kernel variant ``variant`` (an entry of ``vdsr_fast._C.body_variants()``) cannot run on the
    CUDA ``device``, or None: its shared memory, and for the wgmma kernel an sm_90a build on a 9.0 GPU."""
    props = torch.cuda.get_device_properties(device)
    have = getattr(props, "shared_memory_per_block_optin", None)
    if have is not None and variant["smem_bytes"] > have:
        return f"body variant {variant['id']} needs {variant['smem_bytes']} bytes of shared memory per block; {props.name} allows {have}"
    if variant.get("wgmma"):
        if (props.major, props.minor) != (9, 0):
            return f"body variant {variant['id']} (wgmma) runs on compute capability 9.0 only; {props.name} is {props.major}.{props.minor}"
        archs = load_extension().CUDA_ARCHS
        if "90a" not in archs:
            return f"body variant {variant['id']} (wgmma) needs a build for sm_90a; this one is for {archs!r}"
    return None


def pack_body_weight(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(64, 64, 3, 3) conv weight ``w[n][c][ky][kx]`` -> ``[9][64][64]`` = ``[ky*3+kx][n][c]`` in ``dtype``."""
    return w.detach().permute(2, 3, 0, 1).reshape(9, w.shape[0], w.shape[1]).to(dtype).contiguous()


def _launch_forward(
    x: torch.Tensor,
    out: torch.Tensor,
    bufs: tuple[torch.Tensor, torch.Tensor],
    w_head: torch.Tensor,
    b_head: torch.Tensor,
    w_body: torch.Tensor,
    b_body: torch.Tensor,
    num_body: int,
    w_tail: torch.Tensor,
    b_tail: torch.Tensor,
    variant: int,
    fuse_tail: bool,
    mma_head: bool,
    pdl: bool,
    fuse_head: bool,
    tail_spread: bool,
    head_schedule: int,
) -> None:
    """One ``_C.forward`` call on the current stream: contiguous fp32 ``x`` (N, 1, H, W) -> ``out``."""
    ext = load_extension()
    n, _, h, w = x.shape
    code = ext.DTYPE_FLOAT16 if bufs[0].dtype == torch.float16 else ext.DTYPE_BFLOAT16
    stream = torch.cuda.current_stream(x.device).cuda_stream
    ext.forward(
        x.data_ptr(), out.data_ptr(), bufs[0].data_ptr(), bufs[1].data_ptr(),
        w_head.data_ptr(), b_head.data_ptr(), w_body.data_ptr(), b_body.data_ptr(), num_body,
        w_tail.data_ptr(), b_tail.data_ptr(), n, h, w, code, x.device.index, stream, variant, fuse_tail, mma_head, pdl,
        fuse_head, tail_spread, head_schedule,
    )  # fmt: skip


@torch.library.custom_op("vdsr_fast::cuda_vdsr", mutates_args=())
def cuda_vdsr_op(
    x: torch.Tensor,
    w_head: torch.Tensor,
    b_head: torch.Tensor,
    w_body: torch.Tensor,
    b_body: torch.Tensor,
    num_body: int,
    w_tail: torch.Tensor,
    b_tail: torch.Tensor,
    variant: int,
    fuse_tail: bool = False,
    mma_head: bool = False,
    pdl: bool = False,
    fuse_head: bool = False,
    tail_spread: bool = False,
    head_schedule: int = 0,
) -> torch.Tensor:
    """The whole network as one op (what ``torch.compile`` traces): fp32 Y plane -> fp32 ``x + residual``.

    Activations are stored in ``w_body``'s dtype; the two NHWC buffers come from the caching allocator.
    """
    x = x.contiguous()
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    bufs = tuple(torch.empty((n, h, w, _CHANNELS), device=x.device, dtype=w_body.dtype) for _ in range(2))
    with torch.cuda.device(x.device):
        _launch_forward(x, out, bufs, w_head, b_head, w_body, b_body, num_body, w_tail, b_tail, variant, fuse_tail,
                        mma_head, pdl, fuse_head, tail_spread, head_schedule)  # fmt: skip
    return out


@cuda_vdsr_op.register_fake
def _(x, w_head, b_head, w_body, b_body, num_body, w_tail, b_tail, variant, fuse_tail=False, mma_head=False,
      pdl=False, fuse_head=False, tail_spread=False, head_schedule=0):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


class CudaBackend(PingPongBuffers):
    """VDSR on the ``vdsr_fast._C`` kernels (fp16 or bf16 storage, fp32 accumulation).

    Args:
        model: the :class:`~vdsr_fast.reference.VDSR` to pack (64 channels, any depth >= 2).
        device: a CUDA device of compute capability 8.0 or newer.
        dtype: ``torch.float16`` or ``torch.bfloat16`` (activations and body weights).
        max_cached_shapes: how many input shapes keep a captured CUDA graph, LRU (the activation
            buffers are one pair, sized for the largest shape seen).
        body_variant: id of the body kernel variant (``vdsr_fast._C.body_variants()``); None picks the
            automatic one (``_C.body_auto_variant``: on Hopper with an sm_90a build the wgmma strip variant 10,
            elsewhere the largest direct ``mma.sync`` kernel that fits the GPU's shared memory: 1 on an A100, 15 on
            the 99 KB sm_86/sm_89 cards).  For tuning and tests; a
            variant with ``winograd`` set is the Winograd F(2x2, 3x3) kernel (weights packed as G g G^T), one
            with ``wgmma`` a Hopper kernel (sm_90a, compute capability 9.0 only); a variant this GPU cannot
            run raises :class:`~vdsr_fast.engine.BackendUnavailable`.
        fuse_tail: run the tail fused into the last body layer (partial sums + a gather kernel; needs a body
            variant with ``tail_partials``, the wgmma strip variants; ignored without body layers).  None (the
            default): fused when the body variant has ``tail_partials`` (1-2% faster at 1080p and 4K fp16 on
            an H200, benchmarks/results runs 9 and 10); True where it has not raises
            :class:`~vdsr_fast.engine.BackendUnavailable`.
        mma_head: run the head (1 -> 64 channels) on tensor cores (``mma.sync``, the Y values and head weights
            rounded to ``dtype`` as the reference path's conv rounds them) instead of fp32 FMAs; opt-in: on an H200
            (run 11, 1080p) it took 0.130 ms against the FMA head's 0.121 (its 265 MB of stores alone ~0.06).
        pdl: launch the wgmma strip body layers by programmatic dependent launch (Hopper): a layer's CTAs may
            start, and load their weights, while the previous kernel finishes, and wait for it before touching an
            activation (other variants launch as always); opt-in: on an H200 (run 11) within the run-to-run spread of
            the plain launch (1080p fp16 5.45 against 5.48 ms, 4K 21.43 against 21.50).
        fuse_head: the first body layer computes the head itself from the Y plane (its halo rows: the head conv,
            bias and ReLU in the head kernel's fp32 arithmetic, rounded to ``dtype``: the same bits), so the head's
            64-channel activation is never written or read (265 MB each way at 1080p fp16).  Runs on the wgmma
            strip kernel (compute capability 9.0, an sm_90a build) whatever ``body_variant`` the other layers
            take, not with ``mma_head`` or a Winograd variant, and needs a body layer besides a fused tail's.
            Opt-in: on an H200 (run 12, fp16) 5.37-5.40 ms at 1080p against 5.34 without it, 20.79-21.19 at 4K
            against 21.25.
        head_schedule: with ``fuse_head``, the first layer's schedule, one of ``range(_C.HEAD_SCHEDULES)`` (those of
            ``_C.head_body``): 0 computes the halo rows after the epilogue, 1 issues the item's 36 wgmmas in one
            group, 2 computes the rows between the last wgmma groups (csrc/README.md).  0: none was fastest at both 1080p
            and 4K in run 12.
        tail_spread: with the fused tail, its last body layer sums the tail's partial sums in every epilogue part
            (the pixels that part staged, 2-4 threads a pixel), between the item's wgmma groups, where the plain
            schedule sums the whole row after the last group (run 11: that layer took 0.370 ms against a plain
            layer's 0.305).  The same sums in another order (fp32).  Body variants with ``tail_spread`` (8 and 10);
            opt-in: slower on an H200 (run 12, fp16: 5.48 against 5.34 ms at 1080p, 21.52 against 21.25 at 4K).
        cuda_graphs: capture the 20 launches once per input shape as a CUDA graph and replay it
            (removes the per-launch host cost, which matters for small images).

    Activation buffers are owned by the backend and shared by its calls: calls from different CUDA
    streams are ordered on the GPU (see :class:`~vdsr_fast.kernels.PingPongBuffers`), and
    :class:`~vdsr_fast.engine.Engine` serialises calls from several threads.
    """

    name = "cuda"
    dtypes = (torch.float16, torch.bfloat16)

    @staticmethod
    def available(device: torch.device) -> str | None:
        device = torch.device(device)
        try:
            ext = load_extension()
        except ImportError as e:
            return str(e)
        if device.type != "cuda":
            return f"it runs on CUDA devices only, not on {device.type!r}"
        if not torch.cuda.is_available():
            return "PyTorch sees no CUDA device"
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            return f"there is no CUDA device {index} ({torch.cuda.device_count()} visible)"
        major, minor = torch.cuda.get_device_capability(index)
        name = torch.cuda.get_device_name(index)
        if major < 8:
            return f"it needs compute capability 8.0 or newer (mma.sync bf16, cp.async); {name} is {major}.{minor}"
        # The body kernels keep a layer's 72 KB of weights plus their pipeline stages in shared memory (but the
        # wgmma ones with the weights in registers, which run on compute capability 9.0 only): A100/H100/H200
        # allow 163-227 KB per block, the sm_86/sm_89 cards (RTX 30xx/40xx, A10, L4, L40S) 99 KB, which the
        # smallest (variants 15 and 16: 4 x 16-pixel tiles, two stages) fill exactly.
        need = min(v["smem_bytes"] for v in ext.body_variants() if not v["wgmma"] or (major, minor) == (9, 0))
        have = getattr(torch.cuda.get_device_properties(index), "shared_memory_per_block_optin", None)
        if have is not None and have < need:
            return f"its body kernel needs {need} bytes of shared memory per block and {name} allows {have}"
        try:
            ext.check_device(index)
        except RuntimeError as e:
            return f"vdsr_fast._C was built for CUDA archs {ext.CUDA_ARCHS!r} and cannot run on this GPU ({e})"
        return None

    @staticmethod
    def tuning_candidates(model: VDSR, device: torch.device, dtype: torch.dtype) -> list[tuple[str, dict]]:
        """The body variants this GPU runs, but the automatic one, the unfused tail, programmatic dependent launch, the
        spread tail schedule and the fused head where the automatic variant is a strip variant, and the tensor-core head
        (``Engine(tune=True)`` times them)."""
        ext = load_extension()
        device = resolve_device(device)
        auto = ext.body_auto_variant(device.index)
        strip = ext.body_variants()[auto]["tail_partials"]  # a strip variant: the ones that fuse the tail, take pdl
        out = [("tail not fused", {"fuse_tail": False})] if strip else []
        out.append(("tensor-core head", {"mma_head": True}))
        if strip:
            out.append(("programmatic dependent launch", {"pdl": True}))
            if ext.body_variants()[auto]["tail_spread"]:
                out.append(("spread tail partials", {"tail_spread": True}))
            if model.depth >= 4:  # a body layer besides the fused tail's
                out.append(("fused head", {"fuse_head": True}))
        for v in ext.body_variants():
            if v["id"] != auto and variant_unavailable(v, device) is None:
                kind = "Winograd" if v["winograd"] else "wgmma" if v["wgmma"] else "direct"
                out.append((f"body variant {v['id']} ({kind}, {v['tile_h']}x{v['tile_w']} px, {v['stages']} stages)",
                            {"body_variant": v["id"]}))  # fmt: skip
        return out

    def __init__(
        self,
        model: VDSR,
        device: torch.device,
        dtype: torch.dtype,
        *,
        max_cached_shapes: int = 4,
        body_variant: int | None = None,
        cuda_graphs: bool = False,
        fuse_tail: bool | None = None,
        mma_head: bool = False,
        pdl: bool = False,
        fuse_head: bool = False,
        tail_spread: bool = False,
        head_schedule: int = 0,
    ) -> None:
        from ..engine import BackendUnavailable

        self._C = load_extension()
        device = torch.device(device)
        if device.type != "cuda":
            raise BackendUnavailable(f"CudaBackend: needs a CUDA device, got {device}")
        device = resolve_device(device)
        if dtype not in self.dtypes:
            raise BackendUnavailable(f"CudaBackend: unsupported storage dtype {dtype}; expected float16 or bfloat16")
        # copies (an engine is a snapshot: packing hands back the model's own tensor where nothing converts)
        ws = [w.detach().to(device, copy=True) for w in model.weights]
        bs = [b.detach().to(device, copy=True) for b in model.biases]
        c = ws[0].shape[0]
        if c != _CHANNELS:
            raise BackendUnavailable(
                f"CudaBackend: the CUDA kernels are written for {_CHANNELS} channels; this model has {c}"
            )
        if len(ws) < 2 or ws[0].shape != (c, 1, 3, 3) or ws[-1].shape != (1, c, 3, 3):
            raise ValueError("CudaBackend: expected a VDSR with a 1->64 head and a 64->1 tail of 3x3 convs")
        for i, w in enumerate(ws[1:-1], 1):
            if w.shape != (c, c, 3, 3):
                raise ValueError(f"CudaBackend: layer {i} has shape {tuple(w.shape)}, expected ({c}, {c}, 3, 3)")
        fp32 = torch.float32
        self.device, self.dtype, self.channels = device, dtype, c
        self.max_pixels = 2**31 - 1  # bindings.cpp check_shape: H*W <= INT32_MAX
        self.dtype_code = self._C.DTYPE_FLOAT16 if dtype == torch.float16 else self._C.DTYPE_BFLOAT16
        self.body_variant = -1 if body_variant is None else int(body_variant)
        self.max_cached_shapes = max(1, int(max_cached_shapes))
        self.cuda_graphs = bool(cuda_graphs)
        self.num_body = len(ws) - 2
        self.w_head = ws[0].to(fp32).reshape(c, 9).contiguous()  # [n][ky*3+kx]
        self.b_head = bs[0].to(fp32).contiguous()
        if self.num_body:
            variants = self._C.body_variants()
            if not -1 <= self.body_variant < len(variants):
                raise ValueError(f"CudaBackend: no body kernel variant {self.body_variant} (ids 0..{len(variants) - 1})")
            if self.body_variant >= 0 and (why := variant_unavailable(variants[self.body_variant], device)):
                raise BackendUnavailable(f"CudaBackend: {why}")
            winograd = self.body_variant >= 0 and variants[self.body_variant]["winograd"]
            vid = self.body_variant if self.body_variant >= 0 else self._C.body_auto_variant(device.index)
            if fuse_tail is None:
                fuse_tail = variants[vid]["tail_partials"]
            elif fuse_tail and not variants[vid]["tail_partials"]:
                raise BackendUnavailable(
                    f"CudaBackend: fuse_tail=True needs a body variant with tail_partials (the wgmma strip "
                    f"variants {[v['id'] for v in variants if v['tail_partials']]}, Hopper); "
                    f"the {'automatic ' if self.body_variant < 0 else ''}body variant here is {vid}"
                )
            pack = pack_winograd_weight if winograd else pack_body_weight  # [L][16][64][64] or [L][9][64][64]
            self.w_body = torch.stack([pack(w, dtype) for w in ws[1:-1]]).contiguous()
            self.b_body = torch.stack([b.to(fp32) for b in bs[1:-1]]).contiguous()  # [L][64]
        else:  # depth 2: no body layer; the kernels never read these
            self.w_body = torch.zeros(1, device=device, dtype=dtype)
            self.b_body = torch.zeros(1, device=device, dtype=fp32)
        self.fuse_tail = bool(fuse_tail) and self.num_body > 0
        self.mma_head = bool(mma_head)
        self.pdl = bool(pdl)
        self.fuse_head = bool(fuse_head)
        if self.fuse_head and (why := self._fuse_head_unavailable(device)):
            raise BackendUnavailable(f"CudaBackend: fuse_head=True {why}")
        self.head_schedule = int(head_schedule)
        if not 0 <= self.head_schedule < self._C.HEAD_SCHEDULES:
            raise ValueError(f"CudaBackend: no fused-head schedule {self.head_schedule} (0..{self._C.HEAD_SCHEDULES - 1})")
        self.tail_spread = bool(tail_spread)
        if self.tail_spread and not (self.fuse_tail and self._C.body_variants()[vid]["tail_spread"]):
            spread = [v["id"] for v in self._C.body_variants() if v["tail_spread"]]
            raise BackendUnavailable(
                f"CudaBackend: tail_spread=True is a schedule of the fused tail of the body variants {spread}; here "
                + (f"the {'automatic ' if self.body_variant < 0 else ''}body variant is {vid}" if self.fuse_tail
                   else "the tail is not fused")
            )  # fmt: skip
        self.w_tail = ws[-1].to(fp32).permute(2, 3, 1, 0).reshape(9, c).contiguous()  # [ky*3+kx][c]
        self.b_tail = bs[-1].to(fp32).reshape(1).contiguous()
        self._packed = [self.w_head, self.b_head, self.w_body, self.b_body, self.w_tail, self.b_tail]
        self._init_buffers()  # two ping-pong NHWC buffers; graphs keyed (N, H, W)

    def _fuse_head_unavailable(self, device: torch.device) -> str | None:
        """Why this backend cannot fuse its head into the first body layer, or None."""
        if self.mma_head:
            return "computes the head with fp32 FMAs: not with mma_head=True"
        if self.num_body < (2 if self.fuse_tail else 1):
            return f"needs a body layer besides the fused tail's; this model has {self.num_body}"
        variants = self._C.body_variants()
        if self.body_variant >= 0 and variants[self.body_variant]["winograd"]:
            return f"needs direct-convolution weights, not body variant {self.body_variant}'s Winograd ones"
        strip = next(v for v in variants if v["tail_partials"])  # the fused head runs on the wgmma strip kernel
        if why := variant_unavailable(strip, device):
            return f"runs on the wgmma strip kernel: {why}"
        return None

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """``y + residual(y)`` for a Y-plane batch (N, 1, H, W) of any float dtype; returns y's dtype."""
        if not torch.is_tensor(y) or y.dim() != 4 or y.shape[1] != 1:
            shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise ValueError(f"CudaBackend: expected a Y-plane batch of shape (N, 1, H, W), got {shape}")
        if y.device != self.device:
            raise ValueError(f"CudaBackend: input is on {y.device} but the weights are on {self.device}")
        if torch.compiler.is_compiling():
            return self.forward_op(y)
        with torch.cuda.device(self.device):
            self._enter_stream()
            x = y.to(torch.float32).contiguous()  # the kernels read and write fp32 Y planes
            if self.cuda_graphs:
                out = self._replay((x.shape[0], x.shape[2], x.shape[3]), x, self._forward)
            else:
                out = self._forward(x, torch.empty_like(x))
        return out.to(y.dtype)

    def _forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The 20 launches on the current stream: contiguous fp32 ``x`` (N, 1, H, W) -> ``out``."""
        bufs = self.buffers(x.shape[0], x.shape[2], x.shape[3])
        _launch_forward(x, out, bufs, self.w_head, self.b_head, self.w_body, self.b_body, self.num_body,
                        self.w_tail, self.b_tail, self.body_variant, self.fuse_tail, self.mma_head, self.pdl,
                        self.fuse_head, self.tail_spread, self.head_schedule)  # fmt: skip
        return out

    def forward_op(self, y: torch.Tensor) -> torch.Tensor:
        """The same network through the ``torch.ops.vdsr_fast.cuda_vdsr`` custom op (torch.compile path)."""
        x = y.to(torch.float32)
        out = torch.ops.vdsr_fast.cuda_vdsr(
            x, self.w_head, self.b_head, self.w_body, self.b_body, self.num_body,
            self.w_tail, self.b_tail, self.body_variant, self.fuse_tail, self.mma_head, self.pdl, self.fuse_head,
            self.tail_spread, self.head_schedule,
        )  # fmt: skip
        return out.to(y.dtype)

"""The inference engine: one VDSR, packed once for one backend, device and dtype.

``Engine(model, backend=..., dtype=..., device=...)(y)`` maps a Y-plane batch ``(N, 1, H, W)`` (float,
the bicubic-upscaled luminance in [0, 1]) to ``y + residual``, returned in ``y``'s dtype.

Backends register themselves in ``BACKENDS``; each is a class with ``available(device) -> reason or
None``, a constructor ``(model, device, dtype)`` that packs the weights, and ``__call__(y) -> y'``.
``backend="auto"`` tries the CUDA extension, then Triton, then the PyTorch reference; an explicitly
requested backend that cannot run raises :class:`BackendUnavailable` and never falls back.

A backend may also offer ``tuning_candidates(model, device, dtype) -> [(label, options), ...]``: alternative
kernels (body variants, tile configs) that ``Engine(..., tune=True)`` times on the GPU to keep the fastest.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from typing import Protocol

import torch

from .kernels import resolve_device
from .reference import VDSR, channels_last, vdsr_forward

__all__ = ["Engine", "BackendUnavailable", "BACKENDS", "available_backends"]


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (not built, no GPU, wrong dtype...)."""


class SelfCheckFailed(BackendUnavailable):
    """The requested backend runs here but its output failed :func:`self_check` against the reference: a wrong
    kernel, not a missing feature (what ``vdsr-fast verify`` reports as FAIL rather than skipped)."""


class Backend(Protocol):
    name: str
    dtypes: tuple[torch.dtype, ...]

    @staticmethod
    def available(device: torch.device) -> str | None: ...

    def __init__(self, model: VDSR, device: torch.device, dtype: torch.dtype) -> None: ...

    def __call__(self, y: torch.Tensor) -> torch.Tensor: ...


# Optional backend attributes (absent or None: no limit):
#   max_pixels        the largest H*W one call may have (index width of the kernels);
#   max_batch_pixels  the largest N*H*W one call may have.
# upscale() tiles a frame so that every network window stays within them.
#   auto_dtypes       the dtypes backend="auto" picks it for (absent: all of `dtypes`); in the others (and in those
#                     it lacks) auto goes on to the next backend without a warning (an explicit backend= still runs them).


_TF32_LOCK = threading.RLock()


@contextlib.contextmanager
def tf32_mode(enabled: bool):
    """cuDNN convolutions and cuBLAS matmuls in TF32 (``enabled``) or in true IEEE fp32, for the ``with`` block.

    PyTorch runs fp32 convolutions on a GPU in TF32 by default (10-bit mantissa products). The switches are
    process-wide: a thread running its own fp32 convolutions meanwhile sees them too. Blocks of several threads
    take turns (a process-wide lock, re-entrant within a thread): overlapping, the second saved the first's setting
    and restored it last, and ran in TF32 once the first had restored the user's. Only the launches are serialised;
    the GPU work stays asynchronous. torch >= 2.9 has ``fp32_precision`` switches and raises when code mixes them
    with the legacy ``allow_tf32`` flags, so the new ones are used where they exist.
    """
    conv, mm, cudnn = getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul, torch.backends.cudnn
    new = conv is not None and hasattr(conv, "fp32_precision") and hasattr(mm, "fp32_precision")
    with _TF32_LOCK:
        if new:
            old = conv.fp32_precision, mm.fp32_precision
            conv.fp32_precision = mm.fp32_precision = "tf32" if enabled else "ieee"
        else:
            old = cudnn.allow_tf32, mm.allow_tf32
            cudnn.allow_tf32 = mm.allow_tf32 = enabled
        try:
            yield
        finally:
            if new:
                conv.fp32_precision, mm.fp32_precision = old
            else:
                cudnn.allow_tf32, mm.allow_tf32 = old


class TorchBackend:
    """The reference network (``F.conv2d``), in any float dtype the device supports; fp32 on a GPU in true fp32, not
    PyTorch's default TF32 for convolutions. ``float8_e4m3fn``: :func:`vdsr_fast.fp8.emulate`, the FP8 scheme's
    arithmetic in fp32 (the reference of the Triton backend's FP8 kernels)."""

    name = "torch"
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn)

    @staticmethod
    def available(device: torch.device) -> str | None:
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device available"
        return None

    def __init__(self, model: VDSR, device: torch.device, dtype: torch.dtype) -> None:
        self.dtype = dtype
        if dtype == torch.float8_e4m3fn:
            from . import fp8

            self.fp8 = fp8.pack(model, device)
            return
        # channels_last: cuDNN's fast layout for half precision, and oneDNN's on the CPU (fp32: 1.35x NCHW's speed on a
        # 2-core EPYC); oneDNN has no float64 convolution, which stays NCHW.
        fast = device.type == "cuda" or (device.type == "cpu" and dtype != torch.float64)
        self.memory_format = torch.channels_last if fast else torch.contiguous_format
        # copies (copy=True: .to() and .contiguous() hand back the model's own tensor where nothing converts, and an
        # engine is a snapshot: an in-place update of the model must not reach an engine built before it)
        self.weights = [w.detach().to(device, dtype, copy=True).contiguous(memory_format=self.memory_format)
                        for w in model.weights]  # fmt: skip
        self.biases = [b.detach().to(device, dtype, copy=True) for b in model.biases]
        self.ieee = device.type == "cuda" and dtype == torch.float32

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.float8_e4m3fn:
            from .fp8 import emulate

            return emulate(self.fp8, y).to(y.dtype)
        x = y.to(self.dtype)
        x = channels_last(x) if self.memory_format == torch.channels_last else x.contiguous()
        with tf32_mode(False) if self.ieee else contextlib.nullcontext():
            return vdsr_forward(x, self.weights, self.biases).to(y.dtype)


class _Lazy:
    """A backend whose module is imported on first use (so ``import vdsr_fast`` never imports triton)."""

    def __init__(self, module: str, attr: str) -> None:
        self.module, self.attr = module, attr

    def resolve(self) -> type:
        import importlib

        return getattr(importlib.import_module(self.module, __package__), self.attr)


BACKENDS: dict[str, type | _Lazy] = {
    "cuda": _Lazy(".kernels.cuda", "CudaBackend"),
    "triton": _Lazy(".kernels.triton.backend", "TritonBackend"),
    "torch": TorchBackend,
}
AUTO_ORDER = ("cuda", "triton", "torch")


def _backend_class(name: str) -> type:
    impl = BACKENDS[name]
    if isinstance(impl, _Lazy):
        impl = BACKENDS[name] = impl.resolve()
    return impl


def _why_unavailable(name: str, device: torch.device) -> str | None:
    try:
        impl = _backend_class(name)
    except ImportError as e:
        return f"cannot import it ({e})"
    return impl.available(device)


# The activation dtypes some backend runs (each backend's ``dtypes`` says which of them it does).
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float8_e4m3fn)


def _check_dtype(dtype, who: str) -> None:
    """``dtype=`` of :class:`Engine`, :func:`~vdsr_fast.get_engine` and :func:`~vdsr_fast.upscale`: None or one of
    :data:`DTYPES` (a torch.dtype; strings such as ``"fp16"`` are the command line's, not the API's)."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype in DTYPES):
        return
    names = ", ".join(map(str, DTYPES))
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{who}: dtype must be a torch.dtype ({names}) or None (the backend's default), got {dtype!r}")
    raise ValueError(f"{who}: dtype must be one of {names} or None (the backend's default), got {dtype}")


def _resolve_engine_device(device, who: str) -> torch.device:
    """``device`` as :func:`resolve_device` gives it, or a clear error for one that is not a device or a CUDA index
    beyond the devices. Without CUDA a ``cuda`` device is kept as it is: each backend's ``available`` says why it
    cannot run there (:class:`BackendUnavailable`). ``meta`` (shapes only) is the PyTorch reference's."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{who}: device must be a torch.device or a name such as 'cpu' or 'cuda:0', got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        return device
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{who}: device {device}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return resolve_device(device)


def device_from_flag(name: str | None) -> torch.device:
    """A command line's ``--device`` (None: CUDA if there is a GPU, else the CPU), refused (ValueError naming the flag)
    where this torch cannot compute: not a device, CUDA without a GPU, ``meta``, a missing GPU index or device type."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "meta":
        raise ValueError(f"--device {name}: a meta device holds no data; give one that computes, such as cpu or cuda")
    try:
        torch.empty(0, device=device)  # e.g. cuda:7 on a machine with one GPU, or a device type this torch lacks
    except RuntimeError as e:
        raise ValueError(f"--device {name}: not usable here ({str(e).splitlines()[0].split('. ')[0]})") from None
    return device


def _default_dtype(backend: str, device: torch.device) -> torch.dtype:
    if backend == "torch" or device.type != "cuda":
        return torch.float32
    return torch.float16


def available_backends(device: str | torch.device | None = None) -> dict[str, str | None]:
    """Each registered backend -> None if it can run on ``device``, else the reason it cannot. ``device``: default
    the GPU where there is one, else the CPU (where the PyTorch reference runs and the fast backends say why not)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    return {name: _why_unavailable(name, device) for name in BACKENDS}


def _checked(name: str, device: torch.device) -> bool:
    """Whether :class:`Engine` runs :func:`self_check` on a new backend: GPU kernels only."""
    return name != "torch" and device.type == "cuda"


def gross_error_bound(model: VDSR, x: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None) -> float:
    """:func:`self_check`'s bound on the max error of a run on the Y batch ``x`` whose float64 output is ``ref``
    (same device): 1e-2 + 5% of the residual's magnitude, for float8_e4m3fn plus twice the FP8 scheme's PyTorch
    emulation's own error there (also the canaries' bound, benchmarks/canary.py)."""
    bound = 1e-2 + 0.05 * (ref - x.double()).abs().max().item()
    if dtype == torch.float8_e4m3fn:
        from . import fp8

        bound += 2 * (fp8.emulate(fp8.pack(model, x.device), x.float()).double() - ref).abs().max().item()
    return bound


def self_check(run, model: VDSR, device: torch.device) -> str | None:
    """Run a fast backend once on a small random Y plane against the float64 reference.

    A guard against gross failure (wrong kernel for this GPU, broken build, a launch error, NaN), not
    the equivalence test: the error must stay within 1e-2 + 5% of the residual's magnitude (for the FP8 scheme,
    plus twice its PyTorch emulation's own error there: with 3-bit mantissas it is 0.05-0.15 on random planes). Returns the
    reason on failure, else None. Runs once per engine, at construction (it synchronises; the hot path never does).
    """
    g = torch.Generator().manual_seed(1234)
    x = torch.rand(1, 1, 24, 20, generator=g, dtype=torch.float64)
    ref = vdsr_forward(x, [w.detach().cpu().double() for w in model.weights], [b.detach().cpu().double() for b in model.biases])
    try:
        got = run(x.float().to(device)).double().cpu()
    except Exception as e:  # e.g. a kernel that cannot launch on this GPU
        return f"self-check run failed: {type(e).__name__}: {e}"
    err = (got - ref).abs().max().item()
    bound = gross_error_bound(model, x, ref, getattr(run, "dtype", None))
    if not err <= bound:  # also catches NaN
        return f"self-check against the reference failed: max error {err:.3g} > {bound:.3g}"
    return None


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        reasons = []
        for name in AUTO_ORDER:
            # The fast backends are GPU code: auto never picks the Triton interpreter on a CPU.
            if name != "torch" and device.type != "cuda":
                continue
            if name in BACKENDS and (reason := _why_unavailable(name, device)) is None:
                return name
            reasons.append(f"{name}: {reason}")
        raise BackendUnavailable(f"no backend can run on {device} ({'; '.join(reasons)})")  # e.g. cuda without CUDA
    if backend not in BACKENDS:
        known = ", ".join(["auto", *BACKENDS])
        raise ValueError(f"unknown backend {backend!r}; expected one of: {known}")
    reason = _why_unavailable(backend, device)
    if reason is not None:
        raise BackendUnavailable(f"backend {backend!r} cannot run on {device}: {reason}")
    return backend


# Engine(tune=True): the input the candidates are timed on (a 720p Y plane on a GPU: large enough to fill
# it, ~4 ms per network run; tiny elsewhere, where tuning only exercises the logic), warm-up and timed runs.
TUNE_SHAPE = {"cuda": (1, 1, 720, 1280), "other": (1, 1, 16, 16)}
TUNE_WARMUP, TUNE_RUNS = 3, 10
_TUNED: dict[tuple, str] = {}  # (backend, device name, dtype, depth, channels, options) -> the label chosen


def _median_ms(run, y: torch.Tensor) -> float:
    """Median wall time of ``run(y)`` in ms after warm-up: CUDA events on a GPU, perf_counter elsewhere."""
    for _ in range(TUNE_WARMUP):
        run(y)
    times = []
    for _ in range(TUNE_RUNS):
        if y.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(y)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            run(y)
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _tune(impl, model: VDSR, device: torch.device, dtype: torch.dtype, opts: dict, default, check: bool):
    """The fastest of ``default`` (the backend built with ``opts``) and the backend's tuning candidates
    (options the caller set explicitly are kept: candidates that would change them are not tried). Each
    candidate passes :func:`self_check` before it is timed. Returns (backend, {label: ms or reason})."""
    name = getattr(impl, "name", impl.__name__)
    fixed = {k: v for k, v in opts.items() if k not in ("cuda_graphs", "max_cached_shapes")}
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    key = (name, dev_name, dtype, model.depth, model.channels, tuple(sorted((k, repr(v)) for k, v in fixed.items())))
    offered = impl.tuning_candidates(model, device, dtype)
    candidates = [(label, extra) for label, extra in offered if not set(extra) & set(fixed)]
    if key in _TUNED:  # this process timed the same choice already: rebuild the winner, no timing
        label = _TUNED[key]
        extra = dict(candidates).get(label)
        if extra is None:
            return default, {label: "chosen earlier in this process"}
        return impl(model, device, dtype, **{**opts, **extra}), {label: "chosen earlier in this process"}
    shape = TUNE_SHAPE["cuda" if device.type == "cuda" else "other"]
    y = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device)
    results: dict[str, float | str] = {}
    best, best_ms, best_label = default, None, "default"
    with torch.no_grad():
        for label, extra in [("default", None), *candidates]:
            try:
                cand = default if extra is None else impl(model, device, dtype, **{**opts, **extra})
            except BackendUnavailable as e:
                results[label] = f"unavailable: {e}"
                continue
            reason = self_check(cand, model, device) if check and extra is not None else None
            if reason is not None:
                results[label] = reason
                continue
            try:
                ms = results[label] = _median_ms(cand, y)
            except Exception as e:  # e.g. out of memory at the timing size: not a candidate
                results[label] = f"timing failed: {type(e).__name__}: {e}"
                continue
            if best_ms is None or ms < best_ms:
                best, best_ms, best_label = cand, ms, label
    _TUNED[key] = best_label
    return best, results


@contextlib.contextmanager
def _own_precision():
    """An :class:`Engine` computes in its own dtype: a ``torch.autocast`` region the caller runs it in (a pipeline's
    mixed-precision code, say) must not recast the PyTorch backend's convolutions or the self-check's reference.
    Autocast is turned off within for the CPU and CUDA, only where it is on (the hot path pays nothing else)."""
    devices = [d for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]
    with contextlib.ExitStack() as stack:
        for d in devices:
            stack.enter_context(torch.autocast(d, enabled=False))
        yield


class Engine:
    """VDSR packed for one backend on one device in one storage dtype.

    Args:
        model: a :class:`~vdsr_fast.reference.VDSR` (e.g. from :func:`vdsr_fast.load`).
        backend: ``"auto"`` (CUDA extension, then Triton, then PyTorch), ``"cuda"``, ``"triton"`` or
            ``"torch"``.
        dtype: storage dtype of the activations; default float16 for the fast backends on a GPU,
            float32 for the PyTorch reference and on the CPU. Accumulation is always at least fp32.
            ``torch.float8_e4m3fn`` (opt-in; Triton, or ``"torch"`` for its emulation): :mod:`vdsr_fast.fp8`.
            A ``torch.dtype`` of :data:`DTYPES` (anything else: TypeError / ValueError).
        device: where the weights live and inputs must be; default the current CUDA device if there
            is one, else the CPU. ``cuda`` without a CUDA device raises :class:`BackendUnavailable` (each
            backend's reason).
        check: run :func:`self_check` once for a fast backend on a GPU (default). With ``backend="auto"``, a
            backend that fails it is skipped with a warning; an explicitly requested one raises.
        tune: time the backend's alternative kernels (``tuning_candidates``: the CUDA body variants, unfused
            tail, tensor-core head, programmatic dependent launch, spread tail partials and fused head; Triton's
            other bodies and unfused tail) on a 720p input once and keep the fastest; ``self.tuning``
            lists each candidate's median ms (or why it was not timed). Costs about a second (plus Triton
            compiles) the first time per GPU, dtype and options in a process. Every candidate passes the
            same equivalence tests, but the choice follows timings: two runs may pick different kernels,
            whose outputs differ in the last bits. Off by default (the default kernels are deterministic).
            The kept backend's activation buffers stay sized for the 720p timing input.
        **options: passed to the backend's constructor, e.g. ``cuda_graphs=True`` (Triton and CUDA:
            one CUDA graph per input shape) or ``body_config=...`` (Triton tile choice). ``auto`` does
            not pass them to the PyTorch fallback.
    """

    @_own_precision()
    def __init__(
        self,
        model: VDSR,
        backend: str = "auto",
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        check: bool = True,
        tune: bool = False,
        **options,
    ) -> None:
        if not isinstance(model, VDSR):
            raise TypeError(f"Engine: expected a vdsr_fast VDSR model, got {type(model).__name__}")
        _check_dtype(dtype, "Engine")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device = _resolve_engine_device(device, "Engine")
        self.depth, self.channels = model.depth, model.channels
        self.tuning: dict[str, float | str] = {}  # filled by tune=True
        candidates = [resolve_backend(backend, device)]
        if backend == "auto":
            candidates += [n for n in AUTO_ORDER[AUTO_ORDER.index(candidates[0]) + 1 :] if n == "torch" or (
                device.type == "cuda" and _why_unavailable(n, device) is None)]
        for name in candidates:
            impl = _backend_class(name)
            self.dtype = dtype if dtype is not None else _default_dtype(name, device)
            if backend == "auto" and name != candidates[-1] and self.dtype not in getattr(impl, "auto_dtypes", impl.dtypes):
                continue  # a dtype it lacks (CUDA in fp32) or runs slower than the next candidate (Triton in fp32): no failure
            error = BackendUnavailable  # SelfCheckFailed where the reason is the self-check's
            if self.dtype not in impl.dtypes:
                names = ", ".join(str(d).replace("torch.", "") for d in impl.dtypes)
                reason = f"backend {name!r} does not support dtype {self.dtype}; it supports {names}"
            else:
                opts = options if name != "torch" or backend == "torch" else {}
                try:
                    with torch.no_grad():
                        self._impl = impl(model, device, self.dtype, **opts)
                except BackendUnavailable as e:  # e.g. the CUDA kernels refuse a model that is not 64 channels wide
                    reason = str(e)
                else:
                    reason = self_check(self._impl, model, device) if check and _checked(name, device) else None
                    if reason is not None and opts.get("cuda_graphs"):
                        # Kernels that are right can still fail to capture (a profiler or debugger attached,
                        # an old driver): keep the backend, without graphs, rather than fall back.
                        with torch.no_grad():
                            plain = impl(model, device, self.dtype, **{**opts, "cuda_graphs": False})
                        if self_check(plain, model, device) is None:
                            warnings.warn(f"vdsr_fast: backend {name!r} runs without CUDA graphs: with them its "
                                          f"self-check failed: {reason}", RuntimeWarning, stacklevel=2)  # fmt: skip
                            self._impl, reason = plain, None
                    if reason is not None:
                        error = SelfCheckFailed
            if reason is None and tune and hasattr(impl, "tuning_candidates"):
                self._impl, self.tuning = _tune(impl, model, device, self.dtype, opts, self._impl, check and _checked(name, device))
            if reason is None:
                self.backend = name
                self.max_pixels = getattr(self._impl, "max_pixels", None)
                self.max_batch_pixels = getattr(self._impl, "max_batch_pixels", None)
                # Backends with persistent activation buffers are not reentrant: two threads
                # interleaving their launches would share the buffers. The lock serialises the
                # enqueueing (cheap: the GPU work itself stays asynchronous). No lock = no buffers.
                self._lock = threading.Lock() if hasattr(self._impl, "buffers") else None
                return
            if backend != "auto":
                raise error(reason)
            warnings.warn(f"vdsr_fast: skipping backend {name!r} on {device}: {reason}", RuntimeWarning, stacklevel=2)
        raise BackendUnavailable(reason)  # unreachable in practice: the torch backend always passes

    def __repr__(self) -> str:
        return f"Engine(backend={self.backend!r}, dtype={self.dtype}, device={self.device}, depth={self.depth}, channels={self.channels})"

    @property
    def buffer_bytes(self) -> int:
        """Bytes of the activation buffers this engine holds between calls (the fast backends' two; 0 for PyTorch)."""
        return 2 * getattr(self._impl, "buffer_numel", 0) * self.dtype.itemsize

    def reserve(self, n: int, h: int, w: int) -> None:
        """Size the fast backends' activation buffers for ``(n, 1, h, w)`` inputs now (a no-op for
        the PyTorch backend). Growing them later drops the CUDA graphs captured on the old ones, so
        callers that know their largest input (a tiled frame's interior window) reserve it first."""
        if self._lock is None or torch.compiler.is_compiling():  # no buffers to size
            return
        with self._lock, torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            self._impl.buffers(n, h, w)

    @torch.no_grad()
    @_own_precision()
    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """``y + residual(y)`` for a Y-plane batch ``(N, 1, H, W)``; returns ``y``'s dtype (whatever autocast region
        it is called in: the engine's dtype is its own)."""
        if not torch.is_tensor(y) or y.dim() != 4 or y.shape[1] != 1:
            shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise ValueError(f"Engine: expected a Y-plane batch of shape (N, 1, H, W), got {shape}")
        if not torch.is_floating_point(y):
            raise TypeError(f"Engine: expected a floating-point Y plane, got dtype {y.dtype}")
        if y.device != self.device:
            raise ValueError(f"Engine: input is on {y.device} but this engine's weights are on {self.device}")
        if y.numel() == 0:
            raise ValueError(f"Engine: empty input of shape {tuple(y.shape)}")
        if self._lock is None or torch.compiler.is_compiling():  # compiled: functional ops, no buffers
            return self._impl(y)
        with self._lock:
            return self._impl(y)

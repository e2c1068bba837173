"""The user-facing calls: :func:`load` and :func:`upscale` (DESIGN.md §2 pipeline)."""

from __future__ import annotations

import contextlib
import math
import numbers
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict, overload

import numpy as np
import torch

from . import tiling
from .engine import Engine, _check_dtype, _resolve_engine_device, _why_unavailable
from .imaging import _is_size, imresize, resize_output_size, rgb_to_ycbcr, ycbcr_to_rgb
from .kernels import resolve_device
from .reference import VDSR
from .weights import load

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = ["load", "upscale", "get_engine", "SCALES", "LAYOUTS", "UpscaleOptions"]

SCALES = (2, 3, 4)  # the scales the model was trained on
LAYOUTS = ("NCHW", "NHWC")
_CHANNELS = (1, 3, 4)
_DTYPES = (torch.uint8, torch.uint16, torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The frame dtypes upscale(fused_color=None) fuses the colour pipeline for on a GPU: those the GPU tests checked
# bit for bit against the PyTorch pipeline (tests/test_fused_color.py).
_FUSED_COLOR_AUTO = (torch.uint8, torch.uint16, torch.float32)

_default_model: VDSR | None = None
_lock = threading.Lock()


def _default() -> VDSR:
    global _default_model
    with _lock:
        if _default_model is None:
            _default_model = load()
        return _default_model


_MAX_ENGINES = 8  # per model, LRU: (backend, device, dtype) combinations kept


def _weights_stamp(model: VDSR) -> tuple:
    """Changes whenever a parameter is replaced or updated in place (load_state_dict, an optimizer
    step, ``.to()``): the addresses and version counters of the parameters, read on the host.
    Writes through ``p.data`` and to tensors made under ``torch.inference_mode`` (which have no
    version counter) are not seen: after those, call ``model.__dict__.pop("_vdsr_engines", None)`` (the engine
    keeps computing with its own copy of the weights it was built with)."""
    return tuple((p.data_ptr(), None if p.is_inference() else p._version) for p in model.parameters())


def get_engine(
    model: VDSR,
    device: torch.device | str,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
    cuda_graphs: bool | None = None,
    tune: bool = False,
) -> Engine:
    """The :class:`Engine` for ``model`` on ``device``, built once and cached on the model.

    ``cuda_graphs`` (default: on for the fast backends on a GPU) makes the engine capture one CUDA
    graph per input shape on its first call and replay it after (the 20 launches cost one). The
    engine is rebuilt when the model's weights have changed since it was built (``load_state_dict``,
    optimizer steps, other in-place updates of the parameters; :func:`_weights_stamp` says what is
    not seen), and it is shared by every CUDA stream: its calls are
    ordered on the GPU when the stream changes (no host synchronisation), see
    :class:`~vdsr_fast.kernels.PingPongBuffers`. The cache is not pickled with the model. ``tune``:
    see :class:`~vdsr_fast.engine.Engine` (times the backend's alternative kernels once, keeps the fastest).
    """
    device = _resolve_engine_device(device, "get_engine")
    _check_dtype(dtype, "get_engine")
    graphs = device.type == "cuda" and backend != "torch" if cuda_graphs is None else bool(cuda_graphs)
    if graphs and (device.type != "cuda" or backend == "torch"):
        raise ValueError(f"cuda_graphs=True needs a fast backend on a CUDA device, not {backend!r} on {device}")
    # A tiled frame has up to 9 window shapes: keep a graph for each of them and some frame sizes more.
    options = {"cuda_graphs": True, "max_cached_shapes": 16} if graphs else {}
    cache = model.__dict__.setdefault("_vdsr_engines", OrderedDict())
    key = (backend, str(device), dtype, graphs, bool(tune))
    stamp = _weights_stamp(model)
    with _lock:
        entry = cache.get(key)
        if entry is None or entry[1] != stamp:
            engine = Engine(model, backend=backend, dtype=dtype, device=device, tune=tune, **options)
            entry = cache[key] = (engine, stamp)
            while len(cache) > _MAX_ENGINES:
                cache.popitem(last=False)
        cache.move_to_end(key)
    return entry[0]


MAX_SCALE = 4.0


def output_plan(h: int, w: int, scale=None, size=None) -> tuple[int, tuple[int, int]]:
    """``(k, (H, W))``: the network scale ``k`` (one of SCALES) and the output size of an ``h x w`` frame for
    :func:`upscale`'s ``scale`` (any factor from 1 to 4; default 2) or ``size`` ((H, W), each side at least the
    input's and at most 4x it). For 2, 3 and 4, ``k`` is the scale and ``(H, W) = (k h, k w)``; otherwise the
    network runs at ``k = max(2, ceil(largest factor))`` and its output is resized down to ``(H, W)`` with MATLAB's
    bicubic (antialiased): on Set5 that beat VDSR run directly on the bicubic upscale at every factor measured
    (README)."""
    if size is not None:
        if scale is not None:
            raise ValueError("upscale: give scale or size, not both")
        if not _is_size(size):
            raise ValueError(f"upscale: size must be (height, width) in pixels, got {size!r}")
        H, W = int(size[0]), int(size[1])
        if not (h <= H <= MAX_SCALE * h and w <= W <= MAX_SCALE * w):
            raise ValueError(f"upscale: size {(H, W)} for a {h}x{w} frame: each side must be 1 to {MAX_SCALE:g} times the input's")
        factor = max(H / h, W / w)
    else:
        scale = 2 if scale is None else scale
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 1 <= scale <= MAX_SCALE:
            raise ValueError(f"upscale: scale must be a number from 1 to {MAX_SCALE:g} (VDSR is trained on {SCALES}), got {scale!r}")
        if scale in SCALES:
            return int(scale), (h * int(scale), w * int(scale))
        H, W = resize_output_size((h, w), float(scale))
        factor = float(scale)
    k = max(SCALES[0], math.ceil(factor - 1e-9))
    return k, (H, W)


def _to_float(img: torch.Tensor) -> torch.Tensor:
    """Input pixels -> float in [0, 1] (float64 stays float64, everything else computes in float32)."""
    if img.dtype == torch.uint8:
        return img.float() / 255.0
    if img.dtype == torch.uint16:
        return img.float() / 65535.0
    return img if img.dtype == torch.float64 else img.float()  # upscale() checked the dtype


def _from_float(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    if dtype == torch.uint8:  # round half up, as MATLAB's im2uint8
        return (x * 255.0 + 0.5).floor_().to(torch.uint8)
    if dtype == torch.uint16:
        return (x * 65535.0 + 0.5).floor_().to(torch.int32).to(torch.uint16)
    return x.to(dtype)


# ----------------------------------------------------------------------------------------------------
# frame conventions


def _resolve_layout(img: torch.Tensor, layout: str | None) -> str:
    """``layout`` checked, or inferred: float tensors are NCHW (the PyTorch convention); uint8/uint16
    frames are NHWC when only their last dim can be a channel count (1, 3 or 4), else NCHW."""
    if layout is not None:
        if layout not in LAYOUTS:
            raise ValueError(f"upscale: layout must be one of {LAYOUTS} or None (infer), got {layout!r}")
        return layout
    if img.dim() < 3 or torch.is_floating_point(img):
        return "NCHW"
    if img.shape[-1] in _CHANNELS and img.shape[-3] not in _CHANNELS:
        return "NHWC"
    return "NCHW"


def _nchw(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A (N, C, H, W) view of a tensor in the caller's convention (no copy)."""
    if t.dim() == 2:
        return t[None, None]
    if layout == "NHWC":
        t = t.movedim(-1, -3)
    return t if t.dim() == 4 else t[None]


def _out_shape(img: torch.Tensor, layout: str, hw: tuple[int, int]) -> tuple[int, ...]:
    if img.dim() == 2 or layout == "NCHW":
        return (*img.shape[:-2], *hw)
    return (*img.shape[:-3], *hw, img.shape[-1])


def _check_strided(t: torch.Tensor, name: str) -> None:
    if t.layout != torch.strided:
        raise TypeError(f"upscale: {name} has layout {t.layout}; expected a dense (torch.strided) tensor, e.g. {name}.to_dense()")


def _overlaps_itself(t: torch.Tensor | np.ndarray) -> bool:
    """Whether two elements of ``t`` may share an address (an ``expand``-ed or ``as_strided`` view): its dims of
    size > 1, by increasing stride, must each step past the span of the ones before. A numpy array's strides are in
    bytes, and may be negative."""
    strides, span = (t.strides, t.itemsize) if isinstance(t, np.ndarray) else (t.stride(), 1)
    for stride, size in sorted((abs(st), sz) for st, sz in zip(strides, t.shape) if sz > 1):
        if stride < span:
            return True
        span += stride * (size - 1)
    return False


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` may share memory: their storages' address ranges overlap. Not only one storage (views of
    one tensor): two storages over one buffer too (another library's arrays through DLPack, ``torch.from_numpy`` of two
    views of one array), which a comparison of the storages' start addresses misses when the frame sits at an offset."""
    if a.device != b.device:
        return False
    sa, sb = a.untyped_storage(), b.untyped_storage()
    return sa.data_ptr() < sb.data_ptr() + sb.nbytes() and sb.data_ptr() < sa.data_ptr() + sa.nbytes()


def _check_out(out, img: torch.Tensor, shape: tuple[int, ...]) -> None:
    if not torch.is_tensor(out):
        raise TypeError(f"upscale: out must be a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != shape:
        raise ValueError(f"upscale: out has shape {tuple(out.shape)}, expected {shape} (the input's convention with H and W scaled)")
    if out.dtype != img.dtype:
        raise ValueError(f"upscale: out has dtype {out.dtype}, expected {img.dtype} (the input's dtype)")
    if out.device != img.device:
        raise ValueError(f"upscale: out is on {out.device} but img is on {img.device}")
    if out.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError("upscale: out is an inference tensor (made under torch.inference_mode()), which cannot be "
                         "written outside inference mode: call upscale inside it too, or pass another out")
    _check_no_overlap(out)


def _check_no_overlap(out: torch.Tensor | np.ndarray) -> None:
    if _overlaps_itself(out):
        strides = out.strides if isinstance(out, np.ndarray) else out.stride()
        raise ValueError(f"upscale: out's elements overlap in memory (strides {strides} for shape {tuple(out.shape)}, e.g. "
                         "an expand()-ed view): several output pixels would be written to one address")


def _check_stream(stream, device: torch.device) -> None:
    if not isinstance(stream, torch.cuda.Stream):
        raise TypeError(f"upscale: stream must be a torch.cuda.Stream, got {type(stream).__name__}")
    if device.type != "cuda":
        raise ValueError(f"upscale: stream= needs a CUDA input, img is on {device}")
    if stream.device != device:
        raise ValueError(f"upscale: stream is on {stream.device} but img is on {device}")


# ----------------------------------------------------------------------------------------------------
# the pipeline, on one output window


def _run_window(batch: torch.Tensor, engine: Engine, rows: tiling.Window, cols: tiling.Window) -> torch.Tensor:
    """DESIGN.md §2 on the output window ``rows x cols`` of ``batch`` (N, C, h, w): float (N, C, r, c).

    The whole frame is the window (0, H) x (0, W); see :mod:`vdsr_fast.tiling` for why a smaller
    window gives the same pixels.
    """
    x = _to_float(batch[:, :, rows.lr[0] : rows.lr[1], cols.lr[0] : cols.lr[1]])
    cy, cx = rows.center, cols.center

    def up(t, out_rows=None, out_cols=None):  # MATLAB order: height first (equal factors)
        return cols.resize(rows.resize(t, 2, out_rows), 3, out_cols)

    c = batch.shape[1]
    if c == 1:
        return engine(up(x).contiguous())[:, :, cy, cx]
    ycc = up(rgb_to_ycbcr(x[:, :3]))
    y = engine(ycc[:, :1].contiguous())[:, :, cy, cx]
    rgb = ycbcr_to_rgb(torch.cat([y, ycc[:, 1:3, cy, cx]], dim=1))
    if c == 4:  # alpha: bicubic only, straight to the output tile
        rgb = torch.cat([rgb, up(x[:, 3:4], (rows.start, rows.stop), (cols.start, cols.stop))], dim=1)
    return rgb


def _run_window_fused(batch: torch.Tensor, engine: Engine, rows: tiling.Window, cols: tiling.Window, dst: torch.Tensor):
    """:func:`_run_window` in two Triton kernels around the network (``upscale(fused_color=True)``, 1- and 3-channel
    frames), the result stored into ``dst`` (the output tile, any strides, the output dtype)."""
    from .kernels.triton import color

    x = batch[:, :, rows.lr[0] : rows.lr[1], cols.lr[0] : cols.lr[1]]
    y, cc = color.upscale_planes(x, *color.window_taps(rows, x.device), *color.window_taps(cols, x.device))
    cy, cx = rows.center, cols.center
    return color.finish_frame(engine(y)[:, :, cy, cx], None if cc is None else cc[:, :, cy, cx], dst)


def _on_stream(stream):
    """``torch.cuda.stream(stream)``, or nothing to enter when ``stream`` is None (the current stream)."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def _foreign_array(x, name: str, stream):
    """A tensor sharing ``x``'s memory: an array of another library through DLPack (``__dlpack__``: CuPy,
    JAX, TensorFlow, GPU video decoders such as PyNvVideoCodec's) or the CUDA array interface (Numba, older
    CuPy). DLPack orders the producer's pending work before ``stream`` (the current stream when None)."""
    if torch.is_tensor(x) or isinstance(x, np.ndarray):
        return x
    strides = getattr(x, "strides", None)
    if strides is None:
        strides = (getattr(x, "__cuda_array_interface__", None) or {}).get("strides")
    if isinstance(strides, tuple | list) and any(isinstance(s, int) and s < 0 for s in strides):
        # a flipped view (CuPy's x[..., ::-1]): torch cannot take negative strides and aborts the process on them
        if name == "out" or not callable(getattr(x, "copy", None)):
            raise ValueError(f"upscale: {name} has negative strides {tuple(strides)} (a flipped view), which torch "
                             f"cannot take in place; pass an array with positive strides")
        x = x.copy()  # the input: read from a copy, as a flipped numpy array is
    if hasattr(x, "__dlpack__"):
        with _on_stream(stream):
            return torch.from_dlpack(x)
    if hasattr(x, "__cuda_array_interface__"):
        return torch.as_tensor(x, device="cuda")
    raise TypeError(f"upscale: {name} must be a torch.Tensor, a numpy array or an array with __dlpack__ or "
                    f"__cuda_array_interface__ (CuPy, JAX, ...), got {type(x).__name__}")


def _upscale_converted(img, scale, model, out, channel_order: str, kw: dict):
    """:func:`upscale` of a numpy array (on the GPU when there is one; the result a numpy array) or of BGR(A)
    channels (turned to RGB(A) and back around the call). ``out`` is checked before any work is queued."""
    numpy_in = isinstance(img, np.ndarray)
    if numpy_in:
        if out is not None and not isinstance(out, np.ndarray):
            raise TypeError(f"upscale: with a numpy img, out must be a numpy array too, got {type(out).__name__}")
        if img.dtype.newbyteorder("=") not in (np.uint8, np.uint16, np.float16, np.float32, np.float64):
            raise TypeError(f"upscale: img has dtype {img.dtype}; expected uint8, uint16 or a float dtype in [0, 1]")
        if out is not None and not out.flags.writeable:
            raise ValueError("upscale: out is a read-only numpy array")
        if not img.dtype.isnative:  # big-endian data: the same values in the machine's byte order
            img = img.astype(img.dtype.newbyteorder("="))
        # Read-only arrays, and strides torch cannot view (img[:, :, ::-1], np.flip, np.rot90, record fields): a copy.
        copy = not img.flags.writeable or any(st < 0 or st % img.itemsize for st in img.strides)
        t = torch.from_numpy(img.copy() if copy else img)
        target = resolve_device("cuda") if torch.cuda.is_available() else t.device
        if kw["stream"] is not None:
            _check_stream(kw["stream"], target)
        with _on_stream(kw["stream"]):  # uploaded on the stream the work runs on
            t = t.to(target)
    else:
        t = img
    if t.dim() not in (2, 3, 4):  # upscale() says what is wrong
        return upscale(t, scale, model, **kw)
    layout = _resolve_layout(t, kw["layout"])
    cdim = -1 if layout == "NHWC" else t.dim() - 3
    c = t.shape[cdim] if t.dim() >= 3 else 1
    if c not in _CHANNELS:  # upscale() says what is wrong, before out's shape is checked against it
        return upscale(t, scale, model, **dict(kw, layout=layout))
    perm = torch.tensor([2, 1, 0, 3][:c], device=t.device) if channel_order == "BGR" and c in (3, 4) else None
    if out is not None:
        shape = _out_shape(t, layout, output_plan(*_nchw(t, layout).shape[-2:], scale, kw["size"])[1])
        if numpy_in and (out.shape != shape or out.dtype.newbyteorder("=") != img.dtype):
            raise ValueError(f"upscale: out has shape {out.shape} and dtype {out.dtype}, expected {shape} and {img.dtype}")
        if numpy_in:
            _check_no_overlap(out)
        else:
            _check_out(out, t, shape)
    with _on_stream(kw["stream"]):
        res = upscale(t if perm is None else t.index_select(cdim, perm), scale, model, **dict(kw, layout=layout))
        if perm is not None:
            res = res.index_select(cdim, perm)
        if numpy_in:
            res = res.cpu().numpy()
        if out is None:
            return res
        np.copyto(out, res) if numpy_in else out.copy_(res)
        return out


def _index_limit_tile(engine: Engine, n: int, out_h: int, out_w: int, radius: int) -> int | None:
    """The output tile side that keeps every network window within the backend's index limits
    (``Engine.max_pixels``, ``max_batch_pixels``), or None when the whole frame fits."""
    limits = [engine.max_pixels, None if engine.max_batch_pixels is None else engine.max_batch_pixels // n]
    area = min((v for v in limits if v is not None), default=None)
    if area is None or out_h * out_w <= area:
        return None
    side = math.isqrt(area) - 2 * radius
    if side < tiling.MIN_TILE:
        raise ValueError(f"upscale: a batch of {n} frames is too large for backend {engine.backend!r}; pass fewer frames per call")
    return side


def _tile_size(tile, max_memory, n: int, engine: Engine, model: VDSR, img_dtype: torch.dtype, radius: int, out_hw):
    """(th, tw) output tile from ``tile=``, ``max_memory=`` and the backend's index limits, or None
    for the whole frame."""
    sizes = []
    side = _index_limit_tile(engine, n, *out_hw, radius)
    if side is not None:
        sizes.append((side, side))
    if tile is not None:
        sizes.append(tiling._pair(tile))
    if max_memory is None and engine.device.type == "cpu":  # a frame too big for RAM: tiles, not the OOM killer
        max_memory = "auto"
    if isinstance(max_memory, str) and max_memory == "auto":
        max_memory = tiling.memory_budget(engine.device, engine.buffer_bytes)
    if max_memory is not None:
        if isinstance(max_memory, bool) or not isinstance(max_memory, numbers.Integral) or max_memory <= 0:
            raise ValueError(f"upscale: max_memory must be a positive int (bytes) or 'auto', got {max_memory!r}")
        max_memory = int(max_memory)
        fdt = torch.float64 if img_dtype == torch.float64 else torch.float32
        side = tiling.tile_for_budget(max_memory, n, tiling.bytes_per_pixel(model.channels, engine.dtype, fdt), radius)
        sizes.append((side, side))
    if not sizes:
        return None
    return min(t[0] for t in sizes), min(t[1] for t in sizes)


class UpscaleOptions(TypedDict, total=False):
    """The keyword-only options of :func:`upscale`, for type checkers (its docstring says what each does)."""

    size: tuple[int, int] | None
    backend: str
    dtype: torch.dtype | None
    layout: str | None
    out: torch.Tensor | np.ndarray | Any | None
    stream: torch.cuda.Stream | None
    tile: int | tuple[int, int] | None
    max_memory: int | str | None
    check_finite: bool
    cuda_graphs: bool | None
    tune: bool
    fused_color: bool | None
    channel_order: str
    progress: Callable[[int, int], None] | None


# What type checkers see (the package ships py.typed): a tensor in gives a tensor, a numpy array a numpy array, and
# another library's array (__dlpack__ / __cuda_array_interface__) a tensor, or ``out``.
@overload
def upscale(img: torch.Tensor, scale: float | None = None, model: VDSR | None = None,
            **options: Unpack[UpscaleOptions]) -> torch.Tensor: ...  # fmt: skip
@overload
def upscale(img: np.ndarray, scale: float | None = None, model: VDSR | None = None,
            **options: Unpack[UpscaleOptions]) -> np.ndarray: ...  # fmt: skip
@overload
def upscale(img: Any, scale: float | None = None, model: VDSR | None = None,
            **options: Unpack[UpscaleOptions]) -> Any: ...  # fmt: skip
@torch.no_grad()
def upscale(
    img: torch.Tensor | np.ndarray | Any,
    scale: float | None = None,
    model: VDSR | None = None,
    *,
    size: tuple[int, int] | None = None,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
    layout: str | None = None,
    out: torch.Tensor | np.ndarray | Any | None = None,
    stream: torch.cuda.Stream | None = None,
    tile: int | tuple[int, int] | None = None,
    max_memory: int | str | None = None,
    check_finite: bool = False,
    cuda_graphs: bool | None = None,
    tune: bool = False,
    fused_color: bool | None = None,
    channel_order: str = "RGB",
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor | np.ndarray | Any:
    """Super-resolve ``img`` by ``scale`` with VDSR.

    Args:
        img: a tensor on any device, uint8/uint16 or float in [0, 1], in one of the conventions
            (``N`` may be left out):
            ``"NCHW"``: RGB ``(N, 3, H, W)``, RGBA ``(N, 4, H, W)`` (alpha is resized bicubically and
            kept), Y/gray ``(N, 1, H, W)``; ``"NHWC"``: ``(N, H, W, 3|4|1)`` as video decoders hand
            out; and a Y plane ``(H, W)``. A 3-D tensor is one frame ``(C, H, W)`` (or ``(H, W, C)``): a batch of
            three or four Y planes ``(N, H, W)`` reads as one RGB(A) frame, so give it as ``(N, 1, H, W)``
            (:func:`~vdsr_fast.yuv.upscale_yuv` reads ``(N, H, W)`` as a batch). Or a numpy array in the same conventions (e.g. OpenCV's
            ``(H, W, 3)`` uint8, with ``channel_order="BGR"``): computed on the GPU when there is one,
            returned as a numpy array (``out`` then a numpy array too). Or an array of another library
            with ``__dlpack__`` or ``__cuda_array_interface__`` (CuPy, JAX, a GPU video decoder's frames),
            read in place; the result is then a tensor on its device (``out`` may be such an array too,
            written in place and returned).
        scale: 2, 3 or 4 (the scales VDSR is trained on; default 2), or any factor from 1 to 4 (e.g. 1.5 for
            720p -> 1080p): the output is ``ceil(scale * H) x ceil(scale * W)`` (MATLAB's rule; see
            :func:`~vdsr_fast.imaging.resize_output_size`), computed by the network at the next trained scale and
            resized down with MATLAB's bicubic (see :func:`output_plan`).
        size: ``(H, W)`` of the output instead of ``scale`` (each side 1 to 4 times the input's; the two factors
            may differ, e.g. anamorphic 720x480 -> 1920x1080).
        model: a :class:`VDSR` from :func:`load`; default: the weights shipped with the package. Its engine is
            cached on it (:func:`get_engine`) and rebuilt when its weights change, except after writes it cannot
            see: through ``p.data``, or to parameters made under ``torch.inference_mode``. After those, call
            ``model.__dict__.pop("_vdsr_engines", None)``, or the engine computes with the weights it was built with.
        backend: engine backend (``"auto"``, ``"cuda"``, ``"triton"``, ``"torch"``).
        dtype: the engine's activation dtype (default: see :class:`~vdsr_fast.engine.Engine`).
        layout: ``"NCHW"``, ``"NHWC"`` or None to infer: float tensors are NCHW; uint8/uint16 tensors
            are NHWC when only their last dim is a channel count (1, 3 or 4), else NCHW (so pass
            ``layout="NHWC"`` for float NHWC frames and for uint8 frames of height 1, 3 or 4).
        out: a preallocated tensor to write the result into (shape, dtype and device of the result;
            any strides whose elements do not overlap); returned.
        stream: a ``torch.cuda.Stream`` to enqueue the work on (default: the current stream). The
            caller orders the input's producer before it and the output's consumers after it, as
            with ``torch.cuda.stream(...)``.
        tile: process the frame in output tiles of this many pixels (int or (h, w), at least 8); each tile is
            computed with a halo of the network's receptive field and the bicubic taps, so the result
            is the untiled one (see :mod:`vdsr_fast.tiling`).
        max_memory: a working-memory budget in bytes (activations and intermediates, not the input
            and output frames) from which the largest fitting tile is chosen; combines with ``tile``
            (the smaller wins). Default (None): ``"auto"`` on the CPU (where running out of memory gets the process
            killed), no budget on a GPU. A budget too small for an 8x8 tile raises ValueError; a real
            out-of-memory error is raised as is. Frames larger than a fast backend's 32-bit index
            range (e.g. the Triton kernels' 2**31 activation elements per image, reached past a 5792x5792 output)
            are tiled automatically, with the same exact result.
        check_finite: raise ValueError if ``img`` holds NaN or Inf (off by default: the check waits
            for the device). Without it, NaN/Inf pixels propagate to the output within the
            receptive field around them.
        cuda_graphs: replay the network as one CUDA graph per window shape, captured on the first
            call for that shape (default: on for the Triton and CUDA backends on a GPU; False turns
            it off, e.g. to profile the kernels one by one).
        tune: on the first call, time the backend's alternative kernels and keep the fastest for this
            GPU (``Engine(tune=True)``: ~1 s once per process; outputs may then differ from the default
            kernels' in the last bits, within the same equivalence tests).
        fused_color: run the colour pipeline around the network (to float, RGB -> YCbCr, bicubic upscale,
            back to RGB, clamp and rounding) as two Triton kernels instead of ~40 PyTorch operations, with the
            same fp32 arithmetic in the same order (kernels/triton/color.py). Gray/Y and RGB frames, not
            float64 and not RGBA (those take the PyTorch path); needs Triton on a GPU (on the CPU only in
            Triton's interpreter, for tests). ``None`` (default): on for uint8, uint16 and float32 frames on a GPU
            where Triton runs (there the outputs are the PyTorch pipeline's bits, tested on an H200, and a 1080p
            frame took 0.47 ms less), off elsewhere; ``True`` asks for it (an error where Triton cannot run);
            ``False`` keeps the PyTorch operations.
        channel_order: ``"RGB"`` (RGB / RGBA) or ``"BGR"`` (BGR / BGRA, as OpenCV holds images): the
            output has the input's order. Y and gray images have no order.
        progress: called as ``progress(done, total)`` after each output tile is queued (``total`` is 1 for an
            untiled frame; on a GPU the tile's work may still be running), e.g. to drive a progress bar.

    Returns:
        ``out``, or a new tensor in the input's convention, dtype and device with H and W multiplied
        by ``scale``, clamped to the valid range (uint8/uint16 rounded). Color images go RGB -> YCbCr
        (MATLAB BT.601) -> MATLAB bicubic upscale of all channels -> VDSR on Y -> RGB. NaN pixels
        propagate to the output. Nothing waits for the device: no host synchronisation once the
        engine and the resize tables for a frame size are built (the first call per size).
    """
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"upscale: channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    _check_dtype(dtype, "upscale")
    if progress is not None and not callable(progress):
        raise TypeError(f"upscale: progress must be a callable progress(done, total) or None, got {type(progress).__name__}")
    if tile is not None and min(tiling._pair(tile)) < tiling.MIN_TILE:
        raise ValueError(f"upscale: tile must be at least {tiling.MIN_TILE} output pixels a side (smaller tiles spend "
                         f"nearly all their work on the halo), got {tile!r}")
    for name, t in (("img", img), ("out", out)):
        if torch.is_tensor(t):
            _check_strided(t, name)
    kw = dict(size=size, backend=backend, dtype=dtype, layout=layout, stream=stream, tile=tile, max_memory=max_memory,
              check_finite=check_finite, cuda_graphs=cuda_graphs, tune=tune, fused_color=fused_color, progress=progress)  # fmt: skip
    def foreign(x):  # CuPy, JAX, a GPU decoder's frames...
        return x is not None and not torch.is_tensor(x) and not isinstance(x, np.ndarray)

    if isinstance(img, np.ndarray) and foreign(out):
        raise TypeError(f"upscale: with a numpy img, out must be a numpy array too, got {type(out).__name__}")
    if foreign(img) or foreign(out):
        res = upscale(_foreign_array(img, "img", stream), scale, model, out=None if out is None else
                      _foreign_array(out, "out", stream), channel_order=channel_order, **kw)  # fmt: skip
        return res if out is None else out
    if isinstance(img, np.ndarray) or channel_order == "BGR":
        return _upscale_converted(img, scale, model, out, channel_order, kw)
    if img.dim() not in (2, 3, 4):
        raise ValueError(f"upscale: img must have 2, 3 or 4 dims (H,W / C,H,W / N,C,H,W or H,W,C / N,H,W,C), got shape {tuple(img.shape)}")
    layout = _resolve_layout(img, layout)
    batch = _nchw(img, layout)
    n, c, h, w = batch.shape
    if c not in _CHANNELS:
        hint = "" if layout == "NHWC" else "; pass layout='NHWC' for channels-last frames"
        raise ValueError(f"upscale: img must have 1 (Y), 3 (RGB) or 4 (RGBA) channels, got {c} in shape {tuple(img.shape)} read as {layout}{hint}")
    if n == 0 or h == 0 or w == 0:
        raise ValueError(f"upscale: img is empty (shape {tuple(img.shape)})")
    if img.dtype not in _DTYPES:
        raise TypeError(f"upscale: img has dtype {img.dtype}; expected uint8, uint16 or a float dtype in [0, 1]")
    model = _default() if model is None else model
    if not isinstance(model, VDSR):
        raise TypeError(f"upscale: model must be a vdsr_fast VDSR (from vdsr_fast.load), got {type(model).__name__}")
    s, out_hw = output_plan(h, w, scale, size)
    shape = _out_shape(img, layout, out_hw)
    if out is not None:
        _check_out(out, img, shape)
    if stream is not None:
        _check_stream(stream, img.device)
    if out_hw != (h * s, w * s):  # another factor: the network at scale s, then MATLAB's bicubic down to out_hw
        with _on_stream(stream):  # every step on the caller's stream
            inner = upscale(_to_float(img), s, model, **dict(kw, size=None, layout=layout))
            res = imresize(_nchw(inner, layout), size=out_hw)
            res = _from_float(res if layout == "NCHW" else res.movedim(-3, -1).contiguous(), img.dtype).reshape(shape)
            return res if out is None else out.copy_(res)
    if check_finite and torch.is_floating_point(img):
        with _on_stream(stream):
            if not bool(torch.isfinite(img).all()):
                raise ValueError("upscale: img contains NaN or Inf values (check_finite=True)")
    if fused_color is None:  # on where the GPU runs measured it bit-equal to the PyTorch pipeline
        fused_color = (batch.device.type == "cuda" and img.dtype in _FUSED_COLOR_AUTO
                       and _why_unavailable("triton", batch.device) is None)  # fmt: skip
    elif fused_color and (why := _why_unavailable("triton", batch.device)):
        raise ValueError(f"upscale: fused_color=True needs Triton on this device: {why}")
    fused_color = fused_color and c in (1, 3) and img.dtype != torch.float64

    # On the frame's GPU: Triton launches its kernels (the fused colour ones here) on the current device.
    on_device = torch.cuda.device(batch.device) if batch.device.type == "cuda" else contextlib.nullcontext()
    with on_device, _on_stream(stream):
        engine = get_engine(model, batch.device, backend, dtype, cuda_graphs, tune)
        radius = tiling.receptive_radius(model)
        H, W = h * s, w * s
        tile_hw = _tile_size(tile, max_memory, n, engine, model, img.dtype, radius, (H, W))
        tiles = [(0, H, 0, W)] if tile_hw is None else tiling.tile_plan(H, W, tile_hw)
        windows = [(tiling.Window(h, s, r0, r1, radius), tiling.Window(w, s, c0, c1, radius)) for r0, r1, c0, c1 in tiles]
        if out is None and len(tiles) == 1 and layout == "NCHW" and not fused_color:
            res = _from_float(_run_window(batch, engine, *windows[0]), img.dtype).reshape(shape)
            if progress is not None:
                progress(1, 1)
            return res
        # Size the activation buffers for the largest window first, so no graph captured for an
        # earlier (edge) window is dropped when they grow.
        engine.reserve(n, max(r.net[1] - r.net[0] for r, _ in windows), max(c.net[1] - c.net[0] for _, c in windows))
        if out is None:
            out = torch.empty(shape, dtype=img.dtype, device=img.device)
        elif len(tiles) > 1 and _shares_memory(out, img):
            batch = batch.clone()  # out shares memory with img: earlier tiles would overwrite later tiles' input
        dst = _nchw(out, layout)
        for k, (rows, cols) in enumerate(windows):
            tile_out = dst[:, :, rows.start : rows.stop, cols.start : cols.stop]
            if fused_color:
                _run_window_fused(batch, engine, rows, cols, tile_out)
            else:
                tile_out.copy_(_from_float(_run_window(batch, engine, rows, cols), img.dtype))
            if progress is not None:
                progress(k + 1, len(windows))
        return out

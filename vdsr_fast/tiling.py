"""Exact tiling for :func:`vdsr_fast.upscale`: tile plans, halos and the windowed MATLAB bicubic.

An output tile ``[r0, r1) x [c0, c1)`` on the upscaled (HR) grid is computed from

* the network window: the tile grown by the network's receptive-field radius ``R`` (one pixel per
  3x3 conv, so 20 for VDSR), clipped to the frame. Inside the frame the halo holds the true
  upscaled pixels, so the zero padding at the window's cut edge reaches only ``R`` pixels inward,
  all in the halo; where the window is clipped at the frame's border the convolutions see the
  same zero padding as on the whole frame;
* the LR window: the low-resolution pixels the bicubic taps of the network window's rows and
  columns read (MATLAB's 4-tap kernel at upscale: about 2 LR pixels beyond the window's edges,
  mirrored at the frame's border). These are read from MATLAB's contribution table for the
  *whole* frame (:func:`imaging._contributions`), not guessed, and the window is resized with the
  whole frame's weights, taps and tap order, so every upscaled pixel of the window is bit-for-bit
  the one :func:`~vdsr_fast.imaging.imresize` gives for the whole frame.

Colour conversion and the final clamp/rounding are per pixel. So the tiled output is identical
to the untiled one as far as the network itself gives the same value for the same pixel whatever
the input's size. A convolution library may compute another window size another way, which moves a pixel by
a few ulps: on the CPU the shipped 64-channel weights give the same bits in float32 (oneDNN; tested with 1-pixel
edge tiles at factors 1.5, 2.5 and 3) wherever the frame and its windows exceed ~12 pixels a side, while a
narrower frame or window (oneDNN takes another path under a few hundred pixels) moves a pixel by up to ~1e-6;
small models of other widths differ by up to ~6e-7 in float32 and float64 (BLAS) by up to 2.2e-16 (measured by
a fuzzer over 9,500 random cases); a uint8/uint16 pixel then moves one level only where that difference crosses
a rounding boundary. Factors other than 2, 3 and 4 (e.g. 1.5: the network at 2, then MATLAB's
bicubic down) tile the network's frame; the final downscale is of the whole frame, outside ``max_memory``.
"""

from __future__ import annotations

import math
import numbers

import torch

from .imaging import _apply_taps, _contributions, _contributions_on, resize_output_size

__all__ = ["receptive_radius", "tile_plan", "tile_for_budget", "bytes_per_pixel", "memory_budget", "Window"]


def receptive_radius(model) -> int:
    """Pixels of context one output pixel of the network needs on each side: one per 3x3 conv."""
    return len(model.layers)


def bytes_per_pixel(channels: int, engine_dtype: torch.dtype, float_dtype: torch.dtype) -> int:
    """Approximate working memory per upscaled pixel of one frame.

    The network holds about three ``channels``-deep activations at once (input, conv output, ReLU
    output in the reference; two ping-pong buffers in the fast backends); the colour pipeline about a
    dozen float planes (upscaled YCbCr, the network's input and output, RGB and temporaries).
    """
    esize = torch.empty((), dtype=engine_dtype).element_size()
    fsize = torch.empty((), dtype=float_dtype).element_size()
    return 3 * channels * esize + 12 * fsize


MIN_TILE = 8
AUTO_FRACTION = 0.7  # of the memory free on the device that max_memory="auto" lets one call use


def available_memory(device: torch.device) -> int | None:
    """Bytes a new allocation on ``device`` can take now: on a GPU what the driver has free plus what PyTorch's
    caching allocator holds unused; on the CPU the kernel's estimate (``MemAvailable`` of Linux's
    ``/proc/meminfo``), or less where this process's cgroup (a container's ``--memory``) leaves less room under its
    limit (:func:`_cgroup_room`) or its address-space limit (``ulimit -v``, :func:`_address_space_room`); None where
    unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    free = None
    try:
        with open("/proc/meminfo") as f:
            free = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except OSError:
        pass
    rooms = [r for r in (free, _cgroup_room(), _address_space_room()) if r is not None]
    return min(rooms) if rooms else None


def _address_space_room() -> int | None:
    """Bytes left under this process's address-space limit (``ulimit -v``, ``RLIMIT_AS``): the soft limit less the
    process's virtual size (``VmSize`` of ``/proc/self/status``; the whole limit where that cannot be read); None
    without a limit. Past it an allocation fails however much memory is free."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY or limit < 0:
        return None
    used = 0
    try:
        with open("/proc/self/status") as f:
            used = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")), 0)
    except (OSError, ValueError):
        pass
    return max(limit - used, 0)


def _cgroup_room() -> int | None:
    """Bytes left under the memory limit of this process's cgroup (v2: ``memory.max`` - ``memory.current``; v1:
    ``memory.limit_in_bytes`` - ``memory.usage_in_bytes``), None when it has no limit or none can be read. Inside a
    container the cgroup is mounted at ``/sys/fs/cgroup``; elsewhere ``/proc/self/cgroup`` names it."""
    own = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:  # "0::/path" (v2), "4:memory:/path" (v1)
                _, controllers, path = line.rstrip("\n").split(":", 2)
                own.setdefault("v2" if controllers == "" else "v1" if "memory" in controllers.split(",") else "", path)
    except (OSError, ValueError):
        pass
    root = "/sys/fs/cgroup"
    candidates = [(f"{root}{own['v2']}".rstrip("/"), "memory.max", "memory.current")] if "v2" in own else []
    candidates += [(root, "memory.max", "memory.current")]
    candidates += [(f"{root}/memory{own['v1']}".rstrip("/"), "memory.limit_in_bytes", "memory.usage_in_bytes")] if "v1" in own else []
    candidates += [(f"{root}/memory", "memory.limit_in_bytes", "memory.usage_in_bytes")]
    for folder, limit_file, usage_file in candidates:
        try:
            with open(f"{folder}/{limit_file}") as f:
                limit = f.read().strip()
            with open(f"{folder}/{usage_file}") as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if not limit.isdigit() or int(limit) >= 1 << 60:  # "max", or v1's "no limit" (2**63 rounded to pages)
            return None
        return max(int(limit) - usage, 0)
    return None


def memory_budget(device: torch.device, reusable: int = 0) -> int | None:
    """``max_memory="auto"``: a share (``AUTO_FRACTION``) of :func:`available_memory` and ``reusable`` bytes together (an
    engine's own activation buffers, which the next call reuses: without them a budget measured after the first
    call would shrink by what that call left allocated), or None (no limit) where unknown."""
    free = available_memory(device)
    return None if free is None else int(AUTO_FRACTION * (free + reusable))


def tile_for_budget(max_memory: int, n: int, per_pixel: int, radius: int) -> int:
    """The largest square output tile whose window (tile + 2 radius) for ``n`` frames fits the budget."""
    side = math.isqrt(max(int(max_memory) // max(n * per_pixel, 1), 0)) - 2 * radius
    if side < MIN_TILE:
        need = n * per_pixel * (MIN_TILE + 2 * radius) ** 2
        raise ValueError(
            f"upscale: max_memory={max_memory} bytes ({max_memory / 2**30:.3g} GiB) is too small: a {MIN_TILE}x{MIN_TILE} "
            f"output tile with its {radius}-pixel halo for {n} frame(s) needs about {need} bytes ({need / 2**30:.3g} GiB)"
        )
    return side


def _pair(tile) -> tuple[int, int]:
    bad = ValueError(f"upscale: tile must be a positive int or a pair of them (output pixels), got {tile!r}")
    if isinstance(tile, numbers.Integral):
        pair = (tile, tile)
    elif isinstance(tile, (tuple, list)) and len(tile) == 2:
        pair = tuple(tile)
    else:
        raise bad
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in pair):
        raise bad
    return int(pair[0]), int(pair[1])


def tile_plan(out_h: int, out_w: int, tile) -> list[tuple[int, int, int, int]]:
    """Output tiles ``(r0, r1, c0, c1)`` covering an ``out_h x out_w`` frame, row-major."""
    th, tw = _pair(tile)
    return [(r, min(r + th, out_h), c, min(c + tw, out_w)) for r in range(0, out_h, th) for c in range(0, out_w, tw)]


class Window:
    """One tile's geometry along one axis: the output range, the network range and the LR range.

    Args:
        in_len, scale: the frame's LR length along this axis and the upscale factor.
        start, stop: the output tile, on the upscaled grid.
        radius: the network's receptive-field radius.
    """

    def __init__(self, in_len: int, scale: int, start: int, stop: int, radius: int) -> None:
        self.in_len, self.scale = in_len, float(scale)
        self.out_len = resize_output_size((in_len, in_len), scale)[0]
        self.start, self.stop = start, stop
        self.net = (max(0, start - radius), min(self.out_len, stop + radius))
        _, idx = _contributions(in_len, self.out_len, self.scale, True)
        used = idx[self.net[0] : self.net[1]]
        self.lr = (int(used.min()), int(used.max()) + 1)

    @property
    def center(self) -> slice:
        """The output tile inside the network window."""
        return slice(self.start - self.net[0], self.stop - self.net[0])

    def taps(self, device: torch.device, dtype: torch.dtype, rows: tuple[int, int] | None = None):
        """(weights (P, rows) in ``dtype``, LR indices (P, rows) relative to ``self.lr``) of output rows ``rows``
        (default: the network window): the whole frame's MATLAB table, sliced."""
        a, b = self.net if rows is None else rows
        w, idx = _contributions_on(self.in_len, self.out_len, self.scale, True, device, dtype)
        return w[:, a:b], idx[:, a:b] - self.lr[0]

    def resize(self, x: torch.Tensor, dim: int, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Upscale the LR window ``x`` (sliced to ``self.lr`` along ``dim``) to output rows ``rows``.

        ``rows`` defaults to the network window and must lie inside it. Same weights, taps and tap
        order as :func:`~vdsr_fast.imaging.imresize` on the whole frame, so the same bits.
        """
        return _apply_taps(x, dim, *self.taps(x.device, x.dtype, rows))

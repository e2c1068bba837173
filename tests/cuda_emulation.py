"""A numpy emulator of the CUDA kernels in ``csrc/`` (no GPU needed): a line-by-line transliteration.

The functions below follow the kernel source statement by statement (``# cuh:NNN`` names the line of
``csrc/conv3x3_body.cuh``, ``# ht:NNN`` of ``csrc/head_tail.cu``, ``# du:NNN`` of
``csrc/device_utils.cuh``), so an index bug in a kernel is reproduced here rather than corrected.  What
is *not* taken from the kernel source is the semantics of the hardware, written out from the PTX ISA:

* ``ldmatrix.sync.aligned.m8n8.x4.shared.b16`` (no ``.trans``): lane ``8*i + r`` gives the shared
  address of row ``r`` of matrix ``i`` (16 contiguous bytes, 16-byte aligned); lane ``l`` receives in
  register ``i`` the elements ``(row l // 4, cols 2*(l % 4), 2*(l % 4) + 1)`` of matrix ``i``, the
  lower column in the low 16 bits.
* ``mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}``: with ``g = lane >> 2``, ``t = lane & 3``,
  A regs = ``A[g][2t..]``, ``A[g+8][2t..]``, ``A[g][2t+8..]``, ``A[g+8][2t+8..]``; B regs =
  ``B[2t..2t+1][g]``, ``B[2t+8..2t+9][g]``; C/D = ``C[g][2t]``, ``C[g][2t+1]``, ``C[g+8][2t]``,
  ``C[g+8][2t+1]`` (fp32).  The product is formed in float64 and rounded to fp32 once per mma.
* ``cp.async.cg.shared.global [dst], [src], 16, src_size``: 16 bytes; ``src_size == 0`` reads nothing
  and zero-fills the destination.  ``commit_group`` closes a group (possibly empty);
  ``wait_group N`` completes every committed group but the newest ``N``.

Beyond values, the emulator checks what a single run on a GPU would not reliably show:

* global reads/writes are bounds-checked (negative offsets included) and alignment-checked
  (16 bytes for ``cp.async`` and ``uint4``, 4 bytes for the epilogue's ``uint32_t`` stores);
* every output element is written exactly once (``writes`` counters);
* shared memory starts as NaN; a read of a chunk that was never written, whose ``cp.async`` has not
  completed (``wait_group``), or that completed without a ``__syncthreads`` since (other threads'
  copies are not visible yet) raises :class:`Hazard`; so does a ``cp.async`` into a chunk that was read
  since the last ``__syncthreads`` (write-after-read: the refill of a stage still being computed on);
* every ``ldmatrix`` phase (8 row addresses) is checked to hit 8 distinct 16-byte bank groups.
  So is every quarter-warp of a 16-byte ``ld.shared.v4``; 4-byte accesses: no two lanes on one bank.

``eager=True`` lands each ``cp.async`` at issue (the earliest the hardware may), ``eager=False`` at
the ``wait_group`` that completes it (the latest); a correct kernel gives the same result both ways.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

CSRC = Path(__file__).resolve().parent.parent / "csrc"

# cuh:53-58
KC = 64
ROW_BYTES = KC * 2
CHUNKS = ROW_BYTES // 16
TAPS = 9
WEIGHT_BYTES = TAPS * KC * ROW_BYTES
TILE_W = 16

LANE = np.arange(32)
GID = LANE >> 2  # mma groupID
TIG = LANE & 3  # mma threadID_in_group

NEVER = np.iinfo(np.int64).max  # "ready" epoch of a shared chunk never written
PENDING = NEVER - 1  # "ready" epoch of a chunk with a cp.async in flight


class Hazard(AssertionError):
    """A shared-memory race, an out-of-bounds or misaligned access, or a bank conflict."""


# ---------------------------------------------------------------------------------------------------
# The variant lists, read from the source (VDSR_BODY_VARIANTS, VDSR_SMALL_BODY_VARIANTS) so new variants are
# covered automatically.
# ---------------------------------------------------------------------------------------------------
def body_variants_from_source(path: Path = CSRC / "conv3x3_body.cuh", macro: str = "VDSR_BODY_VARIANTS"
                              ) -> list[tuple[int, int, int, int]]:  # fmt: skip
    """The (warps M, warps N, tile rows per warp, stages) of the direct kernel's variants in ``macro``: the main
    list (ids 0-2) or ``VDSR_SMALL_BODY_VARIANTS`` (the 99 KB ones, listed after every other kind)."""
    lines = path.read_text().splitlines()
    start = next(i for i, s in enumerate(lines) if s.startswith(f"#define {macro}(X)"))
    body = []
    i = start
    while lines[i].rstrip().endswith("\\"):
        i += 1
        body.append(lines[i])
    text = "\n".join(re.sub(r"/\*.*?\*/", "", s) for s in body)
    return [tuple(int(v) for v in m) for m in re.findall(r"X\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)", text)]


@dataclass(frozen=True)
class BodyTile:
    """cuh:63-79."""

    warps_m: int
    warps_n: int
    mi: int
    stages: int

    def __post_init__(self):
        assert self.warps_n in (1, 2, 4)  # cuh:65
        assert self.stages >= 2  # cuh:66
        assert self.ni % 2 == 0  # cuh:71

    threads = property(lambda s: 32 * s.warps_m * s.warps_n)  # cuh:67
    ncols = property(lambda s: KC // s.warps_n)  # cuh:69
    ni = property(lambda s: s.ncols // 8)  # cuh:70
    tile_h = property(lambda s: s.warps_m * s.mi)  # cuh:72
    halo_h = property(lambda s: s.tile_h + 2)  # cuh:74
    halo_w = property(lambda s: TILE_W + 2)  # cuh:75
    halo_pix = property(lambda s: s.halo_h * s.halo_w)  # cuh:76
    stage_bytes = property(lambda s: s.halo_pix * ROW_BYTES)  # cuh:77
    smem_bytes = property(lambda s: WEIGHT_BYTES + s.stages * s.stage_bytes)  # cuh:78


# ---------------------------------------------------------------------------------------------------
# Storage types (du:17-40): 16-bit patterns <-> fp32, round to nearest even.
# ---------------------------------------------------------------------------------------------------
class Half:
    name = "float16"
    poison = 0x7E00  # a NaN

    @staticmethod
    def to_float(bits):
        return np.asarray(bits).astype(np.uint16).view(np.float16).astype(np.float32)

    @staticmethod
    def from_float(v):
        return np.asarray(v, np.float32).astype(np.float16).view(np.uint16)


class BFloat16:
    name = "bfloat16"
    poison = 0x7FC0

    @staticmethod
    def to_float(bits):
        return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)

    @staticmethod
    def from_float(v):
        u = np.asarray(v, np.float32).view(np.uint32).astype(np.uint64)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        return np.where(np.isnan(np.asarray(v, np.float32)), np.uint16(0x7FC0), r)


def pack2(T, lo, hi):
    """du:22-25 / du:33-36: ``.x = lo`` at the lower address = the low 16 bits."""
    return T.from_float(lo).astype(np.uint32) | (T.from_float(hi).astype(np.uint32) << 16)


def unpack2(T, u):
    """du:26-28 / du:37-39."""
    u = np.asarray(u, np.uint32)
    return T.to_float(u & 0xFFFF), T.to_float(u >> 16)


def relu_keep_nan(v):
    """du:43: ``v < 0 ? 0 : v``."""
    v = np.asarray(v, np.float32)
    return np.where(v < 0, np.float32(0), v).astype(np.float32)


def fmaf(a, b, c):
    """fp32 fused multiply-add (the fp32 product is exact in float64)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(np.float32)


def unsigned_lt(v, n):
    """``static_cast<unsigned>(v) < static_cast<unsigned>(n)`` for int32 v, n >= 0."""
    return (np.asarray(v, np.int64) & 0xFFFFFFFF) < n


def strided_loop(tid, total, step):
    """The union over threads of ``for (i = threadIdx.x; i < total; i += step)`` (order irrelevant)."""
    i = (tid[None, :] + step * np.arange(-(-total // step))[:, None]).ravel()
    return i[i < total]


# ---------------------------------------------------------------------------------------------------
# Global memory: flat arrays with bounds and alignment checks (base pointers are 256-byte aligned).
# ---------------------------------------------------------------------------------------------------
class Global:
    def __init__(self, name, array):
        self.name = name
        self.a = np.ascontiguousarray(array).ravel()
        self.writes = np.zeros(self.a.size, np.int32)

    def _check(self, off, n, align_bytes):
        off = np.asarray(off, np.int64)
        if off.size and (off.min() < 0 or off.max() + n > self.a.size):
            raise Hazard(
                f"out-of-bounds access to {self.name}: offsets {off.min()}..{off.max()} + {n}, size {self.a.size}"
            )
        if off.size and np.any((off * self.a.itemsize) % align_bytes):
            raise Hazard(f"misaligned {align_bytes}-byte access to {self.name}")
        return off

    def load(self, off, n=1, align_bytes=None):
        off = self._check(off, n, align_bytes or n * self.a.itemsize)
        if n == 1:
            return self.a[off]
        return self.a[off[..., None] + np.arange(n)]

    def store(self, off, values, n=1, align_bytes=None):
        off = self._check(off, n, align_bytes or n * self.a.itemsize)
        idx = off[..., None] + np.arange(n) if n > 1 else off
        self.a[idx] = values
        np.add.at(self.writes, idx.ravel(), 1)


# ---------------------------------------------------------------------------------------------------
# Shared memory, cp.async groups and barriers of one CTA (per-CTA: every thread of the kernels issues
# the same commit/wait sequence, and each wait is followed by __syncthreads).
# ---------------------------------------------------------------------------------------------------
class Cta:
    """``base``: the shared-memory address of the dynamic allocation (a multiple of 128; the kernels take
    addresses from ``smem_addr``); every method takes such addresses."""

    def __init__(self, smem_bytes, poison, eager, base=0):
        assert smem_bytes % 16 == 0 and base % 128 == 0
        self.base = base
        self.h = np.full(smem_bytes // 2, poison, np.uint16)  # 16-bit words
        self.ready = np.full(smem_bytes // 16, NEVER, np.int64)  # epoch in which a chunk's write completed
        self.last_read = np.full(smem_bytes // 16, -1, np.int64)  # epoch of the last read of a chunk
        self.generic = np.zeros(smem_bytes // 16, bool)  # written through the generic proxy, not yet fenced
        self.async_readers: list = []  # WgmmaGroups tracking this CTA's shared memory
        self.epoch = 0  # number of __syncthreads so far
        self.eager = eager
        self.open: list = []  # copies issued since the last commit
        self.groups: list = []  # committed, not yet completed groups, oldest first

    def syncthreads(self):
        self.epoch += 1

    def named_barrier(self, lo, hi):
        """``bar.sync id, 128`` of the warpgroup that alone uses shared bytes [lo, hi) (its staging tile): its
        writes and reads there before the barrier are ordered with its accesses after it; nothing else is
        (the CTA epoch does not advance)."""
        c = slice((lo - self.base) // 16, (hi - self.base) // 16)
        self.ready[c] = np.where(self.ready[c] == self.epoch, self.epoch - 1, self.ready[c])
        self.last_read[c] = np.where(self.last_read[c] == self.epoch, self.epoch - 1, self.last_read[c])

    def _check_async_war(self, chunk, what):
        if any(q.reads(chunk) for q in self.async_readers):
            raise Hazard(f"{what} into shared memory that a pending wgmma reads (wait_group)")

    def _check_generic_write(self, chunk, what, since="__syncthreads"):
        """A thread's store into shared chunks: none read since the last barrier (``since``), none with a
        cp.async in flight."""
        if np.any(self.last_read[chunk] >= self.epoch):
            raise Hazard(f"{what} into shared memory read since the last {since} (write-after-read)")
        if np.any(self.ready[chunk] == PENDING):
            raise Hazard(f"{what} into shared memory with a cp.async in flight")

    def cp_async_16(self, dst, gmem: Global, src, valid):
        """du:55-59 for a batch of threads: ``src_size = valid ? 16 : 0``."""
        dst = np.asarray(dst, np.int64).ravel() - self.base
        src = np.asarray(src, np.int64).ravel()
        valid = np.broadcast_to(np.asarray(valid, bool), dst.shape).ravel()
        if np.any(dst % 16) or dst.min() < 0 or dst.max() + 16 > self.h.size * 2:
            raise Hazard("cp.async: shared destination out of range or not 16-byte aligned")
        # The source address must be valid and aligned even with src_size 0 (the kernel passes the base).
        data = gmem.load(src, 8, align_bytes=16)
        data = np.where(valid[:, None], data, np.uint16(0))
        chunk = dst // 16
        self._check_async_war(chunk, "cp.async")
        if np.any(self.last_read[chunk] >= self.epoch):
            raise Hazard("cp.async into shared memory read since the last __syncthreads (write-after-read)")
        self.ready[chunk] = PENDING
        if self.eager:
            self.h[(dst // 2)[:, None] + np.arange(8)] = data
        self.open.append((dst, data))

    def commit(self):
        self.groups.append(self.open)
        self.open = []

    def wait_group(self, n):
        while len(self.groups) > n:
            for dst, data in self.groups.pop(0):
                if not self.eager:
                    self.h[(dst // 2)[:, None] + np.arange(8)] = data
                self.ready[dst // 16] = self.epoch  # visible to other threads after the next barrier
                self.generic[dst // 16] = True

    def fence_proxy_async(self):
        """``fence.proxy.async.shared::cta`` by every thread (du): the completed generic-proxy writes become
        visible to the async proxy (wgmma operands) after the next barrier."""
        self.generic &= self.ready == PENDING

    def check_async_read(self, chunk, what):
        """A read through the async proxy (a wgmma descriptor operand): as :meth:`_check_read`, and the
        chunks must not hold generic-proxy writes without a ``fence.proxy.async`` since."""
        self._check_read(chunk, what)
        if np.any(self.generic[chunk]):
            raise Hazard(f"{what} reads shared memory written through the generic proxy without fence.proxy.async")

    def exit(self):
        """The kernel's final ``cp_async_wait<0>()`` before the CTA exits; every copy must have been committed."""
        self.wait_group(0)
        if self.open:
            raise Hazard("cp.async copies issued but never committed")

    def _check_read(self, chunk, what):
        """A read of shared chunks: written, completed and made visible by a barrier; records the read."""
        state = self.ready[chunk]
        if state.size and state.max() >= self.epoch:
            if np.any(state == NEVER):
                raise Hazard(f"{what} reads shared memory that was never written")
            if np.any(state == PENDING):
                raise Hazard(f"{what} reads shared memory whose cp.async has not completed (wait_group)")
            raise Hazard(f"{what} reads shared memory written without a __syncthreads since")
        self.last_read[chunk] = self.epoch

    @staticmethod
    def _check_banks(addr, what, active=None):
        """One warp's 4-byte accesses (``addr[..., lane]``; lanes where ``active`` is False take no part):
        no two lanes on one bank with different words."""
        words = np.asarray(addr, np.int64) >> 2
        banks = words & 31
        clash = (banks[..., :, None] == banks[..., None, :]) & (words[..., :, None] != words[..., None, :])
        if active is not None:
            clash &= active[..., :, None] & active[..., None, :]
        if clash.any():
            raise Hazard(f"{what} with a shared-memory bank conflict")

    def _access(self, addr, size, what, active):
        """Range/alignment checks of a warp access; returns the active lanes' byte addresses."""
        addr = np.asarray(addr, np.int64)
        live = np.broadcast_to(True if active is None else active, addr.shape)
        a = addr[live] - self.base
        if np.any(a % size) or (a.size and (a.min() < 0 or a.max() + size > self.h.size * 2)):
            raise Hazard(f"{what}: address out of range or not {size}-byte aligned")
        return a

    def lds32(self, addr, active=None):
        """``ld.shared.b32`` (wb:88-92, ht:95); ``addr[..., lane]`` byte addresses -> uint32 values
        (0 in lanes where ``active`` is False)."""
        a = self._access(addr, 4, "ld.shared", active)
        self._check_read(a // 16, "ld.shared")
        self._check_banks(addr, "ld.shared", active)
        out = np.zeros(np.shape(addr), np.uint32)
        live = np.broadcast_to(True if active is None else active, out.shape)
        out[live] = self.h[a // 2].astype(np.uint32) | (self.h[a // 2 + 1].astype(np.uint32) << 16)
        return out

    def sts32(self, addr, value, active=None):
        """``st.shared.b32`` (wb:94-96, ht:84): visible to other threads after the next barrier."""
        a = self._access(addr, 4, "st.shared", active)
        chunk = a // 16
        self._check_generic_write(chunk, "st.shared")
        self._check_banks(addr, "st.shared", active)
        value = np.broadcast_to(np.asarray(value, np.uint32), np.shape(addr))
        value = value[np.broadcast_to(True if active is None else active, value.shape)]
        self.h[a // 2] = (value & 0xFFFF).astype(np.uint16)
        self.h[a // 2 + 1] = (value >> 16).astype(np.uint16)
        self.ready[chunk] = self.epoch
        self.generic[chunk] = True

    @staticmethod
    def _check_quarter_banks(addr, live, what):
        """A 16-byte access is served a quarter-warp (8 lanes) at a time: their chunks must sit in 8 distinct
        16-byte bank groups (or be the same chunk)."""
        quarters = addr.reshape(addr.shape[:-1] + (4, 8))
        q_live = live.reshape(quarters.shape)
        group = (quarters >> 4) & 7
        clash = (group[..., :, None] == group[..., None, :]) & (quarters[..., :, None] != quarters[..., None, :])
        if (clash & q_live[..., :, None] & q_live[..., None, :]).any():
            raise Hazard(f"{what} quarter-warp with a shared-memory bank conflict")

    def lds128(self, addr, active=None):
        """``ld.shared.v4.b32`` (ht:222); ``addr[..., lane]`` -> ``(..., lane, 4)`` uint32 (0 in lanes where
        ``active`` is False).  A 16-byte access is served a quarter-warp (8 lanes) at a time: their chunks must
        sit in 8 distinct 16-byte bank groups (or be the same chunk)."""
        addr = np.asarray(addr, np.int64)
        assert addr.shape[-1] == 32
        live = np.broadcast_to(True if active is None else active, addr.shape)
        rel = self._access(addr, 16, "ld.shared.v4", live)
        self._check_read(rel // 16, "ld.shared.v4")
        self._check_quarter_banks(addr, live, "ld.shared.v4")
        out = np.zeros(addr.shape + (4,), np.uint32)
        w = (rel >> 1)[..., None] + 2 * np.arange(4)
        out[live] = self.h[w].astype(np.uint32) | (self.h[w + 1].astype(np.uint32) << 16)
        return out

    def sts128(self, addr, values, active=None, quarter_banks=True):
        """``st.shared.v4.b32`` (sb ``strip_head_rows``): ``addr[..., lane]`` byte addresses, ``values[..., lane, 4]``
        .b32; visible to other threads after the next barrier.  As :meth:`lds128`, a quarter-warp's chunks must sit
        in 8 distinct 16-byte bank groups unless ``quarter_banks`` is False (a caller that accepts, and says why,
        an occasional 2-way conflict)."""
        addr = np.asarray(addr, np.int64)
        assert addr.shape[-1] == 32
        live = np.broadcast_to(True if active is None else active, addr.shape)
        rel = self._access(addr, 16, "st.shared.v4", live)
        chunk = rel // 16
        self._check_async_war(chunk, "st.shared.v4")
        self._check_generic_write(chunk, "st.shared.v4")
        if quarter_banks:
            self._check_quarter_banks(addr, live, "st.shared.v4")
        vals = np.broadcast_to(np.asarray(values, np.uint32), addr.shape + (4,))[live]
        w = (rel >> 1)[:, None] + 2 * np.arange(4)
        self.h[w] = (vals & 0xFFFF).astype(np.uint16)
        self.h[w + 1] = (vals >> 16).astype(np.uint16)
        self.ready[chunk] = self.epoch
        self.generic[chunk] = True

    def stmatrix_x4_trans(self, addr, regs):
        """``stmatrix.sync.aligned.m8n8.x4.trans.shared.b16`` (du): ``addr[..., lane]`` row addresses (lane
        ``8 i + r``: row r of matrix i), ``regs[..., lane, i]`` .b32 fragments (lane l: row l // 4, cols
        2 (l % 4), +1 of matrix i).  ``.trans``: memory row r of matrix i receives column r of the fragment
        matrix, i.e. element c of the row = fragment (row c, col r), held by lane 4c + r // 2, half r % 2."""
        addr = np.asarray(addr, np.int64) - self.base
        assert addr.shape[-1] == 32
        if np.any(addr % 16) or addr.min() < 0 or addr.max() + 16 > self.h.size * 2:
            raise Hazard("stmatrix: row address out of range or not 16-byte aligned")
        chunk = addr // 16
        self._check_async_war(chunk, "stmatrix")
        self._check_generic_write(chunk, "stmatrix", since="barrier")
        rows = addr.reshape(addr.shape[:-1] + (4, 8))  # [matrix i][row r]
        if np.any(np.bitwise_or.reduce(1 << ((rows >> 4) & 7), axis=-1) != 0xFF):
            raise Hazard("stmatrix phase with a shared-memory bank conflict")
        halves = np.ascontiguousarray(regs, np.uint32).view(np.uint16).reshape(regs.shape[:-2] + (32, 4, 2))
        c = np.arange(8)
        for i in range(4):
            for r in range(8):
                vals = halves[..., 4 * c + r // 2, i, r % 2]  # (..., 8): element c of memory row r
                a = rows[..., i, r]
                self.h[(a // 2)[..., None] + c] = vals
        self.ready[chunk] = self.epoch
        self.generic[chunk] = True

    def ldmatrix_x4(self, addr):
        """``ldmatrix.sync.aligned.m8n8.x4.shared.b16``; ``addr[..., lane]`` -> ``r[..., lane, 4]`` (uint32)."""
        addr = np.asarray(addr, np.int64) - self.base
        assert addr.shape[-1] == 32
        if np.any(addr % 16) or addr.min() < 0 or addr.max() + 16 > self.h.size * 2:
            raise Hazard("ldmatrix: row address out of range or not 16-byte aligned")
        self._check_read(addr // 16, "ldmatrix")
        rows = addr.reshape(addr.shape[:-1] + (4, 8))  # [matrix i][row r] <- lane 8i + r (base: 128-aligned)
        banks = (rows >> 4) & 7  # 16-byte bank group of each row (smem base 128-byte aligned)
        if np.any(np.bitwise_or.reduce(1 << banks, axis=-1) != 0xFF):
            raise Hazard("ldmatrix phase with a shared-memory bank conflict")
        row_addr = rows[..., LANE // 4]  # [matrix i][lane l]: the row lane l receives
        w = (row_addr >> 1) + 2 * TIG  # 16-bit word of column 2*(l % 4)
        lo = self.h[w].astype(np.uint32)
        hi = self.h[w + 1].astype(np.uint32)
        return np.moveaxis(lo | (hi << 16), -2, -1)  # [..., lane, i]


def _fragment_maps():
    """The PTX fragment tables of mma.m16n8k16 (f16/bf16 A and B, f32 C/D) as gather indices.

    A: lane l, register r, half h -> A[g + 8*(r & 1)][2t + 8*(r >> 1) + h]
    B: lane l, register r, half h -> B[2t + 8*r + h][g]
    C: lane l, element e          -> C[g + 8*(e >> 1)][2t + (e & 1)]
    Returned as, for each matrix element (row-major), the flat index of the (lane, reg, half) slot.
    """
    a = np.full(256, -1)
    b = np.full(128, -1)
    c = np.full(128, -1)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for r in range(4):
            for h in range(2):
                a[(g + 8 * (r & 1)) * 16 + 2 * t + 8 * (r >> 1) + h] = (lane * 4 + r) * 2 + h
        for r in range(2):
            for h in range(2):
                b[(2 * t + 8 * r + h) * 8 + g] = (lane * 2 + r) * 2 + h
        for e in range(4):
            c[(g + 8 * (e >> 1)) * 8 + 2 * t + (e & 1)] = lane * 4 + e
    for m in (a, b, c):  # every matrix element comes from exactly one slot
        assert sorted(m) == list(range(m.size))
    return a, b, c, np.argsort(c)


A_FROM_FRAG, B_FROM_FRAG, C_FROM_FRAG, FRAG_FROM_C = _fragment_maps()
assert np.little_endian  # a .b32 register viewed as two 16-bit halves: low half first


def _halves(T, regs):
    """(..., 32, R) uint32 -> (..., 32 * R * 2) floats in (lane, reg, half) order, half 0 = low 16 bits."""
    regs = np.ascontiguousarray(regs, np.uint32)
    return T.to_float(regs.view(np.uint16)).reshape(regs.shape[:-2] + (-1,))


def mma_16816(T, c, a, b0, b1):
    """``mma.sync.aligned.m16n8k16.row.col.f32.T.T.f32`` (du:95-112); arrays end in the lane axis (32).

    ``a`` (..., 32, 4) and ``b0``, ``b1`` (..., 32) are .b32 registers, ``c`` (..., 32, 4) fp32.
    """
    A = _halves(T, a)[..., A_FROM_FRAG].reshape(a.shape[:-2] + (16, 16)).astype(np.float64)
    B = _halves(T, np.stack([b0, b1], axis=-1))[..., B_FROM_FRAG].reshape(b0.shape[:-1] + (16, 8))
    C = np.asarray(c, np.float32).reshape(c.shape[:-2] + (128,))[..., C_FROM_FRAG].reshape(c.shape[:-2] + (16, 8))
    D = (A @ B + C).astype(np.float32)
    return D.reshape(D.shape[:-2] + (128,))[..., FRAG_FROM_C].reshape(D.shape[:-2] + (32, 4))


# ---------------------------------------------------------------------------------------------------
# The body kernel and the pieces it shares with the Winograd kernel (cuh:81-292), the launcher (cuh:305-363).
# ---------------------------------------------------------------------------------------------------
def swz(row, j):
    """cuh:82-84."""
    row = np.asarray(row, np.int64)
    return row * ROW_BYTES + ((np.asarray(j, np.int64) ^ (row & 7)) << 4)


def tile_coord(tile_h, tile, tiles_x, tiles_y):
    """cuh:90-95 -> (b, y0, x0)."""
    tx = tile % tiles_x
    rest = tile // tiles_x
    return rest // tiles_y, (rest % tiles_y) * tile_h, tx * TILE_W


def load_halo(K: BodyTile, cta: Cta, dst, g_in: Global, tc, H, W):
    """cuh:98-114."""
    b, y0, x0 = tc
    img = np.int64(b) * H * W * KC  # cuh:101
    tid = np.arange(K.threads)
    i = strided_loop(tid, K.halo_pix * CHUNKS, K.threads)  # cuh:102
    p = i >> 3  # cuh:103
    j = i & 7  # cuh:104
    hy = p // K.halo_w  # cuh:105
    hx = p - hy * K.halo_w  # cuh:106
    y = y0 - 1 + hy  # cuh:107
    x = x0 - 1 + hx  # cuh:108
    inside = unsigned_lt(y, H) & unsigned_lt(x, W)  # cuh:109-110
    src = np.where(inside, img + (y.astype(np.int64) * W + x) * KC + j * 8, 0)  # cuh:111 (`in` when outside)
    cta.cp_async_16(dst + swz(p, j), g_in, src, inside)  # cuh:112


def load_weights(cta: Cta, smem_w, g_w: Global, rows, threads):
    """cuh:120-127 (``load_weights``): ``rows`` rows of 64 values into swizzled shared rows, no commit."""
    i = strided_loop(np.arange(threads), rows * CHUNKS, threads)  # cuh:122
    row = i >> 3  # cuh:123
    j = i & 7  # cuh:124
    cta.cp_async_16(smem_w + swz(row, j), g_w, row * KC + j * 8, True)  # cuh:125


def load_bias(g_bias: Global, n0, ni_n):
    """cuh:130-137 (``load_bias``): ``bias_r[..., ni, e] = bias[n0 + 8 ni + e]``, shape n0.shape + (NI, 2)."""
    n = np.asarray(n0)[..., None] + np.arange(ni_n) * 8
    return np.stack([g_bias.load(n), g_bias.load(n + 1)], axis=-1).astype(np.float32)


def halo_prologue(K, cta: Cta, smem_halo, g_in: Global, H, W, tiles_x, tiles_y, num_tiles, block_idx, grid_dim):
    """cuh:141-152 (``halo_prologue``)."""
    for s in range(K.stages - 1):  # cuh:145
        tile = block_idx + s * grid_dim  # cuh:146
        if tile < num_tiles:  # cuh:147
            load_halo(K, cta, smem_halo + s * K.stage_bytes, g_in, tile_coord(K.tile_h, tile, tiles_x, tiles_y), H, W)
        cta.commit()  # cuh:150


def halo_next(K, cta: Cta, smem_halo, g_in: Global, tile, it, H, W, tiles_x, tiles_y, num_tiles, grid_dim,
              async_proxy=False):  # fmt: skip
    """cuh:159-174 (``halo_next``): prefetch, wait, (``async_proxy``: fence.proxy.async,) barrier; returns this
    tile's halo stage."""
    nxt = tile + (K.stages - 1) * grid_dim  # cuh:164
    if nxt < num_tiles:  # cuh:165-168
        dst = smem_halo + ((it + K.stages - 1) % K.stages) * K.stage_bytes
        load_halo(K, cta, dst, g_in, tile_coord(K.tile_h, nxt, tiles_x, tiles_y), H, W)
    cta.commit()  # cuh:169
    cta.wait_group(K.stages - 1)  # cuh:170
    if async_proxy:
        cta.fence_proxy_async()
    cta.syncthreads()  # cuh:172
    return smem_halo + (it % K.stages) * K.stage_bytes  # cuh:173


def store_relu2(T, g_out: Global, dst, live, v0, v1, bias):
    """cuh:177-180 (``store_relu2``) where ``live``: two adjacent channels + ``bias[..., 0/1]``, ReLU,
    rounded to T, one 4-byte store."""
    word = pack2(T, relu_keep_nan(v0 + bias[..., 0]), relu_keep_nan(v1 + bias[..., 1]))
    lo = (word & 0xFFFF).astype(np.uint16)
    hi = (word >> 16).astype(np.uint16)
    d = np.broadcast_to(dst, live.shape)[live]
    g_out.store(d, np.stack([lo[live], hi[live]], axis=-1), n=2, align_bytes=4)


def launch_tiles(K, kernel_cta, T, x_bits, w_bits, bias, resident_ctas, eager, g_out=None, **kernel_kw):
    """cuh:305-355 (``persistent_grid``, ``launch_persistent``) with ``resident_ctas`` standing for ``sms * per_sm``; runs
    ``kernel_cta`` for every CTA (they are independent: disjoint outputs, read-only inputs).

    ``x_bits`` (N, H, W, 64) and ``w_bits`` (the packed layer) are uint16 patterns of ``T``; ``bias`` fp32 (64,).
    Returns the output bit patterns (N, H, W, 64) (NaN-poisoned where never written) and the write counts;
    with ``g_out`` (another output, e.g. the fused tail's partial sums) its array and write counts, (N, H, W, -1),
    and ``kernel_kw`` for ``kernel_cta``.
    """
    if x_bits.ndim == 3:  # a fused head's fp32 Y plane (N, H, W)
        n, h, w_ = x_bits.shape
        g_in = Global("y", np.asarray(x_bits, np.float32))
    else:
        n, h, w_, c = x_bits.shape
        assert c == KC
        g_in = Global("in", x_bits.astype(np.uint16))
    g_out = g_out or Global("out", np.full((n, h, w_, KC), T.poison, np.uint16))
    g_w = Global("w", w_bits.astype(np.uint16))
    g_bias = Global("bias", np.asarray(bias, np.float32))
    tile_w = getattr(K, "tile_w", TILE_W)
    tiles_x = (w_ + tile_w - 1) // tile_w  # cuh:335
    tiles_y = (h + K.tile_h - 1) // K.tile_h  # cuh:336
    num_tiles = n * tiles_x * tiles_y  # cuh:337-342
    assert num_tiles <= 2**31 - 1
    grid = num_tiles if num_tiles < resident_ctas else resident_ctas  # cuh:343
    for block_idx in range(grid):  # cuh:351
        kernel_cta(K, T, g_in, g_out, g_w, g_bias, h, w_, tiles_x, tiles_y, num_tiles, block_idx, grid, eager,
                   **kernel_kw)  # fmt: skip
    shape = (n, h, w_, -1)
    return g_out.a.reshape(shape), g_out.writes.reshape(shape)


def body_kernel_cta(K, T, g_in, g_out, g_w, g_bias, H, W, tiles_x, tiles_y, num_tiles, block_idx, grid_dim, eager):
    """One CTA of ``conv3x3_body_kernel`` (cuh:182-292); warps are an array axis, lanes the last axis."""
    tile_h = K.tile_h  # cuh:187
    nthreads = K.threads  # cuh:188
    ni_n, ncols = K.ni, K.ncols  # cuh:189-190
    cta = Cta(K.smem_bytes, T.poison, eager)  # cuh:191
    smem_w = 0  # cuh:192 (offsets relative to the 128-byte aligned dynamic shared memory)
    smem_halo = smem_w + WEIGHT_BYTES  # cuh:193

    nwarps = nthreads // 32
    warp = np.arange(nwarps)[:, None]  # cuh:196 (threadIdx.x >> 5), shape (warps, 1)
    lane = LANE[None, :]  # cuh:195, shape (1, 32)
    warp_m = warp // K.warps_n  # cuh:197
    warp_n = warp % K.warps_n  # cuh:198
    g = lane >> 2  # cuh:199
    t = lane & 3  # cuh:200
    load_weights(cta, smem_w, g_w, TAPS * KC, nthreads)  # cuh:203: weights, cp.async group 0
    cta.commit()  # cuh:204
    bias_r = load_bias(g_bias, warp_n * ncols + 2 * t, ni_n)  # cuh:207-208, (warps, 32, NI, 2)
    halo_prologue(K, cta, smem_halo, g_in, H, W, tiles_x, tiles_y, num_tiles, block_idx, grid_dim)  # cuh:211

    a_row = lane & 15  # cuh:216
    a_khalf = lane >> 4  # cuh:217
    b_n = (lane & 7) + ((lane >> 4) << 3)  # cuh:222
    b_khalf = (lane >> 3) & 1  # cuh:223

    mi = np.arange(K.mi)[None, :, None]  # the unrolled mi loops as an axis: (1, MI, 1)
    np_ = np.arange(ni_n // 2)[None, :, None]  # the unrolled np loop: (1, NI/2, 1)
    it = 0  # cuh:225
    tile = block_idx
    while tile < num_tiles:  # cuh:226
        halo = halo_next(K, cta, smem_halo, g_in, tile, it, H, W, tiles_x, tiles_y, num_tiles, grid_dim)  # cuh:229
        acc = np.zeros((nwarps, K.mi, ni_n, 32, 4), np.float32)  # cuh:230-236
        for tap in range(TAPS):  # cuh:239
            ky = tap // 3  # cuh:240
            kx = tap % 3  # cuh:241
            for kk in range(KC // 16):  # cuh:243
                p = (warp_m[:, None] * K.mi + mi + ky) * K.halo_w + a_row + kx  # cuh:248, (warps, MI, 32)
                a = cta.ldmatrix_x4(halo + swz(p, kk * 2 + a_khalf))  # cuh:249, (warps, MI, 32, 4)
                n = warp_n[:, None] * ncols + np_ * 16 + b_n  # cuh:254, (warps, NI/2, 32)
                r = cta.ldmatrix_x4(smem_w + swz(tap * KC + n, kk * 2 + b_khalf))  # cuh:256
                b = np.empty((nwarps, ni_n, 32, 2), np.uint32)
                b[:, 0::2, :, 0] = r[..., 0]  # cuh:257
                b[:, 0::2, :, 1] = r[..., 1]  # cuh:258
                b[:, 1::2, :, 0] = r[..., 2]  # cuh:259
                b[:, 1::2, :, 1] = r[..., 3]  # cuh:260
                # cuh:263-265: acc[mi][ni] = mma(acc[mi][ni], a[mi], b[ni][0], b[ni][1])
                acc = mma_16816(T, acc, a[:, :, None], b[:, None, :, :, 0], b[:, None, :, :, 1])
        cta.syncthreads()  # cuh:269

        tb, ty0, tx0 = tile_coord(tile_h, tile, tiles_x, tiles_y)  # cuh:273
        for m in range(K.mi):  # cuh:275
            y = ty0 + warp_m * K.mi + m  # cuh:276, (warps, 1)
            for half in range(2):  # cuh:279
                x = tx0 + g + 8 * half  # cuh:280, (1, 32)
                live = (y < H) & (x < W)  # cuh:277 and cuh:281 (`continue`)
                dst = ((np.int64(tb) * H + y) * W + x) * KC + warp_n * ncols + 2 * t  # cuh:282
                for k in range(ni_n):  # cuh:284
                    v0, v1 = acc[:, m, k, :, 2 * half + 0], acc[:, m, k, :, 2 * half + 1]
                    store_relu2(T, g_out, dst + k * 8, live, v0, v1, bias_r[:, :, k])  # cuh:285
        tile += grid_dim  # cuh:226
        it += 1
    cta.exit()  # cuh:291


def launch_body(variant, T, x_bits, w_bits, bias, *, resident_ctas=132, eager=False):
    """cuh:357-362 -> :func:`launch_tiles`; ``w_bits`` (9, 64, 64)."""
    assert w_bits.shape == (TAPS, KC, KC)
    return launch_tiles(BodyTile(*variant), body_kernel_cta, T, x_bits, w_bits, bias, resident_ctas, eager)


# ---------------------------------------------------------------------------------------------------
# The Winograd F(2x2, 3x3) body kernel (``wb:NNN`` = csrc/winograd_body.cuh) and its launcher.
# ---------------------------------------------------------------------------------------------------
WINO_POS = 16  # wb:40
WINO_WEIGHT_BYTES = WINO_POS * KC * ROW_BYTES  # wb:41


def wino_variants_from_source(path: Path = CSRC / "winograd_body.cuh") -> list[int]:
    """The STAGES of each ``X(S)`` in ``#define VDSR_WINO_VARIANTS(X)``."""
    line = next(s for s in path.read_text().splitlines() if s.startswith("#define VDSR_WINO_VARIANTS(X)"))
    return [int(v) for v in re.findall(r"X\(\s*(\d+)\s*\)", re.sub(r"/\*.*?\*/", "", line))]


@dataclass(frozen=True)
class WinoTile:
    """wb:43-60 (duck-types BodyTile for load_halo)."""

    stages: int
    threads = 256  # wb:46
    tile_h = 8  # wb:48
    halo_h = tile_h + 2  # wb:49
    halo_w = TILE_W + 2  # wb:50
    halo_pix = halo_h * halo_w  # wb:51
    stage_bytes = halo_pix * ROW_BYTES  # wb:52
    wtiles_x = TILE_W // 2  # wb:53
    wtiles = (tile_h // 2) * wtiles_x  # wb:54
    v_bytes = 4 * wtiles * ROW_BYTES  # wb:55
    smem_bytes = property(lambda s: WINO_WEIGHT_BYTES + s.stages * s.stage_bytes + 2 * s.v_bytes)  # wb:56


def pair_op(T, a, b, sign):
    """``Pair<T>::add`` / ``sub`` (wb:62-86): both 16-bit halves ``a + sign * b``, rounded to T."""
    alo, ahi = unpack2(T, a)
    blo, bhi = unpack2(T, b)
    lo = alo.astype(np.float64) + sign * blo.astype(np.float64)
    hi = ahi.astype(np.float64) + sign * bhi.astype(np.float64)
    return pack2(T, lo.astype(np.float32), hi.astype(np.float32))


def bt_row(T, xi, v):
    """wb:99-105: row xi of B^T applied to v[0..3]."""
    if xi == 0:
        return pair_op(T, v[0], v[2], -1)
    if xi == 1:
        return pair_op(T, v[1], v[2], +1)
    if xi == 2:
        return pair_op(T, v[2], v[1], -1)
    return pair_op(T, v[1], v[3], -1)


def pair_addr(row, cp):
    """wb:108."""
    return swz(row, np.asarray(cp, np.int64) >> 2) + ((np.asarray(cp, np.int64) & 3) << 2)


def transform_row(K: WinoTile, T, cta: Cta, xi, halo, vbuf):
    """wb:112-134 for all threads; the unrolled r loop is an axis: items (4, warps, 32)."""
    a0 = 2 if xi == 2 else (0 if xi == 0 else 1)  # wb:114
    a1 = 2 if xi == 0 else (2 if xi == 1 else (1 if xi == 2 else 3))  # wb:115
    tid = np.arange(K.threads).reshape(K.threads // 32, 32)
    i = tid[None] + np.arange(4)[:, None, None] * K.threads  # wb:118
    wt = i >> 5  # wb:119
    cp = i & 31  # wb:120
    p0 = (2 * (wt // K.wtiles_x)) * K.halo_w + 2 * (wt % K.wtiles_x)  # wb:121
    row = []
    for b in range(4):  # wb:124
        d0 = cta.lds32(halo + pair_addr(p0 + a0 * K.halo_w + b, cp))  # wb:125
        d1 = cta.lds32(halo + pair_addr(p0 + a1 * K.halo_w + b, cp))  # wb:126
        row.append(pair_op(T, d0, d1, +1 if xi == 1 else -1))  # wb:127
    for nu in range(4):  # wb:129-132
        cta.sts32(vbuf + pair_addr(nu * K.wtiles + wt, cp), bt_row(T, nu, row))


def winograd_kernel_cta(K, T, g_in, g_out, g_u, g_bias, H, W, tiles_x, tiles_y, num_tiles, block_idx, grid_dim, eager):
    """One CTA of ``conv3x3_winograd_kernel`` (wb:136-263); warps are an array axis, lanes the last."""
    tile_h = K.tile_h  # wb:141
    cta = Cta(K.smem_bytes, T.poison, eager)  # wb:142
    smem_u = 0  # wb:143
    smem_halo = smem_u + WINO_WEIGHT_BYTES  # wb:144
    smem_v = smem_halo + K.stages * K.stage_bytes  # wb:145
    nwarps = K.threads // 32
    warp = np.arange(nwarps)[:, None]  # wb:148, (warps, 1)
    lane = LANE[None, :]  # wb:147, (1, 32)
    warp_m = warp >> 2  # wb:149
    warp_n = warp & 3  # wb:150
    g = lane >> 2  # wb:151
    t = lane & 3  # wb:152

    load_weights(cta, smem_u, g_u, WINO_POS * KC, K.threads)  # wb:155
    cta.commit()  # wb:156
    bias_r = load_bias(g_bias, warp_n * 16 + 2 * t, 2)  # wb:158-159, (warps, 32, 2, 2)
    halo_prologue(K, cta, smem_halo, g_in, H, W, tiles_x, tiles_y, num_tiles, block_idx, grid_dim)  # wb:162

    a_row = warp_m * 16 + (lane & 15)  # wb:166
    a_khalf = lane >> 4  # wb:167
    b_n = warp_n * 16 + (lane & 7) + ((lane >> 4) << 3)  # wb:168
    b_khalf = (lane >> 3) & 1  # wb:169

    it = 0  # wb:171
    tile = block_idx
    while tile < num_tiles:  # wb:172
        halo = halo_next(K, cta, smem_halo, g_in, tile, it, H, W, tiles_x, tiles_y, num_tiles, grid_dim)  # wb:175

        y = np.zeros((2, 2, 2, nwarps, 32, 4), np.float32)  # wb:177-185: [i][j][ni][warp][lane][e]
        for xi in range(4):  # wb:188
            vbuf = smem_v + (xi & 1) * K.v_bytes  # wb:189
            transform_row(K, T, cta, xi, halo, vbuf)  # wb:190-193
            cta.syncthreads()  # wb:194
            m = np.zeros((4, 2, nwarps, 32, 4), np.float32)  # wb:196-202
            for nu in range(4):  # wb:204
                for kk in range(KC // 16):  # wb:206
                    a = cta.ldmatrix_x4(vbuf + swz(nu * K.wtiles + a_row, kk * 2 + a_khalf))  # wb:208
                    b = cta.ldmatrix_x4(smem_u + swz((xi * 4 + nu) * KC + b_n, kk * 2 + b_khalf))  # wb:210
                    m[nu, 0] = mma_16816(T, m[nu, 0], a, b[..., 0], b[..., 1])  # wb:211
                    m[nu, 1] = mma_16816(T, m[nu, 1], a, b[..., 2], b[..., 3])  # wb:212
            ma0 = (m[0] + m[1]).astype(np.float32) + m[2]  # wb:221 (fp32, left to right)
            ma1 = (m[1] - m[2]).astype(np.float32) - m[3]  # wb:222
            if xi < 3:  # wb:223-226
                y[0, 0] += ma0
                y[0, 1] += ma1
            if xi == 1:  # wb:227-229
                y[1, 0] += ma0
                y[1, 1] += ma1
            elif xi >= 2:  # wb:230-232
                y[1, 0] -= ma0
                y[1, 1] -= ma1

        tb, ty0, tx0 = tile_coord(tile_h, tile, tiles_x, tiles_y)  # wb:241
        for half in range(2):  # wb:243
            wt = warp_m * 16 + g + 8 * half  # wb:244, (warps, 32)
            for i_ in range(2):  # wb:246
                py = ty0 + 2 * (wt // K.wtiles_x) + i_  # wb:247
                for j_ in range(2):  # wb:250
                    px = tx0 + 2 * (wt % K.wtiles_x) + j_  # wb:251
                    live = (py < H) & (px < W)  # wb:248, wb:252 (`continue`)
                    dst = ((np.int64(tb) * H + py) * W + px) * KC + warp_n * 16 + 2 * t  # wb:253
                    for k in range(2):  # wb:255
                        v0, v1 = y[i_, j_, k, :, :, 2 * half + 0], y[i_, j_, k, :, :, 2 * half + 1]
                        store_relu2(T, g_out, dst + k * 8, live, v0, v1, bias_r[:, :, k])  # wb:256
        tile += grid_dim  # wb:172
        it += 1
    cta.exit()  # wb:262


def launch_winograd(stages, T, x_bits, u_bits, bias, *, resident_ctas=132, eager=False):
    """wb:272-276 -> :func:`launch_tiles`; ``u_bits`` (16, 64, 64)."""
    assert u_bits.shape == (WINO_POS, KC, KC)
    return launch_tiles(WinoTile(stages), winograd_kernel_cta, T, x_bits, u_bits, bias, resident_ctas, eager)


# ---------------------------------------------------------------------------------------------------
# The wgmma body kernel (``gb:NNN`` = csrc/wgmma_body.cuh) and the wgmma instructions (du:114-246).
# ---------------------------------------------------------------------------------------------------
def wgmma_variants_from_source(path: Path = CSRC / "wgmma_body.cuh") -> list[tuple[int, bool]]:
    """The (stages, row reuse) of ``VDSR_WGMMA_VARIANTS`` (gb:155-157)."""
    lines = path.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("#define VDSR_WGMMA_VARIANTS(X)"))
    body = []
    while lines[i].rstrip().endswith("\\"):
        i += 1
        body.append(re.sub(r"/\*.*?\*/", "", lines[i]))
    return [(int(a), b == "true") for a, b in re.findall(r"X\(\s*(\d+)\s*,\s*(true|false)\s*\)", "\n".join(body))]


@dataclass(frozen=True)
class WgmmaTile:
    """gb:39-59."""

    stages: int
    row_reuse: bool
    threads: int = 256  # gb:42
    tile_h: int = 16  # gb:46
    halo_w: int = TILE_W + 2  # gb:49
    align: int = 1024  # gb:52

    a_loads = property(lambda s: 4 if s.row_reuse else 2)  # gb:45
    halo_h = property(lambda s: s.tile_h + 2)  # gb:48
    halo_pix = property(lambda s: s.halo_h * s.halo_w)  # gb:50
    stage_bytes = property(lambda s: s.halo_pix * ROW_BYTES)  # gb:51
    smem_bytes = property(lambda s: s.align + WEIGHT_BYTES + s.stages * s.stage_bytes)  # gb:53
    groups = property(lambda s: (3 if s.row_reuse else TAPS) * (KC // 16))  # gb:54

    def row(self, wg, r, mb):
        """gb:56-58."""
        return 8 * wg + (2 * r + mb if self.row_reuse else 4 * mb + r)


def wgmma_desc_sw128(start):
    """du:153-156: start >> 4 in bits 0-13, LBO 16 bytes (encoded 1), SBO 1024 bytes, swizzle 1 (128-byte)."""
    return ((start & 0x3FFFF) >> 4) | (1 << 16) | ((1024 >> 4) << 32) | (1 << 62)


def wgmma_m64n64k16(T, d, a, b):
    """du:224-243 (``wgmma.mma_async ... m64n64k16.f32``, A in registers) for one warpgroup: ``a`` (4 warps,
    32, 4) .b32 registers, ``b`` (16, 64) from :func:`wgmma_kmajor_from_smem`, ``d`` (4, 32, 32) fp32.  Warp w:
    rows 16w .. 16w+15 in the mma.m16n8k16 A layout; d[..., 4i:4i+4] the m16n8 C fragment of columns
    8i .. 8i+7.  The product is formed in float64 and rounded to fp32 once per instruction."""
    A = _halves(T, a)[..., A_FROM_FRAG].reshape(64, 16).astype(np.float64)  # warp-major rows
    frag = np.asarray(d, np.float32).reshape(4, 32, 8, 4).transpose(0, 2, 1, 3).reshape(4, 8, 128)
    C = frag[..., C_FROM_FRAG].reshape(4, 8, 16, 8).transpose(0, 2, 1, 3).reshape(64, 64)
    D = (A @ b + C).astype(np.float32)
    back = D.reshape(4, 16, 8, 8).transpose(0, 2, 1, 3).reshape(4, 8, 128)[..., FRAG_FROM_C]
    return back.reshape(4, 8, 32, 4).transpose(0, 2, 1, 3).reshape(4, 32, 32)


class WgmmaGroups:
    """One warpgroup's asynchronous wgmma state (du:114-135, du:194-211): which register sets pending wgmmas read or
    write, which registers were written since the last ``wgmma.fence``, and (with ``cta``) which shared chunks
    pending wgmmas read: a write into them raises (:meth:`Cta.cp_async_16`), and a read ends when its group
    retires -- visible to other threads only after the next barrier, like any read."""

    def __init__(self, cta: Cta | None = None):
        self.issued: list = []  # register sets of the wgmmas issued since the last commit
        self.pending: list = []  # committed groups not yet known complete, oldest first
        self.unfenced: set = set()  # register sets written since the last fence
        self.cta = cta
        self.smem_issued: list = []  # shared chunks read by the wgmmas issued since the last commit
        self.smem_pending: list = []  # per pending group
        if cta is not None:
            cta.async_readers.append(self)

    def smem(self, chunks):
        """The next wgmma reads these shared chunks (asynchronously, until its group retires)."""
        self.smem_issued.append(np.asarray(chunks, np.int64).ravel())

    def reads(self, chunks) -> bool:
        live = self.smem_pending + ([np.concatenate(self.smem_issued)] if self.smem_issued else [])
        return any(np.isin(chunks, c).any() for c in live)

    def write(self, regs):
        """A non-wgmma instruction writes register set ``regs`` (ldmatrix into A, zeroing an accumulator)."""
        if any(regs in grp for grp in self.pending + [self.issued]):
            raise Hazard(f"register set {regs} written while a wgmma that uses it is pending (wait_group)")
        self.unfenced.add(regs)

    def read(self, regs):
        """A non-wgmma instruction reads ``regs`` (the epilogue reading an accumulator)."""
        if any(regs in grp for grp in self.pending + [self.issued]):
            raise Hazard(f"register set {regs} read while a wgmma that writes it is pending (wait_group)")

    def fence(self):
        self.unfenced = set()

    def mma(self, *regs):
        if self.unfenced & set(regs):
            raise Hazard(f"wgmma reads registers {sorted(self.unfenced & set(regs))} written after the last wgmma.fence")
        self.issued.extend(regs)

    def commit(self):
        self.pending.append(self.issued)
        self.issued = []
        self.smem_pending.append(np.unique(np.concatenate(self.smem_issued)) if self.smem_issued else np.zeros(0, np.int64))
        self.smem_issued = []

    def wait(self, n):
        while len(self.pending) > n:
            self.pending.pop(0)
            done = self.smem_pending.pop(0)
            if self.cta is not None:
                self.cta.last_read[done] = self.cta.epoch


def wgmma_kernel_cta(K, T, g_in, g_out, g_w, g_bias, H, W, tiles_x, tiles_y, num_tiles, block_idx, grid_dim, eager,
                     smem_base=384):  # fmt: skip
    """One CTA of ``conv3x3_wgmma_kernel`` (gb:61-151) with its dynamic shared memory at ``smem_base`` (128-byte
    aligned, not 1024: the alignment slack is exercised); warps are an array axis, lanes the last axis."""
    cta = Cta(K.smem_bytes, T.poison, eager, base=smem_base)  # gb:67
    smem_w = (smem_base + K.align - 1) & ~(K.align - 1)  # gb:68
    smem_halo = smem_w + WEIGHT_BYTES  # gb:69
    warp = np.arange(8)[:, None]  # gb:72, (warps, 1)
    lane = LANE[None, :]  # gb:71
    wg = warp >> 2  # gb:73
    wr = warp & 3  # gb:74
    g = lane >> 2  # gb:75
    t = lane & 3  # gb:76
    load_weights(cta, smem_w, g_w, TAPS * KC, K.threads)  # gb:78
    cta.commit()  # gb:79
    bias_r = load_bias(g_bias, 2 * t + 0 * warp, 8)  # gb:80-81, (warps, 32, 8, 2)
    halo_prologue(K, cta, smem_halo, g_in, H, W, tiles_x, tiles_y, num_tiles, block_idx, grid_dim)  # gb:82
    a_row = lane & 15  # gb:84
    a_khalf = lane >> 4  # gb:85
    groups = [WgmmaGroups(cta), WgmmaGroups(cta)]  # per warpgroup

    it = 0  # gb:87
    tile = block_idx
    while tile < num_tiles:  # gb:88
        halo = halo_next(K, cta, smem_halo, g_in, tile, it, H, W, tiles_x, tiles_y, num_tiles, grid_dim, True)  # gb:89
        for q in groups:  # gb:91-95
            q.write("acc0"), q.write("acc1")
        acc = np.zeros((2, 2, 4, 32, 32), np.float32)  # [warpgroup][mb][warp in group][lane][32]
        for s in range(K.groups):  # gb:98
            kk = s % 4  # gb:99
            kx = s // 4 if K.row_reuse else (s // 4) % 3  # gb:100
            ky = 0 if K.row_reuse else (s // 4) // 3  # gb:101
            if s >= 2:  # gb:102
                for q in groups:
                    q.wait(1)
            a = []
            for f in range(K.a_loads):  # gb:104
                for q in groups:
                    q.write(f"a{s % 2}.{f}")
                hrow = K.row(wg, wr, 0) + f if K.row_reuse else K.row(wg, wr, f) + ky  # gb:106, (warps, 1)
                a.append(cta.ldmatrix_x4(halo + swz(hrow * K.halo_w + a_row + kx, kk * 2 + a_khalf)))  # gb:107
            for q in groups:  # gb:111
                q.fence()
            for t3 in range(3 if K.row_reuse else 1):  # gb:113
                tap_y = t3 if K.row_reuse else ky  # gb:114
                desc = wgmma_desc_sw128(smem_w + (tap_y * 3 + kx) * KC * ROW_BYTES + kk * 32)
                b = wgmma_kmajor_from_smem(cta, T, desc, 64, groups)
                for mb in range(2):  # gb:117-118
                    f = tap_y + mb if K.row_reuse else mb
                    for w_g, q in enumerate(groups):
                        q.mma(f"a{s % 2}.{f}", f"acc{mb}")
                        acc[w_g, mb] = wgmma_m64n64k16(T, acc[w_g, mb], a[f][4 * w_g : 4 * w_g + 4], b)
            for q in groups:  # gb:120
                q.commit()
        for q in groups:  # gb:124
            q.wait(0)
        cta.syncthreads()  # gb:128

        tb, ty0, tx0 = tile_coord(K.tile_h, tile, tiles_x, tiles_y)  # gb:130
        for q in groups:
            q.read("acc0"), q.read("acc1")
        acc_w = acc.transpose(0, 2, 1, 3, 4).reshape(8, 2, 32, 32)  # [warp = 4 wg + wr][mb][lane][32]
        for mb in range(2):  # gb:132
            y = ty0 + K.row(wg, wr, mb)  # gb:133, (warps, 1)
            for half in range(2):  # gb:136
                x = tx0 + g + 8 * half  # gb:137, (1, 32)
                live = (y < H) & (x < W)  # gb:134, gb:138
                dst = ((np.int64(tb) * H + y) * W + x) * KC + 2 * t  # gb:139
                for i in range(8):  # gb:141
                    v0, v1 = acc_w[:, mb, :, 4 * i + 2 * half], acc_w[:, mb, :, 4 * i + 2 * half + 1]
                    store_relu2(T, g_out, dst + i * 8, live, v0, v1, bias_r[:, :, i])  # gb:142
        tile += grid_dim  # gb:88
        it += 1
    cta.exit()  # gb:147


def launch_wgmma(variant, T, x_bits, w_bits, bias, *, resident_ctas=132, eager=False):
    """gb:190-197 -> :func:`launch_tiles`; ``variant`` = (stages, row reuse); weights packed as the direct
    kernel's, (9, 64, 64)."""
    assert w_bits.shape == (TAPS, KC, KC)
    return launch_tiles(WgmmaTile(*variant), wgmma_kernel_cta, T, x_bits, w_bits, bias, resident_ctas, eager)


# ---------------------------------------------------------------------------------------------------
# The wgmma strip kernel (``sb`` = csrc/wgmma_strip_body.cuh, cited by function): M = out channels (A =
# weights, 128-byte swizzle), N = 128 pixels of a row (B = activations, no swizzle), both by descriptor.
# ---------------------------------------------------------------------------------------------------
def wgmma_desc_interleave(start, lbo, sbo):
    """du ``wgmma_desc_interleave``: start >> 4, LBO >> 4, SBO >> 4, layout 0 (no swizzle)."""
    return ((start & 0x3FFFF) >> 4) | (((lbo >> 4) & 0x3FFF) << 16) | (((sbo >> 4) & 0x3FFF) << 32)


def wgmma_kmajor_from_smem(cta: Cta, T, desc, rows, readers=()):
    """A K-major operand (``rows`` M or N rows x 16 k) read through a descriptor, returned as (16, rows), from
    the PTX ISA's canonical layouts (CUTLASS's ``GmmaDescriptor`` comment spells them the same way), in 16-byte
    units: no swizzle ("interleave"): ``((8, m), (T, 2)) : ((1T, SBO), (1, LBO))`` -- row r of an 8-row core
    matrix at +16 r, the core matrices of the next 8 rows SBO bytes on, the second 8 k LBO bytes on; 128-byte
    swizzle: ``((8, m), (T, 2)) : ((8T, SBO), (1, T))`` -- rows 128 bytes apart, the two k halves adjacent, then
    16-byte chunk bits 4-6 XORed with address bits 7-9 (start in the first row of a 1024-byte atom).  The
    descriptor's base offset field (bits 49-51) is not modelled: it must be 0 (a variant that relied on it
    computed wrong results on the H200).  Reads go through the async proxy (:meth:`Cta.check_async_read`) and
    last until the group of the wgmma of each of ``readers`` (:class:`WgmmaGroups`) retires."""
    start = (desc & 0x3FFF) << 4
    lbo = ((desc >> 16) & 0x3FFF) << 4
    sbo = ((desc >> 32) & 0x3FFF) << 4
    layout = desc >> 62
    assert layout in (0, 1), "only no swizzle and the 128-byte swizzle"
    assert (desc >> 49) & 7 == 0, "a descriptor base offset (bits 49-51): not modelled"
    n = np.arange(rows)[None, :]
    k = np.arange(16)[:, None]
    if layout == 1:
        if start % 1024 >= 128:
            raise Hazard("wgmma: descriptor start address outside the first row of a 1024-byte swizzle atom")
        byte = start + (n // 8) * sbo + (n % 8) * 128 + 2 * k
        byte = byte ^ (((byte >> 7) & 7) << 4)
    else:
        byte = start + (n // 8) * sbo + (n % 8) * 16 + (k // 8) * lbo + (k % 8) * 2
    rel = byte - cta.base
    if rel.min() < 0 or rel.max() + 2 > cta.h.size * 2:
        raise Hazard("wgmma: operand outside shared memory")
    chunks = np.unique(rel // 16)
    cta.check_async_read(chunks, "wgmma")
    for q in readers:
        q.smem(chunks)
    return T.to_float(cta.h[rel // 2]).astype(np.float64)


def _d_index(n):
    """(row, col) of D element e of lane (g, t) of warp w for a warpgroup's m64nNk16 accumulators (PTX ISA
    "wgmma D fragment"): warp w rows 16w .. 16w+15; d[4i .. 4i+3] = C[g][8i+2t], C[g][8i+2t+1], C[g+8][8i+2t],
    C[g+8][8i+2t+1].  Arrays (4, 32, n // 2)."""
    w = np.arange(4)[:, None, None]
    lane = LANE[None, :, None]
    e = np.arange(n // 2)[None, None, :]
    return 16 * w + (lane >> 2) + 8 * ((e >> 1) & 1), 8 * (e >> 2) + 2 * (lane & 3) + (e & 1)


def wgmma_ss(T, d, a, b):
    """du ``wgmma_m64n128k16_ss`` (and any N) for one warpgroup: ``a`` (16, 64) and ``b`` (16, N) from
    :func:`wgmma_kmajor_from_smem`, ``d`` (4, 32, N / 2) fp32; D = A B + D, formed in float64, rounded to fp32 once."""
    rows, cols = _d_index(b.shape[1])
    C = np.zeros((64, b.shape[1]), np.float32)
    C[rows, cols] = d
    D = (a.T @ b + C).astype(np.float32)
    return D[rows, cols]


def strip_variants_from_source(path: Path = CSRC / "wgmma_strip_body.cuh") -> list[tuple[bool, int, bool]]:
    """The (LOADS_FIRST, SPLIT, RS) schedules of ``VDSR_STRIP_VARIANTS`` (SPLIT: wgmma groups per item; RS: the
    weights in registers, 64-pixel strips)."""
    text = path.read_text()
    body = text[text.index("#define VDSR_STRIP_VARIANTS(X)") :].split("\n\n")[0]
    body = re.sub(r"/\*.*?\*/", "", body)
    found = re.findall(r"X\(\s*(true|false)\s*,\s*(\d+)\s*,\s*(true|false)\s*\)", body)
    return [(a == "true", int(b), c == "true") for a, b, c in found]


@dataclass(frozen=True)
class StripTile:
    """sb ``StripTile<RS>``, with a variant's schedule flags (sb ``strip_step``)."""

    loads_first: bool = False
    split: int = 1  # SPLIT: wgmma groups per item
    rs: bool = False  # RS: the weights (A) in registers, 64-pixel strips
    spread: bool = False  # SPREAD: TAIL's partial sums in every epilogue part, or HEAD's rows in the last two
    tail: bool = False  # the kernel's TAIL (the last body layer of a fused tail)
    head: bool = False  # the kernel's HEAD (the first body layer of a fused head: halo rows from the Y plane)
    threads: int = 256
    tile_h: int = 2
    ring: int = 6

    loaders = property(lambda s: s.threads)  # sb kLoaders: the threads that copy an item's rows
    tile_w = property(lambda s: 64 if s.rs else 128)
    align = property(lambda s: 128 if s.rs else 1024)
    weight_smem = property(lambda s: 0 if s.rs else WEIGHT_BYTES)
    halo_w = property(lambda s: s.tile_w + 2)
    plane = property(lambda s: s.halo_w * 16)
    halo_row_bytes = property(lambda s: CHUNKS * s.plane)
    staging_bytes = property(lambda s: s.tile_w * ROW_BYTES)
    tail_bytes = property(lambda s: KC * TAIL_STRIDE * 4 if s.tail else 0)  # sb kTailBytes, StripLaunch<TAIL>
    zstage_bytes = property(lambda s: s.tile_w * 9 * 4)  # sb kZStageBytes: a warpgroup's [pixel][9] partials
    head_bytes = property(lambda s: CHUNKS * HEAD_STRIDE * 4 if s.head else 0)  # sb kHeadBytes
    smem_bytes = property(
        lambda s: s.align + s.weight_smem + s.ring * s.halo_row_bytes + 2 * s.staging_bytes + s.tail_bytes
        + s.head_bytes + (2 * s.zstage_bytes if s.tail and s.spread else 0)
    )


TAIL_STRIDE = 12  # sb kTailStride: floats per channel row of the tail weights in shared memory
HEAD_STRIDE = 84  # sb kHeadStride: floats per 16-byte channel chunk of the head weights ([tap][8], 8 biases, pad)


def strip_load_rows(K: StripTile, cta: Cta, ring, g_in: Global, b, x0, h0, rows, H, W):
    """sb ``strip_load_rows`` (by the ``K.loaders`` threads)."""
    img = np.int64(b) * H * W * KC
    i = strided_loop(np.arange(K.loaders), rows * K.halo_w * CHUNKS, K.loaders)
    j = i & 7
    p = i >> 3
    r = p // K.halo_w
    px = p - r * K.halo_w
    h = h0 + r
    y = h - 1
    x = x0 - 1 + px
    inside = unsigned_lt(y, H) & unsigned_lt(x, W)
    src = np.where(inside, img + (y.astype(np.int64) * W + x) * KC + j * 8, 0)
    cta.cp_async_16(ring + (h % K.ring) * K.halo_row_bytes + j * K.plane + px * 16, g_in, src, inside)


def strip_store_head_weights(cta: Cta, hw, g_hw: Global, g_hb: Global):
    """sb ``strip_store_head_weights``: chunk j's [tap][8] weights, its 8 biases and 4 zeros per HEAD_STRIDE floats,
    st.shared.f32 by every thread in turn."""
    for r in range(-(-CHUNKS * HEAD_STRIDE // 256)):
        i = np.arange(256).reshape(8, 32) + r * 256
        active = i < CHUNKS * HEAD_STRIDE
        j, k = i // HEAD_STRIDE, i % HEAD_STRIDE
        w_on, b_on = active & (k < TAPS * 8), active & (k >= TAPS * 8) & (k < TAPS * 8 + 8)
        v = np.zeros(i.shape, np.float32)
        v[w_on] = g_hw.load((8 * j + k % 8)[w_on] * TAPS + (k // 8)[w_on])
        v[b_on] = g_hb.load((8 * j + k - TAPS * 8)[b_on])
        cta.sts32(hw + 4 * i, v.view(np.uint32), active)


def strip_head_rows(K: StripTile, T, cta: Cta, ring, hw, g_y: Global, b, x0, h0, rows, H, W, part=0, parts=1):
    """sb ``strip_head_rows<PARTS>``: the halo rows computed from the fp32 Y plane (unit i: chunk i // (rows halo_w)
    of pixel i % (rows halo_w); units ``part`` U / ``parts`` .. of the U), each thread's loop iterations in turn.  A quarter-warp whose 8 pixels straddle two halo rows
    may store 2-way bank-conflicted (the plane's 130 chunks are 2 mod 8): rare, a wavefront more, not a hazard."""
    img = np.int64(b) * H * W
    pixels = rows * K.halo_w
    tid = np.arange(K.threads).reshape(-1, 32)
    units = pixels * CHUNKS
    lo, hi = units * part // parts, units * (part + 1) // parts
    for base in range(lo, hi, K.threads):
        i = base + tid
        active = i < hi
        j = i // pixels
        p = i - j * pixels
        r = p // K.halo_w
        px = p - r * K.halo_w
        h = h0 + r
        yy, xx = h - 1, x0 - 1 + px
        inside = active & unsigned_lt(yy, H) & unsigned_lt(xx, W)
        wj = hw + j * HEAD_STRIDE * 4
        acc = np.concatenate([cta.lds128(wj + TAPS * 32, inside), cta.lds128(wj + TAPS * 32 + 16, inside)], -1)
        acc = acc.view(np.float32)
        for tap in range(TAPS):
            sy, sx = yy + tap // 3 - 1, xx + tap % 3 - 1
            on = inside & unsigned_lt(sy, H) & unsigned_lt(sx, W)
            v = np.zeros(i.shape, np.float32)
            v[on] = g_y.load(img + sy[on].astype(np.int64) * W + sx[on])
            w = np.concatenate([cta.lds128(wj + tap * 32, inside), cta.lds128(wj + tap * 32 + 16, inside)], -1)
            acc = fmaf(w.view(np.float32), v[..., None], acc)
        out = relu_keep_nan(acc)
        packed = np.stack([pack2(T, out[..., 2 * k], out[..., 2 * k + 1]) for k in range(4)], -1)
        packed = np.where(inside[..., None], packed, np.uint32(0))
        dst = ring + (h % K.ring) * K.halo_row_bytes + j * K.plane + px * 16
        cta.sts128(dst, packed, active, quarter_banks=False)


def strip_fill_rows(K: StripTile, T, cta: Cta, ring, hw, g_in: Global, b, x0, h0, rows, H, W):
    """sb ``strip_fill_rows``: copied (:func:`strip_load_rows`) or, with ``K.head``, computed."""
    if K.head:
        strip_head_rows(K, T, cta, ring, hw, g_in, b, x0, h0, rows, H, W)
    else:
        strip_load_rows(K, cta, ring, g_in, b, x0, h0, rows, H, W)


def rs_a_matrix(T, a):
    """A (64 x 16) of a wgmma with A from registers, ``a`` (4 warps, 32, 4) .b32 in the mma.m16n8k16 A layout per warp
    (du), returned (16, 64) as :func:`wgmma_kmajor_from_smem` returns a descriptor operand."""
    return _halves(T, a)[..., A_FROM_FRAG].reshape(64, 16).astype(np.float64).T


def strip_store_tail_weights(cta: Cta, tw, g_tail: Global):
    """sb ``strip_store_tail_weights``: [9][64] -> rows of TAIL_STRIDE (zero past tap 8), st.shared.f32 by every
    thread in turn."""
    for r in range(-(-KC * TAIL_STRIDE // 256)):
        i = np.arange(256).reshape(8, 32) + r * 256
        active = i < KC * TAIL_STRIDE
        c, t = i // TAIL_STRIDE, i % TAIL_STRIDE
        v = np.where(t < TAPS, g_tail.load(np.where(active & (t < TAPS), t * KC + c, 0)), np.float32(0))
        cta.sts32(tw + 4 * i, np.asarray(v, np.float32).view(np.uint32), active)


def strip_store_tail_weights_by_tap(cta: Cta, tw, g_tail: Global):
    """sb ``strip_store_tail_weights_by_tap`` (SPREAD): [9][64] fp32 copied as they are, st.shared.f32 by every thread."""
    for r in range(-(-TAPS * KC // 256)):
        i = np.arange(256).reshape(8, 32) + r * 256
        active = i < TAPS * KC
        v = g_tail.load(np.where(active, i, 0))
        cta.sts32(tw + 4 * i, np.asarray(v, np.float32).view(np.uint32), active)


def strip_load_a(g_w: Global):
    """sb ``strip_load_a``: A fragment q (36) of out channels 16 wr + g (+8), in channels 16 kk + 2t (+1) (+8), as
    (4 warps, 32, 4) .b32 each, from the weights [tap][n][c] by 4-byte loads."""
    n = 16 * np.arange(4)[:, None] + (LANE[None, :] >> 2)  # (4, 32)
    wa = []
    for q in range(36):
        base = ((q // 4) * KC + n) * KC + 16 * (q % 4) + 2 * (LANE[None, :] & 3)  # a 16-bit element offset
        pairs = [g_w.load(o, 2).astype(np.uint32) for o in (base, base + 8 * KC, base + 8, base + 8 * KC + 8)]
        wa.append(np.stack([pr[..., 0] | (pr[..., 1] << 16) for pr in pairs], -1))
    return wa


def strip_mma(K: StripTile, T, cta: Cta, groups, acc, name, smem_w, wa, ring, h, part=0):
    """sb ``strip_mma<K, T, SPLIT, PART>`` for both warpgroups: ``acc`` (2, 4, 32, tile_w / 2) is set ``name``;
    ``h[wg]`` the halo row of warpgroup wg's tap row 0; part ``part`` of ``K.split`` (part 0 zeroes the
    accumulators); with ``K.rs`` A is ``wa[step]`` (4 warps, 32, 4), the registers "wa"."""
    if part == 0:
        for q in groups:
            q.write(name)
        acc[:] = 0.0
    for q in groups:
        q.fence()
    for step in range(36 * part // K.split, 36 * (part + 1) // K.split):
        ky, kx, kk = step // 12, (step // 4) % 3, step % 4
        if not K.rs:
            desc_a = wgmma_desc_sw128(smem_w + (ky * 3 + kx) * KC * ROW_BYTES + kk * 32)
            a = wgmma_kmajor_from_smem(cta, T, desc_a, 64, groups)
        for wg, q in enumerate(groups):
            row = ring + ((h[wg] + ky) % K.ring) * K.halo_row_bytes
            desc = wgmma_desc_interleave(row + 2 * kk * K.plane + kx * 16, K.plane, 128)
            b = wgmma_kmajor_from_smem(cta, T, desc, K.tile_w, [q])
            if K.rs:  # A from registers (du wgmma_m64n64k16 / wgmma_m64n128k16_rs): the same product as by descriptor
                q.mma("wa", name)
                acc[wg] = wgmma_ss(T, acc[wg], rs_a_matrix(T, wa[step]), b)
            else:
                q.mma(name)
                acc[wg] = wgmma_ss(T, acc[wg], a, b)
    for q in groups:
        q.commit()


def strip_epilogue(K: StripTile, T, cta: Cta, groups, acc, name, stg, g_out: Global, bias_r, b, y, x0, H, W,
                   part=0, split=1, tw=None, regions=None):  # fmt: skip
    """sb ``strip_epilogue<T, SPLIT, PART, TAIL>`` for the warpgroups of ``groups`` (both, or one): ``y[wg]`` the row,
    ``stg[wg]`` the staging tile; part ``part`` of ``split`` (the staging of its share of the pixel blocks; after the
    last part the barrier and the stores); with ``K.tail`` the stores are the tail's partial sums into ``g_out``
    (z), from the weights at ``tw``.  A warpgroup's barrier orders its accesses to ``regions[wg]`` (default: its
    staging tile; the shared memory only it uses)."""
    for q in groups:
        q.read(name)
    lane = LANE[None, None, :]
    wr = np.arange(4)[None, :, None]
    stg_ = np.asarray(stg, np.int64)[:, None, None]
    mat = lane >> 3
    pairs = K.tile_w // 16  # stmatrix x4 per row
    for i in range(2 * (pairs * part // split), 2 * (pairs * (part + 1) // split), 2):
        v = np.zeros((len(groups), 4, 32, 4), np.uint32)
        for m in range(4):
            e = 4 * (i + (m >> 1)) + 2 * (m & 1)
            bb = bias_r[..., m & 1]  # (4, 32)
            v[..., m] = pack2(T, relu_keep_nan(acc[..., e] + bb), relu_keep_nan(acc[..., e + 1] + bb))
        px = 8 * (i + (mat >> 1)) + (lane & 7)
        cta.stmatrix_x4_trans(stg_ + swz(px, 2 * wr + (mat & 1)), v)
    if K.tail and K.spread:
        for wg in range(len(groups)):
            zst = tw + K.tail_bytes + wg * K.zstage_bytes
            strip_tail_part(K, T, cta, stg[wg], zst, g_out, tw, b, y[wg], x0, H, W, part, split,
                            [(stg[wg], stg[wg] + K.staging_bytes), (zst, zst + K.zstage_bytes)])
        return
    if part + 1 < split:
        return
    regions = regions or [(lo, lo + K.staging_bytes) for lo in stg]
    for lo, hi in regions:  # named_barrier(1 + wg, 128)
        cta.named_barrier(lo, hi)
    tid = (np.arange(4)[:, None] * 32 + LANE[None, :])[None]  # threadIdx.x & 127, (1, 4 warps, 32)
    for wg in range(len(groups)):
        if y[wg] >= H:  # this warpgroup returns after the barrier
            continue
        if K.tail:
            strip_tail_partials(K, T, cta, stg[wg], g_out, tw, tid[0], b, y[wg], x0, H, W, regions[wg])
            continue
        for k in range(K.tile_w // 16):
            u = k * 128 + tid[0]  # (4 warps, 32)
            px = u >> 3
            j = u & 7
            val = cta.lds128(stg[wg] + swz(px, j))  # (4, 32, 4) uint32
            live = (x0 + px) < W
            dst = ((np.int64(b) * H + y[wg]) * W + x0 + px) * KC + j * 8
            g_out.store(dst[live], val.view(np.uint16).reshape(4, 32, 8)[live], n=8, align_bytes=16)


def strip_tail_partials(K: StripTile, T, cta: Cta, stg, g_z: Global, tw, tid, b, y, x0, H, W, region):
    """sb ``strip_epilogue``'s steps 2' and 3' (TAIL) for one warpgroup: thread ``tid`` (4 warps, 32) sums pixel
    tid's nine per-tap partials over its 64 rounded channels in the staging tile (threads past the strip's or the
    image's edge sum nothing); a barrier; each live thread stages its 9 floats at word 9 tid of the tile; a
    barrier; the row's partials go out as consecutive words by consecutive threads."""
    live = (tid < K.tile_w) & ((x0 + tid) < W)
    zs = np.zeros(tid.shape + (9,), np.float32)
    for j in range(CHUNKS):
        u = cta.lds128(stg + swz(tid, j), live)  # (4, 32, 4)
        for k in range(4):
            for c, a in zip((8 * j + 2 * k, 8 * j + 2 * k + 1), unpack2(T, u[..., k]), strict=True):  # tail_fma
                wc = tw + c * TAIL_STRIDE * 4
                w = np.concatenate([cta.lds128(np.full(tid.shape, wc + 16 * q), live) for q in range(3)], -1)
                zs = np.where(live[..., None], fmaf(a[..., None], w.view(np.float32)[..., :9], zs), zs)
    cta.named_barrier(*region)
    for t in range(9):
        cta.sts32(stg + 4 * (9 * tid + t), zs[..., t].view(np.uint32), active=live)
    cta.named_barrier(*region)
    words = 9 * min(K.tile_w, W - x0)
    row = (np.int64(b) * H + y) * W * 9 + x0 * 9
    for r in range(-(-9 * K.tile_w // 128)):
        i = r * 128 + tid  # (4 warps, 32)
        act = i < words
        v = cta.lds32(stg + 4 * i, active=act)
        g_z.store((row + i)[act], v[act].view(np.float32), n=1, align_bytes=4)


def strip_tail_part(K: StripTile, T, cta: Cta, stg, zst, g_z: Global, tw, b, y, x0, H, W, part, split, regions):
    """sb ``strip_tail_part<SPLIT, PART>`` (SPREAD) for one warpgroup: the tail's partial sums of the pixels part
    ``part`` of ``split`` staged, Q threads a pixel (lane l of warp w: pixel P0 + w (32 / Q) + l % (32 / Q), channel
    block l // (32 / Q)), tap by tap: each thread's channels in order, the Q sums by xor-shuffles over lanes 32 / Q
    apart, staged by the q = 0 lane at [pixel][9]; a barrier; the part's words go out by consecutive threads.
    ``regions`` are what the warpgroup's barriers order (its staging tile and its partials' staging)."""
    pairs = K.tile_w // 16
    p0 = 16 * (pairs * part // split)
    npix = 16 * (pairs * (part + 1) // split) - p0
    assert npix > 0 and 128 % npix == 0, "a part's pixels must share the warpgroup's 128 threads evenly"
    assert 128 // npix <= 4, "a quarter-warp phase must hold one channel block"
    q_ = 128 // npix
    per_warp = 32 // q_
    chunks_per = CHUNKS // q_
    tid = np.arange(4)[:, None] * 32 + LANE[None, :]  # (4 warps, 32)
    lane = tid & 31
    px = p0 + (tid >> 5) * per_warp + lane % per_warp
    q = lane // per_warp
    for lo, hi in regions:  # named_barrier(1 + wg, 128)
        cta.named_barrier(lo, hi)
    live = (y < H) & ((x0 + px) < W)
    u = [np.where(live[..., None], cta.lds128(stg + swz(px, q * chunks_per + jj), live), 0) for jj in range(chunks_per)]
    for t in range(TAPS):
        zt = np.zeros(tid.shape, np.float32)
        for jj in range(chunks_per):
            wrow = tw + 4 * (t * KC + 8 * (q * chunks_per + jj))
            for h2 in range(2):
                w4 = cta.lds128(wrow + 16 * h2).view(np.float32)  # (4, 32, 4): one address per phase
                for k in range(2):
                    a_lo, a_hi = unpack2(T, u[jj][..., 2 * h2 + k])
                    zt = fmaf(a_lo, w4[..., 2 * k], zt)
                    zt = fmaf(a_hi, w4[..., 2 * k + 1], zt)
        m = per_warp
        while m < 32:  # __shfl_xor_sync(zt, m)
            zt = (zt + zt[:, LANE ^ m]).astype(np.float32)
            m <<= 1
        cta.sts32(zst + 4 * (9 * px + t), zt.view(np.uint32), active=live & (q == 0))
    for lo, hi in regions:
        cta.named_barrier(lo, hi)
    if y >= H:
        return
    words = 9 * (min(p0 + npix, W - x0) - p0)
    row = (np.int64(b) * H + y) * W * 9 + (x0 + p0) * 9
    for r in range(-(-9 * npix // 128)):
        i = r * 128 + tid
        act = i < min(words, 9 * npix)
        v = cta.lds32(zst + 4 * (9 * p0 + i), active=act)
        g_z.store((row + i)[act], v[act].view(np.float32), n=1, align_bytes=4)


def strip_kernel_cta(K, T, g_in, g_out, g_w, g_bias, H, W, tiles_x, tiles_y, num_tiles, block_idx, grid_dim, eager,
                     smem_base=384, g_tail=None, g_head=None):  # fmt: skip
    """One CTA of ``conv3x3_strip_kernel`` with its dynamic shared memory at ``smem_base`` (not 1024-aligned);
    with ``K.tail``, ``g_out`` is z and ``g_tail`` the tail weights [9][64] fp32; with ``K.head``, ``g_in`` is the fp32
    Y plane and ``g_head`` the head weights [64][9] and biases [64] fp32."""
    cta = Cta(K.smem_bytes, T.poison, eager, base=smem_base)
    smem_w = (smem_base + K.align - 1) & ~(K.align - 1)
    ring = smem_w + K.weight_smem
    lane = LANE[None, :]
    wr = np.arange(4)[:, None]
    stg = [ring + K.ring * K.halo_row_bytes + wg * K.staging_bytes for wg in range(2)]
    groups = [WgmmaGroups(cta), WgmmaGroups(cta)]
    wa = None
    if K.rs:
        wa = strip_load_a(g_w)
        for q_ in groups:
            q_.write("wa")
    else:
        load_weights(cta, smem_w, g_w, TAPS * KC, K.threads)
    tw = ring + K.ring * K.halo_row_bytes + 2 * K.staging_bytes
    if K.tail and K.spread:
        strip_store_tail_weights_by_tap(cta, tw, g_tail)
    elif K.tail:
        strip_store_tail_weights(cta, tw, g_tail)
    if K.head:
        strip_store_head_weights(cta, tw, *g_head)
        cta.syncthreads()
    bias_r = np.stack([g_bias.load(16 * wr + (lane >> 2)), g_bias.load(16 * wr + (lane >> 2) + 8)], -1)
    bias_r = np.broadcast_to(bias_r.astype(np.float32), (2, 4, 32, 2))
    begin = block_idx * num_tiles // grid_dim
    end = (block_idx + 1) * num_tiles // grid_dim
    acc = {name: np.zeros((2, 4, 32, K.tile_w // 2), np.float32) for name in ("acc0", "acc1")}
    q = begin
    while q < end:
        seg = q // tiles_y
        p0 = q - seg * tiles_y
        cnt = min(end, (seg + 1) * tiles_y) - q
        b = seg // tiles_x
        x0 = (seg - b * tiles_x) * K.tile_w
        strip_fill_rows(K, T, cta, ring, tw, g_in, b, x0, 2 * p0, 4, H, W)
        cta.commit()

        def prefetch(i, p, b=b, x0=x0, cnt=cnt):  # sb strip_prefetch
            cta.syncthreads()
            if not (K.head and K.spread) and i + 1 < cnt:
                strip_fill_rows(K, T, cta, ring, tw, g_in, b, x0, 2 * p + 4, 2, H, W)
            cta.commit()

        def step(i, cur, prev, epi, p0=p0, b=b, x0=x0, cnt=cnt):  # sb strip_step (a segment: p0, b, x0, cnt)
            p = p0 + i
            h = [2 * p + wg for wg in range(2)]
            rows = [2 * (p - 1) + wg for wg in range(2)]
            cta.wait_group(0)
            cta.fence_proxy_async()
            cta.syncthreads()
            strip_mma(K, T, cta, groups, acc[cur], cur, smem_w, wa, ring, h, 0)
            if epi:
                for gq in groups:
                    gq.wait(1)
            if K.loads_first:
                prefetch(i, p)
            epi_args = (K, T, cta, groups, acc[prev], prev, stg, g_out, bias_r, b, rows, x0, H, W)
            for part in range(K.split):  # sb strip_parts
                if epi:
                    strip_epilogue(*epi_args, part=part, split=K.split, tw=tw)
                if part + 1 < K.split:
                    strip_mma(K, T, cta, groups, acc[cur], cur, smem_w, wa, ring, h, part + 1)
                if K.head and K.spread and part + 2 >= K.split and i + 1 < cnt:  # half the next rows after each of
                    strip_head_rows(K, T, cta, ring, tw, g_in, b, x0, 2 * p + 4, 2, H, W, part + 2 - K.split, 2)  # the last 2
            if not K.loads_first:
                prefetch(i, p)

        step(0, "acc0", "acc1", False)
        i = 1
        while i + 1 < cnt:
            step(i, "acc1", "acc0", True)
            step(i + 1, "acc0", "acc1", True)
            i += 2
        last = [2 * (p0 + cnt - 1) + wg for wg in range(2)]
        if i < cnt:
            step(i, "acc1", "acc0", True)
            name = "acc1"
        else:
            name = "acc0"
        for gq in groups:
            gq.wait(0)
        if K.loads_first:  # the step ended in its epilogue: order its staging reads before the last one's writes
            cta.syncthreads()
        strip_epilogue(K, T, cta, groups, acc[name], name, stg, g_out, bias_r, b, last, x0, H, W, tw=tw)
        cta.syncthreads()
        q += cnt
    cta.exit()


def launch_strip(variant, T, x_bits, w_bits, bias, *, resident_ctas=132, eager=False, K=None, tail_w=None,
                 spread=False):  # fmt: skip
    """sb ``launch_strip`` -> :func:`launch_tiles` (tiles = pairs of rows of 128- or 64-pixel strips); ``variant`` =
    (LOADS_FIRST, SPLIT, RS), ``"pingpong"`` (pp ``launch_pingpong``: tiles = rows), or ``K`` a whole
    :class:`StripTile` / :class:`PingPongTile`.  With ``tail_w`` ([9][64] fp32) the TAIL kernel (sb
    ``launch_strip_tail``, with ``spread`` ``launch_strip_tail_spread``): returns z (N, H, W, 9) fp32 (NaN where never
    written) and its write counts."""
    assert w_bits.shape == (TAPS, KC, KC)
    K = K or (PingPongTile() if variant == "pingpong" else StripTile(*variant))
    kernel = pingpong_kernel_cta if isinstance(K, PingPongTile) else strip_kernel_cta
    if tail_w is None:
        return launch_tiles(K, kernel, T, x_bits, w_bits, bias, resident_ctas, eager)
    n, h, w_, _ = x_bits.shape
    g_z = Global("z", np.full((n, h, w_, 9), np.nan, np.float32))
    g_tail = Global("tail_w", np.asarray(tail_w, np.float32).reshape(TAPS * KC))
    K = replace(K, tail=True, spread=spread)
    return launch_tiles(K, kernel, T, x_bits, w_bits, bias, resident_ctas, eager, g_out=g_z, g_tail=g_tail)


# sb kHeadLoadsFirst, kHeadSplits, (RS false), kHeadSpread, by schedule
HEAD_SCHEDULES = [(False, 4, False, False), (False, 1, False, False), (True, 4, False, True)]


def launch_strip_head(T, y, w_bits, bias, head_w, head_b, *, schedule=0, resident_ctas=132, eager=False):
    """sb ``launch_strip_head`` (``schedule``: the index into kHeadSplits): the first body layer of a fused head on the
    fp32 Y plane ``y`` (N, H, W), the head weights ``head_w`` (64, 9) and ``head_b`` (64,) fp32.  Returns the output
    bit patterns (N, H, W, 64) and write counts."""
    K = replace(StripTile(*HEAD_SCHEDULES[schedule]), head=True)
    g_head = (Global("head_w", np.asarray(head_w, np.float32).ravel()), Global("head_b", np.asarray(head_b, np.float32)))
    return launch_tiles(K, strip_kernel_cta, T, np.asarray(y, np.float32), w_bits, bias, resident_ctas, eager,
                        g_head=g_head)  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# The ping-pong kernel (``pp`` = csrc/wgmma_pingpong_body.cuh): the strip GEMM with the weights in registers, each
# warpgroup on its own rows with its own ring and staging tile, the two issuing their wgmmas in turns.
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PingPongTile(StripTile):
    """pp ``PingPongTile`` (the strip functions take it as a ``K``)."""

    rs: bool = True
    tile_h: int = 1  # an item: one row, one warpgroup
    ring: int = 4  # per warpgroup

    loaders = property(lambda s: 128)  # a warpgroup copies its own rows
    tile_w = property(lambda s: 128)
    align = property(lambda s: 128)
    wg_bytes = property(lambda s: s.ring * s.halo_row_bytes + s.staging_bytes)
    smem_bytes = property(lambda s: s.align + 2 * s.wg_bytes + s.tail_bytes)


TURN = 3  # pp kTurn: named barrier kTurn + wg = "warpgroup wg may issue"


def pingpong_kernel_cta(K, T, g_in, g_out, g_w, g_bias, H, W, tiles_x, tiles_y, num_tiles, block_idx, grid_dim, eager,
                        smem_base=384, g_tail=None):  # fmt: skip
    """One CTA of ``conv3x3_pingpong_kernel``.  The warpgroups share nothing after the start (each its own shared
    region, cp.async groups and wgmma groups; their barrier is ordered over that region only), so they run one
    after the other here; the turn handshakes are counted (every bar.sync must meet as many bar.arrive)."""
    cta = Cta(K.smem_bytes, T.poison, eager, base=smem_base)
    base = (smem_base + K.align - 1) & ~(K.align - 1)
    wa = strip_load_a(g_w)
    tw = base + 2 * K.wg_bytes
    if K.tail:  # then __syncthreads
        strip_store_tail_weights(cta, tw, g_tail)
    lane, wr = LANE[None, :], np.arange(4)[:, None]
    bias_r = np.stack([g_bias.load(16 * wr + (lane >> 2)), g_bias.load(16 * wr + (lane >> 2) + 8)], -1)
    bias_r = bias_r.astype(np.float32)[None]  # (1 warpgroup, 4, 32, 2)
    cta.syncthreads()
    begin = block_idx * num_tiles // grid_dim
    end = (block_idx + 1) * num_tiles // grid_dim
    mid = begin + (end - begin + 1) // 2
    turns = mid - begin
    arrive, sync = {TURN: 0, TURN + 1: 0}, {TURN: 0, TURN + 1: 0}
    for wg, (mine, my_end) in enumerate([(begin, mid), (mid, end)]):
        ring = base + wg * K.wg_bytes
        stg = ring + K.ring * K.halo_row_bytes
        region = (ring, ring + K.wg_bytes)
        q_ = WgmmaGroups(cta)
        q_.write("wa")
        acc = np.zeros((1, 4, 32, K.tile_w // 2), np.float32)
        for t in range(turns):
            q = mine + t
            live = q < my_end
            seg = q // tiles_y
            y = q - seg * tiles_y
            b = seg // tiles_x
            x0 = (seg - b * tiles_x) * K.tile_w
            if live and (t == 0 or y == 0):
                strip_load_rows(K, cta, ring, g_in, b, x0, y, 3, H, W)
            cta.commit()
            cta.wait_group(0)  # (A)
            cta.fence_proxy_async()
            cta.named_barrier(*region)
            if wg == 1 or t > 0:
                sync[TURN + wg] += 1
            if live:
                strip_mma(K, T, cta, [q_], acc, "acc", None, wa, ring, [y])
            if wg == 0 or t + 1 < turns:
                arrive[TURN + 1 - wg] += 1
            if live and q + 1 < my_end and y + 1 < tiles_y:
                strip_load_rows(K, cta, ring, g_in, b, x0, y + 3, 1, H, W)
            cta.commit()
            if live:
                q_.wait(0)
                strip_epilogue(K, T, cta, [q_], acc, "acc", [stg], g_out, bias_r, b, [y], x0, H, W, tw=tw,
                               regions=[region])  # fmt: skip
    if arrive != sync:
        raise Hazard(f"turn barriers unbalanced: arrivals {arrive}, syncs {sync} (a warpgroup would hang or exit early)")
    cta.exit()


def launch_tail_gather(z, x, bias):
    """ht ``tail_gather_kernel``: ``z`` (N, H, W, 9) fp32, ``x`` the Y plane (N, H, W) fp32 -> y, one thread per
    pixel, taps in order 0..8 from the bias, fp32; a source pixel outside the image adds nothing."""
    g_z = Global("z", z)
    n, h, w_ = x.shape
    img, py, px = np.meshgrid(np.arange(n), np.arange(h), np.arange(w_), indexing="ij")
    s = np.full(x.shape, np.float32(bias), np.float32)
    for tap in range(TAPS):
        sy, sx = py + tap // 3 - 1, px + tap % 3 - 1
        inside = unsigned_lt(sy, h) & unsigned_lt(sx, w_)
        v = g_z.load(np.where(inside, ((img * h + sy) * w_ + sx) * 9 + tap, 0))
        s = np.where(inside, (s + np.asarray(v, np.float32)).astype(np.float32), s)
    return (np.asarray(x, np.float32) + s).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Head and tail kernels (head_tail.cu): one CTA per 16 x 16 tile, its 256 threads as (warps, lanes) arrays.
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EdgeTile:
    """ht:45-52 (also the ``K`` of ``load_halo``)."""

    threads: int = 256
    tile_h: int = 16
    halo_w: int = TILE_W + 2
    halo_pix: int = (16 + 2) * (TILE_W + 2)


EDGE = EdgeTile()
PIXEL_GROUPS = EDGE.threads // 8  # ht:53-54
STEPS = EDGE.tile_h * TILE_W // PIXEL_GROUPS  # ht:55
EDGE_TID = np.arange(EDGE.threads).reshape(-1, 32)  # threadIdx.x as (warp, lane)


def edge_tiles(n, h, w_, resident_ctas):
    """cuh ``persistent_grid`` with EdgeTile (ht:258-261) -> (tiles_x, tiles_y, count, grid), ``resident_ctas``
    standing for ``sms * per_sm``."""
    tiles_x = (w_ + TILE_W - 1) // TILE_W
    tiles_y = (h + EDGE.tile_h - 1) // EDGE.tile_h
    count = n * tiles_x * tiles_y
    assert count <= 2**31 - 1
    return tiles_x, tiles_y, count, min(count, resident_ctas)


def step_pixel(tc, s, q, h, w_):
    """ht:94-99 / ht:225-227, ht:245-246: tile pixel of step ``s`` -> (r, c, y, x, inside the image)."""
    p = s * PIXEL_GROUPS + q
    r, c = p // TILE_W, p % TILE_W
    y, x = tc[1] + r, tc[2] + c
    return r, c, y, x, (y < h) & (x < w_)


def launch_head(T, x, w, bias, *, resident_ctas=132, mma=False):
    """ht ``launch_head`` + ``head_kernel`` (``mma``: ``head_mma_kernel``, :func:`head_mma_rows`).  ``x`` fp32
    (N, H, W), ``w`` fp32 (64, 9), ``bias`` fp32 (64,)."""
    n, h, w_ = x.shape
    tiles_x, tiles_y, count, grid = edge_tiles(n, h, w_, resident_ctas)  # ht:271
    g_x = Global("x", np.asarray(x, np.float32))
    g_out = Global("out", np.full((n, h, w_, KC), T.poison, np.uint16))
    g_w = Global("w", np.asarray(w, np.float32))
    g_b = Global("bias", np.asarray(bias, np.float32))
    j, q = EDGE_TID % 8, EDGE_TID // 8  # ht:80-81
    n_ = (j * 8)[..., None] + np.arange(8)  # ht:84: this lane's channels
    br = g_b.load(n_)  # ht:85
    wr = g_w.load(n_[..., None] * 9 + np.arange(9))  # ht:87: wr[warp, lane, c, tap]
    frags = head_mma_fragments(T, g_w, g_b) if mma else None
    for block_idx in range(grid):
        cta = Cta(EDGE.halo_pix * 4, T.poison, eager=True)  # ht:79: sx, fp32
        for tile in range(block_idx, count, grid):  # ht:89
            tc = tile_coord(EDGE.tile_h, tile, tiles_x, tiles_y)  # ht:90
            img = np.int64(tc[0]) * h * w_  # ht:61
            cta.syncthreads()  # ht:62
            for base in range(0, EDGE.halo_pix, EDGE.threads):  # ht:63
                i = base + EDGE_TID
                active = i < EDGE.halo_pix
                hy = i // EDGE.halo_w  # ht:64
                hx = i - hy * EDGE.halo_w  # ht:65
                yy = tc[1] - 1 + hy  # ht:66
                xs = tc[2] - 1 + hx  # ht:67
                inside = active & unsigned_lt(yy, h) & unsigned_lt(xs, w_)  # ht:68-69
                val = np.zeros(i.shape, np.float32)
                val[inside] = g_x.load(img + yy[inside].astype(np.int64) * w_ + xs[inside])  # ht:70
                cta.sts32(4 * i, val.view(np.uint32), active)
            cta.syncthreads()  # ht:72
            if mma:
                head_mma_rows(T, cta, frags, g_out, tc, h, w_)
                continue
            for s in range(STEPS):  # ht:93
                r, c, y, xx, live = step_pixel(tc, s, q, h, w_)  # ht:94-99
                v = [cta.lds32(4 * ((r + tap // 3) * EDGE.halo_w + c + tap % 3), live).view(np.float32)
                     for tap in range(9)]  # ht:102  # fmt: skip
                packed = []
                for k in range(4):  # ht:105
                    o = []
                    for e in range(2):  # ht:108
                        acc = br[..., k * 2 + e]  # ht:109
                        for tap in range(9):  # ht:111
                            acc = fmaf(wr[..., k * 2 + e, tap], v[tap], acc)
                        o.append(relu_keep_nan(acc))  # ht:112
                    packed.append(pack2(T, o[0], o[1]))  # ht:114
                words = np.stack(packed, axis=-1)[live]  # ht:117: uint4 = 8 halves, .x first
                halves = np.stack([words & 0xFFFF, words >> 16], axis=-1).reshape(-1, 8).astype(np.uint16)
                dst = ((np.int64(tc[0]) * h + y) * w_ + xx) * KC + j * 8  # ht:116
                g_out.store(dst[live], halves, n=8, align_bytes=16)
    return g_out.a.reshape(n, h, w_, KC), g_out.writes.reshape(n, h, w_, KC)


HEAD_TAPS = (0, 6, 1, 7, 2, 8, 3, 4, 5)  # ht kHeadTaps: the tap (ky*3+kx) of K slot k; slots 9..15 are zeros


def _head_slot_offset(k):
    tap = np.asarray(HEAD_TAPS)[k]
    return (tap // 3) * EDGE.halo_w + tap % 3


def head_mma_fragments(T, g_w: Global, g_b: Global):
    """``head_mma_kernel``'s registers loaded once: the B fragments of the 8 n-blocks (column g of n-block nb =
    channel 16 (g / 2) + 2 nb + g % 2; b0: slots 2t, 2t + 1, b1: slot 8 for t = 0, else zeros), the bias of the
    lane's channels 16t + 2nb (+1), and the staged offsets of its slots 2t, 2t + 1.  Arrays (8 warps, 32 lanes)."""
    lane = EDGE_TID % 32
    g, t = lane >> 2, lane & 3
    tap_lo, tap_hi = np.asarray(HEAD_TAPS)[2 * t], np.asarray(HEAD_TAPS)[2 * t + 1]
    b0, b1, br = [], [], []
    for nb in range(8):
        ch = 16 * (g >> 1) + 2 * nb + (g & 1)
        b0.append(pack2(T, g_w.load(ch * 9 + tap_lo), g_w.load(ch * 9 + tap_hi)))
        b1.append(np.where(t == 0, pack2(T, g_w.load(ch * 9 + HEAD_TAPS[8]), np.float32(0)), np.uint32(0)).astype(np.uint32))
        br.append((g_b.load(16 * t + 2 * nb), g_b.load(16 * t + 2 * nb + 1)))
    return {"b0": b0, "b1": b1, "br": br, "off_lo": _head_slot_offset(2 * t), "off_hi": _head_slot_offset(2 * t + 1)}


def head_mma_rows(T, cta: Cta, f, g_out: Global, tc, h, w_):
    """``head_mma_kernel``'s two rows per warp of one staged tile: the A fragments from the staged Y values (a warp's
    32 loads of each half: no bank conflict), 8 ``mma.sync`` with zero accumulators, bias + ReLU, two 16-byte stores
    per pixel and lane."""
    warp, lane = EDGE_TID // 32, EDGE_TID % 32
    g, t = lane >> 2, lane & 3
    off8 = _head_slot_offset(8)  # slot 8: lane t = 0's a[2], a[3] low half
    for rr in range(2):
        r = 2 * warp + rr
        y = tc[1] + r
        row = r * EDGE.halo_w

        def ld(off, active=None, row=row):
            return cta.lds32(4 * (row + off), active).view(np.float32)

        first = t == 0
        a = np.stack([
            pack2(T, ld(f["off_lo"] + g), ld(f["off_hi"] + g)),
            pack2(T, ld(f["off_lo"] + g + 8), ld(f["off_hi"] + g + 8)),
            np.where(first, pack2(T, ld(off8 + g, first), np.float32(0)), np.uint32(0)),
            np.where(first, pack2(T, ld(off8 + g + 8, first), np.float32(0)), np.uint32(0)),
        ], axis=-1).astype(np.uint32)  # fmt: skip
        o = np.zeros((2, 8) + g.shape, np.uint32)  # [pixel g, g + 8][n-block]
        for nb in range(8):
            c = mma_16816(T, np.zeros(g.shape + (4,), np.float32), a, f["b0"][nb], f["b1"][nb])
            b_lo, b_hi = f["br"][nb]
            o[0, nb] = pack2(T, relu_keep_nan(c[..., 0] + b_lo), relu_keep_nan(c[..., 1] + b_hi))
            o[1, nb] = pack2(T, relu_keep_nan(c[..., 2] + b_lo), relu_keep_nan(c[..., 3] + b_hi))
        for p in range(2):
            xx = tc[2] + g + 8 * p
            live = (y < h) & (xx < w_)
            base = ((np.int64(tc[0]) * h + y) * w_ + xx) * KC + 16 * t
            for half in range(2):
                words = np.moveaxis(o[p, 4 * half : 4 * half + 4], 0, -1)[live]  # uint4: 4 words, .x first
                halves = np.stack([words & 0xFFFF, words >> 16], axis=-1).reshape(-1, 8).astype(np.uint16)
                g_out.store((base + 8 * half)[live], halves, n=8, align_bytes=16)


def launch_tail(T, act_bits, x, w, bias, *, alias_y_to_x=False, eager=False, resident_ctas=132):
    """ht:290-305 + ht:201-253.  ``act_bits`` (N, H, W, 64) uint16, ``x`` fp32 (N, H, W), ``w`` fp32 (9, 64).

    ``alias_y_to_x`` runs it in place (y == x, which vdsr_kernels.h allows).
    """
    n, h, w_, _ = act_bits.shape
    tiles_x, tiles_y, count, grid = edge_tiles(n, h, w_, resident_ctas)  # ht:294
    g_act = Global("act", act_bits.astype(np.uint16))
    g_x = Global("x", np.asarray(x, np.float32).copy())
    g_y = g_x if alias_y_to_x else Global("y", np.full((n, h, w_), np.nan, np.float32))
    g_w = Global("w", np.asarray(w, np.float32))
    g_b = Global("bias", np.asarray(bias, np.float32))
    j, q = EDGE_TID % 8, EDGE_TID // 8  # ht:207-208
    wr = g_w.load(np.arange(9)[:, None] * KC + (j * 8)[..., None, None] + np.arange(8))  # ht:213: [warp, lane, tap, k]
    b0 = g_b.load(0)  # ht:215
    for block_idx in range(grid):
        cta = Cta(EDGE.halo_pix * ROW_BYTES, T.poison, eager)  # ht:205
        for tile in range(block_idx, count, grid):  # ht:216
            tc = tile_coord(EDGE.tile_h, tile, tiles_x, tiles_y)  # ht:217
            cta.syncthreads()  # ht:218
            load_halo(EDGE, cta, 0, g_act, tc, h, w_)  # ht:219
            cta.commit()  # ht:220
            cta.wait_group(0)  # ht:221
            cta.syncthreads()  # ht:222
            for s in range(STEPS):  # ht:224
                r, c, yy, xx, live = step_pixel(tc, s, q, h, w_)  # ht:225-227, ht:245-246
                acc = np.zeros(EDGE_TID.shape, np.float32)  # ht:228
                for tap in range(9):  # ht:230
                    hp = (r + tap // 3) * EDGE.halo_w + c + tap % 3  # ht:231
                    u = cta.lds128(swz(hp, j))  # ht:232-233
                    for k in range(4):  # ht:235
                        fx, fy = unpack2(T, u[..., k])  # ht:236
                        acc = fmaf(wr[..., tap, 2 * k], fx, acc)  # ht:237
                        acc = fmaf(wr[..., tap, 2 * k + 1], fy, acc)  # ht:238
                for m in (4, 2, 1):  # ht:242-244: __shfl_xor_sync within each warp
                    acc = (acc + acc[:, LANE ^ m]).astype(np.float32)
                out = (j == 0) & live  # ht:247
                pix = ((np.int64(tc[0]) * h + yy) * w_ + xx)[out]  # ht:248
                g_y.store(pix, (g_x.load(pix) + (b0 + acc[out])).astype(np.float32))  # ht:249
        cta.exit()
    return g_y.a.reshape(n, h, w_).copy(), g_y.writes.reshape(n, h, w_)

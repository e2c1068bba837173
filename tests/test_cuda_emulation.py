"""The CUDA kernels of csrc/ replayed by the numpy emulator (tests/cuda_emulation.py) against conv2d.

No GPU needed: the emulator transliterates the kernels' index math (halo loads with the swizzle and
zero fill, ldmatrix addresses, mma fragments, the K loop, the epilogue, the persistent tile walk and
the cp.async pipeline) and models the PTX instructions from the PTX ISA.  It also checks bounds,
alignment, shared-memory races (cp.async wait_group / __syncthreads) and bank conflicts.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests import cuda_emulation as emu
from vdsr_fast.kernels import pack_winograd_weight
from vdsr_fast.kernels.cuda import pack_body_weight
from vdsr_fast.reference import vdsr_forward

VARIANTS = emu.body_variants_from_source()
SMALL_VARIANTS = emu.body_variants_from_source(macro="VDSR_SMALL_BODY_VARIANTS")  # ids 15, 16: 99 KB GPUs
WINO_VARIANTS = emu.wino_variants_from_source()
WGMMA_VARIANTS = emu.wgmma_variants_from_source()
TYPES = {torch.float16: emu.Half, torch.bfloat16: emu.BFloat16}
REL = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}  # > half an ulp of the stored output
SIZES = [(2, 1, 1), (2, 5, 7), (2, 17, 33), (2, 37, 53)]


def bits(t: torch.Tensor) -> np.ndarray:
    """uint16 patterns of a float16 / bfloat16 tensor."""
    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


def body_case(n, h, w, dtype, seed=0):
    """Random NHWC input, a packed layer and a bias, plus the float64 conv2d reference (NHWC)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, h, w, 64, generator=g) * 2 - 1).to(dtype)
    wt = (torch.randn(64, 64, 3, 3, generator=g) / 24).to(dtype)  # pre-activation std ~0.6
    b = torch.rand(64, generator=g) * 1.5 - 0.5
    ref = F.conv2d(x.double().permute(0, 3, 1, 2), wt.double(), b.double(), padding=1).relu().permute(0, 2, 3, 1)
    return bits(x), bits(pack_body_weight(wt, dtype)), b.numpy(), ref.numpy()


def check_close(got: np.ndarray, ref: np.ndarray, rel: float, what: str):
    assert not np.isnan(got).any(), f"{what}: NaN in the output (poisoned memory read or never written)"
    err = np.abs(got.astype(np.float64) - ref)
    bad = err > rel * np.abs(ref) + 1e-5
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {bad.sum()} of {bad.size} values differ, first at {idx}: {got[idx]} vs {ref[idx]}"
        )


def run_body(variant, dtype, size, launch=emu.launch_body, **kw):
    """A direct-convolution kernel (``launch``: the mma.sync launcher, or ``emu.launch_wgmma``) on a random layer."""
    T = TYPES[dtype]
    x, w, b, ref = body_case(*size, dtype)
    out, writes = launch(variant, T, x, w, b, **kw)
    assert (writes == 1).all(), "every output element must be written exactly once"
    return T.to_float(out), ref


def test_variant_table_is_read_and_fits_shared_memory():
    assert len(VARIANTS) >= 3
    smem = [emu.BodyTile(*v).smem_bytes for v in VARIANTS]
    assert smem[:3] == [198144, 156672, 119808]  # csrc/README.md: 194, 153 and 117 KB (of 1024 bytes)
    assert max(smem) <= 227 * 1024  # H100/H200 opt-in per block
    assert min(smem) <= 163 * 1024  # A100 opt-in per block
    # sm_86 / sm_89 (RTX 30xx/40xx, A10, L4, L40S) opt in to 99 KB per block: the small variants fill it exactly
    assert [emu.BodyTile(*v).smem_bytes for v in SMALL_VARIANTS] == [99 * 1024, 99 * 1024]


def test_mma_fragments_against_a_scalar_transcription_of_the_ptx_tables():
    rng = np.random.default_rng(0)
    T = emu.Half
    A = T.to_float(T.from_float(rng.uniform(-1, 1, (16, 16))))
    B = T.to_float(T.from_float(rng.uniform(-1, 1, (16, 8))))
    C = rng.uniform(-1, 1, (16, 8)).astype(np.float32)
    a = np.zeros((32, 4), np.uint32)
    b0 = np.zeros(32, np.uint32)
    b1 = np.zeros(32, np.uint32)
    c = np.zeros((32, 4), np.float32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for reg, (r, k) in enumerate([(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)]):
            a[lane, reg] = int(emu.pack2(T, A[r, k], A[r, k + 1]))
        b0[lane] = int(emu.pack2(T, B[2 * t, g], B[2 * t + 1, g]))
        b1[lane] = int(emu.pack2(T, B[2 * t + 8, g], B[2 * t + 9, g]))
        c[lane] = [C[g, 2 * t], C[g, 2 * t + 1], C[g + 8, 2 * t], C[g + 8, 2 * t + 1]]
    d = emu.mma_16816(T, c, a, b0, b1)
    D = (A.astype(np.float64) @ B + C).astype(np.float32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        assert list(d[lane]) == [D[g, 2 * t], D[g, 2 * t + 1], D[g + 8, 2 * t], D[g + 8, 2 * t + 1]]


def test_ldmatrix_lane_mapping():
    cta = emu.Cta(4096, emu.Half.poison, eager=True)
    cta.h[:] = np.arange(2048, dtype=np.uint16)  # word w holds w
    cta.ready[:] = -1
    row_addr = lambda i, r: r * 128 + ((i ^ r) * 16)  # row r of matrix i (conflict-free placement)
    r = cta.ldmatrix_x4(np.array([row_addr(lane // 8, lane % 8) for lane in range(32)]))
    for lane in range(32):
        for i in range(4):
            w = row_addr(i, lane // 4) // 2 + 2 * (lane % 4)
            assert r[lane, i] == w | ((w + 1) << 16)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", VARIANTS + SMALL_VARIANTS, ids=lambda v: "v{}{}{}{}".format(*v))
def test_body_fp16_matches_conv2d(variant, size):
    # 3 resident CTAs: several tiles per CTA, every stage reused, the empty trailing groups.
    got, ref = run_body(variant, torch.float16, size, resident_ctas=3)
    check_close(got, ref, REL[torch.float16], f"body {variant} fp16 {size}")


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[-1], *SMALL_VARIANTS], ids=lambda v: "v{}{}{}{}".format(*v))
@pytest.mark.parametrize("resident", [1, 1000])
def test_body_bf16_eager_copies_and_grid_sizes(variant, resident):
    # eager: copies land at issue (a refill racing the compute on its stage would corrupt it);
    # resident 1: one CTA walks all tiles; 1000: one tile per CTA (the prologue's empty groups).
    got, ref = run_body(variant, torch.bfloat16, (2, 17, 33), resident_ctas=resident, eager=True)
    check_close(got, ref, REL[torch.bfloat16], f"body {variant} bf16 {resident} CTAs")


# --- the emulator's own checks catch the bugs they are there for -------------------------------------
def test_detects_a_missing_wait(monkeypatch):
    orig = emu.Cta.wait_group
    monkeypatch.setattr(emu.Cta, "wait_group", lambda self, n: orig(self, n + 1 if n else 0))
    with pytest.raises(emu.Hazard, match="not completed"):
        emu.launch_body(VARIANTS[0], emu.Half, *body_case(1, 20, 20, torch.float16)[:3], resident_ctas=1)


@pytest.mark.parametrize("which", [0, 1])
def test_detects_a_missing_barrier(monkeypatch, which):
    orig = emu.Cta.syncthreads

    def sync(self):  # drop the barrier after the wait (which=0) or after the compute (which=1)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls % 2 != which:
            orig(self)

    monkeypatch.setattr(emu.Cta, "syncthreads", sync)
    with pytest.raises(emu.Hazard):
        emu.launch_body(VARIANTS[1], emu.Half, *body_case(1, 40, 20, torch.float16)[:3], resident_ctas=1)


def test_detects_bank_conflicts(monkeypatch):
    monkeypatch.setattr(emu, "swz", lambda row, j: np.asarray(row, np.int64) * emu.ROW_BYTES + (np.asarray(j) << 4))
    with pytest.raises(emu.Hazard, match="bank conflict"):
        emu.launch_body(VARIANTS[0], emu.Half, *body_case(1, 5, 7, torch.float16)[:3])


def test_detects_a_fragment_mixup(monkeypatch):
    orig = emu.mma_16816
    monkeypatch.setattr(emu, "mma_16816", lambda T, c, a, b0, b1: orig(T, c, a, b1, b0))  # k halves of B swapped
    got, ref = run_body(VARIANTS[0], torch.float16, (1, 5, 7))
    with pytest.raises(AssertionError, match="differ"):
        check_close(got, ref, REL[torch.float16], "mutant")


# --- the Winograd F(2x2, 3x3) body kernel (csrc/winograd_body.cuh) ------------------------------------
BT = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=torch.float64)
AT = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=torch.float64)


def winograd_model(x: torch.Tensor, u: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """What the kernel computes, in float64 but for its roundings: the row transform B^T d and then V =
    (B^T d) B each rounded to the storage dtype (via fp32, as the emulator's pair_op), U as packed, no
    rounding of the GEMMs, A^T M A, bias and ReLU. ``x`` (N, H, W, 64) in T, ``u`` (16, 64, 64) in T."""
    dtype = x.dtype
    rnd = lambda v: v.float().to(dtype).double()  # noqa: E731
    n, h, w, _ = x.shape
    th, tw = (h + 1) // 2, (w + 1) // 2
    xp = F.pad(x.double().permute(0, 3, 1, 2), (1, 2 * tw - w + 1, 1, 2 * th - h + 1))
    d = xp.unfold(2, 4, 2).unfold(3, 4, 2)  # (N, C, TH, TW, 4, 4)
    v = rnd(torch.einsum("ia,nctwaj->nctwij", BT, d))
    v = rnd(torch.einsum("nctwib,jb->nctwij", v, BT))
    m = torch.einsum("nctwij,ijoc->notwij", v, u.double().reshape(4, 4, 64, 64))
    y = torch.einsum("pi,notwij,qj->notwpq", AT, m, AT).permute(0, 1, 2, 4, 3, 5).reshape(n, 64, 2 * th, 2 * tw)
    return (y[:, :, :h, :w] + b.double().view(1, -1, 1, 1)).relu().permute(0, 2, 3, 1).numpy()


def run_winograd(stages, dtype, size, seed=0, **kw):
    """The emulated kernel on a random layer: (output, the kernel's own model, conv2d's float64 and T outputs)."""
    T = TYPES[dtype]
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(*size, 64, generator=g) * 2 - 1).to(dtype)
    wt = torch.randn(64, 64, 3, 3, generator=g) / 24  # fp32 master weights, as CudaBackend packs them
    b = torch.rand(64, generator=g) * 1.5 - 0.5
    u = pack_winograd_weight(wt, dtype)
    out, writes = emu.launch_winograd(stages, T, bits(x), bits(u), b.numpy(), **kw)
    assert (writes == 1).all(), "every output element must be written exactly once"
    xc = x.permute(0, 3, 1, 2)
    ref64 = F.conv2d(xc.double(), wt.double(), b.double(), padding=1).relu().permute(0, 2, 3, 1).numpy()
    same = F.conv2d(xc.float(), wt.to(dtype).float(), b, padding=1).relu().to(dtype).double()  # direct, rounded like T
    return T.to_float(out), winograd_model(x, u, b), ref64, same.permute(0, 2, 3, 1).numpy()


def test_winograd_variant_table_fits_hopper():
    assert WINO_VARIANTS
    assert all(emu.WinoTile(s).smem_bytes <= 227 * 1024 for s in WINO_VARIANTS)
    assert emu.WinoTile(2).smem_bytes == 209920  # csrc/README.md: 205 KB


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("stages", WINO_VARIANTS)
def test_winograd_fp16_matches_its_model_and_conv2d(stages, size):
    """Against the model of its roundings: fp32 accumulation order and the output rounding only; against
    conv2d with DESIGN.md §6's rule (2 x the direct fp16 layer's error + one fp16 ulp at the output's scale)."""
    got, model, ref64, same = run_winograd(stages, torch.float16, size, resident_ctas=3)
    check_close(got, model, REL[torch.float16], f"winograd S{stages} fp16 {size}")
    bound = 2 * np.abs(same - ref64).max() + 2.0**-10 * max(1.0, np.abs(ref64).max())
    assert np.abs(got - ref64).max() <= bound


@pytest.mark.parametrize("resident", [1, 1000])
def test_winograd_bf16_eager_copies_and_grid_sizes(resident):
    got, model, _, _ = run_winograd(WINO_VARIANTS[0], torch.bfloat16, (2, 17, 33), resident_ctas=resident, eager=True)
    check_close(got, model, REL[torch.bfloat16], f"winograd bf16 {resident} CTAs")


@pytest.mark.parametrize("which", [0, 1])
def test_winograd_detects_a_missing_barrier(monkeypatch, which):
    """Dropping the barrier after the halo's wait (which=0) or after a row's transform (which=1)."""
    orig = emu.Cta.syncthreads

    def sync(self):  # 5 barriers per tile: after the wait, then one per transformed row
        self.calls = getattr(self, "calls", 0) + 1
        if (self.calls % 5 == 1) != (which == 0):
            orig(self)

    monkeypatch.setattr(emu.Cta, "syncthreads", sync)
    with pytest.raises(emu.Hazard):
        run_winograd(WINO_VARIANTS[0], torch.float16, (1, 20, 20), resident_ctas=1)


def test_winograd_detects_a_transform_bug(monkeypatch):
    orig = emu.bt_row
    monkeypatch.setattr(emu, "bt_row", lambda T, xi, v: orig(T, 3 - xi if xi in (1, 2) else xi, v))  # nu 1, 2 swapped
    got, model, _, _ = run_winograd(WINO_VARIANTS[0], torch.float16, (1, 5, 7))
    with pytest.raises(AssertionError, match="differ"):
        check_close(got, model, REL[torch.float16], "mutant")


# --- the wgmma kernel --------------------------------------------------------------------------------
def run_wgmma(stages, dtype, size, **kw):
    return run_body(stages, dtype, size, launch=emu.launch_wgmma, **kw)


def test_wgmma_variant_table_fits_hopper():
    assert WGMMA_VARIANTS == [(3, False), (3, True)]
    assert all(emu.WgmmaTile(*v).smem_bytes <= 227 * 1024 for v in WGMMA_VARIANTS)
    assert emu.WgmmaTile(3, False).smem_bytes == 199168  # csrc/README.md: 195 KB
    for v in WGMMA_VARIANTS:  # each warp supplies one row of each M-block, every tile row exactly once
        K = emu.WgmmaTile(*v)
        rows = sorted(K.row(wg, r, mb) for wg in range(2) for r in range(4) for mb in range(2))
        assert rows == list(range(16))


def _d_elem(w, lane, e):
    """(row, column) of accumulator element e of lane (g, t) of warp w in a warpgroup's wgmma D (PTX ISA
    "wgmma D fragment": rows 16w + g (+8 for e % 4 >= 2), columns 8 (e // 4) + 2t (+1 for odd e))."""
    g, t = lane // 4, lane % 4
    return 16 * w + g + 8 * ((e >> 1) & 1), 8 * (e // 4) + 2 * t + (e & 1)


def test_wgmma_fragments_against_a_scalar_transcription_of_the_ptx_tables():
    """The warpgroup A/D fragments: warp w, lane (g, t), A register r / D element e (PTX ISA tables)."""
    rng = np.random.default_rng(1)
    T = emu.Half
    A = T.to_float(T.from_float(rng.uniform(-1, 1, (64, 16))))
    B = T.to_float(T.from_float(rng.uniform(-1, 1, (16, 64))))
    C = rng.uniform(-1, 1, (64, 64)).astype(np.float32)
    a = np.zeros((4, 32, 4), np.uint32)
    d = np.zeros((4, 32, 32), np.float32)
    for w in range(4):
        for lane in range(32):
            g, t = lane // 4, lane % 4
            for reg, (r, k) in enumerate([(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)]):
                a[w, lane, reg] = int(emu.pack2(T, A[16 * w + r, k], A[16 * w + r, k + 1]))
            for e in range(32):
                d[w, lane, e] = C[_d_elem(w, lane, e)]
    out = emu.wgmma_m64n64k16(T, d, a, B)
    D = (A.astype(np.float64) @ B + C).astype(np.float32)
    for w in range(4):
        for lane in range(32):
            for e in range(32):
                assert out[w, lane, e] == D[_d_elem(w, lane, e)]


def test_wgmma_descriptor_reads_the_swizzled_weight_rows():
    """B through the descriptor = the weight rows as load_weights stores them (chunk j at j ^ (row & 7))."""
    T = emu.Half
    cta = emu.Cta(emu.WEIGHT_BYTES + 2048, T.poison, eager=True, base=1024)
    w = np.random.default_rng(2).integers(0, 0x3C00, (emu.TAPS * emu.KC, emu.KC)).astype(np.uint16)
    emu.load_weights(cta, 2048, emu.Global("w", w), emu.TAPS * emu.KC, 256)
    cta.commit(), cta.wait_group(0), cta.syncthreads()
    desc = lambda tap, kk: emu.wgmma_desc_sw128(2048 + tap * emu.KC * emu.ROW_BYTES + kk * 32)  # noqa: E731
    with pytest.raises(emu.Hazard, match="generic proxy without fence.proxy.async"):
        emu.wgmma_kmajor_from_smem(cta, T, desc(0, 0), 64)
    cta.fence_proxy_async(), cta.syncthreads()
    for tap, kk in [(0, 0), (4, 1), (8, 3)]:
        b = emu.wgmma_kmajor_from_smem(cta, T, desc(tap, kk), 64)
        np.testing.assert_array_equal(b, T.to_float(w[tap * 64 : tap * 64 + 64, 16 * kk : 16 * kk + 16]).T)


WGMMA_IDS = lambda v: f"S{v[0]}" + ("-reuse" if v[1] else "")  # noqa: E731


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", WGMMA_VARIANTS, ids=WGMMA_IDS)
def test_wgmma_fp16_matches_conv2d(variant, size):
    got, ref = run_wgmma(variant, torch.float16, size, resident_ctas=3)
    check_close(got, ref, REL[torch.float16], f"wgmma {variant} fp16 {size}")


@pytest.mark.parametrize("variant", WGMMA_VARIANTS, ids=WGMMA_IDS)
@pytest.mark.parametrize("resident", [1, 1000])
def test_wgmma_bf16_eager_copies_and_grid_sizes(variant, resident):
    got, ref = run_wgmma(variant, torch.bfloat16, (2, 17, 33), resident_ctas=resident, eager=True)
    check_close(got, ref, REL[torch.bfloat16], f"wgmma {variant} bf16 {resident} CTAs")


@pytest.mark.parametrize("variant", WGMMA_VARIANTS, ids=WGMMA_IDS)
@pytest.mark.parametrize(
    "bug, match",
    [("wait", "pending"), ("fence", "after the last wgmma.fence"), ("align", "swizzle atom"), ("barrier", "write-after-read")],
)
def test_wgmma_detects(monkeypatch, variant, bug, match):
    """A dropped wait_group 1 (an A set refilled under a pending wgmma), a dropped fence, weights not on a
    1024-byte boundary, a dropped barrier after the compute (a halo refilled while read)."""
    if bug == "wait":
        orig = emu.WgmmaGroups.wait
        monkeypatch.setattr(emu.WgmmaGroups, "wait", lambda self, n: orig(self, n) if n == 0 else None)
    elif bug == "fence":
        monkeypatch.setattr(emu.WgmmaGroups, "fence", lambda self: None)
    elif bug == "align":
        monkeypatch.setattr(emu, "WgmmaTile", functools.partial(emu.WgmmaTile, align=128))
    else:
        orig = emu.Cta.syncthreads

        def sync(self):  # drop the barrier after the compute (every second one)
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls % 2:
                orig(self)

        monkeypatch.setattr(emu.Cta, "syncthreads", sync)
    with pytest.raises(emu.Hazard, match=match):
        run_wgmma(variant, torch.float16, (1, 40, 20), resident_ctas=1)


def test_wgmma_detects_a_wrong_stride_offset(monkeypatch):
    monkeypatch.setattr(emu, "wgmma_desc_sw128", lambda start: ((start & 0x3FFFF) >> 4) | (1 << 16) | (32 << 32) | (1 << 62))
    with pytest.raises(AssertionError, match="differ"):
        got, ref = run_wgmma(WGMMA_VARIANTS[0], torch.float16, (1, 5, 7))
        check_close(got, ref, REL[torch.float16], "mutant")


# --- the wgmma strip kernel (variants 6-13) and its ping-pong form (14) -------------------------------
STRIP_VARIANTS = emu.strip_variants_from_source()
STRIP_KERNELS = STRIP_VARIANTS + ["pingpong"]  # launch_strip's variant argument for each
STRIP_IDS = lambda v: (  # noqa: E731
    v
    if isinstance(v, str)
    else ("loads-first" if v[0] else "loads-after") + (f"-split{v[1]}" if v[1] > 1 else "") + ("-rs" if v[2] else "")
)


def run_strip(dtype, size, variant=(False, 1, False), **kw):
    return run_body(variant, dtype, size, launch=emu.launch_strip, **kw)


def test_strip_tile_fits_hopper():
    assert STRIP_VARIANTS == [(False, 1, False), (True, 1, False), (True, 2, False), (True, 3, False),
                              (True, 4, False), (True, 6, False), (True, 4, True), (True, 6, True)]  # fmt: skip
    K = emu.StripTile()
    assert K.smem_bytes == 207360 <= 227 * 1024  # csrc/README.md: 203 KB
    assert K.plane % 16 == 0 and (K.plane >> 4) < 2**14  # the descriptor's LBO field
    rs = emu.StripTile(rs=True)  # no weights in shared memory, 64-pixel rows
    assert rs.tile_w == 64 and rs.smem_bytes == 128 + 6 * 8448 + 2 * 8192 == 67200
    assert rs.halo_row_bytes % 128 == 0  # the staging tiles behind the ring stay 128-byte aligned
    pp = emu.PingPongTile()  # per warpgroup 4 halo rows of 130 pixels and a staging tile
    assert pp.tile_w == 128 and pp.wg_bytes == 4 * 16640 + 16384 and pp.smem_bytes == 128 + 2 * pp.wg_bytes == 166016


def test_wgmma_ss_fragments_against_a_scalar_transcription_of_the_ptx_table():
    """m64n128k16 with both operands by descriptor: D element e of lane (g, t) of warp w."""
    rng = np.random.default_rng(3)
    A = rng.uniform(-1, 1, (16, 64))  # (k, m), as the descriptor reader returns it
    B = rng.uniform(-1, 1, (16, 128))
    C = rng.uniform(-1, 1, (64, 128)).astype(np.float32)
    d = np.zeros((4, 32, 64), np.float32)
    for w in range(4):
        for lane in range(32):
            for e in range(64):
                d[w, lane, e] = C[_d_elem(w, lane, e)]
    out = emu.wgmma_ss(emu.Half, d, A, B)
    D = (A.T @ B + C).astype(np.float32)
    for w in range(4):
        for lane in range(32):
            for e in range(64):
                assert out[w, lane, e] == D[_d_elem(w, lane, e)]


def test_stmatrix_trans_against_a_scalar_transcription():
    """Memory row r of matrix i gets column r of the fragment matrix: element c from lane 4c + r/2, half r%2."""
    cta = emu.Cta(4096, emu.Half.poison, eager=True)
    regs = np.arange(32 * 4, dtype=np.uint32).reshape(32, 4) * 0x20002 + 0x10000  # halves 2k, 2k+1 of word k
    row_addr = lambda i, r: 1024 + r * 128 + ((i ^ r) * 16)  # noqa: E731
    cta.stmatrix_x4_trans(np.array([row_addr(lane // 8, lane % 8) for lane in range(32)]), regs)
    halves = regs.view(np.uint16).reshape(32, 4, 2)
    for i in range(4):
        for r in range(8):
            got = cta.h[row_addr(i, r) // 2 : row_addr(i, r) // 2 + 8]
            assert list(got) == [halves[4 * c + r // 2, i, r % 2] for c in range(8)]


def test_descriptor_reads_a_shifted_pixel_window():
    """B of tap (., kx), channels 16kk..: pixels kx .. kx+127 of a halo row (8 chunk planes, no swizzle, any
    16-byte start).  A descriptor with a base offset is refused (not modelled)."""
    T = emu.Half
    K = emu.StripTile()
    cta = emu.Cta(2 * K.halo_row_bytes + 2048, T.poison, eager=True, base=1024)
    x = np.random.default_rng(4).integers(0, 0x3C00, (1, 1, K.halo_w - 2, 64)).astype(np.uint16)
    emu.strip_load_rows(K, cta, 1024, emu.Global("in", x), 0, 0, 1, 1, 1, K.halo_w - 2)  # halo row 1: slot 1
    cta.commit(), cta.wait_group(0), cta.fence_proxy_async(), cta.syncthreads()
    padded = np.zeros((K.halo_w, 64), np.uint16)
    padded[1:-1] = x[0, 0]
    slot = 1024 + K.halo_row_bytes
    for kx, kk in [(0, 0), (1, 2), (2, 3)]:
        desc = emu.wgmma_desc_interleave(slot + 2 * kk * K.plane + kx * 16, K.plane, 128)
        b = emu.wgmma_kmajor_from_smem(cta, T, desc, 128)
        np.testing.assert_array_equal(b, T.to_float(padded[kx : kx + 128, 16 * kk : 16 * kk + 16]).T)
        with pytest.raises(AssertionError, match="base offset"):
            emu.wgmma_kmajor_from_smem(cta, T, desc | ((kx + 1) << 49), 128)


STRIP_SIZES = [(1, 5, 7), (2, 6, 130), (1, 9, 20), (3, 2, 1)]


@pytest.mark.parametrize("variant", STRIP_KERNELS, ids=STRIP_IDS)
@pytest.mark.parametrize("resident", [1, 3, 1000])
@pytest.mark.parametrize("size", STRIP_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_strip_fp16_matches_conv2d(size, resident, variant):
    """Partial strips, two strips, odd heights, several images; 1, 3 or all CTAs (item ranges that cross
    strips and images, segments of one item); each schedule."""
    got, ref = run_strip(torch.float16, size, variant, resident_ctas=resident)
    check_close(got, ref, REL[torch.float16], f"strip {variant} fp16 {size} on {resident} CTAs")


@pytest.mark.parametrize("variant", STRIP_KERNELS, ids=STRIP_IDS)
def test_strip_bf16_eager_copies(variant):
    got, ref = run_strip(torch.bfloat16, (2, 7, 131), variant, resident_ctas=4, eager=True)
    check_close(got, ref, REL[torch.bfloat16], f"strip {variant} bf16")


@pytest.mark.parametrize(
    "bug, match",
    [("wait", "pending"), ("fence", "after the last wgmma.fence"), ("proxy", "without fence.proxy.async"),
     ("barrier", "write-after-read"), ("named", "without a __syncthreads"), ("ring", "pending wgmma reads")],
)  # fmt: skip
def test_strip_detects(monkeypatch, bug, match):
    """A dropped wait_group 1 (the epilogue reading a pending accumulator), a dropped wgmma.fence, a dropped
    fence.proxy.async, a dropped barrier (D) before the next rows' copies, a dropped warpgroup barrier
    between the staging tile's stmatrix and its read-back, a ring too small for the prefetch."""
    K = None
    if bug == "named":
        monkeypatch.setattr(emu.Cta, "named_barrier", lambda self, lo, hi: None)
    elif bug == "wait":
        orig = emu.WgmmaGroups.wait
        monkeypatch.setattr(emu.WgmmaGroups, "wait", lambda self, n: orig(self, n) if n == 0 else None)
    elif bug == "fence":
        monkeypatch.setattr(emu.WgmmaGroups, "fence", lambda self: None)
    elif bug == "proxy":
        monkeypatch.setattr(emu.Cta, "fence_proxy_async", lambda self: None)
    elif bug == "barrier":
        orig_load = emu.strip_load_rows

        def load(K_, cta, ring, g_in, b, x0, h0, rows, H, W):  # undo the barrier just before a prefetch
            if rows == 2:
                cta.epoch -= 1
            orig_load(K_, cta, ring, g_in, b, x0, h0, rows, H, W)
            if rows == 2:
                cta.epoch += 1

        monkeypatch.setattr(emu, "strip_load_rows", load)
    else:
        K = emu.StripTile(ring=5)
    for variant in STRIP_VARIANTS:
        with pytest.raises(emu.Hazard, match=match):
            run_strip(torch.float16, (1, 9, 20), variant, resident_ctas=1, K=K and emu.StripTile(*variant, ring=5))


@pytest.mark.parametrize(
    "bug, match",
    [("wait", "pending"), ("fence", "after the last wgmma.fence"), ("proxy", "without fence.proxy.async"),
     ("named", "without a __syncthreads"), ("ring", "pending wgmma reads")],
)  # fmt: skip
def test_pingpong_detects(monkeypatch, bug, match):
    """The ping-pong kernel: a dropped wait_group 0 (the epilogue reading the pending accumulators), a dropped
    wgmma.fence (after the weight registers' loads), a dropped fence.proxy.async, dropped warpgroup barriers, a
    ring of 3 rows (the next row's copy would land in a slot the item's wgmmas read)."""
    K = None
    if bug == "named":
        monkeypatch.setattr(emu.Cta, "named_barrier", lambda self, lo, hi: None)
    elif bug == "wait":
        monkeypatch.setattr(emu.WgmmaGroups, "wait", lambda self, n: None)
    elif bug == "fence":
        monkeypatch.setattr(emu.WgmmaGroups, "fence", lambda self: None)
    elif bug == "proxy":
        monkeypatch.setattr(emu.Cta, "fence_proxy_async", lambda self: None)
    else:
        K = emu.PingPongTile(ring=3)
    with pytest.raises(emu.Hazard, match=match):
        run_strip(torch.float16, (1, 9, 20), "pingpong", resident_ctas=1, K=K)


def test_strip_detects_a_wrong_leading_offset(monkeypatch):
    orig = emu.wgmma_desc_interleave
    monkeypatch.setattr(emu, "wgmma_desc_interleave", lambda start, lbo, sbo: orig(start, lbo - 16, sbo))
    with pytest.raises(AssertionError, match="differ"):
        got, ref = run_strip(torch.float16, (1, 4, 9))
        check_close(got, ref, REL[torch.float16], "mutant")


# --- head and tail ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mma", [False, True], ids=["fma", "mma"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_head_matches_conv2d(dtype, size, mma):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(size, generator=g)
    w = torch.randn(64, 1, 3, 3, generator=g) * 0.5
    b = torch.randn(64, generator=g) * 0.2
    out, writes = emu.launch_head(TYPES[dtype], x.numpy(), w.reshape(64, 9).numpy(), b.numpy(), mma=mma)  # cuda.py:185
    assert (writes == 1).all()
    check_close(TYPES[dtype].to_float(out), head_ref(x, w, b, dtype if mma else None), REL[dtype], f"head {dtype} {size}")


def head_ref(x, w, b, rounded_to=None):
    """The head in float64, NHWC; ``rounded_to``: x and w first rounded to that dtype, as the tensor-core head
    multiplies them (exact products, fp32 sums: its output is then within an output rounding of this)."""
    if rounded_to is not None:
        x, w = x.to(rounded_to), w.to(rounded_to)
    return F.conv2d(x.double()[:, None], w.double(), b.double(), padding=1).relu().permute(0, 2, 3, 1).numpy()


def tail_case(size, dtype, seed=2):
    """Random NHWC activations, Y plane, packed tail weights and bias, and the float64 reference."""
    g = torch.Generator().manual_seed(seed)
    n, h, w_ = size
    act = torch.rand(n, h, w_, 64, generator=g).to(dtype)
    x = torch.rand(size, generator=g)
    w = torch.randn(1, 64, 3, 3, generator=g) * 0.1
    b = torch.randn(1, generator=g)
    w_packed = w.permute(2, 3, 1, 0).reshape(9, 64)  # cuda.py:193
    ref = x.double() + F.conv2d(act.double().permute(0, 3, 1, 2), w.double(), b.double(), padding=1)[:, 0]
    return (bits(act), x.numpy(), w_packed.numpy(), b.numpy()), ref.numpy()


@pytest.mark.parametrize("alias", [False, True], ids=["y", "in-place"])
@pytest.mark.parametrize("eager", [False, True], ids=["land-at-wait", "land-at-issue"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_tail_matches_conv2d(dtype, size, alias, eager):
    args, ref = tail_case(size, dtype)
    y, writes = emu.launch_tail(TYPES[dtype], *args, alias_y_to_x=alias, eager=eager)
    assert (writes == 1).all()
    check_close(y, ref, 1e-5, f"tail {dtype} {size}")


@pytest.mark.parametrize("mma", [False, True], ids=["fma", "mma"])
def test_head_detects_a_missing_barrier(monkeypatch, mma):
    monkeypatch.setattr(emu.Cta, "syncthreads", lambda self: None)
    with pytest.raises(emu.Hazard, match="without a __syncthreads"):
        emu.launch_head(emu.Half, np.random.rand(1, 5, 7).astype(np.float32), np.ones((64, 9), np.float32),
                        np.zeros(64, np.float32), mma=mma)  # fmt: skip


def test_mma_head_slot_order_is_what_keeps_its_loads_conflict_free(monkeypatch):
    """The taps in their natural order as K slots: taps two rows apart (36-38 staged words) share a bank."""
    monkeypatch.setattr(emu, "HEAD_TAPS", tuple(range(9)))
    with pytest.raises(emu.Hazard, match="bank conflict"):
        emu.launch_head(emu.Half, np.random.rand(1, 5, 7).astype(np.float32), np.ones((64, 9), np.float32),
                        np.zeros(64, np.float32), mma=True)  # fmt: skip


@pytest.mark.parametrize("bug", ["barrier", "wait"])
def test_tail_detects_a_missing_barrier_or_wait(monkeypatch, bug):
    if bug == "barrier":
        monkeypatch.setattr(emu.Cta, "syncthreads", lambda self: None)
    else:
        monkeypatch.setattr(emu.Cta, "wait_group", lambda self, n: None)
    args, _ = tail_case((1, 5, 7), torch.float16)
    with pytest.raises(emu.Hazard, match="without a __syncthreads" if bug == "barrier" else "not completed"):
        emu.launch_tail(emu.Half, *args)


@pytest.mark.parametrize("resident", [1, 3])
def test_head_and_tail_walk_their_tiles_persistently(resident):
    """One or three CTAs walk every tile (2 x 37 x 53: 24 tiles), reusing their shared memory tile after tile."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 37, 53, generator=g)
    w = torch.randn(64, 1, 3, 3, generator=g) * 0.5
    b = torch.randn(64, generator=g) * 0.2
    for mma in (False, True):
        out, writes = emu.launch_head(emu.Half, x.numpy(), w.reshape(64, 9).numpy(), b.numpy(), resident_ctas=resident,
                                      mma=mma)  # fmt: skip
        assert (writes == 1).all()
        ref = head_ref(x, w, b, torch.float16 if mma else None)
        check_close(emu.Half.to_float(out), ref, REL[torch.float16], f"head (mma {mma}) on {resident} CTAs")
    args, ref = tail_case((2, 37, 53), torch.float16)
    y, writes = emu.launch_tail(emu.Half, *args, resident_ctas=resident)
    assert (writes == 1).all()
    check_close(y, ref, 1e-5, f"tail on {resident} CTAs")


@pytest.mark.parametrize("kernel", ["head", "tail"])
def test_persistent_head_and_tail_detect_a_missing_barrier_between_tiles(monkeypatch, kernel):
    """Without the barrier at the top of each tile (every other __syncthreads), the next tile's staging
    overwrites shared memory that slower threads may still be reading."""
    orig, calls = emu.Cta.syncthreads, []

    def every_other(self):
        calls.append(1)
        if len(calls) % 2 == 0:
            orig(self)

    monkeypatch.setattr(emu.Cta, "syncthreads", every_other)
    with pytest.raises(emu.Hazard, match="write-after-read|read since"):
        if kernel == "head":
            emu.launch_head(emu.Half, np.random.rand(1, 20, 20).astype(np.float32), np.ones((64, 9), np.float32),
                            np.zeros(64, np.float32), resident_ctas=1)  # fmt: skip
        else:
            emu.launch_tail(emu.Half, *tail_case((1, 20, 20), torch.float16)[0], resident_ctas=1)


def test_whole_network_chain_matches_the_reference():
    """head -> four body layers (two direct variants, the Winograd kernel, the row-reuse wgmma kernel) -> tail,
    weights packed as CudaBackend packs them."""
    g = torch.Generator().manual_seed(3)
    ws = [torch.randn(64, 1, 3, 3, generator=g) * 0.5] + [torch.randn(64, 64, 3, 3, generator=g) / 24] * 4
    ws += [torch.randn(1, 64, 3, 3, generator=g) * 0.05]
    bs = [torch.rand(64, generator=g) * 0.2 for _ in range(5)] + [torch.randn(1, generator=g) * 0.1]
    ws[1], ws[2], ws[3] = ws[1].half().float(), (ws[2] * 0.9).half().float(), ws[3] * 1.1
    ws[4] = (ws[4] * 0.95).half().float()
    x = torch.rand(1, 1, 9, 19, generator=g)
    T = emu.Half
    act, _ = emu.launch_head(T, x[:, 0].numpy(), ws[0].reshape(64, 9).numpy(), bs[0].numpy())
    for i, variant in ((1, VARIANTS[0]), (2, VARIANTS[-1])):
        act, _ = emu.launch_body(variant, T, act, bits(pack_body_weight(ws[i], torch.float16)), bs[i].numpy())
    act, _ = emu.launch_winograd(WINO_VARIANTS[0], T, act, bits(pack_winograd_weight(ws[3], torch.float16)), bs[3].numpy())
    act, _ = emu.launch_wgmma(WGMMA_VARIANTS[-1], T, act, bits(pack_body_weight(ws[4], torch.float16)), bs[4].numpy())
    y, _ = emu.launch_tail(T, act, x[:, 0].numpy(), ws[5].permute(2, 3, 1, 0).reshape(9, 64).numpy(), bs[5].numpy())
    ref = vdsr_forward(x.double(), ws, bs)[:, 0].numpy()
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-3)

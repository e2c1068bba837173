"""The CUDA C++ backend (csrc/, ``vdsr_fast._C``): equivalence with the float64 reference on the GPU,
kernel-level checks, and the clear errors when it cannot run (CPU-runnable).

Equivalence rule (DESIGN.md §6): ``err(cuda) <= 2 * err(torch, same dtype) + atol[dtype] * scale`` with
errors measured against the float64 reference on the same weights and input (max abs difference) and
``scale = max(1, max |ref64|)``.  GPU tests skip with the reason when there is no CUDA device or the
extension is not built; nothing here touches the GPU at import time.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from equivalence import HALF_DTYPES as DTYPES
from equivalence import assert_equivalent, ref64

from vdsr_fast.engine import BackendUnavailable, Engine
from vdsr_fast.kernels import pack_winograd_weight
from vdsr_fast.kernels.cuda import CudaBackend, pack_body_weight, variant_unavailable
from vdsr_fast.reference import VDSR

# Relative rounding of one stored value (half an ulp at magnitude 1, doubled for the fp32 sum order).
RTOL_STORE = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def _ext():
    try:
        from vdsr_fast import _C
    except ImportError as e:
        pytest.skip(f"the CUDA extension vdsr_fast._C is not built: {e}")
    return _C


@pytest.fixture
def cuda_device() -> torch.device:
    """The CUDA device the backend runs on; skips (at run time) with the reason when it cannot."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the CUDA backend tests need a GPU")
    device = torch.device("cuda", torch.cuda.current_device())
    reason = CudaBackend.available(device)
    if reason is not None:
        pytest.skip(f"CUDA backend unavailable: {reason}")
    return device


def _model(depth: int = 20, channels: int = 64) -> VDSR:
    m = VDSR(depth=depth, channels=channels)
    with torch.no_grad():
        for conv in m.layers:
            conv.bias.uniform_(-0.05, 0.05)
    return m.eval()


# --- the whole network ----------------------------------------------------------------------------


def _check_network(device, dtype, shape, **options):
    n, h, w = shape
    model = _model().to(device)
    x = torch.rand(n, 1, h, w, device=device)
    ref = ref64(model, x)
    same = Engine(model, backend="torch", dtype=dtype, device=device)(x)
    out = Engine(model, backend="cuda", dtype=dtype, device=device, **options)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_equivalent(out, same, ref, dtype, f"cuda VDSR-20 {shape} {dtype} {options}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 7, 5), (3, 37, 53), (1, 64, 48), (3, 19, 130)])
def test_network_matches_reference(cuda_device, dtype, shape):
    _check_network(cuda_device, dtype, shape)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [(1, 720, 1280), (1, 1080, 1920), (1, 2160, 3840)], ids=["720p", "1080p", "4k"])
def test_network_matches_reference_at_frame_sizes(cuda_device, dtype, shape):
    """The benchmark's frame sizes (the float64 reference runs on the GPU)."""
    _check_network(cuda_device, dtype, shape)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 37, 53), (1, 1080, 1920)], ids=["1x1", "3x37x53", "1080p"])
def test_network_with_the_tensor_core_head(cuda_device, dtype, shape):
    """``mma_head=True``: the head on tensor cores (Y values and weights rounded to the dtype, as the reference
    path's conv rounds them), through the whole network."""
    _check_network(cuda_device, dtype, shape, mma_head=True)


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "cuda-graphs"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 37, 53), (1, 1080, 1920)], ids=["1x1", "3x37x53", "1080p"])
def test_network_by_programmatic_dependent_launch_wgmma(cuda_device, shape, graphs):
    """``pdl=True``: each strip body layer may start while the previous kernel finishes and waits for it
    (griddepcontrol.wait) before touching an activation buffer; eager and captured in a CUDA graph, each output
    twice (a race would show as a difference between runs or against the reference)."""
    v = _ext().body_variants()[_ext().body_auto_variant(cuda_device.index)]
    if not v["tail_partials"]:
        pytest.skip("programmatic dependent launch is used by the wgmma strip variants only (Hopper, sm_90a)")
    _check_network(cuda_device, torch.float16, shape, pdl=True, cuda_graphs=graphs)
    model = _model().to(cuda_device)
    e = Engine(model, backend="cuda", dtype=torch.float16, device=cuda_device, pdl=True, cuda_graphs=graphs)
    x = torch.rand(shape[0], 1, *shape[1:], device=cuda_device)
    first = e(x).clone()
    torch.testing.assert_close(e(x), first, rtol=0, atol=0)
    torch.testing.assert_close(first, Engine(model, backend="cuda", dtype=torch.float16, device=cuda_device)(x),
                               rtol=0, atol=0)  # fmt: skip


@pytest.mark.parametrize("variant", [4, 5, 6, 7, 8, 9, 10, 11])
def test_network_wgmma_variant_at_1080p(cuda_device, variant):
    """Each wgmma body variant (a candidate for the automatic choice) through the whole network at 1080p."""
    if why := variant_unavailable(_ext().body_variants()[variant], cuda_device):
        pytest.skip(why)
    _check_network(cuda_device, torch.float16, (1, 1080, 1920), body_variant=variant)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_shallow_networks(cuda_device, dtype, depth):
    """depth 2 has no body layer, 3 one (ping-pong parity), 4 two."""
    model = _model(depth=depth).to(cuda_device)
    x = torch.rand(2, 1, 23, 41, device=cuda_device)
    ref = ref64(model, x)
    same = Engine(model, backend="torch", dtype=dtype, device=cuda_device)(x)
    out = Engine(model, backend="cuda", dtype=dtype, device=cuda_device)(x)
    assert_equivalent(out, same, ref, dtype, f"cuda VDSR-{depth} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
def test_nan_poisoned_memory_is_never_read(cuda_device, dtype):
    """Outputs must not depend on what the activation buffers or fresh allocations held before."""
    model = _model(depth=5).to(cuda_device)
    x = torch.rand(3, 1, 37, 53, device=cuda_device)
    # Poison the caching allocator: the next allocations of these sizes reuse NaN-filled blocks.
    junk = [torch.full((3, 37, 53, 64), float("nan"), device=cuda_device, dtype=dtype) for _ in range(2)]
    junk.append(torch.full((3, 1, 37, 53), float("nan"), device=cuda_device))
    del junk
    engine = Engine(model, backend="cuda", dtype=dtype, device=cuda_device)
    first = engine(x)
    assert torch.isfinite(first).all()
    for buf in engine._impl.buffers(3, 37, 53):
        buf.fill_(float("nan"))
    second = engine(x)
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_input_dtypes_layouts_and_streams(cuda_device):
    model = _model(depth=6).to(cuda_device)
    engine = Engine(model, backend="cuda", dtype=torch.float16, device=cuda_device)
    base = torch.rand(2, 1, 30, 90, device=cuda_device, dtype=torch.float64)
    x = base[..., ::2]  # non-contiguous, float64
    assert not x.is_contiguous()
    out = engine(x)
    assert out.dtype == torch.float64 and out.shape == x.shape
    expected = engine(x.float().contiguous())
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=0)
    side = torch.cuda.Stream(cuda_device)
    side.wait_stream(torch.cuda.current_stream(cuda_device))
    with torch.cuda.stream(side):
        on_side = engine(x.float().contiguous())
    torch.cuda.current_stream(cuda_device).wait_stream(side)
    torch.testing.assert_close(on_side, expected, rtol=0, atol=0)
    half = engine(x.half())
    assert half.dtype == torch.float16


def test_cuda_graphs_match_eager(cuda_device):
    model = _model(depth=6).to(cuda_device)
    eager = CudaBackend(model, cuda_device, torch.float16)
    graphed = CudaBackend(model, cuda_device, torch.float16, cuda_graphs=True, max_cached_shapes=1)
    for shape in [(2, 1, 33, 20), (1, 1, 17, 70), (2, 1, 33, 20)]:  # the third re-captures after eviction
        x = torch.rand(shape, device=cuda_device)
        torch.testing.assert_close(graphed(x), eager(x), rtol=0, atol=0)
        x2 = torch.rand(shape, device=cuda_device)  # replay with new data
        torch.testing.assert_close(graphed(x2), eager(x2), rtol=0, atol=0)


# 3: Winograd (winograd_body.cuh), 4-5: wgmma (wgmma_body.cuh), 6-13: wgmma strip (wgmma_strip_body.cuh; 12-13: weights
# in registers), 14: ping-pong, 15-16: the direct kernel's 99 KB variants (conv3x3_body.cuh)
@pytest.mark.parametrize("variant", list(range(17)))
def test_network_every_body_variant(cuda_device, variant):
    C = _ext()
    assert len(C.body_variants()) == 17, "a new body variant: add its id here"
    v = C.body_variants()[variant]
    if why := variant_unavailable(v, cuda_device):
        with pytest.raises(BackendUnavailable, match="body variant"):
            CudaBackend(_model(depth=3).to(cuda_device), cuda_device, torch.float16, body_variant=variant)
        pytest.skip(why)
    model = _model(depth=8).to(cuda_device)
    x = torch.rand(2, 1, 45, 38, device=cuda_device)
    ref = ref64(model, x)
    same = Engine(model, backend="torch", dtype=torch.float16, device=cuda_device)(x)
    out = CudaBackend(model, cuda_device, torch.float16, body_variant=variant)(x)
    assert_equivalent(out, same, ref, torch.float16, f"cuda VDSR-8 body variant {v}")


def test_engine_tune_times_every_variant_and_keeps_a_correct_one(cuda_device):
    model = _model(depth=8).to(cuda_device)
    e = Engine(model, backend="cuda", dtype=torch.float16, device=cuda_device, tune=True)
    C = _ext()
    runnable = [v for v in C.body_variants() if variant_unavailable(v, cuda_device) is None]
    auto = C.body_variants()[C.body_auto_variant(cuda_device.index)]
    fused = auto["tail_partials"]
    # the automatic variant as "default", the others by label, the unfused tail, PDL and the fused head where the
    # automatic one is a strip variant (and the spread tail where it has one: variant 10, Hopper's), and the
    # tensor-core head
    assert len(e.tuning) == len(runnable) + (3 + auto["tail_spread"]) * fused + 1, e.tuning
    assert all(isinstance(ms, float) for ms in e.tuning.values()), e.tuning
    print(f"cuda tuning (ms, 720p, VDSR-8): {e.tuning}")
    x = torch.rand(2, 1, 45, 38, device=cuda_device)
    same = Engine(model, backend="torch", dtype=torch.float16, device=cuda_device)(x)
    assert_equivalent(e(x), same, ref64(model, x), torch.float16, f"tuned cuda engine ({e._impl.body_variant})")


def test_custom_op_and_torch_compile(cuda_device):
    model = _model(depth=4).to(cuda_device)
    backend = CudaBackend(model, cuda_device, torch.float16)
    x = torch.rand(2, 1, 21, 34, device=cuda_device)
    args = (x, backend.w_head, backend.b_head, backend.w_body, backend.b_body, backend.num_body,
            backend.w_tail, backend.b_tail, -1)  # fmt: skip
    torch.library.opcheck(torch.ops.vdsr_fast.cuda_vdsr.default, args)
    expected = backend(x)
    torch.testing.assert_close(backend.forward_op(x), expected, rtol=0, atol=0)
    compiled = torch.compile(backend, fullgraph=True)
    torch.testing.assert_close(compiled(x), expected, rtol=0, atol=0)


# --- single kernels -------------------------------------------------------------------------------


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 37, 53), (1, 300, 200), (1, 1080, 1920)])
def test_body_kernel_every_variant(cuda_device, dtype, shape):
    """One 64->64 layer per kernel variant against F.conv2d in float64 on the same rounded operands
    (direct and wgmma kernels: within a storage rounding; Winograd: DESIGN.md §6's rule against the direct
    layer in the same dtype, as tests/test_triton_winograd.py)."""
    C = _ext()
    n, h, w = shape
    x = torch.randn(n, h, w, 64, device=cuda_device).to(dtype)
    weight = (torch.randn(64, 64, 3, 3, device=cuda_device) * (2.0 / 576) ** 0.5).to(dtype)
    bias = torch.randn(64, device=cuda_device) * 0.1
    ref = F.relu(F.conv2d(x.permute(0, 3, 1, 2).double(), weight.double(), bias.double(), padding=1))
    ref = ref.permute(0, 2, 3, 1)
    same = F.relu(F.conv2d(x.permute(0, 3, 1, 2), weight, bias.to(dtype), padding=1)).permute(0, 2, 3, 1)
    code = C.DTYPE_FLOAT16 if dtype == torch.float16 else C.DTYPE_BFLOAT16
    ran = 0
    for v in C.body_variants():
        if variant_unavailable(v, cuda_device):
            continue
        packed = (pack_winograd_weight if v["winograd"] else pack_body_weight)(weight, dtype)
        out = torch.full_like(x, float("nan"))
        C.body(x.data_ptr(), out.data_ptr(), packed.data_ptr(), bias.data_ptr(), n, h, w, code,
               cuda_device.index, _stream(cuda_device), v["id"])  # fmt: skip
        torch.cuda.synchronize(cuda_device)
        if v["winograd"]:
            assert_equivalent(out, same, ref, dtype, f"variant {v}")
        else:
            tol = RTOL_STORE[dtype]
            torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol, msg=lambda m, v=v: f"variant {v}: {m}")
        ran += 1
    assert ran > 0, "no body variant runs on this GPU"


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
def test_head_and_tail_kernels(cuda_device, dtype):
    C = _ext()
    n, h, w = 2, 29, 45
    code = C.DTYPE_FLOAT16 if dtype == torch.float16 else C.DTYPE_BFLOAT16
    dev, stream = cuda_device, _stream(cuda_device)
    x = torch.rand(n, 1, h, w, device=dev)
    w0, b0 = torch.randn(64, 1, 3, 3, device=dev) * 0.5, torch.randn(64, device=dev) * 0.1
    act = torch.full((n, h, w, 64), float("nan"), device=dev, dtype=dtype)
    C.head(x.data_ptr(), act.data_ptr(), w0.reshape(64, 9).contiguous().data_ptr(), b0.data_ptr(), n, h, w, code,
           dev.index, stream)  # fmt: skip
    ref = F.relu(F.conv2d(x.double(), w0.double(), b0.double(), padding=1)).permute(0, 2, 3, 1)
    tol = RTOL_STORE[dtype]
    torch.testing.assert_close(act.double(), ref, rtol=tol, atol=1e-6)

    wl, bl = torch.randn(1, 64, 3, 3, device=dev) * 0.05, torch.randn(1, device=dev) * 0.1
    y = torch.full_like(x, float("nan"))
    wl_packed = wl.permute(2, 3, 1, 0).reshape(9, 64).contiguous()
    C.tail(act.data_ptr(), x.data_ptr(), y.data_ptr(), wl_packed.data_ptr(), bl.data_ptr(), n, h, w, code,
           dev.index, stream)  # fmt: skip
    ref_y = x.double() + F.conv2d(act.permute(0, 3, 1, 2).double(), wl.double(), bl.double(), padding=1)
    torch.testing.assert_close(y.double(), ref_y, rtol=0, atol=1e-5)


# --- CPU-runnable: clear errors -------------------------------------------------------------------


def test_engine_cuda_backend_unavailable_on_cpu():
    with pytest.raises(BackendUnavailable, match="backend 'cuda' cannot run on cpu"):
        Engine(_model(depth=3), backend="cuda", device="cpu")


def test_available_reports_missing_extension(monkeypatch):
    import vdsr_fast

    monkeypatch.delattr(vdsr_fast, "_C", raising=False)
    monkeypatch.setitem(sys.modules, "vdsr_fast._C", None)  # makes `from vdsr_fast import _C` fail
    reason = CudaBackend.available(torch.device("cuda"))
    assert reason is not None and "vdsr_fast._C is not built" in reason
    with pytest.raises(BackendUnavailable, match="not built"):
        Engine(_model(depth=3), backend="cuda", device="cuda:0")


def _simulated_gpus(monkeypatch, gpus, current=0):
    """Stub torch.cuda's queries with ``gpus``: (name, (major, minor), shared memory per block opt-in) per index."""
    def gpu(i=None):  # i: an index, a device or None (the current one), as torch.cuda's queries take it
        index = i if isinstance(i, int) else None if i is None else torch.device(i).index
        return gpus[current if index is None else index]

    def props(i=None):
        name, cc, optin = gpu(i)
        return SimpleNamespace(name=name, major=cc[0], minor=cc[1], shared_memory_per_block_optin=optin)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: gpu(i)[1])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: gpu(i)[0])
    monkeypatch.setattr(torch.cuda, "get_device_properties", props)


H100 = ("NVIDIA H100", (9, 0), 227 * 1024)
A100 = ("NVIDIA A100", (8, 0), 163 * 1024)
T4 = ("Tesla T4", (7, 5), 64 * 1024)


def test_variant_unavailable_names_what_each_variant_needs(monkeypatch):
    """The wgmma variant runs on compute capability 9.0 only (an sm_90a image); the rest by shared memory.
    Simulated GPU properties, the real extension's variant table."""
    C = _ext()
    wgmma = [v for v in C.body_variants() if v["wgmma"]]
    assert [v["id"] for v in wgmma] == list(range(4, 15))  # ids 4, 5, then the strip and ping-pong ones
    assert not any(v["winograd"] for v in wgmma)
    direct = C.body_variants()[0]

    _simulated_gpus(monkeypatch, [A100])
    assert "shared memory per block; NVIDIA A100 allows" in variant_unavailable(direct, torch.device("cuda", 0))
    _simulated_gpus(monkeypatch, [("NVIDIA B200", (10, 0), 227 * 1024)])  # sm_90a code does not run on later archs
    assert "compute capability 9.0 only; NVIDIA B200 is 10.0" in variant_unavailable(wgmma[0], torch.device("cuda", 0))
    _simulated_gpus(monkeypatch, [H100])
    expected = None if "90a" in C.CUDA_ARCHS else "needs a build for sm_90a"
    got = variant_unavailable(wgmma[0], torch.device("cuda", 0))
    assert got == expected or expected in got
    assert variant_unavailable(direct, torch.device("cuda", 0)) is None


@pytest.mark.parametrize("optin", [99 * 1024, 99 * 1024 - 16])
def test_sm86_sm89_cards_run_the_99_kb_variants_and_smaller_ones_are_refused(monkeypatch, optin):
    """sm_86/sm_89 cards (RTX 30xx/40xx, A10, L4, L40S) allow 99 KB of shared memory per block: body variants 15
    and 16 need exactly that, every other non-wgmma one more. The backend takes such a card (the variant it runs
    is the first that fits, ``body_auto_variant``), and refuses one that allows less up front (`auto` moves on)
    instead of failing at the first launch. Simulated: the extension is real, the GPU's properties are stubbed."""
    C = _ext()
    small = [v for v in C.body_variants() if not v["wgmma"] and v["smem_bytes"] <= 99 * 1024]
    assert [(v["id"], v["smem_bytes"], v["tile_h"], v["tile_w"], v["stages"]) for v in small] == [
        (15, 101376, 4, 16, 2), (16, 101376, 4, 16, 2)]  # fmt: skip
    assert [v["threads"] for v in small] == [128, 256]
    _simulated_gpus(monkeypatch, [("NVIDIA L4", (8, 9), optin)])
    monkeypatch.setattr(C, "check_device", lambda index: None)  # the real one needs the GPU
    reason = CudaBackend.available(torch.device("cuda", 0))
    if optin >= 101376:
        assert reason is None
        assert all(variant_unavailable(v, torch.device("cuda", 0)) is None for v in small)
        # the others need more shared memory, or compute capability 9.0 (the wgmma ones with the weights in registers)
        assert all(variant_unavailable(v, torch.device("cuda", 0)) for v in C.body_variants() if v not in small)
    else:
        assert reason == f"its body kernel needs 101376 bytes of shared memory per block and NVIDIA L4 allows {optin}"


@pytest.mark.parametrize("device, gpus, current, expected", [
    ("cpu", [H100], 0, "it runs on CUDA devices only, not on 'cpu'"),
    ("cuda:1", [H100], 0, "there is no CUDA device 1 (1 visible)"),
    ("cuda:1", [H100, T4], 0, "it needs compute capability 8.0 or newer (mma.sync bf16, cp.async); Tesla T4 is 7.5"),
    ("cuda", [H100, T4], 1, "Tesla T4 is 7.5"),  # a bare "cuda" is the current device
    ("cuda:0", [T4, A100], 0, "Tesla T4 is 7.5"),
], ids=["cpu", "index-beyond-count", "sm75", "bare-cuda-is-current", "sm75-at-0"])  # fmt: skip
def test_available_says_why_a_device_cannot_run_it(monkeypatch, device, gpus, current, expected):
    """CudaBackend.available's reasons on simulated GPUs (the extension is real, torch.cuda's queries stubbed)."""
    C = _ext()
    _simulated_gpus(monkeypatch, gpus, current)
    monkeypatch.setattr(C, "check_device", lambda index: None)  # the real one needs the GPU
    reason = CudaBackend.available(torch.device(device))
    assert reason is not None and expected in reason, reason
    if device == "cuda:0":
        assert CudaBackend.available(torch.device("cuda:1")) is None  # the A100 beside it runs it


def test_available_reports_a_build_for_other_archs(monkeypatch):
    """An extension built without this GPU's architecture (check_device raises) is a reason, not a crash at launch."""
    C = _ext()
    _simulated_gpus(monkeypatch, [A100])

    def check_device(index):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(C, "check_device", check_device)
    reason = CudaBackend.available(torch.device("cuda", 0))
    assert reason is not None and "was built for CUDA archs" in reason and "no kernel image" in reason, reason


def test_variant_unavailable_without_an_optin_limit_or_an_sm_90a_build(monkeypatch):
    """A torch whose device properties lack ``shared_memory_per_block_optin`` cannot be checked for shared memory (no
    refusal on that ground); a build without sm_90a code refuses the wgmma variants even on compute capability 9.0."""
    C = _ext()
    direct, wgmma = C.body_variants()[0], C.body_variants()[10]
    assert not direct["wgmma"] and wgmma["wgmma"]
    props = SimpleNamespace(name="NVIDIA H100", major=9, minor=0)  # no shared_memory_per_block_optin
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=None: props)
    monkeypatch.setattr(C, "CUDA_ARCHS", "80,90a")
    assert variant_unavailable(direct, torch.device("cuda", 0)) is None
    assert variant_unavailable(wgmma, torch.device("cuda", 0)) is None
    monkeypatch.setattr(C, "CUDA_ARCHS", "80,90")  # sm_90 code has no wgmma
    assert variant_unavailable(wgmma, torch.device("cuda", 0)) == (
        "body variant 10 (wgmma) needs a build for sm_90a; this one is for '80,90'")
    assert variant_unavailable(direct, torch.device("cuda", 0)) is None


@pytest.mark.parametrize("gpu, auto, depth", [(H100, 10, 4), (H100, 6, 3), (A100, 1, 20)],
                         ids=["h100-spread", "h100-d3", "a100"])  # fmt: skip
def test_tuning_candidates_on_simulated_gpus(monkeypatch, gpu, auto, depth):
    """What ``Engine(tune=True)`` times besides the default: the options of the automatic variant's kind (unfused tail,
    PDL, the spread tail where the variant has it, the fused head with a body layer besides the fused tail's) and
    every other body variant this GPU runs, never the automatic one again."""
    C = _ext()
    _simulated_gpus(monkeypatch, [gpu])
    monkeypatch.setattr(C, "CUDA_ARCHS", "80,90a")
    monkeypatch.setattr(C, "body_auto_variant", lambda index: auto)  # the real one asks the GPU
    got = CudaBackend.tuning_candidates(_model(depth=depth), torch.device("cuda", 0), torch.float16)
    options = [o for _, o in got]
    variants = [o["body_variant"] for o in options if "body_variant" in o]
    if gpu is H100:
        assert options[:3] == [{"fuse_tail": False}, {"mma_head": True}, {"pdl": True}]
        assert ({"tail_spread": True} in options) == (auto == 10)
        assert ({"fuse_head": True} in options) == (depth >= 4)
        assert variants == [v for v in range(17) if v != auto]  # every variant fits an H100
    else:
        assert options[0] == {"mma_head": True} and len(options) == 1 + len(variants)  # no strip-variant options
        assert variants == [2, 15, 16]  # the direct kernels that fit 163 KB, but the automatic one
    assert ("body variant 2 (direct, 8x16 px, 2 stages)", {"body_variant": 2}) in got


def test_cuda_backend_refuses_a_cpu_device_and_other_dtypes():
    """Constructed directly (not through Engine, which checks first), the backend refuses a CPU device and a storage
    dtype it has no kernels for before touching a GPU."""
    _ext()
    model = _model(depth=3)
    with pytest.raises(BackendUnavailable, match="needs a CUDA device, got cpu"):
        CudaBackend(model, torch.device("cpu"), torch.float16)
    for dtype in (torch.float32, torch.float8_e4m3fn):
        with pytest.raises(BackendUnavailable, match=f"unsupported storage dtype {dtype}"):
            CudaBackend(model, torch.device("cuda", 0), dtype)


def test_extension_argument_checks():
    """The binding validates pointers, shapes and dtype codes before touching the GPU."""
    C = _ext()
    with pytest.raises(ValueError, match="in is a null pointer"):
        C.body(0, 1024, 1024, 1024, 1, 1, 1, 0, 0, 0)
    with pytest.raises(ValueError, match="overlap"):
        C.body(4096, 4096 + 64, 1 << 20, 1 << 21, 1, 1, 1, 0, 0, 0)
    with pytest.raises(ValueError, match="dtype code"):
        C.body(4096, 1 << 20, 1 << 21, 1 << 22, 1, 1, 1, 7, 0, 0)
    with pytest.raises(ValueError, match="non-empty"):
        C.head(4096, 1 << 20, 1 << 21, 1 << 22, 0, 4, 4, 0, 0, 0)
    with pytest.raises(ValueError, match="16-byte aligned"):
        C.tail(4100, 1 << 20, 1 << 21, 1 << 22, 1 << 23, 1, 1, 1, 0, 0, 0)
    with pytest.raises(ValueError, match="x and out overlap"):
        C.head(4096, 4096, 1 << 21, 1 << 22, 1, 4, 4, 0, 0, 0)
    with pytest.raises(ValueError, match="z and x overlap"):  # the gather reads x while it reads z (y may alias x)
        C.tail_gather(4096, 4096 + 64, 1 << 20, 1 << 21, 1, 4, 4, 0, 0)
    variants = C.body_variants()
    assert [v["id"] for v in variants] == list(range(len(variants)))
    # The warps of a CTA cover its tile's pixels x 64 channels -- but in the ping-pong variant (14) each warpgroup
    # has its own tile (a row).
    tiles_at_once = {v["id"]: 2 if v["id"] == 14 else 1 for v in variants}
    assert all(v["warp_m"] * (v["threads"] // 32) * v["warp_n"] == tiles_at_once[v["id"]] * v["tile_h"] * v["tile_w"] * 64
               for v in variants)  # fmt: skip
    for bad in (len(variants), -2):  # the three entry points that take a variant check it alike
        with pytest.raises(ValueError, match="no body kernel variant"):
            C.body(4096, 1 << 20, 1 << 21, 1 << 22, 1, 1, 1, 0, 0, 0, bad)
        with pytest.raises(ValueError, match="no body kernel variant"):
            C.body_tail_partials(4096, 1 << 20, 1 << 21, 1 << 22, 1 << 23, 1, 1, 1, 0, 0, 0, bad)
        with pytest.raises(ValueError, match="no body kernel variant"):
            C.forward(*[k << 20 for k in range(1, 9)], 18, 9 << 20, 10 << 20, 1, 1, 1, 0, 0, 0, bad)


def test_extension_forward_checks_every_argument_before_its_first_launch():
    """_C.forward refuses what a later kernel would refuse before it queues the head or a body layer (was: after the
    head and up to 18 body layers had been queued; here without a GPU the head launch's CUDA call failed first with
    a RuntimeError instead of the ValueError)."""
    C = _ext()
    variants = C.body_variants()
    plain = next(v["id"] for v in variants if not v["tail_partials"])
    partial_only = next(v["id"] for v in variants if v["tail_partials"] and not v["tail_spread"])
    mb = 1 << 20
    args = dict(x=1 * mb, y=2 * mb, buf0=3 * mb, buf1=4 * mb, head_w=5 * mb, head_b=6 * mb, body_w=7 * mb, body_b=8 * mb,
                num_body=18, tail_w=9 * mb, tail_b=10 * mb, n=1, h=4, w_=4, dtype=0, device=0, stream=0)  # fmt: skip
    for bad, match in [
        (dict(tail_spread=True), "tail_spread is a schedule of the fused tail"),
        (dict(fuse_tail=True, variant=plain), f"variant {plain} has no tail_partials kernel"),
        (dict(fuse_tail=True, tail_spread=True, variant=partial_only), f"variant {partial_only} has no spread tail"),
        (dict(fuse_head=True, head_schedule=C.HEAD_SCHEDULES), "no fused-head schedule"),
        (dict(y=0), "y is a null pointer"),
        (dict(tail_w=0), "tail_w is a null pointer"),
        (dict(tail_b=0), "tail_b is a null pointer"),
        (dict(body_w=7 * mb + 8), "body_w must be 16-byte aligned"),
        (dict(x=3 * mb + 64), "x and a buffer overlap"),
        (dict(y=4 * mb), "y and a buffer overlap"),
    ]:
        with pytest.raises(ValueError, match=match):
            C.forward(**{**args, **bad})


def test_cuda_backend_rejects_other_channel_counts(cuda_device):
    with pytest.raises(BackendUnavailable, match="64 channels"):
        Engine(_model(depth=4, channels=8), backend="cuda", device=cuda_device)

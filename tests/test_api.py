"""upscale(): layouts, dtypes, the DESIGN.md §2 pipeline, and argument errors."""

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vdsr_fast
from vdsr_fast import BackendUnavailable, Engine, imresize, rgb_to_ycbcr, upscale, vdsr_forward, ycbcr_to_rgb


def _expected_rgb(model, x, s):
    """The pipeline written out with the reference pieces, in float64."""
    ycc = imresize(rgb_to_ycbcr(x.double()), s)
    y = vdsr_forward(ycc[:, :1], [w.double() for w in model.weights], [b.double() for b in model.biases])
    return ycbcr_to_rgb(torch.cat([y, ycc[:, 1:]], 1)).clamp(0, 1)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_rgb_pipeline_matches_reference(tiny_model, scale):
    x = torch.rand(2, 3, 9, 7)
    out = upscale(x, scale, tiny_model)
    assert out.shape == (2, 3, 9 * scale, 7 * scale) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _expected_rgb(tiny_model, x, scale), rtol=0, atol=2e-5)


def test_y_only_and_2d_and_3d_layouts(tiny_model):
    y = torch.rand(3, 1, 8, 6, dtype=torch.float64)
    out = upscale(y, 2, tiny_model)
    ref = vdsr_forward(imresize(y, 2), [w.double() for w in tiny_model.weights], [b.double() for b in tiny_model.biases]).clamp(0, 1)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)  # network in float32, the rest in float64
    assert upscale(y[0, 0], 2, tiny_model).shape == (16, 12)
    assert upscale(y[0], 2, tiny_model).shape == (1, 16, 12)
    torch.testing.assert_close(upscale(y[0, 0], 2, tiny_model), out[0, 0], rtol=0, atol=1e-6)  # batch-size-dependent conv order
    rgb = torch.rand(3, 5, 4)
    assert upscale(rgb, 3, tiny_model).shape == (3, 15, 12)


def test_batch_equals_single_images(tiny_model):
    x = torch.rand(3, 3, 10, 11)
    out = upscale(x, 2, tiny_model)
    for i in range(3):
        torch.testing.assert_close(upscale(x[i], 2, tiny_model), out[i], rtol=0, atol=1e-6)


def test_uint8_rounds_and_clamps(tiny_model):
    x = (torch.rand(1, 3, 6, 6) * 255).to(torch.uint8)
    out = upscale(x, 2, tiny_model)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 12, 12)
    ref = _expected_rgb(tiny_model, x.double() / 255, 2)
    assert (out.double() - ref * 255).abs().max() <= 0.5 + 1e-3


def test_uint16_rounds_half_up_on_the_full_range(tiny_model):
    """uint16 pixels are read as v / 65535 and written as floor(65535 x + 0.5) of the clamped result (MATLAB's
    im2double / im2uint16): within half a level of the float64 pipeline, plus the float32 pipeline's error (measured
    0.03 level of 65535 here; 0.1 allowed). Truncating, or a scale of 65536, is off by up to a whole level."""
    x = torch.randint(0, 65536, (2, 3, 9, 7), dtype=torch.int32)
    out = upscale(x.to(torch.uint16), 2, tiny_model)
    assert out.dtype == torch.uint16 and out.shape == (2, 3, 18, 14)
    ref = _expected_rgb(tiny_model, x.double() / 65535, 2) * 65535
    assert (out.to(torch.int32).double() - ref).abs().max() <= 0.5 + 0.1


def test_rgba_keeps_bicubic_alpha(tiny_model):
    x = torch.rand(1, 4, 6, 5)
    out = upscale(x, 2, tiny_model)
    assert out.shape == (1, 4, 12, 10)
    torch.testing.assert_close(out[:, 3:], imresize(x[:, 3:], 2).clamp(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(out[:, :3], upscale(x[:, :3], 2, tiny_model), rtol=0, atol=0)


def test_half_and_bfloat16_inputs_keep_dtype(tiny_model):
    for dt in (torch.float16, torch.bfloat16):
        out = upscale(torch.rand(1, 3, 5, 5).to(dt), 2, tiny_model)
        assert out.dtype == dt


def test_non_contiguous_and_channels_last(tiny_model):
    x = torch.rand(1, 3, 12, 10)
    ref = upscale(x, 2, tiny_model)
    torch.testing.assert_close(upscale(x.contiguous(memory_format=torch.channels_last), 2, tiny_model), ref, rtol=0, atol=1e-6)
    xt = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    torch.testing.assert_close(upscale(xt, 2, tiny_model), ref, rtol=0, atol=1e-6)


def test_input_is_not_modified(tiny_model):
    x = torch.rand(1, 3, 6, 6)
    before = x.clone()
    upscale(x, 2, tiny_model)
    assert torch.equal(x, before)


@pytest.mark.parametrize("scale", [0, 0.99, -2, 4.01, 5, float("nan"), "2", True])
def test_bad_scales(tiny_model, scale):
    with pytest.raises(ValueError, match="scale must be a number from 1 to 4"):
        upscale(torch.rand(1, 3, 4, 4), scale, tiny_model)


@pytest.mark.parametrize("size, match", [((3, 8), "each side must be 1 to 4 times"), ((8, 17), "each side must be 1 to 4"),
                                         ((8.0, 8), "size must be \\(height, width\\)"), ((8,), "size must be")])  # fmt: skip
def test_bad_sizes(tiny_model, size, match):
    with pytest.raises(ValueError, match=match):
        upscale(torch.rand(1, 3, 4, 4), model=tiny_model, size=size)
    with pytest.raises(ValueError, match="give scale or size, not both"):
        upscale(torch.rand(1, 3, 4, 4), 2, tiny_model, size=(8, 8))


@pytest.mark.parametrize("scale, k, hw", [(1.5, 2, (15, 23)), (2.5, 3, (25, 38)), (1, 2, (10, 15)), (3.25, 4, (33, 49)),
                                          ((20, 45), 3, (20, 45)), ((10, 30), 2, (10, 30))])  # fmt: skip
def test_other_factors_are_the_next_trained_scale_resized_down(tiny_model, scale, k, hw):
    """A factor VDSR was not trained on (or a size): the network at the next trained scale, then MATLAB's bicubic
    down to MATLAB's ceil(factor * n) size (on Set5 this beat VDSR at the factor itself: README). uint8 NHWC frames,
    float NCHW tensors, numpy arrays and out= all follow it."""
    from vdsr_fast.api import output_plan

    x = torch.rand(2, 3, 10, 15)
    kw = {"size": scale} if isinstance(scale, tuple) else {"scale": scale}
    assert output_plan(10, 15, **kw) == (k, hw)
    got = upscale(x, model=tiny_model, **kw)
    want = vdsr_fast.imresize(upscale(x, k, tiny_model), size=hw).clamp(0, 1)
    assert got.shape == (2, 3, *hw)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    frames = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)  # NHWC uint8, via out= (poisoned)
    out = torch.full((2, *hw, 3), 7, dtype=torch.uint8)
    assert upscale(frames, model=tiny_model, out=out, **kw) is out
    ref = vdsr_fast.imresize(upscale(frames.float() / 255, k, tiny_model, layout="NHWC").permute(0, 3, 1, 2), size=hw)
    torch.testing.assert_close(out, (ref.clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8).permute(0, 2, 3, 1), rtol=0, atol=0)
    assert upscale(frames, model=tiny_model, **kw).is_contiguous()  # packed NHWC frames, as at 2, 3 and 4
    assert upscale(frames[0].numpy(), model=tiny_model, **kw).flags.c_contiguous
    with pytest.raises(ValueError, match=f"expected \\(2, {hw[0]}, {hw[1]}, 3\\)"):
        upscale(frames, model=tiny_model, out=torch.zeros(2, 2 * 10, 2 * 15, 3, dtype=torch.uint8), **kw)


def test_integer_factors_given_as_size_take_the_direct_path(tiny_model):
    x = torch.rand(1, 3, 6, 7)
    torch.testing.assert_close(upscale(x, model=tiny_model, size=(18, 21)), upscale(x, 3, tiny_model), rtol=0, atol=0)
    torch.testing.assert_close(upscale(x, 2.0, tiny_model), upscale(x, 2, tiny_model), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(1, 2, 4, 4), (1, 5, 4, 4), (4,), (1, 1, 1, 4, 4)])
def test_bad_shapes(tiny_model, shape):
    with pytest.raises(ValueError, match="upscale: img"):
        upscale(torch.rand(shape), 2, tiny_model)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64])
def test_bad_dtypes(tiny_model, dtype):
    with pytest.raises(TypeError, match="dtype"):
        upscale(torch.zeros(1, 3, 4, 4, dtype=dtype), 2, tiny_model)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("layout", ["sparse_coo", "sparse_csr"])
def test_non_strided_layouts_are_refused(tiny_model, layout):
    make = {"sparse_coo": torch.Tensor.to_sparse, "sparse_csr": torch.Tensor.to_sparse_csr}[layout]
    y = torch.rand(4, 4)
    with pytest.raises(TypeError, match=f"img has layout torch.{layout}; expected a dense"):
        upscale(make(y), 2, tiny_model)
    with pytest.raises(TypeError, match=f"out has layout torch.{layout}; expected a dense"):
        upscale(y, 2, tiny_model, out=make(torch.zeros(8, 8)))


@pytest.mark.parametrize("dtype, error, match", [("float16", TypeError, "dtype must be a torch.dtype"),
                                                 ("fp16", TypeError, "dtype must be a torch.dtype"),
                                                 (np.float16, TypeError, "dtype must be a torch.dtype"),
                                                 (torch.int32, ValueError, "dtype must be one of torch.float16.*got torch.int32"),
                                                 (torch.complex64, ValueError, "dtype must be one of")])  # fmt: skip
def test_bad_engine_dtypes(tiny_model, dtype, error, match):
    """dtype= (the engine's activations) is a torch.dtype some backend runs, checked before anything is built."""
    with pytest.raises(error, match=f"upscale: {match}"):
        upscale(torch.rand(1, 3, 4, 4), 2, tiny_model, backend="torch", dtype=dtype)
    with pytest.raises(error, match=f"Engine: {match}"):
        Engine(tiny_model, backend="torch", device="cpu", dtype=dtype)
    with pytest.raises(error, match=f"get_engine: {match}"):
        vdsr_fast.get_engine(tiny_model, "cpu", "torch", dtype)


_NO_CUDA = (BackendUnavailable, r"run on cuda.*torch: no CUDA device available")


@pytest.mark.parametrize("device, error, match", [
    ("cuda", *_NO_CUDA),
    pytest.param(f"cuda:{torch.cuda.device_count()}", ValueError, "there are only", marks=pytest.mark.gpu)
    if torch.cuda.is_available() else (f"cuda:{torch.cuda.device_count()}", *_NO_CUDA),  # gpu: the GPU run selects it
    ("nope", ValueError, "(Engine|get_engine): device must be a torch.device"),
    (3.5, ValueError, "(Engine|get_engine): device must be a torch.device"),  # torch.device() raises TypeError for it
])  # fmt: skip
def test_engine_devices_that_cannot_compute(tiny_model, device, error, match):
    """A device the engine cannot compute on: each backend's reason (no CUDA here), or what is wrong with it."""
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(error, match=match):
        Engine(tiny_model, device=device)
    with pytest.raises(error, match=match):
        vdsr_fast.get_engine(tiny_model, device)
    with pytest.raises(error, match=match.replace("torch: ", "")):  # backend="torch": its own reason
        Engine(tiny_model, backend="torch", device=device)


def test_resolve_device_pins_a_bare_cuda_to_the_current_device(monkeypatch):
    """A bare "cuda" becomes the current CUDA device (where torch allocates), so it compares equal to the device of
    the tensors made there; an explicit index and other device types stay as given. Simulated current device."""
    from vdsr_fast.kernels import resolve_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("cuda") == resolve_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("meta") == torch.device("meta")


def test_input_requiring_grad_gives_a_plain_output(tiny_model):
    """upscale() is inference only: no autograd graph is recorded, the input's flag is irrelevant."""
    x = torch.rand(1, 3, 5, 6, requires_grad=True)
    out = upscale(x, 2, tiny_model)
    assert not out.requires_grad and out.grad_fn is None
    torch.testing.assert_close(out, upscale(x.detach(), 2, tiny_model), rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])  # gpu: the GPU run selects it
def test_an_ambient_autocast_does_not_change_the_result(tiny_model, device):
    """A pipeline may call upscale() or an Engine inside its own torch.autocast region: the engine's dtype is its own,
    so the result is the one without autocast, bit for bit (it was the network in bf16 on the CPU, 3 levels off in
    8 bits with the shipped weights), and the caller's autocast is still on afterwards."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = tiny_model.to(device)
    x = torch.rand(1, 3, 9, 11, device=device)
    y = torch.rand(2, 1, 9, 11, device=device)
    engine = Engine(model, backend="torch", dtype=torch.float32, device=device)
    want, want_y = upscale(x, 2, model, backend="torch", dtype=torch.float32), engine(y)
    with torch.autocast(device, dtype=torch.bfloat16 if device == "cpu" else torch.float16):
        assert not torch.equal(model(y), want_y)  # autocast does recast the plain model here
        got, got_y = upscale(x, 2, model, backend="torch", dtype=torch.float32), engine(y)
        made_inside = Engine(model, backend="torch", dtype=torch.float32, device=device)(y)
        assert torch.is_autocast_enabled(device)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_y, want_y, rtol=0, atol=0)
    torch.testing.assert_close(made_inside, want_y, rtol=0, atol=0)


def test_empty_and_not_a_tensor(tiny_model):
    for shape in ((0, 3, 4, 4), (1, 3, 0, 4), (1, 3, 4, 0), (0, 5)):
        with pytest.raises(ValueError, match=r"upscale: img is empty \(shape"):
            upscale(torch.rand(shape), 2, tiny_model)
    with pytest.raises(TypeError, match="img must be a torch.Tensor, a numpy array or an array with __dlpack__"):
        upscale([[0.5]], 2, tiny_model)
    with pytest.raises(TypeError, match="out must be a torch.Tensor, a numpy array or an array with __dlpack__"):
        upscale(torch.rand(1, 1, 4, 4), 2, tiny_model, out=[[0.5]])
    with pytest.raises(TypeError, match="VDSR"):
        upscale(torch.rand(1, 3, 4, 4), 2, model=object())


def test_engine_is_cached_and_backend_errors(tiny_model):
    x = torch.rand(1, 1, 5, 5)
    upscale(x, 2, tiny_model, backend="torch")
    engines = tiny_model.__dict__["_vdsr_engines"]
    n = len(engines)
    upscale(x, 2, tiny_model, backend="torch")
    assert len(engines) == n
    with pytest.raises(ValueError, match="unknown backend"):
        upscale(x, 2, tiny_model, backend="nope")
    with pytest.raises(BackendUnavailable, match="cuda"):
        Engine(tiny_model, backend="cuda", device="cpu")


def test_engine_checks_inputs(tiny_model):
    e = Engine(tiny_model, backend="torch", device="cpu")
    assert e.dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        e(torch.rand(1, 3, 4, 4))
    with pytest.raises(TypeError, match="floating"):
        e(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))


def test_auto_on_cpu_is_the_reference(tiny_model):
    """backend="auto" never picks the fast backends' GPU code on the CPU (Triton's interpreter), in any dtype."""
    assert Engine(tiny_model, device="cpu").backend == "torch"
    for dtype in (torch.float16, torch.bfloat16, torch.float8_e4m3fn):
        assert Engine(tiny_model, device="cpu", dtype=dtype).backend == "torch"
        assert vdsr_fast.get_engine(tiny_model, "cpu", dtype=dtype).backend == "torch"
    assert vdsr_fast.available_backends("cpu")["torch"] is None


def test_available_backends_defaults_to_the_device_this_machine_has():
    """README: available_backends() shows which backends run. With no argument it asked about "cuda", so on a machine
    without a GPU even the PyTorch reference read as unusable ('no CUDA device available')."""
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert vdsr_fast.available_backends() == vdsr_fast.available_backends(here)
    assert vdsr_fast.available_backends()["torch"] is None


def test_self_check_bound_is_a_hundredth_plus_five_percent_of_the_residual(tiny_model):
    """self_check's documented bound: 1e-2 + 5% of the largest |residual| of the float64 reference on the check's
    input. An output off by 0.9 of that bound passes, by 1.1 of it fails (a bound taken on the output rather than the
    residual, or a looser percentage, would let the second through)."""
    from vdsr_fast.engine import gross_error_bound, self_check

    w64, b64 = [w.detach().double() for w in tiny_model.weights], [b.detach().double() for b in tiny_model.biases]

    def off_by(fraction):
        def run(y):
            y64 = y.double()
            ref = vdsr_forward(y64, w64, b64)
            return ref + fraction * (1e-2 + 0.05 * (ref - y64).abs().max().item())  # y is x.float(): ~1e-8 from x

        return run

    cpu = torch.device("cpu")
    assert self_check(off_by(0.9), tiny_model, cpu) is None
    assert "max error" in self_check(off_by(1.1), tiny_model, cpu)
    x = torch.rand(1, 1, 10, 9, dtype=torch.float64)
    ref = vdsr_forward(x, w64, b64)
    assert gross_error_bound(tiny_model, x, ref, torch.float16) == pytest.approx(1e-2 + 0.05 * (ref - x).abs().max().item(), rel=1e-12)


def test_fast_backends_default_to_float32_on_the_cpu(tiny_model):
    """Engine's default dtype: float32 for the PyTorch reference and on the CPU, also for a fast backend run there
    (Triton's interpreter); float16 is the fast backends' default on a GPU only."""
    if (why := vdsr_fast.available_backends("cpu")["triton"]) is not None:
        pytest.skip(why)
    assert Engine(tiny_model, backend="triton", device="cpu").dtype == torch.float32
    assert Engine(tiny_model, backend="torch", device="cpu").dtype == torch.float32


def test_self_check_catches_a_wrong_backend(tiny_model):
    from vdsr_fast.engine import self_check

    good = Engine(tiny_model, backend="torch", device="cpu")
    assert self_check(good, tiny_model, torch.device("cpu")) is None
    assert "self-check" in self_check(lambda y: good(y) + 0.1, tiny_model, torch.device("cpu"))
    assert "self-check" in self_check(lambda y: good(y) * float("nan"), tiny_model, torch.device("cpu"))

    def raises(y):
        raise RuntimeError("too many resources requested for launch")

    assert "self-check run failed: RuntimeError: too many resources" in self_check(raises, tiny_model, torch.device("cpu"))


def test_model_with_cached_engines_pickles_and_copies(tiny_model):
    """upscale() caches engines on the model; torch.save / deepcopy leave them out (buffers, locks)."""
    import copy
    import io

    x = torch.rand(1, 3, 5, 4)
    expected = upscale(x, 2, tiny_model, backend="torch")
    assert tiny_model.__dict__["_vdsr_engines"]
    twin = copy.deepcopy(tiny_model)
    assert "_vdsr_engines" not in twin.__dict__
    torch.save(tiny_model, io.BytesIO())  # the whole module
    torch.testing.assert_close(upscale(x, 2, twin, backend="torch"), expected, rtol=0, atol=0)
    assert tiny_model.__dict__["_vdsr_engines"]  # the original keeps its cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_engine_follows_weight_updates(tiny_model, dtype):
    """An engine packs (and, in float64 or on a GPU, copies) the weights: after load_state_dict or an
    in-place update, upscale() rebuilds it instead of computing with the old weights."""
    from vdsr_fast import VDSR

    x = torch.rand(1, 1, 6, 5, dtype=torch.float64)
    other = VDSR(tiny_model.depth, tiny_model.channels)
    before = upscale(x, 2, tiny_model, backend="torch", dtype=dtype)
    engine = vdsr_fast.get_engine(tiny_model, "cpu", "torch", dtype)
    assert vdsr_fast.get_engine(tiny_model, "cpu", "torch", dtype) is engine  # unchanged weights: cached
    tiny_model.load_state_dict(other.state_dict())
    torch.testing.assert_close(upscale(x, 2, tiny_model, backend="torch", dtype=dtype),
                               upscale(x, 2, other, backend="torch", dtype=dtype), rtol=0, atol=0)
    with torch.no_grad():
        tiny_model.layers[-1].bias.add_(0.25)  # an optimizer step, an EMA update
    after = upscale(x, 2, tiny_model, backend="torch", dtype=dtype)
    assert not torch.equal(after, before) and vdsr_fast.get_engine(tiny_model, "cpu", "torch", dtype) is not engine


def _snapshot_cases():
    cases = [("torch", "cpu", torch.float32), ("torch", "cpu", torch.float64), ("triton", "cpu", torch.float32)]
    if torch.cuda.is_available():
        cases += [pytest.param(*case, marks=pytest.mark.gpu)  # gpu: the GPU run (VDSR_FAST_GPU_TESTS_ONLY) selects them
                  for case in [("torch", "cuda", torch.float32), ("triton", "cuda", torch.float16), ("cuda", "cuda", torch.float16)]]
    return cases


@pytest.mark.parametrize("backend, device, dtype", _snapshot_cases(), ids=lambda v: str(v).replace("torch.", ""))
def test_engine_is_a_snapshot_of_the_weights(tiny_model, backend, device, dtype):
    """An Engine keeps the weights it was built with: an in-place update of the model afterwards (no_grad, p.data)
    leaves its output bit for bit as it was. Packing once handed back the model's own biases and first weight where
    no conversion was needed (.to/.contiguous of a tensor already right), so the engine computed with half-updated
    weights: neither the old model nor the new one. (A fp32 model, so that nothing converts in fp32.)"""
    if backend == "triton":
        pytest.importorskip("triton")
    if backend == "cuda" and (why := vdsr_fast.engine._why_unavailable("cuda", torch.device(device))):
        pytest.skip(why)
    if backend != "torch" and device == "cuda":
        from vdsr_fast import VDSR

        tiny_model = VDSR(4, 64)  # the CUDA kernels are written for 64 channels
        with torch.no_grad():
            for conv in tiny_model.layers:
                conv.bias.uniform_(-0.05, 0.05)
    model = tiny_model.to(device)
    engine = Engine(model, backend=backend, dtype=dtype, device=device)
    y = torch.rand(1, 1, 9, 7, device=device)
    before = engine(y).clone()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5).add_(0.01)
    torch.testing.assert_close(engine(y), before, rtol=0, atol=0)
    for p in model.parameters():
        p.data.mul_(-1)
    torch.testing.assert_close(engine(y), before, rtol=0, atol=0)


def test_inference_mode_weights_need_the_documented_cache_drop(tiny_model):
    """Parameters made under torch.inference_mode have no version counter, so a load_state_dict into them is not
    seen (upscale's docstring, README): the cached engine keeps the whole old network (not a mix of old and new),
    and dropping the cache as documented gives the new one."""
    from vdsr_fast import VDSR

    x = torch.rand(1, 1, 6, 5)
    other = VDSR(tiny_model.depth, tiny_model.channels)
    with torch.inference_mode():
        model = VDSR(tiny_model.depth, tiny_model.channels)
        model.load_state_dict(tiny_model.state_dict())
        before = upscale(x, 2, model, backend="torch")
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(upscale(x, 2, model, backend="torch"), before, rtol=0, atol=0)
        model.__dict__.pop("_vdsr_engines", None)
        torch.testing.assert_close(upscale(x, 2, model, backend="torch"), upscale(x, 2, other, backend="torch"),
                                   rtol=0, atol=0)  # fmt: skip


class _StandIn:
    """A fast backend for the engine's bookkeeping tests: available on any device, computing as the reference."""

    dtypes = (torch.float32,)

    @staticmethod
    def available(device):
        return None

    def __init__(self, model, device, dtype, **options):
        from vdsr_fast.engine import TorchBackend

        self.ref = TorchBackend(model, device, dtype)

    def __call__(self, y):
        return self.ref(y)


def _virtual_clock(monkeypatch) -> list[float]:
    """engine._median_ms's clock, advanced by hand (``clock[0] += seconds``): how busy the CPU is does not count."""
    from vdsr_fast import engine as engine_mod

    clock = [0.0]
    monkeypatch.setattr(engine_mod, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    return clock


def test_auto_falls_back_when_a_backend_refuses_the_model(tiny_model, monkeypatch):
    """A fast backend that refuses the model in its constructor (the CUDA kernels are written for
    64 channels) makes backend='auto' warn and fall back, not fail."""
    from vdsr_fast import engine as engine_mod

    class Refuses(_StandIn):
        dtypes = (torch.float16, torch.float32)

        def __init__(self, model, device, dtype, **options):
            raise BackendUnavailable("the CUDA kernels are written for 64 channels; this model has 8")

    monkeypatch.setitem(engine_mod.BACKENDS, "cuda", Refuses)
    monkeypatch.setattr(engine_mod, "resolve_backend", lambda backend, device: "cuda" if backend == "auto" else backend)
    with pytest.warns(RuntimeWarning, match="skipping backend 'cuda'.*64 channels"):
        e = Engine(tiny_model, backend="auto", device="cpu", dtype=torch.float32)
    assert e.backend == "torch"
    with pytest.raises(BackendUnavailable, match="64 channels"):
        Engine(tiny_model, backend="cuda", device="cpu", dtype=torch.float32)


def test_auto_passes_over_a_backend_in_a_dtype_it_is_slow_in(tiny_model, monkeypatch):
    """A backend whose ``auto_dtypes`` leave out the dtype asked for (Triton in fp32) is not auto's choice
    for it, silently; auto still picks it in its dtypes, and backend= by name still runs it in any."""
    import warnings

    from vdsr_fast import engine as engine_mod

    class SlowInFp32(_StandIn):
        dtypes = (torch.float16, torch.float32)
        auto_dtypes = (torch.float16,)

    monkeypatch.setitem(engine_mod.BACKENDS, "triton", SlowInFp32)
    monkeypatch.setattr(engine_mod, "resolve_backend", lambda backend, device: "triton" if backend == "auto" else backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Engine(tiny_model, backend="auto", device="cpu", dtype=torch.float32, check=False).backend == "torch"
    assert Engine(tiny_model, backend="auto", device="cpu", dtype=torch.float16, check=False).backend == "triton"
    assert Engine(tiny_model, backend="triton", device="cpu", dtype=torch.float32, check=False).backend == "triton"


def test_a_backend_whose_graphs_fail_runs_without_them(tiny_model, monkeypatch):
    """Right kernels whose CUDA-graph capture fails the self-check (a profiler attached, an old driver):
    the engine keeps the backend without graphs and says so; a backend that also fails without graphs
    is still skipped by 'auto'."""
    from vdsr_fast import engine as engine_mod

    class Fast(_StandIn):
        broken = False  # also wrong without graphs

        def __init__(self, model, device, dtype, cuda_graphs=False):
            super().__init__(model, device, dtype)
            self.cuda_graphs = cuda_graphs

        def __call__(self, y):
            if self.cuda_graphs:
                raise RuntimeError("operation not permitted when stream is capturing")
            return self.ref(y) + (1.0 if self.broken else 0.0)

    monkeypatch.setitem(engine_mod.BACKENDS, "cuda", Fast)
    monkeypatch.setattr(engine_mod, "resolve_backend", lambda backend, device: "cuda" if backend == "auto" else backend)
    monkeypatch.setattr(engine_mod, "_checked", lambda name, device: name != "torch")  # self-check on the CPU too
    with pytest.warns(RuntimeWarning, match="'cuda' runs without CUDA graphs.*stream is capturing"):
        e = Engine(tiny_model, backend="cuda", device="cpu", dtype=torch.float32, cuda_graphs=True)
    assert e.backend == "cuda" and not e._impl.cuda_graphs
    monkeypatch.setattr(Fast, "broken", True)
    with pytest.warns(RuntimeWarning, match="skipping backend 'cuda'.*stream is capturing"):
        assert Engine(tiny_model, backend="auto", device="cpu", dtype=torch.float32, cuda_graphs=True).backend == "torch"
    with pytest.raises(BackendUnavailable, match="self-check"):
        Engine(tiny_model, backend="cuda", device="cpu", dtype=torch.float32, cuda_graphs=True)


def test_tune_keeps_the_fastest_candidate_that_passes_the_self_check(tiny_model, monkeypatch):
    """Engine(tune=True) times the default and each tuning candidate (after its self-check) and keeps the
    fastest; a wrong candidate is not timed even if it is the fastest; options the caller set are not
    tuned away; a second engine in the same process reuses the choice without timing."""
    from vdsr_fast import engine as engine_mod

    class Variants(_StandIn):
        name = "cuda"
        built: list = []

        @staticmethod
        def tuning_candidates(model, device, dtype):
            return [("slow", {"kernel": "slow"}), ("fast", {"kernel": "fast"}), ("wrong", {"kernel": "wrong"}),
                    ("absent", {"kernel": "absent"})]  # fmt: skip

        def __init__(self, model, device, dtype, kernel="default"):
            if kernel == "absent":
                raise BackendUnavailable("not on this GPU")
            super().__init__(model, device, dtype)
            self.kernel = kernel
            self.built.append(kernel)

        def __call__(self, y):  # each kernel's cost on a virtual clock: how busy the CPU is does not count
            clock[0] += {"slow": 0.04, "default": 0.015, "fast": 0.001, "wrong": 0.0}[self.kernel]
            return self.ref(y) + (1.0 if self.kernel == "wrong" else 0.0)

    clock = _virtual_clock(monkeypatch)
    monkeypatch.setitem(engine_mod.BACKENDS, "cuda", Variants)
    monkeypatch.setattr(engine_mod, "_checked", lambda name, device: name != "torch")  # self-check on the CPU too
    monkeypatch.setattr(engine_mod, "_TUNED", {})
    e = Engine(tiny_model, backend="cuda", device="cpu", dtype=torch.float32, tune=True)
    assert e._impl.kernel == "fast"
    assert set(e.tuning) == {"default", "slow", "fast", "wrong", "absent"}
    assert e.tuning["slow"] > e.tuning["default"] > e.tuning["fast"]
    assert "self-check" in e.tuning["wrong"] and "not on this GPU" in e.tuning["absent"]
    y = torch.rand(1, 1, 9, 7)
    torch.testing.assert_close(e(y), Engine(tiny_model, backend="torch", device="cpu")(y))
    Variants.built.clear()
    again = Engine(tiny_model, backend="cuda", device="cpu", dtype=torch.float32, tune=True)
    assert again._impl.kernel == "fast" and Variants.built == ["default", "fast"]  # rebuilt, not re-timed
    assert again.tuning == {"fast": "chosen earlier in this process"}
    pinned = Engine(tiny_model, backend="cuda", device="cpu", dtype=torch.float32, tune=True, kernel="slow")
    assert pinned._impl.kernel == "slow" and set(pinned.tuning) == {"default"}
    assert Engine(tiny_model, backend="cuda", device="cpu", dtype=torch.float32)._impl.kernel == "default"
    x = torch.rand(1, 3, 8, 8)  # upscale(tune=True) with a backend that has nothing to tune: the same output
    torch.testing.assert_close(upscale(x, 2, tiny_model, backend="torch", tune=True), upscale(x, 2, tiny_model, backend="torch"))


def test_engine_returns_the_inputs_dtype(tiny_model):
    """An Engine computes in its own dtype and hands back the input's (the documented ``y + residual`` in ``y``'s
    dtype): float32, float64 and FP8 (emulated) engines on float64, float32 and float16 planes. The values are the
    float32 call's (the planes hold the same float16 values), to the output dtype's rounding."""
    y = torch.rand(2, 1, 7, 6).half()
    for dtype in (torch.float32, torch.float64, torch.float8_e4m3fn):
        engine = Engine(tiny_model, backend="torch", device="cpu", dtype=dtype)
        want = engine(y.float())
        assert want.dtype == torch.float32
        for x in (y.double(), y):
            got = engine(x)
            assert got.dtype == x.dtype, (dtype, x.dtype)
            atol = 1e-6 if x.dtype == torch.float64 else 2**-9  # float16 outputs: half an ulp, for values below 4
            torch.testing.assert_close(got.float(), want, rtol=0, atol=atol)


def test_engine_refuses_what_is_not_a_vdsr_model():
    with pytest.raises(TypeError, match="Engine: expected a vdsr_fast VDSR model, got Conv2d"):
        Engine(torch.nn.Conv2d(1, 1, 3), backend="torch", device="cpu")


def test_a_cuda_index_beyond_the_devices_is_refused_by_name(tiny_model, monkeypatch):
    """On a machine with one GPU (simulated: only the device queries), cuda:1 is a ValueError that says how many
    there are, from Engine and get_engine, before any backend is tried."""
    from vdsr_fast import engine as engine_mod

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(engine_mod, "resolve_backend", lambda *a: pytest.fail("a backend was tried"))
    for device in ("cuda:1", torch.device("cuda", 2)):
        with pytest.raises(ValueError, match=r"Engine: device cuda:\d: there are only 1 CUDA device"):
            Engine(tiny_model, device=device)
        with pytest.raises(ValueError, match=r"get_engine: device cuda:\d: there are only 1 CUDA device"):
            vdsr_fast.get_engine(tiny_model, device)


def test_self_check_runs_on_a_gpu_only_and_its_failure_is_its_own_error(tiny_model, monkeypatch):
    """check=True self-checks a fast backend on a GPU only (on the CPU its kernels are Triton's interpreter, tested
    apart); where it runs, a wrong backend raises SelfCheckFailed (what `vdsr-fast verify` reports as FAIL), not just
    BackendUnavailable. A fake "cuda" backend off by one, on the CPU."""
    from vdsr_fast import engine as engine_mod
    from vdsr_fast.engine import SelfCheckFailed

    class Wrong(_StandIn):
        def __call__(self, y):
            return self.ref(y) + 1.0

    monkeypatch.setitem(engine_mod.BACKENDS, "cuda", Wrong)
    y = torch.rand(1, 1, 6, 5)
    e = Engine(tiny_model, backend="cuda", device="cpu", dtype=torch.float32)  # not checked off the GPU
    torch.testing.assert_close(e(y), Engine(tiny_model, backend="torch", device="cpu")(y) + 1.0)
    monkeypatch.setattr(engine_mod, "_checked", lambda name, device: name != "torch")  # as on a GPU
    with pytest.raises(SelfCheckFailed, match="self-check against the reference failed"):
        Engine(tiny_model, backend="cuda", device="cpu", dtype=torch.float32)


def test_self_check_allows_fp8_twice_its_emulations_error(tiny_model):
    """For float8_e4m3fn the bound adds twice the PyTorch emulation's own error (3-bit mantissas: about 0.1 on the
    check's plane here, above 1e-2 + 5% of the residual): the fp8 engine passes, the same run without the fp8 dtype
    does not; a run off by 0.95 of 1e-2 + 5% of the residual + twice the emulation's error passes, by 1.05 fails."""
    from vdsr_fast import fp8
    from vdsr_fast.engine import self_check

    cpu = torch.device("cpu")
    engine = Engine(tiny_model, backend="torch", device="cpu", dtype=torch.float8_e4m3fn)
    assert self_check(engine, tiny_model, cpu) is None
    assert "max error" in self_check(lambda y: engine(y), tiny_model, cpu)  # no fp8 dtype: no allowance
    packed = fp8.pack(tiny_model, cpu)
    w64, b64 = [w.detach().double() for w in tiny_model.weights], [b.detach().double() for b in tiny_model.biases]

    def off_by(fraction):
        def run(y):
            y64 = y.double()  # y is x.float(): ~1e-8 from the check's x
            ref = vdsr_forward(y64, w64, b64)
            emu_err = fp8.emulate(packed, y).double() - ref
            e = emu_err.abs().max().item()
            bound = 1e-2 + 0.05 * (ref - y64).abs().max().item() + 2 * e
            return ref + fraction * bound * emu_err / e  # the largest error: fraction x bound

        run.dtype = torch.float8_e4m3fn
        return run

    assert self_check(off_by(0.95), tiny_model, cpu) is None
    assert "max error" in self_check(off_by(1.05), tiny_model, cpu)


def test_tuning_times_each_candidate_by_its_median_after_warm_up(monkeypatch):
    """_median_ms: TUNE_WARMUP untimed runs, then the median of TUNE_RUNS timed ones (a fluke, fast or slow, does not
    decide). Virtual clock: each run costs the next of a shuffled list of durations."""
    from vdsr_fast import engine as engine_mod

    warm, timed = engine_mod.TUNE_WARMUP, engine_mod.TUNE_RUNS
    costs = [1000.0] * warm + [float(v) for v in torch.randperm(timed) + 1]  # warm-ups slow (compiles), then 1..N ms
    clock = _virtual_clock(monkeypatch)

    def run(y):
        clock[0] += costs.pop(0) / 1e3

    ms = engine_mod._median_ms(run, torch.zeros(1))
    assert not costs
    assert ms == pytest.approx(sorted(range(1, timed + 1))[timed // 2])  # the upper median of 1..N


def test_engines_are_cached_least_recently_used_first_out(tiny_model):
    """get_engine keeps _MAX_ENGINES engines per model, one per backend and dtype asked for: a new one evicts the one
    used longest ago, not the oldest built (nor itself)."""
    from vdsr_fast import api

    keys = [(b, d) for b in ("torch", "auto") for d in (None, torch.float32, torch.float64, torch.float16, torch.bfloat16)]
    keys = keys[: api._MAX_ENGINES + 1]
    assert len(keys) == api._MAX_ENGINES + 1
    engines = [vdsr_fast.get_engine(tiny_model, "cpu", b, d) for b, d in keys[:-1]]
    assert [e.dtype for e in engines] == [d or torch.float32 for _, d in keys[:-1]]  # one engine per dtype asked for
    assert vdsr_fast.get_engine(tiny_model, "cpu", *keys[0]) is engines[0]  # the first is now the most recent
    newest = vdsr_fast.get_engine(tiny_model, "cpu", *keys[-1])
    assert vdsr_fast.get_engine(tiny_model, "cpu", *keys[-1]) is newest
    for key, engine in list(zip(keys, engines))[2:] + [(keys[0], engines[0])]:
        assert vdsr_fast.get_engine(tiny_model, "cpu", *key) is engine, key
    assert vdsr_fast.get_engine(tiny_model, "cpu", *keys[1]) is not engines[1]  # evicted: built again


def test_a_factor_within_1e9_of_a_trained_scale_is_that_scale(tiny_model):
    """A factor computed in floating point (0.1 * 3 * 10 = 3.0000000000000004, 0.3 / 0.1 = 2.9999999999999996), a
    trained scale but for rounding, runs the network at that scale directly: the same output as the integer, not the
    next scale resized down to the same size."""
    from vdsr_fast.api import output_plan

    x = torch.rand(1, 3, 7, 6)
    for s, k in ((0.1 * 3 * 10, 3), (0.3 / 0.1, 3), (2 + 8e-16, 2), (4 - 1e-15, 4)):
        assert s != k
        assert output_plan(7, 6, scale=s) == (k, (7 * k, 6 * k)), s
        torch.testing.assert_close(upscale(x, s, tiny_model), upscale(x, k, tiny_model), rtol=0, atol=0)


def test_float64_frames_keep_float64_around_a_float64_network(tiny_model):
    """float64 frames are converted, resized and coloured in float64: with a float64 engine the whole pipeline is
    the float64 reference composition to rounding (~1e-16; float32 anywhere would be ~1e-7)."""
    x = torch.rand(2, 3, 7, 6, dtype=torch.float64)
    got = upscale(x, 3, tiny_model, backend="torch", dtype=torch.float64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _expected_rgb(tiny_model, x, 3), rtol=0, atol=1e-12)
    y = torch.rand(5, 6, dtype=torch.float64)
    want = vdsr_forward(imresize(y[None, None], 2), [w.double() for w in tiny_model.weights],
                        [b.double() for b in tiny_model.biases]).clamp(0, 1)[0, 0]  # fmt: skip
    torch.testing.assert_close(upscale(y, 2, tiny_model, backend="torch", dtype=torch.float64), want, rtol=0, atol=1e-12)


def test_a_tuning_choice_holds_with_and_without_cuda_graphs(tiny_model, monkeypatch):
    """cuda_graphs= and max_cached_shapes= (what get_engine passes on a GPU) choose how the kernels are launched, not
    which: candidates are timed with them on, and the choice timed for an engine with graphs is reused, without
    timing, by one without them."""
    from vdsr_fast import engine as engine_mod

    class Variants(_StandIn):
        name = "cuda"

        @staticmethod
        def tuning_candidates(model, device, dtype):
            return [("fast", {"kernel": "fast"})]

        def __init__(self, model, device, dtype, kernel="default", cuda_graphs=False, max_cached_shapes=8):
            super().__init__(model, device, dtype)
            self.kernel, self.cuda_graphs = kernel, cuda_graphs

        def __call__(self, y):
            clock[0] += 0.001 if self.kernel == "fast" else 0.01
            return self.ref(y)

    clock = _virtual_clock(monkeypatch)
    monkeypatch.setitem(engine_mod.BACKENDS, "cuda", Variants)
    monkeypatch.setattr(engine_mod, "_TUNED", {})
    graphs = Engine(tiny_model, backend="cuda", device="cpu", dtype=torch.float32, tune=True, cuda_graphs=True,
                    max_cached_shapes=16)  # fmt: skip
    assert graphs._impl.kernel == "fast" and graphs._impl.cuda_graphs and set(graphs.tuning) == {"default", "fast"}
    plain = Engine(tiny_model, backend="cuda", device="cpu", dtype=torch.float32, tune=True)
    assert plain._impl.kernel == "fast" and not plain._impl.cuda_graphs
    assert plain.tuning == {"fast": "chosen earlier in this process"}


def test_tiled_out_may_alias_the_input(tiny_model):
    """out= sharing memory with img (an in-place pipeline buffer): tiles must not read pixels that
    earlier tiles already overwrote."""
    buf = torch.rand(3 * 20 * 20)
    x = buf[: 3 * 10 * 10].view(1, 3, 10, 10)
    expected = upscale(x.clone(), 2, tiny_model)
    got = upscale(x, 2, tiny_model, out=buf.view(1, 3, 20, 20), tile=8)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_tiled_out_may_alias_the_input_through_another_storage(tiny_model):
    """out= and img over one buffer through two storages, the frame at an offset in it: another library's arrays (a
    CuPy pipeline buffer, through DLPack) or torch.from_numpy of two views of one array. The tiles must not read
    pixels that earlier tiles already overwrote, as with views of one tensor."""
    x = torch.rand(1, 3, 10, 10)
    expected = upscale(x, 2, tiny_model)
    a = np.random.default_rng(0).random(3 * 20 * 20 + 8).astype(np.float32)
    a[8 : 8 + 300] = x.flatten().numpy()  # the frame sits 8 pixels into the buffer the output fills
    img, out = torch.from_numpy(a[8 : 8 + 300]).view(1, 3, 10, 10), torch.from_numpy(a[:1200]).view(1, 3, 20, 20)
    assert upscale(img, 2, tiny_model, out=out, tile=8) is out
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    buf = torch.rand(3 * 20 * 20 + 8)
    buf[8 : 8 + 300] = x.flatten()
    o = _DLPackOnly(buf[:1200].view(1, 3, 20, 20))
    assert upscale(_DLPackOnly(buf[8 : 8 + 300].view(1, 3, 10, 10)), 2, tiny_model, out=o, tile=8) is o
    torch.testing.assert_close(buf[:1200].view(1, 3, 20, 20), expected, rtol=0, atol=0)


def test_numpy_integers_are_accepted(tiny_model):
    np = pytest.importorskip("numpy")
    x = torch.rand(1, 3, 9, 7)
    expected = upscale(x, 2, tiny_model, tile=8, max_memory=2**24)  # the same tiles (tiled and untiled may differ in
    # the last bit with this 8-channel model: test_api_frames.test_tiled_is_identical_float32)
    torch.testing.assert_close(upscale(x, np.int64(2), tiny_model, tile=np.int64(8), max_memory=np.int64(2**24)),
                               expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="tile must be a positive int"):
        upscale(x, 2, tiny_model, tile="8")


def test_cuda_graphs_option(tiny_model):
    """CUDA graphs are on by default for the fast backends on a GPU only; asking for them elsewhere
    is a clear error, not a silent no-op."""
    engine = vdsr_fast.get_engine(tiny_model, "cpu")
    assert engine.backend == "torch"
    with pytest.raises(ValueError, match="cuda_graphs=True needs a fast backend on a CUDA device"):
        vdsr_fast.get_engine(tiny_model, "cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs=True needs a fast backend"):
        upscale(torch.rand(1, 3, 4, 4), 2, tiny_model, backend="torch", cuda_graphs=True)
    assert upscale(torch.rand(1, 3, 4, 4), 2, tiny_model, cuda_graphs=False).shape == (1, 3, 8, 8)


def test_weights_made_in_inference_mode(tiny_model):
    """Parameters created under torch.inference_mode have no version counter: the engine cache
    still works (and is keyed on their addresses)."""
    from vdsr_fast import VDSR

    with torch.inference_mode():
        m = VDSR(tiny_model.depth, tiny_model.channels)
        m.load_state_dict(tiny_model.state_dict())
    x = torch.rand(1, 3, 5, 4)
    torch.testing.assert_close(upscale(x, 2, m), upscale(x, 2, tiny_model), rtol=0, atol=0)
    assert vdsr_fast.get_engine(m, "cpu") is vdsr_fast.get_engine(m, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_engine_first_used_in_inference_mode_works_outside_it(backend):
    """A pipeline that runs under torch.inference_mode() and one that does not share the cached engine: its buffers
    (and, on a GPU, the CUDA graphs) made under inference mode serve calls outside it, and the other way round."""
    from vdsr_fast import VDSR, available_backends

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if (why := available_backends(dev)[backend]) is not None:
        pytest.skip(why)
    x = torch.rand(2, 3, 7, 9, device=dev)
    torch.manual_seed(1)
    source = VDSR(depth=3, channels=64)  # 64 channels: the CUDA kernels' width
    for first_inside in (True, False):
        m = VDSR(depth=3, channels=64)
        m.load_state_dict(source.state_dict())
        if first_inside:
            with torch.inference_mode():
                a = upscale(x, 2, m, backend=backend)
            b = upscale(x, 2, m, backend=backend)
        else:
            b = upscale(x, 2, m, backend=backend)
            with torch.inference_mode():
                a = upscale(x, 2, m, backend=backend)
        assert a.is_inference() and not b.is_inference()
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_tf32_mode_blocks_of_two_threads_take_turns():
    """tf32_mode switches process-wide flags: two threads' overlapping blocks (fp32 engines on a GPU called from two
    threads) each compute in the mode they asked for, and the user's setting is what is left. Overlapping, the
    second had saved the first's IEEE and restored it last, and ran in TF32 once the first had restored the user's.
    The flags are host state: checked on the CPU, with A still inside when B asks."""
    import threading

    from vdsr_fast.engine import tf32_mode

    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is None or not hasattr(conv, "fp32_precision"):
        pytest.skip("this torch has only the legacy allow_tf32 flags")
    a_inside, b_asking, a_done = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with tf32_mode(False):
            a_inside.set()
            b_asking.wait(10)
            time.sleep(0.2)  # B now waits for its turn (it entered at once before)
        a_done.set()

    def b():
        a_inside.wait(10)
        b_asking.set()
        with tf32_mode(False):
            a_done.wait(1)  # A is out by now with the lock; before, B waited here while A restored the user's setting
            seen["b"] = conv.fp32_precision

    user = conv.fp32_precision
    try:
        conv.fp32_precision = "tf32"
        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert seen == {"b": "ieee"} and conv.fp32_precision == "tf32", (seen, conv.fp32_precision)
    finally:
        conv.fp32_precision = user


@pytest.mark.gpu
def test_torch_backend_fp32_on_a_gpu_is_true_fp32():
    """PyTorch runs fp32 convolutions on a GPU in TF32 by default: the reference backend's fp32 does not, whatever
    the caller's setting, and leaves that setting as it found it."""
    from vdsr_fast.engine import tf32_mode

    if not torch.cuda.is_available():
        pytest.skip("TF32 is a CUDA mode")
    from equivalence import random_vdsr

    m = random_vdsr(depth=6, channels=64, seed=0).cuda()  # He init: activations of order 1 through the layers
    x = torch.rand(1, 1, 40, 36, device="cuda")
    with torch.no_grad():
        ref = vdsr_forward(x.double(), [w.double() for w in m.weights], [b.double() for b in m.biases]).float()
        engine = Engine(m, backend="torch", dtype=torch.float32, device="cuda")
        with tf32_mode(True):
            got = engine(x)
            tf32 = vdsr_forward(x, list(m.weights), list(m.biases))
            conv = getattr(torch.backends.cudnn, "conv", None)
            assert (conv.fp32_precision == "tf32") if hasattr(conv, "fp32_precision") else torch.backends.cudnn.allow_tf32
    err, err_tf32 = (got - ref).abs().max().item(), (tf32 - ref).abs().max().item()
    assert err <= 1e-5 and err_tf32 > 10 * err, (err, err_tf32)  # TF32 visibly less exact: the check can fail


@pytest.mark.gpu
def test_auto_in_fp32_passes_over_the_fast_backends_without_a_warning():
    """backend="auto" with dtype=fp32: the CUDA kernels have no fp32 and Triton's is slower than cuDNN's, so auto
    takes the PyTorch backend, as documented, without warning about the ones it passed over."""
    import warnings

    m = vdsr_fast.VDSR(depth=3, channels=64)  # 64 channels: the CUDA kernels' width
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = Engine(m, dtype=torch.float32)
    assert engine.backend == "torch" and engine.dtype == torch.float32


def test_numpy_arrays_in_and_out(tiny_model):
    """An OpenCV-style (H, W, 3) uint8 array: the same result as the tensor, as a numpy array (read-only arrays too,
    without PyTorch's non-writable warning)."""
    import warnings

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # where a numpy array is computed

    def as_tensor(a, scale):
        return upscale(torch.from_numpy(a).to(dev), scale, tiny_model).cpu().numpy()

    want = as_tensor(img, 2)
    got = upscale(img, 2, tiny_model)
    assert isinstance(got, np.ndarray) and got.dtype == np.uint8 and got.shape == (18, 14, 3)
    np.testing.assert_array_equal(got, want)
    frozen = img.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(upscale(frozen, 2, tiny_model), want)
    out = np.zeros((18, 14, 3), np.uint8)
    assert upscale(img, 2, tiny_model, out=out) is out
    np.testing.assert_array_equal(out, want)
    y = rng.random((6, 5)).astype(np.float32)  # a Y plane
    np.testing.assert_array_equal(upscale(y, 3, tiny_model), as_tensor(y, 3))
    with pytest.raises(TypeError, match="dtype int32"):
        upscale(img.astype(np.int32), 2, tiny_model)
    with pytest.raises(TypeError, match="out must be a numpy array too"):
        upscale(img, 2, tiny_model, out=torch.zeros(18, 14, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="out must be a numpy array too, got _DLPackOnly"):  # named as given
        upscale(img, 2, tiny_model, out=_DLPackOnly(torch.zeros(18, 14, 3, dtype=torch.uint8)))
    with pytest.raises(ValueError, match=r"out has shape \(18, 14, 4\)"):
        upscale(img, 2, tiny_model, out=np.zeros((18, 14, 4), np.uint8))
    with pytest.raises(ValueError, match="img must have 1 \\(Y\\), 3 \\(RGB\\) or 4 \\(RGBA\\) channels"):  # not out's shape
        upscale(img[..., :2], 2, tiny_model, out=np.zeros((18, 14, 2), np.uint8))


def _field(a):
    """``a`` as one field of a packed record array (float32 beside a byte): strides not a multiple of 4."""
    rec = np.zeros(a.shape, np.dtype([("v", np.float32), ("w", np.uint8)]))
    rec["v"] = a
    return rec["v"]


@pytest.mark.parametrize("view", [
    lambda a: a[:, :, ::-1],  # OpenCV's BGR -> RGB
    np.flip, np.rot90, lambda a: a[::-2, 1::3],
    _field,
    lambda a: a.astype(">f4"), lambda a: (a * 65535).astype(">u2"), lambda a: (a * 65535).astype(">u2")[:, ::-1],
], ids=["bgr_to_rgb", "flip", "rot90", "steps", "record_field", ">f4", ">u2", ">u2_reversed"])  # fmt: skip
def test_numpy_views_and_byte_orders(tiny_model, view):
    """Views torch cannot read in place (negative strides, strides not a multiple of the item size) and big-endian
    arrays: the result of the same values in a plain array; out= big-endian is written with the right values."""
    a = view(np.random.default_rng(1).random((9, 7, 3)).astype(np.float32))
    plain = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))
    want = upscale(plain, 2, tiny_model, layout="NHWC")
    got = upscale(a, 2, tiny_model, layout="NHWC")
    assert got.dtype == plain.dtype
    np.testing.assert_array_equal(got, want)
    out = np.zeros(want.shape, want.dtype.newbyteorder(">"))[::-1]
    assert upscale(a, 2, tiny_model, layout="NHWC", out=out) is out
    np.testing.assert_array_equal(out, want)


class _DLPackOnly:
    """An array of another library (CuPy, JAX, a GPU decoder's frame) as upscale sees it: only through DLPack."""

    def __init__(self, t):
        self.t = t

    def __dlpack__(self, **kw):
        return self.t.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self.t.__dlpack_device__()


class _CudaArrayInterfaceOnly:  # Numba's device arrays, older CuPy
    def __init__(self, t):
        self._owner = t  # owns the memory, as those arrays do (the interface's dict holds only its address)
        self.__cuda_array_interface__ = t.__cuda_array_interface__


@pytest.mark.gpu  # on a GPU: the frames and out= in GPU memory, read and written in place
@pytest.mark.parametrize("wrap", [_DLPackOnly, pytest.param(_CudaArrayInterfaceOnly, marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the CUDA array interface describes GPU memory only"))])  # fmt: skip
def test_dlpack_and_cuda_array_interface_arrays_in_and_out(tiny_model, wrap):
    """Another library's array is read in place: the tensor's result, as a tensor on its device; out= such an
    array is written in place and returned."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    frames = torch.randint(0, 256, (2, 6, 5, 3), dtype=torch.uint8, device=dev)
    want = upscale(frames, 2, tiny_model)
    got = upscale(wrap(frames), 2, tiny_model)
    assert torch.is_tensor(got) and got.device == frames.device
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    buf = torch.full((2, 12, 10, 3), 7, dtype=torch.uint8, device=dev)  # poisoned
    o = wrap(buf)
    assert upscale(wrap(frames), 2, tiny_model, out=o) is o
    torch.testing.assert_close(buf, want, rtol=0, atol=0)
    buf.fill_(7)
    assert upscale(frames, 2, tiny_model, out=o) is o  # a tensor in, another library's array out
    torch.testing.assert_close(buf, want, rtol=0, atol=0)
    bgr = upscale(wrap(frames.flip(-1).contiguous()), 2, tiny_model, channel_order="BGR")
    torch.testing.assert_close(bgr.flip(-1), want, rtol=0, atol=0)


class _StridedDLPack(_DLPackOnly):
    """A CuPy-like array: DLPack, its strides in bytes and copy() (C order)."""

    def __init__(self, a):
        super().__init__(a)
        self.strides = a.strides

    def copy(self):
        return _StridedDLPack(self.t.copy())


def test_flipped_dlpack_arrays(tiny_model):
    """A flipped view of another library's array (CuPy's frame[..., ::-1], BGR -> RGB) has negative strides, which
    torch.from_dlpack cannot take (torch 2.13 aborts the process on them): the input is read from its copy, as a
    flipped numpy array is; such an out= is refused before any work, naming it."""
    bgr = np.random.default_rng(3).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    got = upscale(_StridedDLPack(bgr[..., ::-1]), 2, tiny_model)
    np.testing.assert_array_equal(got.numpy(), upscale(np.ascontiguousarray(bgr[..., ::-1]), 2, tiny_model))
    out = _StridedDLPack(np.zeros((10, 12, 3), np.uint8)[::-1])
    with pytest.raises(ValueError, match=r"out has negative strides \(-36, 3, 1\)"):
        upscale(_StridedDLPack(bgr), 2, tiny_model, out=out)


@pytest.mark.parametrize("layout, shape", [("NHWC", (2, 6, 5, 3)), ("NCHW", (2, 3, 6, 5)), ("NHWC", (6, 5, 4)), ("NCHW", (4, 6, 5))])
def test_bgr_channel_order(tiny_model, layout, shape):
    """channel_order="BGR" (BGRA): the RGB result with the colour channels in the input's order, alpha in place."""
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    cdim = -1 if layout == "NHWC" else x.dim() - 3
    c = x.shape[cdim]
    swap = torch.tensor([2, 1, 0, 3][:c])
    rgb = upscale(x.index_select(cdim, swap), 2, tiny_model, layout=layout)
    got = upscale(x, 2, tiny_model, layout=layout, channel_order="BGR")
    torch.testing.assert_close(got, rgb.index_select(cdim, swap), rtol=0, atol=0)
    out = torch.zeros_like(got)
    assert upscale(x, 2, tiny_model, layout=layout, channel_order="BGR", out=out) is out
    torch.testing.assert_close(out, got, rtol=0, atol=0)
    with pytest.raises(ValueError, match="out has shape"):  # checked before any work
        upscale(x, 2, tiny_model, layout=layout, channel_order="BGR", out=torch.zeros(1, dtype=torch.uint8))
    with pytest.raises(ValueError, match="channel_order must be 'RGB' or 'BGR'"):
        upscale(x, 2, tiny_model, channel_order="bgr")

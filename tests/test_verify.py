"""``vdsr-fast verify``: passes the real kernels, and fails each way a kernel can be wrong.

On the CPU the Triton kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), on small models and
inputs; on a GPU the CUDA and Triton backends with the shipped weights.
"""

import json

import pytest
import torch
from equivalence import triton_device

from vdsr_fast.engine import BackendUnavailable, _backend_class, _why_unavailable
from vdsr_fast.verify import main, random_vdsr, seed_arg, shape_arg, verify

SMALL = dict(models=None, shapes=[(2, 9, 12)], dtypes=[torch.float32, torch.float16], seed=3)


@pytest.fixture
def small(tiny_model):
    device = triton_device(torch.float16)
    return dict(SMALL, models={"random": random_vdsr(depth=4, channels=8, seed=2)}, device=device)


def _statuses(r):
    return {(row.backend, row.dtype): row.status for row in r["rows"]}


def test_the_triton_kernels_pass(small):
    seen = []
    r = verify(**small, backends=["triton"], report=seen.append)
    assert r["ok"] and seen == r["rows"]
    assert _statuses(r) == {("torch", "fp32"): "reference", ("triton", "fp32"): "ok", ("triton", "fp16"): "ok"}
    fast = [row for row in r["rows"] if row.backend == "triton"]
    assert all(0 < row.err <= row.bound for row in fast)  # a real error, inside the rule


def _patched(monkeypatch, change):
    """The Triton backend with its output changed by ``change(out, call_number)``."""
    cls = _backend_class("triton")
    orig, calls = cls.__call__, []

    def call(self, y):
        calls.append(1)
        return change(orig(self, y), len(calls))

    monkeypatch.setattr(cls, "__call__", call)


def _bump(out, k):
    out[0, 0, -1, -2] += 0.01  # one pixel off by 1/100: far beyond fp16's bound, as an indexing bug would be
    return out


def _unwritten(out, k):
    out = out.clone()
    out[..., -1, :] = float("nan")  # what a poisoned output holds where a kernel never wrote
    return out


def _drifting(out, k):
    return out + 1e-7 * k  # inside the bound, but not the same bits twice


@pytest.mark.parametrize("change, why", [(_bump, "max error"), (_unwritten, "NaN/Inf outputs"),
                                         (_drifting, "gave other bits")], ids=["wrong", "unwritten", "nondeterministic"])  # fmt: skip
def test_each_kind_of_wrong_kernel_fails(small, monkeypatch, change, why):
    _patched(monkeypatch, change)
    r = verify(**dict(small, dtypes=[torch.float16]), backends=["triton"])
    assert not r["ok"]
    status = _statuses(r)[("triton", "fp16")]
    assert status.startswith("FAIL") and why in status, status


def test_cli_table_json_and_exit_status(monkeypatch, capsys):
    triton_device(torch.float16)
    argv = ["--sizes", "5x4", "--dtype", "fp16", "--seed", "11", "--backend", "triton"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "shipped  triton  fp16           5x4" in out and "random   triton  fp16" in out
    assert "all 2 fast-backend checks passed on" in out and "--seed 11 repeats it" in out
    assert main([*argv, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] and r["seed"] == 11 and [row["status"] for row in r["rows"]].count("ok") == 2
    _patched(monkeypatch, _bump)
    assert main(argv) == 1
    assert "2 check(s) FAILED" in capsys.readouterr().out


def test_sizes_argument():
    assert shape_arg("38x45") == (1, 45, 38) and shape_arg("70x33:3") == (3, 33, 70) and shape_arg("1080p") == (1, 1080, 1920)
    for bad in ("38", "0x4", "4k:0", "38x45:", "5x", "axb", "10x10:-1", "10x10:1.5"):
        with pytest.raises(Exception, match="expected WIDTHxHEIGHT"):
            shape_arg(bad)


def test_seed_argument_and_repeatability(capsys):
    """--seed takes what torch's generator takes; out of it a usage error (was: a traceback, exit status 1, which
    says a check failed). The same seed gives the same inputs, so the same numbers."""
    assert seed_arg("0") == 0 and seed_arg(str(2**64 - 1)) == 2**64 - 1
    for bad in (str(2**64), "-1", "1.5", "x"):
        with pytest.raises(Exception, match="expected a whole number from 0"):
            seed_arg(bad)
    with pytest.raises(SystemExit) as e:
        main(["--seed", str(2**64)])
    assert e.value.code == 2 and "--seed: expected a whole number" in capsys.readouterr().err
    args = dict(models={"random": random_vdsr(depth=3, channels=4)}, backends=[], shapes=[(1, 5, 6)], device="cpu")
    a, b, c = (verify(**args, seed=s)["rows"][0].err for s in (2**64 - 1, 2**64 - 1, 3))
    assert a == b != c


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 34.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                                                "can't allocate memory: you tried to allocate 40000000000 bytes")],
                         ids=["cuda", "cpu"])  # fmt: skip
def test_out_of_memory_is_one_line_and_status_2(monkeypatch, capsys, error):
    """--sizes too large for the float64 reference (was: a traceback and exit status 1, as a failed check)."""

    def oom(model, x):
        raise error

    monkeypatch.setattr("vdsr_fast.verify.ref64", oom)
    assert main(["--device", "cpu", "--sizes", "100000x100000", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vdsr-fast verify: error: out of memory on cpu") and "smaller --sizes" in err and "Traceback" not in err


def test_checks_asked_for_that_cannot_run_are_a_usage_error(monkeypatch, capsys):
    """--backend that cannot run here is refused before any work, as upscale --backend is (was: every row skipped,
    "no fast backend runs here" and exit status 0: a CI job asking for the CUDA kernels passed without them)."""
    assert main(["--device", "cpu", "--backend", "cuda", "--sizes", "4x4"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("vdsr-fast verify: error: --backend cuda cannot run on cpu: it runs on CUDA")
    if _why_unavailable("triton", torch.device("cpu")) is None:  # Triton's interpreter: bf16 is not checked there
        assert main(["--device", "cpu", "--backend", "triton", "--dtype", "bf16", "--sizes", "4x4"]) == 2
        assert "error: nothing to check: triton bf16: the Triton interpreter" in capsys.readouterr().err
    # where no fast backend runs: --dtype is refused; without it the reference alone is checked, exit status 0
    monkeypatch.setattr("vdsr_fast.engine._why_unavailable", lambda name, device: None if name == "torch" else "not here")
    assert main(["--device", "cpu", "--dtype", "fp16", "--sizes", "4x4"]) == 2
    assert "error: nothing to check: no fast backend runs on cpu (cuda: not here; triton: not here)" in capsys.readouterr().err
    assert main(["--device", "cpu", "--sizes", "4x4", "--seed", "1"]) == 0
    assert "no fast backend runs here: only the PyTorch reference was checked on cpu" in capsys.readouterr().out


def test_a_backend_that_refuses_the_dtype_is_skipped_not_failed(small, monkeypatch, capsys):
    """The engine refusing a dtype or model (Triton FP8 below compute capability 8.9, the CUDA kernels on a model not
    64 channels wide) is not a wrong kernel (was: "FAIL" and exit status 1 on every A100); its self-check failing is."""
    cls = _backend_class("triton")
    orig = cls.__init__

    def init(self, model, device, dtype, **kw):
        if dtype == torch.float16:
            raise BackendUnavailable("TritonBackend: float16 needs what this device lacks (as FP8 needs 8.9+)")
        orig(self, model, device, dtype, **kw)

    monkeypatch.setattr(cls, "__init__", init)
    r = verify(**small, backends=["triton"])
    assert r["ok"] and r["checked"] == 1, r["rows"]
    assert _statuses(r)[("triton", "fp16")].startswith("skipped: TritonBackend: float16 needs what")
    assert _statuses(r)[("triton", "fp32")] == "ok"
    # --backend/--dtype asking only for checks that were skipped: nothing checked, exit status 2
    assert main(["--device", str(small["device"]), "--backend", "triton", "--dtype", "fp16", "--sizes", "5x4"]) == 2
    assert "nothing checked: every check asked for was skipped (above)" in capsys.readouterr().out
    monkeypatch.setattr(cls, "__init__", orig)
    monkeypatch.setattr("vdsr_fast.engine._checked", lambda name, device: name != "torch")
    monkeypatch.setattr("vdsr_fast.engine.self_check", lambda run, model, device: "self-check against the reference failed: x")
    r = verify(**small, backends=["triton"])
    assert not r["ok"] and _statuses(r)[("triton", "fp16")] == "FAIL: self-check against the reference failed: x"


def test_json_is_strict_when_outputs_are_not_finite(monkeypatch, capsys):
    """An unwritten (NaN) output's error is infinite: null in --json (was: ``Infinity``, which is not JSON)."""
    device = triton_device(torch.float16)
    _patched(monkeypatch, _unwritten)
    argv = ["--device", str(device), "--sizes", "5x4", "--dtype", "fp16", "--seed", "1", "--backend", "triton", "--json"]
    assert main(argv) == 1
    r = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))
    fast = [row for row in r["rows"] if row["backend"] == "triton"]
    assert fast and all(row["err"] is None and "NaN/Inf outputs" in row["status"] for row in fast)
    assert r["checked"] == 2 and not r["ok"]


def test_info_says_why_there_is_no_gpu(monkeypatch, capsys):
    """vdsr-fast info without a CUDA device says why: a CPU-only torch, or a CUDA torch that finds no GPU (was: the
    CPU alone, and the CUDA backend "runs on CUDA devices only")."""
    from vdsr_fast import cli

    real = cli.info()
    for cuda, expect in ((None, "no CUDA device: this torch (2.13.0+cpu) is built without CUDA"),
                         ("12.8", "no CUDA device: torch 2.13.0+cu128 (CUDA 12.8) finds no GPU")):  # fmt: skip
        versions = dict(real["versions"], torch="2.13.0+cpu" if cuda is None else "2.13.0+cu128", **{"cuda (torch)": cuda})
        monkeypatch.setattr(cli, "info", lambda versions=versions: dict(real, versions=versions, devices=real["devices"][:1]))
        assert cli.main(["info"]) == 0
        assert expect in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_fast_backend_passes_on_this_gpu():
    """The command a user runs on their own GPU: the shipped and random weights, every backend and dtype built."""
    r = verify(shapes=[(1, 45, 38), (3, 33, 70), (1, 720, 1280)])
    failed = [row for row in r["rows"] if row.status.startswith("FAIL")]
    assert r["ok"], failed
    checked = {(row.backend, row.dtype) for row in r["rows"] if row.status == "ok"}
    assert {("triton", "fp16"), ("triton", "bf16"), ("triton", "fp32")} <= checked
    assert "cuda" in r["unavailable"] or {("cuda", "fp16"), ("cuda", "bf16")} <= checked


def _ref(shape=(1, 1, 4, 5), peak=0.5):
    """A float64 'reference' of magnitude ``peak`` (below 1, so the bound's scale is 1)."""
    return torch.linspace(-peak, peak, torch.Size(shape).numel(), dtype=torch.float64).reshape(shape)


@pytest.mark.parametrize("dtype, ulp", [(torch.float32, 1e-5), (torch.float16, 2.0**-10), (torch.bfloat16, 2.0**-7)])
def test_the_rule_allows_twice_pytorchs_error_plus_one_ulp_and_no_more(dtype, ulp):
    """DESIGN.md §6 on numbers worked by hand: bound = 2 * err(PyTorch same dtype) + ATOL * max(1, max |ref|), ATOL one
    unit in the last place at magnitude 1 (fp32: 1e-5). An error just inside passes and just outside fails, so a looser
    factor, ATOL or scale (which would let a real kernel bug through) fails this test."""
    from vdsr_fast.verify import compare

    ref, same_err = _ref(), 3 * ulp
    same = ref + same_err
    for err, ok in ((2 * same_err + 0.9 * ulp, True), (2 * same_err + 1.1 * ulp, False)):
        fast = ref.clone()
        fast[0, 0, 2, 3] += err
        c = compare(fast, same, ref, dtype)
        assert c.bound == pytest.approx(2 * same_err + ulp) and c.scale == 1.0 and c.same_err == pytest.approx(same_err)
        assert (c.ok, c.err <= c.bound, c.where) == (ok, ok, [0, 0, 2, 3]), (err, c)
    big = ref * 8  # max |ref| = 4: ATOL scales with it, unless scaled=False
    assert compare(big, big, big, dtype).bound == pytest.approx(4 * ulp)
    assert compare(big, big, big, dtype, scaled=False).bound == pytest.approx(ulp)
    tiny = ref / 100  # max |ref| = 0.005: the scale is at least 1, not 0.005
    assert compare(tiny, tiny, tiny, dtype).bound == pytest.approx(ulp)


def test_a_nan_output_fails_the_rule_with_an_infinite_error_where_it_is():
    """A NaN (an unwritten pixel) counts as non-finite and as an infinite error at its place: never ``ok``, whatever
    the bound (a NaN compares false with everything, so a rule built on ``err > bound`` alone would pass it)."""
    from vdsr_fast.verify import compare

    ref = _ref()
    fast = ref.clone()
    fast[0, 0, 1, 4] = float("nan")
    c = compare(fast, ref, ref, torch.float32)
    assert c.nonfinite == 1 and c.err == float("inf") and c.where == [0, 0, 1, 4] and not c.ok
    c.bound = float("inf")  # even under an infinite bound
    assert not c.ok


def test_fp8_is_held_to_the_mean_error_too():
    """float8_e4m3fn: the mean error may be at most 1.25x the emulation's + 1e-4 (its max rule is loose): 1.2x passes,
    1.3x fails, although both are well inside the max rule."""
    from vdsr_fast.verify import compare

    ref = _ref(peak=0.4)
    same = ref + 0.01
    for factor, ok in ((1.2, True), (1.3, False)):
        fast = ref + 0.01 * factor + 1e-4
        c = compare(fast, same, ref, torch.float8_e4m3fn)
        assert c.err <= c.bound and (c.mean_ok, c.ok) == (ok, ok), (factor, c)


def test_fill_nan_makes_float8_nan():
    """fill_nan on float8_e4m3fn writes its NaN pattern (0x7F; 0x7E would be 448, a finite value), as on other dtypes."""
    from vdsr_fast.verify import fill_nan

    for dtype in (torch.float8_e4m3fn, torch.float16, torch.float32):
        t = fill_nan(torch.zeros(3, 4, dtype=dtype))
        assert t.float().isnan().all(), dtype


def test_every_run_starts_from_nan_poisoned_buffers(small, monkeypatch):
    """Each of the three runs of a fast backend starts from activation buffers filled with NaN (so a pixel a kernel
    reads before writing shows as NaN): was the poisoning skipped, a stale-read bug would pass."""
    cls = _backend_class("triton")
    orig, seen = cls.__call__, []

    def call(self, y):
        seen.append(all(buf.float().isnan().all().item() for buf in self.buffers(y.shape[0], y.shape[2], y.shape[3])))
        return orig(self, y)

    monkeypatch.setattr(cls, "__call__", call)
    r = verify(**dict(small, dtypes=[torch.float16]), backends=["triton"])
    assert r["ok"] and seen == [True, True, True], seen


def test_a_third_run_that_differs_fails(small, monkeypatch):
    """The third run (on a GPU, the engine without CUDA graphs; here the same engine again) must give the same bits."""
    _patched(monkeypatch, lambda out, k: out + 1e-7 if k == 3 else out)
    r = verify(**dict(small, dtypes=[torch.float16]), backends=["triton"])
    status = _statuses(r)[("triton", "fp16")]
    assert not r["ok"] and status.startswith("FAIL") and "bits differ" in status, status


def test_a_dtype_the_backend_lacks_is_skipped(small, monkeypatch):
    """A dtype outside the backend's ``dtypes`` (the CUDA kernels have no fp32) is skipped with the reason, not run."""
    monkeypatch.setattr(_backend_class("triton"), "dtypes", (torch.float16,))
    r = verify(**small, backends=["triton"])
    assert _statuses(r)[("triton", "fp32")] == "skipped: not a dtype of this backend" and r["checked"] == 1


def test_the_reference_row_fails_when_pytorch_fp32_is_off(monkeypatch):
    """The first row checks PyTorch fp32 itself against float64 within ATOL: a reference 1e-3 off is a FAIL (were it
    always "reference", a broken PyTorch or BLAS would go unnoticed)."""
    import vdsr_fast.verify as v

    real = v.ref64
    monkeypatch.setattr(v, "ref64", lambda model, x: real(model, x) + 1e-3)
    args = dict(models={"random": random_vdsr(depth=3, channels=4)}, backends=[], shapes=[(1, 5, 6)], device="cpu", seed=1)
    r = verify(**args)
    assert not r["ok"] and r["rows"][0].status.startswith("FAIL: PyTorch fp32 is not within 1e-05 of float64")


def test_default_seed_is_fresh_each_run():
    """Without ``seed`` each run draws new inputs (and reports the seed): a fixed default would test one input forever."""
    args = dict(models={"random": random_vdsr(depth=3, channels=4)}, backends=[], shapes=[(1, 5, 6)], device="cpu")
    a, b = verify(**args), verify(**args)
    assert a["seed"] != b["seed"] and a["rows"][0].err != b["rows"][0].err


def test_command_line_options_reach_verify(tmp_path, monkeypatch, capsys):
    """What ``main`` hands :func:`verify`: the ``--weights`` model (named "given") with the random one, ``--dtype``
    once each even if repeated, and, where one fast backend runs and another does not, the checks that can run (not a
    refusal because some backend cannot)."""
    import vdsr_fast
    import vdsr_fast.verify as v

    seen = {}

    def fake(models, device, backends, dtypes, shapes, seed, report):
        seen.update(models=models, backends=backends, dtypes=dtypes)
        return {"device": str(device), "seed": 1, "rows": [], "ok": True, "checked": 1, "unavailable": {}}

    monkeypatch.setattr(v, "verify", fake)
    monkeypatch.setattr("vdsr_fast.engine._why_unavailable", lambda name, device: "not here" if name == "cuda" else None)
    tiny = random_vdsr(depth=3, channels=4, seed=5)
    weights = str(vdsr_fast.save(tiny, tmp_path / "tiny.safetensors"))
    assert main(["--device", "cpu", "--dtype", "fp16", "--dtype", "fp16", "--weights", weights, "--sizes", "4x4"]) == 0
    assert set(seen["models"]) == {"given", "random"} and seen["backends"] is None and seen["dtypes"] == [torch.float16]
    assert torch.equal(seen["models"]["given"].layers[0].weight, tiny.layers[0].weight)
    assert main(["--device", "cpu", "--weights", str(tmp_path / "missing.safetensors")]) == 2
    assert "vdsr-fast verify: error:" in capsys.readouterr().err

"""CPU smoke pass of benchmarks/bench_latency.py: every code path runs, results are well formed, and the
DESIGN.md §6 reference check refuses a fast-but-wrong path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import bench_latency as bench
from benchmarks import make_table
from vdsr_fast import engine as engine_mod


class WrongBackend:
    """A backend that is fast and wrong: the right answer + 0.1 (what the check must reject)."""

    name = "wrong"
    dtypes = (torch.float32,)

    @staticmethod
    def available(device: torch.device) -> str | None:
        return None

    def __init__(self, model, device, dtype) -> None:
        self.ws = [w.detach() for w in model.weights]
        self.bs = [b.detach() for b in model.biases]

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return bench.vdsr_forward(y, self.ws, self.bs) + 0.1


def _json(out: Path) -> dict:
    files = sorted(out.glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_smoke_writes_results(tmp_path, capsys):
    assert bench.main(["--smoke", "--backends", "torch", "--out", str(tmp_path)]) == 0
    data = _json(tmp_path)
    for key in (
        "schema",
        "date",
        "device",
        "versions",
        "timer",
        "weights",
        "peak",
        "config",
        "notes",
        "rows",
        "flops_per_pixel",
    ):
        assert key in data, key
    assert data["timer"] == "perf_counter"
    assert data["device"]["slug"] == "cpu-smoke"
    for key in ("torch", "cuda", "cudnn", "triton", "python"):
        assert key in data["versions"]
    assert data["peak"]["tflops"] > 0
    rows = {(r["key"], r["size"], r["batch"]): r for r in data["rows"]}
    for key in ("eager_fp32", "eager_fp16_cl", "engine_torch_fp32"):
        for batch in (1, 2):
            r = rows[(key, "16x16", batch)]
            assert r["status"] == "ok", r
            assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
            assert r["fps"] > 0 and r["tflops"] > 0 and r["pct_peak"] > 0
            assert r["check"]["passed"] and r["check"]["err"] <= r["check"]["bound"]
    assert rows[("eager_fp16_cl", "16x16", 1)]["speedup_vs_eager_fp16"] == pytest.approx(1.0)
    assert rows[("cudnn_fused_fp16", "16x16", 1)]["status"] == "skipped"  # CUDA only
    for batch in (1, 2):
        for key in ("e2e_torch_fp32", "e2e_torch_yuv_fp32"):  # upscale() on RGB, upscale_yuv() on 4:2:0 planes
            e2e = rows[(key, "8x8->16x16", batch)]
            assert e2e["status"] == "ok" and e2e["kind"] == "e2e" and e2e["median_ms"] > 0
    # the markdown table is printed last and is the same as make_table's rendering of the JSON
    printed = capsys.readouterr().out.rstrip("\n")
    table = make_table.render_markdown(data)
    assert printed.endswith(table)
    assert (tmp_path / (sorted(tmp_path.glob("*.json"))[0].stem + ".md")).read_text().strip() == table
    assert "| engine torch | fp32 | 16x16 | 1 |" in table
    pivot = make_table.render_pivot(data)
    assert "| PyTorch eager NCHW fp32 |" in pivot and "| engine torch fp16 |" in pivot and "16x16 ×2" in pivot
    assert "| engine torch fp32 |" in pivot  # one line per dtype, not one merged line
    assert make_table.main([str(sorted(tmp_path.glob("*.json"))[0]), "--pivot"]) == 0


def test_smoke_rejects_a_wrong_backend(tmp_path, monkeypatch):
    # A registered backend shows up in available_backends() and so in the benchmark, with no edits.
    monkeypatch.setitem(engine_mod.BACKENDS, "wrong", WrongBackend)
    assert bench.main(["--smoke", "--backends", "torch,wrong", "--out", str(tmp_path)]) == 3
    data = _json(tmp_path)
    wrong = [r for r in data["rows"] if r["key"] in ("engine_wrong_fp32", "e2e_wrong_fp32")]
    assert {r["key"] for r in wrong} == {"engine_wrong_fp32", "e2e_wrong_fp32"}
    for r in wrong:
        assert r["status"] == "check_failed", r
        assert r["median_ms"] is None  # a fast wrong kernel is not a result
    chk = next(r for r in wrong if r["key"] == "engine_wrong_fp32")["check"]
    assert not chk["passed"] and chk["err"] == pytest.approx(0.1, abs=1e-4) and chk["bound"] < 0.01
    ok = [r for r in data["rows"] if r["key"] == "engine_torch_fp32"]
    assert ok and all(r["status"] == "ok" for r in ok)


def test_fp32_and_tf32_paths_are_timed_after_the_end_to_end_rows():
    paths = [
        bench.PathSpec(key, key, prec, torch.float32, False, None)
        for key, prec in [("cudnn", "fp16"), ("engine_x_fp16", "fp16"), ("engine_x_fp32", "fp32"), ("eager_tf32", "tf32")]
    ]  # fmt: skip
    first, last = bench.split_slow_paths(paths, "fp16")
    assert [p.key for p in first] == ["cudnn", "engine_x_fp16"] and [p.key for p in last] == ["engine_x_fp32", "eager_tf32"]
    first, last = bench.split_slow_paths(paths, "fp32")  # the end-to-end dtype's engine checks come first
    assert [p.key for p in first] == ["cudnn", "engine_x_fp16", "engine_x_fp32"] and [p.key for p in last] == ["eager_tf32"]


def test_check_rule(tiny_model):
    ws, bs = tiny_model.weights, tiny_model.biases
    good = bench.check_against_reference(
        lambda x: bench.vdsr_forward(x, ws, bs),
        tiny_model,
        torch.device("cpu"),
        "fp32",
        torch.float32,
        shape=(1, 1, 9, 11),
    )
    assert good.passed and good.err <= good.bound
    off = bench.check_against_reference(
        lambda x: bench.vdsr_forward(x, ws, bs) + 1e-3,
        tiny_model,
        torch.device("cpu"),
        "fp32",
        torch.float32,
        shape=(1, 1, 9, 11),
    )
    assert not off.passed
    nan = bench.check_against_reference(
        lambda x: x * float("nan"), tiny_model, torch.device("cpu"), "fp32", torch.float32, shape=(1, 1, 9, 11)
    )
    assert not nan.passed
    shape = bench.check_against_reference(
        lambda x: x[..., 1:], tiny_model, torch.device("cpu"), "fp32", torch.float32, shape=(1, 1, 9, 11)
    )
    assert not shape.passed and "shape" in shape.note


def test_parse_size():
    assert bench.parse_size("720p") == ("720p", 1280, 720, 1)
    assert bench.parse_size("4k") == ("4K", 3840, 2160, 1)
    assert bench.parse_size("720p:8") == ("720p", 1280, 720, 8)
    assert bench.parse_size("37x53:2") == ("37x53", 37, 53, 2)
    with pytest.raises(ValueError):
        bench.parse_size("huge")


@pytest.mark.parametrize("argv, match", [
    (["--engine-dtypes", "fp99"], "--engine-dtypes: unknown dtype 'fp99'"),  # was SystemExit: exit status 1
    (["--backends", "bogus"], "--backends: unknown backend(s) bogus"),  # was ignored: an empty table, exit 0
    (["--sizes", ","], "--sizes: no size given"),
    (["--min-iters", "0"], "--min-iters must be at least 1"),  # was a StatisticsError traceback
    (["--sizes", "10x10:a"], "size '10x10:a': the batch after ':' must be a whole number"),
])  # fmt: skip
def test_bad_arguments_are_usage_errors(argv, match, capsys):
    assert bench.main(["--smoke", *argv]) == 2
    err = capsys.readouterr().err
    assert f"vdsr-fast bench: error: {match}" in err, err


def test_paths_matching_nothing_are_noted(capsys):
    cfg = bench.BenchConfig.smoke_config()
    cfg.paths = ["engine_torch_fp32", "nomatch*"]
    assert [p.key for p in bench.build_paths(torch.device("cpu"), cfg)] == ["engine_torch_fp32"]
    assert "--paths 'nomatch*' matches no path here" in capsys.readouterr().err


def test_bench_video_smoke(capsys, tmp_path):
    """benchmarks/bench_video.py --smoke: a generated clip with audio through upscale_video on the CPU,
    its JSON written (GPU busy fraction None without CUDA)."""
    pytest.importorskip("av")
    from benchmarks import bench_video

    assert bench_video.main(["--smoke", "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "6 frames" in line and "64x48" in line
    result = json.loads(Path(line.rsplit("-> ", 1)[1]).read_text())
    summary = result["summary"]
    assert summary["frames"] == 6 and summary["size_out"] == [64, 48] and summary["copied_streams"] == ["audio"]
    assert summary["gpu_busy_fraction"] is None and summary["gpu_busy_s"] is None


def test_canaries_report_each_option_and_the_skip_list(tmp_path, monkeypatch):
    """benchmarks/canary.py: one process per experimental option; the failed ones (here: all, no GPU in
    the subprocesses) land in canary.json and VDSR_FAST_BROKEN, which the timing scripts consult."""
    from benchmarks import canary

    every = canary.OPTIONS
    monkeypatch.setattr(canary, "OPTIONS", {k: canary.OPTIONS[k] for k in ("cuda-v5", "triton-winograd")})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    failed = canary.run_all(tmp_path, timeout_s=120)
    assert failed == ["cuda-v5", "triton-winograd"]
    report = json.loads((tmp_path / "canary.json").read_text())
    assert set(report) == set(failed) and not any(r["ok"] for r in report.values())
    monkeypatch.setenv("VDSR_FAST_BROKEN", ",".join(failed))
    assert "cuda-v5" in canary.broken("cuda", {"body_variant": 5})
    assert canary.broken("cuda", {"body_variant": 3}) is None and canary.broken("triton", {}) is None
    monkeypatch.setattr(canary, "OPTIONS", every)
    monkeypatch.setenv("VDSR_FAST_BROKEN", "cuda-pdl")  # a combination with a failed option is skipped too
    assert "cuda-pdl" in canary.broken("cuda", {"mma_head": True, "pdl": True})
    assert canary.broken("cuda", {"mma_head": True}) is None


def test_pick_defaults_reads_a_committed_layer_profile(capsys):
    """benchmarks/pick_defaults.py on the committed H200 profile (run 3): variant 1 was the fastest body."""
    from benchmarks import pick_defaults

    path = Path(__file__).resolve().parents[1] / "benchmarks/results/2026-11-26_layer_profile_nvidia-h200_1080p_fp16_run3.json"
    assert pick_defaults.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "kAutoOrder = {1, 0, 2}" in out and "8.678 ms  cuda" in out


def test_gpu_check_script_reaches_each_enabled_step(tmp_path):
    """benchmarks/gpu_check.sh on the CPU with every GPU step skipped but the layer profile: the script
    (``set -u``) gets to it and runs it (it fails here, without CUDA) instead of skipping it silently, and
    still ends with its summary."""
    import os
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "LAYER_PROFILE": "1", "SKIP_BUILD": "1",
           "SKIP_TESTS": "1", "SKIP_SANITIZER": "1", "SKIP_VIDEO": "1", "SKIP_BENCH": "1", "SKIP_CANARY": "1"}  # fmt: skip
    env.pop("CRASH_DIAG", None)
    proc = subprocess.run(["bash", str(root / "benchmarks/gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=300, cwd=root)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "unbound variable" not in proc.stdout + proc.stderr
    summary = proc.stdout[proc.stdout.index("] summary") :]
    assert "layer profile: rc=" in summary and "rc=skipped" not in summary, summary


def test_ncu_workload_refuses_without_a_gpu(capsys):
    """benchmarks/ncu_body.py (gpu_check.sh's NCU=1 workload) imports and says why it cannot run here."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU it runs the kernels (gpu_check.sh NCU=1)")
    from benchmarks import ncu_body

    assert ncu_body.main(["--variants", "6"]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().out


def test_the_device_scripts_parse():
    """Every shell script a GPU session runs (or prepares it with) is valid bash: a syntax error would cost a device
    call to find."""
    root = Path(__file__).resolve().parent.parent
    scripts = sorted((root / "benchmarks").glob("*.sh"))
    assert {s.name for s in scripts} >= {"gpu_check.sh", "gpu_session.sh", "gpu_train.sh", "prepare_device.sh"}
    for script in scripts:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"


def test_peak_memory_counts_what_a_path_holds(monkeypatch):
    """peak MB = the peak during a call above what was allocated before the path was built, less the inputs: an
    engine's persistent buffers count (runs up to 10 left them out, 8 MB against cuDNN's 762 at 1080p)."""
    state = {"allocated": 1000, "peak": 0}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: state["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: state.update(peak=state["allocated"]))
    dev = torch.device("cuda")
    base = bench._allocated(dev)
    state["allocated"] += 200 * 2**20 + 4 * 2**20  # the path builds: 200 MB of buffers it keeps; 4 MB of inputs

    def call(x):  # allocates 50 MB while it runs, frees them
        state["peak"] = max(state["peak"], state["allocated"] + 50 * 2**20)

    assert bench._peak_mem_mb(call, None, dev, base, 4 * 2**20) == pytest.approx(250.0)
    assert bench._peak_mem_mb(call, None, torch.device("cpu"), base, 0) is None


def test_factor_quality_script_runs(tmp_path, tiny_model, capsys):
    """benchmarks/factor_quality.py (README's table of other factors) on one small image with a tiny network."""
    import numpy as np

    import vdsr_fast
    from benchmarks import factor_quality
    from vdsr_fast.images import write_image

    (tmp_path / "set").mkdir()
    write_image(tmp_path / "set" / "a_HR.png", np.random.default_rng(0).integers(0, 256, (36, 40, 3)).astype(np.uint8))
    weights = vdsr_fast.save(tiny_model, tmp_path / "tiny.safetensors")
    assert factor_quality.main(["--set", str(tmp_path / "set"), "--weights", str(weights), "--out", str(tmp_path / "t.md")]) == 0
    out = capsys.readouterr().out
    assert "| x1.5 |" in out and "| x3.5 |" in out and out.count("\n| x") == len(factor_quality.FACTORS)
    written = (tmp_path / "t.md").read_text()
    assert written.startswith("# PSNR at factors") and "torch " in written and written.count("\n| x") == len(factor_quality.FACTORS)


def test_e2e_rows_at_another_size_and_factor(tmp_path):
    """--e2e-size/--e2e-scale: the end-to-end rows at e.g. 720p -> 1080p (x1.5), the output size by upscale()'s rule."""
    assert bench.main(["--smoke", "--backends", "torch", "--paths", "e2e_*", "--e2e-size", "10x8", "--e2e-scale", "1.5",
                       "--out", str(tmp_path)]) == 0  # fmt: skip
    rows = json.loads(next(tmp_path.glob("*.json")).read_text())["rows"]
    e2e = [r for r in rows if r["kind"] == "e2e"]
    assert e2e and all(r["size"] == "10x8->15x12" and r["status"] == "ok" and "x1.5" in r["note"] for r in e2e)


def test_check_rule_fp8(tiny_model):
    """The benchmark's check of an fp8 path: PyTorch's "same precision" is the FP8 scheme's emulation."""
    from vdsr_fast.engine import Engine

    emulated = Engine(tiny_model, backend="torch", dtype=torch.float8_e4m3fn, device="cpu")
    good = bench.check_against_reference(emulated, tiny_model, torch.device("cpu"), "fp8", torch.float32, shape=(1, 1, 9, 11))
    assert good.passed and good.torch_err > 1e-4, good  # the emulation is itself the same-precision run: err = torch_err
    flat = bench.check_against_reference(lambda x: x, tiny_model, torch.device("cpu"), "fp8", torch.float32, shape=(1, 1, 9, 11))
    assert not flat.passed  # no residual at all
    # every pixel off by the emulation's largest error: inside the max rule's bound (twice that error plus 2^-8), not
    # the mean rule's (vdsr_fast.verify, as test_verify_checks_fp8_by_the_mean_too)
    shift = good.torch_err
    biased = bench.check_against_reference(lambda x: emulated(x) + shift, tiny_model, torch.device("cpu"), "fp8",
                                           torch.float32, shape=(1, 1, 9, 11))  # fmt: skip
    assert biased.err <= biased.bound and not biased.passed and "mean error" in biased.note, biased


def test_quant_quality_script_runs(tmp_path, tiny_model, capsys):
    """benchmarks/quant_quality.py (README's FP8 table) on one small image with a tiny network."""
    import numpy as np

    import vdsr_fast
    from benchmarks import quant_quality
    from vdsr_fast.images import write_image

    (tmp_path / "myset").mkdir()
    write_image(tmp_path / "myset" / "a_HR.png", np.random.default_rng(0).integers(0, 256, (36, 40, 3)).astype(np.uint8))
    weights = vdsr_fast.save(tiny_model, tmp_path / "tiny.safetensors")
    argv = ["--sets", str(tmp_path / "myset"), "--weights", str(weights), "--out", str(tmp_path / "q.md")]
    assert quant_quality.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| myset |")]
    assert [r.split(" | ")[1] for r in rows] == ["x2", "x3", "x4"]
    written = (tmp_path / "q.md").read_text()
    assert written.startswith("# The FP8 engine's quality cost") and written.count("| myset | x") == 3
    assert quant_quality.main(["--sets", str(tmp_path / "missing")]) == 2
    assert quant_quality.main([*argv, "--fp16-layers", "0,1"]) == 0
    assert "body layers [0, 1] in fp16" in (tmp_path / "q.md").read_text()


def test_mixed_fp8_without_fp16_layers_is_the_emulation(tiny_model):
    """quant_quality.MixedFp8 carries activations unscaled: with no fp16 layer it is fp8.emulate up to fp32 rounding
    (a rare input a rounding step from an e4m3 tie may round the other way); with every layer in fp16 it is near the
    fp32 network."""
    from benchmarks import quant_quality
    from vdsr_fast import fp8

    x = torch.rand(2, 1, 17, 23)
    want = fp8.emulate(fp8.pack(tiny_model), x)
    got = quant_quality.MixedFp8(tiny_model, set())(x)
    assert (got - want).abs().mean() < 1e-4 * want.abs().mean()
    from vdsr_fast.engine import Engine

    ref = Engine(tiny_model, backend="torch", dtype=torch.float32, device="cpu")(x)
    body = len(tiny_model.layers) - 2
    all_fp16 = quant_quality.MixedFp8(tiny_model, set(range(body)))(x)
    assert (all_fp16 - ref).abs().max() < 0.1 * (want - ref).abs().max()

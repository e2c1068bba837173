"""CPU smoke pass of benchmarks/bench_latency.py: every code path runs, results are well formed, and the
DESIGN.md §6 reference check refuses a fast-but-wrong path."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import bench_latency as bench
from benchmarks import make_table
from vdsr_fast import engine as engine_mod

ROOT = Path(__file__).resolve().parents[1]


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


def test_the_cudnn_chain_is_timed_again_at_the_end(tmp_path, monkeypatch):
    """Every ratio is against cuDNN's chain timed first; clocks drift over a run's minutes (run 11: 7.07-7.12 ms at
    1080p in three calls, 1.29-1.30x), so the chain is timed again after every other row (a review), as its own row.
    (On the CPU an eager chain stands in for cuDNN's.)"""
    real = bench.build_paths

    def paths(device, cfg):
        stand_in = bench.PathSpec(bench.CUDNN_KEY, "cuDNN stand-in", "fp32", torch.float32, False, bench._eager(torch.float32, False))
        return [stand_in] + [p for p in real(device, cfg) if p.key != bench.CUDNN_KEY]

    monkeypatch.setattr(bench, "build_paths", paths)
    assert bench.main(["--smoke", "--no-e2e", "--paths", "cudnn*,engine_torch_fp32", "--out", str(tmp_path)]) == 0
    rows = _json(tmp_path)["rows"]
    keys = [r["key"] for r in rows if r["status"] == "ok"]
    assert keys.count(bench.CUDNN_KEY) == keys.count(bench.CUDNN_END_KEY) == 2 and "engine_torch_fp32" in keys, keys
    again = [r for r in rows if r["key"] == bench.CUDNN_END_KEY]
    assert all(r["path"].endswith("(again, at the end)") and r["speedup_vs_cudnn"] for r in again)
    assert _json(tmp_path)["cudnn_search"] == "n/a (no CUDA device)"


def test_a_bf16_cudnn_chain_comes_with_the_bf16_engines():
    """The bf16 engines were compared only with cuDNN's fp16 chain (a review): with bf16 among --engine-dtypes the
    bf16 chain is a row too (its builder takes the dtype), without it not."""
    cpu = torch.device("cpu")
    keys = [p.key for p in bench.build_paths(cpu, bench.BenchConfig(device="cpu", engine_dtypes=["fp16", "bf16"]))]
    assert "cudnn_fused_bf16" in keys
    spec = next(p for p in bench.build_paths(cpu, bench.BenchConfig(device="cpu", engine_dtypes=["bf16"])) if p.key == "cudnn_fused_bf16")
    assert (spec.precision, spec.input_dtype, spec.channels_last, spec.build.keywords) == ("bf16", torch.bfloat16, True, {"dtype": torch.bfloat16})
    assert "cudnn_fused_bf16" not in [p.key for p in bench.build_paths(cpu, bench.BenchConfig(device="cpu", engine_dtypes=["fp16"]))]


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
    assert bench.parse_size("2160p") == ("4K", 3840, 2160, 1)  # one label for one size: one column in the pivot
    assert bench.parse_size("1080P:2") == ("1080p", 1920, 1080, 2)  # names in any case
    with pytest.raises(ValueError):
        bench.parse_size("huge")
    for empty in ("0x10", "10x0", "720p:0"):  # an empty frame or batch would time nothing (or divide by zero)
        with pytest.raises(ValueError, match="must be positive"):
            bench.parse_size(empty)


@pytest.mark.parametrize("argv, match", [
    (["--engine-dtypes", "fp99"], "--engine-dtypes: unknown dtype 'fp99'"),  # was SystemExit: exit status 1
    (["--backends", "bogus"], "--backends: unknown backend(s) bogus"),  # was ignored: an empty table, exit 0
    (["--sizes", ","], "--sizes: no size given"),
    (["--min-iters", "0"], "--min-iters must be at least 1"),  # was a StatisticsError traceback
    (["--sizes", "10x10:a"], "size '10x10:a': the batch after ':' must be a whole number"),
    (["--compile", "--compile-sizes", "huge"], "size 'huge': expected one of"),  # else a traceback mid-run
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
    """benchmarks/pick_defaults.py on the committed H200 profile (run 3): variant 1 was the fastest body, by 0.5%:
    within the noise threshold, so the backend's pick (0) stays first in the suggested order."""
    from benchmarks import pick_defaults

    path = Path(__file__).resolve().parents[1] / "benchmarks/results/2026-11-26_layer_profile_nvidia-h200_1080p_fp16_run3.json"
    assert pick_defaults.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "by layer time: 1, 0, 2  -> kAutoOrder = {0, 1, 2}" in out and "8.678 ms  cuda" in out


def test_gpu_check_script_reaches_each_enabled_step(tmp_path):
    """benchmarks/gpu_check.sh on the CPU with every GPU step skipped but the layer profile: the script
    (``set -u``) gets to it and runs it (it fails here, without CUDA) instead of skipping it silently, and
    still ends with its summary."""
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


def test_gpu_check_passes_pytest_k_as_one_expression(tmp_path):
    """PYTEST_K="a or b" reaches pytest as ``-k`` and the whole expression, one argument (a stand-in python that
    notes its arguments, one a line); without it, no -k."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/bash\nif [ "$2" = pytest ]; then printf "%s\\n" "$@" > {tmp_path}/args; fi\nexit 0\n')
    fake.chmod(0o755)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": str(fake), "SKIP_BUILD": "1", "SKIP_SANITIZER": "1",
           "SKIP_VIDEO": "1", "SKIP_BENCH": "1", "SKIP_CANARY": "1", "SKIP_PYBENCH": "1", "TEST_WORKERS": "1"}  # fmt: skip
    for knob, expect in (("snapshot or 8k_frame", ["-k", "snapshot or 8k_frame"]), ("", [])):
        proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh")], env={**env, "PYTEST_K": knob},
                              capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        args = (tmp_path / "args").read_text().splitlines()
        assert args[:3] == ["-m", "pytest", "tests"] and args[3 : 3 + len(expect)] == expect and args[3 + len(expect)] == "-v", args


def _gpu_check_schedule(tmp_path: Path, knobs: dict[str, str], takes: dict[str, int] | None = None) -> list[tuple[str, int, int]]:
    """benchmarks/gpu_check.sh replayed on a virtual clock: (step, start second, cap) of every step it starts.

    Nothing runs: ``date +%s`` reads the clock, ``sleep`` moves it, ``timeout`` notes its cap and moves it by the
    cap (every step runs to its cap, unless ``takes`` names the step; the canaries run in the background beside
    the tests: they leave the clock alone, and their line may come after the tests'); python, nvidia-smi,
    compute-sanitizer and ncu are stand-ins that succeed. A cap of 0 is noted as it is: GNU timeout takes 0 as no
    limit at all."""
    repo, fake, out = tmp_path / "repo", tmp_path / "bin", tmp_path / "out"
    for d in (repo / "benchmarks", fake, out):
        d.mkdir(parents=True)
    (repo / "benchmarks" / "gpu_check.sh").write_text((ROOT / "benchmarks" / "gpu_check.sh").read_text())
    clock, log = tmp_path / "clock", tmp_path / "schedule"
    clock.write_text("0")
    steps = {"build_ext": "build", "benchmarks.canary": "canary", "-m pytest tests": "tests", "pytest benchmarks/": "pybench",
             "memcheck": "sanitizer", "benchmarks.bench_video": "video", "--out " + str(out / "bench2"): "bench2",
             "benchmarks.bench_latency": "bench", "benchmarks.layer_profile": "layer_profile", "benchmarks.ncu_body": "ncu",
             "cuda-gdb": "crash_diag", "faulthandler": "crash_diag"}  # fmt: skip
    cases = "\n".join(f'  *"{k}"*) step={v};;' for k, v in steps.items())
    scripts = {
        "date": f'if [ "$1" = "+%s" ]; then cat {clock}; else exec /bin/date "$@"; fi\n',
        "timeout": "while :; do case $1 in -s|-k) shift 2;; -*) shift;; *) break;; esac; done\n"
        f'cap=$1; shift; now=$(cat {clock})\ncase "$*" in\n{cases}\n  *) step="$1";;\nesac\n'
        f'echo "$step $now $cap" >> {log}\n'
        f'v=TAKE_$step; [ $step = canary ] || echo $((now + ${{!v:-$cap}})) > {clock}\n',
        "sleep": f"echo $(($(cat {clock}) + $1)) > {clock}\n",
        "python": "exit 0\n", "nvidia-smi": "exit 0\n", "compute-sanitizer": "exit 0\n", "ncu": "exit 0\n",
    }  # fmt: skip
    for name, body in scripts.items():
        (fake / name).write_text("#!/bin/bash\n" + body)
        (fake / name).chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "HOME": str(tmp_path), "OUT": str(out), "PYTHON": str(fake / "python"),
           **knobs, **{f"TAKE_{step}": str(t) for step, t in (takes or {}).items()}}  # fmt: skip
    proc = subprocess.run(["bash", str(repo / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert "unbound variable" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
    rows = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return [(step, int(start), int(cap)) for step, start, cap in rows]


def _readme_call(marker: str) -> tuple[dict[str, str], int]:
    """The knobs and timeout_s of the gpu_check.sh call benchmarks/README.md gives in its one run() line with
    ``marker``."""
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    (line,) = [ln for ln in readme.splitlines() if ln.lstrip().startswith('run(command="') and marker in ln]
    knobs = dict(re.findall(r"\b([A-Z][A-Z0-9_]+)=(\S+)", line.split("bash benchmarks/gpu_check.sh")[0]))
    return knobs, int(re.search(r"timeout_s=(\d+)", readme[readme.index(line) :]).group(1))


def _issue5_call() -> dict[str, str]:
    """The knobs of the issue-5 call benchmarks/README.md gives (its run() line; run 12 ran it)."""
    knobs, _ = _readme_call("NCU=1")
    assert {"GPU_CHECK_BUDGET_S", "BENCH_MIN_S", "AFTER_BENCH_S", "TEST_CAP_S"} <= set(knobs), knobs
    return {k: v for k, v in knobs.items() if k not in ("VDSR_FAST_GIT_COMMIT", "BENCH_ARGS", "PYTEST_K")}


ISSUE5_CALL = _issue5_call()


def test_the_short_test_call_runs_the_build_its_tests_and_the_benchmark(tmp_path):
    """benchmarks/README.md's short call for the next device session (its run() line with SKIP_CANARY=1): with every
    step at its cap, the build, the tests and the benchmark start, nothing else, within its budget."""
    knobs, timeout_s = _readme_call("SKIP_CANARY=1")
    assert "fused_head" in knobs.pop("PYTEST_K") and knobs.pop("VDSR_FAST_GIT_COMMIT") == "COMMIT"
    assert knobs.pop("BENCH_ARGS").startswith("'--sizes")  # (the knobs' pattern takes its first word)
    sched = _gpu_check_schedule(tmp_path, knobs)
    assert [s for s, _, _ in sched] == ["build", "tests", "bench"], sched
    caps = {s: cap for s, _, cap in sched}
    assert caps["build"] == int(knobs["BUILD_CAP_S"]) and caps["tests"] == int(knobs["TEST_CAP_S"]), sched
    assert caps["bench"] >= int(knobs["BENCH_MIN_S"]), sched
    assert max(start + cap for _, start, cap in sched) <= int(knobs["GPU_CHECK_BUDGET_S"]) < timeout_s, sched


GPU_CHECK_ORDER = ["build", "tests", "pybench", "sanitizer", "video", "bench", "bench2", "layer_profile", "ncu",
                   "crash_diag"]  # fmt: skip


@pytest.mark.parametrize("build_takes", [None, 90], ids=["build-at-its-cap", "build-90s"])
@pytest.mark.parametrize("knobs", [{}, ISSUE5_CALL], ids=["defaults", "issue5-call"])
def test_gpu_check_schedule_keeps_the_benchmark_and_the_budget(tmp_path, knobs, build_takes):
    """Every step running to its cap: the steps start in the documented order, each with a limit (never timeout's
    0, which is none), the benchmark with at least BENCH_MIN_S, and the script ends within its budget; with a
    quick build the prepared issue-5 call runs every step it asks for, the ones after the benchmark to their caps."""
    sched = _gpu_check_schedule(tmp_path, knobs, None if build_takes is None else {"build": build_takes})
    budget, bench_min = int(knobs.get("GPU_CHECK_BUDGET_S", 450)), int(knobs.get("BENCH_MIN_S", 170))
    names = [s for s, _, _ in sched if s != "canary"]
    assert "canary" in [s for s, _, _ in sched], sched
    assert "bench" in names and names == sorted(names, key=GPU_CHECK_ORDER.index), sched
    assert all(cap > 0 for _, _, cap in sched), sched
    (bench,) = [cap for s, _, cap in sched if s == "bench"]
    assert bench >= bench_min, sched
    assert max(start + cap for s, start, cap in sched if s != "canary") <= budget, sched
    if knobs and build_takes == 90:
        caps = {s: cap for s, _, cap in sched}
        assert names == ["build", "tests", "sanitizer", "bench", "layer_profile", "ncu"], sched
        assert caps["sanitizer"] == 40 and caps["layer_profile"] == 80 and caps["ncu"] == 50, sched
    elif knobs:  # the build at its cap: the sanitizer gives way (benchmarks/README.md says so)
        assert "sanitizer" not in names and {"layer_profile", "ncu"} <= set(names), sched


def test_gpu_session_check_waits_for_the_training_then_times_with_full_shares(tmp_path):
    """gpu_session.sh's call of gpu_check.sh (its knobs, a gate file that never appears): the steps before the gate
    (done early, beside the training) leave the timing steps waiting at the gate until 275 s, the point its header
    gives (TRAIN_DEADLINE_S stops the training before it); then the video, the benchmark and the layer profile get
    their full shares within the budget."""
    knobs = {"GPU_CHECK_BUDGET_S": "560", "TIMING_GATE": str(tmp_path / "never"), "BENCH_MIN_S": "145",
             "VIDEO_CAP_S": "75", "TEST_CAP_S": "200", "LAYER_PROFILE": "1", "LAYER_PROFILE_CAP_S": "45",
             "AFTER_BENCH_S": "50"}  # fmt: skip
    session = (ROOT / "benchmarks" / "gpu_session.sh").read_text()
    for name, value in knobs.items():  # the knobs as gpu_session.sh passes them
        if name not in ("GPU_CHECK_BUDGET_S", "TIMING_GATE"):
            assert f"{name}=${{{name}:-{value}}}" in session, name
    assert "TRAIN_DEADLINE_S:-270}" in session and "= 275 s" in session
    sched = _gpu_check_schedule(tmp_path, knobs, {"build": 90, "tests": 105, "pybench": 20, "sanitizer": 30})
    starts = {s: (start, cap) for s, start, cap in sched}
    assert starts["video"] == (275, 75) and starts["bench"][0] == 350 and starts["bench"][1] >= 145, sched
    assert starts["layer_profile"][1] == 45 and max(start + cap for start, cap in starts.values()) <= 560, sched


def test_gpu_check_gives_a_squeezed_benchmark_its_minimum_from_the_steps_after_it(tmp_path):
    """Steps before the benchmark that overran their shares (a budget smaller than the caps): the benchmark still
    gets BENCH_MIN_S, taken from the layer profile after it; with no time at all it is skipped, not run with no
    limit."""
    knobs = {**ISSUE5_CALL, "GPU_CHECK_BUDGET_S": "330", "NCU": "0"}
    sched = _gpu_check_schedule(tmp_path, knobs)
    (bench,) = [cap for s, _, cap in sched if s == "bench"]
    assert bench >= 80, sched
    sched = _gpu_check_schedule(tmp_path / "none", {**knobs, "GPU_CHECK_BUDGET_S": "150"})
    assert all(cap > 0 for _, _, cap in sched) and "bench" not in [s for s, _, _ in sched], sched


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
    """peak MiB = the peak during a call above what was allocated before the path was built, less the inputs: an
    engine's persistent buffers count (runs up to 10 left them out, 8 MiB against cuDNN's 762 at 1080p)."""
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


def test_factor_quality_table_follows_its_protocol(tmp_path, tiny_model, capsys):
    """Every cell of the table, recomputed from the docstring's protocol with the public API: the HR Y cropped to a
    multiple of the factor's numerator p, LR by MATLAB bicubic to q/p of it, results rounded to 8 bits, PSNR shaving
    ceil(f); the column of the next trained scale is ``upscale(lr, f)`` itself, the scales below f are "—". A
    smooth image (PSNR ~40 dB, where the 8-bit rounding moves it by ~0.05 dB) whose sides no numerator divides."""
    import math

    import numpy as np

    import vdsr_fast
    from benchmarks import factor_quality
    from vdsr_fast.evaluate import load_y
    from vdsr_fast.images import write_image

    model = copy.deepcopy(tiny_model)  # a residual of a few levels, not a random network's garbage: PSNR ~40 dB
    with torch.no_grad():
        model.layers[-1].weight.mul_(0.01)
        model.layers[-1].bias.mul_(0.01)
    r, c = np.mgrid[0:47, 0:52]
    rgb = np.stack([0.5 + 0.3 * np.sin(r / 6 + k) * np.cos(c / 7 - k) for k in range(3)], axis=-1)
    rgb += np.random.default_rng(1).normal(0, 0.01, rgb.shape)
    (tmp_path / "set" / "x2").mkdir(parents=True)  # the data sets' layout: the HR images under x2/ (and x3/, x4/)
    write_image(tmp_path / "set" / "x2" / "a_HR.png", (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    weights = vdsr_fast.save(model, tmp_path / "tiny.safetensors")
    assert factor_quality.main(["--set", str(tmp_path / "set"), "--weights", str(weights)]) == 0
    table = {line.split(" | ")[0][3:]: line.strip(" |").split(" | ")[1:]
             for line in capsys.readouterr().out.splitlines() if line.startswith("| x")}  # fmt: skip

    def q(t):
        return (t.clamp(0, 1) * 255).round() / 255

    def net(t):
        with torch.no_grad():
            return model(t.float()[None, None])[0, 0].double()

    y = load_y(tmp_path / "set" / "x2" / "a_HR.png")
    for f in factor_quality.FACTORS:
        h, w = 47 // f.numerator * f.numerator, 52 // f.numerator * f.numerator
        hr = y[:h, :w]
        lr = vdsr_fast.imresize(hr, size=(h * f.denominator // f.numerator, w * f.denominator // f.numerator))
        shave = math.ceil(f)
        bic = vdsr_fast.imresize(lr, size=(h, w))
        want = [vdsr_fast.psnr(q(bic), hr, shave=shave), vdsr_fast.psnr(q(net(bic)), hr, shave=shave)]
        for k in (2, 3, 4):
            if k < f:
                want.append(None)
            elif k == math.ceil(f):  # what upscale(scale=f) does
                sr = vdsr_fast.upscale(lr.float()[None, None], float(f), model=model)[0, 0].double()
                want.append(vdsr_fast.psnr(q(sr), hr, shave=shave))
            else:
                up = net(vdsr_fast.imresize(lr, size=(k * lr.shape[0], k * lr.shape[1])))
                want.append(vdsr_fast.psnr(q(vdsr_fast.imresize(up, size=(h, w))), hr, shave=shave))
        got = table[f"{float(f):g}"]
        assert [g == "—" for g in got] == [v is None for v in want], (f, got)
        assert 30 < want[0] < 50, want  # where the rounding to 8 bits shows in the second decimal
        for g, v in zip(got, want):
            if v is not None:
                assert float(g) == pytest.approx(v, abs=0.0051), (f, got, want)


def test_e2e_rows_at_another_size_and_factor(tmp_path):
    """--e2e-size/--e2e-scale: the end-to-end rows at e.g. 720p -> 1080p (x1.5), the output size by upscale()'s rule."""
    assert bench.main(["--smoke", "--backends", "torch", "--paths", "e2e_*", "--e2e-size", "10x8", "--e2e-scale", "1.5",
                       "--out", str(tmp_path)]) == 0  # fmt: skip
    rows = json.loads(next(tmp_path.glob("*.json")).read_text())["rows"]
    e2e = [r for r in rows if r["kind"] == "e2e"]
    assert e2e and all(r["size"] == "10x8->15x12" and r["status"] == "ok" and "x1.5" in r["note"] for r in e2e)
    # no engine path was checked in this run (--paths): each row says so
    assert all("engine_torch_fp32 was not checked in this run" in r["note"] for r in e2e)


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


def test_quant_quality_table_compares_the_two_engines(tmp_path, tiny_model, capsys, monkeypatch):
    """Each row's numbers, recomputed: PSNR/SSIM of ``evaluate`` with the fp32 and the FP8 engine (Δ = FP8 minus
    fp32), and the two engines' outputs on the very inputs ``evaluate`` gave them, rounded to 8 bits: the largest
    difference in levels and the share of pixels more than one level apart. A set named relative to the working
    directory is that folder."""
    import numpy as np

    import vdsr_fast
    from benchmarks import quant_quality
    from vdsr_fast.engine import Engine
    from vdsr_fast.evaluate import evaluate
    from vdsr_fast.images import write_image

    model = copy.deepcopy(tiny_model)
    with torch.no_grad():  # a residual of some levels: the FP8 error moves the 8-bit output by a level or more
        model.layers[-1].weight.mul_(0.2)
    rng = np.random.default_rng(2)
    (tmp_path / "myset").mkdir()
    for name, amp in (("a", 0.0), ("b", 0.3)):  # a flat, b not: the largest FP8 error is not a's
        r, c = np.mgrid[0:36, 0:40]
        img = 0.5 + amp * np.sin(r / rng.uniform(3, 6) + rng.uniform(0, 6))[..., None] * np.cos(c / 5)[..., None]
        img = img + rng.normal(0, amp / 6, (36, 40, 3))
        write_image(tmp_path / "myset" / f"{name}_HR.png", (np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    weights = vdsr_fast.save(model, tmp_path / "tiny.safetensors")
    inputs: dict[tuple[int, str], list[torch.Tensor]] = {}

    def recording_evaluate(folder, scale, engine):
        kind = "fp8" if engine.engine.dtype == torch.float8_e4m3fn else "fp32"
        seen = inputs.setdefault((scale, kind), [])

        def call(x):
            seen.append(x.clone())
            return engine(x)

        call.device = engine.device
        return evaluate(folder, scale, call)

    monkeypatch.setattr(quant_quality, "evaluate", recording_evaluate)
    monkeypatch.chdir(tmp_path)
    assert quant_quality.main(["--sets", "myset", "--weights", str(weights)]) == 0
    rows = {line.split(" | ")[1]: line.strip(" |").split(" | ")[2:]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| myset |")}  # fmt: skip
    engines = {kind: Engine(model, backend="torch", dtype=dtype, device="cpu")
               for kind, dtype in (("fp32", torch.float32), ("fp8", torch.float8_e4m3fn))}  # fmt: skip
    for s in (2, 3, 4):
        a, b = evaluate(tmp_path / "myset", s, engines["fp32"]), evaluate(tmp_path / "myset", s, engines["fp8"])
        assert all(torch.equal(x, y) for x, y in zip(inputs[s, "fp32"], inputs[s, "fp8"], strict=True))
        u8 = {kind: [(e(x).clamp(0, 1) * 255 + 0.5).floor() for x in inputs[s, kind]] for kind, e in engines.items()}
        diffs = [(x - y).abs() for x, y in zip(u8["fp32"], u8["fp8"], strict=True)]
        worst = max(float(d.max()) for d in diffs)
        assert float(diffs[0].max()) < worst  # (files are scored in name order)
        share = 100 * sum(int((d >= 2).sum()) for d in diffs) / sum(d.numel() for d in diffs)
        got = rows[f"x{s}"]
        assert float(got[0]) == pytest.approx(a.mean("psnr"), abs=5e-4)
        assert float(got[1]) == pytest.approx(b.mean("psnr") - a.mean("psnr"), abs=5e-4) and float(got[1]) != 0
        assert float(got[2]) == pytest.approx(a.mean("ssim"), abs=5e-5)
        assert float(got[3]) == pytest.approx(b.mean("ssim") - a.mean("ssim"), abs=5e-5)
        assert float(got[4]) == worst and worst >= 2, (got, worst)
        assert float(got[5].rstrip("%")) == pytest.approx(share, abs=0.005) and share > 0, (got, share)


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


# ---- the numbers a results JSON holds, from synthetic timings (mutation audit of the benchmark tooling)


def _bare_run(**attrs) -> bench._Run:
    """A ``_Run`` without its environment probe, model or output folder: just the attributes a method reads."""
    run = object.__new__(bench._Run)
    run.__dict__.update(attrs)
    return run


def test_time_callable_warms_up_then_times_enough_calls_in_ms(monkeypatch):
    # a fake clock, one call = 2^-9 s (exact in binary): the count follows --min-iters / --rep-ms, the unit is ms
    clock, calls = [0.0], []

    def call():
        calls.append(1)
        clock[0] += 2**-9

    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    cfg = bench.BenchConfig.smoke_config()
    cfg.min_iters, cfg.rep_ms, cfg.warmup_ms = 3, 10 * 1.953125, 3 * 1.953125
    assert bench.time_callable(call, torch.device("cpu"), cfg, "perf_counter") == [1.953125] * 10  # rep_ms / 1.95 ms
    assert len(calls) == 2 + 3 + 10  # first call and the estimate, 3 warm-up calls (warmup_ms), 10 timed
    cfg.rep_ms, cfg.warmup_ms = 0.0, 0.0
    assert len(bench.time_callable(call, torch.device("cpu"), cfg, "perf_counter")) == 3  # at least --min-iters


def test_row_statistics_from_synthetic_timings(monkeypatch):
    # median (not mean) and interpolated p10/p90 of the sorted times; frames/s count the batch; TFLOP/s of the
    # 20-layer 64-channel VDSR (1,329,408 FLOP/pixel) at 1e6 pixels in 3 ms = 443.136, half the given peak
    monkeypatch.setattr(bench, "time_callable", lambda call, device, cfg, timer: [4.0, 1.0, 3.0, 2.0, 10.0])
    run = _bare_run(model=SimpleNamespace(depth=20, channels=64), peak={"tflops": 886.272}, device=torch.device("cpu"),
                    cfg=bench.BenchConfig.smoke_config(), timer="perf_counter")  # fmt: skip
    row = bench.BenchResult("engine_x_fp16", "engine x", "network", "fp16", "1000x500", 1000, 500, 2)
    bench._Run._timed_row(run, row, lambda x: x, [torch.zeros(1)], 1_000_000, None)
    assert row.median_ms == 3.0 and row.n_iters == 5
    assert row.p10_ms == pytest.approx(1.4) and row.p90_ms == pytest.approx(7.6)
    assert row.fps == pytest.approx(2000 / 3)
    assert row.tflops == pytest.approx(443.136) and row.pct_peak == pytest.approx(50.0)


def test_matmul_peak_is_the_median_time_of_2n3_flops(monkeypatch):
    monkeypatch.setattr(bench, "time_callable", lambda call, device, cfg, timer: [1.0, 2.0, 50.0])
    cfg = bench.BenchConfig.smoke_config()
    cfg.peak_size = 100
    peak = bench.matmul_peak(torch.device("cpu"), cfg, "perf_counter")
    # 2 * 100^3 FLOP in the median 2 ms = 1e9 FLOP/s
    assert peak["dtype"] == "fp32" and peak["shape"] == "100^3" and peak["median_ms"] == 2.0
    assert peak["tflops"] == pytest.approx(1e-3)


def test_speedups_divide_the_baseline_by_the_row_at_the_same_size_and_batch():
    # "x cuDNN fused" = cuDNN's median / this one (> 1: faster), per (kind, size, batch); the end-to-end rows compare
    # with e2e_torch_<e2e dtype>, never with a network row
    def row(key, ms, kind="network", batch=1, status="ok"):
        size = "1080p" if kind == "network" else "960x540->1920x1080"
        return bench.BenchResult(key, key, kind, "fp16", size, 1920, 1080, batch, status=status, median_ms=ms)

    rows = [row("cudnn_fused_fp16", 8.0), row("eager_fp16_cl", 12.0), row("engine_x_fp16", 4.0),
            row("cudnn_fused_fp16", 80.0, batch=8), row("engine_x_fp16", 20.0, batch=8),
            row("engine_bad_fp16", None, status="check_failed"),
            row("e2e_torch_fp16", 10.0, "e2e"), row("e2e_x_fp16", 5.0, "e2e"), row("e2e_x_yuv_fp16", 2.5, "e2e")]  # fmt: skip
    bench._Run.fill_derived(_bare_run(rows=rows, cfg=bench.BenchConfig()))
    got = {(r.key, r.batch): (r.speedup_vs_cudnn, r.speedup_vs_eager_fp16) for r in rows}
    assert got[("engine_x_fp16", 1)] == (2.0, 3.0) and got[("cudnn_fused_fp16", 1)] == (1.0, 1.5)
    assert got[("engine_x_fp16", 8)] == (4.0, None)  # no eager row at batch 8
    assert got[("engine_bad_fp16", 1)] == (None, None)
    assert got[("e2e_x_fp16", 1)] == (None, 2.0) and got[("e2e_x_yuv_fp16", 1)] == (None, 4.0)


def test_rows_are_sorted_in_the_order_of_sizes_then_paths():
    # --sizes 720p,1080p,4k,720p:8: the table (and the pivot's columns) in that order, network rows before the
    # end-to-end ones (runs up to 11 put 720p after 4K: "720p" and "720p:8" share a label)
    def row(key, size, batch=1, kind="network"):
        return bench.BenchResult(key, key, kind, "fp16", size, 1, 1, batch, median_ms=1.0)

    rows = [row("e2e_torch_fp16", "8x8->16x16", 8, "e2e"), row("e2e_torch_fp16", "8x8->16x16", 1, "e2e"),
            row("engine_x_fp16", "4K"), row("cudnn_fused_fp16", "4K"), row("engine_x_fp16", "720p", 8),
            row("eager_fp32", "1080p"), row("engine_x_fp16", "1080p"), row("engine_x_fp16", "720p"),
            row("cudnn_fused_fp16", "720p")]  # fmt: skip
    run = _bare_run(rows=rows, sizes=[bench.parse_size(s) for s in ("720p", "1080p", "4k", "720p:8")])
    assert [(r.key, r.size, r.batch) for r in bench._Run.sorted_rows(run)] == [
        ("cudnn_fused_fp16", "720p", 1), ("engine_x_fp16", "720p", 1), ("eager_fp32", "1080p", 1),
        ("engine_x_fp16", "1080p", 1), ("cudnn_fused_fp16", "4K", 1), ("engine_x_fp16", "4K", 1),
        ("engine_x_fp16", "720p", 8), ("e2e_torch_fp16", "8x8->16x16", 1), ("e2e_torch_fp16", "8x8->16x16", 8),
    ]  # fmt: skip


def test_check_rule_bound_is_twice_pytorchs_error_plus_atol(tiny_model):
    # DESIGN.md §6: err <= 2 * err(PyTorch, same precision) + atol; a path given the float64 input exactly, its output
    # the float64 reference shifted by a chosen amount, has that amount as its error
    ws, bs = [w.double() for w in tiny_model.weights], [b.double() for b in tiny_model.biases]
    cpu, shape = torch.device("cpu"), (1, 1, 9, 11)

    def shifted(by: float):
        return lambda x: bench.vdsr_forward(x, ws, bs) + by

    fp16 = bench.check_against_reference(shifted(0.0), tiny_model, cpu, "fp16", torch.float64, shape=shape)
    assert fp16.passed and fp16.err == 0 and fp16.torch_err > 1e-5
    inside = bench.check_against_reference(shifted(1.5 * fp16.torch_err + 1e-3), tiny_model, cpu, "fp16",
                                           torch.float64, shape=shape)  # fmt: skip
    assert inside.passed, inside  # beyond 1 x PyTorch's error + atol, inside twice it
    fp32 = bench.check_against_reference(shifted(0.0), tiny_model, cpu, "fp32", torch.float64, shape=shape)
    off = bench.check_against_reference(shifted(2 * fp32.torch_err + 3e-5), tiny_model, cpu, "fp32", torch.float64,
                                        shape=shape)  # fmt: skip
    assert not off.passed and off.bound < 2e-5, off  # fp32's atol is a few ulps (1e-5), not a half type's


def test_build_paths_runs_the_named_backends_and_compile_only_when_asked():
    cfg = bench.BenchConfig.smoke_config()
    cfg.paths, cfg.backends = None, ["torch"]
    keys = [p.key for p in bench.build_paths(torch.device("cpu"), cfg)]
    assert {"engine_torch_fp32", "engine_torch_fp16"} <= set(keys) and "compile_fp16_cl" not in keys
    assert not any(k.startswith(("engine_triton", "engine_cuda")) for k in keys)  # --backends torch: no other rows
    cfg.compile = True  # right after cuDNN's chain, so a --budget-s never skips it
    assert [p.key for p in bench.build_paths(torch.device("cpu"), cfg)][:2] == ["cudnn_fused_fp16", "compile_fp16_cl"]
    cfg.paths = ["engine_torch_fp32"]  # --compile names its path itself: a --paths does not drop it
    assert [p.key for p in bench.build_paths(torch.device("cpu"), cfg)] == ["compile_fp16_cl", "engine_torch_fp32"]


class RaisingBackend(WrongBackend):
    """A backend whose engine cannot be built (a kernel that fails to compile, say)."""

    name = "raising"

    def __init__(self, model, device, dtype) -> None:
        raise RuntimeError("kernel build failed")


def test_a_backend_that_raises_is_an_error_at_every_size_not_a_wrong_result(tmp_path, monkeypatch):
    # each size gets its error row, the end-to-end rows say the engine raised (they do not run it again), a dtype the
    # backend lacks is a skipped row, and the exit status stays 0 (3 is for wrong results)
    monkeypatch.setitem(engine_mod.BACKENDS, "raising", RaisingBackend)
    assert bench.main(["--smoke", "--backends", "raising", "--paths", "engine_*,e2e_*", "--out", str(tmp_path)]) == 0
    rows = {(r["key"], r["batch"]): r for r in _json(tmp_path)["rows"]}
    for batch in (1, 2):
        r = rows[("engine_raising_fp32", batch)]
        assert r["status"] == "error" and "kernel build failed" in r["note"], r
        for key in ("e2e_raising_fp32", "e2e_raising_yuv_fp32"):
            r = rows[(key, batch)]
            assert r["status"] == "error" and "engine_raising_fp32 raised (see its row)" in r["note"], r
    r = rows[("engine_raising_fp16", 1)]
    assert r["status"] == "skipped" and r["note"] == "backend 'raising' does not support fp16", r


def test_a_spent_time_budget_skips_the_rows_left(tmp_path):
    argv = ["--smoke", "--backends", "torch", "--paths", "engine_torch_fp32,e2e_*", "--budget-s", "0", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    rows = _json(tmp_path)["rows"]
    assert {(r["key"], r["batch"]) for r in rows} == {
        (k, b) for k in ("engine_torch_fp32", "e2e_torch_fp32", "e2e_torch_yuv_fp32") for b in (1, 2)
    }
    assert all(r["status"] == "skipped" and r["note"] == "time budget spent" for r in rows), rows


def test_paths_choose_the_end_to_end_rows_too(tmp_path, capsys):
    """--paths selects end-to-end groups by their keys as the network paths (e2e_torch_yuv_fp32 alone: was every
    group, budget and all, with a note that the pattern matched nothing)."""
    argv = ["--smoke", "--backends", "torch", "--paths", "e2e_torch_yuv_*", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    assert {r["key"] for r in _json(tmp_path)["rows"]} == {"e2e_torch_yuv_fp32"}
    assert "matches no path" not in capsys.readouterr().err


def test_the_fused_colour_check_compares_with_the_unfused_pipeline(monkeypatch):
    """The fused end-to-end rows are checked against upscale(fused_color=False): since fused colour became the
    default on a GPU, a call without it compared the fused pipeline with itself."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(bench._Run.run_e2e)))  # the fused rows run on a GPU only
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "upscale"]
    assert calls and all(any(k.arg == "fused_color" for k in c.keywords) for c in calls)


def test_do_bench_gives_at_least_min_iters_samples(monkeypatch):
    """do_bench sizes its count from its own estimate (9 samples behind 4K rows asked for 10 or more): it is called
    again until --min-iters samples are in."""
    import triton.testing

    calls = []
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: calls.append(kw) or [1.0, 2.0, 3.0])
    cfg = bench.BenchConfig(min_iters=7, rep_ms=1, warmup_ms=0)
    times = bench.time_callable(lambda: None, torch.device("cpu"), cfg, "do_bench")
    assert len(times) == 9 and len(calls) == 3 and all(kw["return_mode"] == "all" for kw in calls)


def test_bad_e2e_scale_and_missing_weights_are_refused_before_any_row(tmp_path, capsys):
    """--e2e-scale outside 1-4 ran every network row, then died in the end-to-end rows with a traceback (exit 1); a
    missing --weights file was a traceback too. Both: one line, exit status 2, nothing written."""
    for extra, msg in ((["--e2e-scale", "5"], "--e2e-scale: scale must be a number from 1 to 4"),
                       (["--weights", str(tmp_path / "none.safetensors")], "--weights: " + str(tmp_path / "none.safetensors") + ": no such file")):  # fmt: skip
        assert bench.main(["--smoke", "--out", str(tmp_path / "out"), *extra]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_flags_reach_the_config():
    args = bench.build_parser().parse_args(
        ["--smoke", "--no-e2e", "--paths", "cudnn*, engine_*", "--rep-ms", "50", "--min-iters", "4"]
    )
    cfg = bench.config_from_args(args)
    assert cfg.e2e_batches == [] and cfg.paths == ["cudnn*", "engine_*"] and cfg.rep_ms == 50 and cfg.min_iters == 4


# ---- make_table on a hand-written results JSON: every cell's rounding, the rows each table keeps

RESULTS = {
    "date": "2026-01-01T00:00:00+00:00",
    "timer": "do_bench",
    "device": {"name": "Some GPU", "driver": "580.1"},
    "versions": {"torch": "2.11", "cuda": "13.0", "cudnn": "9.19.0", "triton": "3.6.0", "git_commit": "0123abcd"},
    "peak": {"dtype": "fp16", "shape": "8192^3", "tflops": 743.6},
    "weights": "shipped weights",
    "rows": [
        {"key": "cudnn_fused_fp16", "path": "cuDNN fused", "dtype": "fp16", "size": "1080p", "batch": 1, "status": "ok",
         "median_ms": 7.0681, "p10_ms": 7.0149, "p90_ms": 7.2321, "fps": 141.47, "tflops": 390.04, "pct_peak": 52.46,
         "speedup_vs_cudnn": 1.0, "speedup_vs_eager_fp16": None, "peak_mem_mb": 764.4, "check": {"passed": True}},
        {"key": "engine_cuda_fp16", "path": "engine cuda", "dtype": "fp16", "size": "4K", "batch": 1, "status": "ok",
         "median_ms": 21.503, "p10_ms": 21.29, "p90_ms": 121.69, "fps": 46.51, "tflops": 512.8, "pct_peak": 68.94,
         "speedup_vs_cudnn": 1.314, "speedup_vs_eager_fp16": 2.5, "peak_mem_mb": 2059.4, "check": {"passed": True}},
        {"key": "engine_bad_fp16", "path": "engine bad", "dtype": "fp16", "size": "1080p", "batch": 1,
         "status": "check_failed", "median_ms": None, "check": {"passed": False, "err": 0.1, "bound": 0.00123}},
        {"key": "engine_cuda_fp32", "path": "engine cuda", "dtype": "fp32", "size": "1080p", "batch": 1,
         "status": "skipped", "note": "backend 'cuda' does not support fp32"},
        {"key": "e2e_torch_fp16", "path": "upscale() torch", "dtype": "fp16", "size": "960x540->1920x1080", "batch": 8,
         "status": "ok", "median_ms": 55.55, "p10_ms": 55.0, "p90_ms": 56.0, "fps": 144.0, "tflops": 300.0,
         "pct_peak": 40.0, "speedup_vs_cudnn": None, "speedup_vs_eager_fp16": 1.0, "peak_mem_mb": 900.0, "check": None},
    ],
}  # fmt: skip


def test_full_table_rounds_each_column_and_leaves_out_skipped_rows():
    table = make_table.render_markdown(copy.deepcopy(RESULTS)).splitlines()
    assert table[0] == ("**Some GPU, driver 580.1, torch 2.11, CUDA 13.0, cuDNN 9.19.0, triton 3.6.0** — "
                        "2026-01-01T00:00:00+00:00, commit 0123abcd, timer `do_bench`; measured fp16 matmul peak 744 TFLOP/s (8192^3); "
                        "weights: shipped weights; cuDNN plans: not recorded (PyTorch default: the first 10 timed)")  # fmt: skip
    data = dict(copy.deepcopy(RESULTS), cudnn_search="every plan timed (cudnn.benchmark, benchmark_limit 0)")
    assert make_table.render_header(data).endswith("; cuDNN plans: every plan timed (cudnn.benchmark, benchmark_limit 0)")
    # ms: 3 decimals under 10, 2 under 100, 1 above; frames/s, TFLOP/s, % peak 1 decimal; speedups 2; MiB none
    assert table[4:] == [
        "| cuDNN fused | fp16 | 1080p | 1 | 7.068 | 7.015 | 7.232 | 141.5 | 390.0 | 52.5 | 1.00 | — | 764 | ok |",
        "| engine cuda | fp16 | 4K | 1 | 21.50 | 21.29 | 121.7 | 46.5 | 512.8 | 68.9 | 1.31 | 2.50 | 2059 | ok |",
        "| engine bad | fp16 | 1080p | 1 | — | — | — | — | — | — | — | — | — | FAIL (err 1.0e-01 > 1.2e-03) |",
        "| upscale() torch | fp16 | 960x540->1920x1080 | 8 | 55.55 | 55.00 | 56.00 | 144.0 | 300.0 | 40.0 | — | 1.00 | 900 | n/a |",
    ]  # fmt: skip
    ok_only = make_table.render_markdown(copy.deepcopy(RESULTS), include_failed=False)
    assert "engine bad" not in ok_only and "| engine cuda | fp16 | 4K |" in ok_only


def test_make_table_ok_only_flag(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(RESULTS))
    assert make_table.main([str(path)]) == 0 and "| engine bad |" in capsys.readouterr().out
    assert make_table.main([str(path), "--ok-only"]) == 0 and "| engine bad |" not in capsys.readouterr().out


def test_pivot_has_the_median_of_each_ok_row_in_its_column():
    pivot = make_table.render_pivot(copy.deepcopy(RESULTS)).splitlines()
    assert pivot[2:] == [
        "| path | 1080p | 4K | 960x540->1920x1080 ×8 |",
        "|---|---|---|---|",
        "| cuDNN fused fp16 | 7.068 ms | — | — |",
        "| engine cuda fp16 | — | 21.50 ms | — |",
        "| upscale() torch fp16 | — | — | 55.55 ms |",
    ]  # a row that failed its check or was skipped has no median: no line


# ---- pick_defaults on run 11's profile: many options, rows without a time


def test_pick_defaults_ranks_every_option_fastest_first(capsys):
    from benchmarks import pick_defaults

    path = Path(__file__).resolve().parents[1] / "benchmarks/results/2026-11-27_layer_profile_nvidia-h200_1080p_fp16_run11.json"
    assert pick_defaults.main([str(path)]) == 0  # its rows of kernels that did not run (ms None) are left out
    out = capsys.readouterr().out
    cuda = out[out.index("cuda: whole network") : out.index("triton: whole network")].splitlines()[1:]
    times = [float(line.split()[0]) for line in cuda if line.strip() and not line.lstrip().startswith("->")]
    assert len(times) == 17 and times == sorted(times) and cuda[-2].lstrip().startswith("-> keep the default")
    # the cuDNN chain estimate: 18 x its body layer (0.3440 ms) + its head (0.9587 ms) = 7.15 ms, over the network's time
    assert cuda[0] == "     5.446 ms  cuda tensor-core head + PDL  (1.31x the cuDNN chain estimate 7.15 ms)"
    assert "kAutoOrder = {10, 11, 9, 14, 8, 13, 12, 7, 6, 5, 4, 1, 0, 2, 3}" in out  # 10, the pick: 11 is 0.1% faster
    # run 7's variants 7 and 8 did not run (ms None): ranked without them, not a TypeError
    assert pick_defaults.main([str(path.with_name("2026-11-26_layer_profile_nvidia-h200_1080p_fp16_run7.json"))]) == 0
    assert "kAutoOrder = {6, 5, 4, 1, 0, 2, 3}" in capsys.readouterr().out


def test_pick_defaults_names_a_candidate_only_beyond_its_noise_threshold(capsys):
    """Run 12's profile: tensor-core head + PDL 0.6% and body variant 11 1.2% faster than the defaults, both within
    the 2% default threshold (kept), both candidates at 0.1%; Triton's default is its fastest."""
    from benchmarks import pick_defaults

    path = str(Path(__file__).resolve().parents[1] / "benchmarks/results/2026-11-29_layer_profile_nvidia-h200_1080p_fp16_run12.json")
    assert pick_defaults.main([path]) == 0
    out = capsys.readouterr().out
    assert "-> keep the default options: the fastest, cuda tensor-core head + PDL, is 0.6% faster, within the 2.0%" in out
    assert "-> keep the default body variant (kAutoOrder's first): the fastest, variant 11, is 1.2% faster" in out
    assert "candidate" not in out and out.count("-> keep the default options: it is the fastest") == 1
    assert "kAutoOrder = {10, 11, 9, 8, 14, 13, 12, 7, 6, 5, 4, 1, 0, 15, 2, 16, 3}" in out  # variant 10 kept first
    assert pick_defaults.main([path, "--min-gain", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "-> a candidate for the default options: cuda tensor-core head + PDL, 0.6% faster" in out
    assert "-> a candidate for the default body variant (kAutoOrder's first): variant 11, 1.2% faster" in out
    assert "kAutoOrder = {11, 9, 10, 8, 14, 13, 12, 7, 6, 5, 4, 1, 0, 15, 2, 16, 3} (csrc/conv3x3_body.cu)\n" in out
    with pytest.raises(SystemExit):
        pick_defaults.main([path, "--min-gain", "-1"])
    assert "--min-gain must be in [0, 100)" in capsys.readouterr().err


# ---- canary: the names the benchmark's engine options map to, and the one deadline for all the processes


def test_broken_maps_each_option_kind_to_its_canary(monkeypatch):
    from benchmarks import canary
    from vdsr_fast.kernels.triton.conv3x3_tma import tma_config
    from vdsr_fast.kernels.triton.winograd import winograd_config

    monkeypatch.setenv("VDSR_FAST_BROKEN", "triton-fp8,triton-winograd,cuda-v5")
    assert "triton-fp8" in canary.broken("triton", {"dtype": torch.float8_e4m3fn})  # the benchmark's fp8 engine
    assert "triton-winograd" in canary.broken("triton", {"body_config": winograd_config(64, 64, torch.float16)})
    assert canary.broken("triton", {"body_config": tma_config(torch.float16)}) is None  # TMA's canary passed
    assert canary.broken("triton", {"body_variant": 5}) is None  # cuda-v5 is the CUDA backend's


def test_canaries_share_one_deadline(tmp_path, monkeypatch):
    # the processes run in parallel: each later wait gets what is left of --timeout-s, not the whole of it again,
    # and past the deadline none at all (a second each for 22 canaries overran gpu_check.sh's timeout: a review)
    from benchmarks import canary

    clock, waits, killed = [0.0], [], []

    class Proc:
        def __init__(self, args, **kw) -> None:
            self.name, self.returncode, self.args = args[-1], None, args

        def communicate(self, timeout=None):
            if timeout is None:  # reaping a killed one
                return "", None
            waits.append(timeout)
            if timeout < 10:
                clock[0] += timeout
                raise subprocess.TimeoutExpired(self.name, timeout)
            clock[0] += 10
            self.returncode = 0
            return f"ok {self.name}\n", None

        def kill(self):
            killed.append(self.name)

    monkeypatch.setattr(canary, "OPTIONS", {k: ("cuda", {}) for k in ("a", "b", "c")})
    monkeypatch.setattr(canary, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(canary, "subprocess", SimpleNamespace(Popen=Proc, PIPE=subprocess.PIPE, STDOUT=subprocess.STDOUT,
                                                              TimeoutExpired=subprocess.TimeoutExpired))  # fmt: skip
    assert canary.run_all(tmp_path, timeout_s=15) == ["b", "c"]
    assert waits == [15, 5] and killed == ["b", "c"]
    assert json.loads((tmp_path / "canary.json").read_text())["b"] == {"ok": False, "log": "timed out after 15 s"}


def test_git_commit_names_uncommitted_changes(monkeypatch):
    """The results' commit says ``-dirty`` when tracked files differ from it (git describe --dirty), and the caller's
    VDSR_FAST_GIT_COMMIT wins (a device machine's copy of the tree carries a stale .git)."""
    monkeypatch.setenv("VDSR_FAST_GIT_COMMIT", "0123abcd-dirty")
    assert bench.git_commit() == "0123abcd-dirty"
    monkeypatch.delenv("VDSR_FAST_GIT_COMMIT")
    git = ["git", "-C", str(ROOT)]
    if subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--"]).returncode != 0
    assert bench.git_commit() == head + ("-dirty" if dirty else "")


def test_spot_check_checks_the_timed_size_where_its_windows_are():
    """bench_latency checks each timed size's own output in five windows (the corners of the first and last frame,
    the centre) against the float64 reference of the window widened by the receptive radius: the small check before
    timing does not run the tiles a 1080p frame does (found by a review). A fault in the last frame's last tile is
    caught; the exact output passes; each window's reference equals the whole frame's there."""
    from benchmarks.bench_latency import SPOT, _pack, spot_check
    from vdsr_fast.reference import VDSR, vdsr_forward

    torch.manual_seed(0)
    model = VDSR(4, 8)
    x = torch.rand(3, 1, 70, 110)
    ws, bs = _pack(model, torch.device("cpu"), torch.float32, False)
    out = vdsr_forward(x, ws, bs)
    ok = spot_check(out, x, model, "fp32")
    assert ok["passed"] and ok["side"] == SPOT and ok["err"] <= 1e-5, ok
    bad = out.clone()
    bad[2, 0, 69, 109] += 0.01  # the last pixel of the last frame
    fail = spot_check(bad, x, model, "fp32")
    assert not fail["passed"] and fail["window"] == [2, 70 - SPOT, 110 - SPOT], fail
    far = out.clone()
    far[1, 0, 5, 60] += 0.01  # a pixel of a frame no window is in: what five windows cannot see
    assert spot_check(far, x, model, "fp32")["passed"]
    assert not spot_check(out[:, :, :-1], x, model, "fp32")["passed"]  # a wrong shape

"""Host-side logic of the GPU tool scripts, on the CPU and fast: benchmarks/bench_video.py (the generated clip, its
tone, the arguments the timed run gets, the JSON and the summary line), benchmarks/layer_profile.py (its refusal
and FLOP count) and benchmarks/triton_aot.py (capture, specialisation, ``ptxas -v`` parsing, the instruction
flags, the table and JSON). What only a GPU can run is left to gpu_check.sh; the full compile of every kernel is
tests/test_triton_aot.py."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


# ---- bench_video: the clip and its tone


class _ToneSink:
    """Stands in for a PyAV output container and its AAC stream: keeps what ``mux_tone`` encodes."""

    def __init__(self, frame_size: int) -> None:
        self.codec_context = SimpleNamespace(frame_size=frame_size)
        self.frames: list = []  # AudioFrame, or None for the flush
        self.muxed = 0

    def encode(self, frame):
        self.frames.append(frame)
        return []

    def mux(self, packets) -> None:
        self.muxed += 1


@pytest.mark.parametrize("seconds", [Fraction(1, 2), Fraction(24 * 1024, 48000)])  # the second: whole AAC frames
def test_mux_tone_is_a_continuous_440_hz_stereo_tone_as_long_as_asked(seconds):
    pytest.importorskip("av", reason="PyAV is not installed: the tone is PyAV audio frames")
    from benchmarks.bench_video import mux_tone

    sink = _ToneSink(1024)
    mux_tone(sink, sink, seconds, 0.3)
    frames, flush = sink.frames[:-1], sink.frames[-1]
    assert flush is None and None not in frames and sink.muxed == len(sink.frames)  # flushed last, everything muxed
    assert [f.pts for f in frames] == [1024 * i for i in range(len(frames))]
    assert all(f.sample_rate == 48000 and f.time_base == Fraction(1, 48000) and f.format.name == "fltp" for f in frames)
    samples = np.concatenate([f.to_ndarray() for f in frames], axis=1)
    assert samples.shape[0] == 2 and np.array_equal(samples[0], samples[1])
    assert 48000 * seconds <= samples.shape[1] < 48000 * seconds + 1024  # covers the time, less than a frame over
    want = 0.3 * np.sin(2 * np.pi * 440 * np.arange(samples.shape[1]) / 48000)  # one phase across the frames
    np.testing.assert_allclose(samples[0], want, atol=1e-6)


def test_generated_clip_has_its_frames_at_the_rate_and_a_tone_as_long():
    av = pytest.importorskip("av", reason="PyAV is not installed: the clip is written with it")
    from benchmarks.bench_video import make_clip

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        make_clip(path, 40, 24, 12, fps=24)
        with av.open(str(path)) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            assert (v.codec_context.name, v.codec_context.width, v.codec_context.height) == ("h264", 40, 24)
            assert (a.codec_context.name, a.codec_context.sample_rate, a.codec_context.layout.nb_channels) == ("aac", 48000, 2)
            times = [f.time for f in c.decode(video=0)]
            c.seek(0)
            audio_s = sum(f.samples for f in c.decode(audio=0)) / 48000
    assert times == pytest.approx([i / 24 for i in range(12)])
    assert 0.5 <= audio_s <= 0.5 + 3 * 1024 / 48000  # 12 frames at 24 fps (AAC adds up to a frame or two)


# ---- bench_video: main() with the clip and the run stood in for


class _VideoRun:
    """Records make_clip and upscale_video calls; upscale_video answers with a GPU-like summary."""

    def __init__(self, busy) -> None:
        self.clips, self.runs, self.busy = [], [], busy

    def make_clip(self, path, width, height, frames, fps=24):
        self.clips.append((width, height, frames))

    def upscale_video(self, src, dst, scale, model, **kw):
        self.runs.append({"src": Path(src).name, "dst": Path(dst).name, "scale": scale, **kw})
        return {"frames": self.clips[-1][2], "fps": 42.0, "pipeline": "yuv", "gpu_busy_fraction": self.busy}


@pytest.fixture
def video_run(monkeypatch):
    from benchmarks import bench_video

    def make(busy=None):
        run = _VideoRun(busy)
        monkeypatch.setattr(bench_video, "make_clip", run.make_clip)
        monkeypatch.setattr(bench_video, "upscale_video", run.upscale_video)
        return run

    return bench_video, make


def _written(capsys) -> tuple[str, Path, dict]:
    line = capsys.readouterr().out.strip().splitlines()[-1]
    path = Path(line.rsplit("-> ", 1)[1])
    return line, path, json.loads(path.read_text())


def _on_a_gpu(monkeypatch, bench_video, card: str) -> None:
    """bench_video sees a CUDA device named ``card``; the model it loads is a stand-in (the run is one too)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: card)
    monkeypatch.setattr(bench_video, "load", lambda: "the model")


def test_bench_video_on_a_gpu_warms_up_then_times_the_run_the_flags_ask_for(video_run, monkeypatch, tmp_path, capsys):
    bench_video, make = video_run
    run = make(busy=0.874)
    _on_a_gpu(monkeypatch, bench_video, "NVIDIA H200")
    argv = ["--size", "96X40", "--frames", "10", "--scale", "3", "--batch", "3", "--preset", "slow", "--backend",
            "triton", "--pipeline", "rgb", "--out", str(tmp_path)]  # fmt: skip
    assert bench_video.main(argv) == 0
    assert run.clips == [(96, 40, 10)]
    warm, timed = run.runs
    for r in run.runs:  # the same work twice, on the GPU
        assert (r["src"], r["scale"], r["batch"], r["device"], r["backend"], r["pipeline"], r["progress"]) == (
            "in.mp4", 3, 3, "cuda", "triton", "rgb", False)  # fmt: skip
    assert warm["preset"] == "ultrafast" and warm["dst"] != timed["dst"]  # the warm-up: quick, to another file
    assert timed["preset"] == "slow"
    line, path, result = _written(capsys)
    assert path.parent == tmp_path and re.fullmatch(r"\d{4}-\d\d-\d\d_video_NVIDIA_H200\.json", path.name)
    assert path.name.startswith(result["date"][:10])
    assert result["card"] == "NVIDIA H200" and result["summary"]["gpu_busy_fraction"] == 0.874
    assert result["clip"] == {"size": [96, 40], "frames": 10, "scale": 3, "batch": 3, "preset": "slow", "codec": "libx264"}
    assert "96x40 -> 288x120, 10 frames, batch 3" in line and "42.0 frames/s, GPU busy 87%" in line


def test_bench_video_default_preset_is_the_encoders(video_run, monkeypatch, tmp_path, capsys):
    bench_video, make = video_run
    run = make(busy=0.5)
    _on_a_gpu(monkeypatch, bench_video, "card")
    assert bench_video.main(["--out", str(tmp_path)]) == 0
    assert run.clips == [(960, 540, 120)] and [r["batch"] for r in run.runs] == [8, 8]
    assert [r["preset"] for r in run.runs] == ["ultrafast", None] and run.runs[1]["backend"] == "auto"
    line, _, result = _written(capsys)
    assert result["clip"]["preset"] == "default (medium)" and "GPU busy 50%" in line


def test_bench_video_smoke_runs_once_on_the_cpu_into_a_temporary_folder(video_run, monkeypatch, tmp_path, capsys):
    bench_video, make = video_run
    run = make(busy=None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the temporary folders, and
    monkeypatch.chdir(tmp_path)  # a relative benchmarks/results, land under tmp_path
    (tmp_path / "tmp").mkdir()
    assert bench_video.main(["--smoke", "--scale", "3"]) == 0
    assert len(run.runs) == 1 and run.runs[0]["device"] == "cpu"  # no warm-up run on the CPU
    line, path, _ = _written(capsys)
    assert path.parent.parent == tmp_path / "tmp" and path.parent.name.startswith("bench_video_")  # not results/
    assert "32x24 -> 96x72" in line and "GPU busy -" in line


def test_bench_video_without_cuda_says_to_use_smoke(video_run, monkeypatch, capsys):
    bench_video, make = video_run
    run = make()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_video.main([]) == 2
    assert "--smoke" in capsys.readouterr().err and run.runs == []


# ---- layer_profile


def test_layer_profile_refuses_without_cuda_and_checks_its_arguments_first(monkeypatch, capsys):
    from benchmarks import layer_profile

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        layer_profile.main(["--dtype", "bf16", "--size", "64x32"])
    with pytest.raises(SystemExit) as e:
        layer_profile.main(["--dtype", "fp32"])  # a usage error, not a run with another dtype
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_layer_profile_flops_add_up_to_the_networks():
    """The rows' TFLOP/s (head, body, tail) count what the whole network's row counts."""
    from benchmarks.layer_profile import _flops
    from vdsr_fast.reference import flops_per_pixel

    n, h, w, c = 2, 3, 5, 64
    layers = _flops(n, h, w, 1, c) + 18 * _flops(n, h, w, c, c) + _flops(n, h, w, c, 1)
    assert layers == flops_per_pixel(20, c) * n * h * w


# ---- triton_aot: its pure functions in this process, its capture and one real compile in a fresh one


@pytest.fixture(scope="module")
def aot():
    """benchmarks.triton_aot, imported here without re-importing the kernels: they are imported first, in this
    process's mode (the interpreter on a CPU), and TRITON_INTERPRET is unset only for the script's own import."""
    pytest.importorskip("triton", reason="triton is not installed")
    from vdsr_fast.kernels.triton import color, conv3x3, conv3x3_tma, tail, winograd  # noqa: F401

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TRITON_INTERPRET", raising=False)
        return importlib.import_module("benchmarks.triton_aot")


def test_triton_aot_refuses_a_process_with_triton_in_interpreter_mode(aot, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delitem(sys.modules, "benchmarks.triton_aot")
    with pytest.raises(RuntimeError, match="fresh process"):
        importlib.import_module("benchmarks.triton_aot")


_PTX = """.version 8.0
.target sm_80
.address_size 64
.visible .entry k(.param .u64 p, .param .u32 n)
{
  .reg .b32 %r<4>;
  .reg .b64 %rd<3>;
  ld.param.u64 %rd1, [p];
  ld.param.u32 %r1, [n];
  cvta.to.global.u64 %rd2, %rd1;
  mov.u32 %r2, %tid.x;
  add.s32 %r3, %r2, %r1;
  st.global.u32 [%rd2], %r3;
  ret;
}
"""


def test_ptxas_usage_of_a_real_kernel(aot):
    ptxas = Path(aot.triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip(f"triton's bundled ptxas is not at {ptxas}")
    regs, spills = aot._ptxas_usage(_PTX, "sm_80")
    assert isinstance(regs, int) and 0 < regs < 32 and spills == 0


def test_ptxas_usage_parses_registers_and_sums_spill_stores(aot, monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return SimpleNamespace(stdout="", stderr=report)

    monkeypatch.setattr(aot.subprocess, "run", fake_run)
    report = ("ptxas info    : Compiling entry function 'k' for 'sm_90a'\nptxas info    : Function properties for k\n"
              "    8 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
              "ptxas info    : Function properties for helper\n    0 bytes stack frame, 16 bytes spill stores, 0 bytes spill loads\n"
              "ptxas info    : Used 168 registers, used 1 barriers, 32 bytes cumulative stack size\n")  # fmt: skip
    assert aot._ptxas_usage(".target sm_90a", "sm_90a") == (168, 24)
    assert "-arch=sm_90a" in calls[0] and "-v" in calls[0]
    report = "ptxas fatal   : Unresolved extern function 'f'\n"  # no report: unknown, not zero
    assert aot._ptxas_usage(".target sm_90a", "sm_90a") == (None, None)


@pytest.mark.parametrize(
    "ptx, want",
    [
        (".target sm_90a\nwgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 {}\ncp.async.bulk.tensor.2d.shared\n"
         "st.global.v4.b32 [%rd1], {}",
         dict(wgmma=True, mma_sync=False, cp_async=True, tma=True, ld_v4=False, st_v4=True, fp32_fma=False, e4m3_mma=True)),
        (".target sm_80\ncvt.rn.f16x2.e4m3x2 %r1, %rs1;\nmma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {}\n"
         "cp.async.cg.shared.global [%r2], [%rd2], 16;\nld.global.v4.b32 {}\nfma.rn.f32 %f1, %f2, %f3, %f4;",
         dict(wgmma=False, mma_sync=True, cp_async=True, tma=False, ld_v4=True, st_v4=False, fp32_fma=True, e4m3_mma=False)),
    ],
)  # fmt: skip
def test_rows_say_which_instructions_carry_the_work(aot, monkeypatch, ptx, want):
    """The flags of a row, from the kernel's PTX: an e4m3 upcast feeding a 16-bit mma is not an 8-bit mma."""
    kernel = SimpleNamespace(fn=SimpleNamespace(__name__="_conv3x3_kernel"))
    kwargs = {"C_IN": 64, "HEAD": True, "TAIL": False, "BLOCK_M": 128, "SWAP": True, "num_warps": 8}
    monkeypatch.setattr(aot, "_capture", lambda dtype, shape, body: [(kernel, (), kwargs)])
    monkeypatch.setattr(aot, "compile_launch",
                        lambda fn, args, kw, cap: SimpleNamespace(asm={"ptx": ptx}, metadata=SimpleNamespace(shared=4096)))  # fmt: skip
    monkeypatch.setattr(aot, "_ptxas_usage", lambda ptx, arch: (96, 0))
    (row,) = aot.compile_all((90,), (torch.bfloat16,), shapes=("odd",))
    assert (row.kernel, row.target, row.shape, row.dtype) == ("_conv3x3_kernel(head)", ptx.split()[1], "odd", "bfloat16")
    assert (row.config, row.shared_bytes, row.registers, row.spill_bytes) == ("BLOCK_M=128, SWAP=True, num_warps=8", 4096, 96, 0)
    assert {k: getattr(row, k) for k in want} == want


def test_triton_aot_main_passes_its_flags_and_writes_the_table_and_json(aot, monkeypatch, tmp_path, capsys):
    calls = []
    rows = [aot.Compiled("_winograd_kernel", "sm_90a", "odd", "bfloat16", "BLOCK_T=64", 96 * 1024, 128, 0, True, False,
                         True, False, True, True, False),
            aot.Compiled("_tail_kernel", "sm_89", "odd", "float8_e4m3fn", "BLOCK_M=64", 2048, 40, None, False, True,
                         False, True, False, False, False, True)]  # fmt: skip
    monkeypatch.setattr(aot, "compile_all", lambda *a: calls.append(a) or rows)
    out = tmp_path / "rows.json"
    argv = ["--json", str(out), "--targets", "89,90", "--dtypes", "bfloat16,float8_e4m3fn", "--candidates", "--shapes", "odd"]
    assert aot.main(argv) == 0
    assert calls == [((89, 90), (torch.bfloat16, torch.float8_e4m3fn), True, ["odd"])]
    table = capsys.readouterr().out.splitlines()
    assert table[0].split(" | ")[5:9] == ["shared KB", "regs", "spill B", "wgmma"]
    assert table[2] == "| _winograd_kernel | sm_90a | odd | bfloat16 | BLOCK_T=64 | 96 | 128 | 0 | yes | - | yes | - |"
    assert table[3] == "| _tail_kernel | sm_89 | odd | float8_e4m3fn | BLOCK_M=64 | 2 | 40 | None | - | yes | - | yes |"
    assert json.loads(out.read_text()) == [asdict(r) for r in rows]
    assert aot.main([]) == 0  # the defaults: both targets, the three engine dtypes, both shapes, the default configs
    assert calls[1] == ((80, 90), (torch.float16, torch.bfloat16, torch.float32), False, ["aligned", "odd"])


_CAPTURE = r"""
import json, re, sys
from types import SimpleNamespace
import torch
from benchmarks import triton_aot as aot  # with TRITON_INTERPRET=1 set, as a user's shell may have it
from triton.runtime.jit import JITFunction
from vdsr_fast.kernels.triton import conv3x3, conv3x3_tma, winograd

res = {"interpreted": type(conv3x3._conv3x3_kernel).__name__}
run, compile_launch = JITFunction.run, aot.compile_launch
for shape in ("aligned", "odd"):  # one real compile: the smallest kernel, fp32, sm_80
    fn, args, kwargs = next(l for l in aot._capture(torch.float32, aot.SHAPES[shape]) if l[0].fn.__name__ == "_tail_gather_kernel")
    k = compile_launch(fn, args, kwargs, 80)
    params = re.search(r"tt\.func public @\w+\((.*?)\) attributes", k.asm["ttir"], re.S).group(1)
    res[shape] = {"debug": k.metadata.debug, "params": {m.group(1): bool(m.group(2)) for m in
                  re.finditer(r"%(\w+): [^{,]*?(\{tt\.divisibility = 16 : i32\})?\s*loc\(", params)}}
aot.compile_launch = lambda fn, args, kw, cap: SimpleNamespace(asm={"ptx": f".target sm_{cap}{'a' if cap == 90 else ''}\n"},
                                                               metadata=SimpleNamespace(shared=0))
aot._ptxas_usage = lambda ptx, arch: (None, None)
row = lambda r: [r.kernel, r.target, r.shape, r.dtype, r.config]
res["rows"] = [row(r) for r in aot.compile_all((80, 89, 90))]
res["candidate_rows"] = [row(r) for r in aot.compile_all((89, 90), (torch.float16, torch.float8_e4m3fn), candidates=True,
                                                          shapes=("aligned",))]
res["run_restored"] = JITFunction.run is run
f16, f8 = torch.float16, torch.float8_e4m3fn
res["candidates"] = {"float16": {"_conv3x3_kernel": len(conv3x3.body_config_candidates(f16)),
                                 "_winograd_kernel": len(winograd.winograd_candidates(f16)),
                                 "_conv3x3_tma_kernel": len(conv3x3_tma.tma_candidates(f16))},
                     "float8_e4m3fn": {"_conv3x3_tma_kernel": len(conv3x3_tma.tma_candidates(f8))}}
print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def captured():
    """triton_aot in a fresh process (its capture needs triton out of interpreter mode): every launch of a forward,
    compiled by a stand-in, and the tail gather kernel compiled for real for sm_80 in both frame shapes."""
    pytest.importorskip("triton", reason="triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", _CAPTURE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_triton_aot_specialises_like_the_launcher(captured):
    """Pointers are 16-byte aligned; in the aligned shape every size and stride is a multiple of 16 (a stride of 1 is
    a constant), in the odd one the frame's height and width are not."""
    assert captured["interpreted"] == "JITFunction"  # TRITON_INTERPRET=1 was turned off before triton loaded
    aligned, odd = captured["aligned"], captured["odd"]
    assert not aligned["debug"] and not odd["debug"]
    assert set(aligned["params"]) == set(odd["params"]) >= {"z_ptr", "y_ptr", "out_ptr", "H", "W"}
    assert all(aligned["params"].values())
    assert odd["params"]["z_ptr"] and odd["params"]["out_ptr"] and not odd["params"]["H"] and not odd["params"]["W"]


def test_triton_aot_captures_every_kernel_for_every_target_it_can_run_on(captured):
    rows = captured["rows"] + captured["candidate_rows"]
    assert captured["run_restored"]  # the recorder is gone after the capture
    have = {(k, t, s, d) for k, t, s, d, _ in rows}
    for dtype in ("float16", "bfloat16", "float32"):
        for target in ("sm_80", "sm_89", "sm_90a"):
            for shape in ("aligned", "odd"):
                for kernel in ("_conv3x3_kernel(head)", "_conv3x3_kernel", "_tail_kernel", "_conv3x3_kernel(tail)",
                               "_tail_gather_kernel"):  # fmt: skip
                    assert (kernel, target, shape, dtype) in have
                # the TMA body (the 16-bit default on Hopper) and its fused tail: where the engine launches them only
                for kernel in ("_conv3x3_tma_kernel(tail)", *(("_conv3x3_tma_kernel",) if dtype != "float32" else ())):
                    assert ((kernel, target, shape, dtype) in have) == (target == "sm_90a"), (kernel, target, dtype)
    colour = {(t, s, d) for k, t, s, d, _ in captured["rows"] if k in ("_upscale_kernel", "_finish_kernel")}
    assert colour == {(t, s, "float16") for t in ("sm_80", "sm_89", "sm_90a") for s in ("aligned", "odd")}  # once
    fp8 = {(k, t) for k, t, s, d, _ in rows if d == "float8_e4m3fn"}
    assert {t for _, t in fp8} == {"sm_89", "sm_90a"}  # no 8-bit tensor cores before sm_89
    assert {k for k, _ in fp8} == {"_conv3x3_kernel(head)", "_conv3x3_tma_kernel", "_conv3x3_tma_kernel(tail)",
                                   "_tail_gather_kernel"}  # fmt: skip


def test_triton_aot_candidates_are_each_compiled_once_and_told_apart(captured):
    """--candidates: every swept body config once (the default too: not twice), each with its own config string."""
    for dtype, kernels in captured["candidates"].items():
        for kernel, n in kernels.items():
            configs = [c for k, t, s, d, c in captured["candidate_rows"] if (k, t, s, d) == (kernel, "sm_90a", "aligned", dtype)]
            assert len(configs) == len(set(configs)) == n, (kernel, dtype, configs)
            assert all("num_warps=" in c and "num_stages=" in c for c in configs)

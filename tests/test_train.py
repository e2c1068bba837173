"""The training loop on a tiny synthetic set: runs, checkpoints, resumes exactly, writes loadable weights."""

import dataclasses
import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
import signal
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vdsr_fast
import vdsr_fast.train as train_module
from vdsr_fast.images import write_image
from vdsr_fast.reference import VDSR
from vdsr_fast.train import PatchSampler, TrainConfig, build_pairs, cpu_has_native_bf16, load_train_y, train


def _images(folder, n=3):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        base = rng.random((10, 12, 3))
        write_image(folder / f"im{i}.png", (np.kron(base, np.ones((4, 4, 1))) * 255).astype(np.uint8))
    return folder


def test_pairs_are_matlab_bicubic_degradations(tmp_path):
    pairs, scales = build_pairs(load_train_y([str(_images(tmp_path / "d", 1))], progress=False), [2, 3], [1.0], progress=False)
    assert scales == [2, 3]
    for (bic, hr), s in zip(pairs, scales):
        assert bic.shape == hr.shape and hr.shape[0] % s == 0 and hr.shape[1] % s == 0
        expected = vdsr_fast.imresize(vdsr_fast.imresize(hr.double(), 1 / s), s)
        torch.testing.assert_close(bic, expected.float(), rtol=0, atol=1e-6)


def test_pairs_are_downsized_first_then_cropped_to_each_scale():
    """Each image is downsized first (MATLAB bicubic, x0.5 here), then cropped to a multiple of each scale in both
    dimensions (the other tests' images are 40 x 48, whose width every scale divides, and are not downsized); a
    scale an image is too small for is skipped, not the scales listed after it."""
    g = torch.Generator().manual_seed(0)
    big, small = torch.rand(41, 50, dtype=torch.float64, generator=g), torch.rand(7, 9, dtype=torch.float64, generator=g)
    pairs, scales = build_pairs([big, small], [4, 3], [1.0, 0.5], progress=False)
    half = vdsr_fast.imresize(big, 0.5)  # 21 x 25
    expected = [(big[:40, :48], 4), (big[:39, :48], 3), (half[:20, :24], 4), (half[:21, :24], 3), (small[:6, :9], 3)]
    assert scales == [s for _, s in expected]  # the small image: too small for x4 (under 2 x 4) and at x0.5
    for (bic, hr), (want, s) in zip(pairs, expected):
        assert torch.equal(hr, want.float())
        torch.testing.assert_close(bic, vdsr_fast.imresize(vdsr_fast.imresize(want, 1 / s), s).float(), rtol=0, atol=1e-6)


def test_patch_sampler_is_aligned_and_seeded(tmp_path):
    """Every sampled (input, target) pair is the same crop of one training pair under the same one of
    the 8 flips/rotations (found by brute force), and the same seed gives the same batch."""
    pairs, _ = build_pairs(load_train_y([str(_images(tmp_path / "d", 2))], progress=False), [2, 3], [1.0], progress=False)
    pairs = [(bic, hr + 1) for bic, hr in pairs]  # input and target differ everywhere
    x, y = PatchSampler(pairs, 8, torch.Generator().manual_seed(1)).batch(40)
    x2, y2 = PatchSampler(pairs, 8, torch.Generator().manual_seed(1)).batch(40)
    assert x.shape == y.shape == (40, 1, 8, 8) and torch.equal(x, x2) and torch.equal(y, y2)
    # Drawn 4 batches at a time (one host-to-device copy): the same draws as one batch of 40, split.
    chunked = PatchSampler(pairs, 8, torch.Generator().manual_seed(1), chunk=4)
    parts = [chunked.batch(10) for _ in range(4)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)

    def views(t):  # the 8 flips/rotations of a patch, flattened: (8, 64)
        return torch.stack([torch.rot90(v, k) for v in (t, t.t()) for k in range(4)]).reshape(8, -1)

    crops = [(F.unfold(bic[None, None], 8)[0].t(), F.unfold(hr[None, None], 8)[0].t()) for bic, hr in pairs]  # (positions, 64)
    used = set()
    for px, py in zip(x[:, 0], y[:, 0]):
        vx, vy = views(px), views(py)
        hits = [(i, a) for i, (cx, cy) in enumerate(crops)
                for a, pos in (((cx[None] == vx[:, None]).all(-1) & (cy[None] == vy[:, None]).all(-1)).nonzero().tolist())]
        assert hits, "a sampled pair is not an aligned crop of a training pair"
        used.add(hits[0][1])
    assert len(used) >= 6  # the flips and rotations are drawn


def test_patch_sampler_reaches_every_crop_position_in_proportion():
    """Every crop position is drawn (the last row and column too, and the one position of a pair exactly the
    patch's size), each pair in proportion to its number of positions (1 and 4 here, so every position has the
    same chance), and a batch may have another size than the last (a run resumed with another --batch)."""
    small, big = torch.arange(16.0).reshape(4, 4), 100 + torch.arange(25.0).reshape(5, 5)
    sampler = PatchSampler([(small, small + 0.5), (big, big + 0.5)], 4, torch.Generator().manual_seed(0), chunk=2)
    x, y = sampler.batch(500)
    assert torch.equal(y, x + 0.5)
    corners = x.amin(dim=(1, 2, 3))  # a crop's smallest value is its top-left one, whatever the flip or rotation
    values, counts = (t.tolist() for t in torch.unique(corners, return_counts=True))
    assert values == [0, 100, 101, 105, 106]  # the small pair's one crop, and the big pair's 4
    assert all(60 < n < 140 for n in counts), counts  # 100 each expected
    assert sampler.batch(3)[0].shape == (3, 1, 4, 4)  # the chunk was drawn for batches of 500: this one is drawn anew


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_train_checkpoint_resume_and_weights(tmp_path, ema):
    data = _images(tmp_path / "data")
    common = dict(data=[str(data)], scales=[2, 3], downsizes=[1.0], patch=12, batch=2, depth=4, channels=8,
                  eval_set="", ckpt_every=2, warmup=1, lr=1e-3, threads=1, device="cpu", ema=ema)
    full = train(TrainConfig(out=str(tmp_path / "a"), steps=4, **common), progress=False)
    train(TrainConfig(out=str(tmp_path / "b"), steps=4, **common), progress=False, until_step=2)
    resumed = train(TrainConfig(out=str(tmp_path / "b"), steps=4, **common), progress=False)
    ma, mb = vdsr_fast.load(full), vdsr_fast.load(resumed)
    for ca, cb in zip(ma.layers, mb.layers):  # resuming reproduces the uninterrupted run, bit for bit
        assert torch.equal(ca.weight, cb.weight) and torch.equal(ca.bias, cb.bias)
    assert ma.metadata["steps"] == "4" and ma.metadata["scales"] == "[2, 3]"
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert state["step"] == 4 and {"model", "optimizer", "rng", "config", "history"} <= set(state)
    from_ckpt = vdsr_fast.load(tmp_path / "a" / "last.pt")  # a checkpoint loads as weights (no pickle code runs)
    saved = state["ema"] if ema else state["model"]  # with ema the average is what is saved
    assert ("ema" in state) == bool(ema)
    for i, conv in enumerate(ma.layers):
        assert torch.equal(conv.weight, saved[f"layers.{i}.weight"]) and torch.equal(conv.bias, saved[f"layers.{i}.bias"])
        raw = from_ckpt.layers[i]  # the checkpoint's own weights: the model's, not the average
        assert torch.equal(raw.weight, state["model"][f"layers.{i}.weight"])
        assert torch.equal(raw.weight, conv.weight) != bool(ema)


def _tiny(tmp_path, **overrides):
    """A 6-step run's settings on the tiny set (x2 and x3, a depth-3 8-channel VDSR, one thread)."""
    data = tmp_path / "data" if (tmp_path / "data").is_dir() else _images(tmp_path / "data")
    return dict(dict(data=[str(data)], scales=[2, 3], downsizes=[1.0], patch=12, batch=2, depth=3, channels=8, eval_set="",
                     warmup=1, lr=1e-3, threads=1, device="cpu", steps=6), **overrides)  # fmt: skip


def _assert_same_run(a, b):
    """Two runs' last.pt hold the same step, weights, average, optimizer state and generator, bit for bit."""
    a, b = (torch.load(Path(p) / "last.pt", weights_only=True) for p in (a, b))
    assert a["step"] == b["step"] and ("ema" in a) == ("ema" in b)
    for key in ("model", "ema") if "ema" in a else ("model",):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), (key, name)
    for i, st in a["optimizer"]["state"].items():
        for name, t in st.items():
            assert torch.equal(t, b["optimizer"]["state"][i][name]), (i, name)
    assert torch.equal(a["rng"], b["rng"]) and a["rng_batches"] == b["rng_batches"]


@pytest.mark.parametrize("optimizer, ema, ckpt_every, stops", [
    ("adam", 0.0, 2, [3]),  # a stop between two checkpoints
    ("adam", 0.9, 500, [1, 3]),  # two stops inside one chunk of patch draws, with the moving average
    ("sgd", 0.0, 4, [3, 5]),  # the paper's optimizer
])  # fmt: skip
def test_a_run_stopped_at_any_step_resumes_bit_identically(tmp_path, optimizer, ema, ckpt_every, stops):
    """--until-step / --max-minutes / a signal may stop a run at any step. The patches are drawn a chunk of steps
    at a time, and a stop inside a chunk saved the generator after the whole chunk: the resumed run drew other
    patches (weights off by ~1e-3 after 6 steps). The checkpoint now saves where the chunk began."""
    cfg = _tiny(tmp_path, optimizer=optimizer, ema=ema, ckpt_every=ckpt_every)
    train(TrainConfig(out=str(tmp_path / "a"), **cfg), progress=False)
    for stop in stops:
        train(TrainConfig(out=str(tmp_path / "b"), **cfg), progress=False, until_step=stop)
        assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == stop
    train(TrainConfig(out=str(tmp_path / "b"), **cfg), progress=False)
    _assert_same_run(tmp_path / "a", tmp_path / "b")  # also: the same seed from scratch gives the same run


def test_another_seed_is_another_run(tmp_path):
    cfg = _tiny(tmp_path, steps=2)
    train(TrainConfig(out=str(tmp_path / "a"), **cfg), progress=False)
    train(TrainConfig(out=str(tmp_path / "b"), **dict(cfg, seed=1)), progress=False)
    a, b = (torch.load(tmp_path / r / "last.pt", weights_only=True) for r in "ab")
    assert not torch.equal(a["model"]["layers.0.weight"], b["model"]["layers.0.weight"])
    assert not torch.equal(a["rng"], b["rng"])


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_step_reached_then_takes_its_course(tmp_path, monkeypatch, sig):
    """Ctrl-C or SIGTERM (a scheduler ending the job) mid-run lost every step since the last checkpoint (500 by
    default); now the step in flight finishes, last.pt is saved there (atomically), and the signal then acts as
    it would have (KeyboardInterrupt; here a test's own SIGTERM handler). The resumed run is the uninterrupted one."""
    cfg = _tiny(tmp_path, ckpt_every=500)

    class Terminated(Exception):
        pass

    def on_term(signum, frame):
        raise Terminated

    lr_at = train_module._lr_at

    def lr_at_signalling(c, step):  # the signal arrives during step 3 (-> 4)
        if step == 3:
            signal.raise_signal(sig)
        return lr_at(c, step)

    # Python's own Ctrl-C handler, also where the suite runs with SIGINT ignored (nohup, a shell's background job),
    # whose ignored signal the run rightly leaves alone
    before_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    before_term = signal.signal(signal.SIGTERM, on_term)
    try:
        monkeypatch.setattr(train_module, "_lr_at", lr_at_signalling)
        with pytest.raises(KeyboardInterrupt if sig == signal.SIGINT else Terminated):
            train(TrainConfig(out=str(tmp_path / "b"), **cfg), progress=False)
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is on_term
    finally:
        signal.signal(signal.SIGINT, before_int)
        signal.signal(signal.SIGTERM, before_term)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 4
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["config.json", "last.pt"]  # no weights, no .tmp
    train(TrainConfig(out=str(tmp_path / "b"), **cfg), progress=False)
    train(TrainConfig(out=str(tmp_path / "a"), **cfg), progress=False)
    _assert_same_run(tmp_path / "a", tmp_path / "b")


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
def test_a_run_started_with_ctrl_c_ignored_leaves_it_ignored(tmp_path, monkeypatch):
    """A run under nohup (or a shell's background job) has SIGINT ignored: a Ctrl-C meant for the terminal must
    neither stop it nor be turned back on by it."""
    lr_at = train_module._lr_at

    def lr_at_signalling(c, step):
        if step == 3:
            signal.raise_signal(signal.SIGINT)
        return lr_at(c, step)

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        monkeypatch.setattr(train_module, "_lr_at", lr_at_signalling)
        train(TrainConfig(out=str(tmp_path / "b"), **_tiny(tmp_path)), progress=False)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 6


def test_a_gpu_runs_checkpoint_resumes_with_this_machines_optimizer_options(tmp_path, monkeypatch, capsys):
    """A CUDA run's Adam is fused (simulated here by the CPU's fused Adam). Resuming kept the saved run's options,
    so a CPU run moved to a GPU stayed unfused there (and a GPU run moved to a CPU ran fused), and a new
    --weight-decay was ignored silently. Now the moments and step counts come from the checkpoint and the options
    from this run; a changed flag is noted."""
    cfg = _tiny(tmp_path)
    make = train_module._make_optimizer
    monkeypatch.setattr(train_module, "_make_optimizer",
                        lambda c, model: torch.optim.Adam(model.parameters(), lr=c.lr, fused=True))  # fmt: skip
    train(TrainConfig(out=str(tmp_path / "a"), **cfg), progress=False, until_step=3)
    monkeypatch.setattr(train_module, "_make_optimizer", make)
    saved = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["optimizer"]
    assert saved["param_groups"][0]["fused"] is True and saved["state"][0]["step"].dtype == torch.float32
    capsys.readouterr()
    train(TrainConfig(out=str(tmp_path / "a"), **dict(cfg, weight_decay=1e-3)), progress=False)
    assert "note: resuming with --weight-decay 0.001 (was 0.0)" in capsys.readouterr().err
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    assert state["step"] == 6 and not group["fused"] and group["weight_decay"] == 1e-3
    assert all(torch.isfinite(w).all() for w in state["model"].values())


def test_a_cpu_runs_checkpoint_resumes_with_fused_adam(tmp_path, monkeypatch):
    """The other way: a checkpoint of a non-fused Adam (its step counts CPU scalars) resumed where Adam is fused (a
    GPU, simulated by the CPU's fused Adam): the step counts are moved beside the weights in float32, as fused Adam
    keeps them (on a GPU a CPU step count beside CUDA weights is not what the fused kernel takes; the CPU cannot
    show that failure, so this checks where they end up and that the run goes on)."""
    cfg = _tiny(tmp_path)
    train(TrainConfig(out=str(tmp_path / "a"), **cfg), progress=False, until_step=3)
    assert not torch.load(tmp_path / "a" / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]["fused"]
    made = []

    def fused(c, model):
        made.append(torch.optim.Adam(model.parameters(), lr=c.lr, fused=True))
        return made[-1]

    monkeypatch.setattr(train_module, "_make_optimizer", fused)
    train(TrainConfig(out=str(tmp_path / "a"), **cfg), progress=False)
    opt = made[-1]
    assert opt.param_groups[0]["fused"]
    for prm in opt.param_groups[0]["params"]:
        step = opt.state[prm]["step"]
        assert step.device == prm.device and step.dtype == torch.float32 and int(step) == 6


def test_ema_is_the_moving_average_of_the_weights(tmp_path):
    data = _images(tmp_path / "data")
    start = VDSR(depth=4, channels=8)
    vdsr_fast.save(start, tmp_path / "start.safetensors")
    cfg = TrainConfig(data=[str(data)], scales=[2], downsizes=[1.0], patch=12, batch=2, depth=4, channels=8, eval_set="",
                      warmup=1, lr=1e-2, threads=1, device="cpu", steps=5, ema=0.5, init=str(tmp_path / "start.safetensors"),
                      out=str(tmp_path / "a"))  # fmt: skip
    train(cfg, progress=False, until_step=1)
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    d = min(0.5, 2 / 11)  # after one step the decay is still ramping up: (1 + 1) / (10 + 1)
    w0, w1 = start.layers[0].weight.detach(), state["model"]["layers.0.weight"]
    assert not torch.equal(w0, w1)
    torch.testing.assert_close(state["ema"]["layers.0.weight"], d * w0 + (1 - d) * w1, rtol=0, atol=1e-7)


def test_train_init_starts_from_given_weights(tmp_path):
    data = _images(tmp_path / "data")
    common = dict(data=[str(data)], scales=[2], downsizes=[1.0], patch=12, batch=2, depth=4, channels=8,
                  eval_set="", warmup=1, lr=1e-3, threads=1, device="cpu", steps=3)
    torch.manual_seed(5)
    start = VDSR(depth=4, channels=8)
    with torch.no_grad():
        for conv in start.layers:
            conv.bias.uniform_(-0.1, 0.1)
    vdsr_fast.save(start, tmp_path / "start.safetensors")
    cfg = TrainConfig(out=str(tmp_path / "a"), init=str(tmp_path / "start.safetensors"), **common)
    zero = vdsr_fast.load(train(cfg, progress=False, until_step=0))  # no step taken: the given weights
    for ca, cb in zip(start.layers, zero.layers):
        assert torch.equal(ca.weight, cb.weight) and torch.equal(ca.bias, cb.bias)
    stepped = vdsr_fast.load(train(cfg, progress=False))  # resumes its own checkpoint, then trains
    assert not torch.equal(stepped.layers[0].weight, start.layers[0].weight)
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=True)["config"]["init"].endswith("start.safetensors")
    with pytest.raises(ValueError, match="depth-4 8-channel"):
        train(TrainConfig(out=str(tmp_path / "b"), init=cfg.init, **dict(common, channels=16)), progress=False)


def test_y_cache_round_trip(tmp_path):
    """The cache holds Y within half an 8-bit level; it is written under another name and renamed (an interrupted
    write left a truncated cache that later runs failed on); hidden files (macOS's ._x.png) are no training images."""
    folder = [str(_images(tmp_path / "d", 2))]
    (tmp_path / "d" / "._0.png").write_bytes(b"AppleDouble")
    exact = load_train_y(folder, progress=False)
    assert len(exact) == 2
    cache = str(tmp_path / "c" / "y.npz")
    first = load_train_y(folder, cache, progress=False)  # writes the cache
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["y.npz"]
    second = load_train_y(["/nonexistent"], cache, progress=False)  # reads it, folders unused
    for e, a, b in zip(exact, first, second):
        assert torch.equal(a, b)
        assert (a - e).abs().max() <= 0.5 / 255 + 1e-12


def test_a_diverging_run_stops_with_a_clear_error(tmp_path):
    """The loss is checked at each report and checkpoint (not every step, which would synchronise the
    GPU): a diverging run raises before it saves a NaN checkpoint."""
    data = _images(tmp_path / "data")
    cfg = TrainConfig(data=[str(data)], scales=[2], downsizes=[1.0], patch=12, batch=2, depth=4, channels=8,
                      eval_set="", ckpt_every=3, warmup=1, lr=1e30, clip=0.0, threads=1, device="cpu",
                      out=str(tmp_path / "run"), steps=6)  # fmt: skip
    with pytest.raises(FloatingPointError, match="lower --lr or --clip"):
        train(cfg, progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("flags, native", [("fpu avx2 fma", False), ("avx2 avx512f avx512_bf16", True),
                                           ("avx2 amx_bf16 amx_tile", True), ("avx512bw avx512_vnni", False)])
def test_bf16_default_follows_the_cpus_bf16_instructions(tmp_path, flags, native):
    """bf16 autocast is on by default only where the CPU has bf16 instructions (emulated it is ~7x slower)."""
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: some cpu\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_native_bf16(str(info)) is native
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_fit_minutes_sets_the_steps_and_equals_a_run_given_them(tmp_path):
    """--fit-minutes times the warm-up, sets --steps to what fits, and is then the run started with those steps,
    also when it is stopped just after the fit (between checkpoints) and resumed: the checkpoint keeps the steps."""
    import torch._dynamo  # noqa: F401 - the first Adam of a process imports it (3 s on this 2-core machine): not in
    # the fit's 2.4 s, which a test run alone then spent on it (the test passed only where an earlier one had)

    data = _images(tmp_path / "data")
    common = dict(data=[str(data)], scales=[2], downsizes=[1.0], patch=12, batch=2, depth=3, channels=4, eval_set="",
                  warmup=100, lr=1e-3, threads=1, device="cpu", ckpt_every=100)  # fmt: skip
    t = time.perf_counter()
    train(TrainConfig(out=str(tmp_path / "a"), steps=10**9, **common), progress=False, fit_minutes=0.04, until_step=103)
    assert time.perf_counter() - t < 2 * 0.04 * 60  # fits its minutes (loosely: a shared CI machine's speed varies)
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert state["step"] == min(103, state["config"]["steps"])
    fitted = train(TrainConfig(out=str(tmp_path / "a"), steps=10**9, **common), progress=False, fit_minutes=0.04,
                   max_minutes=0.5)  # a resume that forgot the fitted steps would stop here, short of them
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    fit = next(h["fit"] for h in state["history"] if "fit" in h)
    steps = fit["steps"]
    assert state["step"] == steps == state["config"]["steps"] > 100 and fit["steps_per_s"] > 0
    given = train(TrainConfig(out=str(tmp_path / "b"), steps=steps, **common), progress=False)
    for ca, cb in zip(vdsr_fast.load(fitted).layers, vdsr_fast.load(given).layers):
        assert torch.equal(ca.weight, cb.weight)
    with pytest.raises(ValueError, match="--warmup >= 100"):
        train(TrainConfig(out=str(tmp_path / "c"), steps=500, **dict(common, warmup=50)), progress=False, fit_minutes=1)
    assert not (tmp_path / "c").exists()  # refused before anything is prepared or written


def test_fit_minutes_on_a_run_that_was_not_fitted_says_so_and_takes_steps(tmp_path, capsys):
    """--fit-minutes on resuming a run begun without it: the run goes on with --steps, and says that the fit is not
    done (a review found the checkpoint's steps taken in silence: STEPS= and FIT_MINUTES= on a warm machine with an
    old runs/gpu did nothing)."""
    cfg = TrainConfig(out=str(tmp_path / "a"), **_tiny(tmp_path, warmup=100, steps=3))
    train(cfg, progress=False)
    capsys.readouterr()
    train(dataclasses.replace(cfg, steps=5), progress=False, fit_minutes=0.04)
    err = capsys.readouterr().err
    assert "--fit-minutes fits the schedule of a new run; this one's was not fitted, so it goes on with --steps 5" in err
    assert "resuming a run planned for 3 steps with --steps 5" in err, err
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=True)["step"] == 5


def test_a_schedule_whose_history_a_checkpoint_cannot_hold_is_refused_before_it_trains(tmp_path):
    """The loader refuses a pickle of more than _MAX_OPS opcodes (SECURITY.md) and the history is in the checkpoint's
    pickle (~14 opcodes a record, one per 50 steps and per evaluation): a review found a run with --eval-every 1
    could write a last.pt that it would refuse to resume after 20,000 steps. Refused before anything is written."""
    cfg = TrainConfig(out=str(tmp_path / "a"), **_tiny(tmp_path, steps=20_000, eval_every=1))
    with pytest.raises(ValueError, match="--steps 20000 with --eval-every 1: the run's history"):
        train(cfg, progress=False)
    assert not (tmp_path / "a").exists()
    train_module._check_history_fits(TrainConfig(steps=600_000))  # the defaults' eval-every: 600,000 steps fit


def test_learning_rate_schedules():
    """Adam: a linear warm-up to --lr over --warmup steps (the first step already at lr / warmup), then a cosine
    from --lr down to --min-lr, reached at --steps. SGD (the paper's): --lr divided by 10 every --lr-step steps
    (0: every quarter of --steps)."""
    lr_at = train_module._lr_at
    adam = TrainConfig(steps=110, warmup=10, lr=1e-3, min_lr=1e-5)
    assert [lr_at(adam, s) for s in (0, 4, 9, 10)] == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3])
    assert [lr_at(adam, s) for s in (60, 110)] == pytest.approx([1e-5 + 0.5 * (1e-3 - 1e-5), 1e-5])
    assert 1e-5 < lr_at(adam, 109) < 1.1e-5
    sgd = TrainConfig(optimizer="sgd", steps=100, lr=0.1)
    assert [lr_at(sgd, s) for s in (0, 24, 25, 50, 99)] == pytest.approx([0.1, 0.1, 0.01, 1e-3, 1e-4])
    assert [lr_at(dataclasses.replace(sgd, lr_step=10), s) for s in (9, 10, 20)] == pytest.approx([0.1, 0.01, 1e-3])


def test_optimizers_follow_the_recipe():
    """SGD is the paper's: momentum 0.9 and weight decay 1e-4 unless --weight-decay says otherwise; Adam takes
    --weight-decay as given."""
    make, model = train_module._make_optimizer, VDSR(3, 4)
    sgd = make(TrainConfig(optimizer="sgd"), model)
    assert isinstance(sgd, torch.optim.SGD) and (sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.9, 1e-4)
    assert make(TrainConfig(optimizer="sgd", weight_decay=1e-3), model).defaults["weight_decay"] == 1e-3
    adam = make(TrainConfig(weight_decay=1e-3), model)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["weight_decay"] == 1e-3


@pytest.mark.parametrize("optimizer, clip", [("adam", 0.5), ("adam", 0.0), ("sgd", 0.5)])
def test_gradients_are_clipped_every_step(tmp_path, monkeypatch, optimizer, clip):
    """Adam: the gradients' norm is clipped to --clip at every step (--clip 0: not clipped); SGD: each gradient
    value to [-clip/lr, clip/lr] at that step's lr (the paper's adjustable clipping)."""
    calls = []
    for name in ("clip_grad_norm_", "clip_grad_value_"):
        real = getattr(torch.nn.utils, name)
        monkeypatch.setattr(torch.nn.utils, name, lambda params, limit, *a, _name=name, _real=real, **k:
                            calls.append((_name, limit)) or _real(params, limit, *a, **k))  # fmt: skip
    cfg = TrainConfig(out=str(tmp_path / "a"), **_tiny(tmp_path, optimizer=optimizer, clip=clip, steps=3))
    train(cfg, progress=False)
    if optimizer == "sgd":
        assert calls == [("clip_grad_value_", clip / train_module._lr_at(cfg, s)) for s in range(3)]
    else:
        assert calls == [("clip_grad_norm_", clip)] * (3 if clip else 0)


def test_l1_loss_is_the_mean_absolute_error(tmp_path):
    """--loss l1 trains on the mean absolute error: on the same first batch and weights its reported loss exceeds
    the mean squared error's (the errors are below 1) and is at most its square root (Jensen)."""
    losses = {}
    for loss in ("mse", "l1"):
        train(TrainConfig(out=str(tmp_path / loss), **_tiny(tmp_path, loss=loss, steps=1)), progress=False)
        losses[loss] = torch.load(tmp_path / loss / "last.pt", weights_only=True)["history"][-1]["loss"]
    assert losses["mse"] < losses["l1"] <= math.sqrt(losses["mse"]) * (1 + 1e-6), losses


def test_the_moving_average_is_what_is_evaluated(tmp_path, monkeypatch):
    """With --ema the periodic Set5 evaluation scores the average of the weights (what the run saves), not the
    weights themselves."""
    seen = []
    monkeypatch.setattr(train_module, "_eval_psnr", lambda model, cfg, device: seen.append(
        {k: v.clone() for k, v in model.state_dict().items()}))  # fmt: skip
    train(TrainConfig(out=str(tmp_path / "a"), **_tiny(tmp_path, ema=0.9, steps=2, eval_every=1)), progress=False)
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert len(seen) == 2 and all(torch.equal(t, state["ema"][k]) for k, t in seen[-1].items())
    assert not torch.equal(seen[-1]["layers.0.weight"], state["model"]["layers.0.weight"])


def test_a_checkpoint_that_fails_to_write_leaves_the_previous_one(tmp_path, monkeypatch):
    """last.pt is written to a temporary file, synced to the disk and renamed over the previous one: a write that
    fails (a full disk; a machine going down) leaves the previous checkpoint whole, to resume from."""
    cfg = TrainConfig(out=str(tmp_path / "a"), **_tiny(tmp_path, ckpt_every=2))
    events, fsync, replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda src, dst: events.append(f"replace {Path(dst).name}") or replace(src, dst))
    train(cfg, progress=False, until_step=2)
    assert events[:2] == ["fsync", "replace last.pt"]
    good = (tmp_path / "a" / "last.pt").read_bytes()

    def full_disk(obj, f):
        f.write(b"part of a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left on device") as err:
        train(cfg, progress=False)  # resumes at step 2; its checkpoint of step 4 fails
    assert (tmp_path / "a" / "last.pt").read_bytes() == good
    # the error names the file, and the part written is gone (it was left as last.tmp, filling the full disk more)
    assert f"cannot write the checkpoint {tmp_path / 'a' / 'last.pt'}" in str(err.value)
    assert not [p.name for p in (tmp_path / "a").iterdir() if p.suffix == ".tmp"]


def test_a_run_stops_at_its_last_step_or_its_minutes(tmp_path):
    """--until-step past --steps stops at --steps (where the schedule ends); --max-minutes 0 stops before the first
    step. Either saves a checkpoint of the step reached."""
    cfg = _tiny(tmp_path, steps=2)
    train(TrainConfig(out=str(tmp_path / "a"), **cfg), progress=False, until_step=5)
    train(TrainConfig(out=str(tmp_path / "b"), **cfg), progress=False, max_minutes=0)
    assert [torch.load(tmp_path / r / "last.pt", weights_only=True)["step"] for r in "ab"] == [2, 0]


def test_a_run_needs_neither_its_images_with_a_cache_nor_its_init_to_resume(tmp_path):
    """A run whose --cache holds the Y planes runs without the image folders (a GPU machine gets the .npz alone),
    and --init is read when a run begins, not when it is resumed (the file may be gone by then)."""
    cache = tmp_path / "y.npz"
    load_train_y([str(_images(tmp_path / "data"))], str(cache), progress=False)
    vdsr_fast.save(VDSR(3, 8), tmp_path / "start.safetensors")
    cfg = TrainConfig(out=str(tmp_path / "a"), init=str(tmp_path / "start.safetensors"),
                      **_tiny(tmp_path, data=[str(tmp_path / "missing")], cache=str(cache), steps=3))  # fmt: skip
    train(cfg, progress=False, until_step=1)
    digest = hashlib.sha256((tmp_path / "start.safetensors").read_bytes()).hexdigest()
    (tmp_path / "start.safetensors").unlink()
    final = train(cfg, progress=False)
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=True)["step"] == 3
    # which weights it began from travels in the checkpoint to the final file (benchmarks/ship_weights.py reads it)
    assert vdsr_fast.load(final).metadata["init_sha256"] == digest
    no_init = train(dataclasses.replace(cfg, init="", out=str(tmp_path / "b")), progress=False)
    assert vdsr_fast.load(no_init).metadata["init_sha256"] == "null"


def test_fit_minutes_with_an_early_stop_fits_then_saves_the_step(tmp_path):
    """--fit-minutes with --until-step 100 or less trains to step 100, where the schedule is fitted, then saves that
    step and stops (found by a review: it stopped just before the fit, so 100 steps were trained and thrown away,
    and the weights of the unfitted schedule were written)."""
    import torch._dynamo  # noqa: F401 - as in test_fit_minutes_sets_the_steps_and_equals_a_run_given_them

    common = dict(data=[str(_images(tmp_path / "data"))], scales=[2], downsizes=[1.0], patch=12, batch=2, depth=3,
                  channels=4, eval_set="", warmup=100, lr=1e-3, threads=1, device="cpu", ckpt_every=100)  # fmt: skip
    train(TrainConfig(out=str(tmp_path / "a"), steps=10**9, **common), progress=False, fit_minutes=0.04, until_step=20)
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    fit = next(h["fit"] for h in state["history"] if "fit" in h)
    assert state["step"] == 100 and state["config"]["steps"] == fit["steps"] > 100


def test_ckpt_every_does_not_change_the_run(tmp_path):
    """How often a run saves does not change what it computes (found by a review: the patch draws were grouped by
    gcd(--ckpt-every, 100), so --ckpt-every 10 and 4 trained different weights from one seed)."""
    for run, every in (("a", 10), ("b", 4), ("c", 3)):
        train(TrainConfig(out=str(tmp_path / run), **_tiny(tmp_path, steps=12, ckpt_every=every)), progress=False)
    _assert_same_run(tmp_path / "a", tmp_path / "b")
    _assert_same_run(tmp_path / "a", tmp_path / "c")


def test_a_resumed_run_reports_the_losses_of_the_uninterrupted_one(tmp_path):
    """The losses since the last report travel in the checkpoint: a run stopped between reports and resumed
    reports the same mean loss (it averaged only the steps after the resume)."""
    cfg = _tiny(tmp_path, steps=6, ckpt_every=500)
    train(TrainConfig(out=str(tmp_path / "a"), **cfg), progress=False)
    train(TrainConfig(out=str(tmp_path / "b"), **cfg), progress=False, until_step=4)
    train(TrainConfig(out=str(tmp_path / "b"), **cfg), progress=False)
    a, b = ([h["loss"] for h in torch.load(tmp_path / r / "last.pt", weights_only=True)["history"]] for r in "ab")
    assert a == b and len(a) == 1


def test_resuming_with_or_without_a_cache_is_noted(tmp_path, capsys):
    """The cache's planes are rounded to 8 bits and the folders' are not: starting or stopping to use one on resume
    changes the data, which a note says (it was resumed without a word)."""
    cfg = _tiny(tmp_path, steps=3)
    train(TrainConfig(out=str(tmp_path / "a"), **cfg), progress=False, until_step=1)
    capsys.readouterr()
    train(TrainConfig(out=str(tmp_path / "a"), **dict(cfg, cache=str(tmp_path / "y.npz"))), progress=False, until_step=2)
    assert "note: resuming with --cache" in capsys.readouterr().err
    train(TrainConfig(out=str(tmp_path / "a"), **dict(cfg, cache=str(tmp_path / "y.npz"))), progress=False)
    assert "note: resuming" not in capsys.readouterr().err


@pytest.mark.parametrize("contents", ["none", "small"])
def test_an_eval_set_that_cannot_be_scored_is_refused_before_training(tmp_path, capsys, contents):
    """An --eval-set folder without images, or with images too small to score at a trained scale, is refused before
    anything is written (found by a review: it failed at the first evaluation, after hours of training and with
    the steps since the last checkpoint lost; every resume failed there again)."""
    evals = tmp_path / "evals"
    evals.mkdir()
    if contents == "small":
        write_image(evals / "tiny.png", np.zeros((9, 9, 3), np.uint8))
    code, err = _cli(tmp_path, capsys, "--eval-set", str(evals), "--scales", "2", "3")
    assert code == 2 and err.startswith(f"vdsr-fast train: error: --eval-set {evals}: ") and len(err.splitlines()) == 1, err
    assert ("no" in err and "image" in err) if contents == "none" else "too small to score" in err
    assert not (tmp_path / "run").exists()


def test_fit_minutes_is_refused_for_sgd(tmp_path):
    """--fit-minutes measures Adam's warm-up; an SGD run's lr depends on --steps from the first step: refused
    before anything is prepared or written."""
    with pytest.raises(ValueError, match="--fit-minutes needs a new adam run"):
        train(TrainConfig(out=str(tmp_path / "a"), **_tiny(tmp_path, optimizer="sgd", warmup=100)), progress=False,
              fit_minutes=1)  # fmt: skip
    assert not (tmp_path / "a").exists()


def _cli(tmp_path, capsys, *argv):
    """``vdsr-fast train`` on the tiny set, one step, with ``argv`` last (overriding): (exit status, stderr)."""
    from vdsr_fast.cli import main

    data = tmp_path / "data" if (tmp_path / "data").is_dir() else _images(tmp_path / "data", 1)
    base = ["--data", str(data), "--eval-set", "", "--out", str(tmp_path / "run"), "--steps", "1", "--scales", "2",
            "--downsizes", "1.0", "--patch", "12", "--batch", "2", "--depth", "3", "--channels", "4", "--warmup", "1",
            "--threads", "1", "--device", "cpu"]  # fmt: skip
    code = main(["train", *base, *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--data", "MISSING"], "--data MISSING: no such folder"),
    (["--eval-set", "MISSING"], "--eval-set MISSING: no such folder (--eval-set '' trains without evaluating)"),
    (["--init", "MISSING"], "--init MISSING: no such file"),
    (["--init", "BAD"], "BAD: unrecognised file format"),
    (["--out", "FILE"], "--out FILE is a file; it names the run's folder"),
    (["--scales", "0"], "--scales must be some of 2, 3, 4 (the scales VDSR serves), got [0]"),
    (["--scales", "2", "5"], "--scales must be some of 2, 3, 4"),
    (["--downsizes", "0"], "--downsizes must be factors in (0, 1]"),
    (["--downsizes", "1.5"], "--downsizes must be factors in (0, 1]"),
    (["--warmup", "-1"], "--warmup must be at least 0, got -1"),
    (["--eval-every", "0"], "--eval-every must be at least 1, got 0"),
    (["--depth", "1"], "--depth must be at least 2, got 1"),
    (["--patch", "0"], "--patch must be at least 1, got 0"),
    (["--batch", "0"], "--batch must be at least 1, got 0"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--ckpt-every", "0"], "--ckpt-every must be at least 1, got 0"),
    (["--device", "meta"], "--device meta: a meta device holds no data"),
    # found by a review: a traceback (sgd's clip / 0), gradient ascent, clipping silently off, untrained weights
    (["--optimizer", "sgd", "--lr", "0"], "--lr must be a number above 0, got 0.0"),
    (["--lr", "nan"], "--lr must be a number above 0, got nan"),
    (["--min-lr", "-5"], "--min-lr must be a number from 0"),
    # found by a review: the learning rate grew tenfold every step, or climbed to the cosine's "floor"
    (["--optimizer", "sgd", "--lr-step", "-2"], "--lr-step must be at least 0, got -2"),
    (["--lr", "0.001", "--min-lr", "0.01"], "--min-lr 0.01 is above --lr 0.001: the cosine decay would climb to it"),
    (["--clip", "nan"], "--clip must be a number from 0 (0: off), got nan"),
    (["--optimizer", "sgd", "--clip", "0"], "--clip must be a number above 0 (sgd clips gradients to clip / lr)"),
    (["--ema", "1"], "--ema must be from 0 (off) to below 1, got 1.0"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--cache", "ycache"], "--cache must name a .npz file, got 'ycache'"),
    (["--cache", "EMPTY.npz"], "--cache EMPTY.npz: not a cache of training planes"),
    (["--until-step", "-3"], "--until-step must be a number from 0, got -3"),
    (["--max-minutes", "-1"], "--max-minutes must be a number from 0, got -1.0"),
    (["--max-minutes", "nan"], "--max-minutes must be a number from 0, got nan"),
    (["--fit-minutes", "0"], "--fit-minutes must be a number above 0, got 0.0"),
])  # fmt: skip
def test_train_refusals_are_one_line_errors_before_anything_is_written(tmp_path, capsys, argv, message):
    """Each was a traceback (exit 1), a silent skip (--eval-set) or a run of random weights (--steps 0)."""
    (tmp_path / "FILE").write_bytes(b"")
    (tmp_path / "BAD").write_bytes(b"garbage")
    (tmp_path / "EMPTY.npz").write_bytes(b"")
    names = {"MISSING": str(tmp_path / "missing"), "FILE": str(tmp_path / "FILE"), "EMPTY.npz": str(tmp_path / "EMPTY.npz"),
             "BAD": str(tmp_path / "BAD")}
    code, err = _cli(tmp_path, capsys, *[names.get(a, a) for a in argv])
    for name, path in names.items():
        message = message.replace(name, path)
    assert code == 2 and err.startswith(f"vdsr-fast train: error: {message}") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_train_on_cuda_without_cuda_is_a_one_line_error(tmp_path, capsys):
    code, err = _cli(tmp_path, capsys, "--device", "cuda")
    assert code == 2 and err == "vdsr-fast train: error: --device cuda: CUDA is not available on this machine\n"


def test_train_loss_and_optimizer_are_choices(tmp_path, capsys):
    """--loss xyz trained with L1, silently: now argparse's error (exit 2), and TrainConfig refuses it too."""
    with pytest.raises(SystemExit) as exit_:
        _cli(tmp_path, capsys, "--loss", "xyz")
    assert exit_.value.code == 2 and "argument --loss: invalid choice: 'xyz'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--loss must be one of mse, l1, got 'xyz'"):
        TrainConfig(loss="xyz")
    with pytest.raises(ValueError, match="--optimizer must be one of adam, sgd"):
        TrainConfig(optimizer="rmsprop")


def test_train_api_refuses_what_the_command_refuses(tmp_path):
    """train() checks its config again (fields set after construction) and the files, before writing anything."""
    cfg = TrainConfig(data=[str(_images(tmp_path / "data", 1))], eval_set="", out=str(tmp_path / "run"), steps=1,
                      scales=[2], downsizes=[1.0], patch=12, batch=2, depth=3, channels=4, threads=1, device="cpu")  # fmt: skip
    with pytest.raises(ValueError, match="--steps must be at least 1"):
        TrainConfig(steps=0)
    cfg.steps = 0
    with pytest.raises(ValueError, match="--steps must be at least 1"):
        train(cfg, progress=False)
    with pytest.raises(FileNotFoundError, match="--eval-set"):
        train(dataclasses.replace(cfg, steps=1, eval_set=str(tmp_path / "missing")), progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_refuses_an_unreadable_or_mismatched_checkpoint_in_one_line(tmp_path, capsys):
    """A truncated or empty last.pt was a zip/EOF traceback, one of another depth a state_dict traceback, one of
    another optimizer a KeyError; a checkpoint with pickled code is refused without running it (weights_only), one
    with dict keys crafted to share a hash before it is unpickled."""
    run, marker = tmp_path / "run", tmp_path / "code-ran"
    assert _cli(tmp_path, capsys)[0] == 0
    ckpt = run / "last.pt"
    good = ckpt.read_bytes()
    code, err = _cli(tmp_path, capsys, "--depth", "4")
    assert code == 2 and err == (f"vdsr-fast train: error: {ckpt}: a checkpoint of a depth-3 4-channel VDSR, but the run "
                                 f"trains depth 4 with 4 channels; resume it with --depth 3 --channels 4, or start "
                                 f"another run (--no-resume overwrites it, or another --out)\n")  # fmt: skip
    code, err = _cli(tmp_path, capsys, "--optimizer", "sgd")
    assert code == 2 and "a checkpoint of an --optimizer adam run" in err and len(err.splitlines()) == 1, err

    class Code:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    collide = {k * (2**61 - 1): 0 for k in range(1, 3001)}  # keys sharing one hash: walked and refused (SECURITY.md)
    legacy = pickle.dumps(collide, protocol=2)  # not a zip: torch.load read it unwalked (a review: 2.6 s)
    appended = io.BytesIO()  # a legacy file with a zip after it: Python's zip reader finds the zip (walked), torch.load
    torch.save(torch.load(ckpt, weights_only=True), appended, _use_new_zipfile_serialization=False)  # read the legacy
    with zipfile.ZipFile(appended, "a") as dst, zipfile.ZipFile(io.BytesIO(good)) as src:  # part (resumed, unwalked)
        for info in src.infolist():
            dst.writestr(info, src.read(info))
    appended = appended.getvalue()
    for bad in (good[:300], good[: len(good) // 2], b"", {"model": Code()}, {"weights": torch.zeros(1)}, collide, legacy,
                appended):
        if isinstance(bad, bytes):
            ckpt.write_bytes(bad)
        else:
            torch.save(bad, ckpt)
        code, err = _cli(tmp_path, capsys)
        assert code == 2 and err.startswith(f"vdsr-fast train: error: {ckpt}: not a") and "--no-resume" in err, err
        assert len(err.splitlines()) == 1, err
        assert bad is not collide or "more than 2048 dict keys" in err, err
    assert not marker.exists()  # a checkpoint is data: no pickled code runs
    ckpt.write_bytes(good)
    code, err = _cli(tmp_path, capsys, "--steps", "2", "--batch", "3")  # another recipe: resumed, and said so
    assert code == 0 and "note: resuming with --batch 3 (was 2): the run goes on with the new values" in err, err


def test_progress_without_a_terminal_is_plain_lines_with_loss_speed_and_psnr(tmp_path, capsys):
    """In a log file or CI the bars' carriage-return redraws (up to 10 a second) made one endless line; without a
    terminal a line is printed per report (at most one in LOG_EVERY_S seconds, and at every evaluation)."""
    evals = tmp_path / "B100"
    evals.mkdir()
    shutil.copy(_images(tmp_path / "data", 1) / "im0.png", evals / "im0.png")
    code, err = _cli(tmp_path, capsys, "--eval-set", str(evals), "--steps", "2", "--scales", "2", "3")
    assert code == 0 and "\r" not in err, err
    lines = err.strip().splitlines()  # data preparation is said too (minutes on a CPU: it was silent); the PSNR is
    # labelled with the evaluation set's name (it said set5 of any set), the speed with 3 digits (a slow CPU's 0.4 was 0)
    assert len(lines) == 3 and lines[0].startswith("train: preparing the training pairs from ") and "(x2, x3, " in lines[0]
    assert re.fullmatch(r"train: \d+ pairs ready in \d+ s", lines[1]), err
    speed = re.fullmatch(r"train: step 2/2 loss \S+ lr \S+ (\S+) patches/s B100 x2 \d+\.\d\d x3 \d+\.\d\d", lines[2])
    assert speed and float(speed.group(1)) > 0, err  # 3 significant digits: a slow CPU's 0.4 is not 0
    meta = vdsr_fast.load(tmp_path / "run" / "vdsr_x234.safetensors").metadata  # which set was scored, bf16 or not
    assert meta["eval_set"] == "B100" and json.loads(meta["recipe"])["bf16"] in (True, False)
    # every evaluation is reported and recorded, also off the 50-step reports (those at 3 and 6 were not)
    shutil.rmtree(tmp_path / "run")
    code, err = _cli(tmp_path, capsys, "--eval-set", str(evals), "--steps", "7", "--eval-every", "3", "--scales", "2")
    steps = [int(m) for m in re.findall(r"train: step (\d+)/7 .* B100 x2 \d+\.\d\d\n", err)]
    history = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["history"]
    assert code == 0 and steps == [3, 6, 7] == [h["step"] for h in history if "set5" in h], err


def test_every_train_option_says_what_it_is(capsys):
    """`vdsr-fast train --help` had no help text on the 27 options of TrainConfig (nor, so, their defaults)."""
    from vdsr_fast import train

    with pytest.raises(SystemExit):
        train.main(["--help"])
    out = capsys.readouterr().out
    assert set(train.HELP) == set(dataclasses.asdict(train.TrainConfig())), "an option without help"
    assert "(default: 40000)" in out and "the paper's recipe" in out

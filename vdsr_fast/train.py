"""Train VDSR with this package's own data pipeline (``vdsr-fast train``).

Data: the images of one or more folders (the paper's "291" set: T91 + BSD200) -> Y (MATLAB
``rgb2ycbcr``) -> optional downsizing (x1.0, x0.7, x0.5, as the paper's data generation) -> for every
scale in ``--scales``: crop to a multiple of s, MATLAB-bicubic down by s and up by s. Batches are random
crops (with random flips and 90-degree rotations) drawn from all scales at once, so one model learns
x2, x3 and x4 together.

Optimisers: Adam with cosine decay (default) or the paper's SGD (momentum 0.9, weight decay 1e-4, step
decay, adjustable gradient clipping to [-theta/lr, theta/lr]). bf16 autocast + channels_last by default on
CUDA and on CPUs with native bf16 instructions (AVX512-BF16 or AMX: 2.2x fp32's speed on a 2-core AVX512-BF16
EPYC; on an AVX2-only CPU bf16 is ~7x slower than fp32); ``--bf16`` / ``--no-bf16`` force either. Checkpoints hold model, optimizer, step and RNG state, load with
``weights_only=True`` and resume on any machine; a Set5 evaluation runs every ``--eval-every`` steps.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import pickle
import signal
import sys
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .api import SCALES
from .engine import device_from_flag
from .evaluate import check_set, evaluate, load_y
from .images import _atomic, folder_files
from .imaging import imresize
from .reference import VDSR, channels_last
from .torch_pickle import _MAX_OPS, torch_load_walked
from .weights import load, save

__all__ = ["TrainConfig", "load_train_y", "build_pairs", "train", "main"]

LOSSES, OPTIMIZERS = ("mse", "l1"), ("adam", "sgd")


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=lambda: ["../shared/data/train/T91", "../shared/data/train/BSD200"])
    out: str = "runs/vdsr"
    cache: str = ""  # .npz of the training Y planes (see load_train_y): read if present, else written
    scales: list[int] = field(default_factory=lambda: [2, 3, 4])
    downsizes: list[float] = field(default_factory=lambda: [1.0, 0.7, 0.5])
    patch: int = 64
    batch: int = 32
    steps: int = 40000
    optimizer: str = "adam"  # "adam" (cosine decay) or "sgd" (the paper's recipe)
    lr: float = 2e-4
    min_lr: float = 1e-6
    warmup: int = 500
    weight_decay: float = 0.0
    clip: float = 1.0  # adam: max gradient norm; sgd: theta of the adjustable clipping
    lr_step: int = 0  # sgd: divide lr by 10 every lr_step steps (0: steps // 4)
    loss: str = "mse"
    ema: float = 0.0  # > 0: keep an exponential moving average of the weights (e.g. 0.999), evaluated and saved
    depth: int = 20
    channels: int = 64
    bf16: bool | None = None  # None: on CUDA, and on a CPU with native bf16 (cpu_has_native_bf16)
    seed: int = 0
    init: str = ""  # weights to start from (any file vdsr_fast.load reads) when not resuming; "" = random
    eval_set: str = "../shared/data/eval/Set5"
    eval_every: int = 2000
    ckpt_every: int = 500
    device: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse values the run cannot use (ValueError, naming the command line's flag); :func:`train` checks again,
        and checks the files and the device."""
        bad = [
            (not self.scales or any(s not in SCALES for s in self.scales),
             f"--scales must be some of {', '.join(map(str, SCALES))} (the scales VDSR serves), got {self.scales}"),
            (not self.downsizes or any(not 0 < d <= 1 for d in self.downsizes),
             f"--downsizes must be factors in (0, 1] (the training images shrunk first), got {self.downsizes}"),
            (self.loss not in LOSSES, f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"),
            (self.optimizer not in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (not (math.isfinite(self.lr) and self.lr > 0), f"--lr must be a number above 0, got {self.lr}"),
            (not (math.isfinite(self.min_lr) and self.min_lr >= 0),
             f"--min-lr must be a number from 0 (the cosine's floor; below it the schedule ascends), got {self.min_lr}"),
            (self.optimizer == "adam" and self.min_lr > self.lr,
             f"--min-lr {self.min_lr} is above --lr {self.lr}: the cosine decay would climb to it"),
            (not (math.isfinite(self.weight_decay) and self.weight_decay >= 0), f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (not (math.isfinite(self.clip) and (self.clip > 0 if self.optimizer == "sgd" else self.clip >= 0)),
             f"--clip must be a number {'above 0 (sgd clips gradients to clip / lr)' if self.optimizer == 'sgd' else 'from 0 (0: off)'}, "
             f"got {self.clip}"),
            (not 0 <= self.ema < 1, f"--ema must be from 0 (off) to below 1, got {self.ema}"),
            (bool(self.cache) and not self.cache.endswith(".npz"), f"--cache must name a .npz file, got {self.cache!r}"),
        ] + [(getattr(self, name) < least, f"--{name.replace('_', '-')} must be at least {least}, got {getattr(self, name)}")
             for name, least in (("patch", 1), ("batch", 1), ("steps", 1), ("eval_every", 1), ("ckpt_every", 1),
                                 ("warmup", 0), ("lr_step", 0), ("depth", 2), ("channels", 1), ("threads", 0))]  # fmt: skip
        for refused, message in bad:
            if refused:
                raise ValueError(message)


# --------------------------------------------------------------------------------------------------
# data


def _list_images(folders: list[str]) -> list[Path]:
    files = []
    for folder in folders:
        p = Path(folder)
        if not p.is_dir():
            raise FileNotFoundError(f"training data folder not found: {p}")
        files += folder_files(p)
    if not files:
        raise FileNotFoundError(f"no training images in {folders}")
    return files


def _read_cache(cache: str, arrays: bool = True):
    """The cache's flat 8-bit Y and its planes' shapes (with ``arrays`` False: only checked that it holds them)."""
    try:
        with np.load(cache) as z:
            if not {"y", "shapes"} <= set(z.files):
                raise KeyError(f"it holds {sorted(z.files)}, not 'y' and 'shapes'")
            return (z["y"], z["shapes"]) if arrays else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"--cache {cache}: not a cache of training planes ({type(e).__name__}: {e}); delete it to "
                         "read --data again") from None


def load_train_y(folders: list[str], cache: str = "", progress: bool = True) -> list[torch.Tensor]:
    """The luminance (float64, [0, 1]) of every training image.

    With ``cache``, the planes are read from that ``.npz`` if it exists, else read from the folders and
    written there: Y rounded to 8 bits (within half a level of the exact Y) and compressed, so the 291
    set fits in ~30 MB and can travel to a GPU machine that lacks the image folders.
    """
    if cache and Path(cache).is_file():
        flat, shapes = _read_cache(cache)
        ys, at = [], 0
        for h, w in shapes.tolist():
            ys.append(torch.from_numpy(flat[at : at + h * w].reshape(h, w).astype(np.float64) / 255.0))
            at += h * w
        return ys
    files = _list_images(folders)
    if progress:
        from tqdm import tqdm

        files = tqdm(files, desc="reading images", unit="img", leave=False)
    ys = [load_y(path) for path in files]
    if cache:
        q = [np.floor(y.numpy() * 255.0 + 0.5).astype(np.uint8) for y in ys]
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        with _atomic(Path(cache)) as tmp, open(tmp, "wb") as f:  # an interrupted write leaves no truncated cache
            np.savez_compressed(f, y=np.concatenate([a.ravel() for a in q]), shapes=np.array([a.shape for a in q]))
        ys = [torch.from_numpy(a.astype(np.float64) / 255.0) for a in q]
    return ys


def build_pairs(ys: list[torch.Tensor], scales: list[int], downsizes: list[float], progress: bool = True,
                device: torch.device | str = "cpu"):
    """(bicubic input, HR target) float32 Y pairs, one per (image, downsize, scale), and their scale.

    The resizes run in float64 on ``device`` (on a GPU the 291 set takes seconds, not minutes).
    """
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    pair_scale: list[int] = []
    it = ys
    if progress:
        from tqdm import tqdm

        it = tqdm(ys, desc="preparing data", unit="img", leave=False)
    for y in it:
        y = y.to(device)
        for d in downsizes:
            hr_full = y if d == 1.0 else imresize(y, d)
            for s in scales:
                h, w = hr_full.shape
                hr = hr_full[: h - h % s, : w - w % s]
                if min(hr.shape) < 2 * s:
                    continue
                bic = imresize(imresize(hr, 1.0 / s), s)
                pairs.append((bic.float().contiguous(), hr.float().contiguous()))
                pair_scale.append(s)
    return pairs, pair_scale


class PatchSampler:
    """Random aligned crops of (input, target) pairs, with flips and rotations, from a torch Generator.

    Every image is flattened into one buffer on ``device`` and a batch is two gathers with one index
    tensor (image offset + crop position + one of the 8 flips/rotations), so sampling costs a few
    kernel launches on a GPU instead of a Python loop over patches. The random draws come from the
    CPU ``generator`` (its state is what a checkpoint saves), ``chunk`` batches at a time: one host-to-device
    copy per chunk (from pinned memory on a GPU, asynchronous), because a copy from pageable memory waits
    for every kernel queued before it and so would stop the host from running ahead of the GPU each step.
    A checkpoint saves :meth:`state` (the generator's state where the current chunk was drawn and how many of its
    batches were taken) and :meth:`resume` draws that chunk again, so a run stopped at any step resumes exactly.
    """

    def __init__(self, pairs, patch: int, generator: torch.Generator, device: torch.device | str = "cpu",
                 chunk: int = 1) -> None:  # fmt: skip
        pairs = [p for p in pairs if min(p[0].shape) >= patch]
        if not pairs:
            raise ValueError(f"no training image is at least {patch}x{patch}")
        self.patch, self.g, self.device = patch, generator, torch.device(device)
        self.h = torch.tensor([p[0].shape[0] for p in pairs])
        self.w = torch.tensor([p[0].shape[1] for p in pairs])
        self.offset = torch.cumsum(self.h * self.w, 0) - self.h * self.w
        self.x = torch.cat([p[0].reshape(-1) for p in pairs]).to(self.device)
        self.y = torch.cat([p[1].reshape(-1) for p in pairs]).to(self.device)
        # Pick images in proportion to their number of crop positions, so every pixel is equally likely.
        area = ((self.h - patch + 1) * (self.w - patch + 1)).double()
        self.prob = area / area.sum()
        # The 8 dihedral transforms as source positions inside a patch: aug bit 2 transposes, bits 0-1
        # rotate by 90 degrees that many times (torch.rot90), as the crops are augmented.
        grid = torch.arange(patch * patch).reshape(patch, patch)
        table = []
        for a in range(8):
            t = grid.t() if a & 4 else grid
            table.append(torch.rot90(t, a & 3) if a & 3 else t)
        table = torch.stack(table).to(self.device)
        self.src_row, self.src_col = table // patch, table % patch
        # The draws need h and w on the CPU (with the generator); the index math runs on the device.
        self.offset_dev, self.w_dev = self.offset.to(self.device), self.w.to(self.device)
        self.chunk = max(1, int(chunk))
        self._drawn: list[torch.Tensor] = []  # (4, n) device tensors of this chunk's remaining batches
        self._chunk_state, self._taken = self.g.get_state(), 0  # the generator where this chunk began; batches taken

    def state(self) -> tuple[torch.Tensor, int]:
        """``(generator state, batches taken)``: the state from which the current chunk was drawn and how many of its
        batches :meth:`batch` returned (between chunks: the generator's state now and 0)."""
        return (self._chunk_state.clone(), self._taken) if self._drawn else (self.g.get_state(), 0)

    def resume(self, taken: int, n: int) -> None:
        """After the generator was set to a :meth:`state`: draw that chunk of batches of ``n`` again and drop the
        ``taken`` first, so the next batch is the one the saved run would have drawn."""
        if taken > 0:
            self._draw(n)
            del self._drawn[:taken]
            self._taken = taken

    def _draw(self, n: int) -> None:
        """The next ``chunk`` batches' (image, flip/rotation, top, left) draws, copied to the device at once."""
        self._chunk_state, self._taken = self.g.get_state(), 0
        p, m = self.patch, n * self.chunk
        idx = torch.multinomial(self.prob, m, replacement=True, generator=self.g)
        aug = torch.randint(0, 8, (m,), generator=self.g)
        top = (torch.rand(m, generator=self.g, dtype=torch.float64) * (self.h[idx] - p + 1)).long()
        left = (torch.rand(m, generator=self.g, dtype=torch.float64) * (self.w[idx] - p + 1)).long()
        draws = torch.stack([idx, aug, top, left])  # 4 x m values, not m x p x p
        if self.device.type == "cuda":
            draws = draws.pin_memory().to(self.device, non_blocking=True)
        else:
            draws = draws.to(self.device)
        self._drawn = list(draws.split(n, dim=1))

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input, target)``, each ``(n, 1, patch, patch)`` float32 on the sampler's device."""
        if not self._drawn or self._drawn[0].shape[1] != n:
            self._draw(n)
        idx, aug, top, left = self._drawn.pop(0)
        self._taken += 1
        rows = top[:, None, None] + self.src_row[aug]
        cols = left[:, None, None] + self.src_col[aug]
        flat = self.offset_dev[idx][:, None, None] + rows * self.w_dev[idx][:, None, None] + cols
        return self.x[flat][:, None], self.y[flat][:, None]


# --------------------------------------------------------------------------------------------------
# training


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 natively (the ``avx512_bf16`` or ``amx_bf16`` flag of Linux's
    ``/proc/cpuinfo``; False where that file is missing). Without them oneDNN emulates bf16 convolutions,
    ~7x slower than fp32 on an AVX2 CPU; with AVX512-BF16 a training step ran 2.2x faster than fp32."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


FIT_PROBE_START, FIT_PROBE_END = 10, 100  # the warm-up steps timed by --fit-minutes
LOG_EVERY_S = 30.0  # progress without a terminal (a log file, CI): a line at most this often (and at each evaluation)


def _fit_steps(cfg: TrainConfig, model, ema, device, step: int, steps_per_s: float, seconds_left: float) -> dict:
    """The history record of ``--fit-minutes``: the steps (counted from 0) whose training and periodic Set5
    evaluations fit in ``seconds_left`` (less 5% for checkpoints and the end), at ``steps_per_s`` and the time
    of one evaluation measured here."""
    t = time.perf_counter()
    _eval_psnr(ema if ema is not None else model, cfg, device)
    eval_s = time.perf_counter() - t if cfg.eval_set and Path(cfg.eval_set).is_dir() else 0.0
    per_step = 1.0 / steps_per_s + eval_s / cfg.eval_every
    steps = step + int(max(0.0, 0.95 * (seconds_left - eval_s)) / per_step)
    if steps <= cfg.warmup:
        raise ValueError(f"--fit-minutes: only {steps} steps fit (at {steps_per_s:.1f} steps/s), not more than the "
                         f"{cfg.warmup}-step warm-up; give it more minutes")
    return {"step": step, "fit": {"steps": steps, "steps_per_s": round(steps_per_s, 2), "eval_s": round(eval_s, 2)}}


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if cfg.optimizer == "sgd":
        every = cfg.lr_step or max(1, cfg.steps // 4)
        return cfg.lr * (0.1 ** (step // every))
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def _make_optimizer(cfg: TrainConfig, model: VDSR) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        # fused: one kernel for the whole update on a GPU (the per-parameter loop is launch-bound at VDSR's size)
        fused = all(p.is_cuda for p in model.parameters())
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay or 1e-4)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected 'adam' or 'sgd'")


def _save_checkpoint(path: Path, model, opt, step, sampler: PatchSampler, cfg, history, ema=None,
                     loss_window: tuple[float, int] = (0.0, 0)) -> None:  # fmt: skip
    """Written to a temporary file, synced and renamed over ``path``: an interruption (or a crash of the machine)
    leaves the previous checkpoint or the new one, never part of one. ``loss_window``: the sum and count of the losses
    since the last report, so a resumed run's first report averages the same steps."""
    tmp = path.with_suffix(".tmp")
    rng, taken = sampler.state()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "rng": rng,
        "rng_batches": taken,  # batches already taken of the chunk drawn from "rng" (PatchSampler.resume)
        "rng_chunk": sampler.chunk,  # batches a chunk draws (the draws depend on it)
        "loss_window": [float(loss_window[0]), int(loss_window[1])],
        "config": asdict(cfg),
        "history": history,
    }
    if ema is not None:
        state["ema"] = ema.state_dict()
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # a full disk, Ctrl-C: no partial temporary left (the previous checkpoint stays)
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OSError(e.errno, f"cannot write the checkpoint {path} (the previous one, if any, is kept): "
                          f"{e.strerror or e}") from None
        raise


def _load_checkpoint(path: Path, cfg: TrainConfig, device: torch.device) -> dict:
    """A run's ``last.pt`` (tensors only: ``weights_only=True`` runs no pickled code), refused in one line
    (ValueError naming the file) if it is unreadable or holds a VDSR of another depth or width than ``cfg``'s."""
    try:
        # a copy from another machine is a file like any other: walked first (SECURITY.md); this trainer writes zips,
        # and the walk refuses any other format, which torch.load would read unwalked
        state = torch_load_walked(path, map_location=device)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError) as e:  # truncated,
        # empty, not torch's, refused by the walk (CheckpointFormatError is a ValueError)
        first = "an empty file" if path.stat().st_size == 0 else (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise ValueError(f"{path}: not a readable checkpoint ({first}); if a copy was cut short, copy it again, else "
                         f"start afresh with --no-resume (overwrites it) or another --out") from None
    keys = ("model", "optimizer", "step", "rng", "config", "history")
    if not isinstance(state, dict) or not all(k in state for k in keys):
        raise ValueError(f"{path}: not a checkpoint of vdsr-fast train (it lacks {', '.join(keys)}); "
                         f"start afresh with --no-resume (overwrites it) or another --out")
    saved = state["config"]
    if (saved.get("depth"), saved.get("channels")) != (cfg.depth, cfg.channels):
        raise ValueError(f"{path}: a checkpoint of a depth-{saved.get('depth')} {saved.get('channels')}-channel VDSR, "
                         f"but the run trains depth {cfg.depth} with {cfg.channels} channels; resume it with "
                         f"--depth {saved.get('depth')} --channels {saved.get('channels')}, or start another run "
                         f"(--no-resume overwrites it, or another --out)")
    if saved.get("optimizer", "adam") != cfg.optimizer:
        raise ValueError(f"{path}: a checkpoint of an --optimizer {saved.get('optimizer', 'adam')} run, whose state "
                         f"--optimizer {cfg.optimizer} cannot continue; resume it with --optimizer "
                         f"{saved.get('optimizer', 'adam')}, or start a new run from its weights (--init {path} "
                         f"with another --out)")
    return state


# Flags that do not change what a resumed run computes (where the data and results live, how often it is scored),
# and the seed (a resumed run continues the checkpoint's generator); a change of any other is noted on resume. Two
# are free only where their effect is the machine's: --device and --threads (another device or thread count sums in
# another order, so a run resumed elsewhere follows its own rounding); --cache is noted when the run starts or stops
# using one (the cache's planes are rounded to 8 bits, the folders' are not).
_RESUME_FREE = ("data", "out", "cache", "eval_set", "eval_every", "device", "threads", "init", "seed", "steps")


class _StopOnSignal:
    """SIGINT (Ctrl-C) and SIGTERM while :meth:`arm` ed: the step in flight finishes and the loop stops
    (``received``), so that a checkpoint of that step is saved before the signal acts as it would have; a second
    signal acts at once. Only in the main thread (where Python runs signal handlers), and not for a signal the
    process ignores."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def arm(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum
        self.disarm()

    def disarm(self) -> None:
        """The handlers from before :meth:`arm` back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


def _ema_decay(cfg: TrainConfig, step: int) -> float:
    """The average's decay after ``step`` steps of this run: ``cfg.ema``, lower at first ((1 + step) / (10 + step)),
    so the average is not held for thousands of steps near the weights it started from."""
    return min(cfg.ema, (1 + step) / (10 + step))


def _eval_psnr(model: VDSR, cfg: TrainConfig, device: torch.device) -> dict[str, float] | None:
    if not cfg.eval_set or not Path(cfg.eval_set).is_dir():
        return None
    from .engine import Engine

    model.eval()
    engine = Engine(model, backend="torch", dtype=torch.float32, device=device)
    res = {f"x{s}": round(evaluate(cfg.eval_set, s, engine).mean("psnr"), 3) for s in cfg.scales}
    model.train()
    return res


def _check_paths(cfg: TrainConfig, resume: bool) -> None:
    """The folders and files of a run, before anything is prepared or written: the training data (unless the
    ``cache`` holds it), the evaluation set (``""``: none), ``out`` (a folder) and ``init`` (a new run's)."""
    if cfg.cache and Path(cfg.cache).is_file():
        _read_cache(cfg.cache, arrays=False)
    else:
        for folder in cfg.data:
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"--data {folder}: no such folder" + (f" (and no --cache {cfg.cache})" if cfg.cache else ""))
    if cfg.eval_set and not Path(cfg.eval_set).is_dir():
        raise FileNotFoundError(f"--eval-set {cfg.eval_set}: no such folder (--eval-set '' trains without evaluating)")
    if cfg.eval_set:  # every image read and checked at every scale now, not at the first evaluation hours in
        try:
            check_set(cfg.eval_set, cfg.scales)
        except (FileNotFoundError, ValueError) as e:  # ImageReadError is a ValueError
            raise ValueError(f"--eval-set {cfg.eval_set}: {e} (--eval-set '' trains without evaluating)") from None
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; it names the run's folder")
    if cfg.init and not (resume and (out / "last.pt").is_file()) and not Path(cfg.init).is_file():
        raise FileNotFoundError(f"--init {cfg.init}: no such file")


def train(
    cfg: TrainConfig,
    resume: bool = True,
    progress: bool = True,
    until_step: int | None = None,
    max_minutes: float | None = None,
    fit_minutes: float | None = None,
) -> Path:
    """Run (or resume) a training run; returns the path of the safetensors weights written at the end.

    ``until_step`` / ``max_minutes`` stop early (with a checkpoint) without changing the schedule, which
    always follows ``cfg.steps``: a run cut into pieces across machines equals the uninterrupted one. So does
    SIGINT (Ctrl-C) or SIGTERM during the loop: the step in flight finishes, its checkpoint is saved, and the
    signal then acts as it would have (KeyboardInterrupt, termination).

    ``fit_minutes`` (a new run only) replaces ``cfg.steps`` by the number of steps that fit in that many
    minutes of this call (data preparation included), measured during the warm-up (steps 10 to
    ``FIT_PROBE_END``) together with one Set5 evaluation; the learning rate of a warm-up step does not depend
    on ``cfg.steps``, so the run equals one started with the fitted ``--steps``, which the checkpoint records
    (a resumed run keeps it).
    """
    cfg.check()
    for flag, value, zero_ok in (("--until-step", until_step, True), ("--max-minutes", max_minutes, True),
                                 ("--fit-minutes", fit_minutes, False)):  # 0 steps or minutes: stop before the first step
        if value is not None and not (math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
            raise ValueError(f"{flag} must be a number {'from' if zero_ok else 'above'} 0, got {value}")
    device = device_from_flag(None if cfg.device == "auto" else cfg.device)
    _check_paths(cfg, resume)
    # Every training step convolves the same shapes: on a GPU let cuDNN time its algorithms for them once (the
    # caller's setting is restored on return).
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or device.type == "cuda"
    interrupt = _StopOnSignal()  # armed for the training loop
    try:
        return _train(cfg, device, resume, progress, until_step, max_minutes, fit_minutes, interrupt)
    finally:
        interrupt.disarm()
        torch.backends.cudnn.benchmark = before


def _check_history_fits(cfg: TrainConfig) -> None:
    """A checkpoint's pickle holds the run's history: a record per 50 steps and per evaluation, at most ~16 opcodes
    each, and a checkpoint of more than ``_MAX_OPS`` opcodes is refused when read (SECURITY.md). A schedule whose
    history would pass that is refused before it trains, not when its checkpoint is resumed."""
    records = min(cfg.steps, cfg.steps // 50 + cfg.steps // cfg.eval_every) + 8
    if records * 16 > _MAX_OPS:
        raise ValueError(f"--steps {cfg.steps} with --eval-every {cfg.eval_every}: the run's history (~{records} "
                         f"records: a report every 50 steps and an evaluation every --eval-every) would be more than "
                         f"a checkpoint may hold ({_MAX_OPS} pickle opcodes, SECURITY.md); evaluate less often, or "
                         f"run fewer steps and continue with --init")


def _train(cfg: TrainConfig, device: torch.device, resume: bool, progress: bool, until_step: int | None,
           max_minutes: float | None, fit_minutes: float | None, interrupt: _StopOnSignal) -> Path:  # fmt: skip
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ckpt = out / "last.pt"
    resuming = resume and ckpt.is_file()
    fitting = fit_minutes is not None and not resuming
    if fitting and (cfg.warmup < FIT_PROBE_END or cfg.optimizer != "adam"):  # before the data is prepared
        raise ValueError(f"--fit-minutes needs a new adam run with --warmup >= {FIT_PROBE_END} (the steps are "
                         f"measured while the learning rate does not yet depend on --steps)")
    if not fitting and not resuming:  # (a fitted schedule is checked once fitted, a resumed one once read)
        _check_history_fits(cfg)
    init = None
    if cfg.init and not resuming:  # read (WeightsError: a file that is not VDSR weights) before anything is written
        init = load(cfg.init)
        if (init.depth, init.channels) != (cfg.depth, cfg.channels):
            raise ValueError(f"--init {cfg.init}: a depth-{init.depth} {init.channels}-channel VDSR, but the run "
                             f"trains depth {cfg.depth} with {cfg.channels} channels")
        # which weights the run began from, kept in the history (so across resumes) and in the final file's metadata
        init_record = {"step": 0, "init": {"file": Path(cfg.init).name,
                                           "sha256": hashlib.sha256(Path(cfg.init).read_bytes()).hexdigest()}}
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    model = VDSR(cfg.depth, cfg.channels).to(device).to(memory_format=torch.channels_last)
    opt = _make_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, history = 0, ([init_record] if init is not None else [])
    if resuming:
        state = _load_checkpoint(ckpt, cfg, device)
        model.load_state_dict(state["model"])
        options = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
        opt.load_state_dict(state["optimizer"])  # the moments and step counts, and the saved run's options ...
        for group, own in zip(opt.param_groups, options):  # ... which this run's replace (fused on a GPU only,
            group.update(own)  # --weight-decay as given)
            if own.get("fused") or own.get("capturable"):  # their step counts live beside the weights, in float32
                for prm in group["params"]:  # (a non-fused run's checkpoint has them as CPU scalars)
                    if "step" in opt.state.get(prm, {}):
                        opt.state[prm]["step"] = opt.state[prm]["step"].to(prm.device, torch.float32)
        step, history = int(state["step"]), list(state["history"])
        gen.set_state(state["rng"].cpu())  # map_location moved it to the device; the generator is the CPU's
        saved = state["config"]
        if fit_minutes is not None and any("fit" in h for h in history):  # the schedule was fitted when the run began
            cfg = dataclasses.replace(cfg, steps=int(saved["steps"]))
        else:
            if fit_minutes is not None:  # a review found it ignored without a word
                print("note: --fit-minutes fits the schedule of a new run; this one's was not fitted, so it goes on "
                      f"with --steps {cfg.steps}", file=sys.stderr)
            if saved.get("steps") != cfg.steps:
                print(f"note: resuming a run planned for {saved.get('steps')} steps with --steps {cfg.steps}",
                      file=sys.stderr)
        _check_history_fits(cfg)
        changed = [f"--{k.replace('_', '-')} {v} (was {saved[k]})" for k, v in asdict(cfg).items()
                   if k not in _RESUME_FREE and k in saved and saved[k] != v]  # fmt: skip
        if bool(saved.get("cache")) != bool(cfg.cache):  # 8-bit planes against the folders' exact ones
            changed.append(f"--cache {cfg.cache!r} (was {saved.get('cache')!r}: the training planes "
                           f"{'were' if saved.get('cache') else 'are now'} rounded to 8 bits)")
        if changed:
            print(f"note: resuming with {', '.join(changed)}: the run goes on with the new values, so it is no longer "
                  f"the one the checkpoint began", file=sys.stderr)
        print(f"resumed {ckpt} at step {step}", file=sys.stderr)
    elif init is not None:  # a new schedule from trained weights (e.g. a longer run after a finished one)
        model.load_state_dict(init.state_dict())
        print(f"initialised from {cfg.init}", file=sys.stderr)
    # The moving average of the weights (cfg.ema > 0): evaluated and saved instead of the weights themselves.
    ema = None
    if cfg.ema > 0:
        ema = copy.deepcopy(model).requires_grad_(False)
        if resuming and "ema" in state:
            ema.load_state_dict(state["ema"])
        ema_params, params = list(ema.parameters()), list(model.parameters())
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    # Bars on a terminal; elsewhere (a log file, CI) a plain line per report, at most one in LOG_EVERY_S seconds.
    tty = progress and sys.stderr.isatty()
    eval_name = Path(cfg.eval_set).name or "eval"  # the reports' label of the evaluation's PSNR (history keeps "set5")
    if progress and not tty:  # minutes on a CPU: a log says what it waits for
        source = f"the cache {cfg.cache}" if cfg.cache and Path(cfg.cache).is_file() else ", ".join(cfg.data)
        print(f"train: preparing the training pairs from {source} (x{', x'.join(map(str, cfg.scales))}, downsized by "
              f"{', '.join(map(str, cfg.downsizes))})", file=sys.stderr, flush=True)  # fmt: skip
    t_prep = time.perf_counter()
    pairs, _ = build_pairs(load_train_y(cfg.data, cfg.cache, tty), cfg.scales, cfg.downsizes, tty, device)
    if progress and not tty:
        print(f"train: {len(pairs)} pairs ready in {time.perf_counter() - t_prep:.0f} s", file=sys.stderr, flush=True)
    # Draws for 100 steps per host-to-device copy (a checkpoint saves where the chunk began: exact resume). A fixed
    # chunk, so --ckpt-every does not change the draws; a checkpoint of before it had rng_chunk keeps its own.
    chunk = int(state.get("rng_chunk", math.gcd(int(saved.get("ckpt_every", 100)), 100))) if resuming else 100
    sampler = PatchSampler(pairs, cfg.patch, gen, device, chunk=chunk)
    if resuming:
        sampler.resume(int(state.get("rng_batches", 0)), int(saved.get("batch", cfg.batch)))
    loss_fn = F.mse_loss if cfg.loss == "mse" else F.l1_loss
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda" or cpu_has_native_bf16()
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    bar, t_logged = None, -math.inf
    if tty:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    if not fitting and cfg.optimizer == "adam" and cfg.warmup >= cfg.steps:
        print(f"note: --warmup {cfg.warmup} is not below --steps {cfg.steps}: the learning rate never reaches --lr "
              f"{cfg.lr} and never anneals", file=sys.stderr)
    model.train()
    # the losses since the last report (sum, count; a resumed run goes on with the checkpoint's), and the steps timed
    loss_acc, n_acc = state.get("loss_window", (0.0, 0)) if resuming else (0.0, 0)
    t_last, n_timed = time.perf_counter(), 0
    last_eval = next((h["set5"] for h in reversed(history) if "set5" in h), None)
    stop = min(cfg.steps, until_step if until_step is not None else cfg.steps)
    if fitting:  # no checkpoint and no stop before the schedule is fitted (at the top of step FIT_PROBE_END's turn)
        stop = max(stop, FIT_PROBE_END + 1)
    interrupt.arm()  # Ctrl-C / SIGTERM: finish the step, save it, then act
    while step < stop:
        if fitting and step in (FIT_PROBE_START, FIT_PROBE_END):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step == FIT_PROBE_START:
                t_probe = time.perf_counter()
            else:
                rec = _fit_steps(cfg, model, ema, device, step, (step - FIT_PROBE_START) / (time.perf_counter() - t_probe),
                                 60 * fit_minutes - (time.perf_counter() - t_start))  # fmt: skip
                cfg = dataclasses.replace(cfg, steps=rec["fit"]["steps"])
                _check_history_fits(cfg)
                (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
                history.append(rec)
                msg = (f"fitted: {cfg.steps} steps ({rec['fit']['steps_per_s']:.1f} steps/s, a Set5 evaluation "
                       f"{rec['fit']['eval_s']:.1f} s) in --fit-minutes {fit_minutes}")
                (bar.write if bar is not None else print)(msg, file=sys.stderr)
                stop = min(cfg.steps, until_step if until_step is not None else cfg.steps)
                fitting = False
                if bar is not None:
                    bar.total = cfg.steps
                    bar.refresh()
                if step >= stop:
                    break
        if interrupt.received is not None or (max_minutes is not None and time.perf_counter() - t_start > 60 * max_minutes):
            break
        lr = _lr_at(cfg, step)
        for gparam in opt.param_groups:
            gparam["lr"] = lr
        x, y = sampler.batch(cfg.batch)
        x = channels_last(x)  # the first conv too (a 1-channel plane's NCHW strides read as NCHW)
        with amp:
            pred = model(x)
        loss = loss_fn(pred.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optimizer == "sgd":  # adjustable gradient clipping (paper): [-theta/lr, theta/lr]
            torch.nn.utils.clip_grad_value_(model.parameters(), cfg.clip / lr)
        elif cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        step += 1
        if ema is not None:  # on the device, no host synchronisation
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - _ema_decay(cfg, step))
        # The loss stays on the device between reports: no host synchronisation per step, so the CPU
        # queues the next steps while the GPU runs (a NaN is caught at the next report or checkpoint).
        loss_acc = loss_acc + loss.detach()
        n_acc += 1
        n_timed += 1
        evaluating = not fitting and (step % cfg.eval_every == 0 or step == cfg.steps)
        report = step % 50 == 0 or step == cfg.steps or evaluating
        if report or step % cfg.ckpt_every == 0:
            loss_mean = float(loss_acc) / n_acc
            if not math.isfinite(loss_mean):
                raise FloatingPointError(f"loss became {loss_mean} by step {step}; lower --lr or --clip")
        if evaluating:
            last_eval = _eval_psnr(ema if ema is not None else model, cfg, device)
        if report:
            now = time.perf_counter()
            rec = {"step": step, "loss": loss_mean, "lr": lr, "patches_per_s": n_timed * cfg.batch / (now - t_last)}
            if last_eval is not None and evaluating:
                rec["set5"] = last_eval
            history.append(rec)
            if bar is not None:
                bar.set_postfix({"loss": f"{rec['loss']:.2e}", "pps": f"{rec['patches_per_s']:.3g}", eval_name: last_eval or "-"})
            elif progress and ("set5" in rec or step == cfg.steps or now - t_logged >= LOG_EVERY_S):
                set5 = " ".join(f"{k} {v:.2f}" for k, v in rec["set5"].items()) if "set5" in rec else ""
                print(f"train: step {step}/{cfg.steps} loss {rec['loss']:.3e} lr {lr:.2e} "
                      f"{rec['patches_per_s']:.3g} patches/s" + (f" {eval_name} {set5}" if set5 else ""), file=sys.stderr, flush=True)
                t_logged = now
            t_last, loss_acc, n_acc, n_timed = now, 0.0, 0, 0
        if bar is not None:
            bar.update(1)
        if not fitting and (step % cfg.ckpt_every == 0 or step == cfg.steps):
            _save_checkpoint(ckpt, model, opt, step, sampler, cfg, history, ema, (float(loss_acc), n_acc))
    if bar is not None:
        bar.close()
    interrupt.disarm()
    if n_acc and not math.isfinite(float(loss_acc)):  # stopped between reports: no NaN saved either
        raise FloatingPointError(f"loss became {float(loss_acc)} by step {step}; lower --lr or --clip")
    if fitting:  # stopped before the schedule was fitted: a checkpoint would record an unfitted --steps
        print(f"stopped at step {step}, before --fit-minutes fitted the schedule: no checkpoint (the next run starts "
              f"afresh)", file=sys.stderr)
    else:
        _save_checkpoint(ckpt, model, opt, step, sampler, cfg, history, ema, (float(loss_acc), n_acc))
    if interrupt.received is not None:
        print(f"interrupted ({signal.Signals(interrupt.received).name}) at step {step}"
              + ("" if fitting else f": saved {ckpt}; the same command resumes it"), file=sys.stderr)
        signal.raise_signal(interrupt.received)  # as it would have acted (KeyboardInterrupt, termination)
    final = out / "vdsr_x234.safetensors"
    save(
        (ema if ema is not None else model).cpu(),
        final,
        metadata={
            "scales": cfg.scales,
            # the folders' names, or the cache's where the planes came from one (made from them, or brought along)
            "training_data": [Path(d).name for d in cfg.data] if not cfg.cache else [f"cache {Path(cfg.cache).name}"],
            "recipe": {**{k: v for k, v in asdict(cfg).items() if k not in ("data", "out", "cache", "eval_set", "device", "threads")},
                       "bf16": use_bf16},  # fmt: skip
            "steps": step,
            "init_sha256": next((h["init"]["sha256"] for h in history if "init" in h), None),  # what --init read
            "set5_psnr_during_training": last_eval,  # the key of the first runs; the set is eval_set's
            "eval_set": Path(cfg.eval_set).name if cfg.eval_set else None,
        },
    )
    return final


# `vdsr-fast train --help`: what each TrainConfig field is (the defaults are added by the formatter)
HELP = {
    "data": "folders of training images (the 291 set: T91 and BSD200), relative to the current folder",
    "out": "folder of the checkpoints (last.pt, resumed from unless --no-resume) and the final .safetensors",
    "cache": "a .npz of the training Y planes: read if present, else written (skips decoding the images next time)",
    "scales": "the scales trained together in one model",
    "downsizes": "the factors each training image is used at, shrunk first (include 1.0 for the full size)",
    "patch": "the side of the square HR patches (the paper's: 41)",
    "batch": "patches per step",
    "steps": "steps of the whole schedule (the learning rate anneals over them)",
    "optimizer": "adam (cosine decay) or sgd (the paper's recipe: momentum 0.9, lr / 10 every --lr-step)",
    "lr": "the peak learning rate",
    "min_lr": "adam: the floor of the cosine decay",
    "warmup": "adam: steps of linear learning-rate warm-up",
    "weight_decay": "L2 weight decay (sgd: 0 takes the paper's 1e-4)",
    "clip": "adam: the max gradient norm (0: off); sgd: theta of the adjustable clipping (gradients to theta / lr)",
    "lr_step": "sgd: divide the learning rate by 10 every this many steps (0: steps // 4)",
    "loss": "the training loss",
    "ema": "above 0: keep an exponential moving average of the weights (e.g. 0.999), which is evaluated and saved",
    "depth": "conv layers (VDSR: 20)",
    "channels": "channels of the hidden layers (VDSR: 64)",
    "bf16": "bf16 autocast (default: on CUDA, and on a CPU with native bf16)",
    "seed": "seed of the weights' initialisation and of the patch sampler (a run is reproducible)",
    "init": "weights to start from (any file vdsr_fast.load reads) when not resuming; empty: random",
    "eval_set": "the folder of HR images scored (PSNR on Y, the paper's protocol) every --eval-every steps",
    "eval_every": "steps between evaluations on --eval-set",
    "ckpt_every": "steps between checkpoints (OUT/last.pt)",
    "device": "auto (a GPU where there is one), cpu, cuda or cuda:N",
    "threads": "CPU threads for torch (0: its default)",
}


def main(argv: list[str] | None = None) -> int:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="vdsr-fast train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool) or name == "bf16":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=value, help=HELP[name])
        elif isinstance(value, list):
            p.add_argument(flag, nargs="+", type=type(value[0]), default=value, help=HELP[name])
        else:
            p.add_argument(flag, type=type(value), default=value, help=HELP[name],
                           choices={"loss": LOSSES, "optimizer": OPTIMIZERS}.get(name))  # fmt: skip
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if OUT/last.pt exists")
    p.add_argument("--until-step", type=int, help="stop (with a checkpoint) at this step; the schedule still follows --steps")
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this many minutes")
    p.add_argument("--fit-minutes", type=float, help="a new run: set --steps to what fits in this many minutes, "
                   "measured during the warm-up (the schedule then anneals in time; the checkpoint keeps the steps)")
    args = vars(p.parse_args(argv))
    resume = not args.pop("no_resume")
    until, minutes, fit = args.pop("until_step"), args.pop("max_minutes"), args.pop("fit_minutes")
    try:
        final = train(TrainConfig(**args), resume=resume, progress=True, until_step=until, max_minutes=minutes, fit_minutes=fit)
    except (ValueError, OSError, FloatingPointError) as e:  # WeightsError (--init) is a ValueError
        print(f"vdsr-fast train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the checkpoint of the last step finished is saved (the line above says so)
        return 130
    print(f"weights written to {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

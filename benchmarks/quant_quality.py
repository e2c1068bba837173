"""What the opt-in FP8 engine (``dtype=torch.float8_e4m3fn``, :mod:`vdsr_fast.fp8`) costs in quality: the paper
protocol's PSNR/SSIM (as ``vdsr-fast eval``) of its arithmetic against fp32's, and how far its 8-bit outputs are
from fp32's, per set and scale.

    python benchmarks/quant_quality.py [--sets Set5 Set14 BSD100] [--weights W] [--out results.md] [--fp16-layers 0,17]

The FP8 side runs the scheme's PyTorch emulation (``Engine(backend="torch", dtype=torch.float8_e4m3fn)``), which
the Triton FP8 kernels are tested against (tests/test_fp8.py: equal but for rare one-step rounding differences),
so this needs no GPU: ~1 minute for Set5 on a 2-core CPU, ~25 for BSD100.

``--fp16-layers`` measures a mixed scheme that no engine runs (yet): the listed body layers (0 = the first of the
18) in fp16, their inputs and weights rounded to fp16, the others as the FP8 scheme (:class:`MixedFp8`): how much
of FP8's error those layers carry.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import vdsr_fast  # noqa: E402
from benchmarks.bench_latency import git_commit  # noqa: E402
from vdsr_fast import fp8  # noqa: E402
from vdsr_fast.api import SCALES  # noqa: E402
from vdsr_fast.engine import Engine, tf32_mode  # noqa: E402
from vdsr_fast.evaluate import evaluate  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


class _Recorder:
    """An engine wrapper for ``evaluate`` that keeps each output (to compare the two engines pixel by pixel)."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.device, self.outputs = engine, engine.device, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.engine(x)
        self.outputs.append((out.clamp(0, 1) * 255).round())
        return out


class MixedFp8:
    """The FP8 scheme (:func:`vdsr_fast.fp8.emulate`) with the body layers ``fp16_layers`` in fp16 instead, on the CPU.

    Activations are carried unscaled between layers: an FP8 layer rounds its input ``h / s_i`` to e4m3 and rescales
    its sums by ``alpha s_{i+1}``, ``beta s_{i+1}`` (the scheme's epilogue, undone), an fp16 layer rounds its input
    and weights to fp16. With no fp16 layer it is the emulation up to fp32 rounding (tested)."""

    def __init__(self, model, fp16_layers: set[int]) -> None:
        self.p, self.hi, self.device = fp8.pack(model), set(fp16_layers), torch.device("cpu")
        self.ws = [w.detach().float().cpu() for w in model.weights]
        self.bs = [b.detach().float().cpu() for b in model.biases]

    @torch.no_grad()
    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        p, ws, bs = self.p, self.ws, self.bs
        x = y.float()
        layers = len(p.body_w)
        with tf32_mode(False):
            h = F.relu(F.conv2d(x, ws[0], bs[0], padding=1))
            for i in range(layers):
                if i in self.hi:
                    h = F.relu(F.conv2d(h.half().float(), ws[i + 1].half().float(), bs[i + 1], padding=1))
                    continue
                s_next = p.scales[i + 1] if i + 1 < layers else 1.0
                acc = F.conv2d(fp8.round_e4m3(h / p.scales[i]), p.body_w[i].float(), padding=1)
                h = F.relu(acc * (p.alpha[i] * s_next)[None, :, None, None] + (p.beta[i] * s_next)[None, :, None, None])
            return x + F.conv2d(h.half().float(), p.tail_w.float(), p.tail_b, padding=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", default=["Set5", "Set14"], help="eval set names under ../shared/data/eval, or folders")
    p.add_argument("--weights", help="weights (default: the shipped ones)")
    p.add_argument("--out", help="also write the table, with the date, versions and commit, to this markdown file")
    p.add_argument("--fp16-layers", default="", help="comma-separated body layers (0-17) kept in fp16 (MixedFp8)")
    args = p.parse_args(argv)
    fp16_layers = {int(v) for v in args.fp16_layers.split(",") if v.strip()}
    sets = [Path(s) if Path(s).is_dir() else DATA / "eval" / s for s in args.sets]
    if missing := [str(s) for s in sets if not s.is_dir()]:
        print(f"quant_quality: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    model = vdsr_fast.load(args.weights)
    lines = ["| set | scale | fp32 PSNR | fp8 Δ PSNR (dB) | fp32 SSIM | fp8 Δ SSIM | 8-bit Y: max levels apart | pixels > 1 level apart |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    print("\n".join(lines), flush=True)
    for folder in sets:
        for s in SCALES:
            ref = _Recorder(Engine(model, backend="torch", dtype=torch.float32, device="cpu"))
            q8 = _Recorder(MixedFp8(model, fp16_layers) if fp16_layers else
                           Engine(model, backend="torch", dtype=torch.float8_e4m3fn, device="cpu"))  # fmt: skip
            a, b = evaluate(folder, s, ref), evaluate(folder, s, q8)
            diffs = [(x - y).abs() for x, y in zip(ref.outputs, q8.outputs, strict=True)]
            worst = max(d.max().item() for d in diffs)
            over = sum(int((d > 1).sum()) for d in diffs) / sum(d.numel() for d in diffs)
            lines.append(f"| {folder.name} | x{s} | {a.mean('psnr'):.3f} | {b.mean('psnr') - a.mean('psnr'):+.3f} | "
                         f"{a.mean('ssim'):.4f} | {b.mean('ssim') - a.mean('ssim'):+.4f} | {worst:.0f} | {100 * over:.2f}% |")  # fmt: skip
            print(lines[-1], flush=True)
    if args.out:
        commit = git_commit() or ""
        mixed = f" --fp16-layers {args.fp16_layers}" if fp16_layers else ""
        scheme = (f"the FP8 scheme with body layers {sorted(fp16_layers)} in fp16 (MixedFp8)" if fp16_layers
                  else "the FP8 scheme (PyTorch emulation)")  # fmt: skip
        head = (f"# The FP8 engine's quality cost\n\n`python benchmarks/quant_quality.py --sets {' '.join(args.sets)}{mixed}`, "
                f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, {platform.machine()} CPU, torch "
                f"{torch.__version__}, commit {commit}, weights {args.weights or 'shipped'}. Paper protocol (Y, MATLAB bicubic, "
                f"shave = scale); Δ = {scheme} minus fp32, means over each set; the last two "
                "columns compare the two outputs rounded to 8 bits.\n")
        Path(args.out).write_text(head + "\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

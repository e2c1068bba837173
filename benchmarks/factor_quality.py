"""PSNR at factors VDSR was not trained on: bicubic, VDSR run at the factor itself, and VDSR at each trained scale
above it resized down with MATLAB's bicubic (what ``upscale(scale=f)`` does with the next one).

    python benchmarks/factor_quality.py [--set ../shared/data/eval/Set5] [--weights W] [--out results.md]

Protocol, as the paper's for its scales where it can be: Y of each HR image (MATLAB ``rgb2ycbcr``), cropped to a
multiple of the factor's numerator p (factor p/q), the LR image MATLAB-bicubic down to q/p of it, every result
rounded to 8 bits, PSNR on Y shaving ceil(factor) pixels. CPU, fp32 reference backend (~1 minute for Set5).
"""

from __future__ import annotations

import argparse
import math
import sys
from fractions import Fraction
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import vdsr_fast  # noqa: E402
from vdsr_fast.api import SCALES  # noqa: E402
from vdsr_fast.engine import Engine  # noqa: E402
from vdsr_fast.evaluate import load_y  # noqa: E402
from vdsr_fast.imaging import imresize  # noqa: E402
from vdsr_fast.metrics import psnr  # noqa: E402

FACTORS = (Fraction(5, 4), Fraction(3, 2), Fraction(9, 4), Fraction(5, 2), Fraction(7, 2))


def _q(t: torch.Tensor) -> torch.Tensor:
    return (t.clamp(0, 1) * 255).round() / 255


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", default=str(ROOT.parent / "shared" / "data" / "eval" / "Set5"), help="an eval set folder")
    p.add_argument("--weights", help="weights (default: the shipped ones)")
    p.add_argument("--out", help="also write the table, with the date, versions and commit, to this markdown file")
    args = p.parse_args(argv)
    files = sorted(Path(args.set).glob("x2/*_HR.png")) or sorted(Path(args.set).glob("*_HR.png"))
    if not files:
        print(f"factor_quality: no *_HR.png under {args.set}", file=sys.stderr)
        return 2
    engine = Engine(vdsr_fast.load(args.weights), backend="torch", device="cpu")

    def net(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return engine(x.float().reshape(1, 1, h, w)).double().reshape(h, w)

    lines = [f"{Path(args.set).name}: {len(files)} images; mean PSNR (dB) on Y",
             "| factor | bicubic | VDSR at the factor | " + " | ".join(f"VDSR x{k}, then down" for k in SCALES) + " |",
             "|---|---|---|" + "---|" * len(SCALES)]  # fmt: skip
    print("\n".join(lines))
    for f in FACTORS:
        rows: dict[str, list[float]] = {}
        for path in files:
            y = load_y(path)
            h, w = (n - n % f.numerator for n in y.shape[-2:])
            hr = y[..., :h, :w]
            lr = imresize(hr, size=(h * f.denominator // f.numerator, w * f.denominator // f.numerator))
            shave = math.ceil(f)
            bic = imresize(lr, size=(h, w))
            rows.setdefault("bicubic", []).append(psnr(_q(bic), hr, shave=shave))
            rows.setdefault("direct", []).append(psnr(_q(net(bic)), hr, shave=shave))
            for k in SCALES:
                if k >= f:
                    up = net(imresize(lr, size=(k * lr.shape[-2], k * lr.shape[-1])))
                    rows.setdefault(k, []).append(psnr(_q(imresize(up, size=(h, w))), hr, shave=shave))
        cells = [f"{sum(v) / len(v):.2f}" for v in (rows["bicubic"], rows["direct"])]
        cells += [f"{sum(rows[k]) / len(rows[k]):.2f}" if k in rows else "—" for k in SCALES]
        lines.append(f"| x{float(f):g} | " + " | ".join(cells) + " |")
        print(lines[-1])
    if args.out:
        _write(Path(args.out), lines, args)
    return 0


def _write(path: Path, table: list[str], args) -> None:
    import platform
    from datetime import datetime, timezone

    from benchmarks.bench_latency import git_commit

    commit = git_commit() or ""
    head = [
        "# PSNR at factors VDSR was not trained on",
        "",
        f"`python benchmarks/factor_quality.py`, {datetime.now(timezone.utc).isoformat(timespec='seconds')}, "
        f"{platform.processor() or platform.machine()} CPU, "
        f"torch {torch.__version__}, commit {commit or '?'}, weights {args.weights or 'shipped'}. Protocol: the script's "
        "docstring; `upscale(scale=f)` runs the network at the next trained scale and resizes its output down.",
        "",
    ]
    path.write_text("\n".join(head + table[:1] + [""] + table[1:]) + "\n")


if __name__ == "__main__":
    sys.exit(main())

"""Render the markdown tables of a ``bench_latency`` results JSON (no torch needed).

    python benchmarks/make_table.py benchmarks/results/2026-11-26_nvidia-h100-80gb-hbm3.json
    python benchmarks/make_table.py RESULT.json --pivot      # compact path x resolution table (README)

The full table has one line per measured row; ``--pivot`` gives the README's table: one line per path,
one column per network-only size (batch 1 unless the size says otherwise), the median latency in ms.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["render_markdown", "render_pivot", "render_header", "main"]


def _fmt(v: Any, spec: str = ".2f", none: str = "—") -> str:
    if v is None:
        return none
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def render_header(data: dict) -> str:
    """One line naming the card, the software and the measured matmul ceiling."""
    dev = data.get("device", {})
    ver = data.get("versions", {})
    peak = data.get("peak") or {}
    parts = [dev.get("name", "?")]
    if dev.get("driver"):
        parts.append(f"driver {dev['driver']}")
    for key, label in (("torch", "torch"), ("cuda", "CUDA"), ("cudnn", "cuDNN"), ("triton", "triton")):
        if ver.get(key):
            parts.append(f"{label} {ver[key]}")
    line = f"**{', '.join(parts)}** — {data.get('date', '?')}, commit {ver.get('git_commit') or '?'}, timer `{data.get('timer', '?')}`"
    if peak.get("tflops"):
        line += (
            f"; measured {peak.get('dtype', '?')} matmul peak {peak['tflops']:.0f} TFLOP/s ({peak.get('shape', '?')})"
        )
    if data.get("weights"):
        line += f"; weights: {data['weights']}"
    # before the search was recorded (runs up to 11), cudnn.benchmark timed only the first 10 plans of its list
    line += f"; cuDNN plans: {data.get('cudnn_search') or 'not recorded (PyTorch default: the first 10 timed)'}"
    return line


def _size(row: dict) -> str:
    return row.get("size") or f"{row.get('width')}x{row.get('height')}"


def _check(row: dict) -> str:
    status = row.get("status", "?")
    if status == "ok":
        chk = row.get("check") or {}
        if not chk:
            return "n/a"
        return "ok" if chk.get("passed") else "FAIL"
    if status == "check_failed":
        chk = row.get("check") or {}
        if not chk:
            return "FAIL (network check)"
        return f"FAIL (err {_fmt(chk.get('err'), '.1e')} > {_fmt(chk.get('bound'), '.1e')})"
    return f"{status}: {row.get('note', '')}".strip()


def render_markdown(data: dict, include_failed: bool = True) -> str:
    """The full results table (every timed row, and the rows whose check failed or which raised)."""
    head = [
        "path", "dtype", "size", "N", "median ms", "p10 ms", "p90 ms", "frames/s", "TFLOP/s",
        "% peak", "× cuDNN fused", "× eager fp16 CL", "peak MiB", "check",
    ]  # fmt: skip
    lines = [render_header(data), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in data.get("rows", []):
        if r.get("status") == "skipped" or (not include_failed and r.get("status") != "ok"):
            continue
        cells = [
            r.get("path", "?"),
            r.get("dtype", "?"),
            _size(r),
            str(r.get("batch", "?")),
            _ms(r.get("median_ms")),
            _ms(r.get("p10_ms")),
            _ms(r.get("p90_ms")),
            _fmt(r.get("fps"), ".1f"),
            _fmt(r.get("tflops"), ".1f"),
            _fmt(r.get("pct_peak"), ".1f"),
            _fmt(r.get("speedup_vs_cudnn"), ".2f"),
            _fmt(r.get("speedup_vs_eager_fp16"), ".2f"),
            _fmt(r.get("peak_mem_mb"), ".0f"),
            _check(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_pivot(data: dict) -> str:
    """README table: one line per path and dtype (network-only and end-to-end), one column per size, median ms."""
    rows = [r for r in data.get("rows", []) if r.get("status") == "ok"]
    cols: list[str] = []
    for r in rows:
        c = _size(r) + (f" ×{r['batch']}" if r.get("batch", 1) != 1 else "")
        r["_col"] = c
        if c not in cols:
            cols.append(c)
    paths: list[str] = []
    for r in rows:  # a path measured in several dtypes (an engine backend) is one line per dtype
        r["_line"] = f"{r['path']} {r['dtype']}" if r.get("dtype") else r["path"]
        if r["_line"] not in paths:
            paths.append(r["_line"])
    lines = [render_header(data), "", "| path | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for p in paths:
        by_col = {r["_col"]: r for r in rows if r["_line"] == p}
        cells = []
        for c in cols:
            r = by_col.get(c)
            cells.append("—" if r is None else f"{_ms(r.get('median_ms'))} ms")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path, help="a results JSON written by benchmarks/bench_latency.py")
    ap.add_argument("--pivot", action="store_true", help="compact path x size table of medians (for the README)")
    ap.add_argument("--ok-only", action="store_true", help="leave out rows that failed the check or raised")
    args = ap.parse_args(argv)
    data = json.loads(args.json.read_text())
    print(render_pivot(data) if args.pivot else render_markdown(data, include_failed=not args.ok_only))
    return 0


if __name__ == "__main__":
    sys.exit(main())

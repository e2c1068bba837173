"""Read a layer profile and say which kernel options should be the defaults on that card.

    python -m benchmarks.pick_defaults benchmarks/results/<date>_layer_profile_<card>_1920x1080_fp16.json

``layer_profile.py`` times every backend's whole network with its defaults and with each alternative (the ``net`` rows)
and every body kernel on its own. This prints, per backend, the options ranked by the whole network's
time, the CUDA body variants ranked by their layer time (what ``kAutoOrder`` in ``csrc/conv3x3_body.cu``
should list first), and the ratio of each backend's best network to cuDNN's fused chain estimate
(18 x cuDNN's body layer + its head; the latency benchmark measures the real chain). An option is named a
candidate for the default only where it beats the default by more than ``--min-gain`` (2% unless given: the same
networks timed by run 12's latency benchmark and by its layer profile differ by 0.2-1.0%, one by 5%); within it,
the suggested ``kAutoOrder`` keeps the backend's pick first. It changes no file:
the defaults are code (``kAutoOrder``; ``TritonBackend``'s ``body_config`` / ``fuse_tail``), edited by hand
after a run, with the run named in the commit.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def rank(data: dict) -> dict:
    """{"nets": {backend: [(ms, label)]}, "cuda_variants": [(ms, id)], "cuda_auto": the variant the backend picked
    (None in profiles before it was marked), "cudnn_body_ms": ms or None}."""
    nets: dict[str, list[tuple[float, str]]] = {}
    variants: list[tuple[float, int]] = []
    cudnn = auto = None
    for r in data["rows"]:
        if r["ms"] is None:
            continue
        if r["layer"] == "net":
            m = re.match(r"engine (\w+)(.*?) \(eager launches\)$", r["path"])
            if m:
                nets.setdefault(m.group(1), []).append((r["ms"], (m.group(1) + m.group(2)).strip(" ,")))
        elif r["layer"] == "body":
            m = re.match(r"cuda variant (\d+)( \(auto\))?", r["path"])
            if m:
                variants.append((r["ms"], int(m.group(1))))
                auto = int(m.group(1)) if m.group(2) else auto
            elif r["path"].startswith("cuDNN"):
                cudnn = r["ms"]
    return {"nets": {k: sorted(v) for k, v in nets.items()}, "cuda_variants": sorted(variants), "cuda_auto": auto,
            "cudnn_body_ms": cudnn}


def verdict(ranked: list[tuple[float, object]], default: object, min_gain: float, what: str) -> tuple[str, bool]:
    """Whether the fastest of ``ranked`` (ms, name) beats ``default`` by more than ``min_gain``: one line to print,
    and True where the default is timed and stays (no other beats it beyond the threshold)."""
    times = {name: ms for ms, name in ranked}
    if default not in times:
        return f"  (no timed {what} marked as the default: nothing to compare with)", False
    best_ms, best = ranked[0]
    if best == default:
        return f"  -> keep the default {what}: it is the fastest", True
    gain = times[default] / best_ms - 1
    if gain > min_gain:
        return (f"  -> a candidate for the default {what}: {best}, {100 * gain:.1f}% faster than the default "
                f"(above the {100 * min_gain:.1f}% threshold); confirm it in the latency benchmark"), False
    return (f"  -> keep the default {what}: the fastest, {best}, is {100 * gain:.1f}% faster, within the "
            f"{100 * min_gain:.1f}% threshold (--min-gain)"), True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path, help="a layer_profile_*.json")
    ap.add_argument("--min-gain", type=float, default=2.0,
                    help="percent an option must beat the default by to be named a candidate (default 2)")
    args = ap.parse_args(argv)
    if not 0 <= args.min_gain < 100:
        ap.error(f"--min-gain must be in [0, 100), got {args.min_gain}")
    min_gain = args.min_gain / 100
    data = json.loads(args.profile.read_text())
    r = rank(data)
    print(f"{data['card']}, {data['size'][0]}x{data['size'][1]} {data['dtype']}, {data['date']}")
    heads = [row["ms"] for row in data["rows"] if row["layer"] == "head" and row["path"].startswith("cuDNN") and row["ms"]]
    chain = 18 * r["cudnn_body_ms"] + (heads[0] if heads else 0.0) if r["cudnn_body_ms"] else None
    for backend, ranked in r["nets"].items():
        print(f"\n{backend}: whole network, fastest first")
        for ms, label in ranked:
            vs = f"  ({chain / ms:.2f}x the cuDNN chain estimate {chain:.2f} ms)" if chain else ""
            print(f"  {ms:8.3f} ms  {label}{vs}")
        print(verdict(ranked, backend, min_gain, "options")[0])
    if r["cuda_variants"]:
        by_time = [i for _, i in r["cuda_variants"]]
        auto = r["cuda_auto"]
        # the variant the backend picks stays first unless another beats it beyond the threshold
        line, keep = verdict([(ms, f"variant {i}") for ms, i in r["cuda_variants"]], f"variant {auto}", min_gain,
                             "body variant (kAutoOrder's first)")
        order = ", ".join(str(i) for i in ([auto] + [i for i in by_time if i != auto] if keep else by_time))
        print(f"\ncuda body variants by layer time: {', '.join(map(str, by_time))}  -> kAutoOrder = {{{order}}} "
              "(csrc/conv3x3_body.cu" + (f"; variant {auto}, the backend's pick, kept first)" if keep else ")"))
        for ms, i in r["cuda_variants"]:
            print(f"  variant {i}: {ms:.4f} ms")
        if auto is not None:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

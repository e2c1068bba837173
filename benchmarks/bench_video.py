"""Throughput of ``vdsr-fast video`` on a generated clip, and how busy it keeps the GPU.

    python -m benchmarks.bench_video                      # GPU: 960x540 -> 1920x1080, 120 frames, batch 8
    python -m benchmarks.bench_video --preset ultrafast   # see how much the encoder holds it back
    python -m benchmarks.bench_video --smoke              # CPU, tiny clip and model: code paths only

The clip (H.264 + AAC, moving gradients and noise so the encoder has real work) is generated first and
not timed. The run is :func:`vdsr_fast.video.upscale_video`: decode, upscale and encode overlap in
three threads. Reported: frames/s of the whole run and ``gpu_busy_fraction``, the sum of CUDA-event
spans around each batch's ``upscale()`` over the wall time. The JSON (card, versions, date, the
summary) goes to ``--out`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from vdsr_fast import VDSR, load
from vdsr_fast.video import upscale_video


def make_clip(path: Path, width: int, height: int, frames: int, fps: int = 24) -> None:
    """An H.264 clip with an AAC tone track: moving gradients plus noise (so encoding is real work)."""
    import av

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        a = c.add_stream("aac", rate=48000)
        a.layout = "stereo"
        for i in range(frames):
            img = np.stack([(xx + 4 * i) % 256, (yy + 2 * i) % 256, (xx + yy + i) % 256], -1).astype(np.int16)
            img += rng.integers(-12, 13, img.shape, dtype=np.int16)
            f = av.VideoFrame.from_ndarray(img.clip(0, 255).astype(np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
        mux_tone(c, a, Fraction(frames, fps), 0.2)


def mux_tone(container, stream, seconds: Fraction, amplitude: float) -> None:
    """Encode and mux ``seconds`` of a stereo 440 Hz tone into ``stream`` (48 kHz, float planar), then flush."""
    import av

    sr, fs, pts = 48000, stream.codec_context.frame_size or 1024, 0
    while pts < sr * seconds:
        t = np.arange(pts, pts + fs) / sr
        tone = np.repeat((amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], 2, 0)
        af = av.AudioFrame.from_ndarray(tone, format="fltp", layout="stereo")
        af.sample_rate, af.pts, af.time_base = sr, pts, Fraction(1, sr)
        container.mux(stream.encode(af))
        pts += fs
    container.mux(stream.encode(None))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_video", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="960x540", help="input WxH (default 960x540)")
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--preset", default=None, help="x264 preset (default: the encoder's, medium)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--pipeline", default="auto", choices=["auto", "yuv", "rgb"], help="vdsr-fast video's --pipeline")
    p.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/results/, a temp folder with --smoke)")
    p.add_argument("--smoke", action="store_true", help="CPU, a 32x24 clip of 6 frames, a tiny random model")
    args = p.parse_args(argv)

    if args.smoke:
        width, height, frames, device = 32, 24, 6, "cpu"
        model = VDSR(depth=4, channels=8).eval()
    else:
        if not torch.cuda.is_available():
            print("bench_video: no CUDA device (use --smoke on a CPU)", file=sys.stderr)
            return 2
        width, height = (int(v) for v in args.size.lower().split("x"))
        frames, device, model = args.frames, "cuda", load()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.mp4", Path(tmp) / "out.mp4"
        make_clip(src, width, height, frames)
        if device == "cuda":  # engine, kernels and resize tables built outside the timed run
            upscale_video(src, Path(tmp) / "warm.mp4", args.scale, model, batch=args.batch, device=device,
                          backend=args.backend, preset="ultrafast", progress=False, pipeline=args.pipeline)
        r = upscale_video(src, dst, args.scale, model, batch=args.batch, device=device, backend=args.backend,
                          preset=args.preset, progress=False, pipeline=args.pipeline)
    card = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "card": card,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "clip": {"size": [width, height], "frames": frames, "scale": args.scale, "batch": args.batch,
                 "preset": args.preset or "default (medium)", "codec": "libx264"},
        "summary": r,
    }
    out = Path(args.out or (tempfile.mkdtemp(prefix="bench_video_") if args.smoke else "benchmarks/results"))
    out.mkdir(parents=True, exist_ok=True)
    name = f"{result['date'][:10]}_video_{card.replace(' ', '_')}.json"
    (out / name).write_text(json.dumps(result, indent=2))
    busy = r["gpu_busy_fraction"]
    print(f"vdsr-fast video {width}x{height} -> {width * args.scale}x{height * args.scale}, {r['frames']} frames, batch {args.batch}, "
          f"{r['pipeline']} pipeline, "
          f"{card}: {r['fps']:.1f} frames/s, GPU busy {'-' if busy is None else f'{100 * busy:.0f}%'} -> {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

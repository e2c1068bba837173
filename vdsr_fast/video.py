"""``vdsr-fast video IN OUT --scale 2``: upscale a video with VDSR (PyAV for decoding and encoding).

Three threads joined by bounded queues, so decoding, the upscale and encoding overlap:

* the reader demuxes ``IN``, decodes the video stream into RGB frames and groups them in batches
  (``--batch``); packets of the audio and subtitle streams pass through untouched;
* the upscaler copies each batch to the device, calls :func:`vdsr_fast.upscale` on the uint8 NHWC
  frames and starts the copy back into pinned host memory; on a GPU it does not wait for the result
  (a CUDA event marks it), so the next batch is queued while the encoder works on this one;
* the writer waits for each batch's event, encodes the frames (H.264 by default) with the decoded
  frames' timestamps and muxes them, together with the copied audio/subtitle packets, into a
  temporary file beside ``OUT``, renamed to ``OUT`` once complete.

PyAV is an optional dependency (``pip install av``); it is imported only here, when the command runs.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .cli import _DTYPES, CliError, _add_engine_args, _device, _model
from .images import default_file_mode

__all__ = ["main", "upscale_video", "VideoError"]

_END = object()  # end of stream marker on the queues


class VideoError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def _import_av():
    try:
        import av
    except ImportError:
        raise VideoError("the video command needs PyAV: pip install av  (or pip install 'vdsr_fast[video]')") from None
    return av


class _Stopped(Exception):
    """Raised in a worker when another worker failed."""


class _Pipe:
    """Bounded queues between the three threads, with one shared failure flag."""

    def __init__(self, depth: int) -> None:
        self.decoded: queue.Queue = queue.Queue(depth)
        self.upscaled: queue.Queue = queue.Queue(depth)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.frames = 0  # frames encoded so far

    def fail(self, e: BaseException) -> None:
        if self.error is None:
            self.error = e
        self.stop.set()

    def put(self, q: queue.Queue, item) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self, q: queue.Queue):
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue


def _worker(pipe: _Pipe, fn, *args) -> threading.Thread:
    def run():
        try:
            fn(pipe, *args)
        except _Stopped:
            pass
        except BaseException as e:  # handed to the main thread
            pipe.fail(e)

    t = threading.Thread(target=run, name=getattr(fn, "__name__", "worker"), daemon=True)
    t.start()
    return t


def _reader(pipe: _Pipe, container, vstream, copied: dict, batch: int) -> None:
    frames: list = []
    for packet in container.demux(vstream, *copied):
        if packet.stream.index != vstream.index:
            if packet.dts is not None:  # the demuxer's flush packets carry no data
                pipe.put(pipe.decoded, ("packet", packet))
            continue
        for frame in packet.decode():
            frames.append(frame)
            if len(frames) == batch:
                pipe.put(pipe.decoded, ("frames", frames))
                frames = []
    if frames:
        pipe.put(pipe.decoded, ("frames", frames))
    pipe.put(pipe.decoded, _END)


def _upscaler(pipe: _Pipe, scale: int, model, device: torch.device, kw: dict) -> None:
    from .api import upscale

    cuda = device.type == "cuda"
    stream = torch.cuda.Stream(device) if cuda else None
    while (item := pipe.get(pipe.decoded)) is not _END:
        kind, payload = item
        if kind == "packet":
            pipe.put(pipe.upscaled, item)
            continue
        meta = [(f.pts, f.time_base) for f in payload]
        host = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in payload]))
        if not cuda:
            out = upscale(host, scale, model, layout="NHWC", **kw)
            pipe.put(pipe.upscaled, ("frames", (out.numpy(), None, meta)))
            continue
        with torch.cuda.stream(stream):
            x = host.pin_memory().to(device, non_blocking=True)
            y = upscale(x, scale, model, layout="NHWC", **kw)
            back = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
            back.copy_(y, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        pipe.put(pipe.upscaled, ("frames", (back, done, meta)))
    pipe.put(pipe.upscaled, _END)


def _writer(pipe: _Pipe, av, out_container, ostream, stream_map: dict, progress) -> None:
    index = 0
    while (item := pipe.get(pipe.upscaled)) is not _END:
        kind, payload = item
        if kind == "packet":
            payload.stream = stream_map[payload.stream.index]
            out_container.mux(payload)
            continue
        arr, done, meta = payload
        if done is not None:
            done.synchronize()
            arr = arr.numpy()
        for rgb, (pts, time_base) in zip(arr, meta, strict=True):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index if pts is None else pts
            if time_base is not None:
                frame.time_base = time_base
            out_container.mux(ostream.encode(frame))
            index += 1
        pipe.frames += len(meta)
        progress.update(len(meta))
    out_container.mux(ostream.encode(None))


def _open_input(av, path: Path):
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"cannot read {path} as a video: {e}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} has no video stream")
    return container


def upscale_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    scale: int = 2,
    model=None,
    *,
    codec: str = "libx264",
    crf: int | None = 18,
    pix_fmt: str = "yuv420p",
    preset: str | None = None,
    batch: int = 4,
    device: str | torch.device | None = None,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
    tile: int | None = None,
    max_memory: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Upscale the video ``src`` into ``dst``; returns a summary (frames, seconds, fps, sizes, streams).

    The first video stream is upscaled, audio and subtitle streams are copied, frame timestamps are
    kept. Raises :class:`VideoError` for an unreadable input, an existing ``dst`` without ``force``, or
    an encoder that cannot be opened.
    """
    av = _import_av()
    from tqdm import tqdm

    from .api import _check_scale, _default

    src, dst = Path(src), Path(dst)
    s = _check_scale(scale)
    if batch < 1:
        raise VideoError(f"--batch must be >= 1, got {batch}")
    if dst.exists() and not force:
        raise VideoError(f"{dst} exists; pass --force to overwrite it")
    if not dst.parent.is_dir():
        raise VideoError(f"{dst.parent}: output folder does not exist")
    if not dst.suffix:
        raise VideoError(f"{dst}: give the output a container suffix (.mp4, .mkv, .mov...)")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _default() if model is None else model
    kw = {"backend": backend, "dtype": dtype, "tile": tile, "max_memory": max_memory}

    inp = _open_input(av, src)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=dst.suffix, dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    ok = False
    try:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        try:
            out = av.open(str(tmp), mode="w")
        except (av.error.FFmpegError, ValueError) as e:
            raise VideoError(f"cannot write {dst}: {e}") from None
        with out:
            rate = vin.average_rate or vin.guessed_rate or Fraction(25)
            try:
                ostream = out.add_stream(codec, rate=rate)
            except (av.error.FFmpegError, ValueError) as e:
                raise VideoError(f"unknown or unavailable codec {codec!r}: {e}") from None
            w, h = vin.codec_context.width, vin.codec_context.height
            ostream.width, ostream.height = w * s, h * s
            ostream.pix_fmt = pix_fmt
            if vin.time_base is not None:
                ostream.time_base = vin.time_base
                ostream.codec_context.time_base = vin.time_base
            options = {}
            if crf is not None:
                options["crf"] = str(crf)
            if preset is not None:
                options["preset"] = preset
            ostream.options = options
            copied, stream_map = [], {}
            for st in (*inp.streams.audio, *inp.streams.subtitles):
                try:
                    stream_map[st.index] = out.add_stream_from_template(st)
                    copied.append(st)
                except (av.error.FFmpegError, ValueError) as e:
                    print(f"vdsr-fast video: warning: not copying {st.type} stream #{st.index}: {e}", file=sys.stderr)

            total = vin.frames or None
            if total is None and inp.duration:  # e.g. Matroska stores no frame count
                total = max(1, round(inp.duration / 1e6 * float(rate)))
            bar = tqdm(total=total, unit="frame", desc=f"x{s} {src.name}", disable=not progress, dynamic_ncols=True)
            pipe = _Pipe(depth=2)
            t0 = time.perf_counter()
            threads = [
                _worker(pipe, _reader, inp, vin, copied, batch),
                _worker(pipe, _upscaler, s, model, device, kw),
                _worker(pipe, _writer, av, out, ostream, stream_map, bar),
            ]
            try:
                while any(t.is_alive() for t in threads):
                    for t in threads:
                        t.join(timeout=0.1)
            except KeyboardInterrupt:
                pipe.fail(KeyboardInterrupt())
                for t in threads:
                    t.join()
                raise
            finally:
                bar.close()
            seconds = time.perf_counter() - t0
            if pipe.error is not None:
                e = pipe.error
                if isinstance(e, av.error.FFmpegError):
                    raise VideoError(f"{src} -> {dst}: {e}") from e
                raise e
            frames = pipe.frames
            kinds = [st.type for st in copied]  # before the input is closed
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, dst)
        ok = True
    finally:
        inp.close()
        if not ok:
            tmp.unlink(missing_ok=True)
    return {
        "input": str(src),
        "output": str(dst),
        "frames": frames,
        "seconds": seconds,
        "fps": frames / seconds if seconds > 0 else float("nan"),
        "size_in": (w, h),
        "size_out": (w * s, h * s),
        "copied_streams": kinds,
        "device": str(device),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vdsr-fast video", description="Upscale a video with VDSR (decode, upscale, encode overlap; audio and subtitles copied).")
    p.add_argument("input", help="input video (anything FFmpeg reads)")
    p.add_argument("output", help="output video; the container comes from the suffix (.mp4, .mkv, ...)")
    p.add_argument("--scale", "-s", type=int, default=2, choices=[2, 3, 4])
    p.add_argument("--codec", default="libx264", help="video encoder (default: libx264, i.e. H.264)")
    p.add_argument("--crf", type=int, default=18, help="constant rate factor for x264/x265-style encoders (default: 18; -1: encoder default)")
    p.add_argument("--preset", help="encoder preset, e.g. veryfast, slow")
    p.add_argument("--pix-fmt", default="yuv420p", help="encoded pixel format (default: yuv420p)")
    p.add_argument("--batch", "-b", type=int, default=4, help="frames per upscale call (default: 4)")
    p.add_argument("--tile", type=int, help="upscale in output tiles of this size (exact; saves memory)")
    p.add_argument("--max-memory", type=float, help="working-memory budget per batch in GiB (chooses the tile size)")
    p.add_argument("--force", "-f", action="store_true", help="overwrite an existing output")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_engine_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        from .engine import BackendUnavailable

        model = _model(args.weights)
        if args.device is not None:
            _device(args.device)  # validates it, with a clear message

        try:
            r = upscale_video(
                args.input, args.output, args.scale, model,
                codec=args.codec, crf=None if args.crf == -1 else args.crf, pix_fmt=args.pix_fmt, preset=args.preset,
                batch=args.batch, device=args.device, backend=args.backend, dtype=_DTYPES.get(args.dtype),
                tile=args.tile, max_memory=None if args.max_memory is None else int(args.max_memory * 2**30),
                force=args.force, progress=not args.quiet,
            )
        except BackendUnavailable as e:
            raise VideoError(str(e)) from None
    except (VideoError, CliError) as e:
        print(f"vdsr-fast video: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vdsr-fast video: interrupted", file=sys.stderr)
        return 130
    (w, h), (W, H) = r["size_in"], r["size_out"]
    extra = f", copied {', '.join(r['copied_streams'])}" if r["copied_streams"] else ""
    print(f"{r['input']} ({w}x{h}) -> {r['output']} ({W}x{H}), {r['frames']} frames in {r['seconds']:.1f} s ({r['fps']:.2f} fps) on {r['device']}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

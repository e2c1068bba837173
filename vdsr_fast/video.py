"""``vdsr-fast video IN OUT --scale 2``: upscale a video with VDSR (PyAV for decoding and encoding).

Three threads joined by bounded queues, so decoding, the upscale and encoding overlap:

* the reader demuxes ``IN``, decodes the video stream (deinterlaced with ``--deinterlace``) and groups the
  frames in batches (``--batch``); packets of the audio and subtitle streams pass through untouched (text subtitles
  the output container cannot hold are rewritten, see :func:`upscale_video`);
* the upscaler copies each batch to the device and upscales it: in the yuv pipeline the frames' planes as they
  are (the network on the paper's Y computed from them, the chroma resized: :class:`_Planes`), in the rgb one
  :func:`vdsr_fast.upscale` on NHWC RGB frames (uint8, or uint16 when the input or the output has more than 8
  bits a sample; converted with the input's Y'CbCr matrix and range, which the output is encoded with and
  tagged with: :class:`_Colour`); then it starts the copy back into pinned host memory; on a GPU it does not
  wait for the result (a CUDA event marks it), so the next batch is queued while the encoder works on this one;
* the writer waits for each batch's event, encodes the frames (H.264 by default) with the decoded
  frames' timestamps and muxes them, together with the copied audio/subtitle packets, into a
  temporary file beside ``OUT``, renamed to ``OUT`` once complete (or straight into a stream: ``-`` for
  stdout, and ``-`` as ``IN`` reads stdin).

PyAV is an optional dependency (``pip install av``); it is imported only here, when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import queue
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch

from .cli import (
    _DTYPES,
    CliError,
    Terminated,
    _add_engine_args,
    _device,
    _model,
    add_memory_args,
    catch_sigterm,
    shown,
    size_arg,
)
from .images import folder_files, output_target

__all__ = ["main", "upscale_video", "VideoError"]

_END = object()  # end of stream marker on the queues


class VideoError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


# PyAV releases before 18 convert between Y'CbCr and RGB inconsistently (seen here with the _Colour round trip:
# 14-16 shift BT.709 colours by up to 4 levels and 16 garbles 16-bit RGB; 17 refuses BT.2020-tagged frames).
_MIN_AV = (18, 0)


def _import_av():
    try:
        import av
    except ImportError:
        raise VideoError("the video command needs PyAV: pip install 'av>=18'  (or pip install 'vdsr_fast[video]')") from None
    found = tuple(int(x) for x in re.findall(r"\d+", av.__version__)[:2])
    if found < _MIN_AV:
        raise VideoError(
            f"the video command needs PyAV 18 or newer (found {av.__version__}: older releases shift the colours of "
            "BT.709 video): pip install -U 'av>=18'"
        )
    return av


def _warn(message: str) -> None:
    print(f"vdsr-fast video: warning: {shown(message)}", file=sys.stderr)


# Text subtitle codecs whose packets carry the text itself, so they can be rewritten for another
# container: Matroska and most others take SubRip, MP4/MOV/3GP only take mov_text (3GPP timed text).
_TEXT_SUBTITLES = frozenset({"subrip", "srt", "ass", "ssa", "webvtt", "mov_text", "text"})
_SUBTITLE_TARGETS = ("mov_text", "subrip")
_ASS_OVERRIDE = re.compile(r"\{[^}]*\}")
_MARKUP = re.compile(r"<[^>]*>")


def _subtitle_text(codec: str, data: bytes) -> str:
    """The plain text of one text-subtitle packet."""
    if codec == "mov_text":  # 16-bit big-endian length, the UTF-8 text, then optional style boxes
        n = int.from_bytes(data[:2], "big") if len(data) >= 2 else 0
        return data[2 : 2 + n].decode("utf-8", "replace")
    text = data.decode("utf-8", "replace")
    if codec in ("ass", "ssa"):  # ReadOrder,Layer,Style,Name,MarginL,MarginR,MarginV,Effect,Text
        text = _ASS_OVERRIDE.sub("", text.split(",", 8)[-1])
        text = text.replace("\\N", "\n").replace("\\n", "\n").replace("\\h", " ")
    return text


def _convert_subtitle(src: str, dst: str, data: bytes) -> bytes | None:
    """Rewrite a ``src`` text-subtitle packet's payload as ``dst`` (mov_text or subrip); None if empty."""
    text = _subtitle_text(src, data)
    if dst == "mov_text":
        text = _MARKUP.sub("", text)  # SubRip/WebVTT <i>...</i> markup; mov_text keeps styles apart
    text = text.strip("\r\n")
    if not text:  # e.g. the empty samples MP4 muxers put between cues
        return None
    raw = text.encode("utf-8")
    if dst == "mov_text":
        raw = raw[:65535]
        return len(raw).to_bytes(2, "big") + raw
    return raw


def _subtitle_converter(av, src: str, dst: str):
    def convert(packet):
        data = _convert_subtitle(src, dst, bytes(packet))
        if data is None:
            return None
        out = av.Packet(data)
        out.pts, out.dts, out.duration, out.time_base = packet.pts, packet.dts, packet.duration, packet.time_base
        out.is_keyframe = True
        return out

    return convert


def _drop_empty_mov_text(packet):
    """mov_text packets minus the empty samples MP4 muxers put between cues (the output's muxer adds its own)."""
    return packet if len(_subtitle_text("mov_text", bytes(packet))) else None


def _copy_metadata(st, ost) -> None:
    """The stream's language, title and disposition (default, forced, hearing impaired, commentary...)."""
    ost.disposition = st.disposition
    md = st.metadata
    title = md.get("title") or md.get("name")  # MP4 calls the title "name"
    if md.get("language"):
        ost.metadata["language"] = md["language"]
    if title:
        ost.metadata["title"] = title


# Container metadata the output's muxer writes itself (MP4 brands, the muxing library).
_MUXER_KEYS = {"major_brand", "minor_version", "compatible_brands", "encoder"}


def _header_says(av, fmt: str, add) -> str | None:
    """Why FFmpeg cannot write the header of an ``fmt`` output in memory whose streams ``add(container)`` adds (the
    last error its log gives, else the exception's text), or None when it can."""
    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # the muxer and the encoder say why in their log, not in the error
    try:
        with av.logging.Capture() as logs:  # kept from stderr
            probe = av.open(io.BytesIO(), "w", format=fmt)
            try:
                add(probe)
                probe.start_encoding()
            except (av.error.FFmpegError, ValueError, NotImplementedError) as e:
                said = [f"[{name}] {text.strip()}" for lvl, name, text in logs if lvl <= av.logging.ERROR and text.strip()]
                return said[-1] if said else str(e).split("last error log: ")[-1]  # PyAV may append it to its error
            finally:
                with contextlib.suppress(av.error.FFmpegError, ValueError, NotImplementedError):
                    probe.close()
        return None
    finally:
        av.logging.set_level(level)


def _header_refuses(av, fmt: str, video, st) -> str | None:
    """Why the ``fmt`` muxer refuses to copy stream ``st`` beside the output's ``video`` stream, or None: some accept
    the stream and refuse its codec only when they write the header (MOV: FLAC and Opus; MPEG-PS, MXF and FLV:
    most audio), after the whole upscale. Tried on a header written to memory; None too when the muxer refuses the
    video stream alone there (Matroska wants the encoder's extradata), where nothing can be told."""
    def streams(*xs):
        return lambda probe: [probe.add_stream_from_template(x) for x in xs]

    return None if _header_says(av, fmt, streams(video)) is not None else _header_says(av, fmt, streams(video, st))


def _encoder_refuses(av, fmt: str, ostream, options: dict[str, str]) -> str | None:
    """Why FFmpeg cannot start the output's video stream (its encoder with these options, in this muxer), tried again
    in memory after the run failed there: its error named only the hidden temporary file or avcodec_open2, where the
    log says 'Unsupported codec id in stream 0' or 'invalid preset'. ``options``: the encoder's, as set (opening the
    encoder consumes the stream's)."""
    cc = ostream.codec_context

    def video(probe):
        s = probe.add_stream(cc.name, rate=ostream.average_rate or 25)
        s.width, s.height, s.pix_fmt, s.options = cc.width, cc.height, cc.pix_fmt, dict(options)
        if ostream.time_base is not None:
            s.time_base = s.codec_context.time_base = ostream.time_base

    return _header_says(av, fmt, video)


def _copy_stream(av, out, video, st):
    """Add an output stream for the audio/subtitle stream ``st``: ``(stream, converter, label)``, or None.

    The packets are copied as they are when the output container accepts the codec (beside ``video``, the
    output's video stream); a text subtitle it does not accept is rewritten as mov_text or SubRip (whichever the
    container takes); anything else is skipped with a warning on stderr naming the stream. The language and title
    tags are kept.
    """
    name = st.codec_context.name
    try:
        if (reason := _header_refuses(av, out.format.name, video, st)) is None:
            ost = out.add_stream_from_template(st)
    except (av.error.FFmpegError, ValueError) as e:
        reason = str(e)
    if reason is None:
        _copy_metadata(st, ost)
        layout = st.codec_context.layout if st.type == "audio" else None
        if layout is not None and layout.name == f"{layout.nb_channels} channels":  # no channel order (Matroska PCM)
            # the default one for so many channels, as ffmpeg guesses it: MP4's PCM refused an unordered layout when
            # the file was finished, after the whole upscale
            with contextlib.suppress(ValueError):  # none for that many channels
                ost.codec_context.layout = av.AudioLayout(f"{layout.nb_channels}c")
        return ost, _drop_empty_mov_text if name == "mov_text" else None, st.type
    if st.type == "subtitle" and name in _TEXT_SUBTITLES and not hasattr(out, "add_mux_stream"):
        reason += "; rewriting it for this container needs a PyAV with OutputContainer.add_mux_stream (18.x has it)"
    elif st.type == "subtitle" and name in _TEXT_SUBTITLES:
        supported = out.supported_codecs
        for target in _SUBTITLE_TARGETS:
            if target == name or target not in supported:
                continue
            try:
                ost = out.add_mux_stream(target)
            except (av.error.FFmpegError, ValueError):
                continue
            ost.time_base = st.time_base
            _copy_metadata(st, ost)
            return ost, _subtitle_converter(av, name, target), f"subtitle ({name} -> {target})"
        reason += f"; it holds none of {', '.join(_SUBTITLE_TARGETS)} either"
    _warn(f"not copying {st.type} stream #{st.index} ({name}) into {out.format.name}: {reason}")
    return None


class _Progress:
    """``upscale_video(progress=fn)``: ``fn(frames_done, frames_expected or None)`` after each batch is encoded (from
    the encoding thread), where a progress bar would move."""

    def __init__(self, fn, total: int | None) -> None:
        self.fn, self.total, self.n = fn, total, 0

    def update(self, k: int) -> None:
        self.n += k
        self.fn(self.n, self.total)

    def close(self) -> None:
        pass


class _Stopped(Exception):
    """Raised in a worker when another worker failed."""


class _Pipe:
    """Bounded queues between the three threads, with one shared failure flag."""

    def __init__(self, depth: int) -> None:
        self.decoded: queue.Queue = queue.Queue(depth)
        self.upscaled: queue.Queue = queue.Queue(depth)
        self.stop = threading.Event()
        # Set once the main thread holds every worker: until then a worker touches nothing. A Ctrl-C or SIGTERM while
        # they were being started left a started reader out of the list, decoding while the input was closed: a crash.
        self.go = threading.Event()
        self.error: BaseException | None = None
        self.frames = 0  # frames encoded so far
        # Packets written into the output so far. The muxer writes its header with the first, which is where it
        # refuses the codec (ogv: H.264); an encoder holds its first frames back (x264's lookahead), so without an
        # audio packet to write first, frames were encoded before the output failed to start.
        self.muxed = 0
        self.read_error: BaseException | None = None  # a demuxer error that ended the input early
        self.decode_errors = 0  # video packets the decoder rejected (skipped)
        self.decode_error: BaseException | None = None  # the last of them
        self.corrupt = 0  # packets the demuxer flagged as corrupt (e.g. cut short by the end of the file)
        self.end = 0.0  # the latest packet end time read from the input, in seconds
        self.gpu_spans: list = []  # (start, end) CUDA events around each batch's network work
        self.display_matrix: list[int] | None = None  # the first frame's rotation/flip (set before it is queued)
        self.hdr: dict[str, str] | None = None  # the first frame's HDR10 static metadata (see _hdr10)

    def gpu_busy_seconds(self) -> float | None:
        """GPU time spent upscaling (sum over batches, read once the run is over), None on a CPU."""
        if not self.gpu_spans:
            return None
        self.gpu_spans[-1][1].synchronize()
        return sum(a.elapsed_time(b) for a, b in self.gpu_spans) / 1e3

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


def _worker(pipe: _Pipe, fn, *args) -> threading.Event:
    """``fn(pipe, *args)`` in a thread, once ``pipe.go`` is set; the Event returned is set when it has returned. The
    main thread waits on these Events, never in ``Thread.join``: a Ctrl-C landing in a join with a timeout can mark
    a running thread as ended (CPython 3.10-3.12), and the containers were then closed under it (SIGABRT)."""
    done = threading.Event()

    def run():
        try:
            while not pipe.go.wait(0.05):  # the main thread holds every worker (or stopped before it did)
                if pipe.stop.is_set():
                    return
            fn(pipe, *args)
        except _Stopped:
            pass
        except BaseException as e:  # handed to the main thread
            pipe.fail(e)
        finally:
            done.set()

    threading.Thread(target=run, name=getattr(fn, "__name__", "worker"), daemon=True).start()
    return done


_INTERLACED = {2: "top field first", 3: "bottom field first", 4: "top field first, bottom coded first",
               5: "bottom field first, top coded first"}  # AVFieldOrder; 0 unknown, 1 progressive


class _Deinterlacer:
    """FFmpeg's bwdif filter, one progressive frame per input frame (``mode=send_frame``: the frame rate and the
    timestamps stay), each field order as the frame says; rebuilt when the frames change size or format."""

    def __init__(self, av) -> None:
        self.av, self.graph, self.key = av, None, None

    def _pull(self) -> list:
        out = []
        while True:
            try:
                out.append(self.graph.pull())
            except (self.av.error.BlockingIOError, self.av.error.EOFError, BlockingIOError, EOFError):
                return out

    def push(self, frame) -> list:
        key = (frame.width, frame.height, frame.format.name)
        out = self.flush() if self.graph is not None and key != self.key else []
        if self.graph is None:
            g = self.av.filter.Graph()
            src = g.add_buffer(width=frame.width, height=frame.height, format=frame.format, time_base=frame.time_base)
            bwdif, sink = g.add("bwdif", "mode=send_frame:parity=auto:deint=all"), g.add("buffersink")
            src.link_to(bwdif)
            bwdif.link_to(sink)
            g.configure()
            self.graph, self.key = g, key
        self.graph.push(frame)
        return out + self._pull()

    def flush(self) -> list:
        """The frames the filter still holds (it looks one frame ahead)."""
        if self.graph is None:
            return []
        self.graph.push(None)
        out, self.graph = self._pull(), None
        return out


def _reader(pipe: _Pipe, av, container, vstream, copied: set, batch: int, limit: float | None = None,
            deinterlace: bool = False) -> None:  # fmt: skip
    """Demux every stream (their end times tell a truncated input), decode the video, pass ``copied`` on.

    A damaged input is read as far as it goes: a video packet the decoder rejects is skipped, a demuxer
    error ends the input there (the decoder is drained); both are counted in ``pipe`` for a warning.
    ``limit`` (seconds on the input's clock): the video frames and copied packets that start before it, then
    stop (the demuxing goes on ``_LIMIT_SLACK_S`` past it for the other streams' packets stored later).
    """
    frames: list = []
    video_done = False
    deint = _Deinterlacer(av) if deinterlace else None

    def decoded(packet) -> list:
        try:
            return vstream.codec_context.decode(packet) if packet is None else packet.decode()
        except av.error.FFmpegError as e:
            pipe.decode_errors += 1
            pipe.decode_error = e
            return []

    first = True  # the first frame's side data (rotation, HDR10) is the stream's: passed on to the writer
    packets = container.demux()
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as e:
            pipe.read_error = e
            decoding = decoded(None)  # drain the frames the decoder still holds
        else:
            t = None
            if packet.pts is not None and (tb := packet.time_base):
                t = packet.pts * tb.numerator / tb.denominator
                pipe.end = max(pipe.end, t + (packet.duration or 0) * tb.numerator / tb.denominator)
            if limit is not None and t is not None:
                if video_done and t >= limit + _LIMIT_SLACK_S:
                    break
                if t >= limit and packet.stream.index != vstream.index:
                    continue  # video packets past it may still be references of frames before it: decoded
            index = packet.stream.index
            if packet.is_corrupt and (index == vstream.index or index in copied):
                pipe.corrupt += 1
            if index != vstream.index:
                if index in copied and packet.size:  # the demuxer's flush packets carry no data
                    pipe.put(pipe.decoded, ("packet", packet))
                continue
            if video_done:
                continue
            decoding = decoded(packet)
        if limit is not None:
            kept = [f for f in decoding if f.time is None or f.time < limit]
            video_done = video_done or len(kept) < len(decoding)
            decoding = kept
        for frame in decoding:
            if first:
                if (m := frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)) is not None:
                    pipe.display_matrix = np.frombuffer(bytes(m), dtype=np.int32, count=9).tolist()
                pipe.hdr = _hdr10(av, frame)
                first = False
            for f in deint.push(frame) if deint is not None else (frame,):
                frames.append(f)
                if len(frames) == batch:
                    pipe.put(pipe.decoded, ("frames", frames))
                    frames = []
        if pipe.read_error is not None:
            break
    frames += deint.flush() if deint is not None else []
    for i in range(0, len(frames), batch):
        pipe.put(pipe.decoded, ("frames", frames[i : i + batch]))
    pipe.put(pipe.decoded, _END)


_LIMIT_SLACK_S = 2.0  # --duration: how far past the limit to read the other streams' packets (interleaving)


def _hdr10(av, frame) -> dict[str, str] | None:
    """A frame's HDR10 static metadata in x264's and x265's option syntax: ``{"display": "G(x,y)B(x,y)R(x,y)WP(x,y)
    L(max,min)", "cll": "MaxCLL,MaxFALL"}`` (either may be missing), chromaticities in 1/50000, luminance in
    1/10000 cd/m2; None without any."""
    kinds = av.sidedata.sidedata.Type
    out = {}
    if (md := frame.side_data.get(kinds.MASTERING_DISPLAY_METADATA)) is not None:
        v = np.frombuffer(bytes(md), dtype=np.int32, count=22)  # AVMasteringDisplayMetadata: rationals, 2 flags
        q = [v[2 * i] / v[2 * i + 1] if v[2 * i + 1] else 0.0 for i in range(10)]  # R G B WP (x, y); min, max
        if v[20] and v[21]:  # has_primaries, has_luminance
            xy = [round(c * 50000) for c in q[:8]]
            out["display"] = (f"G({xy[2]},{xy[3]})B({xy[4]},{xy[5]})R({xy[0]},{xy[1]})WP({xy[6]},{xy[7]})"
                              f"L({round(q[9] * 10000)},{round(q[8] * 10000)})")  # fmt: skip
    if (cll := frame.side_data.get(kinds.CONTENT_LIGHT_LEVEL)) is not None:
        max_cll, max_fall = np.frombuffer(bytes(cll), dtype=np.uint32, count=2).tolist()
        out["cll"] = f"{max_cll},{max_fall}"
    return out or None


def _hdr10_options(codec: str, hdr: dict[str, str]) -> dict[str, str] | None:
    """Encoder options that write ``hdr`` (see :func:`_hdr10`) into the stream: x265's and x264's own; None for
    other encoders (they get no HDR10 SEI from here)."""
    if codec == "libx265":
        keys, name = {"display": "master-display", "cll": "max-cll"}, "x265-params"
    elif codec == "libx264":
        keys, name = {"display": "mastering-display", "cll": "cll"}, "x264-params"
    else:
        return None
    return {name: ":".join(f"{keys[k]}={v}" for k, v in hdr.items())}


def _upscaler(pipe: _Pipe, size: tuple[int, int], model, device: torch.device, kw: dict, colour: _Colour) -> None:
    from .api import upscale

    cuda = device.type == "cuda"
    stream = torch.cuda.Stream(device) if cuda else None
    while (item := pipe.get(pipe.decoded)) is not _END:
        kind, payload = item
        if kind == "packet":
            pipe.put(pipe.upscaled, item)
            continue
        meta = [(f.pts, f.time_base) for f in payload]
        if isinstance(colour, _Planes):  # one tensor per plane, (N, 1, h, w)
            host = [torch.from_numpy(np.stack(q)[:, None]) for q in zip(*(colour.to_planes(f) for f in payload))]
            run = lambda xs: colour.upscale(xs, model, size, kw)  # noqa: E731
        else:  # one RGB(A) batch, (N, H, W, C)
            host = [torch.from_numpy(np.stack([colour.to_rgb(f) for f in payload]))]
            run = lambda xs: [upscale(xs[0], model=model, size=size, layout="NHWC", **kw)]  # noqa: E731
        if not cuda:
            pipe.put(pipe.upscaled, ("frames", ([y.numpy() for y in run(host)], None, meta)))
            continue
        with torch.cuda.stream(stream):
            xs = [x.pin_memory().to(device, non_blocking=True) for x in host]
            span = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            span[0].record(stream)
            ys = run(xs)
            span[1].record(stream)
            pipe.gpu_spans.append(span)
            back = [torch.empty(y.shape, dtype=y.dtype, pin_memory=True).copy_(y, non_blocking=True) for y in ys]
            done = torch.cuda.Event()
            done.record(stream)
        pipe.put(pipe.upscaled, ("frames", (back, done, meta)))
    pipe.put(pipe.upscaled, _END)


def _writer(pipe: _Pipe, av, out_container, ostream, stream_map: dict, progress, colour: _Colour,
            cfr: Fraction | None = None, period: Fraction = Fraction(1, 25)) -> None:
    """Encode and mux; ``cfr``: each frame is put on this time base's grid, at the tick nearest its time (a muxer of
    constant frame rate: y4m and AVI state the rate as their time base). Frames without a timestamp (an elementary
    stream such as raw .h264 has none) are ``period`` (the frame rate's) apart, as ffmpeg stamps them. A timestamp at
    or before the previous frame's (a screen recorder's, a broken capture's) is moved one tick after it: the MP4
    muxer refuses it, and only when the encoder flushes, at the end of the run."""
    index, last, moved = 0, -1, 0
    while (item := pipe.get(pipe.upscaled)) is not _END:
        kind, payload = item
        if kind == "packet":
            ostream_copy, convert = stream_map[payload.stream.index]
            if convert is not None and (payload := convert(payload)) is None:
                continue
            payload.stream = ostream_copy
            out_container.mux(payload)
            pipe.muxed += 1
            continue
        arrs, done, meta = payload
        if done is not None:
            done.synchronize()
            arrs = [a.numpy() for a in arrs]
        if index == 0:  # the reader set these before it queued the first frame; the encoder opens at the first one
            if pipe.display_matrix is not None:
                # A phone's rotation (or a mirror) is a display matrix on the stream: kept, so the output is not
                # shown sideways.
                ostream.set_display_matrix(pipe.display_matrix)
            if pipe.hdr is not None:  # HDR10 mastering display and light levels
                if (opts := _hdr10_options(ostream.codec_context.name, pipe.hdr)) is not None:
                    ostream.options = {**ostream.options, **opts}
                else:
                    _warn(f"the input's HDR10 metadata ({', '.join(pipe.hdr)}) is not carried: only libx264 and libx265 "
                          "are told it here (the transfer and primaries tags are kept)")  # fmt: skip
        for i, (pts, time_base) in enumerate(meta):
            if isinstance(colour, _Planes):
                frame = colour.from_planes(av, [a[i, 0] for a in arrs])
            else:
                frame = colour.from_rgb(av, arrs[0][i])
            if pts is None or time_base is None:
                pts, time_base = index, period
            if cfr is not None:
                pts, time_base = max(last + 1, round(pts * time_base / cfr)), cfr
            elif pts <= last:
                pts, moved = last + 1, moved + 1
            frame.pts, frame.time_base = pts, time_base
            last = pts
            packets = ostream.encode(frame)
            out_container.mux(packets)
            pipe.muxed += len(packets)
            index += 1
            pipe.frames += 1
        progress.update(len(meta))
    out_container.mux(ostream.encode(None))
    if moved:
        _warn(f"{moved} frame(s) had a timestamp at or before the previous frame's: each was moved one tick "
              f"({ostream.codec_context.time_base} s) after it, every frame kept")


def _is_stream(x) -> bool:
    """A binary file object (a pipe such as ``sys.stdin.buffer``, a socket's file, ``io.BytesIO``), not a path."""
    return hasattr(x, "read") or hasattr(x, "write")


def _open_input(av, src, label: str):
    if not _is_stream(src):
        if not src.exists():
            raise VideoError(f"{src}: no such file")
        if src.is_dir():
            raise VideoError(f"{src} is a folder, not a video")
    try:
        container = av.open(src if _is_stream(src) else str(src), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"cannot read {label} as a video: {e}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"cannot read {label} as a video: it has no video stream")
    return container


# Muxers whose default codec is not libx264: those that hold only uncompressed frames (y4m, raw planes), and those
# that refuse H.264 (WebM and IVF: VP8, VP9 and AV1 only).
_DEFAULT_CODECS = {"yuv4mpegpipe": "rawvideo", "rawvideo": "rawvideo", "webm": "libvpx-vp9", "ivf": "libvpx-vp9"}
# The MP4 family's muxers write their index after the frames and seek back to it: to a pipe they write fragments.
_MOV_MUXERS = frozenset({"mp4", "mov", "ipod", "ismv", "3gp", "3g2", "psp", "f4v"})
_FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+delay_moov+default_base_moof"}  # delay_moov: an edit list, timestamps kept
_ATTACHMENT_MUXERS = frozenset({"matroska"})  # MP4 refuses attachments, WebM drops them silently


@contextlib.contextmanager
def _closed_after(av, container, what: str):
    """Close ``container`` (its trailer written) after the block. When the block failed, a failure to close too
    (e.g. into a pipe its reader closed) is dropped: the block's error says what went wrong."""
    try:
        yield container
    except BaseException:
        with contextlib.suppress(Exception):
            container.close()
        raise
    try:
        container.close()
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"{what}: {e}") from e


def _check_muxer(av, name: str) -> None:
    try:
        av.format.ContainerFormat(name, "w")
    except ValueError:
        raise VideoError(f"{name!r} is not a container format FFmpeg can write (e.g. nut, matroska, mp4, mpegts, "
                         "yuv4mpegpipe; `ffmpeg -muxers` lists them)") from None  # fmt: skip


def _constant_rate(av, fmt) -> bool:
    """Whether the muxer ``fmt`` stores a constant frame rate, its stream's time base the frame period (FFmpeg's rule
    for ffmpeg's default -fps_mode: neither variable_fps nor no_timestamps: AVI, y4m, MPEG-PS, Ogg, IVF...); in
    a time base such as Matroska's 1/1000 AVI announced 1000 frames a second and stored an empty frame a tick."""
    flags = av.format.Flags
    return not fmt.flags & (flags.variable_fps.value | flags.no_timestamps.value)


def _needs_frame_period(ostream, vin) -> bool:
    """Whether the encoder takes only the frame period as its time base, as ffmpeg gives every encoder: MPEG-1/2
    (a standard frame rate) and MPEG-4 part 2 (a denominator up to 65535). The input's time base (MP4's 1/12800,
    MPEG-TS's 1/90000, Matroska's 1/1000) failed to open them into any container of variable frame rate."""
    name = ostream.codec_context.name
    return name in ("mpeg1video", "mpeg2video") or (name == "mpeg4" and (vin.time_base or Fraction(1)).denominator > 65535)


def _default_codec(av, muxer: str | None, suffix: str) -> str:
    """libx264, or rawvideo for a muxer of uncompressed frames, libvpx-vp9 for WebM (``muxer``, or else the one of
    the file suffix)."""
    if muxer is None:
        ext = suffix.lstrip(".").lower()
        muxer = next((m for m in _DEFAULT_CODECS if ext in av.format.ContainerFormat(m, "w").extensions), None)
    return _DEFAULT_CODECS.get(muxer, "libx264")


def _tag(st, key: str) -> str | None:
    """A stream's metadata tag, case-insensitively (Matroska's tags are upper case)."""
    return next((v for k, v in st.metadata.items() if k.lower() == key), None)


def _timecode(container, vin) -> str | None:
    """The input's start timecode (e.g. 01:00:00:00): the video stream's tag, or a timecode track's (MOV/MP4 tmcd)."""
    return next((tc for st in (vin, *container.streams.data) if (tc := _tag(st, "timecode")) is not None), None)


def _chapters(chapters: list[dict], limit: float | None, shift: float = 0.0) -> list[dict]:
    """The input's chapters (start, end, title...) for the output: those that start before ``limit`` (seconds on
    the input's clock, ``--duration``), the last one ending there; ``shift`` seconds earlier, as the streams are
    (the output starts at 0)."""
    kept = []
    for c in chapters:
        tb = c["time_base"]
        if limit is None or c["start"] * tb < limit:
            end = c["end"] if limit is None else min(c["end"], round(limit / tb))
            kept.append({**c, "start": max(0, c["start"] - round(shift / tb)), "end": max(0, end - round(shift / tb))})
    return kept


def _main_video(av, container):
    """The video stream to upscale: FFmpeg's choice (``av_find_best_stream``: not an attached picture, then the
    largest), as ffmpeg itself picks it; a cover picture stored as the first track is not the video."""
    return container.streams.best("video") or container.streams.video[0]


def _warn_dropped(av, src: str, container, vin, chapters: int, attachments: bool) -> None:
    """One warning per stream the output will not hold: other video streams (a cover picture, a second angle),
    data streams (timecode, GPS) and, unless ``attachments`` (the output is Matroska), attachments; audio and
    subtitles are copied, and so are the ``chapters`` (an MP4's chapter list is a text track too, which the
    output's muxer writes anew)."""
    pic = av.stream.Disposition.attached_pic
    for st in container.streams:
        if st.index == vin.index or st.type in ("audio", "subtitle") or (attachments and st.type == "attachment"):
            continue
        if st.type == "attachment":
            _warn(f"{src}: not copying attachment #{st.index} ({st.name}, {st.mimetype}): only Matroska (.mkv) holds "
                  "attachments")  # fmt: skip
            continue
        if st.type == "data" and chapters and container.format.name.startswith("mov") and st.frames == chapters:
            continue  # the chapter track
        if st.type == "data" and _tag(st, "timecode") is not None:
            continue  # a timecode track: its start time goes on the video stream (see _timecode)
        what = "cover picture" if st.type == "video" and st.disposition & pic else f"{st.type} stream"
        name = st.codec_context.name if st.codec_context is not None else "?"
        _warn(f"{src}: not copying {what} #{st.index} ({name}): only the upscaled video, audio and subtitles are written")


class _Format(NamedTuple):
    step_x: int  # chroma sampled every step_x x step_y pixels: an encoder refuses other multiples of width/height
    step_y: int
    bits: int  # per sample
    rgb: bool
    alpha: bool


def _format_info(pix_fmt: str) -> _Format:
    """What the pipeline needs to know of ``pix_fmt``: yuv420p (2, 2, 8, False, False), yuv444p10le (1, 1, 10, ...),
    gbrp (1, 1, 8, True, False), yuva420p (2, 2, 8, False, True)."""
    from av.video.format import VideoFormat

    try:
        fmt = VideoFormat(pix_fmt, 16, 16)
    except ValueError:
        raise VideoError(f"--pix-fmt {pix_fmt!r} is not a pixel format FFmpeg knows (e.g. yuv420p, yuv444p, yuv420p10le)") from None
    comps = fmt.components
    chroma = [c for c in comps if c.is_chroma]
    steps = (16 // min(c.width for c in chroma), 16 // min(c.height for c in chroma)) if chroma else (1, 1)
    return _Format(*steps, max(c.bits for c in comps), bool(fmt.is_rgb), len(comps) == 4)  # 4: colour + alpha


def _output_format(codec: str, pix_fmt: str | None, bits: int, alpha_input: bool) -> str:
    """The pixel format to encode: ``pix_fmt`` if the codec takes it (else a clear error). By default 4:2:0 at the
    input's depth (``bits``; yuv420p, yuv420p10le, yuv420p12le...), or the codec's nearest deeper one, or its deepest
    (libvpx-vp9 here: 8 bits; the caller warns), with alpha (yuva420p...) when the input has it and the codec can keep
    it, or the codec's first such format when it takes neither (e.g. prores_ks: yuv422p10le; qtrle with alpha: argb)."""
    import av

    try:
        formats = [f.name for f in (av.Codec(codec, "w").video_formats or ())]
    except (av.error.FFmpegError, ValueError) as e:  # an unknown name: UnknownCodecError, a ValueError
        raise VideoError(f"unknown or unavailable codec {codec!r}: {e}") from None
    if pix_fmt is not None:
        if formats and pix_fmt not in formats:
            raise VideoError(f"{codec} cannot encode --pix-fmt {pix_fmt}; it takes {', '.join(formats)}")
        return pix_fmt
    if not formats:  # a codec that lists none (rawvideo): 4:2:0 at the nearest depth FFmpeg has from the input's up
        depth = next((d for d in (8, 9, 10, 12, 14, 16) if d >= bits), 16)
        return ("yuva420p" if alpha_input else "yuv420p") + (f"{depth}le" if depth > 8 else "")

    def at_depth(base: str) -> list[str]:  # base's depths the codec takes: the input's or the nearest deeper first
        depths = {f: _format_info(f).bits for f in formats if re.fullmatch(base + r"(\d+le)?", f)}
        return sorted(depths, key=lambda f: (depths[f] < bits, abs(depths[f] - bits)))

    with_alpha = (at_depth("yuva420p") or [f for f in formats if _format_info(f).alpha]) if alpha_input else []
    return (with_alpha or at_depth("yuv420p") or formats)[0]


# The stream's matrix tag (AVColorSpace) -> swscale's number for it (SWS_CS_*: PyAV's Colorspace, whose names differ
# between releases); untagged: the matrix players guess from the size (mpv's and VLC's rule: BT.709 from 1280 wide
# or more than 576 tall, else BT.601), anything else: BT.601, swscale's default. The output is tagged with the
# matrix taken, so that a player does not guess another one for the larger size.
_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}  # BT.709, FCC, BT.601 (BT470BG, SMPTE 170M), SMPTE 240M, BT.2020
_MATRIX_TAG = {1: 1, 4: 4, 5: 6, 7: 7, 9: 9}
_UNSPECIFIED = (2, 3)  # AVCOL_SPC_UNSPECIFIED, AVCOL_SPC_RESERVED


def _matrix(ctx) -> int:
    tag = int(ctx.colorspace if ctx.colorspace is not None else 2)
    if tag in _UNSPECIFIED:
        return 1 if ctx.width >= 1280 or ctx.height > 576 else 5
    return _MATRIX.get(tag, 5)


class _Colour:
    """How frames cross between the codecs' Y'CbCr and :func:`vdsr_fast.upscale`'s RGB.

    Both ways with the input's matrix and range, explicitly (PyAV decodes with the frame's tags but encodes an
    RGB frame with swscale's defaults, BT.601 limited range: a BT.709 or full-range input came out with shifted
    colours); the output is tagged with that matrix and range and the input's primaries and transfer, which
    nothing here converts. RGB frames have 16 bits a channel (rgb48le, uint16) when the input or the output has
    more than 8 bits a sample, else 8 (rgb24); with alpha (rgba64le, rgba: upscale() resizes it bicubically) when
    both the input and the output format have it.
    """

    def __init__(self, ctx, pix_fmt: str, deep: bool, rgb_out: bool, alpha: bool) -> None:
        self.size = (ctx.width, ctx.height)  # frames of another size (a stream that changes size) are resized to it
        self.resized = 0
        self.matrix = _matrix(ctx)
        self.range = int(ctx.color_range or 0) or 1  # 1 = MPEG (limited), 2 = JPEG (full); untagged: limited
        self.tags = (int(ctx.color_primaries or 2), int(ctx.color_trc or 2))  # 2 = unspecified
        self.pix_fmt, self.rgb_out = pix_fmt, rgb_out
        self.rgb = ("rgba64le" if deep else "rgba") if alpha else ("rgb48le" if deep else "rgb24")
        self.deep = deep

    def _swscale(self, frame=None) -> dict:
        """swscale's arguments: for 8-bit RGB, rounded and with the chroma interpolated at full resolution (its
        default 8-bit YUV -> RGB path truncates: textured BT.601 frames came back ~1.1 luma levels darker from the
        round trip, with these flags 0.005); 16-bit RGB keeps the default (its bias measured 0.26 of a 10-bit level;
        with full-resolution chroma swscale returned garbage there). For a decoded ``frame`` of another size than
        the first, a resize (bicubic) to it, as FFmpeg's own tools do (one size for the whole output)."""
        from av.video.reformatter import Interpolation as I  # noqa: E741, N817

        # threads=0: swscale on every core (a 1080p RGB -> YUV frame took 5.7 ms on one core, 4.5 on two)
        flags = I.BILINEAR if self.deep else I.BILINEAR | I.ACCURATE_RND | I.FULL_CHR_H_INT | I.FULL_CHR_H_INP
        kw = {"threads": 0, "interpolation": flags}
        if frame is not None and (frame.width, frame.height) != self.size:
            if not self.resized:
                _warn(f"the video changes size mid-stream ({self.size[0]}x{self.size[1]} -> {frame.width}x{frame.height}): "
                      "such frames are resized (bicubic) to the first size")  # fmt: skip
            self.resized += 1
            kw.update(width=self.size[0], height=self.size[1], interpolation=kw["interpolation"] & ~I.BILINEAR | I.BICUBIC)
        return kw

    def to_rgb(self, frame) -> np.ndarray:
        return frame.to_ndarray(format=self.rgb, src_colorspace=self.matrix, src_color_range=self.range, **self._swscale(frame))

    def from_rgb(self, av, rgb: np.ndarray):
        frame = av.VideoFrame.from_ndarray(rgb, format=self.rgb)
        if self.rgb_out:  # gbrp and the like: the encoder repacks the planes, no matrix
            return frame
        return frame.reformat(format=self.pix_fmt, dst_colorspace=self.matrix, dst_color_range=self.range, **self._swscale())

    def tag(self, ctx) -> None:
        ctx.color_primaries, ctx.color_trc = self.tags
        if not self.rgb_out:
            ctx.colorspace, ctx.color_range = _MATRIX_TAG[self.matrix], self.range


_MATRIX_NAME = {1: "bt709", 4: "fcc", 5: "bt601", 7: "smpte240m", 9: "bt2020"}  # _MATRIX's -> upscale_yuv's


class _Planes(_Colour):
    """The ``yuv`` pipeline: no RGB at all. The frames are upscaled in the input's pixel format by
    :func:`vdsr_fast.yuv.upscale_yuv` in its matrix and range (alpha resized like the chroma); an output format
    of other chroma subsampling (same depth) is then swscale's YUV -> YUV repacking, which keeps the luma."""

    def __init__(self, ctx, pix_fmt: str, out_size: tuple[int, int]) -> None:
        import av

        self.bits = _format_info(ctx.pix_fmt).bits
        super().__init__(ctx, pix_fmt, self.bits > 8, False, False)
        self.planar = ctx.pix_fmt  # the planes' format: the input's
        self.max = (1 << self.bits) - 1
        self.np_dtype, self.dtype = (np.uint8, torch.uint8) if self.bits == 8 else (np.uint16, torch.uint16)
        self.colour_planes = 1 if self.planar.startswith("gray") else 3  # then alpha, if any
        self.out_size = out_size  # (W, H)
        self.out_planes = [(q.height, q.width) for q in av.VideoFrame(*out_size, self.planar).planes]

    def _view(self, plane) -> np.ndarray:
        return np.frombuffer(plane, self.np_dtype).reshape(plane.height, -1)[:, : plane.width]

    def to_planes(self, frame) -> list[np.ndarray]:
        if (frame.width, frame.height) != self.size or frame.format.name != self.planar:
            frame = frame.reformat(format=self.planar, **self._swscale(frame))
        return [self._view(q).copy() for q in frame.planes]

    def upscale(self, planes: list[torch.Tensor], model, size: tuple[int, int], kw: dict) -> list[torch.Tensor]:
        """``planes``: each ``(N, 1, h, w)`` integer samples; the output frame's planes, same dtype."""
        from .imaging import imresize
        from .yuv import _round_levels, upscale_yuv

        n = self.colour_planes
        outs = list(upscale_yuv(*planes[:n], model=model, size=size, matrix=_MATRIX_NAME[self.matrix],
                                full_range=self.range == 2, bits=self.bits,
                                chroma_size=self.out_planes[1] if n == 3 else None, **kw))  # fmt: skip
        m = float(self.max)
        for q, hw in zip(planes[n:], self.out_planes[n:]):  # alpha
            outs.append(_round_levels(imresize(q.float() / m, size=hw) * m, m).to(self.dtype))
        return outs

    def from_planes(self, av, planes: list[np.ndarray]):
        frame = av.VideoFrame(*self.out_size, self.planar)
        for q, a in zip(frame.planes, planes, strict=True):
            self._view(q)[:] = a
        return frame if self.pix_fmt == self.planar else frame.reformat(format=self.pix_fmt, **self._swscale())


# Pixel formats the yuv pipeline reads and writes as they are: one plane per component, little-endian integers.
_PLANAR = re.compile(r"(?:yuva?|yuvj)(?:420|422|440|444|411|410)p(?:(?:9|10|12|14|16)le)?|gray(?:(?:9|10|12|14|16)le)?")


def _repackable(src: str, dst: str) -> bool:
    """Whether swscale turns planar ``src`` into ``dst`` leaving the luma as it is: planar YUV both, the same depth,
    studio range (not FFmpeg's full-range yuvj formats, nor gray, whose conversions rescale the luma)."""
    yuv = [_PLANAR.fullmatch(f) and f.startswith("yuv") and not f.startswith("yuvj") for f in (src, dst)]
    return all(yuv) and _format_info(src).bits == _format_info(dst).bits and _format_info(src).alpha == _format_info(dst).alpha


def _pipeline(choice: str, ctx, pix_fmt: str, fused_color: bool) -> str:
    """``yuv`` or ``rgb`` for ``--pipeline choice``: auto takes yuv where the frames can stay planar Y'CbCr (one plane
    per component in, the output's format the input's or the same with other chroma subsampling, no
    ``fused_color``), else rgb."""
    why = None
    if ctx.pix_fmt is None or not _PLANAR.fullmatch(ctx.pix_fmt):
        why = f"the input's pixel format {ctx.pix_fmt} is not one plane per component (yuv420p, yuv422p10le, gray...)"
    elif pix_fmt != ctx.pix_fmt and not _repackable(ctx.pix_fmt, pix_fmt):
        why = (f"the output's pixel format {pix_fmt} is not the input's {ctx.pix_fmt} with other chroma subsampling "
               f"(--pix-fmt {ctx.pix_fmt})")
    elif fused_color:
        why = "--fused-color is the rgb pipeline's"
    if choice == "yuv" and why is not None:
        raise VideoError(f"--pipeline yuv: {why}")
    return "rgb" if choice == "rgb" or why is not None else "yuv"


def _damage_report(pipe: _Pipe, frames: int, expected: int, start: float, duration: float | None, rate: Fraction) -> str | None:
    """Why the input looks truncated or damaged (None when it does not).

    ``expected``: the frame count the container stores (0 if none); ``start``, ``duration``: the
    container's, in seconds.
    """
    why = []
    if pipe.read_error is not None:
        why.append(f"reading stopped early: {pipe.read_error}")
    if pipe.decode_errors:
        why.append(f"{pipe.decode_errors} undecodable video packet(s) skipped (last: {pipe.decode_error})")
    if pipe.corrupt:
        why.append(f"{pipe.corrupt} packet(s) flagged corrupt by the demuxer")
    if expected and frames < expected - max(1, expected // 100):
        why.append(f"{frames} of the {expected} video frames it announces decoded")
    if duration and pipe.end - start < duration - max(2 / float(rate), 0.02 * duration):
        why.append(f"its streams end after {pipe.end - start:.2f} s of the {duration:.2f} s the container announces")
    if not why:
        return None
    return "; ".join(why) + f"; the output holds the {frames} frame(s) that could be decoded"


def upscale_video(
    src: str | os.PathLike | BinaryIO,
    dst: str | os.PathLike | BinaryIO,
    scale: float = 2,
    model=None,
    *,
    size: tuple[int, int] | None = None,
    codec: str | None = None,
    format: str | None = None,
    crf: int | None = 18,
    pix_fmt: str | None = None,
    preset: str | None = None,
    batch: int = 4,
    device: str | torch.device | None = None,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
    tile: int | None = None,
    max_memory: int | str | None = None,
    force: bool = False,
    progress: bool | Callable[[int, int | None], None] = True,
    tune: bool = False,
    fused_color: bool = False,
    duration: float | None = None,
    deinterlace: bool = False,
    pipeline: str = "auto",
) -> dict:
    """Upscale the video ``src`` into ``dst``; returns a summary (frames, seconds, fps, sizes, streams,
    and on a GPU ``gpu_busy_fraction``: the share of the wall time the GPU spent upscaling).

    The video stream (FFmpeg's best: not a cover picture, the largest) is upscaled, audio and subtitle streams are copied, and so are the
    chapters and, into Matroska, the attachments (e.g. the fonts of ASS subtitles); frame timestamps are kept (less the
    input's start time, in every stream and the chapters: the output starts at 0, as ffmpeg's does), and so are the rotation (display matrix), the sample aspect ratio, the video stream's language and
    title, the container's tags and, with libx264 or libx265, HDR10 mastering-display and light-level metadata
    (other encoders: a warning). The output is written to a hidden temporary file beside ``dst`` and renamed to ``dst`` only
    once complete: on any error neither ``dst`` nor the temporary file is left behind.

    ``src`` and ``dst`` may also be binary file objects, e.g. ``sys.stdin.buffer`` and ``sys.stdout.buffer`` in a
    pipeline of FFmpeg processes (``vdsr-fast video - -``): the input's container is probed from its first bytes,
    the output's must be named with ``format`` (an FFmpeg muxer: ``nut`` and ``matroska`` carry any codec,
    ``yuv4mpegpipe`` uncompressed frames; ``mp4``/``mov`` to a stream that cannot seek are written fragmented). A
    stream is written as the frames come; after an error it holds what was written. ``format`` also overrides a
    file's suffix. ``codec`` defaults to libx264, to libvpx-vp9 for WebM and IVF (no H.264 there), or to rawvideo where
    the muxer holds only uncompressed frames (``yuv4mpegpipe``, ``rawvideo``; the suffixes .y4m, .yuv, .rgb).

    Streams the output container cannot hold (its muxer refuses the codec):

    * a text subtitle (SubRip, ASS/SSA, WebVTT, mov_text) is rewritten, cue by cue with the same
      timestamps, as mov_text (MP4, MOV, 3GP) or SubRip (Matroska and the like), as plain text: ASS
      styling and SubRip/WebVTT markup are dropped; the summary's ``copied_streams`` says
      ``"subtitle (srt -> mov_text)"``;
    * any other stream (a bitmap subtitle such as DVD/PGS, an audio codec the container refuses) is
      skipped with a warning on stderr naming the stream (``not copying subtitle stream #2 ...``).

    A truncated or damaged input is upscaled as far as it decodes: video packets the decoder rejects
    are skipped, a demuxer error ends the input there, and when that happened, or the streams end
    noticeably before the duration the container announces (a file cut short), a warning on stderr
    says so (``... looks truncated or damaged ...``) and the summary's ``damaged`` holds the reason;
    the output is a complete, playable file of the frames that could be decoded. An input that cannot
    be opened at all (e.g. an MP4 cut before its index, the ``moov`` atom at its end), has no video
    stream or yields no video frame is an error.

    Colours cross to RGB and back with the input's Y'CbCr matrix and range, which the output is tagged with
    (:class:`_Colour`; untagged: limited range, BT.709 from 1280 wide or more than 576 tall, else BT.601, as players
    guess). ``pix_fmt`` (the encoded pixel format) defaults to the input's depth in 4:2:0:
    ``yuv420p``, ``yuv420p10le``, ``yuv420p12le``... (above 8 bits the frames cross as 16-bit RGB), or the
    codec's nearest deeper such format, or its deepest with a warning, with alpha (``yuva420p``...) for an input with alpha when the codec can keep it, or the codec's first
    such format when it takes neither. Alpha is upscaled bicubically; a codec that cannot keep it drops it, with a
    warning.

    ``pipeline``: ``"yuv"`` (no RGB; see :class:`_Planes`), ``"rgb"`` (the image pipeline frame by frame) or
    ``"auto"``: yuv where the frames can stay planar Y'CbCr (see :func:`_pipeline`).

    ``progress``: a bar over the frames on stderr (True), none (False), or a function called as
    ``progress(frames_done, frames_expected)`` after each batch is encoded (``frames_expected`` None when the input
    does not say), from the encoding thread.

    ``deinterlace``: an interlaced input goes through FFmpeg's bwdif filter first (one progressive frame per frame,
    the timestamps kept); without it, an input whose stream says it is interlaced is upscaled as it is, with a
    warning.

    ``scale`` (2, 3, 4 or any factor from 1 to 4, e.g. 1.5 for 720p -> 1080p) or ``size`` ((width, height), as
    video sizes are written, which replaces ``scale`` when given; the factors may differ: the sample aspect ratio then changes so the picture keeps
    its shape on screen) and ``backend``, ``dtype``, ``tile``, ``max_memory``, ``tune`` and ``fused_color`` are
    :func:`vdsr_fast.upscale`'s.

    Raises :class:`VideoError` for a missing or unreadable input, ``dst`` naming ``src`` (even with ``force``), an
    existing ``dst`` without ``force``, an output folder that does not exist or cannot be written, an unknown ``pix_fmt`` or an
    output size it cannot hold (an odd width or height in yuv420p: use yuv444p), or an encoder that
    cannot be opened; all but the last before anything is written.
    """
    av = _import_av()
    from tqdm import tqdm

    from .api import _default, output_plan

    src_stream, dst_stream = _is_stream(src), _is_stream(dst)
    src, dst = (x if _is_stream(x) else Path(x) for x in (src, dst))
    src_label = getattr(src, "name", "the input stream") if src_stream else str(src)
    dst_label = getattr(dst, "name", "the output stream") if dst_stream else str(dst)
    if size is None:
        output_plan(16, 16, scale)  # a scale out of range: an error before anything is opened
    if batch < 1:
        raise VideoError(f"--batch must be >= 1, got {batch}")
    if pipeline not in ("auto", "yuv", "rgb"):
        raise VideoError(f"pipeline must be 'auto', 'yuv' or 'rgb', got {pipeline!r}")
    if format is not None:
        _check_muxer(av, format)
    if dst_stream:
        if format is None:
            raise VideoError("writing to a stream needs its container format (--format), e.g. nut, matroska, mpegts, "
                             "mp4 or yuv4mpegpipe")  # fmt: skip
    else:
        if dst.is_dir():
            raise VideoError(f"{dst} is a folder; give the output video's file name")
        if not src_stream and dst.resolve() == src.resolve():  # even with force: the input is read while written
            raise VideoError(f"{src} would be overwritten by its own upscale: give another output")
        if dst.exists() and not force:
            raise VideoError(f"{dst} exists; pass --force to overwrite it")
        if not dst.parent.is_dir():
            what = "is not a folder" if dst.parent.exists() else "output folder does not exist"
            raise VideoError(f"{dst.parent}: {what}")
        if not dst.suffix and format is None:
            raise VideoError(f"{dst}: give the output a container suffix (.mp4, .mkv, .mov...) or a --format")
    if codec is None:
        codec = _default_codec(av, format, "" if dst_stream else dst.suffix)
    if pix_fmt is not None:
        _format_info(pix_fmt)  # an unknown name: an error before the input is opened
    if duration is not None and not (isinstance(duration, (int, float)) and 0 < duration < float("inf")):
        raise VideoError(f"duration must be a positive number of seconds, got {duration!r}")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if fused_color:
        from .engine import _why_unavailable

        if why := _why_unavailable("triton", device):
            raise VideoError(f"--fused-color needs Triton on {device}: {why}")
    model = _default() if model is None else model
    kw = {"backend": backend, "dtype": dtype, "tile": tile, "max_memory": max_memory, "tune": tune}

    inp = _open_input(av, src, src_label)
    vin = _main_video(av, inp)
    try:
        ctx = vin.codec_context
        w, h = ctx.width, ctx.height
        if w <= 0 or h <= 0:  # e.g. a PNG's first bytes: FFmpeg opens them as a 0x0 video stream; nothing to upscale
            raise VideoError(f"cannot read {src_label} as a video: its video stream has no picture size ({w}x{h})")
        fin = _format_info(ctx.pix_fmt) if ctx.pix_fmt is not None else _Format(1, 1, 8, False, False)
        chosen_fmt = pix_fmt is None
        pix_fmt = _output_format(codec, pix_fmt, fin.bits, fin.alpha)
        fout = _format_info(pix_fmt)
        try:
            _, (H, W) = output_plan(h, w, None if size is not None else scale, None if size is None else (size[1], size[0]))
        except ValueError:
            raise VideoError(f"--size {size[0]}x{size[1]} for the {w}x{h} video {src_label}: each side must be 1 to 4 times "
                             "the input's") from None
        if W % fout.step_x or H % fout.step_y:
            raise VideoError(
                f"{src_label}: the {W}x{H} output cannot be encoded as {pix_fmt}: its chroma is sampled every "
                f"{fout.step_x}x{fout.step_y} pixels, so the width and height must be multiples of {fout.step_x} and "
                f"{fout.step_y}; pass --pix-fmt yuv444p (full chroma) or another --scale or --size"
            )
        chosen = _pipeline(pipeline, ctx, pix_fmt, fused_color)
    except VideoError:
        inp.close()
        raise
    if not deinterlace and int(ctx.field_order or 0) in _INTERLACED:
        _warn(f"{src_label} is interlaced ({_INTERLACED[int(ctx.field_order)]}): its frames are upscaled as progressive "
              "pictures, the two fields' comb with them; pass --deinterlace (FFmpeg's bwdif, frame rate kept)")  # fmt: skip
    if chosen_fmt and fout.bits < fin.bits:
        hdr = " (its PQ/HLG transfer needs 10)" if fout.bits < 10 and int(ctx.color_trc or 2) in (16, 18) else ""
        deeper = ", ".join(c for c in ("libx265", "ffv1", "prores_ks") if c != codec)
        _warn(f"{src_label} has {fin.bits}-bit samples ({ctx.pix_fmt}) and {codec} encodes {fout.bits} at most: the "
              f"output is {pix_fmt}{hdr}; {deeper} keep 10 bits or more")  # fmt: skip
    alpha = fin.alpha and fout.alpha
    if fin.alpha and not alpha:
        _warn(f"{src_label} has an alpha channel ({ctx.pix_fmt}) and {codec} in {pix_fmt} cannot keep it: the output has the "
              "colour only (ffv1, libvpx-vp9, prores_ks, qtrle and png keep alpha)")  # fmt: skip
    if chosen == "yuv":
        colour = _Planes(ctx, pix_fmt, (W, H))
    else:
        colour = _Colour(ctx, pix_fmt, fin.bits > 8 or fout.bits > 8, fout.rgb, alpha)
        kw["fused_color"] = True if fused_color else None  # upscale()'s for the RGB frames: asked for, or its default
    tmp = None  # a file: written as a hidden temporary file beside it, renamed once complete
    if not dst_stream:
        target, mode = output_target(dst)
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=dst.suffix, dir=target.parent)  # dst's: the muxer
        except OSError as e:
            inp.close()
            raise VideoError(f"cannot write into {target.parent}: {e.strerror or e}") from None
        os.close(fd)
        tmp = Path(tmp_name)
    ok = False
    try:
        vin.thread_type = "AUTO"
        # The output starts at 0, as ffmpeg's does: every stream's timestamps less the input's start (an MPEG-TS
        # starting at 1000 s made an MP4 with a 1000 s empty edit, 1000 s of nothing before the picture), the
        # streams' offsets to one another kept.
        shift = max(0, inp.start_time or 0)  # microseconds
        shifted = {"output_ts_offset": f"-{shift}us"} if shift else {}
        try:
            if tmp is not None:
                out = av.open(str(tmp), mode="w", format=format, container_options=shifted)
            else:  # MP4 and the like cannot seek back to write their index into a pipe: fragmented MP4 then
                seekable = getattr(dst, "seekable", lambda: False)()
                opts = _FRAGMENTED if format in _MOV_MUXERS and not seekable else {}
                out = av.open(dst, mode="w", format=format, options=opts, container_options=shifted)
        except (av.error.FFmpegError, OSError, ValueError) as e:
            if format is None and "Could not determine output format" in str(e):  # the suffix names no muxer
                raise VideoError(f"{dst_label}: FFmpeg knows no container by the suffix {Path(dst_label).suffix}; use "
                                 f"one of {' '.join(VIDEO_SUFFIXES)} or give a --format") from None  # fmt: skip
            raise VideoError(f"cannot write {dst_label}: {e}") from None
        with _closed_after(av, out, f"cannot finish {dst_label}"):
            rate = vin.average_rate or vin.guessed_rate or Fraction(25)
            try:
                ostream = out.add_stream(codec, rate=rate)
            except (av.error.FFmpegError, ValueError) as e:
                if codec in av.codecs_available:  # known, but this container refuses it
                    raise VideoError(f"{dst_label}: the {out.format.name} container cannot hold {codec} video ({e}); pass "
                                     "another --codec (WebM: libvpx-vp9) or another container") from None  # fmt: skip
                raise VideoError(f"unknown or unavailable codec {codec!r}: {e}") from None
            ostream.width, ostream.height = W, H
            ostream.pix_fmt = pix_fmt
            colour.tag(ostream.codec_context)
            # The picture keeps its shape on screen: with two different factors (anamorphic 720x480 -> 1920x1080)
            # an output pixel is as much wider than tall as they differ; anamorphic video stays anamorphic.
            sar = vin.codec_context.sample_aspect_ratio
            out_sar = Fraction(sar or 1) * Fraction(H, h) / Fraction(W, w)
            if sar or out_sar != 1:
                ostream.codec_context.sample_aspect_ratio = out_sar
            _copy_metadata(vin, ostream)
            if (tc := _timecode(inp, vin)) is not None:  # MOV/MP4 write it as a timecode track, Matroska as a tag
                ostream.metadata["timecode"] = tc
            for key, value in inp.metadata.items():  # title, comment, creation time...; not what the muxer writes
                if key.lower() not in _MUXER_KEYS:
                    out.metadata[key] = value
            cfr = 1 / Fraction(rate) if _constant_rate(av, out.format) or _needs_frame_period(ostream, vin) else None
            if cfr is not None or vin.time_base is not None:
                ostream.time_base = ostream.codec_context.time_base = cfr or vin.time_base
            options = {}
            if crf is not None:
                options["crf"] = str(crf)
            if preset is not None:
                options["preset"] = preset
            ostream.options = options
            stream_map, kinds = {}, []
            for st in (*inp.streams.audio, *inp.streams.subtitles):
                if (added := _copy_stream(av, out, ostream, st)) is not None:
                    stream_map[st.index] = added[:2]
                    kinds.append(added[2])
            attachments = out.format.name in _ATTACHMENT_MUXERS
            for st in inp.streams if attachments else ():
                if st.type == "attachment":  # fonts of ASS subtitles, cover art: in the header, no packets
                    name = st.name or f"attachment{st.index}"
                    out.add_attachment(name, st.mimetype or "application/octet-stream", bytes(st.data))
                    kinds.append(f"attachment ({name})")
            _warn_dropped(av, src_label, inp, vin, len(inp.chapters()), attachments)

            start = (inp.start_time or 0) / 1e6
            span = inp.duration / 1e6 if inp.duration else None
            if span and start > 0 and inp.format.name.startswith("matroska") and span > start:
                span -= start  # FFmpeg's Matroska muxer writes the last end time as the duration, not the length
            total = vin.frames or None
            if total is None and span:  # e.g. Matroska stores no frame count
                total = max(1, round(span * float(rate)))
            limit = None if duration is None else start + duration
            if limit is not None:
                total = min(total or 10**12, max(1, math.ceil(duration * float(rate) - 1e-6)))  # the frames starting before it
            if chapters := _chapters(inp.chapters(), limit, shift / 1e6):
                out.set_chapters(chapters)
            if callable(progress):
                bar = _Progress(progress, total)
            else:
                bar = tqdm(total=total, unit="frame", desc=f"{W}x{H} {src_label if src_stream else src.name}",
                           disable=not progress, dynamic_ncols=True)  # fmt: skip
            pipe = _Pipe(depth=2)
            t0 = time.perf_counter()
            workers = []
            try:
                workers += [
                    _worker(pipe, _reader, av, inp, vin, set(stream_map), batch, limit, deinterlace),
                    _worker(pipe, _upscaler, (H, W), model, device, kw, colour),
                    _worker(pipe, _writer, av, out, ostream, stream_map, bar, colour, cfr, 1 / Fraction(rate)),
                ]
                pipe.go.set()  # every worker is in `workers` now, waited for before the containers close
                while not all(done.wait(0.1) for done in workers):
                    pass
            except KeyboardInterrupt:
                pipe.fail(KeyboardInterrupt())
                while not all(done.is_set() for done in workers):  # they stop at their next frame
                    try:
                        for done in workers:
                            done.wait()
                    except KeyboardInterrupt:  # a second Ctrl-C: the containers still wait for them
                        pass
                raise
            finally:
                bar.close()
            seconds = time.perf_counter() - t0
            busy = pipe.gpu_busy_seconds()
            if pipe.error is not None:
                e = pipe.error
                if isinstance(e, BrokenPipeError):
                    raise VideoError(f"{dst_label} was closed by its reader after {pipe.frames} frame(s)") from e
                if (isinstance(e, av.error.FFmpegError) and (pipe.frames == 0 or pipe.muxed == 0)  # it could not start: say why
                        and (why := _encoder_refuses(av, out.format.name, ostream, options)) is not None):  # not a full disk
                    opts = "".join(f", {k} {v}" for k, v in options.items())
                    raise VideoError(f"{src_label} -> {dst_label}: FFmpeg cannot start {codec} ({pix_fmt}{opts}) in "
                                     f"{out.format.name}: {why}; pass another --codec, --preset or --pix-fmt, or "
                                     "another container") from e  # fmt: skip
                if isinstance(e, (av.error.FFmpegError, OSError)):
                    raise VideoError(f"{src_label} -> {dst_label}: {e}") from e
                raise e
            frames = pipe.frames
            if frames == 0:
                cause = pipe.read_error or pipe.decode_error
                raise VideoError(f"cannot read {src_label} as a video: no video frame could be decoded" + (f" ({cause})" if cause else ""))
            if limit is None:
                damaged = _damage_report(pipe, frames, vin.frames or 0, start, span, rate)
            else:  # a part on purpose: only what went wrong while reading it
                damaged = _damage_report(pipe, frames, 0, start, None, rate)
        if damaged is not None:
            _warn(f"{src_label} looks truncated or damaged: {damaged}")
        if tmp is not None:
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        ok = True
    finally:
        inp.close()
        if not ok and tmp is not None:
            tmp.unlink(missing_ok=True)
    return {
        "input": src_label,
        "output": dst_label,
        "frames": frames,
        "seconds": seconds,
        "fps": frames / seconds if seconds > 0 else float("nan"),
        "size_in": (w, h),
        "size_out": (W, H),
        "pix_fmt": pix_fmt,
        "pipeline": chosen,
        # per sample through the upscale: the rgb pipeline's RGB(A) channels, the yuv pipeline's planes
        "bits": colour.bits if chosen == "yuv" else 16 if colour.deep else 8,
        "alpha": alpha if chosen == "yuv" else colour.rgb.startswith("rgba"),
        "resized_frames": colour.resized,  # frames of another size than the first (resized to it)
        "copied_streams": kinds,
        "damaged": damaged,
        "device": str(device),
        # Sum of the CUDA-event spans around each batch's upscale() on the GPU stream, over the wall
        # time of decode + upscale + encode: how much of the run the GPU spent on the frames.
        "gpu_busy_s": busy,
        "gpu_busy_fraction": None if busy is None else busy / seconds,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vdsr-fast video",
        description="Upscale a video with VDSR (decode, upscale, encode overlap; audio, subtitles and chapters copied).",
        epilog="Text subtitles the output container cannot hold are rewritten (mov_text for .mp4/.mov, SubRip otherwise); "
        "other streams it cannot hold are skipped with a warning. A truncated or damaged input is upscaled as far as it "
        "decodes, with a warning; the output only appears, under its final name, once complete.",
    )
    p.add_argument("input", help="input video (anything FFmpeg reads), or a folder of videos; - reads a stream from stdin")
    p.add_argument("output", help="output video; the container comes from the suffix (.mp4, .mkv, ...) or --format; "
                   "- writes a stream to stdout (needs --format); for a folder as the input, a folder (each video "
                   "under its own name)")
    p.add_argument("--scale", "-s", type=float,
                   help="2, 3, 4 or any factor from 1 to 4, e.g. 1.5 for 720p -> 1080p (default: 2)")
    p.add_argument("--size", type=size_arg, help="the output's WIDTHxHEIGHT instead of --scale, e.g. 1920x1080")
    p.add_argument("--codec", help="video encoder (default: libx264, i.e. H.264; libvpx-vp9 for .webm; rawvideo for y4m "
                   "and raw outputs)")
    p.add_argument("--format", dest="muxer", metavar="FORMAT",
                   help="output container as FFmpeg names it (ffmpeg's -f), e.g. nut, matroska, mpegts, mp4, "
                        "yuv4mpegpipe: needed for - (stdout), else taken from the suffix")
    p.add_argument("--crf", type=int, default=18, help="constant rate factor for x264/x265-style encoders (default: 18; -1: encoder default)")
    p.add_argument("--preset", help="encoder preset, e.g. veryfast, slow")
    p.add_argument("--pix-fmt", default=None,
                   help="encoded pixel format (default: 4:2:0 at the input's depth, yuv420p, yuv420p10le, yuv420p12le..., "
                        "or the codec's nearest; "
                        "4:2:0 needs an even output size, yuv444p takes any)")
    p.add_argument("--batch", "-b", type=int, default=4, help="frames per upscale call (default: 4)")
    add_memory_args(p, "per batch of frames")
    p.add_argument("--pipeline", choices=["auto", "yuv", "rgb"], default="auto",
                   help="yuv: no RGB conversion (the network gets the paper's BT.601 Y computed from the planes, the "
                        "chroma is resized, in the input's pixel format; an output of other chroma subsampling is a "
                        "repacking); rgb: the image pipeline (RGB -> BT.601 YCbCr -> VDSR -> RGB); auto (default): yuv "
                        "where the frames can stay planar Y'CbCr")
    p.add_argument("--deinterlace", action="store_true", help="deinterlace an interlaced input first (FFmpeg's bwdif, "
                   "one frame per frame: the frame rate stays); without it such an input is upscaled as progressive "
                   "pictures, with a warning")
    p.add_argument("--duration", "-t", type=float, help="only the first this many seconds (as ffmpeg's -t): a preview "
                   "before a long run; audio and subtitles cut alike")
    exists = p.add_mutually_exclusive_group()
    exists.add_argument("--force", "-f", action="store_true", help="overwrite an existing output")
    exists.add_argument("--skip-existing", action="store_true",
                        help="leave an existing output as it is and upscale the rest (resumes an interrupted folder: "
                             "each output is renamed into place only once whole)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--fused-color", action="store_true", help="the colour conversion and bicubic resize around the network as two Triton kernels on the GPU (upscale(fused_color=True))")
    _add_engine_args(p)
    return p


# A folder as the input: the files in it with these suffixes (FFmpeg reads more; name such a file directly)
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mxf", ".mpg", ".mpeg",
                  ".flv", ".wmv", ".y4m", ".nut", ".3gp")  # fmt: skip


def _summary(r: dict) -> str:
    (w, h), (W, H) = r["size_in"], r["size_out"]
    extra = f", copied {', '.join(r['copied_streams'])}" if r["copied_streams"] else ""
    if r["gpu_busy_fraction"] is not None:
        extra += f", GPU busy {100 * r['gpu_busy_fraction']:.0f}% of the time"
    return (f"{r['input']} ({w}x{h}) -> {r['output']} ({W}x{H} {r['pix_fmt']}), {r['frames']} frames in {r['seconds']:.1f} s "
            f"({r['fps']:.2f} fps) on {r['device']}, {r['pipeline']} pipeline{extra}")  # fmt: skip


LOG_EVERY_S = 30.0  # progress without a terminal (a log file, nohup, CI): a line at most this often, and at the end


def _log_progress(label: str):
    """``vdsr-fast video``'s progress where stderr is no terminal: a plain line at most every ``LOG_EVERY_S`` and
    at the last frame (a tqdm bar wrote its every update, joined by carriage returns, into the log)."""
    t0 = last = time.monotonic()

    def line(done: int, total: int | None) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= LOG_EVERY_S or (total is not None and done >= total):
            last = now
            of = f" of {total}" if total is not None else ""
            print(f"{shown(label)}: {done}{of} frames, {done / max(now - t0, 1e-9):.2f} fps", file=sys.stderr, flush=True)

    return line


def _jobs(args) -> list[tuple]:
    """``[(src, dst)]``: one pair, or for a folder as the input every video in it into the output folder (made if its
    parent exists), each under its own name; every output is checked before any is written. With ``--skip-existing``
    the outputs that exist are left out (each was renamed into place whole), with a line saying how many."""
    src, dst = args.input, args.output
    skip = getattr(args, "skip_existing", False)
    if src == "-" or not Path(src).is_dir():
        if skip and dst != "-" and Path(dst).is_file():
            print(f"{shown(dst)} exists: left as it is (--skip-existing)", file=sys.stderr)
            return []
        return [(sys.stdin.buffer if src == "-" else src, sys.stdout.buffer if dst == "-" else dst)]
    src, dst = Path(src), Path(dst)
    if getattr(args, "muxer", None):  # each output is named as its input: a.mp4 holding Matroska
        raise VideoError(f"--format {args.muxer} with a folder as the input: each output keeps its input's name and "
                         "so its container; convert files one by one to change the container")  # fmt: skip
    files = folder_files(src, VIDEO_SUFFIXES)
    if not files:
        raise VideoError(f"{src}: no video in this folder ({' '.join(VIDEO_SUFFIXES)})")
    if dst.exists() and not dst.is_dir() or args.output == "-":
        raise VideoError(f"{args.output}: with a folder as the input, the output is a folder")
    if not dst.parent.is_dir():
        raise VideoError(f"{dst.parent}: output folder does not exist")
    if dst.resolve() == src.resolve():
        raise VideoError(f"{dst}: the output folder is the input folder; give another")
    jobs = [(f, dst / f.name) for f in files]
    existing = [d for _, d in jobs if d.exists()]
    if existing and skip:
        print(f"{len(existing)} of the {len(jobs)} outputs exist: left as they are (--skip-existing)", file=sys.stderr)
        done = set(existing)
        jobs = [(s, d) for s, d in jobs if d not in done]
    elif existing and not args.force:
        raise VideoError(f"{len(existing)} of the {len(jobs)} outputs exist (first: {existing[0]}); pass --force to "
                         "overwrite them, or --skip-existing to upscale the rest")  # fmt: skip
    dst.mkdir(exist_ok=True)
    return jobs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    report = sys.stderr if args.output == "-" else sys.stdout  # the summary line: never into the video stream
    failed = 0
    restore_sigterm = catch_sigterm()  # SIGTERM as Ctrl-C: the temporary output is removed
    try:
        from .engine import BackendUnavailable

        if args.input == "-" and sys.stdin.isatty():
            raise VideoError("- reads the video from stdin, which is a terminal: pipe a stream in "
                             "(ffmpeg -i IN -c copy -f nut - | vdsr-fast video - ...) or give a file name")  # fmt: skip
        if args.output == "-" and sys.stdout.isatty():
            raise VideoError("- writes the video to stdout, which is a terminal: pipe it on "
                             "(... | ffmpeg -i - ...) or give a file name")  # fmt: skip
        if args.scale is not None and args.size is not None:
            raise VideoError("give --scale or --size, not both")
        jobs = _jobs(args)
        model = _model(args.weights)
        if args.device is not None:
            _device(args.device)  # validates it, with a clear message
        for src, dst in jobs:
            try:
                r = upscale_video(
                    src, dst, 2 if args.scale is None else args.scale, model, size=args.size,
                    codec=args.codec, format=args.muxer, crf=None if args.crf == -1 else args.crf, pix_fmt=args.pix_fmt,
                    preset=args.preset, batch=args.batch, device=args.device, backend=args.backend,
                    dtype=_DTYPES.get(args.dtype), tile=args.tile, max_memory=args.max_memory,
                    force=args.force, tune=args.tune,
                    progress=not args.quiet and (sys.stderr.isatty() or _log_progress(str(src) if isinstance(src, (str, Path)) else "stdin")), fused_color=args.fused_color,
                    duration=args.duration, deinterlace=args.deinterlace, pipeline=args.pipeline,
                )  # fmt: skip
            except BackendUnavailable as e:
                raise VideoError(str(e)) from None
            except (VideoError, ValueError) as e:
                if len(jobs) == 1:
                    raise
                failed += 1  # one bad file does not stop a folder
                print(f"vdsr-fast video: error: {shown(e)}", file=sys.stderr)
                continue
            except Exception as e:  # not KeyboardInterrupt (nor SIGTERM's Terminated): those stop the folder
                if len(jobs) == 1:
                    raise  # a bug: its traceback, to report
                # Nor does an error no check foresaw (FFmpeg reads many things; a file of no picture size was a
                # ZeroDivisionError): it stopped the batch with a traceback, the files after it not upscaled.
                failed += 1
                print(f"vdsr-fast video: error: {shown(f'{src}: {type(e).__name__}: {e}')}", file=sys.stderr)
                continue
            print(shown(_summary(r)), file=report, flush=True)
    except (VideoError, CliError, ValueError) as e:  # ValueError: upscale()'s, e.g. a --max-memory too small
        print(f"vdsr-fast video: error: {shown(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        term = isinstance(e, Terminated)
        print(f"vdsr-fast video: {'terminated' if term else 'interrupted'}", file=sys.stderr)
        return 143 if term else 130
    finally:
        restore_sigterm()
    if len(jobs) > 1:
        print(f"{len(jobs) - failed} of {len(jobs)} videos -> {shown(args.output)}" + (f"; {failed} failed (above)" if failed else ""),
              file=report)  # fmt: skip
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

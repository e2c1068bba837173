"""vdsr-fast video: a short generated clip with audio through decode -> upscale -> encode (CPU, tiny model)."""

import io
import subprocess
import sys
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch

av = pytest.importorskip("av", reason="PyAV is not installed (pip install av): the video command needs it")

from benchmarks.bench_video import mux_tone  # noqa: E402
from vdsr_fast import load as vdsr_fast_load  # noqa: E402
from vdsr_fast import save  # noqa: E402
from vdsr_fast.images import default_file_mode  # noqa: E402
from vdsr_fast.video import main  # noqa: E402

FPS, N, W, H = 12, 12, 32, 24
# (start s, duration s, text) of the subtitle cues _make_clip(subs=...) writes
CUES = [(0.1, 0.3, "Hello"), (0.5, 0.25, "<i>Two</i> lines\nhere"), (0.9, 0.1, "third")]


def _cue_payload(codec, text):
    raw = text.encode()
    if codec == "mov_text":
        return len(raw).to_bytes(2, "big") + raw
    if codec == "ass":  # Matroska's ASS packet: ReadOrder,Layer,Style,Name,MarginL,MarginR,MarginV,Effect,Text
        return b"0,0,Default,,0,0,0,," + raw
    return raw


needs_mux_stream = pytest.mark.skipif(not hasattr(av.container.OutputContainer, "add_mux_stream"),
                                      reason="writing the subtitle clips needs PyAV's OutputContainer.add_mux_stream")


def _make_clip(path, audio="aac", subs=None, chapters=(), attachments=(), timecode=None, start=0):
    """12 frames 32x24 H.264 at 12 fps and 1 s of a 440 Hz tone (``audio`` None: none); with ``subs`` (a codec), the
    CUES in English; ``chapters``: (start s, end s, title); ``attachments``: (name, mimetype, data); ``timecode``: the
    start's; ``start``: every stream's timestamps that many seconds late (a broadcast MPEG-TS, ffmpeg -copyts)."""
    with av.open(str(path), "w", container_options={"output_ts_offset": str(start)} if start else {}) as c:
        for attachment in attachments:
            c.add_attachment(*attachment)
        if chapters:
            c.set_chapters([{"id": i + 1, "start": round(a * 1000), "end": round(b * 1000), "time_base": Fraction(1, 1000),
                             "metadata": {"title": t}} for i, (a, b, t) in enumerate(chapters)])  # fmt: skip
        v = c.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        if timecode is not None:  # MOV/MP4: a timecode (tmcd) track; Matroska: a tag
            v.metadata["timecode"] = timecode
        if audio is not None:
            a = c.add_stream(audio, rate=48000)
            a.layout = "stereo"
        if subs is not None:
            st = c.add_mux_stream(subs)
            st.time_base = Fraction(1, 1000)
            st.metadata["language"] = "eng"
            st.disposition = av.stream.Disposition.forced | av.stream.Disposition.hearing_impaired
        for i in range(N):
            img = np.zeros((H, W, 3), np.uint8)
            img[..., 0] = i * 20
            img[:, : i * 2, 1] = 200
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, FPS)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
        if audio is not None:
            mux_tone(c, a, Fraction(N, FPS), 0.3)
        for start, duration, text in CUES if subs is not None else ():
            p = av.Packet(_cue_payload(subs, text))
            p.pts = p.dts = round(start * 1000)
            p.duration, p.time_base, p.stream = round(duration * 1000), Fraction(1, 1000), st
            c.mux(p)


def _probe(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        times = [f.time for f in c.decode(video=0)]
        return {"size": (v.codec_context.width, v.codec_context.height), "times": times,
                "audio": [s.codec_context.name for s in c.streams.audio], "duration": c.duration}


@pytest.fixture
def clip(tmp_path):
    p = tmp_path / "in.mp4"
    _make_clip(p)
    return p


@pytest.fixture
def weights(tmp_path, tiny_model):
    return str(save(tiny_model, tmp_path / "tiny.safetensors"))


def _run(*argv):
    return main([*map(str, argv), "--quiet", "--device", "cpu"])


def test_clip_is_upscaled_with_audio_and_timing_kept(clip, weights, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    assert _run(clip, out, "--scale", "2", "--weights", weights, "--batch", "5") == 0
    assert "12 frames" in capsys.readouterr().out
    src, got = _probe(clip), _probe(out)
    assert got["size"] == (2 * W, 2 * H)
    assert len(got["times"]) == N and got["times"] == src["times"]  # frame count and timestamps
    assert got["audio"] == ["aac"]
    assert abs(got["duration"] - src["duration"]) <= 0.05 * 1e6  # microseconds
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert out.stat().st_mode & 0o777 == default_file_mode()  # as open() makes it, not mkstemp's 0o600


def test_progress_into_a_log_is_lines_not_a_bar(clip, weights, tmp_path, capsys, monkeypatch):
    """stderr not a terminal (nohup, CI): progress is a plain line at most every LOG_EVERY_S and at the last frame, as
    train's; a tqdm bar wrote every update into the log, joined by carriage returns."""
    from vdsr_fast import video

    assert main([str(clip), str(tmp_path / "out.mp4"), "--weights", weights, "--device", "cpu", "--batch", "5"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and err.count(f"{clip}: ") == 1 and f"{clip}: 12 of 12 frames, " in err, err
    monkeypatch.setattr(video, "LOG_EVERY_S", 0.0)  # every batch: 5, 10, 12
    assert main([str(clip), str(tmp_path / "out.mp4"), "--weights", weights, "--device", "cpu", "--batch", "5",
                 "--force"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert [ln.split(" frames")[0] for ln in err.splitlines() if ln.startswith(f"{clip}: ")] == [
        f"{clip}: 5 of 12", f"{clip}: 10 of 12", f"{clip}: 12 of 12"], err  # fmt: skip


def test_a_folder_takes_video_suffixes_in_any_case(tmp_path):
    """A folder as the input: cameras name their files .MP4 and .MOV; the suffix matches in any case (the files are
    only listed here, not read)."""
    from vdsr_fast.video import VideoError, _jobs

    src = tmp_path / "card"
    src.mkdir()
    for name in ("A.MP4", "b.Mkv", "c.mov", "notes.TXT", "._A.MP4"):  # and macOS's AppleDouble file: hidden, skipped
        (src / name).write_bytes(b"")
    jobs = _jobs(SimpleNamespace(input=str(src), output=str(tmp_path / "out"), force=False))
    assert [(s.name, d.relative_to(tmp_path).as_posix()) for s, d in jobs] == [
        ("A.MP4", "out/A.MP4"), ("b.Mkv", "out/b.Mkv"), ("c.mov", "out/c.mov")]  # fmt: skip
    with pytest.raises(VideoError, match="--format matroska with a folder as the input: each output keeps its input's name"):
        _jobs(SimpleNamespace(input=str(src), output=str(tmp_path / "out"), force=False, muxer="matroska"))  # a.mp4: mkv


def test_scale_and_size_together_are_refused(tmp_path, capsys):
    """As upscale refuses them (--size silently won)."""
    assert main(["in.mp4", str(tmp_path / "out.mp4"), "--scale", "3", "--size", "64x48"]) == 2
    assert "give --scale or --size, not both" in capsys.readouterr().err


def test_a_folder_of_videos(tmp_path, weights, capsys):
    """A folder as the input: every video in it into the output folder under its own name, one engine; a file that
    cannot be read is reported and the rest still written (exit status 2); the outputs are checked first."""
    src, out = tmp_path / "clips", tmp_path / "out"
    src.mkdir()
    _make_clip(src / "a.mp4")
    _make_clip(src / "b.mkv")
    (src / "notes.txt").write_text("not a video")
    (src / "broken.mp4").write_bytes(b"\x00" * 100)
    assert _run(src, out, "--weights", weights) == 2
    captured = capsys.readouterr()
    assert "2 of 3 videos -> " in captured.out and "cannot read" in captured.err and "broken.mp4" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "b.mkv"]
    assert all(len(_probe(out / n)["times"]) == N for n in ("a.mp4", "b.mkv"))
    assert _run(src, out, "--weights", weights) == 2  # they exist now
    assert "2 of the 3 outputs exist (first: " in capsys.readouterr().err
    assert _run(src, src, "--weights", weights, "--force") == 2
    assert "the output folder is the input folder" in capsys.readouterr().err
    assert _run(src, out / "a.mp4", "--weights", weights) == 2
    assert "with a folder as the input, the output is a folder" in capsys.readouterr().err
    # an interrupted folder resumes (found by a review: only --force went on, re-encoding what was done)
    (out / "b.mkv").unlink()
    mtime = (out / "a.mp4").stat().st_mtime_ns
    assert _run(src, out, "--weights", weights, "--skip-existing") == 2  # broken.mp4 still fails
    captured = capsys.readouterr()
    assert "1 of the 3 outputs exist: left as they are (--skip-existing)" in captured.err and "1 of 2 videos" in captured.out
    assert (out / "a.mp4").stat().st_mtime_ns == mtime and len(_probe(out / "b.mkv")["times"]) == N
    assert _run(src / "a.mp4", out / "a.mp4", "--weights", weights, "--skip-existing") == 0
    assert "exists: left as it is (--skip-existing)" in capsys.readouterr().err and (out / "a.mp4").stat().st_mtime_ns == mtime
    assert _run(src / "a.mp4", out, "--weights", weights, "--skip-existing") == 2  # a folder is no output to skip
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(src), str(out), "--force", "--skip-existing"])


def test_progress_callback(clip, tiny_model, tmp_path):
    from vdsr_fast.video import upscale_video

    calls = []
    upscale_video(clip, tmp_path / "out.mp4", 2, tiny_model, batch=5, device="cpu", progress=lambda *a: calls.append(a))
    assert calls == [(5, N), (10, N), (N, N)]  # after each batch of 5 of the 12 frames
    calls.clear()
    r = upscale_video(clip, tmp_path / "cut.mp4", 2, tiny_model, batch=5, device="cpu", duration=0.45,
                      progress=lambda *a: calls.append(a))  # fmt: skip
    assert r["frames"] == 6 and calls == [(5, 6), (6, 6)]  # the frames that start before 0.45 s: 0 to 5/12 s


def _starts(path):
    """Each stream's first timestamp in seconds, by type, and the container's duration in seconds."""
    with av.open(str(path)) as c:
        return {s.type: float(s.start_time * s.time_base) for s in c.streams if s.start_time is not None}, c.duration / 1e6


@pytest.mark.parametrize("src_name, out_name", [("in.ts", "out.mp4"), ("in.mkv", "out.mkv")])
def test_an_input_that_starts_late_gives_an_output_that_starts_at_0(tmp_path, tiny_model, capsys, src_name, out_name):
    """Timestamps that start late (a broadcast MPEG-TS, an HLS segment, ffmpeg -copyts) are shifted to start at 0, as
    ffmpeg does, the streams' offsets to one another and the chapters alike: the MP4 had a 1000 s empty edit (1000 s
    of nothing in a player), the Matroska a 1000.5 s duration. FFmpeg's Matroska duration, the last end time, is not
    taken for the length: no truncation warning, the progress total right."""
    from vdsr_fast.video import upscale_video

    src, out = tmp_path / src_name, tmp_path / out_name
    chapters = [(1000, 1000.5, "A"), (1000.5, 1001, "B")] if src_name.endswith(".mkv") else ()
    _make_clip(src, start=1000, chapters=chapters)
    (starts, _), calls = _starts(src), []
    t0 = min(starts.values())
    assert t0 > 999  # AAC starts 1024 samples early
    r = upscale_video(src, out, 2, tiny_model, batch=4, device="cpu", progress=lambda *a: calls.append(a))
    assert r["damaged"] is None and "truncated" not in capsys.readouterr().err
    got, duration = _starts(out)
    assert got.keys() == starts.keys() and min(got.values()) == 0 and duration < 1.2
    assert all(abs(got[k] - (starts[k] - t0)) < 0.002 for k in starts)  # the audio's offset to the video kept
    assert np.allclose(_probe(out)["times"], np.array(_probe(src)["times"]) - t0, atol=0.002)
    if chapters:
        assert calls[-1] == (N, N)
        assert _chapter_list(out) == [(0, 0.5, "A"), (0.5, 1.0, "B")]


def test_an_elementary_stream_without_timestamps_gets_the_frame_rate(tmp_path, weights):
    """A raw H.264 stream (``-f h264``) has no timestamps: its frames are 1/25 s apart (FFmpeg's rate for it), as
    ffmpeg stamps them; they all came out at 0 s, the whole output 40 ms long."""
    src, out = tmp_path / "in.h264", tmp_path / "out.mp4"
    _make_clip(src, audio=None)
    assert _probe(src)["times"] == [None] * N
    assert _run(src, out, "--weights", weights) == 0
    assert np.allclose(_probe(out)["times"], np.arange(N) / 25)


@pytest.mark.parametrize("audio, out_name", [("pcm_s16le", "out.mp4"), ("libopus", "out.webm"), ("aac", "out.avi")])
def test_containers_get_what_they_can_hold(tmp_path, weights, capsys, audio, out_name):
    """Matroska's PCM (no channel order) into MP4: the default order for its channels, as ffmpeg guesses it (the MP4
    muxer refused it once the file was finished, after the whole upscale); WebM: VP9 by default (H.264 it cannot
    hold: a clear error); AVI (a constant frame rate, its time base the frame period): 12 frames a second, not
    Matroska's time base 1/1000 as 1000 frames a second."""
    src, out = tmp_path / "in.mkv", tmp_path / out_name
    _make_clip(src, audio=audio)
    assert _run(src, out, "--weights", weights) == 0
    assert "warning" not in capsys.readouterr().err
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (a.codec_context.name, a.codec_context.layout.name) == ({"libopus": "opus"}.get(audio, audio), "stereo")
        assert v.codec_context.name == ("vp9" if out_name.endswith(".webm") else "h264")
        if out_name.endswith(".avi"):
            assert (v.average_rate, v.time_base, v.frames) == (FPS, Fraction(1, FPS), N)
    assert len(_probe(out)["times"]) == N
    if out_name.endswith(".webm"):
        assert _run(src, tmp_path / "x.webm", "--weights", weights, "--codec", "libx264") == 2
        assert "the webm container cannot hold libx264 video" in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.mkv", out_name, "tiny.safetensors"])


def test_duration_upscales_the_first_seconds_with_audio_cut_alike(clip, weights, tmp_path, capsys):
    """--duration S (ffmpeg's -t): a preview of the first S seconds: the frames that start before S with their
    timestamps, the audio cut at S as well, no warning that the input looks truncated."""
    out = tmp_path / "out.mp4"
    assert _run(clip, out, "--weights", weights, "--duration", "0.5") == 0
    captured = capsys.readouterr()
    assert "6 frames" in captured.out and "truncated" not in captured.err
    src, got = _probe(clip), _probe(out)
    assert got["times"] == [t for t in src["times"] if t < 0.5] and len(got["times"]) == N // 2
    with av.open(str(out)) as c:
        packets = [p for p in c.demux(c.streams.audio[0]) if p.pts is not None]
        end = max(float((p.pts + p.duration) * p.time_base) for p in packets)
    assert 0.45 <= end <= 0.5 + 0.03  # AAC packets of 1024 samples at 48 kHz: 21 ms each
    assert _run(clip, tmp_path / "all.mp4", "--weights", weights, "--duration", "30") == 0  # longer than the clip
    assert len(_probe(tmp_path / "all.mp4")["times"]) == N
    assert _run(clip, tmp_path / "x.mp4", "--weights", weights, "--duration", "0") == 2
    assert "duration must be a positive number of seconds" in capsys.readouterr().err


class _Packet:
    """What the reader uses of a demuxed packet (1/1000 s timestamps, 40 ms long); decoding it gives ``frames``, or
    raises them when they are an exception (a packet the decoder rejects)."""

    def __init__(self, stream, t, frames=(), corrupt=False):
        self.stream = SimpleNamespace(index=stream)
        self.pts, self.time_base, self.duration = round(t * 1000), Fraction(1, 1000), 40
        self.frames, self.is_corrupt, self.size = frames, corrupt, 1

    def decode(self):
        if isinstance(self.frames, Exception):
            raise self.frames
        return list(self.frames)


def _frame(t):
    return SimpleNamespace(time=t, side_data={})


def _read(packets, drained=(), limit=None):
    """Run the reader on fake demuxed ``packets`` (video: stream 0; copied: stream 1; an exception: the demuxer raises
    it there), the decoder holding ``drained`` at the end; returns the pipe, the frames and the packets passed on."""
    from vdsr_fast.video import _END, _Pipe, _reader

    def demux():
        for p in packets:
            if isinstance(p, Exception):
                raise p
            yield p

    vstream = SimpleNamespace(index=0, codec_context=SimpleNamespace(decode=lambda packet: list(drained)))
    pipe = _Pipe(depth=100)
    _reader(pipe, av, SimpleNamespace(demux=demux), vstream, {1}, 100, limit)
    frames, passed = [], []
    while (item := pipe.decoded.get_nowait()) is not _END:
        kind, payload = item
        if kind == "frames":
            frames += payload
        else:
            passed.append(payload)
    return pipe, frames, passed


def test_duration_reads_on_past_the_cut_for_packets_stored_late():
    """--duration: once the video is past the cut, the demuxing goes on up to _LIMIT_SLACK_S (2 s) further for the
    audio and subtitle packets that start before the cut but are stored after later video (files interleaved in
    chunks: AVI, MOV), then stops; fake packets, in the order such a file stores them."""
    f = [_frame(t) for t in (0, 0.25, 0.5)]
    early, late = _Packet(1, 0.1), _Packet(1, 0.3)
    stored = [early, _Packet(0, 0, [f[0]]), _Packet(0, 0.25, [f[1]]), _Packet(0, 0.5, [f[2]]), _Packet(0, 0.75),
              _Packet(1, 0.6), late, _Packet(1, 2.6), _Packet(1, 0.4)]  # fmt: skip
    _, frames, passed = _read(stored, limit=0.5)
    assert frames == f[:2] and passed == [early, late]  # 0.6: past the cut; 0.4: after the 2.6 s one, not read


def test_the_video_is_ffmpegs_best_stream_and_the_others_are_named(tmp_path, weights, capsys):
    """A Matroska file whose first track is a small one-frame picture (as cover art is often stored) and whose second
    is the video: the video is upscaled (was the picture: one frame, the clip lost), the picture named as dropped."""
    src = tmp_path / "in.mkv"
    with av.open(str(src), "w") as c:
        cover = c.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 16, 16, "yuvj420p"
        v = c.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        pic = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 50, np.uint8), format="rgb24").reformat(format="yuvj420p")
        pic.pts = 0
        c.mux(cover.encode(pic))
        c.mux(cover.encode(None))
        for i in range(N):
            f = av.VideoFrame.from_ndarray(np.full((H, W, 3), i * 20, np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, FPS)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
    out = tmp_path / "out.mkv"
    assert _run(src, out, "--weights", weights) == 0
    assert "not copying video stream #0 (mjpeg)" in capsys.readouterr().err
    got = _probe(out)
    assert got["size"] == (2 * W, 2 * H) and len(got["times"]) == N


def _chapter_list(path):
    with av.open(str(path)) as c:
        return [(float(ch["start"] * ch["time_base"]), float(ch["end"] * ch["time_base"]), ch["metadata"].get("title"))
                for ch in c.chapters()]


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_chapters_are_kept_and_cut_with_duration(tmp_path, weights, capsys, suffix):
    """Chapters (times and titles) are copied; an MP4's chapter list, a text track, is not warned about as a dropped
    stream; --duration keeps the chapters that start before it, the last one ending there."""
    src = tmp_path / f"in{suffix}"
    _make_clip(src, chapters=[(0, 0.4, "Intro"), (0.4, 0.8, "Main"), (0.8, 1.0, "Credits")])
    assert _chapter_list(src) == [(0, 0.4, "Intro"), (0.4, 0.8, "Main"), (0.8, 1.0, "Credits")]
    assert _run(src, tmp_path / f"out{suffix}", "--weights", weights) == 0
    assert _chapter_list(tmp_path / f"out{suffix}") == _chapter_list(src)
    assert "warning" not in capsys.readouterr().err
    assert _run(src, tmp_path / f"cut{suffix}", "--weights", weights, "--duration", "0.5") == 0
    assert _chapter_list(tmp_path / f"cut{suffix}") == [(0, 0.4, "Intro"), (0.4, 0.5, "Main")]


def test_chapters_for_a_cut_and_a_late_start():
    """_chapters on the input's clock: shifted by its start (the output starts at 0); with --duration those that start
    before the cut, the last one ending there; one that starts at the cut itself is left out (an empty chapter)."""
    from vdsr_fast.video import _chapters

    tb = Fraction(1, 1000)
    chapters = [{"id": i + 1, "start": a, "end": b, "time_base": tb, "metadata": {"title": t}}
                for i, (a, b, t) in enumerate([(1000, 1500, "A"), (1500, 2000, "B")])]  # fmt: skip

    def spans(kept):
        return [(c["start"], c["end"], c["metadata"]["title"]) for c in kept]

    assert spans(_chapters(chapters, None, 1.0)) == [(0, 500, "A"), (500, 1000, "B")]
    assert spans(_chapters(chapters, 1.75, 1.0)) == [(0, 500, "A"), (500, 750, "B")]
    assert spans(_chapters(chapters, 1.5, 1.0)) == [(0, 500, "A")]


def _timecodes(path):
    with av.open(str(path)) as c:
        return [(s.type, v) for s in c.streams for k, v in s.metadata.items() if k.lower() == "timecode"]


@pytest.mark.parametrize("src_suffix, out_suffix", [(".mov", ".mov"), (".mp4", ".mkv"), (".mkv", ".mp4")])
def test_the_start_timecode_is_kept(tmp_path, weights, capsys, src_suffix, out_suffix):
    """A camera's or an edit's start timecode: MOV/MP4 store it as a timecode track (not warned about as a dropped
    data stream), Matroska as a tag; either way it reaches the output."""
    src, out = tmp_path / f"in{src_suffix}", tmp_path / f"out{out_suffix}"
    _make_clip(src, timecode="01:02:03:04")
    assert ("video", "01:02:03:04") in _timecodes(src)
    assert _run(src, out, "--weights", weights) == 0
    assert "warning" not in capsys.readouterr().err
    want = [("video", "01:02:03:04")] + ([("data", "01:02:03:04")] if out_suffix != ".mkv" else [])
    assert _timecodes(out) == want


FONT = ("subs.ttf", "font/ttf", bytes(range(256)) * 4)  # e.g. the font of ASS subtitles


def test_attachments_are_copied_into_matroska_and_named_where_not(tmp_path, weights, capsys):
    src = tmp_path / "in.mkv"
    _make_clip(src, subs="ass", attachments=[FONT])
    assert _run(src, tmp_path / "out.mkv", "--weights", weights) == 0
    captured = capsys.readouterr()
    assert "attachment (subs.ttf)" in captured.out and "warning" not in captured.err
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert [(s.name, s.mimetype, bytes(s.data)) for s in c.streams if s.type == "attachment"] == [FONT]
    assert _run(src, tmp_path / "out.mp4", "--weights", weights) == 0
    assert "not copying attachment #3 (subs.ttf, font/ttf): only Matroska (.mkv) holds attachments" in capsys.readouterr().err


def test_any_factor_and_size_with_the_picture_shape_kept(clip, weights, tmp_path, capsys):
    """--scale 1.5 (720p -> 1080p style) and --size WxH: every frame, the timestamps; with two different factors the
    sample aspect ratio makes up the difference, so the picture keeps its shape on screen."""
    out = tmp_path / "x15.mp4"
    assert _run(clip, out, "--weights", weights, "--scale", "1.5") == 0
    src, got = _probe(clip), _probe(out)
    assert got["size"] == (48, 36) and got["times"] == src["times"]
    out = tmp_path / "size.mkv"
    assert _run(clip, out, "--weights", weights, "--size", "64x36") == 0  # width x2, height x1.5
    assert _probe(out)["size"] == (64, 36)
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.sample_aspect_ratio == Fraction(3, 4)  # 64 * 3/4 : 36 = 32 : 24
    capsys.readouterr()
    assert _run(clip, tmp_path / "small.mp4", "--weights", weights, "--size", "30x24") == 2
    assert "--size 30x24 for the 32x24 video" in capsys.readouterr().err
    assert _run(clip, tmp_path / "big.mp4", "--weights", weights, "--scale", "4.5") == 2
    assert "scale must be a number from 1 to 4" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(clip, tmp_path / "bad.mp4", "--size", "64by36")


def test_mkv_mp2_and_codec_options(tmp_path, weights):
    src = tmp_path / "in.mkv"
    _make_clip(src, audio="mp2")
    out = tmp_path / "out.mkv"
    assert _run(src, out, "--scale", "3", "--weights", weights, "--crf", "30", "--preset", "ultrafast", "--pix-fmt", "yuv444p") == 0
    got = _probe(out)
    assert got["size"] == (3 * W, 3 * H) and len(got["times"]) == N and got["audio"] == ["mp2"]
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv444p"


def _cue_text(codec, data):
    if codec == "mov_text":
        return data[2 : 2 + int.from_bytes(data[:2], "big")].decode()
    return data.decode().split(",", 8)[-1] if codec in ("ass", "ssa") else data.decode()


def _seconds(t, time_base):
    return t * time_base.numerator / time_base.denominator


def _subtitles(path):
    """codec, language, packet count and the non-empty cues (start from the first video frame, duration, text)."""
    with av.open(str(path)) as c:
        if not c.streams.subtitles:
            return None
        st = c.streams.subtitles[0]
        codec, language, disposition = st.codec_context.name, st.metadata.get("language"), int(st.disposition)
        t0 = next(c.decode(video=0)).time
    with av.open(str(path)) as c:  # again, from the start
        packets = [p for p in c.demux(c.streams.subtitles[0]) if p.size]
        cues = [(round(_seconds(p.pts, p.time_base) - t0, 3), round(_seconds(p.duration, p.time_base), 3), _cue_text(codec, bytes(p)))
                for p in packets]
    return {"codec": codec, "language": language, "disposition": disposition, "packets": len(packets),
            "cues": [q for q in cues if q[2]]}


@needs_mux_stream
@pytest.mark.parametrize("suffix, codec", [(".mkv", "subrip"), (".mkv", "ass"), (".mp4", "mov_text")])
def test_subtitles_are_copied(tmp_path, weights, capsys, suffix, codec):
    src, out = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    _make_clip(src, subs=codec)
    before = _subtitles(src)
    assert before["cues"] == CUES  # the fixture itself
    flags = av.stream.Disposition.forced | av.stream.Disposition.hearing_impaired
    assert before["disposition"] & flags == flags  # the fixture's track: forced, for the hearing impaired
    assert _run(src, out, "--weights", weights) == 0
    assert "copied audio, subtitle" in capsys.readouterr().out
    after = _subtitles(out)
    assert after == before  # same codec, language, disposition, number of packets, texts and timestamps
    assert len(_probe(out)["times"]) == N


@needs_mux_stream
@pytest.mark.parametrize("src_name, codec, out_name, want_codec, texts", [
    ("in.mkv", "subrip", "out.mp4", "mov_text", ["Hello", "Two lines\nhere", "third"]),  # SubRip markup dropped
    ("in.mkv", "ass", "out.mov", "mov_text", ["Hello", "Two lines\nhere", "third"]),
    ("in.mp4", "mov_text", "out.mkv", "srt", ["Hello", "<i>Two</i> lines\nhere", "third"]),  # empty MP4 gap samples dropped
])
def test_subtitles_the_container_cannot_hold_are_converted(tmp_path, weights, capsys, src_name, codec, out_name, want_codec, texts):
    src, out = tmp_path / src_name, tmp_path / out_name
    _make_clip(src, subs=codec)
    before = _subtitles(src)
    assert _run(src, out, "--weights", weights) == 0
    captured = capsys.readouterr()
    assert f"-> {'subrip' if want_codec == 'srt' else want_codec})" in captured.out and "warning" not in captured.err
    after = _subtitles(out)
    assert after["codec"] == want_codec and after["language"] == "eng"
    assert [q[2] for q in after["cues"]] == texts
    assert [q[:2] for q in after["cues"]] == [q[:2] for q in before["cues"]]  # timing, relative to the video


@needs_mux_stream
def test_subtitles_skipped_with_a_warning_when_no_text_codec_fits(tmp_path, weights, capsys):
    src, out = tmp_path / "in.mkv", tmp_path / "out.avi"  # AVI holds neither SubRip nor mov_text
    _make_clip(src, subs="subrip")
    assert _run(src, out, "--weights", weights) == 0
    captured = capsys.readouterr()
    assert "warning: not copying subtitle stream #2 (srt) into avi" in captured.err
    assert captured.out.rstrip().endswith("copied audio")
    got = _probe(out)
    assert _subtitles(out) is None and got["audio"] == ["aac"] and len(got["times"]) == N


def test_convert_subtitle_payloads():
    from vdsr_fast.video import _convert_subtitle

    assert _convert_subtitle("srt", "mov_text", b"<b>Hi</b> you") == b"\x00\x06Hi you"
    assert _convert_subtitle("ass", "subrip", rb"12,0,Default,,0,0,0,,{\i1}one{\i0}\Ntwo, three") == b"one\ntwo, three"
    styled = b"\x00\x03abc" + b"\x00\x00\x00\x0cstyl\x00\x00"  # mov_text text, then a style box
    assert _convert_subtitle("mov_text", "subrip", styled) == b"abc"
    assert _convert_subtitle("mov_text", "subrip", b"\x00\x00") is None  # the empty samples between MP4 cues
    assert _convert_subtitle("webvtt", "mov_text", "é".encode()) == b"\x00\x02" + "é".encode()


def test_refuses_to_overwrite(clip, weights, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"keep me")
    assert _run(clip, out, "--weights", weights) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert _run(clip, out, "--weights", weights, "--force") == 0
    assert _probe(out)["size"] == (2 * W, 2 * H)


def test_unreadable_input_is_a_clear_error(tmp_path, weights, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 10)
    out = tmp_path / "out.mp4"
    assert _run(bad, out, "--weights", weights) == 2
    assert "cannot read" in capsys.readouterr().err
    assert _run(tmp_path / "missing.mp4", out, "--weights", weights) == 2
    assert "no such file" in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4", "tiny.safetensors"]


def test_bad_codec_leaves_nothing(clip, weights, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    assert _run(clip, out, "--weights", weights, "--codec", "no-such-codec") == 2
    assert "codec" in capsys.readouterr().err
    assert not out.exists() and [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_pyav_message(monkeypatch):
    from vdsr_fast.video import VideoError, _import_av

    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(VideoError, match="pip install 'av>=18'"):
        _import_av()
    old = type(sys)("av")
    old.__version__ = "17.0.1"
    monkeypatch.setitem(sys.modules, "av", old)
    with pytest.raises(VideoError, match=r"needs PyAV 18 or newer \(found 17.0.1"):
        _import_av()


def test_forwarded_by_the_cli(clip, weights, tmp_path):
    from vdsr_fast import cli

    if "video" not in cli._FORWARDED:
        pytest.skip("vdsr_fast.cli does not forward 'video' yet")
    out = tmp_path / "out.mp4"
    assert cli.main(["video", str(clip), str(out), "--weights", weights, "--quiet", "--device", "cpu"]) == 0
    assert _probe(out)["size"] == (2 * W, 2 * H)


def _decoded(src):
    """(times, RGB frames, container format, audio codecs) of a video file or of its bytes."""
    with av.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else str(src)) as c:
        frames = list(c.decode(video=0))
        return ([f.time for f in frames], [f.to_ndarray(format="rgb24") for f in frames], c.format.name,
                [s.codec_context.name for s in c.streams.audio])


def _cli(*argv, **kw):
    """``vdsr-fast video ...`` in its own process (real pipes for stdin and stdout)."""
    return subprocess.Popen([sys.executable, "-m", "vdsr_fast", "video", *map(str, argv), "--quiet", "--device", "cpu"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


class _Sink(io.RawIOBase):
    """A write-only stream that cannot seek, as a pipe."""

    def __init__(self):
        self.data = bytearray()

    def writable(self):
        return True

    def write(self, b):
        self.data += b
        return len(b)


def test_stdin_to_stdout_through_pipes_equals_the_file_run(tmp_path, weights):
    """``ffmpeg ... -f nut - | vdsr-fast video - - --format nut | ffmpeg -i - ...``: the stream read from stdin (its
    container probed), the video alone on stdout, the summary on stderr; the frames, timestamps and audio are the
    file run's, bit for bit (lossless ffv1 both ways)."""
    src = tmp_path / "in.mkv"
    _make_clip(src)
    assert _run(src, tmp_path / "file.nut", "--weights", weights, "--codec", "ffv1") == 0
    proc = _cli("-", "-", "--format", "nut", "--codec", "ffv1", "--weights", weights)
    out, err = proc.communicate(src.read_bytes(), timeout=120)
    assert proc.returncode == 0, err.decode()
    assert out.startswith(b"nut/multimedia container") and f"<stdin> ({W}x{H}) -> <stdout>".encode() in err
    times, frames, fmt, audio = _decoded(out)
    want_times, want_frames, _, want_audio = _decoded(tmp_path / "file.nut")
    assert (fmt, audio, times) == ("nut", want_audio, want_times) and audio == ["aac"] and len(times) == N
    assert all(np.array_equal(a, b) for a, b in zip(frames, want_frames, strict=True))
    assert frames[0].std() > 0  # not a blank picture


def test_y4m_raw_and_fragmented_mp4_to_a_stream_that_cannot_seek(clip, tiny_model, tmp_path, capsys):
    """y4m (uncompressed, rawvideo by default, constant rate in its header) and MP4 (fragmented: it cannot seek back
    to its index) into a pipe-like stream; the same y4m frames as the file run's lossless ones."""
    from vdsr_fast.video import upscale_video

    sink = _Sink()
    r = upscale_video(clip, sink, 2, tiny_model, format="yuv4mpegpipe", progress=False)
    header = bytes(sink.data[: sink.data.index(b"\n")]).split()
    assert header[:4] == [b"YUV4MPEG2", f"W{2 * W}".encode(), f"H{2 * H}".encode(), f"F{FPS}:1".encode()]
    assert sink.data.count(b"FRAME") == N and r["frames"] == N and r["output"] == "the output stream"
    assert "not copying audio stream #1 (aac)" in capsys.readouterr().err  # y4m holds one video stream
    upscale_video(clip, tmp_path / "file.mkv", 2, tiny_model, codec="ffv1", progress=False)
    _, y4m_frames, fmt, _ = _decoded(sink.data)
    assert fmt == "yuv4mpegpipe"
    assert all(np.array_equal(a, b) for a, b in zip(y4m_frames, _decoded(tmp_path / "file.mkv")[1], strict=True))
    upscale_video(clip, tmp_path / "out.y4m", 2, tiny_model, progress=False)  # the suffix picks rawvideo too
    assert (tmp_path / "out.y4m").read_bytes().startswith(b"YUV4MPEG2")

    sink = _Sink()
    upscale_video(clip, sink, 2, tiny_model, format="mp4", progress=False)
    assert b"moof" in sink.data  # fragments
    times, _, _, audio = _decoded(sink.data)
    assert times == _probe(clip)["times"] and audio == ["aac"]
    upscale_video(clip, tmp_path / "named", 2, tiny_model, format="matroska", progress=False)  # no suffix: --format
    assert _decoded(tmp_path / "named")[2] == "matroska,webm"


def test_stream_errors_are_clear(clip, weights, tiny_model, monkeypatch, capsys):
    from vdsr_fast.video import VideoError, upscale_video

    with pytest.raises(VideoError, match="writing to a stream needs its container format"):
        upscale_video(clip, _Sink(), 2, tiny_model, progress=False)
    with pytest.raises(VideoError, match="'bogus' is not a container format FFmpeg can write"):
        upscale_video(clip, _Sink(), 2, tiny_model, format="bogus", progress=False)
    with pytest.raises(VideoError, match="cannot read the input stream as a video"):
        upscale_video(io.BytesIO(b"not a video"), _Sink(), 2, tiny_model, format="nut", progress=False)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    assert _run(clip, "-", "--format", "nut", "--weights", weights) == 2
    assert "writes the video to stdout, which is a terminal" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", Terminal())
    assert _run("-", "x.mp4", "--weights", weights) == 2
    assert "reads the video from stdin, which is a terminal" in capsys.readouterr().err


def test_a_reader_that_closes_the_pipe_is_one_error_line(tmp_path, weights):
    """``vdsr-fast video IN - ... | head -c 100``: exit status 2 and one line saying so, no traceback (the y4m output,
    ~220 KB, is more than a pipe's buffer holds)."""
    src = tmp_path / "in.mkv"
    _make_clip(src)
    proc = _cli(src, "-", "--format", "yuv4mpegpipe", "--scale", "4", "--weights", weights)
    proc.stdin.close()
    assert proc.stdout.read(100).startswith(b"YUV4MPEG2")
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 2
    assert "<stdout> was closed by its reader after" in err and "Traceback" not in err and "Exception" not in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_busy_fraction_is_reported(clip, tiny_model, tmp_path):
    from vdsr_fast.video import upscale_video

    r = upscale_video(clip, tmp_path / "gpu.mp4", 2, tiny_model.cuda(), device="cuda", progress=False)
    assert r["frames"] == N and 0 < r["gpu_busy_s"] <= r["seconds"] and 0 < r["gpu_busy_fraction"] <= 1


def _flat_clip(path, pix_fmt, colorspace, color_range, codec="ffv1", size=(32, 16)):
    """3 frames ``size`` (W, H) of one Y'CbCr colour (Y, Cb, Cr) = (120, 90, 170), in a 10-bit format 4x that + 2 (so
    an 8-bit path cannot hit it), tagged with the matrix (0: untagged; primaries and transfer alike) and range."""
    deep = "10" in pix_fmt
    dt = np.uint16 if deep else np.uint8
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=10)
        (v.width, v.height), v.pix_fmt = size, pix_fmt
        if colorspace:
            cc = v.codec_context
            cc.colorspace = cc.color_primaries = cc.color_trc = colorspace
        if color_range:
            v.codec_context.color_range = color_range
        f = av.VideoFrame(*size, pix_fmt)
        for plane, value in zip(f.planes, (120, 90, 170)):
            _plane(plane, dt)[:] = 4 * value + 2 if deep else value
        if colorspace:
            f.colorspace = colorspace
        if color_range:
            f.color_range = color_range
        for i in range(3):
            f.pts, f.time_base = i, Fraction(1, 10)
            c.mux(v.encode(f))
        c.mux(v.encode(None))


def _plane(plane, dt):
    return np.frombuffer(plane, dt).reshape(plane.height, plane.line_size // np.dtype(dt).itemsize)[:, : plane.width]


def _flat_planes(path):
    """((min, max) of each plane of the first frame, (pix_fmt, matrix, range, primaries, transfer) tags)."""
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context
        frame = next(c.decode(video=0))
        dt = np.uint16 if frame.format.components[0].bits > 8 else np.uint8
        spans = [(int(_plane(p, dt).min()), int(_plane(p, dt).max())) for p in frame.planes]
        return spans, (cc.pix_fmt, int(cc.colorspace), int(cc.color_range), int(cc.color_primaries), int(cc.color_trc))


@pytest.fixture
def zero_residual(tmp_path):
    """VDSR with every weight and bias 0: the output is the bicubic upscale, which keeps a flat frame flat."""
    from vdsr_fast import VDSR

    m = VDSR()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    return str(save(m, tmp_path / "zero.safetensors"))


@pytest.mark.device_image  # PyAV's colour conversion and side data differ between releases
@pytest.mark.parametrize(
    "colorspace, color_range, matrix_tag",
    [(1, 1, 1), (1, 2, 1), (9, 1, 9), (0, 0, 6)],
    ids=["bt709", "bt709-full-range", "bt2020", "untagged"],
)
def test_colours_come_out_as_they_went_in(tmp_path, zero_residual, colorspace, color_range, matrix_tag):
    """Decoded and encoded with the input's matrix and range, and tagged so: PyAV's own encode-side default (BT.601,
    limited) moved a BT.709 colour by 4 levels and dropped the tags. An untagged SD input is tagged BT.601, the
    matrix it went through, so that a player does not guess BT.709 for the larger output."""
    src, out = tmp_path / "flat.mkv", tmp_path / "out.mkv"
    _flat_clip(src, "yuv444p", colorspace, color_range)
    assert _run(src, out, "--weights", zero_residual, "--codec", "libx264", "--crf", "0") == 0
    (spans_in, _), (spans_out, tags) = _flat_planes(src), _flat_planes(out)
    for (lo, hi), (want, _) in zip(spans_out, spans_in):
        assert want - 1 <= lo <= hi <= want + 1, (spans_in, spans_out)  # full range: 8-bit RGB in between
    primaries = colorspace or 2
    assert tags[1:] == (matrix_tag, color_range or 1, primaries, primaries)


@pytest.mark.parametrize("size, matrix", [((1280, 16), 1), ((720, 577), 1), ((1279, 576), 5), ((720, 480), 5)])
def test_an_untagged_input_takes_the_matrix_a_player_guesses_for_its_size(size, matrix):
    """Untagged (unspecified or reserved): BT.709 from 1280 wide or more than 576 tall, else BT.601, as mpv and VLC
    guess (was BT.601 for every size: an untagged HD video, shown as BT.709, came out tagged BT.601 with the same
    Y'CbCr, its colours shifted by up to 23 levels); tagged streams keep their matrix, others BT.601."""
    from types import SimpleNamespace

    from vdsr_fast.video import _matrix

    for tag in (2, 3, None):
        assert _matrix(SimpleNamespace(colorspace=tag, width=size[0], height=size[1])) == matrix
    for tag, want in ((1, 1), (5, 5), (6, 5), (9, 9), (8, 5), (0, 5)):  # 8: YCgCo, 0: RGB
        assert _matrix(SimpleNamespace(colorspace=tag, width=size[0], height=size[1])) == want


@pytest.mark.device_image  # PyAV's colour conversion and side data differ between releases
def test_an_untagged_hd_input_is_upscaled_and_tagged_as_bt709(tmp_path):
    """End to end, both pipelines: an untagged 1280-wide input's colour is kept (read and written as BT.709) and the
    output is tagged BT.709."""
    from vdsr_fast import VDSR

    zero = VDSR(depth=3, channels=4)
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
    weights = str(save(zero, tmp_path / "zero.safetensors"))
    src = tmp_path / "flat.mkv"
    _flat_clip(src, "yuv444p", 0, 0, size=(1280, 8))
    spans_in, _ = _flat_planes(src)
    for pipeline in ("yuv", "rgb"):
        out = tmp_path / f"{pipeline}.mkv"
        assert _run(src, out, "--weights", weights, "--codec", "libx264", "--crf", "0", "--pipeline", pipeline) == 0
        spans_out, tags = _flat_planes(out)
        for (lo, hi), (want, _) in zip(spans_out, spans_in):
            assert want - 1 <= lo <= hi <= want + 1, (pipeline, spans_in, spans_out)
        assert tags[1:3] == (1, 1), pipeline


@pytest.mark.device_image  # PyAV's colour conversion and side data differ between releases
@pytest.mark.parametrize("pipeline, bits", [("auto", 10), ("rgb", 16)])  # the planes as they are, or 16-bit RGB
def test_10_bit_input_stays_10_bit(tmp_path, zero_residual, pipeline, bits):
    from vdsr_fast.video import upscale_video

    src, out = tmp_path / "deep.mkv", tmp_path / "out.mkv"
    _flat_clip(src, "yuv420p10le", 1, 1, codec="libx264")
    r = upscale_video(src, out, 2, vdsr_fast_load(zero_residual), device="cpu", progress=False, crf=0, pipeline=pipeline)
    assert r["pix_fmt"] == "yuv420p10le" and r["bits"] == bits  # the default follows the input's depth
    (spans_in, _), (spans_out, tags) = _flat_planes(src), _flat_planes(out)
    assert tags[0] == "yuv420p10le"
    for (lo, hi), (want, _) in zip(spans_out, spans_in):
        assert want - 1 <= lo <= hi <= want + 1, (spans_in, spans_out)


def test_12_bit_input_keeps_its_depth_or_warns(tmp_path, zero_residual, capsys):
    """A 12-bit input (found by a review): ffv1, which takes 12 bits, got 10 without a word, and a codec with fewer
    bits than the input's gave fewer silently. The default is now the input's depth where the codec has it, and a
    warning says when it has less."""
    from vdsr_fast.video import upscale_video

    src = tmp_path / "deep12.mkv"
    with av.open(str(src), "w") as c:
        v = c.add_stream("ffv1", rate=10)
        v.width, v.height, v.pix_fmt = 32, 16, "yuv420p12le"
        f = av.VideoFrame(32, 16, "yuv420p12le")
        for plane, value in zip(f.planes, (1930, 1450, 2730)):
            _plane(plane, np.uint16)[:] = value
        for i in range(2):
            f.pts = i
            c.mux(v.encode(f))
        c.mux(v.encode(None))
    model = vdsr_fast_load(zero_residual)
    r = upscale_video(src, tmp_path / "o.mkv", 2, model, device="cpu", progress=False, codec="ffv1")
    assert r["pix_fmt"] == "yuv420p12le" and "warning" not in capsys.readouterr().err
    r = upscale_video(src, tmp_path / "o.mp4", 2, model, device="cpu", progress=False, codec="libx264")
    err = capsys.readouterr().err
    assert r["pix_fmt"] == "yuv420p10le" and "has 12-bit samples (yuv420p12le) and libx264 encodes 10 at most" in err, err


def test_output_format_follows_the_codec():
    from vdsr_fast.video import VideoError, _output_format

    # (codec, --pix-fmt, the input's bits, input with alpha) -> the format encoded
    assert _output_format("libx264", None, 8, False) == "yuv420p"
    assert _output_format("libx264", None, 10, False) == "yuv420p10le"
    assert _output_format("libx264", None, 12, False) == "yuv420p10le"  # its deepest (a warning says so)
    assert _output_format("libx264", None, 8, True) == "yuv420p"  # no alpha in H.264 (a warning says so)
    assert _output_format("libx264", "yuv444p", 8, False) == "yuv444p"
    assert _output_format("ffv1", None, 8, True) == "yuva420p"
    assert _output_format("ffv1", None, 10, True) == "yuva420p10le"
    assert _output_format("ffv1", None, 12, False) == "yuv420p12le"  # it was 10 bits, without a warning
    assert _output_format("ffv1", None, 12, True) == "yuva420p16le"  # no yuva420p12le: the nearest deeper
    assert _output_format("ffv1", None, 9, False) == "yuv420p9le"
    assert _output_format("libx265", None, 12, False) == "yuv420p12le"
    assert _output_format("libx265", None, 16, False) == "yuv420p12le"
    vp9 = [f.name for f in av.Codec("libvpx-vp9", "w").video_formats]  # 8 bits only in PyAV 18.1's FFmpeg
    assert _output_format("libvpx-vp9", None, 10, False) == ("yuv420p10le" if "yuv420p10le" in vp9 else "yuv420p")
    assert _output_format("prores_ks", None, 8, False) == "yuv422p10le"  # takes no 4:2:0: its first format
    assert _output_format("prores_ks", None, 8, True) == "yuva444p10le"
    assert _output_format("qtrle", None, 8, True) == "argb"
    # a codec that lists no formats (rawvideo, .y4m's default): 4:2:0 at a depth FFmpeg has (a float input was 32)
    assert [_output_format("rawvideo", None, b, False) for b in (8, 10, 11, 32)] == [
        "yuv420p", "yuv420p10le", "yuv420p12le", "yuv420p16le"]  # fmt: skip
    with pytest.raises(VideoError, match="mpeg4 cannot encode --pix-fmt yuv444p; it takes yuv420p"):
        _output_format("mpeg4", "yuv444p", 8, False)
    with pytest.raises(VideoError, match="unknown or unavailable codec 'no-such-codec'"):
        _output_format("no-such-codec", None, 8, False)


@pytest.mark.device_image  # PyAV's colour conversion and side data differ between releases
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_rotation_aspect_ratio_and_metadata_are_kept(tmp_path, weights, suffix):
    """A phone clip (rotated 90 degrees by its display matrix), anamorphic pixels and tags: the output had none of
    them, so it played sideways and stretched, without its title."""
    src, out = tmp_path / f"phone{suffix}", tmp_path / f"out{suffix}"
    with av.open(str(src), "w") as c:
        c.metadata["title"], c.metadata["comment"] = "My film", "keep me"
        v = c.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 32, 16, "yuv420p"
        v.codec_context.sample_aspect_ratio = Fraction(32, 27)
        v.metadata["language"], v.metadata["title"] = "fra", "main video"
        v.set_display_rotation(90)
        for i in range(3):
            f = av.VideoFrame.from_ndarray(np.full((16, 32, 3), 100, np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 10)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
    assert _run(src, out, "--weights", weights) == 0
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        meta = {k.lower(): val for k, val in c.metadata.items()}
        assert meta["title"] == "My film" and meta["comment"] == "keep me"
        assert v.metadata["language"] == "fra" and (v.metadata.get("title") or v.metadata.get("name")) == "main video"
        assert v.codec_context.sample_aspect_ratio == Fraction(32, 27)
        assert next(c.decode(video=0)).rotation == 90


@pytest.mark.device_image  # PyAV's colour conversion and side data differ between releases
def test_alpha_is_kept_where_the_codec_can_and_a_warning_says_where_not(tmp_path, zero_residual, capsys):
    src = tmp_path / "alpha.mkv"
    with av.open(str(src), "w") as c:
        v = c.add_stream("ffv1", rate=10)
        v.width, v.height, v.pix_fmt = 32, 16, "yuva420p"
        rgba = np.full((16, 32, 4), 100, np.uint8)
        rgba[..., 3] = 37
        for i in range(2):
            f = av.VideoFrame.from_ndarray(rgba, format="rgba")
            f.pts, f.time_base = i, Fraction(1, 10)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
    for out, codec, kept in [("out.mkv", "ffv1", "yuva420p"), ("out.mov", "qtrle", "argb"), ("out.mp4", "libx264", None)]:
        assert _run(src, tmp_path / out, "--weights", zero_residual, "--codec", codec, "--crf", "-1") == 0
        err = capsys.readouterr().err
        with av.open(str(tmp_path / out)) as c:
            frame = next(c.decode(video=0))
            got = frame.to_ndarray(format="rgba")
        if kept:
            assert frame.format.name == kept and "alpha" not in err
            assert (got[..., 3] == 37).all() and (np.abs(got[..., :3].astype(int) - 100) <= 1).all()
        else:
            assert "has an alpha channel (yuva420p) and libx264 in yuv420p cannot keep it" in err


def test_a_stream_that_changes_size_is_resized_to_its_first_size(tmp_path, weights, capsys):
    """Two H.264 segments of different sizes in one raw stream (a new SPS mid-stream): np.stack raised from a worker
    thread (a traceback); now the later frames are resized to the first size, with one warning."""
    from vdsr_fast.video import upscale_video

    parts = []
    for w, h in ((32, 16), (48, 24)):
        part = tmp_path / f"{w}.h264"
        with av.open(str(part), "w", format="h264") as c:
            v = c.add_stream("libx264", rate=10)
            v.width, v.height, v.pix_fmt = w, h, "yuv420p"
            for i in range(3):
                f = av.VideoFrame.from_ndarray(np.full((h, w, 3), 90, np.uint8), format="rgb24")
                f.pts = i
                c.mux(v.encode(f))
            c.mux(v.encode(None))
        parts.append(part.read_bytes())
    src, out = tmp_path / "both.h264", tmp_path / "out.mp4"
    src.write_bytes(b"".join(parts))
    r = upscale_video(src, out, 2, vdsr_fast_load(weights), device="cpu", progress=False, batch=4)
    assert r["frames"] == 6 and r["resized_frames"] == 3
    assert capsys.readouterr().err.count("changes size mid-stream (32x16 -> 48x24)") == 1
    with av.open(str(out)) as c:
        assert {(f.width, f.height) for f in c.decode(video=0)} == {(64, 32)}


@pytest.mark.device_image  # PyAV's colour conversion and side data differ between releases
def test_hdr10_metadata_is_carried_by_x264_and_x265_and_a_warning_says_where_not(tmp_path, weights, capsys):
    """An HDR10 clip's mastering display and light levels (frame side data, which PyAV cannot write) reach the
    output through the encoders' own options; they were lost."""
    from av.sidedata.sidedata import Type

    display = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"
    src = tmp_path / "hdr.mkv"
    with av.open(str(src), "w") as c:
        v = c.add_stream("libx265", rate=10)
        v.width, v.height, v.pix_fmt = 64, 32, "yuv420p10le"
        # One thread and no B-frames: the muxer once refused this 2-frame clip's last packet (EINVAL, in a full
        # suite run only; not reproduced in 200 tries alone): no reordering and no thread timing left to vary.
        v.options = {"x265-params": f"log-level=error:pools=none:frame-threads=1:bframes=0:master-display={display}:max-cll=1000,400"}
        for i in range(2):
            f = av.VideoFrame.from_ndarray(np.full((32, 64, 3), 100, np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 10)
            c.mux(v.encode(f))
        c.mux(v.encode(None))

    def hdr(path):
        with av.open(str(path)) as c:
            frame = next(c.decode(video=0))
            return [None if (d := frame.side_data.get(t)) is None else bytes(d)
                    for t in (Type.MASTERING_DISPLAY_METADATA, Type.CONTENT_LIGHT_LEVEL)]  # fmt: skip

    want = hdr(src)
    assert None not in want
    assert _run(src, tmp_path / "x264.mkv", "--weights", weights, "--codec", "libx264") == 0
    assert hdr(tmp_path / "x264.mkv") == want
    assert "HDR10" not in capsys.readouterr().err
    assert _run(src, tmp_path / "ffv1.mkv", "--weights", weights, "--codec", "ffv1", "--crf", "-1") == 0
    assert hdr(tmp_path / "ffv1.mkv") == [None, None]
    assert "HDR10 metadata (display, cll) is not carried" in capsys.readouterr().err


def test_hdr10_option_syntax():
    from vdsr_fast.video import _hdr10_options

    hdr = {"display": "G(1,2)B(3,4)R(5,6)WP(7,8)L(9,10)", "cll": "1000,400"}
    assert _hdr10_options("libx265", hdr) == {"x265-params": "master-display=G(1,2)B(3,4)R(5,6)WP(7,8)L(9,10):max-cll=1000,400"}
    assert _hdr10_options("libx264", {"cll": "1,2"}) == {"x264-params": "cll=1,2"}
    assert _hdr10_options("ffv1", hdr) is None


def _interlaced_clip(path, n=6):
    """n frames 64x48 coded interlaced (top field first) whose two fields are different pictures, one bright and
    one dark, which swap every frame (as fast motion leaves them): each frame is a comb of alternating rows."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        v.codec_context.flags |= av.codec.context.Flags.interlaced_dct | av.codec.context.Flags.interlaced_me
        v.options = {"x264-params": "tff=1", "crf": "0"}
        for i in range(n):
            img = np.full((48, 64, 3), 40, np.uint8)
            img[i % 2 :: 2] = 200
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 25)
            c.mux(v.encode(f))
        c.mux(v.encode(None))


def _comb(path):
    """Mean |row - mean of its neighbours| over the frames' Y: large for a comb of alternating rows."""
    with av.open(str(path)) as c:
        ys = [f.to_ndarray(format="gray").astype(float) for f in c.decode(video=0)]
    return float(np.mean([np.abs(y[1:-1] - (y[:-2] + y[2:]) / 2).mean() for y in ys])), len(ys)


def test_interlaced_input_is_deinterlaced_on_request_and_warned_about_otherwise(tmp_path, zero_residual, capsys):
    src = tmp_path / "in.mkv"
    _interlaced_clip(src)
    with av.open(str(src)) as c:
        assert c.streams.video[0].codec_context.field_order == 2  # the fixture: top field first
    comb_in, n = _comb(src)
    assert comb_in > 100 and n == 6
    assert _run(src, tmp_path / "as_is.mkv", "--weights", zero_residual, "--pix-fmt", "yuv444p") == 0
    assert "is interlaced (top field first)" in capsys.readouterr().err
    assert _run(src, tmp_path / "deint.mkv", "--weights", zero_residual, "--pix-fmt", "yuv444p", "--deinterlace",
                "--batch", "4") == 0  # fmt: skip
    assert "interlaced" not in capsys.readouterr().err
    comb_as_is, n_as_is = _comb(tmp_path / "as_is.mkv")
    comb_deint, n_deint = _comb(tmp_path / "deint.mkv")
    assert n_as_is == n_deint == n and _probe(tmp_path / "deint.mkv")["times"] == _probe(src)["times"]
    assert comb_as_is > 30 and comb_deint < comb_as_is / 10  # the fields made one picture, not scaled as a comb


def _textured_clip(path, pix_fmt, colorspace=0, color_range=0, n=3, luma=0.8, chroma=0.8, codec="ffv1"):
    """n frames 40x24, lossless (ffv1, or x264 at qp 0), whose planes are smooth random textures (every frame its own), tagged with
    the matrix (0: untagged) and range; returns the planes written, per frame. ``luma``, ``chroma``: the planes'
    spread around mid-grey, as a fraction of the range (small enough: colours inside the RGB gamut)."""
    bits = 10 if "10" in pix_fmt else 8
    dt, m = (np.uint16 if bits > 8 else np.uint8), (1 << bits) - 1
    g = np.random.default_rng(7)
    frames = []
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=10)
        v.width, v.height, v.pix_fmt = 40, 24, pix_fmt
        if codec == "libx264":
            v.options = {"qp": "0"}
        v.codec_context.colorspace = colorspace
        v.codec_context.color_range = color_range
        for i in range(n):
            f = av.VideoFrame(40, 24, pix_fmt)
            planes = []
            for q in f.planes:
                t = torch.rand(1, 1, q.height // 4 + 1, q.width // 4 + 1, generator=torch.Generator().manual_seed(int(g.integers(1 << 30))))
                t = torch.nn.functional.interpolate(t, size=(q.height, q.width), mode="bilinear", align_corners=True)[0, 0]
                spread = luma if not planes else chroma
                a = (0.5 + spread * (t.numpy() - 0.5)) * m  # inside the studio range too
                _plane(q, dt)[:] = planes.append(np.round(a).astype(dt)) or planes[-1]
            frames.append(planes)
            f.pts, f.time_base = i, Fraction(1, 10)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
    return frames


def _planes_of(path):
    with av.open(str(path)) as c:
        out = []
        for f in c.decode(video=0):
            dt = np.uint16 if "10" in f.format.name else np.uint8
            out.append([_plane(q, dt).copy() for q in f.planes])
        return out, c.streams.video[0].codec_context.pix_fmt


@pytest.mark.parametrize("pix_fmt, color_range", [("yuv420p", 1), ("yuv420p10le", 0), ("yuv420p", 2), ("yuvj420p", 0), ("gray", 0)],
                         ids=["8-bit", "10-bit-untagged-range", "full-range", "yuvj", "gray"])  # fmt: skip
def test_yuv_pipeline_is_vdsr_on_the_luma_and_bicubic_on_the_chroma(tmp_path, tiny_model, weights, pix_fmt, color_range):
    """The yuv pipeline (auto's choice for BT.601 video, here untagged) computes what it says, to the sample: the
    luma plane through upscale() (a full-range one mapped to the studio range and back), the chroma planes through
    imresize, both rounded half up, in the input's pixel format; checked on a lossless clip against those calls (with
    torch.round's half to even, 10-bit chroma differed in the ties its bicubic hits)."""
    from vdsr_fast import imresize, upscale
    from vdsr_fast.video import upscale_video

    src, out = tmp_path / "in.mkv", tmp_path / "out.mkv"
    codec = "libx264" if pix_fmt.startswith("yuvj") else "ffv1"  # ffv1 takes no yuvj; x264 at qp 0 is lossless
    frames = _textured_clip(src, pix_fmt, 0, color_range, codec=codec)
    r = upscale_video(src, out, 2, tiny_model, codec=codec, crf=0, pix_fmt=pix_fmt, batch=len(frames), device="cpu", progress=False)
    assert r["pipeline"] == "yuv" and r["pix_fmt"] == pix_fmt and r["bits"] == (10 if "10" in pix_fmt else 8)
    got, fmt = _planes_of(out)
    assert fmt == pix_fmt and len(got) == len(frames)
    m = 1023.0 if "10" in pix_fmt else 255.0
    white = 1020.0 if "10" in pix_fmt else 255.0  # 10-bit studio levels: the 8-bit ones times 4
    y = torch.from_numpy(np.stack([f[0] for f in frames])[:, None].astype(np.float32)) / white
    full = color_range == 2 or pix_fmt.startswith("yuvj")
    if full:
        y = 16 / 255 + y * (219 / 255)
    y = upscale(y, 2, model=tiny_model, backend="torch")
    if full:
        y = (y - 16 / 255) * (255 / 219)
    want = [(y * white + 0.5).floor().clamp(0, m).numpy()[:, 0]]  # rounded half up, as upscale() rounds
    for k in range(1, len(got[0])):  # the chroma planes, as the pipeline resizes them: a batch of float32
        c = torch.from_numpy(np.stack([f[k] for f in frames])[:, None].astype(np.float32)) / m
        want.append((imresize(c, size=got[0][k].shape) * m + 0.5).floor().clamp(0, m).numpy()[:, 0])
    for i, planes in enumerate(got):
        assert all(np.array_equal(planes[k], want[k][i]) for k in range(len(planes)))


@pytest.mark.parametrize("matrix", [6, 1, 9], ids=["bt601", "bt709", "bt2020"])
def test_pipeline_choice_and_the_two_agree(tmp_path, tiny_model, weights, capsys, matrix):
    """auto: yuv where the frames stay planar YUV, rgb for a change of depth; the two pipelines give nearly the same
    luma whatever the matrix (the rgb one rounds to 8-bit RGB twice on the way), with no bias between them."""
    from vdsr_fast.video import upscale_video

    kw = dict(codec="ffv1", device="cpu", progress=False, batch=3)
    src = tmp_path / "in.mkv"
    _textured_clip(src, "yuv420p", matrix, 1, luma=0.3, chroma=0.3)  # saturated colours, inside the gamut
    assert upscale_video(src, tmp_path / "a.mkv", 2, None, **kw)["pipeline"] == "yuv"  # the shipped weights
    assert upscale_video(src, tmp_path / "b.mkv", 2, None, pipeline="rgb", **kw)["pipeline"] == "rgb"
    deeper = upscale_video(src, tmp_path / "c.mkv", 2, tiny_model, pix_fmt="yuv420p10le", **kw)
    assert deeper["pipeline"] == "rgb" and deeper["bits"] == 16  # 16-bit RGB for a 10-bit output, not 8
    yuv, rgb = _planes_of(tmp_path / "a.mkv")[0], _planes_of(tmp_path / "b.mkv")[0]
    diff = [np.abs(a[0].astype(float) - b[0].astype(float)) for a, b in zip(yuv, rgb, strict=True)]
    bias = np.mean([(a[0].astype(float) - b[0]).mean() for a, b in zip(yuv, rgb, strict=True)])
    # measured (BT.601): 0.23 levels apart on average, 2 at most, no bias (0.01; swscale's default rounding made it 1.07)
    assert 0 < np.mean([d.mean() for d in diff]) < 0.5 and max(d.max() for d in diff) <= 3 and abs(bias) < 0.1
    assert _run(src, tmp_path / "f.mkv", "--weights", weights, "--pipeline", "yuv", "--pix-fmt", "yuv420p10le") == 2
    assert ("--pipeline yuv: the output's pixel format yuv420p10le is not the input's yuv420p with other chroma "
            "subsampling" in capsys.readouterr().err)  # fmt: skip


def test_yuv_pipeline_into_other_chroma_subsampling_keeps_the_luma(tmp_path, tiny_model):
    """A 4:4:4 or 4:2:2 input encoded as 4:2:0 (x264's default format) stays in the yuv pipeline: its frames are
    upscaled in their own format and repacked, which leaves the luma as it is."""
    from vdsr_fast.video import upscale_video

    kw = dict(codec="ffv1", device="cpu", progress=False, batch=3)
    for fmt in ("yuv444p", "yuv422p10le"):
        src = tmp_path / f"{fmt}.mkv"
        _textured_clip(src, fmt, 1, 1)
        same = upscale_video(src, tmp_path / f"{fmt}_same.mkv", 2, tiny_model, pix_fmt=fmt, **kw)
        to420 = "yuv420p10le" if "10" in fmt else "yuv420p"
        repacked = upscale_video(src, tmp_path / f"{fmt}_420.mkv", 2, tiny_model, pix_fmt=to420, **kw)
        assert same["pipeline"] == repacked["pipeline"] == "yuv" and repacked["pix_fmt"] == to420
        a, b = _planes_of(tmp_path / f"{fmt}_same.mkv"), _planes_of(tmp_path / f"{fmt}_420.mkv")
        assert (a[1], b[1]) == (fmt, to420) and all(np.array_equal(x[0], y[0]) for x, y in zip(a[0], b[0], strict=True))
        assert b[0][0][1].shape == (24, 40)  # 4:2:0 chroma of the 80x48 output


def test_a_variable_rate_input_into_a_constant_rate_muxer_keeps_the_frames_apart(tmp_path, tiny_model):
    """Frames closer together than the frame period (a variable frame rate: three 10 ms apart at 12 fps) take the
    next free tick of a constant-rate muxer (IVF: VP9 by default, its time base the frame period), never two at one
    time (a player would show one of them); the others keep the tick nearest their time, gaps included."""
    from vdsr_fast.video import upscale_video

    src, out = tmp_path / "vfr.mkv", tmp_path / "out.ivf"
    with av.open(str(src), "w") as c:
        v = c.add_stream("ffv1", rate=FPS)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.codec_context.time_base = Fraction(1, 1000)
        for i, ms in enumerate([0, 10, 20, 250, 500, 750]):
            f = av.VideoFrame.from_ndarray(np.full((H, W, 3), 40 * i, np.uint8), format="rgb24")
            f.pts, f.time_base = ms, Fraction(1, 1000)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
    r = upscale_video(src, out, 2, tiny_model, device="cpu", progress=False)
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.name, v.time_base) == ("vp9", Fraction(1, FPS))
        assert r["frames"] == 6 and [f.pts for f in c.decode(video=0)] == [0, 1, 2, 3, 6, 9]


def test_yuv_pipeline_alpha_edges_are_clamped_not_wrapped(tmp_path, tiny_model):
    """The yuv pipeline's alpha plane is resized bicubically and rounded half up into the sample range, to the sample
    (checked against imresize): next to a hard edge from transparent to opaque the overshoot is clamped at 255 (a
    256 would wrap to 0 in uint8: a transparent fringe inside the opaque part)."""
    from vdsr_fast import imresize
    from vdsr_fast.video import upscale_video

    src, out = tmp_path / "alpha.mkv", tmp_path / "out.mkv"
    alpha = np.zeros((16, 32), np.uint8)
    alpha[:, 16:] = 255
    alpha[4:12, 6:10] = 255
    with av.open(str(src), "w") as c:
        v = c.add_stream("ffv1", rate=10)
        v.width, v.height, v.pix_fmt = 32, 16, "yuva420p"
        for i in range(2):
            f = av.VideoFrame(32, 16, "yuva420p")
            for plane, value in zip(f.planes, (120, 90, 170, alpha)):
                _plane(plane, np.uint8)[:] = value
            f.pts, f.time_base = i, Fraction(1, 10)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
    r = upscale_video(src, out, 2, tiny_model, codec="ffv1", device="cpu", progress=False)
    assert (r["pipeline"], r["pix_fmt"], r["alpha"]) == ("yuv", "yuva420p", True)
    a = torch.from_numpy(alpha)[None, None].float() / 255
    want = (imresize(a, size=(32, 64)) * 255 + 0.5).floor().clamp(0, 255).numpy()[0, 0]
    got, _ = _planes_of(out)
    assert len(got) == 2 and all(np.array_equal(planes[3], want) for planes in got)
    assert (want[:, 34:] == 255).all() and (got[0][3][:, 32:] > 200).all()  # no wrapped samples on the opaque side

"""vdsr-fast video on bad inputs and outputs: a clear message, exit status 2, and nothing left behind.

Truncated inputs follow upscale_video's docstring: a file that still opens is upscaled as far as it
decodes, with a warning; one that does not open (an MP4 cut before its index) is an error.
"""

import contextlib
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av", reason="PyAV is not installed (pip install av): the video command needs it")

from test_video import H, N, W, _frame, _make_clip, _Packet, _probe, _read, _run, mux_tone  # noqa: E402

from vdsr_fast import save  # noqa: E402


@pytest.fixture
def weights(tmp_path_factory, tiny_model):
    # outside tmp_path, so each test's folder holds only what the test makes
    return str(save(tiny_model, tmp_path_factory.mktemp("weights") / "tiny.safetensors"))


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def _fails(capsys, *argv, message):
    """Run the command: exit status 2 and ``message`` in the error line; returns stderr."""
    assert _run(*argv) == 2
    err = capsys.readouterr().err
    assert "vdsr-fast video: error:" in err and message in err, err
    assert "Traceback" not in err
    return err


def test_an_output_ffmpeg_cannot_start_says_why(tmp_path, weights, capsys):
    """An encoder option or a container FFmpeg refuses when the output starts (at the first frame): the error gives
    FFmpeg's reason and what to change (found by a review: it named the hidden temporary file, or avcodec_open2 with
    its options, "returned 22"); nothing is left behind. A video-only input too: a later review found its error was
    still PyAV's, naming the hidden temporary file (the muxer's header, written at the first packet, came after
    the encoder had taken frames: the check asked whether any frame was encoded, not whether anything was written)."""
    src = tmp_path / "in.mp4"
    _make_clip(src)
    err = _fails(capsys, src, tmp_path / "out.ogv", "--weights", weights,
                 message="FFmpeg cannot start libx264 (yuv420p, crf 18) in ogv: [ogv] Unsupported codec id in stream 0; "
                         "pass another --codec, --preset or --pix-fmt, or another container")  # fmt: skip
    assert "returned 22" not in err and ".out." not in err
    silent = tmp_path / "silent.mp4"
    _make_clip(silent, audio=None)  # no audio packet to write the header before the first video packet
    err = _fails(capsys, silent, tmp_path / "out.ogv", "--weights", weights,
                 message="silent.mp4 -> " + str(tmp_path / "out.ogv") + ": FFmpeg cannot start libx264 (yuv420p, crf 18) "
                         "in ogv: [ogv] Unsupported codec id in stream 0; pass another --codec")  # fmt: skip
    assert "returned 22" not in err and ".out." not in err
    silent.unlink()
    _fails(capsys, src, tmp_path / "out.mp4", "--weights", weights, "--preset", "nope",
           message="FFmpeg cannot start libx264 (yuv420p, crf 18, preset nope) in mp4: [libx264] ")
    assert _listing(tmp_path) == ["in.mp4"]
    _fails(capsys, src, tmp_path / "out.xyz", "--weights", weights,
           message="out.xyz: FFmpeg knows no container by the suffix .xyz; use one of .mp4 .m4v .mov")  # was: no list
    assert _listing(tmp_path) == ["in.mp4"]


def test_random_bytes(tmp_path, weights, capsys):
    bad = tmp_path / "noise.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(20_000))
    out = tmp_path / "out.mp4"
    err = _fails(capsys, bad, out, "--weights", weights, message="cannot read")
    assert str(bad) in err
    assert _listing(tmp_path) == ["noise.mp4"]


def _no_picture_size(path):
    """The first 30 bytes of a PNG (its signature and part of IHDR): FFmpeg opens them as a 0x0 video stream."""
    from PIL import Image

    png = path.with_name("whole.png")
    Image.fromarray(np.zeros((33, 47, 3), np.uint8)).save(png)
    path.write_bytes(png.read_bytes()[:30])
    png.unlink()


def test_a_video_stream_without_a_picture_size_is_an_error(tmp_path, weights, capsys):
    """A file FFmpeg opens as a video stream of no size (found by a review: a PNG's first 30 bytes named b.mp4) is a
    one-line error, exit status 2; it was a ZeroDivisionError (the sample aspect ratio's Fraction(0, 0)), exit status
    1, which in a folder stopped the batch. In a folder it is reported and the rest still written."""
    bad = tmp_path / "b.mp4"
    _no_picture_size(bad)
    _fails(capsys, bad, tmp_path / "out.mkv", "--weights", weights,
           message=f"cannot read {bad} as a video: its video stream has no picture size (0x0)")  # fmt: skip
    assert _listing(tmp_path) == ["b.mp4"]
    src, out = tmp_path / "clips", tmp_path / "out"
    src.mkdir()
    _make_clip(src / "a.mkv")
    bad.rename(src / "b.mp4")
    _make_clip(src / "c.mkv")
    assert _run(src, out, "--weights", weights) == 2
    captured = capsys.readouterr()
    assert "has no picture size" in captured.err and "Traceback" not in captured.err, captured.err
    assert "2 of 3 videos -> " in captured.out and "1 failed" in captured.out
    assert _listing(out) == ["a.mkv", "c.mkv"]


def test_an_unexpected_error_on_one_file_of_a_folder_is_reported_and_the_rest_written(tmp_path, weights, capsys,
                                                                                       monkeypatch):  # fmt: skip
    """In a folder, any error on one file (a bug, like the ZeroDivisionError a file of no picture size gave) is that
    file's error line and the batch goes on, as for a file that cannot be read; it stopped the batch with a
    traceback. Alone, such an error still raises (a traceback to report); Ctrl-C still stops the folder."""
    from vdsr_fast import video

    src, out = tmp_path / "clips", tmp_path / "out"
    src.mkdir()
    for name in ("a.mkv", "b.mkv", "c.mkv"):
        _make_clip(src / name)
    real = video.upscale_video

    def failing_on(name, error):
        def upscale_video(s, d, *a, **kw):
            if Path(s).name == name:
                raise error
            return real(s, d, *a, **kw)

        return upscale_video

    monkeypatch.setattr(video, "upscale_video", failing_on("b.mkv", ZeroDivisionError("Fraction(0, 0)")))
    assert _run(src, out, "--weights", weights) == 2
    captured = capsys.readouterr()
    assert f"vdsr-fast video: error: {src / 'b.mkv'}: ZeroDivisionError: Fraction(0, 0)" in captured.err, captured.err
    assert "Traceback" not in captured.err and "2 of 3 videos -> " in captured.out
    assert _listing(out) == ["a.mkv", "c.mkv"]
    with pytest.raises(ZeroDivisionError):
        _run(src / "b.mkv", tmp_path / "b.mkv", "--weights", weights)
    monkeypatch.setattr(video, "upscale_video", failing_on("a.mkv", KeyboardInterrupt()))
    assert _run(src, tmp_path / "out2", "--weights", weights) == 130
    assert not (tmp_path / "out2").exists() or _listing(tmp_path / "out2") == []


def test_missing_input(tmp_path, weights, capsys):
    _fails(capsys, tmp_path / "missing.mp4", tmp_path / "out.mp4", "--weights", weights, message="no such file")
    _fails(capsys, tmp_path, tmp_path / "out", "--weights", weights, message="no video in this folder")  # the CLI: a batch
    from vdsr_fast.video import VideoError, upscale_video

    with pytest.raises(VideoError, match="is a folder, not a video"):  # the function: one video
        upscale_video(tmp_path, tmp_path / "out.mp4", progress=False)
    assert _listing(tmp_path) == []


def test_mp4_cut_before_its_index_is_an_error(tmp_path, weights, capsys):
    full = tmp_path / "full.mp4"
    _make_clip(full)  # the index (moov) is written at the end
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    _fails(capsys, cut, tmp_path / "out.mp4", "--weights", weights, message=f"cannot read {cut} as a video")
    assert _listing(tmp_path) == ["cut.mp4", "full.mp4"]


def _faststart(src, dst):
    """Remux with the MP4 index first, so a cut file still opens."""
    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "faststart"}) as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for p in i.demux():
            if p.size:
                p.stream = streams[p.stream.index]
                o.mux(p)


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_truncated_input_is_upscaled_as_far_as_it_decodes(tmp_path, weights, capsys, suffix):
    full = tmp_path / f"full{suffix}"
    if suffix == ".mp4":
        _make_clip(tmp_path / "plain.mp4")
        _faststart(tmp_path / "plain.mp4", full)
        (tmp_path / "plain.mp4").unlink()
    else:
        _make_clip(full)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    out = tmp_path / f"out{suffix}"
    assert _run(cut, out, "--weights", weights) == 0
    captured = capsys.readouterr()
    assert f"warning: {cut} looks truncated or damaged" in captured.err
    assert "that could be decoded" in captured.err
    got, src = _probe(out), _probe(full)
    frames = len(got["times"])
    assert 0 < frames < N and f"{frames} frames" in captured.out
    assert got["size"] == (2 * W, 2 * H) and got["audio"] == ["aac"]
    assert got["times"] == src["times"][:frames]  # the first frames, at their times
    assert _listing(tmp_path) == sorted([full.name, cut.name, out.name])


def test_intact_input_gives_no_truncation_warning(tmp_path, weights, capsys):
    src = tmp_path / "in.mkv"  # Matroska stores no frame count: the check is on the stream end times
    _make_clip(src)
    assert _run(src, tmp_path / "out.mkv", "--weights", weights) == 0
    assert "warning" not in capsys.readouterr().err


def test_input_with_no_decodable_frame_is_an_error(tmp_path, weights, capsys):
    full = tmp_path / "full.mkv"
    _make_clip(full)
    with av.open(str(full)) as c:  # cut inside the first video packet: the headers parse, no frame decodes
        first = next(p for p in c.demux(video=0) if p.size)
        cut_at = first.pos + first.size // 2
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[:cut_at])
    _fails(capsys, cut, tmp_path / "out.mkv", "--weights", weights, message=f"cannot read {cut} as a video: no video frame could be decoded")
    assert _listing(tmp_path) == ["cut.mkv", "full.mkv"]


@pytest.fixture
def clip(tmp_path_factory):
    p = tmp_path_factory.mktemp("clip") / "in.mp4"
    _make_clip(p)
    return p


def test_existing_output_needs_force(clip, tmp_path, weights, capsys):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"keep me")
    _fails(capsys, clip, out, "--weights", weights, message=f"{out} exists; pass --force to overwrite it")
    assert out.read_bytes() == b"keep me" and _listing(tmp_path) == ["out.mp4"]
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    _fails(capsys, clip, folder, "--weights", weights, "--force", message="is a folder")
    assert _listing(folder) == []


def test_output_folder_missing_or_not_a_folder(clip, tmp_path, weights, capsys):
    _fails(capsys, clip, tmp_path / "nowhere" / "out.mp4", "--weights", weights, message="output folder does not exist")
    (tmp_path / "file").write_bytes(b"")
    _fails(capsys, clip, tmp_path / "file" / "out.mp4", "--weights", weights, message="is not a folder")
    assert _listing(tmp_path) == ["file"]


def test_output_folder_not_writable(clip, tmp_path, weights, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # what a read-only folder does (root ignores chmod)
    _fails(capsys, clip, tmp_path / "out.mp4", "--weights", weights, message=f"cannot write into {tmp_path}: Permission denied")
    assert _listing(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_output_folder_read_only(clip, tmp_path, weights, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        _fails(capsys, clip, ro / "out.mp4", "--weights", weights, message=f"cannot write into {ro}")
        assert _listing(ro) == []
    finally:
        ro.chmod(0o755)


def test_failure_mid_stream_leaves_nothing(clip, tmp_path, weights, monkeypatch):
    import vdsr_fast.api

    real, calls = vdsr_fast.api.upscale, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom in batch 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(vdsr_fast.api, "upscale", flaky)
    with pytest.raises(RuntimeError, match="boom in batch 2"):
        _run(clip, tmp_path / "out.mp4", "--weights", weights, "--batch", "3")
    assert _listing(tmp_path) == []



def test_ctrl_c_mid_stream_leaves_nothing_and_keeps_an_old_output(clip, tmp_path, weights, monkeypatch, capsys):
    """Ctrl-C while frames are in flight (raised in the upscale thread, as a signal would surface in
    any of them): exit 130, and the previous file under the output's name is untouched."""
    import vdsr_fast.api

    real, calls = vdsr_fast.api.upscale, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous encode")
    monkeypatch.setattr(vdsr_fast.api, "upscale", interrupted)
    assert _run(clip, out, "--weights", weights, "--batch", "3", "--force") == 130
    assert "vdsr-fast video: interrupted" in capsys.readouterr().err
    assert _listing(tmp_path) == ["out.mp4"] and out.read_bytes() == b"the previous encode"


def test_sigterm_mid_stream_leaves_nothing_and_keeps_an_old_output(clip, tmp_path, weights, monkeypatch, capsys):
    """SIGTERM (kill, timeout, a scheduler) while frames are in flight: handled as Ctrl-C in the main thread, so the
    temporary output is removed; exit 143 (was: the process died at once, leaving the hidden temporary file)."""
    import signal

    import vdsr_fast.api

    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM is handled by the test runner here")
    real, calls = vdsr_fast.api.upscale, []

    def terminated(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                raise AssertionError("SIGTERM would kill the process here, leaving the temporary file")
            os.kill(os.getpid(), signal.SIGTERM)  # the main thread's handler raises there
        return real(*args, **kwargs)

    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous encode")
    monkeypatch.setattr(vdsr_fast.api, "upscale", terminated)
    assert _run(clip, out, "--weights", weights, "--batch", "3", "--force") == 143
    assert "vdsr-fast video: terminated" in capsys.readouterr().err
    assert _listing(tmp_path) == ["out.mp4"] and out.read_bytes() == b"the previous encode"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


def test_fused_color_without_triton_is_a_clear_error(clip, tmp_path, weights, capsys, monkeypatch):
    import vdsr_fast.engine

    monkeypatch.setattr(vdsr_fast.engine, "_why_unavailable", lambda name, device: "no Triton here")
    out = tmp_path / "out.mp4"
    _fails(capsys, clip, out, "--weights", weights, "--device", "cpu", "--fused-color",
           message="--fused-color needs Triton on cpu: no Triton here")  # fmt: skip
    assert _listing(tmp_path) == []


def _odd_clip(path, w=11, h=7, frames=2):
    """An odd-sized lossless clip (FFV1, 4:4:4: no chroma subsampling, so any size)."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("ffv1", rate=10)
        v.width, v.height, v.pix_fmt = w, h, "yuv444p"
        rng = np.random.default_rng(0)
        for _ in range(frames):
            c.mux(v.encode(av.VideoFrame.from_ndarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), format="rgb24")))
        c.mux(v.encode(None))


def test_odd_output_size_with_subsampled_chroma_is_a_clear_error(tmp_path, weights, capsys):
    src = tmp_path / "odd.mkv"
    _odd_clip(src)
    out = tmp_path / "out.mp4"
    # x3: 33x21, which yuv420p (the default) cannot hold; the encoder's own message was a bare "Generic error".
    _fails(capsys, src, out, "--weights", weights, "--scale", "3",
           message="the 33x21 output cannot be encoded as yuv420p: its chroma is sampled every 2x2 pixels")  # fmt: skip
    _fails(capsys, src, out, "--weights", weights, "--scale", "3", "--pix-fmt", "yuv422p",
           message="its chroma is sampled every 2x1 pixels")  # fmt: skip
    assert _listing(tmp_path) == ["odd.mkv"]
    # what the message suggests works; x2 and x4 give even sizes in the default format
    assert _run(src, out, "--weights", weights, "--scale", "3", "--pix-fmt", "yuv444p") == 0
    assert _probe(out)["size"] == (33, 21)
    assert _run(src, out, "--weights", weights, "--scale", "2", "--force") == 0
    assert _probe(out)["size"] == (22, 14)


def test_unknown_pixel_format_is_a_clear_error(clip, tmp_path, weights, capsys):
    _fails(capsys, clip, tmp_path / "out.mp4", "--weights", weights, "--pix-fmt", "yuv9000p",
           message="--pix-fmt 'yuv9000p' is not a pixel format FFmpeg knows")  # fmt: skip
    assert _listing(tmp_path) == []


def test_memory_budget_too_small_for_a_tile(tmp_path, weights, capsys):
    """--max-memory below what the smallest tile needs: upscale()'s ValueError as the command's error line (was a
    traceback), and nothing written."""
    src = tmp_path / "in.mp4"
    _make_clip(src)
    _fails(capsys, src, tmp_path / "out.mp4", "--weights", weights, "--max-memory", "0.00000001", message="is too small")
    assert _listing(tmp_path) == ["in.mp4"]


def test_output_naming_the_input_is_refused_even_with_force(clip, weights, capsys):
    """``vdsr-fast video a.mp4 a.mp4 -f`` replaced the source with its upscale (a folder as the input already refused
    itself as the output)."""
    before = clip.read_bytes()
    for out in (clip, clip.parent / "." / clip.name):
        _fails(capsys, clip, out, "--weights", weights, "--force", message=f"{clip} would be overwritten by its own upscale")
    assert clip.read_bytes() == before and _listing(clip.parent) == [clip.name]


def test_an_interrupted_run_leaves_nothing(tmp_path, tiny_model, monkeypatch, capsys):
    """Ctrl-C (or an error) mid-run: the output was being written under a hidden temporary name, which is removed;
    no partial file appears under the output's name. The command says ``interrupted``, exit status 130."""
    from vdsr_fast import video

    src = tmp_path / "in.mp4"
    _make_clip(src)

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        video.upscale_video(src, tmp_path / "out.mkv", 2, tiny_model, batch=2, device="cpu", progress=stop)
    assert _listing(tmp_path) == ["in.mp4"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(video, "upscale_video", interrupted)
    assert video.main([str(src), str(tmp_path / "out.mkv"), "--quiet"]) == 130
    assert capsys.readouterr().err.strip() == "vdsr-fast video: interrupted"


def test_a_damaged_input_is_read_as_far_as_it_goes_and_every_fault_counted():
    """The reader on a damaged stream (fake packets: what a real damaged file does is up to FFmpeg's demuxers): a
    packet the decoder rejects is skipped and counted, a corrupt-flagged one counted, and a demuxer error ends the
    input with the frames the decoder still holds drained, not lost; the latest end time read is the furthest any
    stream reached (an audio packet stored ahead of the video), so the truncation check is not misled. The damage
    report names all three faults."""
    from vdsr_fast.video import _damage_report

    f = [_frame(t) for t in (0, 0.04, 0.08, 0.12)]
    rejected = av.error.InvalidDataError(22, "Invalid data found when processing input")
    broken = av.error.EOFError(541478725, "End of file")
    audio = _Packet(1, 0.5, corrupt=True)
    pipe, frames, passed = _read(
        [_Packet(0, 0), _Packet(0, 0.04, [f[0]]), audio, _Packet(0, 0.08, rejected), _Packet(0, 0.12, [f[1]]), broken,
         _Packet(0, 0.16, [_frame(0.16)])],
        drained=f[2:],
    )  # fmt: skip
    assert frames == f and passed == [audio]  # f[2:] only from the drained decoder; nothing after the error
    assert (pipe.read_error, pipe.decode_errors, pipe.decode_error, pipe.corrupt) == (broken, 1, rejected, 1)
    assert pipe.end == pytest.approx(0.54)
    report = _damage_report(pipe, len(frames), 0, 0.0, None, Fraction(25))
    assert "reading stopped early: [Errno 541478725] End of file" in report and "1 undecodable video packet(s)" in report
    assert "1 packet(s) flagged corrupt" in report and report.endswith("the output holds the 4 frame(s) that could be decoded")


def test_an_input_without_a_video_stream_is_an_error_and_is_closed(tmp_path, tiny_model):
    """An audio-only file is refused with a message saying why (without that check: an IndexError, a traceback), and
    a setup error after the input was opened (here an output size the format cannot hold) closes it: a folder of
    such files must not pile up open descriptors (seen in /proc/self/fd, Linux)."""
    from vdsr_fast.video import VideoError, upscale_video

    src = tmp_path / "audio.mka"
    with av.open(str(src), "w") as c:
        a = c.add_stream("aac", rate=48000)
        a.layout = "stereo"
        mux_tone(c, a, Fraction(1, 2), 0.3)
    with pytest.raises(VideoError, match="it has no video stream"):
        upscale_video(src, tmp_path / "out.mp4", 2, tiny_model, device="cpu", progress=False)

    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc/self/fd to see open files")

    def open_on(path):
        found = []
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):
                found += [fd] if os.readlink(fd) == str(path) else []
        return found

    odd = tmp_path / "odd.mkv"
    _odd_clip(odd)
    # `caught` holds the traceback, hence upscale_video's frame: an input left open is not closed by the collector
    with pytest.raises(VideoError, match="cannot be encoded as yuv420p") as caught:
        upscale_video(odd, tmp_path / "out.mp4", 3, tiny_model, device="cpu", progress=False)
    assert caught.traceback and open_on(odd) == []
    assert _listing(tmp_path) == ["audio.mka", "odd.mkv"]


def test_bad_batch_or_pipeline_is_refused_before_anything_is_written(clip, tmp_path, tiny_model):
    """batch=0 (unchecked: a ValueError from range() in the reader thread, once the output was open) and an unknown
    pipeline name (unchecked: taken as auto) are VideoErrors naming the argument, before anything is written."""
    from vdsr_fast.video import VideoError, upscale_video

    out = tmp_path / "out.mp4"
    with pytest.raises(VideoError, match="--batch must be >= 1, got 0"):
        upscale_video(clip, out, 2, tiny_model, batch=0, device="cpu", progress=False)
    with pytest.raises(VideoError, match="pipeline must be 'auto', 'yuv' or 'rgb', got 'fast'"):
        upscale_video(clip, out, 2, tiny_model, pipeline="fast", device="cpu", progress=False)
    assert _listing(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT to a child process")
def test_a_real_ctrl_c_exits_130_and_leaves_nothing(tmp_path):
    """A real SIGINT (one Ctrl-C, then two) to `vdsr-fast video` mid-run, in a child process: exit 130 (or death by
    SIGINT, when the second came after the first was handled) and no file left (was: the signal landed in the main thread's Thread.join(timeout), which on CPython 3.10-3.12 can mark a
    running worker as ended; the containers were closed and the interpreter shut down under it: SIGABRT, 'terminate
    called without an active exception'). The in-process tests raise KeyboardInterrupt without a signal."""
    import signal
    import subprocess
    import sys
    import time

    import torch

    from vdsr_fast import VDSR

    torch.manual_seed(0)
    weights = save(VDSR().eval(), tmp_path / "full.safetensors")  # the full network: a few frames a second here
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 96, 64, "yuv420p"
        rng = np.random.default_rng(0)
        for i in range(40):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), format="rgb24")
            f.pts = i
            c.mux(v.encode(f.reformat(format="yuv420p")))
        c.mux(v.encode(None))
    for presses in (1, 2):
        out = tmp_path / f"out{presses}.mp4"
        p = subprocess.Popen([sys.executable, "-m", "vdsr_fast", "video", str(clip), str(out), "--weights", str(weights),
                              "--device", "cpu", "--backend", "torch", "--batch", "2", "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             # as a terminal's Ctrl-C finds it: a shell without job control starts background jobs
                             # (a CI script's `cmd &`) with SIGINT ignored, and the child would inherit that
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(f".out{presses}.*")) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the temporary output exists: the workers are about to start
        time.sleep(1.5)
        assert p.poll() is None, "the upscale ended before the signal: make it longer"
        for _ in range(presses):
            p.send_signal(signal.SIGINT)
            time.sleep(0.2)
        _, err = p.communicate(timeout=120)
        # a second Ctrl-C landing after the first was handled ends Python by SIGINT (as a shell reports it: 130)
        assert p.returncode in ((130,) if presses == 1 else (130, -signal.SIGINT)), (presses, err.decode()[-500:])
        assert "vdsr-fast video: interrupted" in err.decode() and "terminate called" not in err.decode()
        assert sorted(q.name for q in tmp_path.iterdir()) == ["clip.mp4", "full.safetensors"]


def test_repeated_timestamps_are_moved_a_tick_on_so_an_mp4_is_written(tmp_path, tiny_model, capsys):
    """A variable-rate input with timestamps repeated (a screen recorder's, a broken capture's; Matroska holds
    them): every frame is kept, each such one moved one tick after the previous, with a warning (was:
    the MP4 muxer refused it when the encoder flushed, at the end of the run: everything lost). Matroska keeps
    the others' times."""
    from vdsr_fast.video import upscale_video

    src = tmp_path / "dup.mkv"
    times = [0, 40, 40, 80, 80, 120]
    with av.open(str(src), "w", format="matroska") as c:
        v = c.add_stream("ffv1", rate=25)  # intra only: the input itself takes the timestamps as they are
        v.width, v.height, v.pix_fmt = 32, 24, "yuv420p"
        v.time_base = v.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            f = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 30 * i, np.uint8), format="rgb24").reformat(format="yuv420p")
            f.pts, f.time_base = t, Fraction(1, 1000)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
    for dst in ("out.mp4", "out.mkv"):
        assert upscale_video(src, tmp_path / dst, 2, tiny_model, backend="torch", device="cpu", progress=False)["frames"] == 6
        assert "2 frame(s) had a timestamp at or before the previous frame's" in capsys.readouterr().err
        with av.open(str(tmp_path / dst)) as c:
            got = sorted(round(float(f.time) * 1000) for f in c.decode(video=0))
        assert got == ([0, 40, 41, 80, 81, 120] if dst == "out.mkv" else got) and len(set(got)) == 6


def test_audio_a_muxer_refuses_only_in_its_header_is_skipped_with_a_warning(tmp_path, tiny_model, capsys):
    """FLAC into MOV and AAC into MPEG-PS: the muxer takes the stream and refuses the codec when it writes the
    header: the stream is skipped with a warning quoting the muxer (was: the run failed, naming the hidden
    temporary file); MP4 takes FLAC, so it is copied there."""
    from vdsr_fast.video import upscale_video

    _make_clip(tmp_path / "flac.mkv", audio="flac")
    _make_clip(tmp_path / "aac.mp4")
    for src, dst, kept, why in (("flac.mkv", "out.mov", False, "flac only supported in MP4"),
                                ("aac.mp4", "out.mpg", False, "Unsupported audio codec"),
                                ("flac.mkv", "out.mp4", True, None)):  # fmt: skip
        assert upscale_video(tmp_path / src, tmp_path / dst, 2, tiny_model, backend="torch", device="cpu",
                             progress=False, codec="mpeg2video" if dst.endswith(".mpg") else None)["frames"] == N
        err = capsys.readouterr().err
        with av.open(str(tmp_path / dst)) as c:
            assert len(c.streams.audio) == kept and len(c.streams.video) == 1
            assert len(list(c.decode(video=0))) == N
        if why is None:
            assert "not copying" not in err
        else:
            assert f"warning: not copying audio stream #1 ({src[:-4]}) into" in err and why in err, err


def test_mpeg2_and_mpeg4_part_2_get_the_frame_period_as_their_time_base(tmp_path, tiny_model):
    """MPEG-1/2 take only a standard frame rate as their time base and MPEG-4 part 2 a denominator up to 65535: the
    input's (an MPEG-TS's 1/90000, an MP4's 1/12800) failed to open them into MPEG-TS, Matroska or MP4 (broadcast's
    MPEG-2 in TS). Each frame then goes on the frame rate's grid, as into a muxer of constant frame rate."""
    from vdsr_fast.video import upscale_video

    for src, fmt in (("in.ts", "mpegts"), ("in.mp4", "mp4")):
        with av.open(str(tmp_path / src), "w", format=fmt) as c:
            v = c.add_stream("libx264", rate=25)
            v.width, v.height, v.pix_fmt = 32, 24, "yuv420p"
            for i in range(N):
                f = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 20 * i, np.uint8), format="rgb24")
                f.pts, f.time_base = i, Fraction(1, 25)
                c.mux(v.encode(f.reformat(format="yuv420p")))
            c.mux(v.encode(None))
    for src, dst, codec in (("in.ts", "out.ts", "mpeg2video"), ("in.mp4", "out.mkv", "mpeg2video"),
                            ("in.ts", "out1.mkv", "mpeg1video"), ("in.ts", "out.mp4", "mpeg4")):  # fmt: skip
        r = upscale_video(tmp_path / src, tmp_path / dst, 2, tiny_model, backend="torch", device="cpu", progress=False, codec=codec)
        with av.open(str(tmp_path / dst)) as c:
            times = [float(f.time) - float(c.streams.video[0].start_time * c.streams.video[0].time_base)
                     for f in c.decode(video=0)]  # fmt: skip
        assert r["frames"] == N and times == pytest.approx([i / 25 for i in range(N)], abs=1e-3), (dst, codec, times)


def test_force_writes_through_a_symlink_and_keeps_the_mode_of_the_file_it_replaces(tmp_path, weights):
    """--force over a symbolic link writes the file it names (the link was replaced by a file and the file it named
    left as it was, as open() would not), and over a private 0600 file keeps 0600 (it became 0644)."""
    clip = tmp_path / "clip.mp4"
    _make_clip(clip, audio=None)
    real = tmp_path / "real.mp4"
    real.write_bytes(b"old")
    (tmp_path / "link.mp4").symlink_to(real)
    real.chmod(0o600)
    assert _run(clip, tmp_path / "link.mp4", "--weights", weights, "--force") == 0
    assert (tmp_path / "link.mp4").is_symlink() and real.stat().st_size > 3 and real.stat().st_mode & 0o777 == 0o600
    assert _listing(tmp_path) == ["clip.mp4", "link.mp4", "real.mp4"]

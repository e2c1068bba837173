"""vdsr-fast video: a short generated clip with audio through decode -> upscale -> encode (CPU, tiny model)."""

import sys
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av", reason="PyAV is not installed (pip install av): the video command needs it")

from vdsr_fast import save  # noqa: E402
from vdsr_fast.video import main  # noqa: E402

FPS, N, W, H = 12, 12, 32, 24


def _make_clip(path, audio="aac"):
    """12 frames 32x24 H.264 at 12 fps and 1 s of a 440 Hz tone."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        a = c.add_stream(audio, rate=48000)
        a.layout = "stereo"
        for i in range(N):
            img = np.zeros((H, W, 3), np.uint8)
            img[..., 0] = i * 20
            img[:, : i * 2, 1] = 200
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, FPS)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
        sr, fs, pts = 48000, a.codec_context.frame_size or 1024, 0
        while pts < sr * N // FPS:
            t = np.arange(pts, pts + fs) / sr
            tone = np.repeat((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], 2, 0)
            af = av.AudioFrame.from_ndarray(tone, format="fltp", layout="stereo")
            af.sample_rate, af.pts, af.time_base = sr, pts, Fraction(1, sr)
            c.mux(a.encode(af))
            pts += fs
        c.mux(a.encode(None))


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


def test_mkv_mp2_and_codec_options(tmp_path, weights):
    src = tmp_path / "in.mkv"
    _make_clip(src, audio="mp2")
    out = tmp_path / "out.mkv"
    assert _run(src, out, "--scale", "3", "--weights", weights, "--crf", "30", "--preset", "ultrafast", "--pix-fmt", "yuv444p") == 0
    got = _probe(out)
    assert got["size"] == (3 * W, 3 * H) and len(got["times"]) == N and got["audio"] == ["mp2"]
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv444p"


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
    with pytest.raises(VideoError, match="pip install av"):
        _import_av()


def test_forwarded_by_the_cli(clip, weights, tmp_path):
    from vdsr_fast import cli

    if "video" not in cli._FORWARDED:
        pytest.skip("vdsr_fast.cli does not forward 'video' yet")
    out = tmp_path / "out.mp4"
    assert cli.main(["video", str(clip), str(out), "--weights", weights, "--quiet", "--device", "cpu"]) == 0
    assert _probe(out)["size"] == (2 * W, 2 * H)

"""The vdsr-fast command: image formats, overwrite protection, errors, and eval."""

import io
import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from conftest import need_data

import vdsr_fast
from vdsr_fast.cli import main
from vdsr_fast.images import (
    ImageReadError,
    default_file_mode,
    image_info,
    read_frames,
    read_image,
    write_frames,
    write_image,
)


@pytest.fixture
def weights(tmp_path, tiny_model):
    return str(vdsr_fast.save(tiny_model, tmp_path / "tiny.safetensors"))


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "suffix, channels, dtype",
    [
        (".png", 3, np.uint8),
        (".png", 1, np.uint8),
        (".png", 4, np.uint8),
        (".png", 2, np.uint8),
        (".png", 1, np.uint16),
        (".png", 3, np.uint16),
        (".png", 4, np.uint16),
        (".tif", 3, np.uint16),
        (".tif", 1, np.uint8),
        (".bmp", 3, np.uint8),
        (".jpg", 3, np.uint8),
        (".webp", 3, np.uint8),
        (".webp", 4, np.uint8),
    ],
)
def test_upscale_formats(tmp_path, capsys, weights, suffix, channels, dtype):
    rng = np.random.default_rng(0)
    peak = np.iinfo(dtype).max
    arr = rng.integers(0, peak + 1, size=(7, 6, channels)).astype(dtype)
    src = tmp_path / f"in{suffix}"
    write_image(src, arr)
    back = read_image(src)
    assert back.shape == arr.shape and back.dtype == arr.dtype
    if suffix not in (".jpg", ".webp"):
        np.testing.assert_array_equal(back, arr)  # lossless formats round-trip exactly
    dst = tmp_path / f"out{suffix}"
    code, out, _ = _run(capsys, "upscale", str(src), "-o", str(dst), "--scale", "3", "--weights", weights)
    assert code == 0, out
    res = read_image(dst)
    assert res.shape == (21, 18, channels) and res.dtype == arr.dtype
    assert dst.stat().st_mode & 0o777 == default_file_mode()  # as any new file, not mkstemp's 0o600
    if channels in (2, 4):  # alpha is the clamped bicubic upscale of the input alpha
        alpha = vdsr_fast.imresize(torch.from_numpy(arr[..., -1].astype(np.float64) / peak), 3).clamp(0, 1)
        assert np.abs(res[..., -1] / peak - alpha.numpy()).max() <= 0.5 / peak + 1e-9


@pytest.mark.parametrize("suffix, channels, dtype", [(".png", 3, np.uint8), (".png", 4, np.uint8), (".tif", 3, np.uint16),
                                                     (".tif", 1, np.uint8), (".gif", 3, np.uint8), (".webp", 3, np.uint8)])  # fmt: skip
def test_every_frame_of_an_animation_or_multi_page_tiff_is_upscaled(tmp_path, capsys, weights, suffix, channels, dtype):
    """An animated PNG/GIF/WebP or a multi-page TIFF: every frame upscaled as that frame alone would be, the timing
    and loop count kept (was: the first frame only, silently). Into a format of one image: an error, nothing written."""
    rng = np.random.default_rng(1)
    peak = np.iinfo(dtype).max
    frames = [rng.integers(0, peak + 1, size=(7, 6, channels)).astype(dtype) for _ in range(3)]
    src = tmp_path / f"anim{suffix}"
    write_frames(src, frames, durations=[40, 50, 60], loop=3)
    back, timing = read_frames(src)
    assert len(back) == 3 and read_image(src).shape == back[0].shape
    if suffix in (".png", ".tif"):  # lossless
        for a, b in zip(frames, back):
            np.testing.assert_array_equal(a, b)
    if suffix != ".tif":  # TIFF has no timing
        assert timing == {"durations": [40.0, 50.0, 60.0], "loop": 3}
    dst = tmp_path / f"out{suffix}"
    code, out, _ = _run(capsys, "upscale", str(src), "-o", str(dst), "--scale", "2", "--weights", weights)
    assert code == 0 and "3 frames" in out, out
    res, res_timing = read_frames(dst)
    assert len(res) == 3 and res_timing == timing
    for i, frame in enumerate(back):  # each frame as the same image alone
        still = tmp_path / f"still{i}.png" if dtype == np.uint8 or suffix == ".png" else tmp_path / f"still{i}.tif"
        write_image(still, frame)
        one = tmp_path / f"one{i}{still.suffix}"
        assert _run(capsys, "upscale", str(still), "-o", str(one), "--scale", "2", "--weights", weights)[0] == 0
        want = read_image(one)
        if suffix in (".png", ".tif"):
            np.testing.assert_array_equal(res[i], want)
        else:  # GIF's palette and WebP's lossy coding: close, not exact
            assert res[i].shape == want.shape and np.abs(res[i].astype(int) - want).mean() < 12
    code, _, err = _run(capsys, "upscale", str(src), "-o", str(tmp_path / "one.jpg"), "--scale", "2", "--weights", weights)
    assert code == 2 and "has 3 frames and .jpg holds one image" in err and not (tmp_path / "one.jpg").exists()


def test_upscale_tiles_a_large_image_within_the_memory_budget(tmp_path, capsys, weights, monkeypatch):
    """--max-memory (default auto: 70% of the free memory) tiles an image too large for it, with the same result;
    --tile likewise; a budget too small or not a size is a clear error."""
    from vdsr_fast import tiling

    arr = np.random.default_rng(3).integers(0, 256, size=(30, 26, 3)).astype(np.uint8)
    write_image(tmp_path / "in.png", arr)
    seen = []
    real, real_available = tiling.tile_plan, tiling.available_memory
    monkeypatch.setattr(tiling, "tile_plan", lambda h, w, t: seen.append(t) or real(h, w, t))

    def run(name, *extra):
        code, out, err = _run(capsys, "upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / name), "--weights", weights, *extra)
        assert code == 0, err
        return read_image(tmp_path / name)

    whole = run("whole.png")
    assert len(seen) <= 1 and (not seen or min(seen[0]) >= 60)  # auto: the whole image fits
    monkeypatch.setattr(tiling, "available_memory", lambda device: 2**17)  # 128 KiB free: tiles of 17 px
    np.testing.assert_array_equal(run("auto.png"), whole)
    assert max(seen[-1]) < 30
    monkeypatch.setattr(tiling, "available_memory", real_available)
    np.testing.assert_array_equal(run("tiled.png", "--tile", "16"), whole)
    assert seen[-1] == (16, 16)
    np.testing.assert_array_equal(run("budget.png", "--max-memory", "0.0001"), whole)  # ~105 KiB
    assert max(seen[-1]) < 30
    code, _, err = _run(capsys, "upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "x.png"), "--weights", weights,
                        "--max-memory", "0.00000001")  # fmt: skip
    assert code == 2 and "max_memory=10 bytes (9.31e-09 GiB) is too small" in err and not (tmp_path / "x.png").exists()
    assert re.search(r"needs about \d+ bytes \(\d\.\d+e-\d+ GiB\)", err), err  # --max-memory is in GiB: said in both
    for bad in ("0", "-1", "lots", "inf"):
        with pytest.raises(SystemExit):
            main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "y.png"), "--max-memory", bad])
        assert "expected 'auto' or a positive number of GiB" in capsys.readouterr().err


def test_a_large_image_on_a_terminal_gets_a_progress_bar_over_exact_tiles(tmp_path, capsys, weights, monkeypatch):
    """On a terminal, one image large for the CPU is computed in tiles that move a progress bar; same result."""
    import vdsr_fast.cli as cli
    from vdsr_fast import tiling

    arr = np.random.default_rng(4).integers(0, 256, size=(20, 18, 3)).astype(np.uint8)
    write_image(tmp_path / "in.png", arr)
    whole = tmp_path / "whole.png"
    assert _run(capsys, "upscale", str(tmp_path / "in.png"), "-o", str(whole), "--weights", weights)[0] == 0
    seen = []
    real = tiling.tile_plan
    monkeypatch.setattr(tiling, "tile_plan", lambda h, w, t: seen.append(t) or real(h, w, t))
    monkeypatch.setattr(cli, "_PROGRESS_TILE", 16)
    monkeypatch.setattr(cli, "_PROGRESS_MIN_PIXELS", 40 * 36)  # exactly the output's pixels: the threshold is inclusive
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = _run(capsys, "upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "bar.png"), "--weights", weights)
    assert code == 0 and seen[-1] == (16, 16) and "9/9" in err  # 40x36 output: 3 x 3 tiles of 16
    np.testing.assert_array_equal(read_image(tmp_path / "bar.png"), read_image(whole))


@pytest.mark.parametrize("channels", [3, 2])
def test_upscale_by_any_factor_or_to_a_size(tmp_path, capsys, weights, channels):
    """--scale 1.5 and --size WxH: upscale()'s result for that factor (alpha resized alike), the dpi scaled per axis."""
    arr = np.random.default_rng(5).integers(0, 256, size=(10, 12, channels)).astype(np.uint8)
    from PIL import Image

    Image.fromarray(arr, "RGB" if channels == 3 else "LA").save(tmp_path / "in.png", dpi=(100, 50))
    code, out, _ = _run(capsys, "upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "a.png"), "--scale", "1.5", "--weights", weights)
    assert code == 0 and "(18x15), x1.5" in out
    got = read_image(tmp_path / "a.png")
    assert got.shape == (15, 18, channels)
    if channels == 3:
        want = vdsr_fast.upscale(torch.from_numpy(arr).permute(2, 0, 1), 1.5, vdsr_fast.load(weights)).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, want)
    assert image_info(tmp_path / "a.png")["dpi"] == pytest.approx((150, 75), abs=0.5)
    code, out, _ = _run(capsys, "upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "b.png"), "--size", "30x15", "--weights", weights)
    assert code == 0 and "(30x15), to 30x15" in out and read_image(tmp_path / "b.png").shape == (15, 30, channels)
    assert image_info(tmp_path / "b.png")["dpi"] == pytest.approx((250, 75), abs=0.5)  # x2.5 wide, x1.5 tall
    code, _, err = _run(capsys, "upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "c.png"), "--size", "30x15",
                        "--scale", "2", "--weights", weights)  # fmt: skip
    assert code == 2 and "give --scale or --size, not both" in err
    code, _, err = _run(capsys, "upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "c.png"), "--scale", "5", "--weights", weights)
    assert code == 2 and "scale must be a number from 1 to 4" in err and not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("suffix, dtype", [(".jpg", np.uint8), (".png", np.uint8), (".webp", np.uint8), (".png", np.uint16)])
def test_exif_is_kept_upright_and_resized(tmp_path, capsys, weights, suffix, dtype):
    """A phone photo's EXIF (camera, capture date, GPS...) reaches the output: the orientation set to 1 (the pixels
    were turned upright on reading) and the pixel dimensions to the output's; it was dropped."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Canon", "EOS R5", 6  # Make, Model, Orientation: turn 90 degrees
    ifd = exif.get_ifd(0x8769)
    ifd[0x9003], ifd[0xA002], ifd[0xA003] = "2026:11:27 10:00:00", 12, 8  # DateTimeOriginal, PixelX/YDimension
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (8, 12, 3)).astype(np.uint8)).save(
        tmp_path / "in.jpg", exif=exif.tobytes(), quality=95)
    dst = tmp_path / f"out{suffix}"
    args = ["upscale", str(tmp_path / "in.jpg"), "-o", str(dst), "--weights", weights]
    if dtype == np.uint16:  # a 16-bit output (pypng writes it; the eXIf chunk is inserted by hand)
        arr = read_image(tmp_path / "in.jpg").astype(np.uint16) * 257
        write_image(tmp_path / "in16.png", arr, exif=image_info(tmp_path / "in.jpg")["exif"])
        args[1] = str(tmp_path / "in16.png")
    assert _run(capsys, *args)[0] == 0
    assert read_image(dst).shape[:2] == (24, 16) and read_image(dst).dtype == dtype  # upright: 12 x 8 turned
    with Image.open(dst) as im:
        got = im.getexif()
        assert (got[0x010F], got[0x0110], got[0x0112]) == ("Canon", "EOS R5", 1)
        sub = got.get_ifd(0x8769)
        assert (sub[0x9003], sub[0xA002], sub[0xA003]) == ("2026:11:27 10:00:00", 16, 24)


def test_multi_page_tiff_with_pages_of_different_sizes(tmp_path, capsys, weights):
    """A scanned document's pages need not share a size: each is upscaled and written as its own page."""
    pages = [np.full((6, 5, 3), 90, np.uint8), np.full((4, 7, 1), 200, np.uint8)]
    write_frames(tmp_path / "doc.tif", pages)
    assert [p.shape for p in read_frames(tmp_path / "doc.tif")[0]] == [(6, 5, 3), (4, 7, 1)]
    code, out, _ = _run(capsys, "upscale", str(tmp_path / "doc.tif"), "-o", str(tmp_path / "big.tif"), "--weights", weights)
    assert code == 0, out
    assert [p.shape for p in read_frames(tmp_path / "big.tif")[0]] == [(12, 10, 3), (8, 14, 1)]
    with pytest.raises(ValueError, match="frames of different shapes"):
        write_frames(tmp_path / "x.gif", [np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)])


def _icc_profile() -> bytes:
    """A real sRGB ICC profile (Pillow's littleCMS), or bytes that only stand in for one."""
    try:
        from PIL import ImageCms

        return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    except Exception:
        return bytes(16) + b"RGB " + bytes(108)  # a 128-byte header naming its colour space: enough for these tests


@pytest.mark.parametrize(
    "suffix, channels, dtype",
    [(".png", 3, np.uint8), (".png", 3, np.uint16), (".png", 1, np.uint16), (".jpg", 3, np.uint8),
     (".tif", 3, np.uint16), (".tif", 3, np.uint8), (".bmp", 3, np.uint8)],
)  # fmt: skip
def test_colour_profile_and_resolution_are_kept(tmp_path, capsys, weights, suffix, channels, dtype):
    """The ICC profile (a wide-gamut photo without its profile shows desaturated) and the dots per inch, scaled
    with the pixels so the print size stays: both were dropped. BMP holds no profile."""

    icc = _icc_profile()
    if channels == 1:  # a gray image takes a gray profile
        icc = icc[:16] + b"GRAY" + icc[20:]
    src, dst = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    arr = np.random.default_rng(0).integers(0, np.iinfo(dtype).max + 1, size=(5, 4, channels)).astype(dtype)
    write_image(src, arr, icc_profile=icc, dpi=(300.0, 150.0))
    assert image_info(src) == {"icc_profile": None if suffix == ".bmp" else icc, "dpi": pytest.approx((300.0, 150.0), abs=0.5), "frames": 1, "exif": None}
    code, out, _ = _run(capsys, "upscale", str(src), "-o", str(dst), "--scale", "2", "--weights", weights)
    assert code == 0, out
    assert image_info(dst) == {"icc_profile": None if suffix == ".bmp" else icc, "dpi": pytest.approx((600.0, 300.0), abs=0.5), "frames": 1, "exif": None}
    assert read_image(dst).shape == (10, 8, channels)


def test_a_profile_of_another_colour_space_is_left_out(tmp_path):
    """A CMYK JPEG's profile does not describe the RGB image read from it (nor an RGB profile a gray image)."""
    from vdsr_fast.images import image_info

    rgb_icc = _icc_profile()
    cmyk_icc = rgb_icc[:16] + b"CMYK" + rgb_icc[20:]
    write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8), icc_profile=cmyk_icc)
    write_image(tmp_path / "b.png", np.zeros((4, 4, 1), np.uint8), icc_profile=rgb_icc)
    write_image(tmp_path / "c.png", np.zeros((4, 4, 3), np.uint8), icc_profile=rgb_icc)
    assert [image_info(tmp_path / f"{n}.png")["icc_profile"] for n in "abc"] == [None, None, rgb_icc]


@pytest.mark.parametrize("suffix", [".jpg", ".png"])  # PNG: an eXIf chunk, found without decoding the image
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, capsys, weights, orientation, suffix):
    """A phone photo is stored sideways with an EXIF orientation: read upright, as viewers show it (the output,
    which has no EXIF, came out sideways)."""
    from PIL import Image, ImageOps

    arr = np.random.default_rng(1).integers(0, 256, size=(6, 10, 3)).astype(np.uint8)
    src = tmp_path / f"phone{suffix}"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(src, exif=exif.tobytes(), **({"quality": 100} if suffix == ".jpg" else {}))
    with Image.open(src) as im:
        want = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(read_image(src), want)
    if suffix == ".jpg":  # the resolution turns with the image
        from vdsr_fast.images import image_info

        Image.fromarray(arr).save(src, exif=exif.tobytes(), quality=100, dpi=(300, 100))
        assert image_info(src)["dpi"] == pytest.approx((100, 300) if orientation >= 5 else (300, 100))
    dst = tmp_path / "out.png"
    code, out, _ = _run(capsys, "upscale", str(src), "-o", str(dst), "--scale", "2", "--weights", weights)
    assert code == 0 and read_image(dst).shape == (2 * want.shape[0], 2 * want.shape[1], 3)


def test_upscale_a_batch_of_images_and_folders(tmp_path, capsys, weights):
    """Folders and files in, one output folder out (made when missing), each image under its own name; a file that
    cannot be read is reported and the rest still written (exit status 2); nothing is overwritten without --force."""
    photos, more, out = tmp_path / "photos", tmp_path / "more", tmp_path / "out"
    photos.mkdir()
    more.mkdir()
    rng = np.random.default_rng(0)
    write_image(photos / "a.png", rng.integers(0, 256, (5, 4, 3)).astype(np.uint8))
    write_image(photos / "b.tif", rng.integers(0, 65536, (3, 6, 1)).astype(np.uint16))
    (photos / "notes.txt").write_text("not an image: skipped")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    write_image(more / "c.jpg", rng.integers(0, 256, (4, 4, 3)).astype(np.uint8))
    code, stdout, err = _run(capsys, "upscale", str(photos), str(more / "c.jpg"), "-o", str(out), "--scale", "2",
                             "--weights", weights, "--quiet")  # fmt: skip
    assert code == 2 and "broken.jpg: cannot read image" in err and "3 of 4 images" in stdout and "1 failed" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.tif", "c.jpg"]
    assert read_image(out / "a.png").shape == (10, 8, 3) and read_image(out / "b.tif").shape == (6, 12, 1)
    (photos / "broken.jpg").unlink()
    before = (out / "a.png").read_bytes()
    code, _, err = _run(capsys, "upscale", str(photos), "-o", str(out), "--weights", weights, "--quiet")
    assert code == 2 and "2 of the 2 outputs exist (first: " in err and (out / "a.png").read_bytes() == before
    code, stdout, _ = _run(capsys, "upscale", str(photos), "-o", str(out), "--weights", weights, "--quiet", "--force")
    assert code == 0 and "2 of 2 images" in stdout


def test_batch_refusals(tmp_path, capsys, weights):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for folder in (a, b):
        write_image(folder / "same.png", np.zeros((4, 4, 3), np.uint8))
    cases = [
        ((str(a), "-o", str(a)), "would be overwritten by its own upscale"),  # into its own folder
        ((str(a), str(b), "-o", str(tmp_path / "out")), "would both be written to"),  # two same.png
        ((str(a), "-o", str(a / "same.png")), "is a file; with several inputs or a folder, --output is a folder"),
        ((str(tmp_path / "missing"), str(a), "-o", str(tmp_path / "out")), "no such file or folder"),
        ((str(tmp_path), "-o", str(tmp_path / "out")), "no image in this folder"),
        ((str(a), "-o", str(tmp_path / "no" / "out")), "output folder does not exist"),
    ]
    for argv, message in cases:
        code, _, err = _run(capsys, "upscale", *argv, "--weights", weights)
        assert code == 2 and message in err, (argv, err)
    assert not (tmp_path / "out").exists()


def test_one_image_into_a_folder_keeps_its_name(tmp_path, capsys, weights):
    write_image(tmp_path / "in.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "out").mkdir()
    code, _, _ = _run(capsys, "upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--weights", weights)
    assert code == 0 and read_image(tmp_path / "out" / "in.png").shape == (8, 8, 3)


def test_refuses_to_overwrite_without_force(tmp_path, capsys, weights):
    src, dst = tmp_path / "a.png", tmp_path / "b.png"
    write_image(src, np.zeros((4, 4, 3), np.uint8))
    dst.write_bytes(b"keep me")
    code, _, err = _run(capsys, "upscale", str(src), "-o", str(dst), "--weights", weights)
    assert code == 2 and "--force" in err and dst.read_bytes() == b"keep me"
    code, _, _ = _run(capsys, "upscale", str(src), "-o", str(dst), "--weights", weights, "--force")
    assert code == 0 and read_image(dst).shape == (8, 8, 3)


def test_clear_errors(tmp_path, capsys, weights):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code, _, err = _run(capsys, "upscale", str(bad), "-o", str(tmp_path / "o.png"), "--weights", weights)
    assert code == 2 and "cannot read image" in err
    code, _, err = _run(capsys, "upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png"), "--weights", weights)
    assert code == 2 and "no such file" in err
    src = tmp_path / "a.png"
    write_image(src, np.zeros((4, 4, 3), np.uint8))
    code, _, err = _run(capsys, "upscale", str(src), "-o", str(tmp_path / "o.png"), "--weights", str(tmp_path / "nope.pth"))
    assert code == 2 and "not found" in err
    code, _, err = _run(capsys, "upscale", str(src), "-o", str(tmp_path / "nodir" / "o.png"), "--weights", weights)
    assert code == 2 and "does not exist" in err
    code, _, err = _run(capsys, "upscale", str(src), "-o", str(tmp_path / "o.png"), "--weights", weights, "--backend", "cuda")
    assert code == 2 and "cuda" in err
    assert not (tmp_path / "o.png").exists()


def _synthetic_set(tmp_path):
    folder = tmp_path / "set" / "x2"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        base = rng.random((12, 14, 3))
        img = np.kron(base, np.ones((3, 3, 1)))[:36, :40]  # smooth-ish 36x40 image
        write_image(folder / f"img_{i}_HR.png", (img * 255).round().astype(np.uint8))
    return folder.parent


def test_eval_json_on_a_synthetic_set(tmp_path, capsys, weights):
    folder = _synthetic_set(tmp_path)
    code, out, _ = _run(capsys, "eval", str(folder), "--scale", "2", "--weights", weights, "--json")
    assert code == 0
    res = json.loads(out)
    assert res["n"] == 2 and {"psnr", "ssim", "bicubic_psnr"} <= set(res)
    assert 10 < res["bicubic_psnr"] < 60 and 0 < res["ssim"] <= 1
    code, out, _ = _run(capsys, "eval", str(folder), "--scale", "2", "--weights", weights)
    assert code == 0 and "mean" in out


def test_eval_ctrl_c_in_a_later_scale_reports_the_scales_done(tmp_path, capsys, weights, monkeypatch):
    """Ctrl-C while x3 is scored: x2's finished table is printed, then where x3 stopped; exit status 130 (was: the
    finished scales were lost with it). Without a terminal a line a scale goes to stderr as each one ends."""
    import vdsr_fast.evaluate as ev

    folder = _synthetic_set(tmp_path) / "x2"  # its images, at any scale
    real = ev._score
    monkeypatch.setattr(ev, "_score", lambda path, scale, *a: real(path, scale, *a) if scale == 2 else (_ for _ in ()).throw(KeyboardInterrupt))
    code, out, err = _run(capsys, "eval", str(folder), "--scale", "2", "3", "--weights", weights)
    assert code == 130 and "x2  x2  (paper protocol, 2 images)" in out and "x3  (" not in out
    assert "eval x2: 2 images, mean PSNR" in err and "interrupted: 0 of 2 images" in err and "scored at x3" in err


def test_eval_reads_each_image_once_to_check_then_once_a_scale(tmp_path, capsys, monkeypatch):
    """`vdsr-fast eval --scale 2 3 4` checks the whole set once before any scale runs, reading each image once for
    that, then once a scale to score it (was: three times a scale); the scores are those of one scale at a time."""
    import collections

    import vdsr_fast.evaluate as ev

    folder = _synthetic_set(tmp_path) / "x2"
    code, out, _ = _run(capsys, "eval", str(folder), "--scale", "2", "3", "4", "--bicubic-only", "--json")
    assert code == 0
    alone = [json.loads(_run(capsys, "eval", str(folder), "--scale", str(s), "--bicubic-only", "--json")[1]) for s in (2, 3, 4)]
    assert json.loads(out) == alone
    reads = collections.Counter()
    real = ev.read_image
    monkeypatch.setattr(ev, "read_image", lambda path, *a, **k: reads.update([path.name]) or real(path, *a, **k))
    assert _run(capsys, "eval", str(folder), "--scale", "2", "3", "4", "--bicubic-only", "--json")[0] == 0
    assert reads == {"img_0_HR.png": 4, "img_1_HR.png": 4}
    assert len(ev.check_set(folder, np.int64(2))[1]) == 2  # a numpy integer scale is one scale (a review: TypeError)


def test_eval_bicubic_set5_x2_matches_paper(capsys):
    """DESIGN.md §3: the paper's bicubic column, Set5 x2 = 33.66 dB."""
    folder = need_data("eval", "Set5")
    code, out, _ = _run(capsys, "eval", str(folder), "--scale", "2", "--bicubic-only", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["n"] == 5
    assert res["bicubic_psnr"] == pytest.approx(33.66, abs=0.01)


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "vdsr_fast.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "upscale" in r.stdout and "eval" in r.stdout


def test_ctrl_c_while_writing_leaves_no_partial_file(tmp_path, capsys, weights, monkeypatch):
    """Ctrl-C in the middle of encoding the output: exit 130, no file under the final name, no
    temporary file, and a previous output (overwritten with --force) is kept whole."""
    from PIL import Image

    src, dst = tmp_path / "a.png", tmp_path / "b.png"
    write_image(src, np.zeros((4, 4, 3), np.uint8))

    def interrupted_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half an image")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    code, _, err = _run(capsys, "upscale", str(src), "-o", str(dst), "--weights", weights)
    assert code == 130 and "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "tiny.safetensors"]
    dst.write_bytes(b"previous output")
    code, _, _ = _run(capsys, "upscale", str(src), "-o", str(dst), "--weights", weights, "--force")
    assert code == 130 and dst.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "tiny.safetensors"]



def _no_proc_open(real_open):
    def fake(f, *a, **k):
        if str(f) == "/proc/self/status":
            raise OSError("no /proc on this system")
        return real_open(f, *a, **k)

    return fake


@pytest.mark.parametrize("proc", [True, False], ids=["proc", "os.umask"])
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_output_mode_follows_the_umask(tmp_path, capsys, weights, monkeypatch, mask, proc):
    """Outputs get 0o666 less the umask, whichever way it is read, and reading it leaves it unchanged."""
    import builtins

    if not proc:  # the fallback for systems without /proc/self/status
        monkeypatch.setattr(builtins, "open", _no_proc_open(builtins.open))
    old = os.umask(mask)
    try:
        assert default_file_mode() == 0o666 & ~mask
        assert os.umask(mask) == mask
        src, dst = tmp_path / "in.png", tmp_path / "out.png"
        write_image(src, np.zeros((4, 4, 3), np.uint8))
        code, out, _ = _run(capsys, "upscale", str(src), "-o", str(dst), "--weights", weights)
        assert code == 0, out
        assert dst.stat().st_mode & 0o777 == 0o666 & ~mask
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    "shape, dtype, suffix",
    [
        ((5, 6, 2), np.uint16, ".png"),  # 16-bit gray+alpha: pypng, not Pillow's 8-bit RGBA
        ((3, 6, 2), np.uint8, ".tif"),  # 3 rows tall: not mistaken for a planar (samples, H, W) image
        ((4, 6, 1), np.uint16, ".tif"),
        ((4, 5, 4), np.uint16, ".tif"),
    ],
)
def test_image_files_round_trip_exactly(tmp_path, shape, dtype, suffix):
    arr = np.random.default_rng(1).integers(0, np.iinfo(dtype).max, size=shape).astype(dtype)
    write_image(tmp_path / f"x{suffix}", arr)
    back = read_image(tmp_path / f"x{suffix}")
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    if suffix == ".tif" and dtype == np.uint8:  # other readers see the same image (gray+alpha was once written as
        from PIL import Image  # H pages of W x 2 gray pixels, which only tifffile's own metadata read back)

        with Image.open(tmp_path / "x.tif") as im:
            assert getattr(im, "n_frames", 1) == 1
            np.testing.assert_array_equal(np.asarray(im).reshape(shape), arr)


def test_tiffs_of_other_colour_models_are_converted_not_read_raw(tmp_path):
    """CMYK, Lab and 1-bit TIFFs: Pillow's conversion to RGB / gray (tifffile's raw CMYK samples were read as RGBA,
    Lab as RGB: wrong colours); a float TIFF is still refused."""
    from PIL import Image

    tifffile = pytest.importorskip("tifffile")
    rgb = np.random.default_rng(6).integers(0, 256, (9, 7, 3)).astype(np.uint8)
    for mode in ("CMYK", "LAB"):
        Image.fromarray(rgb).convert(mode).save(tmp_path / f"{mode}.tif")
        want = np.asarray(Image.open(tmp_path / f"{mode}.tif").convert("RGB"))
        np.testing.assert_array_equal(read_image(tmp_path / f"{mode}.tif"), want)
    np.testing.assert_array_equal(read_image(tmp_path / "CMYK.tif"), rgb)  # CMYK from RGB converts back exactly
    Image.fromarray(rgb[..., 0] > 127).save(tmp_path / "bw.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "bw.tif")[..., 0], np.where(rgb[..., 0] > 127, 255, 0))
    tifffile.imwrite(tmp_path / "f.tif", rgb[..., 0].astype(np.float32) / 255)
    with pytest.raises(ImageReadError, match="unsupported TIFF \\(float32"):
        read_image(tmp_path / "f.tif")


def test_32_bit_integer_samples_beyond_16_bits_are_refused_not_wrapped(tmp_path, monkeypatch):
    """A 32-bit integer image that Pillow decodes (mode "I": a TIFF whose compression tifffile cannot decode alone
    falls back to Pillow) was cast to uint16 unchecked, so 70000 read as 4464 and -5 as 65531. Values within 16 bits
    still read exactly; others are refused, naming the file and the range."""
    from PIL import Image

    from vdsr_fast import images

    monkeypatch.setattr(images, "_read_tiff", lambda path, all_pages=False: None)  # as if tifffile could not decode it
    inside = np.array([[0, 1], [40000, 65535]], np.int32)
    Image.fromarray(inside, mode="I").save(tmp_path / "in.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "in.tif")[..., 0], inside.astype(np.uint16))
    for bad, span in ((70000, "0..70000"), (-5, "-5..65535")):
        Image.fromarray(np.where(inside == 40000, bad, inside).astype(np.int32), mode="I").save(tmp_path / "out.tif")
        with pytest.raises(ImageReadError, match=f"out.tif: cannot read image \\(32-bit integer samples {span}, outside"):
            read_image(tmp_path / "out.tif")


def test_planar_tiff_is_read_channels_last(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    planes = np.random.default_rng(2).integers(0, 256, size=(3, 7, 9)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "p.tif", planes, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif"), np.moveaxis(planes, 0, -1))


def test_info_says_what_can_run_here(capsys):
    code, out, _ = _run(capsys, "info")
    assert code == 0 and "versions: vdsr_fast" in out and "torch   available" in out and "default weights: arch vdsr" in out
    assert "vdsr-fast verify checks the fast backends" in out
    code, out, _ = _run(capsys, "info", "--json")
    r = json.loads(out)
    assert code == 0 and set(r) == {"versions", "devices", "cuda_extension", "weights"}
    cpu = r["devices"][0]
    assert cpu["device"] == "cpu" and cpu["backends"]["torch"] is None and cpu["backends"]["cuda"]  # a reason
    assert r["weights"]["arch"] == "vdsr" and len(r["devices"]) == 1 + torch.cuda.device_count()


def test_python_dash_m_runs_the_command():
    """``python -m vdsr_fast`` is ``vdsr-fast`` (where the script is not on PATH, e.g. a notebook's kernel)."""
    r = subprocess.run([sys.executable, "-m", "vdsr_fast", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("vdsr_fast ")


class _Stdio:
    """A pipe as sys.stdin / sys.stdout: .buffer holds the bytes, not a terminal unless said."""

    def __init__(self, data: bytes = b"", tty: bool = False):
        import io

        self.buffer, self.tty = io.BytesIO(data), tty

    def isatty(self):
        return self.tty

    def write(self, text):  # print() to stdout would land here: it must not
        raise AssertionError(f"text written to the stdout that carries the image: {text!r}")

    def flush(self):
        pass


def test_upscale_reads_stdin_and_writes_stdout(tmp_path, capsys, weights, monkeypatch):
    """``... | vdsr-fast upscale - -o - --format png | ...``: the image's format read from its bytes, the output's from
    --format or else the input's; the same pixels as the file run; the summary on stderr, nothing else on stdout."""
    rng = np.random.default_rng(0)
    src = tmp_path / "in.png"
    write_image(src, rng.integers(0, 65535, (9, 13, 3), dtype=np.uint16))
    assert _run(capsys, "upscale", str(src), "-o", str(tmp_path / "file.png"), "--weights", weights)[0] == 0
    want = read_image(tmp_path / "file.png")
    for argv, suffix in [(["-", "-o", "-", "--format", "tif"], ".tif"), (["-", "-o", "-"], ".png"), ([str(src), "-o", "-"], ".png")]:
        out = _Stdio()
        monkeypatch.setattr(sys, "stdin", _Stdio(src.read_bytes()))
        monkeypatch.setattr(sys, "stdout", out)
        code = main(["upscale", *argv, "--weights", weights])
        monkeypatch.undo()
        assert code == 0
        assert "(13x9) -> <stdout> (26x18), x2" in capsys.readouterr().err
        (tmp_path / f"got{suffix}").write_bytes(out.buffer.getvalue())
        got = read_image(tmp_path / f"got{suffix}")
        assert got.dtype == np.uint16 and np.array_equal(got, want)  # 16 bits kept, the file run's pixels
    monkeypatch.setattr(sys, "stdin", _Stdio(src.read_bytes()))
    assert _run(capsys, "upscale", "-", "-o", str(tmp_path / "from_stdin.png"), "--weights", weights)[0] == 0
    assert np.array_equal(read_image(tmp_path / "from_stdin.png"), want)


def test_stdin_and_stdout_refusals(tmp_path, capsys, weights, monkeypatch):
    src = tmp_path / "in.png"
    write_image(src, np.zeros((4, 4, 3), np.uint8) + 9)
    monkeypatch.setattr(sys, "stdin", _Stdio(b"not an image"))
    assert "cannot read stdin as an image: its 12 bytes are in no format Pillow knows" in _run(
        capsys, "upscale", "-", "-o", str(tmp_path / "x.png"), "--weights", weights)[2]  # fmt: skip
    assert "- reads one image from stdin: it cannot go with other inputs" in _run(
        capsys, "upscale", "-", str(src), "-o", str(tmp_path), "--weights", weights)[2]  # fmt: skip
    assert "--format is for -o - (stdout)" in _run(capsys, "upscale", str(src), "-o", str(tmp_path / "y.png"), "--format", "png")[2]
    monkeypatch.setattr(sys, "stdout", _Stdio(tty=True))
    assert "writes the image to stdout, which is a terminal" in _run(capsys, "upscale", str(src), "-o", "-")[2]
    monkeypatch.setattr(sys, "stdin", _Stdio(tty=True))
    assert "reads the image from stdin, which is a terminal" in _run(capsys, "upscale", "-", "-o", str(tmp_path / "z.png"))[2]
    assert not list(tmp_path.glob("[xyz].png"))


def test_upscale_through_real_pipes(tmp_path, weights):
    src = tmp_path / "in.jpg"
    write_image(src, np.random.default_rng(1).integers(0, 255, (10, 12, 3), dtype=np.uint8))
    proc = subprocess.run([sys.executable, "-m", "vdsr_fast", "upscale", "-", "-o", "-", "--format", "png", "--weights",
                           weights, "--device", "cpu"], input=src.read_bytes(), capture_output=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.startswith(b"\x89PNG") and b"<stdin> (12x10) -> <stdout> (24x20)" in proc.stderr


def _no_engine(*_):
    raise AssertionError("the engine was built: the refusal came after the work had started")


def test_output_format_and_input_channels_are_checked_before_the_upscale(tmp_path, capsys, weights, monkeypatch):
    """An output the format cannot hold (no suffix, an unknown one, alpha or 16 bits into a format without them) and an
    input of other channels than gray(+alpha)/RGB(A) are refused before the engine is built, naming the user's own path
    or --format (was: after the whole upscale, naming a temporary file or the API's layout=)."""
    import tifffile

    monkeypatch.setattr("vdsr_fast.cli._engine", _no_engine)
    rgba, la, deep, five = (tmp_path / n for n in ("rgba.png", "la.png", "deep.png", "five.tif"))
    write_image(rgba, np.zeros((6, 6, 4), np.uint8))
    write_image(la, np.zeros((6, 6, 2), np.uint8))
    write_image(deep, np.zeros((6, 6, 3), np.uint16))
    tifffile.imwrite(five, np.zeros((6, 6, 5), np.uint16), photometric="minisblack", planarconfig="contig")
    mixed = tmp_path / "mixed.tif"  # pages of two sizes and channel counts
    with tifffile.TiffWriter(mixed) as tw:
        tw.write(np.zeros((8, 10), np.uint8))
        tw.write(np.zeros((6, 6, 3), np.uint8), photometric="rgb")
    cases = [
        (rgba, "out", f"{tmp_path / 'out'}: not a folder, and no suffix to give the image's format; use one of .png"),
        (rgba, "out.xyz", f"{tmp_path / 'out.xyz'}: unsupported output format '.xyz'; use one of .png"),
        (rgba, "o.jpg", f"{rgba} has an alpha channel and {tmp_path / 'o.jpg'} cannot store it: PNG, TIFF and WebP can"),
        (la, "o.bmp", f"{la} has an alpha channel and {tmp_path / 'o.bmp'} cannot store it"),
        (rgba, "o.bmp", f"{rgba} has an alpha channel and {tmp_path / 'o.bmp'} cannot store it"),  # was written as RGB
        (deep, "o.jpg", f"{deep} is 16-bit and {tmp_path / 'o.jpg'} cannot store 16 bits a sample: PNG and TIFF can"),
        (five, "o.tif", f"{five}: unsupported TIFF (uint16, shape (6, 6, 5)); expected 8/16-bit gray or RGB(A)"),
        (mixed, "o.gif", f"{mixed} has pages of different sizes or channels (10x8x1, 6x6x3) and an animated .gif holds "
                         "frames of one: write it as .tif"),  # was refused after the whole upscale
    ]
    for src, name, message in cases:
        code, _, err = _run(capsys, "upscale", str(src), "-o", str(tmp_path / name), "--weights", weights)
        assert code == 2 and f"vdsr-fast upscale: error: {message}" in err, (name, err)
    monkeypatch.setattr(sys, "stdin", _Stdio(rgba.read_bytes()))
    monkeypatch.setattr(sys, "stdout", _Stdio())
    code, _, err = _run(capsys, "upscale", "-", "-o", "-", "--format", "jpg", "--weights", weights)
    assert code == 2 and "<stdin> has an alpha channel and --format jpg cannot store it" in err and "stdout.jpg" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.png", "five.tif", "la.png", "mixed.tif", "rgba.png", "tiny.safetensors"]


def test_write_image_refuses_alpha_where_the_format_would_drop_it(tmp_path):
    """RGBA or gray+alpha into JPEG or BMP: ValueError naming the file, nothing written. (Pillow writes RGBA to a BMP
    whose fourth byte readers ignore: it read back as RGB, the alpha silently gone.) PNG keeps it."""
    for channels in (2, 4):
        arr = np.random.default_rng(channels).integers(0, 256, (5, 4, channels)).astype(np.uint8)
        for suffix, kind in ((".jpg", "JPEG"), (".bmp", "BMP")):
            with pytest.raises(ValueError, match=f"a{channels}{suffix}: {kind} cannot store an alpha channel"):
                write_image(tmp_path / f"a{channels}{suffix}", arr)
            assert not (tmp_path / f"a{channels}{suffix}").exists()
        write_image(tmp_path / f"a{channels}.png", arr)
        np.testing.assert_array_equal(read_image(tmp_path / f"a{channels}.png"), arr)


def test_a_device_that_cannot_compute_is_a_one_line_error(tmp_path, capsys, weights):
    src = tmp_path / "a.png"
    write_image(src, np.zeros((4, 4, 3), np.uint8))
    for argv in (["upscale", str(src), "-o", str(tmp_path / "o.png")], ["eval", str(tmp_path), "--scale", "2"]):
        code, _, err = _run(capsys, *argv, "--weights", weights, "--device", "meta")
        assert code == 2 and err.startswith(f"vdsr-fast {argv[0]}: error: --device meta") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o.png").exists()


def test_the_input_is_never_overwritten_by_its_own_upscale(tmp_path, capsys, weights):
    """Even with --force (as a batch already refused it): the output naming the input, directly or as its folder."""
    src = tmp_path / "in.png"
    write_image(src, np.zeros((4, 4, 3), np.uint8))
    before = src.read_bytes()
    for out in (src, tmp_path, tmp_path / "." / "in.png"):
        code, _, err = _run(capsys, "upscale", str(src), "-o", str(out), "--weights", weights, "--force")
        assert code == 2 and f"{src} would be overwritten by its own upscale: give another --output" in err, err
    assert src.read_bytes() == before


def test_eval_json_is_valid_for_an_exactly_reproduced_image(tmp_path, capsys):
    """A flat image's bicubic output equals it: PSNR infinite, which --json writes as null (was Infinity, invalid JSON),
    and the mean is that of the other images (was inf)."""
    folder = tmp_path / "set"
    folder.mkdir()
    write_image(folder / "flat_HR.png", np.full((24, 24, 3), 128, np.uint8))
    write_image(folder / "noise_HR.png", np.random.default_rng(0).integers(0, 256, (24, 24, 3)).astype(np.uint8))
    code, out, _ = _run(capsys, "eval", str(folder), "--scale", "2", "--bicubic-only", "--json")

    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")

    res = json.loads(out, parse_constant=refuse)
    rows = {r["name"]: r for r in res["images"]}
    assert code == 0 and rows["flat_HR"]["bicubic_psnr"] is None and rows["flat_HR"]["bicubic_ssim"] == pytest.approx(1)
    assert res["bicubic_psnr"] == pytest.approx(rows["noise_HR"]["bicubic_psnr"]) and res["n"] == 2
    code, out, _ = _run(capsys, "eval", str(folder), "--scale", "2", "--bicubic-only")
    assert code == 0 and "inf" in out.splitlines()[3] and f"{rows['noise_HR']['bicubic_psnr']:.2f}" in out.splitlines()[-1]


@pytest.mark.parametrize("side, ok", [(1, False), (5, False), (19, False), (20, True)])
def test_eval_names_an_image_too_small_for_the_protocol(tmp_path, capsys, side, ok):
    """At x4 the protocol shaves 4 pixels a border and SSIM needs 11x11 after that: a 20x20 HR image is the smallest
    (was: imresize's or psnr's error, naming no file)."""
    folder = tmp_path / "set"
    folder.mkdir()
    write_image(folder / "big.png", np.random.default_rng(0).integers(0, 256, (24, 24, 1)).astype(np.uint8))
    write_image(folder / "small.png", np.random.default_rng(1).integers(0, 256, (side, side, 1)).astype(np.uint8))
    code, _, err = _run(capsys, "eval", str(folder), "--scale", "4", "--bicubic-only", "--json")
    if ok:
        assert code == 0, err
    else:
        assert code == 2 and f"{folder / 'small.png'}: {side}x{side} is too small to score at x4" in err, err
        assert "(at least 20x20)" in err


def test_a_batch_folder_skips_hidden_files_and_subfolders(tmp_path, capsys, weights):
    """A folder's hidden files (a macOS ``._`` resource fork, the temporary output of a killed run) and subfolders are
    not inputs (was: each hidden one upscaled, a resource fork failing the batch with exit status 2)."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name in ("a.png", ".a.png.k3j2x9.png", "sub/c.png"):
        write_image(photos / name, np.zeros((4, 4, 3), np.uint8))
    (photos / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    code, stdout, err = _run(capsys, "upscale", str(photos), "-o", str(tmp_path / "out"), "--weights", weights, "--quiet")
    assert code == 0 and "1 of 1 images" in stdout and not err, err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]
    for name in ("b.ppm", "c.AVIF", "notes"):  # other suffixes: left out, and said so (they were silently)
        (photos / name).write_bytes(b"")
    code, stdout, err = _run(capsys, "upscale", str(photos), "-o", str(tmp_path / "out2"), "--weights", weights, "--quiet")
    assert code == 0 and "1 of 1 images" in stdout, err
    assert f"{photos}: 3 file(s) of other suffixes left out (.avif, .ppm, no suffix); name a file" in err, err


def test_an_output_name_ending_with_a_slash_is_a_folder(tmp_path, capsys, weights, monkeypatch):
    """-o NEW/ is a folder, made (its parent must exist), for one image too (found by a review: 'newdir: not a folder,
    and no suffix', the slash dropped; and -o new.png/ wrote a file); a batch's new -o with an image suffix is refused
    (it made a folder called outdir.png); a failed upscale leaves no empty folder behind."""
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for src in (a, b):
        write_image(src, np.zeros((4, 4, 3), np.uint8))
    for out in ("new", "new.png"):
        code, stdout, err = _run(capsys, "upscale", str(a), "-o", str(tmp_path / out) + "/", "--weights", weights, "--quiet")
        assert code == 0 and read_image(tmp_path / out / "a.png").shape == (8, 8, 3), err
    code, _, err = _run(capsys, "upscale", str(a), str(b), "-o", str(tmp_path / "batch.png"), "--weights", weights)
    assert code == 2 and "batch.png: with several inputs or a folder, --output is a folder, and this new one's name" in err
    assert not (tmp_path / "batch.png").exists()
    assert _run(capsys, "upscale", str(a), str(b), "-o", str(tmp_path / "batch.png") + "/", "--weights", weights)[0] == 0
    assert sorted(p.name for p in (tmp_path / "batch.png").iterdir()) == ["a.png", "b.png"]
    code, _, err = _run(capsys, "upscale", str(a), "-o", str(tmp_path / "no" / "deeper") + "/", "--weights", weights)
    assert code == 2 and f"{tmp_path / 'no'}: output folder does not exist" in err
    (tmp_path / "bad.png").write_bytes(b"not a png")
    code, _, err = _run(capsys, "upscale", str(tmp_path / "bad.png"), "-o", str(tmp_path / "left") + "/", "--weights", weights)
    assert code == 2 and not (tmp_path / "left").exists(), err
    code, _, err = _run(capsys, "upscale", str(a), "-o", str(b) + "/", "--weights", weights)
    assert code == 2 and f"{b} is a file, not a folder" in err
    monkeypatch.setattr(sys, "stdin", _Stdio(a.read_bytes()))  # stdin's image too
    assert _run(capsys, "upscale", "-", "-o", str(tmp_path / "piped") + "/", "--weights", weights)[0] == 0
    assert read_image(tmp_path / "piped" / "stdin.png").shape == (8, 8, 3)


def test_stdout_takes_one_image_and_empty_stdin_is_named(tmp_path, capsys, weights, monkeypatch):
    """``-o -`` with several inputs or a folder is refused (was: the first image written, the rest dropped, exit 0);
    an empty stdin says so."""
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for src in (a, b):
        write_image(src, np.zeros((4, 4, 3), np.uint8))
    for inputs in ([str(a), str(b)], [str(tmp_path)]):
        monkeypatch.setattr(sys, "stdout", _Stdio())
        code = main(["upscale", *inputs, "-o", "-", "--weights", weights])
        assert code == 2 and sys.stdout.buffer.getvalue() == b""
        assert "-o - writes one image to stdout: give one input image" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", _Stdio(b""))
    code, _, err = _run(capsys, "upscale", "-", "-o", str(tmp_path / "c.png"), "--weights", weights)
    assert code == 2 and "stdin is empty" in err and not (tmp_path / "c.png").exists()


def test_an_interrupted_batch_resumes_with_skip_existing(tmp_path, capsys, weights, monkeypatch):
    """Ctrl-C in a batch says how far it got; --skip-existing then upscales only what is missing (was: a rerun refused
    without --force and redid every image with it). With --force it is a usage error; one image is skipped too."""
    import vdsr_fast.cli as cli

    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        write_image(photos / name, np.zeros((4, 4, 3), np.uint8))
    real, calls = cli._upscale_image, []

    def interrupted_at_the_second(*a, **k):
        calls.append(a[0].name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cli, "_upscale_image", interrupted_at_the_second)
    code, _, err = _run(capsys, "upscale", str(photos), "-o", str(out), "--weights", weights, "--quiet")
    assert code == 130 and f"interrupted: 1 of 3 images written to {out}; the same command with --skip-existing" in err
    monkeypatch.setattr(cli, "_upscale_image", real)
    first = (out / "a.png").stat().st_mtime_ns
    code, _, err = _run(capsys, "upscale", str(photos), "-o", str(out), "--weights", weights, "--quiet")
    assert code == 2 and "or --skip-existing to keep them" in err
    code, stdout, _ = _run(capsys, "upscale", str(photos), "-o", str(out), "--weights", weights, "--quiet", "--skip-existing")
    assert code == 0 and "2 of 2 images" in stdout and "1 existing left as they were" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"] and (out / "a.png").stat().st_mtime_ns == first
    code, stdout, _ = _run(capsys, "upscale", str(photos / "a.png"), "-o", str(out), "--weights", weights, "--skip-existing")
    assert code == 0 and "exists: left as it is" in stdout and (out / "a.png").stat().st_mtime_ns == first
    with pytest.raises(SystemExit) as e:
        main(["upscale", str(photos), "-o", str(out), "--force", "--skip-existing"])
    assert e.value.code == 2


def test_sigterm_leaves_no_temporary_file(tmp_path, capsys, weights, monkeypatch):
    """SIGTERM (kill, timeout, a scheduler) while the output is written: exit 143 and no temporary file left (was: the
    process died at once, leaving a hidden ``.b.png.XXXX.png`` beside the output)."""
    import signal

    from PIL import Image

    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM is handled by the test runner here")
    src, dst = tmp_path / "a.png", tmp_path / "b.png"
    write_image(src, np.zeros((4, 4, 3), np.uint8))

    def terminated_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half an image")
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            raise AssertionError("SIGTERM would kill the process here, leaving the temporary file")
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # the handler runs at the next bytecode
            pass

    monkeypatch.setattr(Image.Image, "save", terminated_save)
    code, _, err = _run(capsys, "upscale", str(src), "-o", str(dst), "--weights", weights)
    assert code == 143 and "terminated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "tiny.safetensors"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


def test_jpeg_quality_option(tmp_path, capsys, weights):
    src = tmp_path / "a.png"
    write_image(src, np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8))
    sizes = {}
    for q in ("95", "30"):
        code, _, _ = _run(capsys, "upscale", str(src), "-o", str(tmp_path / f"q{q}.jpg"), "--weights", weights, "--quality", q)
        assert code == 0
        sizes[q] = (tmp_path / f"q{q}.jpg").stat().st_size
    assert sizes["30"] < sizes["95"]
    code, _, _ = _run(capsys, "upscale", str(src), "-o", str(tmp_path / "d.jpg"), "--weights", weights)
    assert (tmp_path / "d.jpg").read_bytes() == (tmp_path / "q95.jpg").read_bytes()  # 95: the default
    with pytest.raises(SystemExit) as e:
        main(["upscale", str(src), "-o", str(tmp_path / "x.jpg"), "--quality", "0"])
    assert e.value.code == 2 and "from 1 to 100" in capsys.readouterr().err


def test_a_file_name_outside_the_locale_encoding_is_printed(tmp_path, capsys, weights, monkeypatch):
    """A file name that is not valid UTF-8 (an old archive's Latin-1 name) on a strict UTF-8 stdout: the summary line
    escapes it (was: UnicodeEncodeError, a traceback and exit status 1 after the output was written)."""
    import io

    src = tmp_path / "caf\udce9.png"  # the bytes b"caf\xe9.png"
    try:
        write_image(src, np.zeros((4, 4, 3), np.uint8))
    except (OSError, UnicodeError):
        pytest.skip("this file system takes UTF-8 names only")
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # errors="strict", as under en_US.UTF-8
    monkeypatch.setattr(sys, "stdout", out)
    code = main(["upscale", str(src), "-o", str(tmp_path / "o.png"), "--weights", weights])
    out.flush()
    assert code == 0 and b"caf\\udce9.png (4x4) -> " in out.buffer.getvalue()


def test_a_palette_png_with_a_transparent_entry_reads_as_rgba(tmp_path):
    """A palette PNG with a tRNS entry: RGBA, the palette looked up and that entry's pixels alpha 0 (not RGB)."""
    from PIL import Image

    rng = np.random.default_rng(11)
    idx = rng.integers(0, 16, (5, 7)).astype(np.uint8)
    pal = rng.integers(0, 256, (16, 3)).astype(np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(pal.ravel().tolist())
    im.save(tmp_path / "p.png", transparency=3)
    want = np.dstack([pal[idx], np.where(idx == 3, 0, 255).astype(np.uint8)])
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), want)


def test_palette_with_alpha_and_mixed_frames_become_rgba():
    """A PA image: RGBA (palette colours, its alpha), not gray; frames of mixed modes: RGBA, gray repeated, alpha last."""
    from PIL import Image

    from vdsr_fast.images import _as_rgba, _pil_array

    rng = np.random.default_rng(12)
    idx = rng.integers(0, 8, (4, 6)).astype(np.uint8)
    pal = rng.integers(0, 256, (8, 3)).astype(np.uint8)
    alpha = rng.integers(0, 256, (4, 6)).astype(np.uint8)
    p = Image.fromarray(idx, "P")
    p.putpalette(pal.ravel().tolist())
    pa = p.convert("PA")
    pa.putalpha(Image.fromarray(alpha))
    np.testing.assert_array_equal(_pil_array(pa), np.dstack([pal[idx], alpha]))
    la = rng.integers(0, 256, (4, 6, 2)).astype(np.uint8)
    rgba = rng.integers(0, 256, (4, 6, 4)).astype(np.uint8)
    np.testing.assert_array_equal(_as_rgba(la), np.dstack([la[..., 0], la[..., 0], la[..., 0], la[..., 1]]))
    np.testing.assert_array_equal(_as_rgba(rgba), rgba)
    g16 = rng.integers(1, 65535, (4, 6)).astype(np.uint16)
    np.testing.assert_array_equal(_as_rgba(g16), np.dstack([g16, g16, g16, np.full_like(g16, 65535)]))


def test_lossy_writes_default_to_quality_95(tmp_path):
    """write_image's and write_frames' default quality is 95, as the command's --quality."""
    rng = np.random.default_rng(13)
    arr = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    frames = [arr, rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)]
    for suffix in (".jpg", ".webp"):
        write_image(tmp_path / f"d{suffix}", arr)
        write_image(tmp_path / f"q{suffix}", arr, quality=95)
        write_image(tmp_path / f"l{suffix}", arr, quality=75)
        assert (tmp_path / f"d{suffix}").read_bytes() == (tmp_path / f"q{suffix}").read_bytes()
        assert (tmp_path / f"d{suffix}").read_bytes() != (tmp_path / f"l{suffix}").read_bytes()
    write_frames(tmp_path / "d.webp", frames)
    write_frames(tmp_path / "q.webp", frames, quality=95)
    write_frames(tmp_path / "l.webp", frames, quality=75)  # and the quality reaches the animation's encoder
    assert (tmp_path / "d.webp").read_bytes() == (tmp_path / "q.webp").read_bytes()
    assert (tmp_path / "d.webp").read_bytes() != (tmp_path / "l.webp").read_bytes()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_exif_chunk_holds_the_bare_tiff_structure(tmp_path, dtype):
    """The PNG eXIf chunk starts with the TIFF header (II*\\0 or MM\\0*), without JPEG's Exif\\0\\0 marker
    (other readers reject it), even when the EXIF block given has the marker."""
    import png
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F] = "Canon"
    block = exif.tobytes()
    assert block.startswith(b"Exif\x00\x00")
    arr = np.random.default_rng(14).integers(1, np.iinfo(dtype).max, (4, 5, 3)).astype(dtype)
    write_image(tmp_path / "e.png", arr, exif=block)
    chunks = dict(png.Reader(filename=str(tmp_path / "e.png")).chunks())
    assert chunks[b"eXIf"][:4] in (b"II*\x00", b"MM\x00*")
    with Image.open(tmp_path / "e.png") as im:
        assert im.getexif()[0x010F] == "Canon"


def test_an_animated_png_keeps_the_profile_and_resolution(tmp_path):
    icc = _icc_profile()
    rng = np.random.default_rng(15)
    frames = [rng.integers(0, 256, (5, 4, 3)).astype(np.uint8) for _ in range(2)]
    write_frames(tmp_path / "a.png", frames, icc_profile=icc, dpi=(300.0, 150.0))
    info = image_info(tmp_path / "a.png")
    assert info["frames"] == 2 and info["icc_profile"] == icc and info["dpi"] == pytest.approx((300.0, 150.0), abs=0.5)


def test_quality_bounds_are_inclusive():
    """--quality takes 1 and 100 themselves (100: the least lossy JPEG a user can ask for), not 0 nor 101."""
    from vdsr_fast.cli import quality_arg

    assert [quality_arg(q) for q in ("1", "100", " 50 ")] == [1, 100, 50]
    for bad in ("0", "101", "-1", "9.5", "x"):
        with pytest.raises(Exception, match="from 1 to 100"):
            quality_arg(bad)


def test_output_suffixes_are_case_insensitive(tmp_path, capsys, weights):
    """``-o OUT.PNG``, ``--format PNG`` and a camera's ``IMG_1.JPG`` in a batch: the format is the suffix's whatever its
    case (as the input's is), and a 16-bit image goes into ``.TIFF`` as into ``.tif``."""
    write_image(tmp_path / "in.png", np.zeros((4, 4, 3), np.uint8) + 50)
    write_image(tmp_path / "IMG_1.JPG", np.zeros((4, 4, 3), np.uint8) + 80)
    write_image(tmp_path / "deep.png", np.zeros((4, 4, 3), np.uint16) + 3000)
    code, _, err = _run(capsys, "upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "OUT.PNG"), "--weights", weights)
    assert code == 0 and read_image(tmp_path / "OUT.PNG").shape == (8, 8, 3), err
    code, _, err = _run(capsys, "upscale", str(tmp_path / "deep.png"), "-o", str(tmp_path / "deep.TIFF"), "--weights", weights)
    assert code == 0 and read_image(tmp_path / "deep.TIFF").dtype == np.uint16, err
    code, _, err = _run(capsys, "upscale", str(tmp_path / "IMG_1.JPG"), str(tmp_path / "in.png"), "-o", str(tmp_path / "batch"),
                        "--weights", weights, "--quiet")  # fmt: skip
    assert code == 0 and sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["IMG_1.JPG", "in.png"], err
    out = _Stdio()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", out)
        code = main(["upscale", str(tmp_path / "in.png"), "-o", "-", "--format", "PNG", "--weights", weights])
    assert code == 0 and out.buffer.getvalue().startswith(b"\x89PNG"), capsys.readouterr().err


def test_what_an_output_format_can_hold_is_checked_at_its_limits(tmp_path, capsys, weights):
    """An animation of two frames (not only of three) into a format of one image is refused, nothing written; a 16-bit
    image goes into .tiff as into .tif."""
    frames = [np.full((5, 4, 3), v, np.uint8) for v in (10, 200)]
    write_frames(tmp_path / "two.gif", frames, durations=[40, 50])
    code, _, err = _run(capsys, "upscale", str(tmp_path / "two.gif"), "-o", str(tmp_path / "one.jpg"), "--weights", weights)
    assert code == 2 and "has 2 frames and .jpg holds one image" in err and not (tmp_path / "one.jpg").exists()
    write_image(tmp_path / "deep.png", np.full((4, 5, 1), 40000, np.uint16))
    code, _, err = _run(capsys, "upscale", str(tmp_path / "deep.png"), "-o", str(tmp_path / "deep.tiff"), "--weights", weights)
    assert code == 0 and read_image(tmp_path / "deep.tiff").dtype == np.uint16, err


def test_a_batch_refuses_a_file_whose_output_format_cannot_be_written(tmp_path, capsys, weights):
    """A batch naming a file Pillow reads but the writer does not (.ppm) is refused before any image is written (was
    the check dropped, the other images would be written and that one fail after its upscale)."""
    from PIL import Image

    write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "b.ppm")
    code, _, err = _run(capsys, "upscale", str(tmp_path / "a.png"), str(tmp_path / "b.ppm"), "-o", str(tmp_path / "out"),
                        "--weights", weights)  # fmt: skip
    assert code == 2 and f"{tmp_path / 'out' / 'b.ppm'}: unsupported output format '.ppm'" in err, err
    assert not (tmp_path / "out").exists()


def test_eval_scores_x2_by_default_and_logs_the_column_it_scored(tmp_path, capsys):
    """``eval FOLDER`` without --scale is x2 (the paper's first column); without a terminal the line logged per scale
    gives the mean of what was scored (bicubic with --bicubic-only)."""
    folder = _synthetic_set(tmp_path) / "x2"
    code, out, err = _run(capsys, "eval", str(folder), "--bicubic-only", "--json")
    res = json.loads(out)
    assert code == 0 and res["scale"] == 2 and res["n"] == 2, err
    assert f"eval x2: 2 images, mean PSNR {res['bicubic_psnr']:.2f} dB" in err


def test_bad_weights_and_unwritable_outputs_are_one_line_errors(tmp_path, capsys, weights, monkeypatch):
    """A weights file that is not weights (upscale and eval), and an output the writer fails on (a full disk): exit
    status 2 and one line naming the file (not a traceback, exit status 1)."""
    src, bad = tmp_path / "a.png", tmp_path / "bad.safetensors"
    write_image(src, np.zeros((4, 4, 3), np.uint8))
    bad.write_bytes(b"not weights at all")
    for argv in (["upscale", str(src), "-o", str(tmp_path / "o.png")], ["eval", str(tmp_path), "--scale", "2"]):
        code, _, err = _run(capsys, *argv, "--weights", str(bad))
        assert code == 2 and err.startswith(f"vdsr-fast {argv[0]}: error: ") and len(err.splitlines()) == 1, err

    def full_disk(path, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vdsr_fast.images.write_frames", full_disk)
    code, _, err = _run(capsys, "upscale", str(src), "-o", str(tmp_path / "o.png"), "--weights", weights)
    assert code == 2 and f"cannot write {tmp_path / 'o.png'}: [Errno 28] No space left on device" in err, err


def test_bench_outside_a_source_checkout_says_so(monkeypatch, capsys):
    """``vdsr-fast bench`` from an installed package (no benchmarks/ beside it): exit status 2 and why, not 0."""
    import vdsr_fast.cli as cli

    monkeypatch.setattr(cli, "__file__", "/nonexistent/site-packages/vdsr_fast/cli.py")
    code, out, err = _run(capsys, "bench", "--help")
    assert code == 2 and "needs a source checkout" in err and out == ""


def test_upscale_dtype_reaches_the_engine(tmp_path, capsys, weights):
    """--dtype is the engine's activation dtype (the summary names it): fp64 on the CPU, not the default fp32."""
    write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    code, out, err = _run(capsys, "upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), "--weights", weights,
                          "--device", "cpu", "--backend", "torch", "--dtype", "fp64")  # fmt: skip
    assert code == 0 and "torch/float64 on cpu" in out, err


def test_a_reduced_resolution_tiff_page_is_not_a_frame(tmp_path):
    """A TIFF's thumbnail (a reduced-resolution page, as scanners and cameras add one) is not a page of the document:
    one frame, the full-resolution one (counted, it was read and upscaled as a second page)."""
    tifffile = pytest.importorskip("tifffile")
    arr = np.random.default_rng(16).integers(0, 256, (16, 12, 3)).astype(np.uint8)
    with tifffile.TiffWriter(tmp_path / "t.tif") as tw:
        tw.write(arr, photometric="rgb")
        tw.write(arr[::4, ::4], photometric="rgb", subfiletype=1)  # 1: a reduced-resolution copy of the page before
    assert image_info(tmp_path / "t.tif")["frames"] == 1
    frames, _ = read_frames(tmp_path / "t.tif")
    assert len(frames) == 1
    np.testing.assert_array_equal(frames[0], arr)


def test_a_camera_mpo_jpeg_is_one_image_not_an_animation(tmp_path):
    """A camera's MPO JPEG (Pillow reads 2 "frames": the photo and a second picture, e.g. the other eye's) is one
    image: counted as frames, it was read as an animation and refused as the upscale of a .jpg into a .jpg."""
    from PIL import Image

    rng = np.random.default_rng(17)
    photo, other = (rng.integers(0, 256, (8, 10, 3)).astype(np.uint8) for _ in range(2))
    Image.fromarray(photo).save(tmp_path / "cam.jpg", format="MPO", save_all=True, append_images=[Image.fromarray(other)])
    with Image.open(tmp_path / "cam.jpg") as im:
        assert (im.format, im.n_frames) == ("MPO", 2)
    assert image_info(tmp_path / "cam.jpg")["frames"] == 1
    frames, timing = read_frames(tmp_path / "cam.jpg")
    assert len(frames) == 1 and timing == {"durations": None, "loop": None}
    np.testing.assert_array_equal(frames[0], read_image(tmp_path / "cam.jpg"))


def test_a_resolution_of_zero_is_no_resolution(tmp_path):
    """A PNG whose pHYs says 0 pixels per metre (Pillow reads dpi (0, 0)): no dpi, rather than a resolution of zero
    carried on to the output."""
    from PIL import Image

    Image.fromarray(np.random.default_rng(18).integers(0, 256, (4, 5, 3)).astype(np.uint8)).save(tmp_path / "z.png", dpi=(0, 0))
    with Image.open(tmp_path / "z.png") as im:
        assert im.info["dpi"] == (0, 0)
    assert image_info(tmp_path / "z.png")["dpi"] is None


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_a_1_bit_image_reads_as_one_gray_channel(tmp_path, suffix):
    """A black-and-white (1-bit) scan is gray: one channel of 0 and 255 (converted like the other modes, it read as
    RGB, and its upscale came out in colour, three channels)."""
    from PIL import Image

    bits = np.random.default_rng(19).random((7, 9)) < 0.5
    Image.fromarray(bits).save(tmp_path / f"bw{suffix}")
    got = read_image(tmp_path / f"bw{suffix}")
    assert got.shape == (7, 9, 1) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 0], np.where(bits, 255, 0))


def _png_header_only(path, w, h, depth, color_type, pixels: bytes = bytes(64)):
    """A PNG whose IHDR claims w x h and whose one IDAT holds ``pixels`` (a few bytes: a decompression bomb's shape,
    unpacked)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b""))


def test_a_16_bit_png_of_zero_width_is_a_read_error(tmp_path):
    """pypng decodes a 16-bit PNG whose header says 0 pixels wide into an empty array: an ImageReadError naming the
    file, not an empty image handed on to the upscale."""
    _png_header_only(tmp_path / "e.png", 0, 4, 16, 2, bytes(4))  # 0 wide, 4 tall, 16-bit RGB
    with pytest.raises(ImageReadError, match=r"e\.png: the image is empty \(\(4, 0, 3\)\)"):
        read_image(tmp_path / "e.png")


def _apng16(path, frames):
    """A 16-bit animated PNG of ``frames`` ((H, W, C) uint16, C 1-4, one size), each replacing the last: pypng's IDAT
    for each, the first frame's as IDAT and the others' as fdAT, with acTL and fcTL chunks (pypng writes no APNG)."""
    import struct
    import zlib

    import png

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, c = frames[0].shape
    out, seq = b"", 0
    for i, f in enumerate(frames):
        b = io.BytesIO()
        png.Writer(w, h, greyscale=c <= 2, alpha=c in (2, 4), bitdepth=16).write(b, f.reshape(h, w * c))
        chunks = list(png.Reader(bytes=b.getvalue()).chunks())
        if i == 0:
            out += b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", dict(chunks)[b"IHDR"]) + chunk(b"acTL", struct.pack(">II", len(frames), 0))
        out += chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, 10, 100, 0, 0))  # 100 ms, no dispose, source
        seq += 1
        for kind, data in chunks:
            if kind == b"IDAT":
                out += chunk(b"IDAT", data) if i == 0 else chunk(b"fdAT", struct.pack(">I", seq) + data)
                seq += i > 0
    path.write_bytes(out + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_a_16_bit_colour_animated_png_is_refused_not_read_at_8_bits(tmp_path, capsys, weights, channels):
    """A 16-bit RGB, RGBA or gray+alpha animated PNG was read as 8 bits without a word (found by a review): a still
    16-bit colour PNG goes to pypng, which reads no APNG frames, and Pillow decodes those frames at 8 bits. Refused,
    one line naming the file (exit status 2, nothing written); 16-bit gray frames Pillow reads whole."""
    rng = np.random.default_rng(30)
    src = tmp_path / "a.png"
    _apng16(src, [rng.integers(0, 65536, (6, 8, channels)).astype(np.uint16) for _ in range(2)])
    assert image_info(src)["frames"] == 2
    with pytest.raises(ImageReadError, match=r"a\.png: a 16-bit colour animated PNG: its frames would lose their low 8 bits"):
        read_frames(src)
    code, out, err = _run(capsys, "upscale", str(src), "-o", str(tmp_path / "up.tif"), "--weights", weights)
    assert code == 2 and err.count("\n") == 1 and f"error: {src}: a 16-bit colour animated PNG" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "tiny.safetensors"]
    gray = [rng.integers(0, 65536, (6, 8, 1)).astype(np.uint16) for _ in range(2)]
    _apng16(tmp_path / "g.png", gray)
    frames, _ = read_frames(tmp_path / "g.png")
    assert [f.dtype for f in frames] == [np.uint16] * 2
    for got, want in zip(frames, gray):
        np.testing.assert_array_equal(got, want)


def test_every_page_of_a_tiff_with_an_orientation_is_read_upright(tmp_path):
    """The Orientation tag turns each frame read_frames returns as it turns the image read_image returns (the pages
    of a multi-page TIFF came out as stored, sideways)."""
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(20)
    pages = [rng.integers(0, 256, (6, 10, 3)).astype(np.uint8) for _ in range(2)]
    with tifffile.TiffWriter(tmp_path / "p.tif") as tw:
        for page in pages:
            tw.write(page, photometric="rgb", extratags=[(274, "H", 1, 6, True)])  # 274: Orientation, 6: turn 90 cw
    frames, _ = read_frames(tmp_path / "p.tif")
    assert len(frames) == 2
    np.testing.assert_array_equal(frames[0], read_image(tmp_path / "p.tif"))
    for frame, page in zip(frames, pages):
        np.testing.assert_array_equal(frame, np.rot90(page, -1))


def test_a_gray_profile_is_kept_with_gray_and_alpha(tmp_path):
    """Gray+alpha is gray, as for a plain gray image: a GRAY profile is kept and an RGB one left out."""
    rgb_icc = _icc_profile()
    gray_icc = rgb_icc[:16] + b"GRAY" + rgb_icc[20:]
    la = np.random.default_rng(21).integers(0, 256, (4, 5, 2)).astype(np.uint8)
    write_image(tmp_path / "g.png", la, icc_profile=gray_icc)
    write_image(tmp_path / "r.png", la, icc_profile=rgb_icc)
    assert [image_info(tmp_path / f"{n}.png")["icc_profile"] for n in "gr"] == [gray_icc, None]


def test_write_image_refuses_a_suffix_it_does_not_write(tmp_path):
    """A suffix outside IMAGE_SUFFIXES (or none) is a ValueError naming it and nothing is written: Pillow would
    otherwise write a .ppm or .ico itself, a file the reader refuses."""
    arr = np.random.default_rng(22).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    for name in ("x.ppm", "x.ico", "x"):
        with pytest.raises(ValueError, match=f"{name}: unsupported output format '{os.path.splitext(name)[1]}'"):
            write_image(tmp_path / name, arr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".bmp", ".webp", ".gif"])
def test_16_bit_samples_into_a_format_of_8_bits_are_refused(tmp_path, suffix):
    """16-bit samples into a format of 8 bits a sample: ValueError, nothing written (16-bit arrays go to the PNG
    writer, which would put PNG data under the .jpeg or .gif name)."""
    deep = np.random.default_rng(23).integers(0, 65536, (4, 5, 3)).astype(np.uint16)
    with pytest.raises(ValueError, match=f"{suffix} cannot store 16-bit images"):
        write_image(tmp_path / f"d{suffix}", deep)
    assert list(tmp_path.iterdir()) == []


def test_write_frames_refuses_what_the_format_cannot_hold(tmp_path):
    """Two frames into a format of one image, and 16-bit frames into an animated PNG (8 bits a sample): ValueError,
    nothing written (neither is silently cut down to what the format holds)."""
    rng = np.random.default_rng(24)
    frames = [rng.integers(0, 256, (5, 4, 3)).astype(np.uint8) for _ in range(2)]
    for suffix in (".jpg", ".bmp"):
        with pytest.raises(ValueError, match=f"{suffix} holds one image, not 2 frames"):
            write_frames(tmp_path / f"a{suffix}", frames)
    for channels in (1, 3):
        deep = [rng.integers(0, 65536, (5, 4, channels)).astype(np.uint16) for _ in range(2)]
        with pytest.raises(ValueError, match="an animated .png holds 8 bits a sample, the frames have 16; use .tif"):
            write_frames(tmp_path / "d.png", deep)  # (a still PNG holds 16 bits, an APNG's frames do not)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("channels", [2, 4])
def test_a_gif_keeps_the_transparency_of_gray_alpha_and_rgba(tmp_path, channels):
    """A GIF has one transparent palette entry: gray+alpha and RGBA keep their fully transparent pixels, in a still
    image and in each frame of an animation, whose frames replace each other (written as plain gray, the alpha was
    lost; without disposal 2 a frame's transparent pixels showed the frame before)."""
    rng = np.random.default_rng(25)

    def frame():
        f = rng.integers(0, 256, (6, 8, channels)).astype(np.uint8)
        f[..., -1] = np.where(rng.random((6, 8)) < 0.5, 0, 255)  # a GIF's alpha is on or off
        return f

    still = frame()
    write_image(tmp_path / "s.gif", still)
    back = read_image(tmp_path / "s.gif")
    assert back.shape == (6, 8, 4)
    np.testing.assert_array_equal(back[..., 3], still[..., -1])
    frames = [frame(), frame()]
    write_frames(tmp_path / "a.gif", frames)
    back, _ = read_frames(tmp_path / "a.gif")
    assert [b.shape for b in back] == [(6, 8, 4)] * 2
    for b, f in zip(back, frames):
        np.testing.assert_array_equal(b[..., 3], f[..., -1])


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".png"])
def test_an_animation_written_without_a_loop_count_loops_forever(tmp_path, suffix):
    """loop=None (the source said nothing) writes loop 0, forever, as viewers play an animation by default; not once."""
    rng = np.random.default_rng(26)
    write_frames(tmp_path / f"a{suffix}", [rng.integers(0, 256, (5, 4, 3)).astype(np.uint8) for _ in range(2)])
    assert read_frames(tmp_path / f"a{suffix}")[1]["loop"] == 0


@pytest.mark.parametrize("suffix", [".webp", ".png"])
def test_frame_durations_round_to_the_nearest_millisecond(tmp_path, suffix):
    """Durations are read as fractions of a millisecond (an APNG's, 33.4 ms, 16.6 ms): an animated WebP or PNG gets
    each to the nearest millisecond, not truncated."""
    rng = np.random.default_rng(27)
    write_frames(tmp_path / f"a{suffix}", [rng.integers(0, 256, (5, 4, 3)).astype(np.uint8) for _ in range(2)],
                 durations=[33.6, 16.6])  # fmt: skip
    assert read_frames(tmp_path / f"a{suffix}")[1]["durations"] == [34.0, 17.0]


def test_a_profile_of_another_colour_space_is_left_out_of_animations_and_pages(tmp_path):
    """As for one image: a CMYK profile is left out of an animated PNG, and in a multi-page TIFF each page carries the
    profile only where it fits the page (an RGB profile on the RGB page, not on the gray one)."""
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(28)
    rgb_icc = _icc_profile()
    frames = [rng.integers(0, 256, (5, 4, 3)).astype(np.uint8) for _ in range(2)]
    write_frames(tmp_path / "a.png", frames, icc_profile=rgb_icc[:16] + b"CMYK" + rgb_icc[20:])
    assert image_info(tmp_path / "a.png")["icc_profile"] is None
    pages = [rng.integers(0, 256, (5, 4, 3)).astype(np.uint8), rng.integers(0, 256, (4, 6, 1)).astype(np.uint8)]
    write_frames(tmp_path / "d.tif", pages, icc_profile=rgb_icc)
    with tifffile.TiffFile(tmp_path / "d.tif") as tf:
        assert [p.tags.valueof(34675) for p in tf.pages] == [rgb_icc, None]  # 34675: InterColorProfile


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
@pytest.mark.parametrize("unit", [2, 3])  # EXIF ResolutionUnit: inch, centimetre
def test_exif_resolution_scales_with_the_pixels(tmp_path, capsys, weights, suffix, unit):
    """The EXIF's XResolution / YResolution follow the pixels as the file's own dpi does (found by a review: they kept
    the input's, so a JPEG or PNG said 600 dpi in its header and 300 in its EXIF, and a WebP, which has no
    resolution but its EXIF's, printed twice as large). Orientation 6 turns the image a quarter: x and y swap."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112], exif[0x011A], exif[0x011B], exif[0x0128] = 6, 300.0, 200.0, unit
    src = tmp_path / f"in{suffix}"
    per_inch = 2.54 if unit == 3 else 1.0
    extra = {} if suffix == ".webp" else {"dpi": (300 * per_inch, 200 * per_inch)}
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (8, 12, 3)).astype(np.uint8)).save(
        src, exif=exif.tobytes(), quality=95, **extra)
    assert image_info(src)["dpi"] == pytest.approx((200 * per_inch, 300 * per_inch), rel=1e-4)  # upright: swapped
    dst = tmp_path / f"out{suffix}"
    assert _run(capsys, "upscale", str(src), "-o", str(dst), "--scale", "2", "--weights", weights)[0] == 0
    with Image.open(dst) as im:
        got = im.getexif()
    assert (got[0x0128], float(got[0x011A]), float(got[0x011B])) == pytest.approx((unit, 400, 600), rel=1e-4)
    assert image_info(dst)["dpi"] == pytest.approx((400 * per_inch, 600 * per_inch), rel=1e-4)


def test_a_tiff_without_resolution_tags_has_no_dpi(tmp_path, capsys, weights):
    """Pillow says dpi (1, 1) for a TIFF without resolution tags; taken as the image's, the x2 output claimed 2 dpi
    (an image tens of inches wide in a layout tool), at x3 3 dpi (found by a review). A TIFF's dpi is its tags'."""
    from PIL import Image

    Image.fromarray(np.random.default_rng(9).integers(0, 256, (8, 12, 3)).astype(np.uint8)).save(tmp_path / "in.tif")
    assert image_info(tmp_path / "in.tif")["dpi"] is None
    for out in ("out.tif", "out.png"):
        assert _run(capsys, "upscale", str(tmp_path / "in.tif"), "-o", str(tmp_path / out), "--weights", weights)[0] == 0
        assert image_info(tmp_path / out)["dpi"] is None, out
    write_image(tmp_path / "d.tif", np.zeros((4, 4, 3), np.uint8), dpi=(300, 150))
    assert image_info(tmp_path / "d.tif")["dpi"] == (300, 150)


def test_exif_pixel_dimensions_are_set_only_where_the_block_has_them(tmp_path):
    """The EXIF's PixelX/YDimension are set to the output's where present (test_exif_is_kept_upright_and_resized), and
    none are added to an Exif IFD without them."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif.get_ifd(0x8769)[0x9003] = "2026:11:27 10:00:00"  # DateTimeOriginal, no pixel dimensions
    write_image(tmp_path / "e.jpg", np.random.default_rng(29).integers(0, 256, (8, 12, 3)).astype(np.uint8), exif=exif.tobytes())
    with Image.open(tmp_path / "e.jpg") as im:
        sub = im.getexif().get_ifd(0x8769)
    assert sub[0x9003] == "2026:11:27 10:00:00" and 0xA002 not in sub and 0xA003 not in sub


def test_terminal_runs_closed_pipes_stdin_skips_and_failed_batches(tmp_path, capsys, weights, monkeypatch):
    """Found by a review: a --size the image cannot take was a traceback when stderr is a terminal (the progress bar
    asked first); a reader closing stdout early (| head) was a BrokenPipeError traceback; --skip-existing was ignored
    for stdin's image; a batch with a bad --scale read every image first, and one with unusable --weights left an
    empty output folder."""
    src = tmp_path / "in.png"
    write_image(src, np.random.default_rng(2).integers(0, 255, (10, 12, 3), dtype=np.uint8))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = _run(capsys, "upscale", str(src), "-o", str(tmp_path / "big.png"), "--weights", weights, "--size", "400x400")
    assert code == 2 and "error: --size 400x400 for a 12x10 image: each side must be 1 to 4 times" in err and "Traceback" not in err
    monkeypatch.undo()

    def closed(*_a, **_k):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("vdsr_fast.cli.cmd_info", closed)
    code, _, err = _run(capsys, "info", "--json")
    assert code == 2 and err.strip() == "vdsr-fast info: error: <stdout> was closed by its reader"
    monkeypatch.undo()

    existing = tmp_path / "kept.png"
    existing.write_bytes(b"mine")
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(isatty=lambda: False, buffer=io.BytesIO(src.read_bytes())))
    code, _, err = _run(capsys, "upscale", "-", "-o", str(existing), "--weights", weights, "--skip-existing")
    assert code == 0 and "exists: left as it is (--skip-existing)" in err and existing.read_bytes() == b"mine"
    monkeypatch.undo()

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        (photos / name).write_bytes(src.read_bytes())
    monkeypatch.setattr("vdsr_fast.cli._read_source", _no_engine)
    code, _, err = _run(capsys, "upscale", str(photos), "-o", str(tmp_path / "out"), "--weights", weights, "--scale", "9")
    assert code == 2 and "scale must be a number from 1 to 4" in err and not (tmp_path / "out").exists()
    (tmp_path / "junk.safetensors").write_bytes(b"not weights")
    code, _, err = _run(capsys, "upscale", str(photos), "-o", str(tmp_path / "out"), "--weights", str(tmp_path / "junk.safetensors"))
    assert code == 2 and "junk.safetensors" in err and not (tmp_path / "out").exists()


def test_colour_key_transparency_and_animations_named_otherwise(tmp_path):
    """Found by a review: a PNG's tRNS colour key (RGB or gray) was dropped, the keyed pixels shown opaque; an
    animation named .jpg, or without a suffix, was read as its first frame (the frames are now counted by the
    content's format)."""
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 255, (6, 7, 3), dtype=np.uint8)
    rgb[rgb[..., 1] == 0] = (1, 1, 1)
    rgb[0, 0] = (255, 0, 255)  # the key colour, here only
    Image.fromarray(rgb).save(tmp_path / "key.png", transparency=(255, 0, 255))
    got = read_image(tmp_path / "key.png")
    assert got.shape == (6, 7, 4) and got[0, 0, 3] == 0 and (got[..., 3] == 0).sum() == 1
    np.testing.assert_array_equal(got[..., :3], rgb)
    gray = np.where(rgb[..., 0] == 0, 1, rgb[..., 0]).astype(np.uint8)
    gray[2, 3] = 0
    Image.fromarray(gray).save(tmp_path / "key_gray.png", transparency=0)
    got = read_image(tmp_path / "key_gray.png")
    assert got.shape == (6, 7, 2) and got[2, 3, 1] == 0 and (got[..., 1] == 0).sum() == 1
    frames = [Image.fromarray(np.full((5, 5, 3), 40 * i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    for name in ("a.jpg", "anim"):
        (tmp_path / name).write_bytes((tmp_path / "a.gif").read_bytes())
        assert image_info(tmp_path / name)["frames"] == 3 and len(read_frames(tmp_path / name)[0]) == 3


@pytest.mark.parametrize("out_suffix", [".gif", ".png", ".webp"])
def test_a_gif_that_plays_once_still_plays_once(tmp_path, capsys, weights, out_suffix):
    """A GIF without a NETSCAPE loop extension plays once; it came out looping forever (found by a review). Loop
    counts are plays (0: forever): a GIF's NETSCAPE count of repeats is one play fewer."""
    from PIL import Image

    ims = [Image.fromarray(np.full((6, 5, 3), 60 * i, np.uint8)) for i in range(2)]
    ims[0].save(tmp_path / "once.gif", save_all=True, append_images=ims[1:], duration=40)
    ims[0].save(tmp_path / "twice.gif", save_all=True, append_images=ims[1:], duration=40, loop=1)
    assert read_frames(tmp_path / "once.gif")[1]["loop"] == 1 and read_frames(tmp_path / "twice.gif")[1]["loop"] == 2
    for name, plays in (("once", 1), ("twice", 2)):
        dst = tmp_path / f"{name}_x2{out_suffix}"
        assert _run(capsys, "upscale", str(tmp_path / f"{name}.gif"), "-o", str(dst), "--weights", weights)[0] == 0
        assert read_frames(dst)[1]["loop"] == plays
        with Image.open(dst) as im:  # as the format says it: a GIF's repeats (none for one play), APNG/WebP's plays
            assert im.info.get("loop") == ((None if plays == 1 else plays - 1) if out_suffix == ".gif" else plays)


def test_a_tiff_pillow_cannot_open_keeps_its_orientation_dpi_and_profile(tmp_path, capsys, weights):
    """A 16-bit gray+alpha TIFF (Pillow cannot open it; tifffile reads it) came out sideways and without its dpi and
    ICC profile (found by a review): its tags are now read with tifffile."""
    import tifffile
    from PIL import Image

    src = tmp_path / "la16.tif"
    arr = np.random.default_rng(4).integers(0, 65536, (20, 30, 2), dtype=np.uint16)
    icc = bytes(16) + b"GRAY" + bytes(108)  # a gray profile's header
    tifffile.imwrite(src, arr, photometric="minisblack", planarconfig="contig", extrasamples=["unassalpha"], iccprofile=icc,
                     resolution=(300, 150), resolutionunit="INCH", extratags=[(274, "H", 1, 6, True)])  # fmt: skip
    with pytest.raises(Exception):  # noqa: B017 - the point: Pillow cannot
        Image.open(src).load()
    info = image_info(src)
    assert info["dpi"] == (150.0, 300.0) and info["icc_profile"] == icc  # upright: x and y swapped
    np.testing.assert_array_equal(read_image(src), np.rot90(arr, -1))  # orientation 6: turned a quarter clockwise
    dst = tmp_path / "out.tif"
    assert _run(capsys, "upscale", str(src), "-o", str(dst), "--weights", weights)[0] == 0
    out = image_info(dst)
    assert read_image(dst).shape == (60, 40, 2) and out["dpi"] == (300.0, 600.0) and out["icc_profile"] == icc


def test_eval_checks_every_scale_first_and_an_error_keeps_the_scales_done(tmp_path, capsys, weights, monkeypatch):
    """A set with x2/ but no x3/: refused before x2 runs through the network, saying x3 is missing (was: x2 scored,
    then an error that said to pass the subfolder with the HR images, x2 lost); an error during x3 (a NaN output)
    prints x2's table first."""
    import vdsr_fast.evaluate as ev

    folder = _synthetic_set(tmp_path)
    code, out, err = _run(capsys, "eval", str(folder), "--scale", "2", "3", "--weights", weights)
    assert code == 2 and out == "" and "eval x2" not in err and "no HR images for x3: it has x2 but no x3" in err
    (folder / "x3").symlink_to(folder / "x2")
    real = ev._score
    monkeypatch.setattr(ev, "_score", lambda path, scale, *a: real(path, scale, *a) if scale == 2 else (_ for _ in ()).throw(ValueError("boom")))
    code, out, err = _run(capsys, "eval", str(folder), "--scale", "2", "3", "--weights", weights)
    assert code == 2 and "x2  (paper protocol, 2 images)" in out and "x3  (" not in out and err.rstrip().endswith("boom")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns past the limit it errs at
def test_images_past_the_pixel_limit_are_refused_before_decoding_by_every_decoder(tmp_path, capsys, weights, monkeypatch):
    """Pillow refuses an image of more than 2 x PIL.Image.MAX_IMAGE_PIXELS, but pypng (16-bit colour PNGs) and
    tifffile read anything (found by a review: a 2 MB 16-bit PNG or TIFF unpacked to gigabytes, then a traceback), and
    no decoder limited an animation's frames (a 69 KB GIF of 3000 frames of 2000x2000). The same limit now holds for
    every decoder, before decoding, and for all frames together (TOTAL_FRAMES_FACTOR images' pixels)."""
    from PIL import Image

    from vdsr_fast import images

    _png_header_only(tmp_path / "bomb16.png", 20000, 20000, 16, 2)  # 2.4 GB of 16-bit RGB at the default limit
    with pytest.raises(ImageReadError, match=r"bomb16.png: 20000x20000 is more than this reads \(179 megapixels an image"):
        read_image(tmp_path / "bomb16.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 32)  # 64 pixels an image, 8 x 64 all frames, on small files
    write_image(tmp_path / "big.tif", np.zeros((9, 8, 3), np.uint16))  # 72 pixels: tifffile's path
    write_frames(tmp_path / "pages.tif", [np.zeros((8, 8, 1), np.uint8)] * 9)  # 9 x 64
    write_frames(tmp_path / "anim.gif", [np.full((8, 8, 3), 20 * i, np.uint8) for i in range(9)], durations=[50] * 9)
    write_frames(tmp_path / "ok.gif", [np.full((8, 8, 3), 20 * i, np.uint8) for i in range(8)], durations=[50] * 8)
    write_frames(tmp_path / "mixed.tif", [np.zeros((8, 8, 1), np.uint8)] + [np.zeros((1, 1, 1), np.uint8)] * 8)  # 72
    assert len(read_frames(tmp_path / "mixed.tif")[0]) == 9  # the pages' pixels summed, not the largest's x 9
    for name, what in (("big.tif", "8x9"), ("pages.tif", "9 frames of 0 megapixels"), ("anim.gif", "9 frames of 0 megapixels")):
        with pytest.raises(ImageReadError, match=rf"{name}: {what} is more than this reads"):
            read_frames(tmp_path / name)
    assert len(read_frames(tmp_path / "ok.gif")[0]) == 8  # at the limit: read
    code, out, err = _run(capsys, "upscale", str(tmp_path / "big.tif"), str(tmp_path / "ok.gif"), "-o", str(tmp_path / "o"),
                          "--weights", weights)  # fmt: skip
    assert code == 2 and "big.tif: 8x9 is more than this reads" in err and "1 of 2 images" in out, err
    monkeypatch.setattr(images, "TOTAL_FRAMES_FACTOR", 100)
    assert len(read_frames(tmp_path / "anim.gif")[0]) == 9


def test_an_image_between_pillows_warning_and_its_limit_upscales_without_a_warning(tmp_path, capsys, weights, monkeypatch,
                                                                                  recwarn):  # fmt: skip
    """Pillow warns of a decompression bomb from MAX_IMAGE_PIXELS on (89 megapixels by default) and refuses past twice
    that, as the command does for every decoder: an image between the two is upscaled without Pillow's warning (it
    read like a fault on every image of 90-179 megapixels)."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 32)  # a 6x6 image: past the warning's 32, under the limit's 64
    write_image(tmp_path / "a.png", np.zeros((6, 6, 3), np.uint8))
    code, out, err = _run(capsys, "upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "b.png"), "--weights", weights)
    assert code == 0 and (tmp_path / "b.png").is_file(), err
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_control_characters_of_file_names_are_escaped_in_messages(tmp_path, capsys, weights):
    """A file name with an escape sequence or a carriage return was echoed as it is: the terminal cleared the screen,
    recoloured or overwrote the line. Messages write them as Python escapes (the file is still read and written)."""
    name = "a\x1b[2J\rb.png"
    code, out, err = _run(capsys, "upscale", str(tmp_path / name), "-o", str(tmp_path / "o.png"), "--weights", weights)
    assert code == 2 and "\x1b" not in err and "\r" not in err and "a\\x1b[2J\\rb.png: no such file" in err, err
    write_image(tmp_path / name, np.zeros((4, 4, 3), np.uint8))
    code, out, err = _run(capsys, "upscale", str(tmp_path / name), "-o", str(tmp_path / ("o" + name)), "--weights", weights)
    assert code == 0 and (tmp_path / ("o" + name)).is_file() and "\x1b" not in out + err and "\\x1b[2J" in out, out + err
    pytest.importorskip("av")
    from vdsr_fast import video

    assert video.main([str(tmp_path / "v\x1b[2J.mkv"), str(tmp_path / "o.mkv"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "v\\x1b[2J.mkv: no such file" in err, err


def test_running_out_of_memory_on_one_image_of_a_batch_is_its_error_line(tmp_path, capsys, weights, monkeypatch):
    """An image the machine has no memory for (torch's allocator raises a RuntimeError) was a traceback that ended the
    batch (found by a review): it is that file's one-line error, and the batch goes on (exit status 2)."""
    from vdsr_fast import cli

    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / name, np.zeros((4, 5 if name == "b.png" else 4, 3), np.uint8))
    real = cli._upscale_array

    def upscale_array(f, *a, **k):
        if f.shape[1] == 5:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 6400000000 bytes.")
        return real(f, *a, **k)

    monkeypatch.setattr(cli, "_upscale_array", upscale_array)
    code, out, err = _run(capsys, "upscale", *(str(tmp_path / n) for n in ("a.png", "b.png", "c.png")), "-o",
                          str(tmp_path / "o"), "--weights", weights)  # fmt: skip
    assert code == 2 and "2 of 3 images" in out and "Traceback" not in err, err
    assert "b.png: not enough memory to upscale 5x4 (DefaultCPUAllocator: can't allocate memory" in err, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.png", "c.png"]

    def broken(f, *a, **k):  # a broken CUDA context is not the memory's size: not reported as such
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(cli, "_upscale_array", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "x.png"), "--weights", weights])


def test_an_output_name_near_the_file_system_limit_is_written(tmp_path, capsys, weights):
    """A legal 250-byte name failed: the temporary file beside it added 14 bytes ('File name too long'); the name is
    cut by bytes (62 emoji are 248 of them)."""
    src = tmp_path / "in.png"
    write_image(src, np.zeros((4, 4, 3), np.uint8))
    for dst in (tmp_path / ("a" * 246 + ".png"), tmp_path / ("\U0001F600" * 61 + ".png")):
        assert _run(capsys, "upscale", str(src), "-o", str(dst), "--weights", weights)[0] == 0 and dst.is_file()

"""The ``vdsr-fast`` command: ``upscale`` images, ``eval`` on a test set (and more, see ``--help``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import __version__

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64, "fp8": torch.float8_e4m3fn}


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def shown(text: object) -> str:
    """``text`` for a terminal: the characters that are not printable (an escape sequence or a carriage return in a
    file's name, which would move the cursor, recolour or overwrite the line) written as Python escapes, ``\\x1b``;
    new lines and tabs stay."""
    text = str(text)
    return text if text.isprintable() else "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a job scheduler), raised where the program is, as Ctrl-C is, so that a
    temporary output is removed (exit status 143; was: the process died with the temporary file left behind)."""


def _raise_terminated(signum, frame):
    raise Terminated()


def catch_sigterm():
    """SIGTERM as :class:`Terminated` while a command runs (in the main thread, and not where it is ignored);
    returns the function that puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None
    signal.signal(signal.SIGTERM, _raise_terminated)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL)


def quality_arg(text: str) -> int:
    """``--quality``: JPEG/WebP quality, 1-100."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 100, got {text!r}")
    return int(text)


def _device(name: str | None) -> torch.device:
    from .engine import device_from_flag

    try:
        return device_from_flag(name)
    except ValueError as e:
        raise CliError(str(e)) from None


def _model(weights: str | None):
    from .weights import WeightsError, load

    try:
        return load(weights)
    except (FileNotFoundError, WeightsError) as e:
        raise CliError(str(e)) from None


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", "-w", help="weights file (.safetensors, .pth state_dict or the port's checkpoint); default: the shipped weights")
    p.add_argument("--backend", default="auto", choices=["auto", "cuda", "triton", "torch"], help="engine backend (default: auto)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), help="activation dtype (default: fp16 for fast GPU backends, else fp32)")
    p.add_argument("--device", help="torch device, e.g. cuda:0 or cpu (default: cuda if available)")
    p.add_argument("--tune", action="store_true", help="time the backend's alternative GPU kernels once and use the fastest")


def size_arg(text: str) -> tuple[int, int]:
    """``--size WIDTHxHEIGHT`` -> (width, height)."""
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, e.g. 1920x1080, got {text!r}")
    return int(parts[0]), int(parts[1])


def memory_arg(text: str) -> str | int:
    """``--max-memory``: "auto" (a share of the memory free on the device when the work starts, see
    :func:`vdsr_fast.tiling.memory_budget`) or GiB, as upscale()'s ``max_memory`` (bytes)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        gib = float(text)
    except ValueError:
        gib = float("nan")
    if not gib > 0 or gib == float("inf"):
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive number of GiB, got {text!r}")
    return max(1, int(gib * 2**30))


def add_memory_args(p: argparse.ArgumentParser, per: str) -> None:
    p.add_argument("--tile", type=int, help="upscale in output tiles of this many pixels a side (exact: the same result)")
    p.add_argument("--max-memory", type=memory_arg, default="auto",
                   help=f"working-memory budget {per} in GiB, from which the tile size follows when the whole does not "
                        "fit (exact); default 'auto': 70%% of the memory free on the device and the engine's own buffers together")  # fmt: skip


def _engine_kw(args) -> dict:
    """The engine options of ``--backend/--dtype``, as :func:`~vdsr_fast.get_engine` and
    :func:`~vdsr_fast.upscale` take them; no CUDA graphs (images of many sizes, each seen once: a
    capture per size would only add work)."""
    return {"backend": args.backend, "dtype": _DTYPES.get(args.dtype), "cuda_graphs": False, "tune": args.tune}


def _upscale_kw(args) -> dict:
    """upscale()'s options from the command line: the engine's, the output size, the tile size and the memory budget."""
    from .api import output_plan

    if args.size is not None and args.scale is not None:
        raise CliError("give --scale or --size, not both")
    size = None if args.size is None else (args.size[1], args.size[0])  # WIDTHxHEIGHT -> (H, W)
    if size is None:  # checked before anything is read (a size, against each image's own)
        try:
            output_plan(16, 16, args.scale)
        except ValueError as e:
            raise CliError(str(e)) from None
    return dict(_engine_kw(args), size=size, tile=args.tile, max_memory=args.max_memory)


def _factor(args) -> str:
    return f"x{2 if args.scale is None else args.scale:g}" if args.size is None else f"to {args.size[0]}x{args.size[1]}"


def _engine(args):
    """The model from ``--weights`` and its engine for ``--backend/--dtype/--device``."""
    from .api import get_engine
    from .engine import BackendUnavailable

    model = _model(args.weights)
    try:
        return model, get_engine(model, _device(args.device), **_engine_kw(args))
    except (BackendUnavailable, ValueError) as e:  # ValueError: a device or dtype the engine refuses
        raise CliError(str(e)) from None


def _upscale_array(arr: np.ndarray, scale: float | None, model, model_kw: dict, device: torch.device) -> np.ndarray:
    """One (H, W, C) uint8/uint16 image upscaled by ``scale`` (or to ``model_kw["size"]``), in its dtype."""
    from .api import upscale
    from .imaging import imresize

    x = torch.from_numpy(arr.astype(np.int32) if arr.dtype == np.uint16 else arr).permute(2, 0, 1)
    x = (x.float() / 65535.0 if arr.dtype == np.uint16 else x).to(device)
    if x.shape[0] == 2:  # gray + alpha: VDSR on the gray plane, bicubic on alpha
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        y = upscale(x[:1], scale, model, **model_kw)
        out = torch.cat([y, imresize(x[1:], size=tuple(y.shape[-2:])).clamp(0, 1)])
    else:
        out = upscale(x, scale, model, **model_kw)
    if out.dtype != torch.uint8:  # float path (16-bit input, or gray+alpha)
        peak = 65535.0 if arr.dtype == np.uint16 else 255.0
        out = (out.clamp(0, 1) * peak + 0.5).floor()
    return out.permute(1, 2, 0).cpu().numpy().astype(arr.dtype)


# A single large image on the CPU takes minutes: it is computed in tiles of this side (exact; ~8% more work for
# the halos) so that a progress bar can move, from this many output pixels on.
_PROGRESS_TILE, _PROGRESS_MIN_PIXELS = 1024, 8_000_000


def _out_pixels(arr: np.ndarray, scale: float | None, size: tuple[int, int] | None) -> int:
    from .api import output_plan

    H, W = output_plan(arr.shape[0], arr.shape[1], scale, size)[1]
    return H * W


def _check_suffix(suffix: str, label: str) -> None:
    """An output format the image writer knows (``label`` names the output), before anything is read."""
    from .images import IMAGE_SUFFIXES

    if suffix.lower() not in IMAGE_SUFFIXES:
        what = f"unsupported output format {suffix!r}" if suffix else "not a folder, and no suffix to give the image's format"
        raise CliError(f"{label}: {what}; use one of {', '.join(IMAGE_SUFFIXES)}")


def _read_source(src: Path, suffix: str, label_in: str | None = None, label_out: str | None = None):
    """``src``'s image info, frames and timing, once checked that the output format ``suffix`` holds their frames,
    depth and alpha: refused before anything is computed (the labels name the input and the output in the message).
    Raises ImageReadError / CliError."""
    from .images import MULTI_FRAME_SUFFIXES, image_info, read_frames

    info = image_info(src)
    frames, timing = read_frames(src, info["frames"])
    src_label, out = label_in or str(src), label_out or suffix
    channels = {f.shape[2] for f in frames}  # 1-4: read_frames refuses others
    deep, n = any(f.dtype == np.uint16 for f in frames), len(frames)
    if n > 1 and suffix.lower() not in MULTI_FRAME_SUFFIXES:
        raise CliError(f"{src_label} has {n} frames and {suffix} holds one image: write it as .gif, .webp, "
                       f".png (animated) or .tif (one page a frame)")
    suffix = suffix.lower()
    if deep and suffix not in ((".tif", ".tiff") if n > 1 else (".png", ".tif", ".tiff")):
        can = f" in {n} frames: TIFF can" if n > 1 else ": PNG and TIFF can"
        raise CliError(f"{src_label} is 16-bit and {out} cannot store 16 bits a sample{can}")
    if channels & {2, 4} and suffix in (".jpg", ".jpeg", ".bmp"):  # a 32-bit BMP's fourth byte is not read as alpha
        raise CliError(f"{src_label} has an alpha channel and {out} cannot store it: PNG, TIFF and WebP can")
    if n > 1 and suffix not in (".tif", ".tiff") and len({(f.shape, f.dtype) for f in frames}) > 1:
        sizes = ", ".join(sorted({f"{f.shape[1]}x{f.shape[0]}x{f.shape[2]}" for f in frames}))
        raise CliError(f"{src_label} has pages of different sizes or channels ({sizes}) and an animated {suffix} "
                       "holds frames of one: write it as .tif")
    return info, frames, timing


def _upscale_image(src: Path, dst: Path, scale: float | None, model, model_kw: dict, device: torch.device, quiet: bool = False,
                   source=None, quality: int = 95):  # fmt: skip
    """Read ``src`` (or take :func:`_read_source`'s ``source``), upscale it (every frame of an animation or multi-page
    TIFF), write ``dst`` (keeping the ICC profile and the frames' timing, the dpi scaled; JPEG/WebP at ``quality``);
    returns (in (h, w), out (h, w), frames, seconds of the upscale). Raises ImageReadError / CliError."""
    from tqdm import tqdm

    from .images import write_frames

    info, frames, timing = source if source is not None else _read_source(src, dst.suffix, label_out=str(dst))
    try:  # --size against this image (before the progress bars: it was a traceback on a terminal)
        pixels = _out_pixels(frames[0], scale, model_kw.get("size"))
    except ValueError as e:
        if (size := model_kw.get("size")) is None:
            raise CliError(str(e)) from None
        from .api import MAX_SCALE

        (h, w), top = frames[0].shape[:2], f"{MAX_SCALE:g}"
        raise CliError(f"--size {size[1]}x{size[0]} for a {w}x{h} image: each side must be 1 to {top} times the "
                       "input's") from None
    t0 = time.perf_counter()
    show = not quiet and sys.stderr.isatty()
    bar = tqdm(frames, desc=src.name, unit="frame", leave=False, disable=not show or len(frames) < 2)
    tiles = tqdm(total=1, desc=src.name, unit="tile", leave=False, disable=not show or len(frames) > 1)
    if not tiles.disable:  # one image: a bar over its tiles, which on a CPU are made small enough to move it
        if device.type == "cpu" and model_kw.get("tile") is None and pixels >= _PROGRESS_MIN_PIXELS:
            model_kw = dict(model_kw, tile=_PROGRESS_TILE)

        def advance(done: int, total: int) -> None:
            tiles.total, tiles.n = total, done
            tiles.refresh()

        model_kw = dict(model_kw, progress=advance)
    try:
        results = [_upscale_array(f, scale, model, model_kw, device) for f in bar]
    except ValueError as e:  # e.g. a --max-memory too small for the smallest tile
        raise CliError(str(e)) from None
    except (MemoryError, RuntimeError) as e:  # torch's OutOfMemoryError is a RuntimeError; a batch goes on
        oom = isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(e)
        if not oom:  # e.g. a broken CUDA context ("an illegal memory access"): not the memory's size
            raise
        h, w = frames[0].shape[:2]
        raise CliError(f"{src}: not enough memory to upscale {w}x{h}" + (f" x {len(frames)} frames" if len(frames) > 1 else "")
                       + f" ({str(e).splitlines()[0][:120] or type(e).__name__}); pass a smaller --max-memory or --tile") from None
    finally:
        tiles.close()
    elapsed = time.perf_counter() - t0
    try:
        # The colour profile carries over; the resolution scales with the pixels, so the print size stays.
        (h, w), (oh, ow) = frames[0].shape[:2], results[0].shape[:2]
        dpi = (info["dpi"][0] * ow / w, info["dpi"][1] * oh / h) if info["dpi"] else None
        write_frames(dst, results, durations=timing["durations"], loop=timing["loop"], icc_profile=info["icc_profile"], dpi=dpi,
                     exif=info["exif"], quality=quality)  # fmt: skip
    except (ValueError, OSError) as e:
        raise CliError(f"cannot write {dst}: {e}") from None
    return frames[0].shape[:2], results[0].shape[:2], len(frames), elapsed


def _batch_jobs(inputs: list[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """(source, destination) pairs of a batch: every image file given, and the images directly inside every folder
    given (sorted; not its subfolders, nor hidden files: a macOS ``._`` resource fork, a temporary output left by a
    killed run), each written to ``out_dir`` under its own name."""
    from .images import IMAGE_SUFFIXES, folder_files

    jobs = []
    for src in inputs:
        if src.is_dir():
            files = folder_files(src)
            if not files:
                raise CliError(f"{src}: no image in this folder ({', '.join(IMAGE_SUFFIXES)})")
            listed = set(files)
            others = [f for f in src.iterdir() if f not in listed and not f.name.startswith(".") and f.is_file()]
            if others:  # an .avif or .ppm Pillow may read when named, a sidecar: said, not silently left out
                kinds = sorted({f.suffix.lower() or "no suffix" for f in others})
                print(f"vdsr-fast upscale: {shown(src)}: {len(others)} file(s) of other suffixes left out ({', '.join(kinds)}); "
                      "name a file to upscale it anyway", file=sys.stderr)  # fmt: skip
        elif src.is_file():
            files = [src]
        else:
            raise CliError(f"{src}: no such file or folder")
        jobs += [(f, out_dir / f.name) for f in files]
    names: dict[Path, Path] = {}
    for src, dst in jobs:
        if dst in names:
            raise CliError(f"{names[dst]} and {src} would both be written to {dst}")
        names[dst] = src
        if dst.resolve() == src.resolve():
            raise CliError(f"{src} would be overwritten by its own upscale: give another --output folder")
        _check_suffix(dst.suffix, str(dst))  # a file given by name, of a suffix Pillow reads but nothing writes
    return jobs


@contextlib.contextmanager
def _made_folder(folder: Path):
    """``folder`` (an output's, from ``-o NEW/``) made if it is new, and removed again if nothing was written in it."""
    made = not folder.exists()
    folder.mkdir(exist_ok=True)
    try:
        yield
    except BaseException:
        if made and not any(folder.iterdir()):
            folder.rmdir()
        raise


def _one_output(dst: Path, name: str, force: bool, src: Path | None = None, folder: bool = False) -> Path:
    """The file one image is written to: ``dst``, or ``name`` inside it when it is a folder (or ``folder``: the name
    ended with a slash; the caller makes it); refused when it is the input ``src`` (even with ``force``), has no image
    format's suffix, exists (without ``force``) or its folder does not (for a new ``folder``: its parent)."""
    if folder and not dst.is_dir():
        if dst.exists():
            raise CliError(f"{dst} is a file, not a folder")
        if not dst.parent.is_dir():
            raise CliError(f"{dst.parent}: output folder does not exist")
        _check_suffix(Path(name).suffix, str(dst / name))
        return dst / name
    if dst.is_dir():
        dst = dst / name  # `-o folder/`: the input's name inside it
    if src is not None and dst.resolve() == src.resolve():
        raise CliError(f"{src} would be overwritten by its own upscale: give another --output")
    _check_suffix(dst.suffix, str(dst))
    if dst.exists() and not force:
        raise CliError(f"{dst} exists; pass --force to overwrite it")
    if not dst.parent.is_dir():
        raise CliError(f"{dst.parent}: output folder does not exist")
    return dst


def _upscale_one(args, src: Path, dst: Path, label_in: str | None = None, label_out: str | None = None) -> str:
    """One image (every frame of it) from ``src`` into ``dst``; returns the summary line (``label_in`` /
    ``label_out`` name the files there instead)."""
    from .images import ImageReadError

    upscale_kw = _upscale_kw(args)  # --scale with --size: an error before the engine is built
    out = f"--format {args.format}" if label_out and args.format else label_out or str(dst)
    try:  # so are an unreadable input and one the output's format cannot hold
        source = _read_source(src, dst.suffix, label_in, out)
    except ImageReadError as e:
        raise CliError(str(e)) from None
    model, engine = _engine(args)
    (h, w), (oh, ow), n, elapsed = _upscale_image(src, dst, args.scale, model, upscale_kw, engine.device, args.quiet, source, args.quality)
    frames = f", {n} frames" if n > 1 else ""
    return (f"{label_in or src} ({w}x{h}{frames}) -> {label_out or dst} ({ow}x{oh}), {_factor(args)}, "
            f"{engine.backend}/{str(engine.dtype)[6:]} on {engine.device}, {elapsed:.2f} s")  # fmt: skip


# Pillow's format name of an image read from stdin -> the suffix it is handled under
_PIL_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp", "GIF": ".gif"}


def _upscale_stream(args) -> int:
    """``vdsr-fast upscale - -o OUT`` / ``IN -o -``: stdin's image (its format from its bytes) or stdout (the format
    ``--format``, else the input's), through files in a temporary folder; the summary goes to stderr then."""
    import io
    import shutil
    import tempfile

    from PIL import Image, UnidentifiedImageError

    from .images import IMAGE_SUFFIXES

    if len(args.input) > 1 and "-" in args.input:
        raise CliError("- reads one image from stdin: it cannot go with other inputs")
    if args.output == "-" and (len(args.input) > 1 or Path(args.input[0]).is_dir()):  # was: the first image alone
        raise CliError("-o - writes one image to stdout: give one input image (a batch goes into an --output folder)")
    if args.input == ["-"] and sys.stdin.isatty():
        raise CliError("- reads the image from stdin, which is a terminal: pipe one in (... | vdsr-fast upscale - -o OUT.png)")
    if args.output == "-" and sys.stdout.isatty():
        raise CliError("-o - writes the image to stdout, which is a terminal: pipe it on (... > OUT.png) or give a file name")
    if args.format is not None and args.output != "-":
        raise CliError("--format is for -o - (stdout); a file's suffix sets its format")
    with tempfile.TemporaryDirectory(prefix="vdsr_fast_") as tmp:
        if args.input == ["-"]:
            data = sys.stdin.buffer.read()
            if not data:
                raise CliError("stdin is empty: pipe an image in (... | vdsr-fast upscale - -o OUT.png)")
            try:
                fmt = Image.open(io.BytesIO(data)).format
            except (UnidentifiedImageError, OSError):
                raise CliError(f"cannot read stdin as an image: its {len(data)} bytes are in no format Pillow knows") from None
            if fmt not in _PIL_SUFFIX:
                raise CliError(f"stdin holds a {fmt} image; upscale reads {', '.join(sorted(set(_PIL_SUFFIX.values())))}")
            src = Path(tmp) / f"stdin{_PIL_SUFFIX[fmt]}"
            src.write_bytes(data)
        else:
            src = Path(args.input[0])
        if args.output == "-":
            suffix = "." + args.format.lower().lstrip(".") if args.format else src.suffix.lower()
            if suffix not in IMAGE_SUFFIXES:
                raise CliError(f"cannot write {suffix or 'an image without a suffix'} to stdout; --format one of "
                               f"{', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)}")  # fmt: skip
            dst = Path(tmp) / f"stdout{suffix}"
        else:
            dst = _one_output(Path(args.output), "stdin" + src.suffix if args.input == ["-"] else src.name,
                              args.force or args.skip_existing, folder=args.output.endswith(("/", os.sep)))  # fmt: skip
            if args.skip_existing and dst.exists():
                print(f"{shown(dst)} exists: left as it is (--skip-existing)", file=sys.stderr)
                return 0
        with _made_folder(dst.parent):
            summary = _upscale_one(args, src, dst, "<stdin>" if args.input == ["-"] else None,
                                   "<stdout>" if args.output == "-" else None)  # fmt: skip
        if args.output == "-":
            with open(dst, "rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer)
            sys.stdout.buffer.flush()
    print(shown(summary), file=sys.stderr)
    return 0


def cmd_upscale(args) -> int:
    from .images import IMAGE_SUFFIXES, ImageReadError

    if "-" in args.input or args.output == "-" or args.format is not None:
        return _upscale_stream(args)
    inputs = [Path(p) for p in args.input]
    dst = Path(args.output)
    batch = len(inputs) > 1 or inputs[0].is_dir()
    as_folder = args.output.endswith(("/", os.sep))  # `-o new/`: a folder, made (Path() drops the slash)
    if not batch:
        out = _one_output(dst, inputs[0].name, args.force or args.skip_existing, inputs[0], folder=as_folder)
        if args.skip_existing and out.exists():  # a whole file: outputs are written under a temporary name, then renamed
            print(f"{shown(out)} exists: left as it is (--skip-existing)")
            return 0
        with _made_folder(out.parent):
            print(shown(_upscale_one(args, inputs[0], out)))
        return 0

    # A batch: -o is a folder (made if its parent exists); every output is checked before any is written.
    if dst.exists() and not dst.is_dir():
        raise CliError(f"{dst} is a file; with several inputs or a folder, --output is a folder")
    if not dst.exists() and not as_folder and dst.suffix.lower() in IMAGE_SUFFIXES:
        raise CliError(f"{dst}: with several inputs or a folder, --output is a folder, and this new one's name is an "
                       f"image file's; give a folder name (or end it with / to make a folder of that name)")  # fmt: skip
    if not dst.parent.is_dir():
        raise CliError(f"{dst.parent}: output folder does not exist")
    jobs = _batch_jobs(inputs, dst)
    existing = [d for _, d in jobs if d.exists()]
    if existing and not args.force and not args.skip_existing:
        raise CliError(f"{len(existing)} of the {len(jobs)} outputs exist (first: {existing[0]}); pass --force to overwrite them "
                       "or --skip-existing to keep them and upscale the rest")  # fmt: skip
    if args.skip_existing:  # each output is whole (written under a temporary name, then renamed): an interrupted batch resumes
        jobs = [(s, d) for s, d in jobs if not d.exists()]
    model_kw = _upscale_kw(args)  # upscale() then finds _engine's engine in the model's cache
    model, engine = _engine(args)  # a bad --weights or --backend leaves no folder behind
    dst.mkdir(exist_ok=True)
    from tqdm import tqdm

    failed, written = [], 0
    t0 = time.perf_counter()
    try:
        for src, out in tqdm(jobs, desc=_factor(args), unit="img", disable=args.quiet or not sys.stderr.isatty()):
            try:
                _upscale_image(src, out, args.scale, model, model_kw, engine.device, quiet=True, quality=args.quality)
                written += 1
            except (ImageReadError, CliError) as e:  # one bad file does not stop the batch
                failed.append(str(e))
                tqdm.write(f"vdsr-fast upscale: error: {shown(e)}", file=sys.stderr)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: say what is done and how to go on
        raise type(e)(f"{written} of {len(jobs)} images written to {dst}; the same command with --skip-existing "
                      "upscales the rest") from None  # fmt: skip
    kept = len(existing) if args.skip_existing else 0
    print(f"{written} of {len(jobs)} images -> {shown(dst)}, {_factor(args)}, {engine.backend}/{str(engine.dtype)[6:]} on {engine.device}, "
          f"{time.perf_counter() - t0:.1f} s" + (f"; {len(failed)} failed (above)" if failed else "")
          + (f"; {kept} existing left as they were" if kept else ""))  # fmt: skip
    return 2 if failed else 0


def _versions() -> dict[str, str | None]:
    import importlib.metadata as md
    import platform

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    cuda = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"vdsr_fast": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "cuda (torch)": cuda, "cudnn": str(cudnn) if cudnn else None, "triton": version("triton"),
            "numpy": version("numpy"), "av (video)": version("av")}  # fmt: skip


def info() -> dict:
    """What this installation can do: versions, devices, each backend's availability (or why not), the CUDA
    extension's build and the body kernel it picks per GPU, and the default weights' metadata."""
    from .engine import available_backends
    from .kernels.cuda import load_extension

    out = {"versions": _versions(), "devices": [], "cuda_extension": None, "weights": None}
    try:
        ext = load_extension()
        out["cuda_extension"] = {"path": ext.__file__, "archs": getattr(ext, "CUDA_ARCHS", None)}
    except ImportError as e:
        out["cuda_extension"] = {"error": str(e).splitlines()[0]}
    devices = [torch.device("cpu")] + [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    for dev in devices:
        entry = {"device": str(dev), "backends": available_backends(dev)}
        if dev.type == "cuda":
            props = torch.cuda.get_device_properties(dev)
            entry.update(name=props.name, capability=f"{props.major}.{props.minor}",
                         memory_gib=round(props.total_memory / 2**30, 1),
                         fp8=(props.major, props.minor) >= (8, 9))  # 8-bit tensor cores: the opt-in --dtype fp8  # fmt: skip
            if entry["backends"].get("cuda") is None and "path" in out["cuda_extension"]:
                entry["cuda_body_variant"] = load_extension().body_auto_variant(dev.index)
        out["devices"].append(entry)
    try:
        out["weights"] = dict(_model(None).metadata)
    except CliError as e:
        out["weights"] = {"error": str(e)}
    return out


def cmd_info(args) -> int:
    r = info()
    if args.json:
        print(json.dumps(r, indent=1, default=str))
        return 0
    print("versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v))
    ext = r["cuda_extension"]
    print(f"CUDA extension: {ext['path']} (archs {ext['archs']})" if "path" in ext else f"CUDA extension: not available ({ext['error']})")
    if len(r["devices"]) == 1:  # the CPU alone: say why (was: only the CUDA backend's "runs on CUDA devices only")
        import os

        v, hidden = r["versions"], os.environ.get("CUDA_VISIBLE_DEVICES")
        print("no CUDA device: " + (f"this torch ({v['torch']}) is built without CUDA" if v["cuda (torch)"] is None else
              f"torch {v['torch']} (CUDA {v['cuda (torch)']}) finds no GPU (none, no NVIDIA driver, or a driver too old "
              "for that CUDA" + (f"; CUDA_VISIBLE_DEVICES={hidden!r}" if hidden is not None else "") + ")"))  # fmt: skip
    for d in r["devices"]:
        head = d["device"] + (f": {d['name']}, compute capability {d['capability']}, {d['memory_gib']} GiB" if "name" in d else "")
        print(head)
        for name, why in d["backends"].items():
            print(f"  {name:7s} {'available' if why is None else 'unavailable: ' + why}")
        if "cuda_body_variant" in d:
            print(f"  cuda body kernel variant: {d['cuda_body_variant']} (automatic)")
        if "fp8" in d:
            print("  --dtype fp8 (opt-in, Triton): " + ("8-bit tensor cores" if d["fp8"] else "no 8-bit tensor cores (compute capability < 8.9)"))
    w = r["weights"]
    keys = ("arch", "steps", "training_data", "date", "psnr_set5")
    print("default weights: " + ("; ".join(f"{k} {w[k]}" for k in keys if k in w) if "error" not in w else w["error"]))
    print("backend='auto' picks: on a GPU tensor the CUDA extension, then Triton, then the PyTorch reference (in fp32 "
          "the reference: the CUDA kernels have no fp32, Triton's is slower than cuDNN's); on a CPU tensor the reference")
    print("vdsr-fast verify checks the fast backends that run here against the float64 reference")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import check_set, evaluate
    from .images import ImageReadError

    engine = None if args.bicubic_only else _engine(args)[1]
    tty = sys.stderr.isatty()
    scores = []
    try:
        check_set(args.folder, args.scale, args.lr_given)  # every scale's images and LR files, before any runs
        for s in args.scale:
            scores.append(evaluate(args.folder, s, engine, lr_given=args.lr_given, progress=not args.json and tty, checked=True))
            if not tty:  # a log file (nohup, CI): a line a scale, where a terminal has the bar
                r = scores[-1]
                print(f"eval x{s}: {r.n} images, mean PSNR {r.mean('bicubic_psnr' if engine is None else 'psnr'):.2f} dB",
                      file=sys.stderr, flush=True)  # fmt: skip
    except (FileNotFoundError, ImageReadError, ValueError) as e:  # the scales already done are reported, then the error
        _report_eval(scores, engine, args.json)
        raise CliError(str(e)) from None
    except KeyboardInterrupt:  # the scales already done are reported; main() then says where the current one stopped
        _report_eval(scores, engine, args.json)
        raise
    _report_eval(scores, engine, args.json)
    return 0


def _report_eval(scores, engine, as_json: bool) -> None:
    """``vdsr-fast eval``'s output: one JSON object per scale (one alone unwrapped), or a table per scale."""
    if as_json:
        out = [r.summary() for r in scores]
        if out:
            print(json.dumps(out[0] if len(out) == 1 else out, indent=2))
        return
    for r in scores:
        print(f"\n{r.folder}  x{r.scale}  ({'LR files given' if r.lr_given else 'paper protocol'}, {r.n} images)")
        head = f"{'image':<28} {'bicubic PSNR/SSIM':>18}"
        if engine is not None:
            head += f" {'VDSR PSNR/SSIM':>18} {'ms':>8}"
        print(head)
        rows = [(i.name, i.bicubic_psnr, i.bicubic_ssim, i.psnr, i.ssim, i.seconds) for i in r.images]
        rows.append(("mean", r.mean("bicubic_psnr"), r.mean("bicubic_ssim"), r.mean("psnr"), r.mean("ssim"), r.mean("seconds")))
        for name, bp, bs, p, s_, t in rows:
            line = f"{name:<28} {bp:>10.2f}/{bs:.4f}"
            if engine is not None:
                line += f" {p:>10.2f}/{s_:.4f} {t * 1000:>8.1f}"
            print(line)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdsr-fast", description="Fast VDSR super-resolution.")
    parser.add_argument("--version", action="version", version=f"vdsr_fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in _FORWARDED.items():
        sub.add_parser(name, help=help_text, add_help=False)

    p = sub.add_parser("upscale", help="upscale images (PNG/JPEG/BMP/TIFF/WebP/GIF, 8/16-bit, gray/RGB/RGBA, animations and multi-page TIFFs)")
    p.add_argument("input", nargs="+", help="an image, or several images and folders (the images directly inside); "
                   "- reads one image from stdin")
    p.add_argument("-o", "--output", required=True,
                   help="output image (format from the suffix), or a folder: for a batch, each image under its own name; "
                        "- writes to stdout")
    p.add_argument("--format", help="the format written to stdout (-o -): png, jpg, tif, webp, bmp or gif (default: the "
                   "input's)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars (the summary line and errors still print)")
    p.add_argument("--scale", "-s", type=float,
                   help="2, 3, 4 (the scales VDSR is trained on) or any factor from 1 to 4, e.g. 1.5 (default: 2)")
    p.add_argument("--size", type=size_arg, help="the output's WIDTHxHEIGHT instead of --scale, e.g. 1920x1080")
    p.add_argument("--quality", type=quality_arg, default=95, help="JPEG and WebP output quality, 1-100 (default: 95)")
    exists = p.add_mutually_exclusive_group()
    exists.add_argument("--force", "-f", action="store_true", help="overwrite an existing output")
    exists.add_argument("--skip-existing", action="store_true",
                        help="leave an existing output as it is and upscale the rest (resumes an interrupted batch)")
    add_memory_args(p, "per image")
    _add_engine_args(p)
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("info", help="versions, GPUs, which backends can run here (and why not), the default weights")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("eval", help="PSNR/SSIM on a test set with the paper's protocol")
    p.add_argument("folder", help="a folder of *_HR.png (or any images), or a set folder with x2/ x3/ x4/")
    p.add_argument("--scale", "-s", type=int, nargs="+", default=[2], choices=[2, 3, 4])
    p.add_argument("--lr-given", action="store_true", help="upscale the *_LR files beside the HR ones instead of downscaling")
    p.add_argument("--bicubic-only", action="store_true", help="score bicubic only (no weights needed)")
    p.add_argument("--json", action="store_true", help="print one JSON object (a list for several scales)")
    _add_engine_args(p)
    p.set_defaults(func=cmd_eval)
    return parser


# Subcommands with their own argument parsers, forwarded whole.
_FORWARDED = {
    "train": ("vdsr_fast.train", "train VDSR (see vdsr-fast train --help)"),
    "video": ("vdsr_fast.video", "upscale a video with PyAV: decode, VDSR, encode; audio, subtitles and chapters copied (see vdsr-fast video --help)"),
    "verify": ("vdsr_fast.verify", "check the fast backends on this machine against the float64 reference (see vdsr-fast verify --help)"),
    "bench": ("benchmarks.bench_latency", "latency benchmark against cuDNN (from a source checkout; see benchmarks/README.md)"),
}


def _forward(name: str, argv: list[str]) -> int:
    import importlib

    module = _FORWARDED[name][0]
    if module.startswith("benchmarks."):  # benchmarks/ sits beside the package in a source checkout
        root = Path(__file__).resolve().parents[1]
        if not (root / "benchmarks" / "bench_latency.py").is_file():
            print(f"vdsr-fast {name}: needs a source checkout (benchmarks/ is not installed with the package)", file=sys.stderr)
            return 2
        sys.path.insert(0, str(root))
    return importlib.import_module(module).main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _FORWARDED:
        return _forward(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    from PIL import Image

    # Pillow warns of a "decompression bomb" from PIL.Image.MAX_IMAGE_PIXELS on and refuses past twice that, which is
    # where this reader refuses every decoder's images (images._check_pixels): one between the two was asked for
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # a file name not in the locale's encoding (was: a traceback)
    restore_sigterm = catch_sigterm()
    try:
        return args.func(args)
    except CliError as e:
        print(f"vdsr-fast {args.command}: error: {shown(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # ... | head: the reader closed stdout early; what is left to write goes nowhere
        try:  # so the interpreter's own flush at exit does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout without a file descriptor
            pass
        print(f"vdsr-fast {args.command}: error: <stdout> was closed by its reader", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        term = isinstance(e, Terminated)
        print(f"vdsr-fast {args.command}: {'terminated' if term else 'interrupted'}" + (f": {shown(e)}" if str(e) else ""), file=sys.stderr)
        return 143 if term else 130
    finally:
        restore_sigterm()


if __name__ == "__main__":
    sys.exit(main())

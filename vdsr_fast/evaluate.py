"""The paper's evaluation protocol (DESIGN.md §3) on a folder of images.

For each HR image: crop to a multiple of the scale, take Y (MATLAB ``rgb2ycbcr``; gray images are Y),
MATLAB-bicubic downscale by ``s`` and upscale by ``s`` (or, with ``lr_given``, upscale the ``*_LR``
file's Y), run the network, round Y' to uint8 and compare with the HR Y (rounded to uint8) after
shaving ``s`` pixels per border. PSNR and SSIM are averaged per image, then over the set.

An image reproduced exactly (e.g. a flat one) has an infinite PSNR (:func:`~vdsr_fast.metrics.psnr`): the mean PSNR
is then that of the other images (infinite only when every image is exact), and :meth:`SetScore.summary` (what
``vdsr-fast eval --json`` prints) writes ``null`` for an infinite PSNR, so that it is valid JSON. An HR image too
small for the protocol (fewer than ``2 s + 11`` pixels a side once cropped to a multiple of ``s``: the shave and
SSIM's 11-pixel window) is an error that names it. The folder layouts read: :func:`find_images` (HR) and
:func:`lr_file` (LR).
"""

from __future__ import annotations

import math
import numbers
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .engine import Engine
from .images import IMAGE_SUFFIXES, folder_files, read_image
from .imaging import imresize, rgb_to_ycbcr
from .metrics import psnr, ssim

__all__ = ["ImageScore", "SetScore", "find_images", "lr_file", "load_y", "check_set", "evaluate"]


@dataclass
class ImageScore:
    name: str
    bicubic_psnr: float
    bicubic_ssim: float
    psnr: float | None = None
    ssim: float | None = None
    seconds: float | None = None


@dataclass
class SetScore:
    folder: str
    scale: int
    lr_given: bool
    images: list[ImageScore] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.images)

    def mean(self, attr: str) -> float | None:
        """The mean of ``attr`` over the images (None where one has none); an infinite PSNR (an exact image) is left
        out of it, unless every image's is infinite."""
        vals = [getattr(i, attr) for i in self.images]
        if not vals or any(v is None for v in vals):
            return None
        finite = [v for v in vals if v != math.inf]
        return float(np.mean(finite)) if finite else math.inf

    def summary(self) -> dict:
        """The set's means and per-image rows as plain values, an infinite PSNR as None (JSON's null): what
        ``vdsr-fast eval --json`` prints, with these keys (a stable interface):

        * ``folder`` (the folder the HR images were read from, e.g. ``.../Set5/x2``), ``scale`` (2, 3 or 4),
          ``protocol`` (``"paper"``: the HR downscaled here; ``"lr-given"``: the ``*_LR`` files), ``n`` (images);
        * the means over the images: ``psnr``, ``ssim`` (VDSR's; None with ``--bicubic-only``), ``bicubic_psnr``,
          ``bicubic_ssim``, ``seconds`` (the network's time per image; None with ``--bicubic-only``);
        * ``images``: one row per image, sorted by file name, with ``name`` (the file's stem; its name where two
          files share a stem) and the same five scores.

        PSNR in dB, SSIM in [0, 1], both on Y in [0, 255] after the shave (DESIGN.md §3).
        """
        out = {
            "folder": self.folder,
            "scale": self.scale,
            "protocol": "lr-given" if self.lr_given else "paper",
            "n": self.n,
            "psnr": self.mean("psnr"),
            "ssim": self.mean("ssim"),
            "bicubic_psnr": self.mean("bicubic_psnr"),
            "bicubic_ssim": self.mean("bicubic_ssim"),
            "seconds": self.mean("seconds"),
            "images": [asdict(i) for i in self.images],
        }
        finite = lambda row: {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        return dict(finite(out), images=[finite(row) for row in out["images"]])


# Subfolders that hold a set's HR images, tried in this order: this project's and the SR benchmark copies' x2/,
# SelfExSR's (Huang et al.) image_SRF_2/, EDSR's / BasicSR's HR/ (its LR files in ../LR_bicubic/X2/NAMEx2.png).
_SUBFOLDERS = ("x{s}", "X{s}", "image_SRF_{s}", "HR")


def _is_hr(p: Path) -> bool:
    return p.stem.upper().endswith("_HR")


def _is_lr(p: Path) -> bool:
    return p.stem.upper().endswith("_LR")


def find_images(folder: str | Path, scale: int) -> tuple[Path, list[Path]]:
    """The HR images of a set folder: those of its first subfolder ``x{scale}``, ``X{scale}``,
    ``image_SRF_{scale}`` or ``HR`` that exists, else of ``folder``; there the ``*_HR.*`` files (any case), else
    every image but ``*_LR.*``. Hidden files (a macOS ``._`` resource fork) and subfolders are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    for name in _SUBFOLDERS:
        if (folder / name.format(s=scale)).is_dir():
            folder = folder / name.format(s=scale)
            break
    files = folder_files(folder)
    hr = [p for p in files if _is_hr(p)]
    chosen = hr or [p for p in files if not _is_lr(p)]
    if not chosen:
        subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        other_scales = [n for n in subs if re.fullmatch(r"(x|X|image_SRF_)\d+", n)]
        if other_scales:  # x2/ and x3/ but no x4/: passing x2/ would not help at x4
            raise FileNotFoundError(f"{folder}: no HR images for x{scale}: it has {', '.join(other_scales)} but no "
                                    f"{' or '.join(n.format(s=scale) for n in _SUBFOLDERS)}")
        where = f" (its subfolders: {', '.join(subs)}; pass the one with the HR images)" if subs else ""
        raise FileNotFoundError(f"{folder}: no images found{where}: looked for *_HR.png or any PNG/JPEG/BMP/TIFF/WebP/GIF, "
                                f"directly or in a subfolder {', '.join(n.format(s=scale) for n in _SUBFOLDERS)}")
    return folder, chosen


def lr_file(hr: Path, scale: int) -> Path:
    """The LR file of HR image ``hr`` (``--lr-given``): ``NAME_LR.*`` beside ``NAME_HR.*`` (any case, any image
    suffix, the HR's first), or for ``HR/NAME.png`` EDSR's ``LR_bicubic/X{scale}/NAMEx{scale}.*``; a
    FileNotFoundError that says what was looked for when there is none."""
    if _is_hr(hr):
        folder, stem = hr.parent, hr.stem[:-2] + ("LR" if hr.stem[-2:].isupper() else "lr")
    elif hr.parent.name == "HR":
        folder, stem = hr.parent.parent / "LR_bicubic" / f"X{scale}", f"{hr.stem}x{scale}"
    else:
        raise FileNotFoundError(f"--lr-given: {hr} is not named *_HR (nor in an HR/ folder): there is no LR file to "
                                "pair it with")
    for suffix in dict.fromkeys((hr.suffix, *IMAGE_SUFFIXES)):
        for cand in (folder / (stem + suffix), folder / (stem + suffix.upper())):
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"--lr-given: no LR file for {hr} (expected {folder / (stem + hr.suffix)})")


def load_y(path: Path, gray: bool | None = None) -> torch.Tensor:
    """An image file's luminance as float64 (H, W) in [0, 1], unrounded: a gray file's values, a colour file's
    MATLAB ``rgb2ycbcr`` Y. ``gray`` reads the file as another one was read (an LR file as its HR): True takes a
    colour file whose channels are all equal as gray (a gray image saved as RGB, as OpenCV writes it) and refuses
    any other colour file; False takes a gray file as the colour image of equal channels."""
    return _y(read_image(path), path, gray)


def _y(arr: np.ndarray, path: Path, gray: bool | None) -> torch.Tensor:
    x = torch.from_numpy(arr.astype(np.float64) / (65535.0 if arr.dtype == np.uint16 else 255.0))
    x = x.permute(2, 0, 1)
    is_gray = x.shape[0] in (1, 2)  # gray (+ alpha, ignored)
    if gray and not is_gray:
        if not (torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])):
            raise ValueError(f"{path}: a colour image, read as the LR of a gray HR image (a gray image saved as RGB, its "
                             "channels equal, is read as gray)")
        is_gray = True
    if is_gray and gray is not False:
        return x[0]
    return rgb_to_ycbcr(x[:3] if not is_gray else x[:1].expand(3, -1, -1))[0]


def _u8(y: torch.Tensor) -> torch.Tensor:
    return (y.clamp(0, 1) * 255.0 + 0.5).floor()


def _pair(path: Path, scale: int, lr_given: bool, arr: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """HR image ``path``'s Y (from ``arr``, its pixels where already read) cropped to a multiple of ``scale`` and
    (``lr_given``) its LR file's Y read as the HR was (gray or colour); a ValueError or FileNotFoundError naming the
    file when the pair cannot be scored."""
    if arr is None:
        arr = read_image(path)
    hr = _y(arr, path, None)
    h, w = hr.shape
    if min(h - h % scale, w - w % scale) < 2 * scale + 11:  # the shave, then SSIM's 11x11 window
        least = scale * (2 + math.ceil(11 / scale))
        raise ValueError(f"{path}: {w}x{h} is too small to score at x{scale}: the protocol shaves {scale} pixels a "
                         f"border and SSIM needs 11x11 after that (at least {least}x{least})")
    hr = hr[: h - h % scale, : w - w % scale]
    if not lr_given:
        return hr, None
    lr_path = lr_file(path, scale)
    lr = load_y(lr_path, gray=arr.shape[2] in (1, 2))
    if tuple(lr.shape) != (hr.shape[0] // scale, hr.shape[1] // scale):
        raise ValueError(f"--lr-given: {lr_path} is {lr.shape[1]}x{lr.shape[0]}; its HR {path.name}, cropped to a "
                         f"multiple of {scale} ({hr.shape[1]}x{hr.shape[0]}), needs a "
                         f"{hr.shape[1] // scale}x{hr.shape[0] // scale} LR at x{scale}")
    return hr, lr


def check_set(folder: str | Path, scale: int | Sequence[int], lr_given: bool = False) -> tuple[Path, list[Path]]:
    """:func:`find_images`, then every image read (once) and checked as :func:`evaluate` will at ``scale`` (or at each
    of several scales; its size; with ``lr_given`` its LR file's presence, size and channels): a set that cannot be
    scored is refused before any image runs through the network (the error came after every image before the bad
    one had). Returns the folder and its HR images (those of the first scale)."""
    scales = [int(scale)] if isinstance(scale, numbers.Integral) else list(scale)
    found = [find_images(folder, s) for s in scales]
    at = [set(files) for _, files in found]  # each scale's HR images
    for path in dict.fromkeys(p for _, files in found for p in files):  # each HR image once, in order
        arr = read_image(path)
        for s, files in zip(scales, at):
            if path in files:
                _pair(path, s, lr_given, arr)
    return found[0]


def _score(path: Path, scale: int, engine: Engine | None, device: torch.device, lr_given: bool, name: str) -> ImageScore:
    """One HR image's scores (the protocol above), in a row called ``name``."""
    hr, lr = _pair(path, scale, lr_given)
    if lr is None:
        lr = imresize(hr, 1.0 / scale)
    bic = imresize(lr.to(device), scale)
    gt = _u8(hr)
    score = ImageScore(name, psnr(_u8(bic).cpu(), gt, shave=scale, data_range=255), ssim(_u8(bic).cpu(), gt, shave=scale, data_range=255))
    if engine is not None:
        x = bic.to(torch.float32)[None, None]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        sr = engine(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        score.seconds = time.perf_counter() - t0
        bad = int((~torch.isfinite(sr)).sum())
        if bad:  # clamped and rounded, NaN would score as some level (or drop out of the mean as NaN)
            raise ValueError(f"{path}: the network's output at x{scale} has {bad} NaN or infinite values of "
                             f"{sr.numel()}: no score (an fp16/fp8 overflow or a broken engine)")
        sr = _u8(sr[0, 0].double().cpu())
        score.psnr = psnr(sr, gt, shave=scale, data_range=255)
        score.ssim = ssim(sr, gt, shave=scale, data_range=255)
    return score


def _so_far(result: SetScore, total: int) -> str:
    """The means over the images scored so far, for an interrupted run."""
    line = f"{result.n} of {total} images of {result.folder} scored at x{result.scale}"
    if not result.n:
        return line
    cols = [("VDSR", "psnr", "ssim")] if result.mean("psnr") is not None else []
    cols.append(("bicubic", "bicubic_psnr", "bicubic_ssim"))
    means = ", ".join(f"{who} {result.mean(p):.2f} dB / {result.mean(q):.4f}" for who, p, q in cols)
    return f"{line}; their mean PSNR/SSIM (not the set's): {means}"


def evaluate(
    folder: str | Path,
    scale: int,
    engine: Engine | None = None,
    *,
    lr_given: bool = False,
    progress: bool = False,
    checked: bool = False,
) -> SetScore:
    """Score bicubic and (when ``engine`` is given) VDSR on every image of ``folder``.

    ``progress``: a tqdm bar on stderr (images done, rate, ETA, the running mean PSNR). A KeyboardInterrupt (Ctrl-C)
    is raised again with the means of the images scored so far as its message (``vdsr-fast eval`` prints it) and
    that partial :class:`SetScore` as its ``partial`` attribute. The set is checked first (:func:`check_set`; not
    again with ``checked=True``, where the caller has just checked it at this scale), and a network output with NaN
    or infinite values is a ValueError naming the image, not a score.
    """
    folder, files = find_images(folder, scale) if checked else check_set(folder, scale, lr_given)
    stems = [p.stem for p in files]
    names = [p.name if stems.count(p.stem) > 1 else p.stem for p in files]  # a.png and a.bmp: two rows told apart
    result = SetScore(str(folder), scale, lr_given)
    device = engine.device if engine is not None else torch.device("cpu")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc=f"eval x{scale}", unit="img", leave=False)
    try:
        for path, name in zip(files, names):
            result.images.append(_score(path, scale, engine, device, lr_given, name))
            if bar is not None:
                bar.set_postfix_str(f"PSNR {result.mean('bicubic_psnr' if engine is None else 'psnr'):.2f} dB", refresh=False)
                bar.update()
    except KeyboardInterrupt as e:  # Ctrl-C (or the CLI's SIGTERM) an hour into BSD100: keep what was scored
        err = type(e)(_so_far(result, len(files)))
        err.partial = result
        raise err from None
    finally:
        if bar is not None:
            bar.close()
    return result

"""The paper's evaluation protocol (DESIGN.md §3) on a folder of images.

For each HR image: crop to a multiple of the scale, take Y (MATLAB ``rgb2ycbcr``; gray images are Y),
MATLAB-bicubic downscale by ``s`` and upscale by ``s`` (or, with ``lr_given``, upscale the ``*_LR``
file's Y), run the network, round Y' to uint8 and compare with the HR Y (rounded to uint8) after
shaving ``s`` pixels per border. PSNR and SSIM are averaged per image, then over the set.

An image reproduced exactly (e.g. a flat one) has an infinite PSNR (:func:`~vdsr_fast.metrics.psnr`): the mean PSNR
is then that of the other images (infinite only when every image is exact), and :meth:`SetScore.summary` (what
``vdsr-fast eval --json`` prints) writes ``null`` for an infinite PSNR, so that it is valid JSON. An HR image too
small for the protocol (fewer than ``2 s + 11`` pixels a side once cropped to a multiple of ``s``: the shave and
SSIM's 11-pixel window) is an error that names it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .engine import Engine
from .images import IMAGE_SUFFIXES, read_image
from .imaging import imresize, rgb_to_ycbcr
from .metrics import psnr, ssim

__all__ = ["ImageScore", "SetScore", "find_images", "load_y", "evaluate"]


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
        finite = [v for v in vals if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.inf

    def summary(self) -> dict:
        """The set's means and per-image rows as plain values, an infinite PSNR as None (JSON's null)."""
        out = {
            "folder": self.folder,
            "scale": self.scale,
            "protocol": "lr-given" if self.lr_given else "paper (MATLAB bicubic downscale of HR)",
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


def find_images(folder: str | Path, scale: int) -> tuple[Path, list[Path]]:
    """The HR images of a set folder: ``folder/x{scale}/*_HR.*`` if that subfolder exists, else
    ``folder/*_HR.*``, else every image in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    sub = folder / f"x{scale}"
    if sub.is_dir():
        folder = sub
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    hr = [p for p in files if p.stem.endswith("_HR")]
    chosen = hr or [p for p in files if not p.stem.endswith("_LR")]
    if not chosen:
        raise FileNotFoundError(f"{folder}: no images found (looked for *_HR.png or any PNG/JPEG/BMP/TIFF/WebP/GIF)")
    return folder, chosen


def load_y(path: Path) -> torch.Tensor:
    """An image file's luminance as float64 (H, W) in [0, 1], unrounded (gray files are taken as Y)."""
    arr = read_image(path)
    x = torch.from_numpy(arr.astype(np.float64) / (65535.0 if arr.dtype == np.uint16 else 255.0))
    x = x.permute(2, 0, 1)
    if x.shape[0] in (1, 2):  # gray (+ alpha, ignored)
        return x[0]
    return rgb_to_ycbcr(x[:3])[0]


def _u8(y: torch.Tensor) -> torch.Tensor:
    return (y.clamp(0, 1) * 255.0 + 0.5).floor()


def evaluate(
    folder: str | Path,
    scale: int,
    engine: Engine | None = None,
    *,
    lr_given: bool = False,
    progress: bool = False,
) -> SetScore:
    """Score bicubic and (when ``engine`` is given) VDSR on every image of ``folder``."""
    folder, files = find_images(folder, scale)
    result = SetScore(str(folder), scale, lr_given)
    device = engine.device if engine is not None else torch.device("cpu")
    it = files
    if progress:
        from tqdm import tqdm

        it = tqdm(files, desc=f"eval x{scale}", unit="img", leave=False)
    for path in it:
        hr = load_y(path)
        h, w = hr.shape
        if min(h - h % scale, w - w % scale) < 2 * scale + 11:  # the shave, then SSIM's 11x11 window
            least = scale * (2 + math.ceil(11 / scale))
            raise ValueError(f"{path}: {w}x{h} is too small to score at x{scale}: the protocol shaves {scale} pixels a "
                             f"border and SSIM needs 11x11 after that (at least {least}x{least})")
        hr = hr[: h - h % scale, : w - w % scale]
        if lr_given:
            lr_path = path.with_name(path.name.replace("_HR", "_LR"))
            if lr_path == path or not lr_path.is_file():
                raise FileNotFoundError(f"--lr-given: no LR file beside {path} (expected {lr_path.name})")
            lr = load_y(lr_path)
        else:
            lr = imresize(hr, 1.0 / scale)
        bic = imresize(lr.to(device), scale)
        if bic.shape != hr.shape:
            raise ValueError(f"{path.name}: LR {tuple(lr.shape)} x{scale} gives {tuple(bic.shape)}, HR is {tuple(hr.shape)}")
        gt = _u8(hr)
        score = ImageScore(path.stem, psnr(_u8(bic).cpu(), gt, shave=scale, data_range=255), ssim(_u8(bic).cpu(), gt, shave=scale, data_range=255))
        if engine is not None:
            x = bic.to(torch.float32)[None, None]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            sr = engine(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            score.seconds = time.perf_counter() - t0
            sr = _u8(sr[0, 0].double().cpu())
            score.psnr = psnr(sr, gt, shave=scale, data_range=255)
            score.ssim = ssim(sr, gt, shave=scale, data_range=255)
        result.images.append(score)
    return result

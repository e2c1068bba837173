"""vdsr_fast: a GPU inference engine for VDSR super-resolution (Kim, Lee & Lee, CVPR 2016).

Quickstart::

    import vdsr_fast
    model = vdsr_fast.load()                      # the shipped weights (or a path)
    sr = vdsr_fast.upscale(img, scale=2, model=model)
"""

from .api import SCALES, get_engine, load, upscale
from .engine import BackendUnavailable, Engine, available_backends
from .imaging import imresize, rgb_to_ycbcr, ycbcr_to_rgb
from .metrics import psnr, ssim
from .reference import VDSR, vdsr_forward
from .weights import WeightsError, save
from .yuv import upscale_yuv

__version__ = "0.1.0"

__all__ = [
    "SCALES",
    "VDSR",
    "BackendUnavailable",
    "Engine",
    "WeightsError",
    "available_backends",
    "get_engine",
    "imresize",
    "load",
    "psnr",
    "rgb_to_ycbcr",
    "save",
    "ssim",
    "upscale",
    "upscale_yuv",
    "vdsr_forward",
    "ycbcr_to_rgb",
]

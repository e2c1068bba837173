"""Image files <-> arrays for the CLI: PNG, JPEG, BMP, TIFF, WebP; 8- and 16-bit; gray, gray+alpha, RGB, RGBA.

Pillow reads and writes most files; it cannot hold 16-bit color, so 16-bit RGB(A) and gray+alpha PNGs go through
pypng and 16-bit TIFFs through tifffile (both small pure-Python packages).
Arrays are numpy ``(H, W, C)`` uint8 or uint16, C in {1, 2, 3, 4}, upright: an EXIF orientation (a phone photo
stored sideways) is applied on reading. :func:`image_info` reads what a file says about its pixels beyond the
array (the ICC colour profile, the resolution in dots per inch), which :func:`write_image` can write back.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import numpy as np

__all__ = ["ImageReadError", "read_image", "write_image", "image_info", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (0o666 less the umask): temporary files from
    ``mkstemp`` are 0o600, and an output renamed from one would otherwise be unreadable to others."""
    return 0o666 & ~_current_umask()


_UMASK_LOCK = threading.Lock()


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux 4.7+: /proc/self/status).

    ``os.umask`` can only read the mask by setting it, so the fallback briefly sets 0o077 (never
    looser than the caller's) under a lock: another thread creating a file in that instant gets a
    stricter mode, not a world-writable one.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o077)
        os.umask(umask)
    return umask


class ImageReadError(ValueError):
    """A file that is missing, unreadable or not a supported image."""


def _png_16bit_color(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(26)
    # IHDR: bytes 24 (bit depth) and 25 (color type: 2 = RGB, 4 = gray+alpha, 6 = RGBA)
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 4, 6)


def _read_png16(path: Path) -> np.ndarray:
    import png

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
    return arr.reshape(height, width, planes)


def _read_tiff(path: Path) -> np.ndarray | None:
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tf:
            arr = tf.series[0].asarray()
            planar = tf.pages[0].planarconfig == tifffile.PLANARCONFIG.SEPARATE and tf.pages[0].samplesperpixel > 1
    except Exception:  # compression tifffile cannot decode alone: let Pillow try
        return None
    if planar and arr.ndim == 3:
        arr = np.moveaxis(arr, 0, -1)  # (samples, H, W) -> (H, W, samples)
    if arr.dtype not in (np.uint8, np.uint16) or arr.ndim not in (2, 3):
        raise ImageReadError(f"{path}: unsupported TIFF ({arr.dtype}, shape {arr.shape}); expected 8/16-bit gray or RGB(A)")
    return arr


def _upright(arr: np.ndarray, orientation: int) -> np.ndarray:
    """``arr`` (H, W, C) as a viewer shows a file with this EXIF orientation (Pillow's ``ImageOps.exif_transpose``)."""
    if orientation in (2, 4, 5, 7):  # mirrored: flip left-right first
        arr = arr[:, ::-1]
    turns = {3: 2, 4: 2, 5: 1, 6: 3, 7: 3, 8: 1}.get(orientation, 0)  # then quarter turns counter-clockwise
    return np.rot90(arr, turns) if turns else arr


def _png_has_exif(f) -> bool:
    """Whether the PNG open in ``f`` (past its signature) has an eXIf chunk, from the chunk headers alone (Pillow
    decodes the whole image to find it)."""
    while len(head := f.read(8)) == 8:
        size, kind = int.from_bytes(head[:4], "big"), head[4:]
        if kind == b"eXIf":
            return True
        if kind == b"IEND":
            return False
        f.seek(size + 4, os.SEEK_CUR)  # the data and its CRC
    return False


def _exif_orientation(path: Path) -> int:
    from PIL import Image

    with open(path, "rb") as f:
        if f.read(8) == b"\x89PNG\r\n\x1a\n" and not _png_has_exif(f):
            return 1
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(0x0112, 1))  # 0x0112: Orientation
    except Exception:  # no EXIF, or metadata Pillow cannot parse: as stored
        return 1


def image_info(path: str | os.PathLike) -> dict:
    """``{"icc_profile": bytes or None, "dpi": (x, y) or None}`` of an image file (the pixels are not decoded), the
    dpi of the image as :func:`read_image` returns it (upright)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            icc, dpi = im.info.get("icc_profile"), im.info.get("dpi")
    except Exception:  # a file only tifffile/pypng read, or no metadata: nothing to keep
        return {"icc_profile": None, "dpi": None}
    dpi = tuple(float(d) for d in dpi) if dpi and all(d and d > 0 for d in dpi) else None
    if dpi and _exif_orientation(Path(path)) in (5, 6, 7, 8):  # read_image turns the image a quarter: x <-> y
        dpi = dpi[::-1]
    return {"icc_profile": icc or None, "dpi": dpi}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``(H, W, C)`` uint8 or uint16 (C: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA), upright (its
    EXIF orientation applied, as viewers show it)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        arr = None
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = _read_tiff(path)
        if arr is None and _png_16bit_color(path):
            arr = _read_png16(path)
        if arr is None:
            with Image.open(path) as im:
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                    arr = np.asarray(im).astype(np.uint16)  # 16-bit gray (Pillow reads it as "I" or "I;16")
                else:
                    if im.mode == "P":
                        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                    elif im.mode in ("1",):
                        im = im.convert("L")
                    elif im.mode == "PA":
                        im = im.convert("RGBA")
                    elif im.mode not in ("L", "LA", "RGB", "RGBA"):
                        im = im.convert("RGB")  # CMYK, YCbCr JPEGs, ...
                    arr = np.asarray(im)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageReadError(f"{path}: cannot read image ({e}); supported: PNG, JPEG, BMP, TIFF, WebP") from None
    except Exception as e:  # decoders (pypng's png.FormatError, ...) raise their own types
        raise ImageReadError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.size == 0:
        raise ImageReadError(f"{path}: the image is empty ({arr.shape})")
    arr = _upright(arr, _exif_orientation(path))
    return np.array(arr, order="C")  # a writable copy (Pillow's arrays are read-only)


def _icc_fits(icc: bytes, channels: int) -> bool:
    """Whether an ICC profile describes an image of ``channels`` (its header's data colour space: 'RGB ' for RGB(A),
    'GRAY' for gray(+alpha)); a CMYK photo's profile does not fit the RGB image read from it."""
    return len(icc) >= 20 and icc[16:20] == (b"GRAY" if channels <= 2 else b"RGB ")


def _png_add_icc(path: str, icc: bytes) -> None:
    """Insert an iCCP chunk (the profile, zlib-compressed) before the first IDAT of the PNG at ``path`` (pypng
    writes no iCCP itself)."""
    import zlib

    import png

    chunks = list(png.Reader(filename=path).chunks())
    at = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
    chunks.insert(at, (b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    with open(path, "wb") as f:
        png.write_chunks(f, chunks)


def write_image(
    path: str | os.PathLike,
    arr: np.ndarray,
    *,
    quality: int = 95,
    icc_profile: bytes | None = None,
    dpi: tuple[float, float] | None = None,
) -> None:
    """Write ``(H, W, C)`` uint8/uint16 to ``path`` (format from the suffix), atomically.

    The data goes to a temporary file in the same folder that is renamed at the end, so an interrupted
    run never leaves a half-written file under the final name. ``icc_profile`` (PNG, JPEG, TIFF; BMP holds
    none) and ``dpi`` are written with it when given (see :func:`image_info`); a profile of another colour space
    than the array's (a CMYK profile, an RGB one for a gray image) is left out.
    """
    from PIL import Image

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: unsupported output format {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_image: expected (H, W, 1|2|3|4) uint8/uint16, got {arr.shape} {arr.dtype}")
    if arr.dtype == np.uint16 and suffix in (".jpg", ".jpeg", ".bmp", ".webp"):
        raise ValueError(f"{path}: {suffix} cannot store 16-bit images; use .png or .tif")
    if icc_profile and not _icc_fits(icc_profile, arr.shape[2]):
        icc_profile = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            extra = {"iccprofile": icc_profile} if icc_profile else {}
            if dpi:
                extra.update(resolution=dpi, resolutionunit="INCH")
            tifffile.imwrite(tmp, arr[:, :, 0] if arr.shape[2] == 1 else arr,
                             photometric="minisblack" if arr.shape[2] <= 2 else "rgb", **extra)  # fmt: skip
        elif arr.dtype == np.uint16:  # Pillow cannot write 16-bit color; pypng writes every 16-bit PNG
            import png

            h, w, c = arr.shape
            phys = {"x_pixels_per_unit": round(dpi[0] / 0.0254), "y_pixels_per_unit": round(dpi[1] / 0.0254),
                    "unit_is_meter": True} if dpi else {}  # fmt: skip
            writer = png.Writer(w, h, greyscale=c <= 2, alpha=c in (2, 4), bitdepth=16, **phys)
            with open(tmp, "wb") as f:
                writer.write(f, arr.reshape(h, w * c))
            if icc_profile:
                _png_add_icc(tmp, icc_profile)
        else:
            im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)  # uint8: L, LA, RGB, RGBA
            if suffix in (".jpg", ".jpeg") and im.mode in ("LA", "RGBA"):
                raise ValueError(f"{path}: JPEG cannot store an alpha channel; use .png or .tif")
            extra = {"icc_profile": icc_profile} if icc_profile and suffix != ".bmp" else {}
            if dpi:
                extra["dpi"] = dpi
            if suffix in (".jpg", ".jpeg", ".webp"):  # lossy (WebP stores gray as RGB)
                extra["quality"] = quality
            im.save(tmp, **extra)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

"""Image files <-> arrays for the CLI: PNG, JPEG, BMP, TIFF, WebP, GIF; 8- and 16-bit; gray, gray+alpha, RGB, RGBA;
the frames of animations (GIF, WebP, PNG) and the pages of multi-page TIFFs (:func:`read_frames`, :func:`write_frames`).

Pillow reads and writes most files; it cannot hold 16-bit color, so 16-bit RGB(A) and gray+alpha PNGs go through
pypng and 16-bit TIFFs through tifffile (both small pure-Python packages).
Arrays are numpy ``(H, W, C)`` uint8 or uint16, C in {1, 2, 3, 4}, upright: an EXIF orientation (a phone photo
stored sideways) is applied on reading. :func:`image_info` reads what a file says about its pixels beyond the
array (the ICC colour profile, the resolution in dots per inch), which :func:`write_image` can write back.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import tempfile
import threading
import zlib
from pathlib import Path

import numpy as np

__all__ = ["ImageReadError", "read_image", "read_frames", "write_image", "write_frames", "image_info", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# The formats that hold several frames: animated GIF, WebP and PNG (APNG), multi-page TIFF.
MULTI_FRAME_SUFFIXES = (".gif", ".webp", ".png", ".tif", ".tiff")


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (0o666 less the umask): temporary files from
    ``mkstemp`` are 0o600, and an output renamed from one would otherwise be unreadable to others."""
    return 0o666 & ~_current_umask()


def output_target(path: Path) -> tuple[Path, int]:
    """Where a write of ``path`` through a temporary file renamed over it goes, and the mode that file then gets, as
    ``open(path, "w")`` would: through a symbolic link to the file it names (renamed over the link, the link became a
    file and the file it named was left as it was), an existing file's permission bits kept (a private 0600 output
    became 0644 when overwritten), else :func:`default_file_mode`."""
    real = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = stat.S_IMODE(real.stat().st_mode)
    except FileNotFoundError:
        mode = default_file_mode()
    return real, mode


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


TOTAL_FRAMES_FACTOR = 8  # the frames of an animation or the pages of a TIFF together: this many images' pixels


def _check_pixels(path: Path, sizes: list[tuple[int, int]]) -> None:
    """Refuse, before decoding, frames (``(w, h)`` each) of which one has more pixels than Pillow decodes (twice
    ``PIL.Image.MAX_IMAGE_PIXELS``, 179 megapixels by default; raise it, or set it to None, to allow more), or which
    together have more than ``TOTAL_FRAMES_FACTOR`` times that: on every decoder (pypng for 16-bit colour PNGs and
    tifffile did not check: a 2 MB file unpacked to gigabytes; a 69 KB GIF held 3000 frames of 2000x2000)."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is None:
        return
    limit = 2 * Image.MAX_IMAGE_PIXELS
    w, h = max(sizes, key=lambda s: s[0] * s[1])
    total = sum(a * b for a, b in sizes)
    if w * h > limit:
        what, cap = f"{w}x{h}", f"{limit / 1e6:.0f} megapixels an image"
    elif total > TOTAL_FRAMES_FACTOR * limit:
        what, cap = f"{len(sizes)} frames of {total / 1e6:.0f} megapixels", f"{TOTAL_FRAMES_FACTOR * limit / 1e6:.0f} all frames"
    else:
        return
    raise ImageReadError(f"{path}: {what} is more than this reads ({cap}; PIL.Image.MAX_IMAGE_PIXELS sets it): "
                         "refused before decoding")


def _png_16bit_color(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(26)
    # IHDR: bytes 24 (bit depth) and 25 (color type: 2 = RGB, 4 = gray+alpha, 6 = RGBA)
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 4, 6)


def _read_png16(path: Path) -> np.ndarray:
    import png

    reader = png.Reader(filename=str(path))
    reader.preamble()  # the chunks before the pixels: the size, checked before any row is decoded
    _check_pixels(path, [(reader.width, reader.height)])
    width, height, rows, info = reader.asDirect()
    arr = np.empty((height, width * info["planes"]), np.uint16)  # filled row by row: one copy, not three
    for i, r in enumerate(rows):
        arr[i] = r
    return arr.reshape(height, width, info["planes"])


def _tiff_pages(tf) -> list:
    """A TIFF's full-resolution pages (not its thumbnails or reduced-resolution copies)."""
    return [p for p in tf.pages if not getattr(p, "is_reduced", False)]


def _read_tiff(path: Path, all_pages: bool = False) -> list[np.ndarray] | None:
    """The first page (or every page) of a TIFF as (H, W[, C]) arrays; None where Pillow should read it instead:
    compression tifffile cannot decode alone, and samples that are not gray or RGB values (1-bit, white-is-zero,
    palette, CMYK, Lab, YCbCr: Pillow converts them; tifffile would hand out the raw samples, which read as RGB(A)
    gave wrong colours)."""
    import tifffile

    direct = (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB)
    try:
        with tifffile.TiffFile(str(path)) as tf:
            pages = _tiff_pages(tf)
            if not all_pages:
                pages = pages[:1]
            _check_pixels(path, [(page.imagewidth, page.imagelength) for page in pages])  # before any is decoded
            arrs = []
            for page in pages:
                if page.photometric not in direct or page.bitspersample == 1:
                    return None
                arr = page.asarray()
                if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and page.samplesperpixel > 1 and arr.ndim == 3:
                    arr = np.moveaxis(arr, 0, -1)  # (samples, H, W) -> (H, W, samples)
                arrs.append(arr)
    except (ImageReadError, MemoryError):
        raise
    except Exception:  # compression tifffile cannot decode alone: let Pillow try
        return None
    for arr in arrs:
        if arr.dtype not in (np.uint8, np.uint16) or arr.ndim not in (2, 3) or arr.ndim == 3 and arr.shape[2] > 4:
            raise ImageReadError(f"{path}: unsupported TIFF ({arr.dtype}, shape {arr.shape}); expected 8/16-bit gray or RGB(A)")
    return arrs


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


def folder_files(folder: Path, suffixes=IMAGE_SUFFIXES) -> list[Path]:
    """The regular files of ``folder`` whose suffix (in any case) is one of ``suffixes``, sorted; hidden ones (macOS's
    ``._photo.png``) left out."""
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in suffixes and not f.name.startswith(".") and f.is_file())


def _tiff_tags(path: Path) -> dict:
    """The first page's orientation, dpi and ICC profile of a TIFF that Pillow cannot open (16-bit gray+alpha), as
    tifffile reads them: ``{"orientation": n, "dpi": (x, y) or None, "icc_profile": bytes or None}``; {} if it
    cannot read them either."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tf:
            tags = _tiff_pages(tf)[0].tags
            value = {t: tags[t].value for t in (274, 282, 283, 296, 34675) if t in tags}
    except Exception:
        return {}
    dpi = None
    unit = int(value.get(296, 2))  # ResolutionUnit: inch (2, the default) or centimetre (3)
    if 282 in value and 283 in value and unit in (2, 3):
        per_inch = 2.54 if unit == 3 else 1.0
        x, y = (v[0] / v[1] if isinstance(v, tuple) and v[1] else float(v) for v in (value[282], value[283]))
        dpi = (x * per_inch, y * per_inch) if x > 0 and y > 0 else None
    icc = value.get(34675)
    return {"orientation": int(value.get(274, 1)), "dpi": dpi, "icc_profile": bytes(icc) if icc else None}


def _exif_orientation(path: Path) -> int:
    from PIL import Image

    with open(path, "rb") as f:
        if f.read(8) == b"\x89PNG\r\n\x1a\n" and not _png_has_exif(f):
            return 1
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(0x0112, 1))  # 0x0112: Orientation
    except Exception:  # no EXIF, or metadata Pillow cannot parse: as stored (a TIFF: as tifffile reads its tag)
        return _tiff_tags(path).get("orientation", 1) if path.suffix.lower() in (".tif", ".tiff") else 1


def _frame_count(path: Path, im) -> int:
    """How many frames (pages) a file holds: animated GIF, WebP and PNG, multi-page TIFF; 1 for the rest (a
    camera's MPO JPEG holds a second picture, not a frame)."""
    fmt = getattr(im, "format", None)  # the content's format: a GIF named .jpg (or nothing) is still animated
    if path.suffix.lower() in (".tif", ".tiff") or fmt == "TIFF":
        import tifffile

        try:
            with tifffile.TiffFile(str(path)) as tf:
                return len(_tiff_pages(tf))
        except Exception:
            pass
    if fmt in ("GIF", "PNG", "WEBP", "TIFF"):
        return int(getattr(im, "n_frames", 1))
    return 1


def image_info(path: str | os.PathLike) -> dict:
    """``{"icc_profile": bytes or None, "dpi": (x, y) or None, "frames": n, "exif": bytes or None}`` of an image
    file (the pixels are not decoded), the dpi of the image as :func:`read_image` returns it (upright); ``frames``
    > 1 for an animation or a multi-page TIFF (see :func:`read_frames`); ``exif`` the EXIF block of a JPEG, PNG or
    WebP (camera, date, GPS...) with its orientation set to 1, as :func:`read_image` applied it."""
    from PIL import Image

    path = Path(path)
    orientation = None  # read below only where the dpi needs it
    try:
        with Image.open(path) as im:
            icc, dpi = im.info.get("icc_profile"), im.info.get("dpi")
            if im.format == "TIFF" and not {282, 283} <= set(im.tag_v2):  # Pillow says (1, 1) for a TIFF without any
                dpi = None
            frames = _frame_count(path, im)
            try:  # a JPEG's, PNG's or WebP's EXIF block (a TIFF's "EXIF" would be its own structural tags)
                exif = im.getexif() if im.format in ("JPEG", "MPO", "PNG", "WEBP") else {}
                if not dpi:  # a WebP has no resolution but its EXIF's (Pillow reads a JPEG's so where JFIF has none)
                    dpi = _exif_dpi(exif)
                if 0x0112 in exif:  # Orientation
                    exif[0x0112] = 1
                exif = exif.tobytes() if len(exif) else None
            except Exception:  # an EXIF block Pillow cannot handle is left out; the frames and profile are kept
                exif = None
    except Exception:  # a file only tifffile/pypng read: a TIFF's tags as tifffile reads them; else nothing to keep
        tags = _tiff_tags(path) if path.suffix.lower() in (".tif", ".tiff") else {}
        icc, dpi, frames, exif = tags.get("icc_profile"), tags.get("dpi"), _frame_count(path, None), None
        orientation = tags.get("orientation", 1)  # as _exif_orientation would read it, without reading the tags again
    dpi = tuple(float(d) for d in dpi) if dpi and all(d and d > 0 for d in dpi) else None
    if dpi and (orientation or _exif_orientation(path)) in (5, 6, 7, 8):  # read_image turns it a quarter: x <-> y
        dpi = dpi[::-1]
    return {"icc_profile": icc or None, "dpi": dpi, "frames": frames, "exif": exif}


def _exif_per_inch(exif) -> float | None:
    """Units per inch of an EXIF block's resolution (ResolutionUnit 0x0128: 2 inch, the default; 3 centimetre), or
    None (1: no unit; a malformed value)."""
    try:
        return {2: 1.0, 3: 2.54}.get(int(exif.get(0x0128, 2)))
    except (TypeError, ValueError):
        return None


def _exif_dpi(exif) -> tuple[float, float] | None:
    """The resolution an EXIF block (IFD0 XResolution / YResolution) gives, in dots per inch, or None."""
    if (per_inch := _exif_per_inch(exif)) is None:
        return None
    try:
        dpi = float(exif[0x011A]) * per_inch, float(exif[0x011B]) * per_inch
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return dpi if all(0 < d < float("inf") for d in dpi) else None


def _exif_sized(exif: bytes, w: int, h: int, dpi: tuple[float, float] | None = None) -> bytes:
    """An EXIF block with its pixel dimensions (Exif IFD PixelXDimension / PixelYDimension, where present) set, and
    its resolution (XResolution / YResolution, where present, in its unit) set to ``dpi``: it said the input's, so
    a file whose header carries the new one disagreed with it, and a WebP (no resolution but EXIF's) printed larger."""
    from PIL import Image

    ex = Image.Exif()
    ex.load(exif)
    ifd = ex.get_ifd(0x8769)
    for tag, value in ((0xA002, w), (0xA003, h)):
        if tag in ifd:
            ifd[tag] = value
    if dpi and (per_inch := _exif_per_inch(ex)):
        for tag, d in ((0x011A, dpi[0]), (0x011B, dpi[1])):
            if tag in ex:
                ex[tag] = d / per_inch
    return ex.tobytes()


def _pil_array(im) -> np.ndarray:
    """A loaded Pillow image as uint8/uint16 (H, W[, C]), C in 1-4 (palette, 1-bit, CMYK, ... converted)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit gray (Pillow reads it as "I" or "I;16")
        arr = np.asarray(im)
        if im.mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):  # 32-bit samples: no silent wrap
            raise ValueError(f"32-bit integer samples {arr.min()}..{arr.max()}, outside 16 bits; expected 8/16-bit gray or RGB(A)")
        return arr.astype(np.uint16)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in ("1",):
        im = im.convert("L")
    elif im.mode in ("L", "RGB") and "transparency" in im.info:  # a PNG's tRNS colour key: its pixels transparent
        im = im.convert(im.mode[0] + "A" if im.mode == "L" else "RGBA")
    elif im.mode == "PA":
        im = im.convert("RGBA")
    elif im.mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr JPEGs, ...
    return np.asarray(im)


def _finish(path: Path, arr: np.ndarray, orientation: int) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.size == 0:
        raise ImageReadError(f"{path}: the image is empty ({arr.shape})")
    return np.array(_upright(arr, orientation), order="C")  # a writable copy (Pillow's arrays are read-only)


@contextlib.contextmanager
def _read_errors(path: Path):
    """Turns a decoder's exception into an ImageReadError naming ``path``."""
    from PIL import UnidentifiedImageError

    try:
        yield
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageReadError(f"{path}: cannot read image ({e}); supported: PNG, JPEG, BMP, TIFF, WebP, GIF") from None
    except Exception as e:  # decoders (pypng's png.FormatError, ...) raise their own types
        raise ImageReadError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def read_frames(path: str | os.PathLike, count: int | None = None) -> tuple[list[np.ndarray], dict]:
    """Every frame of an animated GIF, WebP or PNG, or every page of a multi-page TIFF, each as :func:`read_image`
    returns one (whole frames: a GIF's partial frames are composited), and ``{"durations": [ms, ...] or None,
    "loop": n or None}`` (a TIFF has no timing; ``loop``: how many times the animation plays, 0 forever; a GIF's
    NETSCAPE count of repeats is read as one play more, a GIF without one as 1). A still image gives one frame.
    A 16-bit colour (RGB, RGBA, gray+alpha) animated PNG is an :class:`ImageReadError`: its frames read at 8 bits.
    ``count``: the file's frame count when the caller has it already (:func:`image_info`'s ``frames``)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if (image_info(path)["frames"] if count is None else count) <= 1:
        return [read_image(path)], {"durations": None, "loop": None}
    if _png_16bit_color(path):
        # pypng, which reads a still 16-bit colour PNG, reads no APNG frames, and Pillow decodes 16-bit RGB, RGBA
        # and gray+alpha frames at 8 bits (16-bit gray it keeps): the upscale would have 8 bits of them, silently.
        raise ImageReadError(f"{path}: a 16-bit colour animated PNG: its frames would lose their low 8 bits (they are "
                             f"read at 8 bits here); upscale its frames as 16-bit PNGs (`ffmpeg -i {shlex.quote(str(path))} "
                             "frame_%04d.png` writes them so), or convert it to 8 bits first")  # fmt: skip
    orientation = _exif_orientation(path)
    with _read_errors(path):
        if path.suffix.lower() in (".tif", ".tiff"):
            arrs = _read_tiff(path, all_pages=True)
            if arrs is not None:
                return [_finish(path, a, orientation) for a in arrs], {"durations": None, "loop": None}
        frames, durations = [], []
        with Image.open(path) as im:
            _check_pixels(path, [im.size] * im.n_frames)
            for i in range(im.n_frames):
                im.seek(i)
                im.load()
                frames.append(_pil_array(im))
                durations.append(im.info.get("duration"))
            loop = im.info.get("loop")
            if im.format == "GIF":  # its NETSCAPE count repeats: n + 1 plays (0: forever); none at all: one play
                loop = 1 if loop is None else loop + (loop > 0)
    modes = {(f.ndim, f.shape[2] if f.ndim == 3 else 1, f.dtype) for f in frames}
    if len(modes) > 1:  # e.g. a GIF whose first frame is opaque and later ones transparent: all as RGBA
        frames = [_as_rgba(f) for f in frames]
    durations = None if any(d is None for d in durations) else [float(d) for d in durations]
    return [_finish(path, f, orientation) for f in frames], {"durations": durations, "loop": loop}


def _as_rgba(f: np.ndarray) -> np.ndarray:
    f = f[:, :, None] if f.ndim == 2 else f
    c = f.shape[2]
    rgb = f[:, :, :1].repeat(3, 2) if c <= 2 else f[:, :, :3]
    alpha = f[:, :, c - 1 :] if c in (2, 4) else np.full_like(f[:, :, :1], np.iinfo(f.dtype).max)
    return np.concatenate([rgb, alpha], axis=2)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``(H, W, C)`` uint8 or uint16 (C: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA), upright (its
    EXIF orientation applied, as viewers show it)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    with _read_errors(path):
        arr = None
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = (_read_tiff(path) or [None])[0]
        if arr is None and _png_16bit_color(path):
            arr = _read_png16(path)
        if arr is None:
            with Image.open(path) as im:
                im.load()
                arr = _pil_array(im)
    return _finish(path, arr, _exif_orientation(path))


def _icc_fits(icc: bytes, channels: int) -> bool:
    """Whether an ICC profile describes an image of ``channels`` (its header's data colour space: 'RGB ' for RGB(A),
    'GRAY' for gray(+alpha)); a CMYK photo's profile does not fit the RGB image read from it."""
    return len(icc) >= 20 and icc[16:20] == (b"GRAY" if channels <= 2 else b"RGB ")


def _png_add_chunks(path: str, extra: list[tuple[bytes, bytes]]) -> None:
    """Insert chunks before the first IDAT of the PNG at ``path`` (pypng writes no iCCP or eXIf itself)."""
    import png

    chunks = list(png.Reader(filename=path).chunks())
    at = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
    chunks[at:at] = extra
    with open(path, "wb") as f:
        png.write_chunks(f, chunks)


@contextlib.contextmanager
def _atomic(path: Path):
    """A temporary file beside ``path`` to write, renamed to ``path`` at the end (removed on an error), so an
    interrupted run never leaves a half-written file under the final name; through a symbolic link to the file it
    names, with an existing file's mode (:func:`output_target`)."""
    target, mode = output_target(path)
    # the name cut: a name near the file system's 255 bytes plus the temporary's 14 was too long (found by a review)
    short = os.fsencode(target.name)[:64].decode("utf-8", "ignore")  # bytes count: 62 emoji are 248 of them
    fd, tmp = tempfile.mkstemp(prefix=f".{short}.", suffix=path.suffix.lower(), dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _tiff_options(channels: int, icc_profile: bytes | None, dpi) -> dict:
    """tifffile's options for one page of ``channels`` samples: gray+alpha as one page of 2 samples, the second an
    alpha (without them tifffile writes an (H, W, 2) array as H pages of W x 2 gray pixels)."""
    opts: dict = {"photometric": "minisblack" if channels <= 2 else "rgb"}
    if channels in (2, 4):
        opts.update(planarconfig="contig", extrasamples=["unassalpha"])
    if icc_profile:
        opts["iccprofile"] = icc_profile
    if dpi:
        opts.update(resolution=dpi, resolutionunit="INCH")
    return opts


def _check_arrays(path: Path, arrs: list[np.ndarray]) -> str:
    """The output suffix, after checking that the arrays fit it."""
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: unsupported output format {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    for arr in arrs:
        if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or arr.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"write_image: expected (H, W, 1|2|3|4) uint8/uint16, got {arr.shape} {arr.dtype}")
        if arr.dtype == np.uint16 and suffix in (".jpg", ".jpeg", ".bmp", ".webp", ".gif"):
            raise ValueError(f"{path}: {suffix} cannot store 16-bit images; use .png or .tif")
    return suffix


def write_image(
    path: str | os.PathLike,
    arr: np.ndarray,
    *,
    quality: int = 95,
    icc_profile: bytes | None = None,
    dpi: tuple[float, float] | None = None,
    exif: bytes | None = None,
) -> None:
    """Write ``(H, W, C)`` uint8/uint16 to ``path`` (format from the suffix), atomically.

    The data goes to a temporary file in the same folder that is renamed at the end, so an interrupted
    run never leaves a half-written file under the final name. ``icc_profile`` (PNG, JPEG, TIFF; BMP holds
    none), ``dpi`` and ``exif`` (JPEG, PNG, WebP; its pixel dimensions set to the array's, its resolution to ``dpi``) are written with it when
    given (see :func:`image_info`); a profile of another colour space than the array's (a CMYK profile, an RGB one
    for a gray image) is left out.
    """
    from PIL import Image

    path = Path(path)
    suffix = _check_arrays(path, [arr])
    if icc_profile and not _icc_fits(icc_profile, arr.shape[2]):
        icc_profile = None
    exif = _exif_sized(exif, arr.shape[1], arr.shape[0], dpi) if exif and suffix in (".jpg", ".jpeg", ".png", ".webp") else None
    with _atomic(path) as tmp:
        if suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, arr[:, :, 0] if arr.shape[2] == 1 else arr, **_tiff_options(arr.shape[2], icc_profile, dpi))
        elif arr.dtype == np.uint16:  # Pillow cannot write 16-bit color; pypng writes every 16-bit PNG
            import png

            h, w, c = arr.shape
            phys = {"x_pixels_per_unit": round(dpi[0] / 0.0254), "y_pixels_per_unit": round(dpi[1] / 0.0254),
                    "unit_is_meter": True} if dpi else {}  # fmt: skip
            writer = png.Writer(w, h, greyscale=c <= 2, alpha=c in (2, 4), bitdepth=16, **phys)
            with open(tmp, "wb") as f:
                writer.write(f, arr.reshape(h, w * c))
            extra = [(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile))] if icc_profile else []
            if exif:  # eXIf holds the TIFF structure without JPEG's "Exif\0\0" marker
                extra.append((b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
            if extra:
                _png_add_chunks(tmp, extra)
        else:
            im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)  # uint8: L, LA, RGB, RGBA
            if suffix in (".jpg", ".jpeg", ".bmp") and im.mode in ("LA", "RGBA"):  # Pillow's RGBA BMP reads back as RGB
                kind = "BMP" if suffix == ".bmp" else "JPEG"
                raise ValueError(f"{path}: {kind} cannot store an alpha channel; use .png or .tif")
            extra = {"icc_profile": icc_profile} if icc_profile and suffix != ".bmp" else {}
            if dpi:
                extra["dpi"] = dpi
            if suffix in (".jpg", ".jpeg", ".webp"):  # lossy (WebP stores gray as RGB)
                extra["quality"] = quality
            if exif:
                extra["exif"] = exif
            if suffix == ".gif" and im.mode in ("LA", "RGBA"):
                im = im.convert("RGBA")  # quantised to a palette with one transparent entry by Pillow
            im.save(tmp, **extra)


def write_frames(
    path: str | os.PathLike,
    frames: list[np.ndarray],
    *,
    durations: list[float] | None = None,
    loop: int | None = None,
    quality: int = 95,
    icc_profile: bytes | None = None,
    dpi: tuple[float, float] | None = None,
    exif: bytes | None = None,
) -> None:
    """Write frames (as :func:`read_frames` returns them) as an animated GIF, WebP or PNG (APNG: 8-bit; frames of one
    size; ``durations`` in ms and ``loop``, the plays, as read (None: forever), when given) or a multi-page TIFF
    (pages of any size); one frame as :func:`write_image` (with ``exif``; an animation or a multi-page TIFF is
    written without it). Atomically, as :func:`write_image`; a format that holds one image is a ValueError."""
    from PIL import Image

    path = Path(path)
    if len(frames) == 1:
        return write_image(path, frames[0], quality=quality, icc_profile=icc_profile, dpi=dpi, exif=exif)
    suffix = _check_arrays(path, frames)
    if suffix not in MULTI_FRAME_SUFFIXES:
        raise ValueError(f"{path}: {suffix} holds one image, not {len(frames)} frames; use .gif, .webp, .png "
                         f"(animated) or .tif (one page a frame)")
    tiff = suffix in (".tif", ".tiff")
    if not tiff and len({(f.shape, f.dtype.str) for f in frames}) > 1:  # a TIFF's pages may differ
        raise ValueError(f"write_frames: frames of different shapes or dtypes: {sorted({(f.shape, f.dtype.str) for f in frames})}")
    c = frames[0].shape[2]
    with _atomic(path) as tmp:
        if tiff:
            import tifffile

            with tifffile.TiffWriter(tmp) as tw:
                for f in frames:
                    icc = icc_profile if icc_profile and _icc_fits(icc_profile, f.shape[2]) else None
                    tw.write(f[:, :, 0] if f.shape[2] == 1 else f, **_tiff_options(f.shape[2], icc, dpi))
            return
        if icc_profile and not _icc_fits(icc_profile, c):
            icc_profile = None
        if frames[0].dtype == np.uint16:
            raise ValueError(f"{path}: an animated {suffix} holds 8 bits a sample, the frames have 16; use .tif")
        ims = [Image.fromarray(f[:, :, 0] if c == 1 else f) for f in frames]
        if suffix == ".gif" and c in (2, 4):
            ims = [im.convert("RGBA") for im in ims]
        plays = 0 if loop is None else int(loop)  # 0: forever
        extra = {"save_all": True, "append_images": ims[1:], "loop": plays}
        if suffix == ".gif" and plays == 1:  # Pillow writes a GIF's loop as its NETSCAPE count of repeats: none
            del extra["loop"]
        elif suffix == ".gif" and plays > 1:
            extra["loop"] = plays - 1
        if durations is not None:
            extra["duration"] = [round(d) for d in durations]
        if suffix == ".gif":
            extra["disposal"] = 2  # whole frames: each replaces the last (transparent pixels do not show it)
        else:
            extra.update({"icc_profile": icc_profile} if icc_profile else {})
            extra.update({"dpi": dpi} if dpi and suffix == ".png" else {})
            extra.update({"quality": quality} if suffix == ".webp" else {})
        ims[0].save(tmp, **extra)

"""Decoding an image file into an upright float32 RGB array in [0, 1], faithfully or not at all.

Decoding follows the file's real sample format, never a guess:

* **integers** are divided by the largest value of their bit depth: 8-bit by
  255, 16-bit by 65535 (16-bit PNG, gray or RGB; 16-bit TIFF), 32-bit unsigned
  by 2^32 - 1; signed integers by 2^(bits-1) - 1 (as scikit-image's
  ``img_as_float``), and a signed image with negative values is refused;
* **floating point** (TIFF ``F``, float32/float64) is taken as the intensity
  itself: it must be finite and lie in [0, 1], otherwise the file is refused
  (nothing is clipped or rescaled behind the user's back);
* **gray** (and 1-bit) images are repeated into three channels; **palette**
  images use their palette; **CMYK** (and YCbCr, LAB, HSV) are converted by
  Pillow's formulas, without colour management (ICC profiles are ignored, as
  in pyiqa and torchvision);
* **alpha** (LA, RGBA, palettes with transparency) is composited over white:
  ``rgb * a + (1 - a)``, what an image viewer shows on a white page.  A fully
  opaque image is unchanged;
* the **EXIF orientation** (tag 274) is applied, as in
  ``PIL.ImageOps.exif_transpose``, so the pixels are the upright picture;
* a multi-frame file (animated GIF, multi-page TIFF) gives its first frame.

TIFF files with more than 8 bits per sample are read with ``tifffile`` (Pillow
reads 16-bit RGB as 8 bits, unsigned 32-bit as signed, and cannot open float64 or
RGB float TIFFs), and 16-bit RGB(A) PNG files with OpenCV (Pillow gives 8 bits).
Both ship with the suite's dependencies (scikit-image, pyiqa); without them those
files are read by Pillow as far as it can.

A file over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``,
about 89 megapixels) is refused, and so is one whose decoding would not fit in
memory (:mod:`robustbench_iqa.data.memory`), before its pixels are read.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from robustbench_iqa.data.memory import DECODE_BYTES_PER_PIXEL, check_fits
from robustbench_iqa.errors import InputError

ORIENTATION_TAG = 274
"""EXIF/TIFF tag of the orientation (1 = upright; 2-8 = mirrored and/or rotated)."""


def check_image_path(path: str | Path) -> Path:
    """``path`` as a Path to an existing regular file; InputError naming what it is otherwise."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"image path {p} is a directory, not an image file")
    if not p.exists():
        raise InputError(f"image file not found: {p}")
    if not p.is_file():
        raise InputError(f"image path {p} is not a regular file")
    return p


# -- header ---------------------------------------------------------------------------------------------
def _is_tiff(p: Path) -> bool:
    with p.open("rb") as f:
        return f.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _open(p: Path) -> Image.Image:
    """``Image.open`` with decompression bombs (error *and* warning) and unreadable files as InputError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(p)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            f"image {p} is larger than the decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels "
            f"(PIL.Image.MAX_IMAGE_PIXELS); refused"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {p}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _tiff_page(p: Path) -> Any | None:
    """The first page of a TIFF that needs tifffile (more than 8 bits per sample), else None."""
    try:
        import tifffile
    except ImportError:  # pragma: no cover - tifffile ships with scikit-image
        return None
    try:
        tif = tifffile.TiffFile(p)
    except Exception as exc:  # tifffile raises its own and generic errors for broken files
        raise InputError(f"cannot read TIFF image {p}: {_first_line(exc)}") from None
    page = tif.pages[0]
    if np.dtype(page.dtype).itemsize == 1 and np.dtype(page.dtype).kind in "ub":
        tif.close()
        return None  # 8-bit: Pillow reads every photometric, compression and palette
    return page


def _tiff_orientation(page: Any) -> int:
    tag = page.tags.get(ORIENTATION_TAG)
    return int(tag.value) if tag is not None else 1


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of the upright image (EXIF orientation applied), from the header only."""
    p = check_image_path(path)
    if _is_tiff(p):
        page = _tiff_page(p)
        if page is not None:
            try:
                h, w, o = int(page.imagelength), int(page.imagewidth), _tiff_orientation(page)
            finally:
                page.parent.close()
            return (w, h) if o in (5, 6, 7, 8) else (h, w)
    with _open(p) as im:
        w, h = im.size
        o = _orientation(im, loaded=False)
    return (w, h) if o in (5, 6, 7, 8) else (h, w)


def _orientation(im: Image.Image, *, loaded: bool) -> int:
    """The EXIF orientation (1-8); 1 when absent or broken.

    Pillow finds a PNG's ``eXIf`` chunk after the pixel data only by decoding
    them, so before ``im.load()`` only a chunk ahead of the data is read.
    """
    if not loaded and im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        o = int(im.getexif().get(ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block: the pixels are still there, upright as stored
        return 1
    return o if 1 <= o <= 8 else 1


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W, C) array: the upright picture.

    The same transposition as ``PIL.ImageOps.exif_transpose``: 2 mirror, 3 rotate
    180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90
    counter-clockwise.
    """
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.transpose(1, 0, 2)
    elif orientation == 6:
        a = np.rot90(a, k=-1)
    elif orientation == 7:
        a = a[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:
        a = np.rot90(a, k=1)
    return np.ascontiguousarray(a)


# -- decoding -------------------------------------------------------------------------------------------
def decode_image(path: str | Path) -> np.ndarray:
    """The upright image as a float32 array (H, W, 3) in [0, 1] (rules: module docstring)."""
    p = check_image_path(path)
    if _is_tiff(p):
        page = _tiff_page(p)
        if page is not None:
            try:
                return _decode_tiff(page, p)
            finally:
                page.parent.close()
    with _open(p) as im:
        w, h = im.size
        _check_decode_memory(p, h, w)
        rawmode = _rawmode(im)  # before loading, which forgets the tiles
        wide = _png16(p) if im.mode in ("RGB", "RGBA") and rawmode.endswith(";16B") else None
        if wide is not None:
            return orient(_to_rgb(wide, p), _orientation(im, loaded=False))
        try:
            im.load()
            a = _pil_array(im, rawmode, p)
        except InputError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InputError(f"cannot read image {p}: {_first_line(exc)}") from None
        o = _orientation(im, loaded=True)
    return orient(_to_rgb(a, p), o)


def decode_pil(im: Image.Image, *, name: str = "<PIL image>") -> np.ndarray:
    """A PIL image in memory as a float32 array (H, W, 3) in [0, 1], by the rules of :func:`decode_image`
    (gray repeated, alpha composited over white, 16-bit samples scaled by 65535)."""
    p = Path(name)
    return _to_rgb(_pil_array(im, "", p), p)


def _rawmode(im: Image.Image) -> str:
    """The file's sample layout as Pillow's decoder names it (e.g. ``I;16B``, ``RGB;16B``), before loading."""
    tiles = getattr(im, "tile", None)  # an ImageFile attribute, not on every Image
    if not tiles:
        return ""
    args = tiles[0].args
    return str(args if isinstance(args, str) else args[0] if args else "")


def _check_decode_memory(p: Path, h: int, w: int) -> None:
    check_fits(float(h) * w * DECODE_BYTES_PER_PIXEL, what=f"decoding image {p} ({h}x{w} pixels, HxW)")


def _check_bomb(p: Path, h: int, w: int) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and h * w > limit:
        raise InputError(
            f"image {p} is larger than the decompression-bomb limit of {limit} pixels "
            f"(PIL.Image.MAX_IMAGE_PIXELS); refused"
        )


def _pil_array(im: Image.Image, rawmode: str, p: Path) -> np.ndarray:
    """(H, W, C) float array in [0, 1] with C in (1, 2, 3, 4) = gray, gray+alpha, RGB, RGB+alpha."""
    mode = im.mode
    if mode.startswith("I;16"):
        return _scale_int(np.asarray(im), p)[..., None]
    if mode == "I":
        return _scale_int(_pil_int32(im, rawmode, p), p)[..., None]
    if mode == "F":
        return _check_float(np.asarray(im, dtype=np.float32), p)[..., None]
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.float32)[..., None] / 255.0
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    elif mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX: Pillow's conversion
    a = np.asarray(im, dtype=np.float32) / 255.0
    return a[..., None] if a.ndim == 2 else a


def _pil_int32(im: Image.Image, rawmode: str, p: Path) -> np.ndarray:
    """Pillow's 32-bit integer mode ``I`` with the file's real sample type restored."""
    a = np.asarray(im)
    if "16" in rawmode:
        return a.astype(np.int16 if rawmode.endswith("S") else np.uint16)
    if rawmode in ("I;32N", "I;32", "I;32L", "I;32B"):  # unsigned 32-bit samples stored in Pillow's int32
        return a.astype(np.int32).view(np.uint32)
    if rawmode in ("I", "I;32S", "I;32NS", "I;32LS", "I;32BS"):
        return a.astype(np.int32)
    raise InputError(f"cannot tell the bit depth of the 32-bit integer image {p} (raw mode {rawmode!r})")


def _scale_int(a: np.ndarray, p: Path) -> np.ndarray:
    """Integers to [0, 1] by the largest value of their type (signed: 2^(bits-1) - 1)."""
    info = np.iinfo(a.dtype)
    if info.min < 0 and a.size and int(a.min()) < 0:
        raise InputError(f"image {p} has negative {a.dtype} values (min {int(a.min())}); intensities must be >= 0")
    return (a.astype(np.float64) / float(info.max)).astype(np.float32)


def _check_float(a: np.ndarray, p: Path) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise InputError(f"floating-point image {p} contains NaN or Inf values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"floating-point image {p} has values in [{lo:.4g}, {hi:.4g}]; float images must hold "
            f"intensities in [0, 1] (rescale the file; nothing is clipped)"
        )
    return a.astype(np.float32)


def _png16(p: Path) -> np.ndarray | None:
    """A 16-bit RGB(A) PNG at its full depth (OpenCV), or None when OpenCV is absent."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - OpenCV comes with pyiqa
        return None
    a = cv2.imdecode(np.fromfile(p, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if a is None or a.dtype != np.uint16 or a.ndim != 3 or a.shape[2] not in (3, 4):
        return None
    a = a[..., [2, 1, 0, 3][: a.shape[2]]]  # BGR(A) -> RGB(A)
    return _scale_int(a, p)


def _decode_tiff(page: Any, p: Path) -> np.ndarray:
    """A TIFF with more than 8 bits per sample (tifffile): gray or RGB, with or without alpha."""
    h, w = int(page.imagelength), int(page.imagewidth)
    _check_bomb(p, h, w)
    _check_decode_memory(p, h, w)
    photometric = int(page.photometric)
    if photometric not in (0, 1, 2):  # MINISWHITE, MINISBLACK, RGB
        raise InputError(
            f"TIFF image {p}: {np.dtype(page.dtype)} samples with photometric interpretation {photometric} "
            f"are not supported (use gray or RGB)"
        )
    try:
        a = page.asarray()
    except Exception as exc:
        raise InputError(f"cannot read TIFF image {p}: {_first_line(exc)}") from None
    axes = str(page.axes)
    if axes.startswith("S") and a.ndim == 3:
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise InputError(f"TIFF image {p} has an unsupported layout {axes!r} with shape {a.shape}")
    a = a[..., :4] if a.shape[2] >= 3 else a[..., :2]
    if a.dtype.kind == "f":
        f = _check_float(a, p)
    elif a.dtype.kind in "ui":
        f = _scale_int(a, p)
    elif a.dtype.kind == "b":
        f = a.astype(np.float32)
    else:
        raise InputError(f"TIFF image {p} has unsupported samples of type {a.dtype}")
    if photometric == 0:  # MINISWHITE: 0 is white
        f = f.copy()
        f[..., :1] = 1.0 - f[..., :1]
    return orient(_to_rgb(f, p), _tiff_orientation(page))


def _to_rgb(a: np.ndarray, p: Path) -> np.ndarray:
    """(H, W, 1|2|3|4) in [0, 1] to (H, W, 3): gray repeated, alpha composited over white."""
    c = a.shape[2]
    if c in (2, 4):
        alpha = a[..., -1:]
        a = a[..., :-1] * alpha + (1.0 - alpha)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.shape[2] != 3:
        raise InputError(f"image {p} has {c} channels; expected gray, RGB, or either with alpha")
    return np.ascontiguousarray(a, dtype=np.float32)

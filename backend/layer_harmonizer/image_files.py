"""Reading and writing image files without losing precision.

8-bit and 16-bit PNG/TIFF stay at their depth, 32-bit float TIFF stays float; an alpha channel
on the composite is carried through to the output untouched. Files are written atomically and
never over an input. The size a file declares is checked against the pixel limit before any
pixel is decoded; a file that cannot be read or written is a :class:`FileError` naming it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from layer_harmonizer.arrays import check_pixel_count, convert
from layer_harmonizer.errors import FileError, InputError
from layer_harmonizer.fileutil import atomic_open
from layer_harmonizer.imageheader import HeaderError, declared_size

log = logging.getLogger(__name__)

READ_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")
EIGHT_BIT_ONLY = (".jpg", ".jpeg", ".webp", ".bmp")


def probe_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` as the file at ``path`` declares them, without decoding it.

    Raises what :func:`read_image` raises for a missing or unreadable file, a format it does
    not read, or a size over ``max_pixels``; a file that passes can still be damaged further on.
    """
    target = Path(path)
    try:
        with _open_image(target) as fh:
            return _check_header(fh, target, max_pixels)
    except OSError as exc:
        raise FileError.from_os_error(exc, target, "read") from None


def _imread(path: Path, max_pixels: int | None) -> np.ndarray:
    try:
        with _open_image(path) as fh:
            _check_header(fh, path, max_pixels)  # before any pixel is decoded
            fh.seek(0)
            data = np.fromfile(fh, dtype=np.uint8)
    except OSError as exc:
        raise FileError.from_os_error(exc, path, "read") from None
    # JPEGs go through IMREAD_COLOR so their EXIF orientation is honoured; others keep depth/alpha.
    flags = cv2.IMREAD_COLOR if path.suffix.lower() in (".jpg", ".jpeg") else cv2.IMREAD_UNCHANGED
    arr = cv2.imdecode(data, flags) if data.size else None
    if arr is None:
        raise InputError(f"{path}: not a readable image (supported: {', '.join(READ_EXTENSIONS)})")
    if arr.dtype not in (np.uint8, np.uint16, np.float32):
        raise InputError(f"{path}: pixel type {arr.dtype} is not supported (8/16-bit or float32)")
    return arr


def _open_image(path: Path) -> BinaryIO:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return open(path, "rb")


def _check_header(fh: BinaryIO, path: Path, max_pixels: int | None) -> tuple[int, int]:
    """The declared ``(width, height)``; refuses an unknown format or a size over the limit."""
    try:
        kind, width, height = declared_size(fh)
    except HeaderError as exc:
        raise InputError(
            f"{path}: not a readable image ({exc}; supported: {', '.join(READ_EXTENSIONS)})"
        ) from None
    check_pixel_count(width, height, max_pixels=max_pixels, what=f"{path} ({kind})")
    return width, height


def read_image(
    path: str | os.PathLike[str], *, max_pixels: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an image file as ``(rgb (H, W, 3), alpha (H, W) or None)`` in the file's dtype.

    A file declaring more than ``max_pixels`` pixels (default: $HARMONIZE_MAX_PIXELS or
    :data:`layer_harmonizer.arrays.DEFAULT_MAX_PIXELS`) is refused before it is decoded.
    """
    arr = _imread(Path(path), max_pixels)
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB), None
    if arr.shape[2] == 4:
        rgb, alpha = np.empty((*arr.shape[:2], 3), arr.dtype), np.empty(arr.shape[:2], arr.dtype)
        cv2.mixChannels([arr], [rgb, alpha], [2, 0, 1, 1, 0, 2, 3, 3])
        return rgb, alpha
    if arr.shape[2] == 3:  # the decoder's array is ours: reorder it in place, no second copy
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB, dst=arr), None
    raise InputError(f"{path}: {arr.shape[2]}-channel images are not supported")


def read_mask(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> np.ndarray:
    """Read a mask file as ``(H, W)`` in the file's dtype (``max_pixels`` as for
    :func:`read_image`).

    Greyscale files are used as they are; for colour files the brightest colour channel of each
    pixel counts (so a white, red or any coloured object on black works); an alpha channel is
    ignored unless the colour channels are all the same value everywhere.
    """
    arr = _imread(Path(path), max_pixels)
    if arr.ndim == 2:
        return arr
    colour = arr[..., :3]
    if arr.shape[2] == 4 and colour.min() == colour.max():
        return np.ascontiguousarray(arr[..., 3])
    return np.ascontiguousarray(colour.max(axis=2))


def write_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    *,
    in_place: bool = False,
) -> Path:
    """Write ``rgb`` ``(H, W, 3)`` (and ``alpha`` ``(H, W)``) atomically, in the format the
    extension names.

    JPEG, WebP and BMP hold 8 bits only: deeper images are converted with a warning. PNG holds
    up to 16 bits: float images are written as 16-bit PNG. TIFF keeps float32.
    ``in_place=True`` lets the writer reorder the channels of a C-contiguous ``rgb`` in place
    instead of copying it (``rgb`` holds BGR afterwards): for a caller that is done with it.
    """
    target = Path(path)
    ext = target.suffix.lower()
    if ext not in READ_EXTENSIONS:
        raise InputError(f"{target}: unknown output format {ext!r}; use one of {READ_EXTENSIONS}")
    out = _file_order(rgb, None if ext in (".jpg", ".jpeg", ".bmp") else alpha, in_place)
    if ext in EIGHT_BIT_ONLY and out.dtype != np.uint8:
        log.warning("%s holds 8 bits per channel only: converting from %s", target.name, out.dtype)
        out = convert(out, np.uint8)
    elif ext == ".png" and out.dtype == np.float32:
        out = convert(out, np.uint16)
    ok, buf = cv2.imencode(ext, out)
    del out
    if not ok:
        raise InputError(f"{target}: OpenCV could not encode a {rgb.dtype} image as {ext}")
    try:
        with atomic_open(target) as fh:
            fh.write(memoryview(buf))
    except OSError as exc:  # permissions, a full disk: the old file (if any) is left as it was
        raise FileError.from_os_error(exc, target, "write") from None
    return target


def _file_order(rgb: np.ndarray, alpha: np.ndarray | None, in_place: bool) -> np.ndarray:
    """BGR or BGRA (alpha converted to rgb's dtype), as OpenCV's encoders take it."""
    if alpha is not None:
        out = np.empty((*rgb.shape[:2], 4), rgb.dtype)
        cv2.mixChannels([rgb, convert(alpha, rgb.dtype)], [out], [0, 2, 1, 1, 2, 0, 3, 3])
        return out
    if in_place and rgb.flags.c_contiguous and rgb.flags.writeable:
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR, dst=rgb)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)

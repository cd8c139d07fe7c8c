"""Reading and writing image files without losing precision.

8-bit and 16-bit PNG/TIFF stay at their depth, 32-bit float TIFF stays float; an alpha channel
on the composite is carried through to the output untouched. Files are written atomically and
never over an input.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from backend.errors import InputError
from backend.fileutil import atomic_open
from backend.images import from_unit_float, to_unit_float

log = logging.getLogger(__name__)

READ_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")
EIGHT_BIT_ONLY = (".jpg", ".jpeg", ".webp", ".bmp")


def _imread(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    data = np.fromfile(path, dtype=np.uint8)  # works for non-ASCII paths on every OS
    # JPEGs go through IMREAD_COLOR so their EXIF orientation is honoured; others keep depth/alpha.
    flags = cv2.IMREAD_COLOR if path.suffix.lower() in (".jpg", ".jpeg") else cv2.IMREAD_UNCHANGED
    arr = cv2.imdecode(data, flags) if data.size else None
    if arr is None:
        raise InputError(f"{path}: not a readable image (supported: {', '.join(READ_EXTENSIONS)})")
    if arr.dtype not in (np.uint8, np.uint16, np.float32):
        raise InputError(f"{path}: pixel type {arr.dtype} is not supported (8/16-bit or float32)")
    return arr


def read_image(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an image file as ``(rgb (H, W, 3), alpha (H, W) or None)`` in the file's dtype."""
    arr = _imread(Path(path))
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2), None
    if arr.shape[2] == 4:
        return np.ascontiguousarray(arr[..., 2::-1]), np.ascontiguousarray(arr[..., 3])
    if arr.shape[2] == 3:
        return np.ascontiguousarray(arr[..., ::-1]), None
    raise InputError(f"{path}: {arr.shape[2]}-channel images are not supported")


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a mask file as ``(H, W)`` in the file's dtype.

    Greyscale files are used as they are; for colour files the brightest colour channel of each
    pixel counts (so a white, red or any coloured object on black works); an alpha channel is
    ignored unless the colour channels are all the same value everywhere.
    """
    arr = _imread(Path(path))
    if arr.ndim == 2:
        return arr
    colour = arr[..., :3]
    if arr.shape[2] == 4 and colour.min() == colour.max():
        return np.ascontiguousarray(arr[..., 3])
    return np.ascontiguousarray(colour.max(axis=2))


def write_image(
    path: str | os.PathLike[str], rgb: np.ndarray, alpha: np.ndarray | None = None
) -> Path:
    """Write ``rgb`` (and ``alpha``) atomically, in the format the extension names.

    JPEG, WebP and BMP hold 8 bits only: deeper images are converted with a warning. PNG holds
    up to 16 bits: float images are written as 16-bit PNG. TIFF keeps float32.
    """
    target = Path(path)
    ext = target.suffix.lower()
    if ext not in READ_EXTENSIONS:
        raise InputError(f"{target}: unknown output format {ext!r}; use one of {READ_EXTENSIONS}")
    channels = [rgb[..., 2], rgb[..., 1], rgb[..., 0]]
    if alpha is not None and ext not in (".jpg", ".jpeg", ".bmp"):
        channels.append(
            alpha.astype(rgb.dtype) if alpha.dtype == rgb.dtype else _convert(alpha, rgb.dtype)
        )
    out = np.stack(channels, axis=2)
    if ext in EIGHT_BIT_ONLY and out.dtype != np.uint8:
        log.warning("%s holds 8 bits per channel only: converting from %s", target.name, out.dtype)
        out = _convert(out, np.dtype(np.uint8))
    elif ext == ".png" and out.dtype == np.float32:
        out = _convert(out, np.dtype(np.uint16))
    ok, buf = cv2.imencode(ext, out)
    if not ok:
        raise InputError(f"{target}: OpenCV could not encode a {out.dtype} image as {ext}")
    with atomic_open(target) as fh:
        fh.write(buf.tobytes())
    return target


def _convert(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return from_unit_float(to_unit_float(arr), np.dtype(dtype))

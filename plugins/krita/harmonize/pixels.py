"""Pure-Python pixel byte shuffling for Krita's BGRA buffers (standard library only).

Krita's ``Node.pixelData`` returns interleaved **B, G, R, A** channels for RGBA layers at every
depth (U8: 1 byte, U16: 2 bytes, F16: 2 bytes, F32: 4 bytes per channel, native byte order).
They travel to the daemon in that order (protocol 2.1 declares it), so the plug-in only reads
the alpha here (:func:`channel`, :func:`alpha_to_u8`); the swaps serve scripts and tests.
These helpers work on whole channels with :class:`array.array` extended slices, so they run at
C speed (no per-pixel Python loop). Depth names are Krita's; dtype names are the wire's
(``uint8``, ``uint16``, ``float32``; see :data:`layer_harmonizer.wire.protocol.DTYPES`).
"""

from __future__ import annotations

import sys
from array import array

DEPTH_DTYPES: dict[str, str] = {"U8": "uint8", "U16": "uint16", "F32": "float32"}
"""Krita colour depths sent to the daemon as they are."""
TYPECODES: dict[str, str] = {"uint8": "B", "uint16": "H", "float32": "f"}
ITEMSIZE: dict[str, int] = {"uint8": 1, "uint16": 2, "float32": 4}
OPAQUE: dict[str, float] = {"uint8": 255, "uint16": 65535, "float32": 1.0}


def _check_little_endian() -> None:
    if sys.byteorder != "little":
        raise RuntimeError("big-endian hosts are not supported (pixel frames are little-endian)")


def as_array(data: bytes | bytearray | memoryview, dtype: str) -> array:
    """Copy raw bytes into an ``array`` of ``dtype`` items (length checked)."""
    _check_little_endian()
    out = array(TYPECODES[dtype])
    raw = bytes(data)
    if len(raw) % out.itemsize:
        raise ValueError(f"{len(raw)} bytes is not a whole number of {dtype} items")
    out.frombytes(raw)
    return out


def bgra_to_rgba(data: bytes | bytearray | memoryview, dtype: str) -> bytes:
    """Krita BGRA ``(H, W, 4)`` bytes -> RGBA bytes of the same dtype (swaps B and R)."""
    src = as_array(data, dtype)
    if len(src) % 4:
        raise ValueError(f"BGRA data has {len(src)} {dtype} items, not a multiple of 4")
    out = array(src.typecode, src)
    out[0::4] = src[2::4]
    out[2::4] = src[0::4]
    return out.tobytes()


rgba_to_bgra = bgra_to_rgba
"""The swap is its own inverse: RGBA -> BGRA."""


def channel(data: bytes | bytearray | memoryview, dtype: str, index: int, count: int = 4) -> bytes:
    """One channel (``index`` of ``count`` interleaved) as ``(H, W)`` bytes of ``dtype``."""
    return as_array(data, dtype)[index::count].tobytes()


def alpha_to_u8(alpha: bytes, dtype: str) -> bytes:
    """An ``(H, W)`` alpha plane of ``dtype`` -> uint8 (rounded; floats clipped to [0, 1])."""
    if dtype == "uint8":
        return bytes(alpha)
    if dtype == "uint16":  # the high byte: within 1 level of round(x * 255 / 65535), C speed
        return bytes(alpha)[1::2]
    return bytes(min(255, max(0, round(v * 255.0))) for v in as_array(alpha, dtype))


def paste(
    dest: bytearray,
    dest_width: int,
    patch: bytes,
    rect: tuple[int, int, int, int],
    pixel_bytes: int,
) -> None:
    """Copy ``patch`` (``h`` rows of ``w`` pixels) into ``dest`` at ``(x, y)``, row by row.

    Args:
        dest: interleaved pixels of a ``dest_width``-wide image, modified in place.
        rect: ``(x, y, w, h)`` of the patch inside ``dest``.
        pixel_bytes: bytes per pixel (channels x item size).
    """
    x, y, w, h = rect
    if x < 0 or y < 0 or x + w > dest_width or len(patch) != w * h * pixel_bytes:
        raise ValueError(f"patch {rect} does not fit a {dest_width}-pixel-wide image")
    rows = len(dest) // (dest_width * pixel_bytes)
    if y + h > rows:
        raise ValueError(f"patch {rect} does not fit {rows} rows")
    row = w * pixel_bytes
    stride = dest_width * pixel_bytes
    for r in range(h):
        start = (y + r) * stride + x * pixel_bytes
        dest[start : start + row] = patch[r * row : (r + 1) * row]

"""The size an image file declares, read from its header without decoding any pixels.

Covers the formats :mod:`.image_files` reads (PNG, JPEG, TIFF and BigTIFF, WebP, BMP), so a
file that declares more pixels than allowed is refused before a decoder allocates memory for
it. Formats are recognised by their leading bytes, as the decoders do, not by the extension.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""Start-of-frame markers (baseline, progressive, lossless, arithmetic); C4/C8/CC are not."""
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_MAX_JPEG_SEGMENTS = 10_000
_MAX_TIFF_ENTRIES = 65_535
_SCAN_CHUNK = 1 << 16


class HeaderError(ValueError):
    """The file is not one of the known formats, or its header is damaged."""


def declared_size(fh: BinaryIO) -> tuple[str, int, int]:
    """``(format, width, height)`` as the header of the open binary file ``fh`` declares them.

    Reads a few bytes from the current position on (for JPEG and TIFF it seeks to the frame
    header or the first image directory). Raises :class:`HeaderError` for an unknown format, a
    damaged header or a declared size of zero.
    """
    start = fh.tell()
    head = fh.read(32)
    for magic, name, reader in _FORMATS:
        if head.startswith(magic):
            fh.seek(start)
            width, height = reader(fh)
            if width <= 0 or height <= 0:
                raise HeaderError(f"{name} header declares an empty image ({width} x {height})")
            return name, width, height
    raise HeaderError("unknown image format")


def _read(fh: BinaryIO, size: int, what: str) -> bytes:
    data = fh.read(size)
    if len(data) != size:
        raise HeaderError(f"{what} header is cut short")
    return data


def _png(fh: BinaryIO) -> tuple[int, int]:
    """Signature (8 bytes), then the IHDR chunk: length, type, width, height (big-endian)."""
    data = _read(fh, 24, "PNG")
    if data[12:16] != b"IHDR":
        raise HeaderError("PNG header is damaged (the first chunk is not IHDR)")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg(fh: BinaryIO) -> tuple[int, int]:
    """Walk the marker segments after SOI up to the first start-of-frame segment."""
    fh.seek(2, 1)
    for _ in range(_MAX_JPEG_SEGMENTS):
        marker = _next_jpeg_marker(fh)
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            break
        (length,) = struct.unpack(">H", _read(fh, 2, "JPEG"))
        if length < 2:
            raise HeaderError("JPEG header is damaged (a segment shorter than its length field)")
        if marker in _JPEG_SOF:
            _, height, width = struct.unpack(">BHH", _read(fh, 5, "JPEG"))
            return width, height
        fh.seek(length - 2, 1)
    raise HeaderError("JPEG header is damaged (no frame header before the image data)")


def _next_jpeg_marker(fh: BinaryIO) -> int:
    """The code of the next marker: skips stray bytes (as libjpeg does) and 0xFF fill bytes."""
    byte = _read(fh, 1, "JPEG")
    while byte != b"\xff":
        chunk = fh.read(_SCAN_CHUNK)
        found = chunk.find(b"\xff")
        if found < 0:
            if len(chunk) < _SCAN_CHUNK:
                raise HeaderError("JPEG header is cut short")
            continue
        fh.seek(found + 1 - len(chunk), 1)
        byte = b"\xff"
    while byte == b"\xff":
        byte = _read(fh, 1, "JPEG")
    return byte[0]


def _tiff(fh: BinaryIO) -> tuple[int, int]:
    """Image width (tag 256) and length (257) of the first image directory."""
    head = _read(fh, 16, "TIFF")
    order = "<" if head[:2] == b"II" else ">"
    (version,) = struct.unpack(order + "H", head[2:4])
    if version == 43:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
        (offset,) = struct.unpack(order + "Q", head[8:16])
        count_fmt, entry_size, value_at = "Q", 20, 12
    else:
        (offset,) = struct.unpack(order + "I", head[4:8])
        count_fmt, entry_size, value_at = "H", 12, 8
    fh.seek(offset - 16, 1)
    count_size = struct.calcsize(count_fmt)
    (count,) = struct.unpack(order + count_fmt, _read(fh, count_size, "TIFF"))
    if count > _MAX_TIFF_ENTRIES:
        raise HeaderError(f"TIFF header is damaged ({count} directory entries)")
    table = _read(fh, count * entry_size, "TIFF")
    found: dict[int, int] = {}
    for i in range(0, len(table), entry_size):
        tag, kind = struct.unpack(order + "HH", table[i : i + 4])
        if tag in (256, 257) and kind in _TIFF_INTEGER:
            value = table[i + value_at : i + value_at + struct.calcsize(_TIFF_INTEGER[kind])]
            (found[tag],) = struct.unpack(order + _TIFF_INTEGER[kind], value)
    if 256 not in found or 257 not in found:
        raise HeaderError("TIFF header is damaged (no image width or length)")
    return found[256], found[257]


_TIFF_INTEGER = {3: "H", 4: "I", 16: "Q"}
"""TIFF field types that can hold a size: SHORT, LONG, LONG8 (BigTIFF)."""


def _webp(fh: BinaryIO) -> tuple[int, int]:
    """RIFF header, then the canvas size of a VP8X, VP8L (lossless) or VP8 (lossy) chunk."""
    data = _read(fh, 30, "WebP")
    kind, body = data[12:16], data[20:]
    if data[8:12] != b"WEBP":
        raise HeaderError("unknown image format (a RIFF file that is not WebP)")
    if kind == b"VP8X":
        return 1 + int.from_bytes(body[4:7], "little"), 1 + int.from_bytes(body[7:10], "little")
    if kind == b"VP8L" and body[0] == 0x2F:
        bits = int.from_bytes(body[1:5], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if kind == b"VP8 " and body[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", body[6:10])
        return width & 0x3FFF, height & 0x3FFF
    raise HeaderError(f"WebP header is damaged (chunk {kind!r})")


def _bmp(fh: BinaryIO) -> tuple[int, int]:
    """File header (14 bytes), then the size of the info header and the image size."""
    data = _read(fh, 26, "BMP")
    (info_size,) = struct.unpack("<I", data[14:18])
    if info_size == 12:  # OS/2 1.x BITMAPCOREHEADER: unsigned 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
        return width, height
    if info_size < 16:
        raise HeaderError(f"BMP header is damaged (info header of {info_size} bytes)")
    width, height = struct.unpack("<ii", data[18:26])
    return width, abs(height)  # a negative height means rows stored top-down


_FORMATS = (
    (b"\x89PNG\r\n\x1a\n", "PNG", _png),
    (b"\xff\xd8", "JPEG", _jpeg),
    (b"II*\x00", "TIFF", _tiff),
    (b"MM\x00*", "TIFF", _tiff),
    (b"II+\x00", "TIFF", _tiff),
    (b"MM\x00+", "TIFF", _tiff),
    (b"RIFF", "WebP", _webp),
    (b"BM", "BMP", _bmp),
)

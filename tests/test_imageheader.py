"""layer_harmonizer.imageheader: the size a file declares, read without decoding it."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest

from layer_harmonizer.imageheader import HeaderError, declared_size

W, H = 37, 23


def _encoded(ext: str, image: np.ndarray, params: tuple[int, ...] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


def _size(data: bytes) -> tuple[str, int, int]:
    return declared_size(io.BytesIO(data))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` 8-bit grey, with one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + _png_chunk(b"IEND", b"")
    )


RGB8 = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("ext", "image", "params", "kind"),
    [
        (".png", RGB8, (), "PNG"),
        (".png", (RGB8.astype(np.uint16) * 257), (), "PNG"),
        (".png", np.dstack([RGB8, RGB8[..., 0]]), (), "PNG"),
        (".jpg", RGB8, (), "JPEG"),
        (".jpg", RGB8, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), "JPEG"),
        (".jpg", RGB8[..., 0], (), "JPEG"),
        (".tif", RGB8.astype(np.uint16), (), "TIFF"),
        (".tif", RGB8.astype(np.float32) / 255, (), "TIFF"),
        (".webp", RGB8, (cv2.IMWRITE_WEBP_QUALITY, 80), "WebP"),
        (".webp", RGB8, (cv2.IMWRITE_WEBP_QUALITY, 101), "WebP"),  # lossless
        (".bmp", RGB8, (), "BMP"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_size_of_files_opencv_writes(
    ext: str, image: np.ndarray, params: tuple[int, ...], kind: str
) -> None:
    data = _encoded(ext, image, params)
    assert _size(data) == (kind, W, H)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape[:2] == (H, W)


def test_jpeg_after_a_large_segment_and_stray_bytes() -> None:
    data = _encoded(".jpg", RGB8)
    app1 = b"\xff\xe1" + struct.pack(">H", 60_002) + b"E" * 60_000
    stray = b"\x00\x12\x34"  # libjpeg skips these with a warning
    assert _size(data[:2] + app1 + stray + data[2:]) == ("JPEG", W, H)


def test_big_endian_tiff_and_bigtiff_headers() -> None:
    entries = struct.pack(">HHII", 256, 4, 1, 70_000) + struct.pack(">HHIHH", 257, 3, 1, 9, 0)
    classic = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 2) + entries
    assert _size(classic) == ("TIFF", 70_000, 9)
    big_entries = struct.pack("<HHQQ", 257, 16, 1, 3) + struct.pack("<HHQQ", 256, 4, 1, 5)
    bigtiff = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", 2) + big_entries
    assert _size(bigtiff) == ("TIFF", 5, 3)


def test_webp_extended_and_bmp_top_down_headers() -> None:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0" * 4 + (16382).to_bytes(3, "little") * 2
    assert _size(b"RIFF" + struct.pack("<I", 22) + b"WEBP" + vp8x) == ("WebP", 16383, 16383)
    bmp = bytearray(_encoded(".bmp", RGB8))
    bmp[22:26] = struct.pack("<i", -H)
    assert _size(bytes(bmp)) == ("BMP", W, H)


def test_declared_size_is_read_without_the_pixels() -> None:
    assert _size(png_declaring(32768, 32768)) == ("PNG", 32768, 32768)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "unknown image format"),
        (b"GIF89a" + b"\0" * 40, "unknown image format"),
        (b"RIFF\0\0\0\0WAVEfmt " + b"\0" * 20, "not WebP"),
        (png_declaring(5, 5)[:20], "cut short"),
        (png_declaring(0, 5), "empty image"),
        (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"tEXt", b"a" * 20), "not IHDR"),
        (b"\xff\xd8\xff\xda\x00\x08" + b"\0" * 30, "no frame header"),
        (b"\xff\xd8\xff\xe0\x00\x01" + b"\0" * 30, "shorter than its length"),
        (_encoded(".jpg", RGB8)[:100], "cut short"),  # before its frame header
        (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 0) + b"\0" * 8, "no image width"),
        (b"II*\x00" + struct.pack("<I", 10**6) + b"\0" * 12, "cut short"),
        (b"BM" + b"\0" * 12 + struct.pack("<I", 8) + b"\0" * 20, "info header of 8 bytes"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_unknown_or_damaged_headers_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(HeaderError, match=reason):
        _size(data)

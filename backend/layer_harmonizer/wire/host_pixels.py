"""What a host sends, in pixels: the region around the layer (:func:`context_box`), rows cut
out of a host's buffer (:func:`crop_rows`), and the wire format per host precision
(:func:`wire_format`). Re-exported by :mod:`.host_side`, the plug-ins' one entry point.

Standard library only, like all of :mod:`layer_harmonizer.wire`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import messages as M
from . import protocol as P
from .host_messages import PluginError

RESULT_SUFFIX = " (harmonized)"


# ---- geometry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle: top-left ``(x, y)``, size ``w x h`` (``w, h >= 0``)."""

    x: int
    y: int
    w: int
    h: int

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    @property
    def empty(self) -> bool:
        return self.w <= 0 or self.h <= 0

    def intersect(self, other: Box) -> Box:
        """The overlap (``w`` or ``h`` 0 when there is none)."""
        x0, y0 = max(self.x, other.x), max(self.y, other.y)
        x1, y1 = min(self.right, other.right), min(self.bottom, other.bottom)
        return Box(x0, y0, max(0, x1 - x0), max(0, y1 - y0))

    def shift(self, dx: int, dy: int) -> Box:
        return Box(self.x + dx, self.y + dy, self.w, self.h)


def context_box(
    layer: Box,
    image_width: int,
    image_height: int,
    margin: float = M.DEFAULT_CROP_MARGIN,
    min_margin: int = M.MIN_CROP_MARGIN_PX,
) -> Box:
    """The region sent to the daemon: the layer's bounds grown by a context margin, clamped to
    the image.

    The margin is ``max(min_margin, ceil(margin * longer side of the layer))``, which is at
    least the margin the daemon puts around the mask's bounding box (the mask lies inside the
    layer), so the daemon's crop never has to be clamped by this region except at the image
    border. Raises :class:`PluginError` when the layer lies outside the image.
    """
    pad = max(min_margin, math.ceil(margin * max(layer.w, layer.h)))
    grown = Box(layer.x - pad, layer.y - pad, layer.w + 2 * pad, layer.h + 2 * pad)
    region = grown.intersect(Box(0, 0, image_width, image_height))
    if region.empty or layer.intersect(region).empty:
        raise PluginError(
            "The layer lies entirely outside the image canvas: move it onto the canvas "
            "(or use Image ▸ Fit Canvas to Layers) and run Harmonize Layer again."
        )
    return region


def crop_rows(data: bytes | memoryview, width: int, pixel_bytes: int, box: Box) -> bytes:
    """Cut ``box`` out of a row-major pixel buffer ``width`` pixels wide.

    Args:
        data: ``height x width x pixel_bytes`` bytes, rows top to bottom.
        width: pixels per row of ``data``.
        pixel_bytes: bytes per pixel (channels x bytes per channel).
        box: the rectangle in ``data``'s own coordinates; must lie inside it.
    """
    view = memoryview(data).cast("B")
    height = view.nbytes // (width * pixel_bytes) if width else 0
    if box.x < 0 or box.y < 0 or box.right > width or box.bottom > height or box.empty:
        raise ValueError(f"{box} is not inside a {width} x {height} buffer")
    stride, row = width * pixel_bytes, box.w * pixel_bytes
    if box.x == 0 and box.w == width:
        return view[box.y * stride : box.bottom * stride].tobytes()
    start = box.y * stride + box.x * pixel_bytes
    return b"".join(view[start + i * stride : start + i * stride + row] for i in range(box.h))


# ---- pixel formats ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WireFormat:
    """How pixels of one host precision travel: the wire ``dtype`` and the Babl type suffix.

    Pixels always travel as perceptual (sRGB-encoded) values, what the network was trained on:
    the host converts from and to the layer's own storage (linear or perceptual, any depth).
    """

    dtype: str  # "uint8" | "uint16" | "float32"
    babl_type: str  # "u8" | "u16" | "float"

    @property
    def channel_bytes(self) -> int:
        return P.DTYPES[self.dtype]

    @property
    def rgba(self) -> str:
        return f"R'G'B'A {self.babl_type}"

    @property
    def rgb(self) -> str:
        return f"R'G'B' {self.babl_type}"

    @property
    def alpha(self) -> str:
        return f"A {self.babl_type}"


def wire_format(precision: str) -> WireFormat:
    """The transport format for a host precision name such as GIMP's ``"U16_LINEAR"``.

    ``u8`` perceptual stays 8-bit; ``u8`` *linear* travels as 16-bit (8-bit linear would lose
    shadow levels on the way to sRGB and back); ``u16`` as 16-bit; ``u32``, ``half``, ``float``
    and ``double`` as float32. Raises :class:`ValueError` for an unknown name.
    """
    name = precision.upper()
    component, _, trc = name.partition("_")
    if component == "U8":
        return WireFormat("uint16", "u16") if trc == "LINEAR" else WireFormat("uint8", "u8")
    if component == "U16":
        return WireFormat("uint16", "u16")
    if component in ("U32", "HALF", "FLOAT", "DOUBLE"):
        return WireFormat("float32", "float")
    raise ValueError(f"unknown precision {precision!r}")


def result_name(name: str) -> str:
    """``"Bird"`` -> ``"Bird (harmonized)"``."""
    return f"{name}{RESULT_SUFFIX}"


# ---- a flat image -----------------------------------------------------------------------------

_NONZERO = bytes([0, *([1] * 255)])
_NOT_FULL = bytes([*([1] * 255), 0])


def has_unselected_part(alpha: bytes, selection: bytes) -> bool:
    """Whether some pixel of the layer (``alpha`` > 0) lies outside the selection
    (``selection`` < 255): on a flat image (nothing below the layer), what the selected region
    is matched against. Both are ``(H, W)`` uint8 planes of one size; C speed, no per-pixel
    Python loop."""
    if len(alpha) != len(selection):
        raise ValueError(f"alpha and selection differ: {len(alpha)} vs {len(selection)} bytes")
    present = int.from_bytes(bytes(alpha).translate(_NONZERO), "little")
    outside = int.from_bytes(bytes(selection).translate(_NOT_FULL), "little")
    return present & outside != 0


def is_covered(alpha: bytes, selection: bytes | None) -> bool:
    """Whether some pixel of the layer (``alpha`` > 0) is selected (``selection`` > 0, None =
    all): if not there is nothing to harmonize. ``(H, W)`` uint8 planes of one size, checked
    at C speed before the host reads the backdrop."""
    present = int.from_bytes(bytes(alpha).translate(_NONZERO), "little")
    if selection is None:
        return present != 0
    if len(alpha) != len(selection):
        raise ValueError(f"alpha and selection differ: {len(alpha)} vs {len(selection)} bytes")
    return present & int.from_bytes(bytes(selection).translate(_NONZERO), "little") != 0

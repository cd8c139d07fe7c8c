"""Layer maths of :func:`layer_harmonizer.layer.harmonize_layer`: compositing, the crop box
and the selection weight of a protocol 2.0 mask.

The network sees ``composite = rgb * m + backdrop * (1 - m)`` with ``m`` = layer alpha x
selection; the predicted LUTs are then applied to the layer's own RGB, so the result is a layer
again. numpy + OpenCV (no torch); the heavy per-pixel passes use OpenCV's SIMD, multi-threaded
loops because they run on every daemon request at full resolution.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from layer_harmonizer.arrays import convert, from_unit_float, to_unit_float


def composite(rgb: np.ndarray, mask: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    """``rgb * mask + backdrop * (1 - mask)`` per pixel, in float, returned in ``rgb.dtype``.

    Args:
        rgb: ``(H, W, 3)`` uint8/uint16/float32 (float in [0, 1]): the layer's colours.
        mask: ``(H, W)`` float32 in [0, 1]: how much of the layer covers the backdrop.
        backdrop: ``(H, W, 3)`` uint8/uint16/float32: what is visible below the layer.

    Returns:
        ``(H, W, 3)`` array of ``rgb.dtype`` (integers rounded to nearest).
    """
    backdrop = convert(backdrop, rgb.dtype)
    mask = np.asarray(mask, dtype=np.float32)
    if rgb.dtype != np.uint16:  # OpenCV blends uint8 and float32 in one pass
        return cv2.blendLinear(rgb, backdrop, mask, 1.0 - mask)
    base = to_unit_float(backdrop)
    out = np.subtract(to_unit_float(rgb), base)  # backdrop + m * (rgb - backdrop), in place
    out *= mask[..., None]
    out += base
    return from_unit_float(out, rgb.dtype)


def crop_box(
    mask: np.ndarray, margin: float | None, min_margin: int
) -> tuple[int, int, int, int] | None:
    """The padded bounding box ``(x0, y0, x1, y1)`` (exclusive end) of the mask's nonzero
    pixels (any dtype; the caller validates the values inside the box).

    The box grows on each side by ``max(min_margin, ceil(margin * longer side))`` pixels and is
    clamped to the mask. ``margin=None`` returns the whole mask. ``None`` if the mask is empty.
    """
    h, w = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    if margin is None:
        return 0, 0, w, h
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    pad = max(min_margin, math.ceil(margin * max(x1 - x0, y1 - y0)))
    return max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)


def selection_weight(mask: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """How strongly each layer pixel is recoloured: ``mask / alpha`` clipped to [0, 1].

    For protocol 2.0 hosts, which send alpha x selection as the mask: this recovers the
    selection: an anti-aliased edge of a
    fully selected layer is recoloured fully (its alpha already blends it in the host), and a
    feathered selection blends proportionally. Pixels with alpha 0 get weight 0.

    Args:
        mask: ``(H, W)`` float32 in [0, 1].
        alpha: ``(H, W)`` float32 in [0, 1], or None for an opaque layer.
    """
    if alpha is None:
        return mask
    weight = np.divide(mask, alpha, out=np.zeros_like(mask), where=alpha > 0)
    return np.minimum(weight, 1.0, out=weight)

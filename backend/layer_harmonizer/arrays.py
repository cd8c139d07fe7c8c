"""In-memory images and masks: validation, the pixel limit and dtype conversion.

Images are ``(H, W, 3)`` RGB arrays: uint8 (0..255), uint16 (0..65535) or float32 in [0, 1].
Masks are ``(H, W)`` arrays: uint8 (0..255), uint16 (0..65535), bool, or float in [0, 1];
soft values are kept (255 and 1.0 both mean "fully foreground").
"""

from __future__ import annotations

import math
import os

import numpy as np

from layer_harmonizer.errors import InputError
from layer_harmonizer.wire import discovery  # standard library only: shared names

IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
MASK_DTYPES = (*IMAGE_DTYPES, np.dtype(np.float64), np.dtype(np.bool_))
DEFAULT_MAX_PIXELS = discovery.DEFAULT_MAX_PIXELS
"""Largest image accepted by default (e.g. 15000 x 10000); override with $HARMONIZE_MAX_PIXELS.
The daemon's frame limit is the same number: the one copy is in :mod:`.wire.discovery`."""

_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
OPAQUE = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535, np.dtype(np.float32): 1.0}
"""The alpha value of a fully opaque pixel per image dtype."""


def max_pixels_default() -> int:
    value = os.environ.get("HARMONIZE_MAX_PIXELS")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return int(value)
    except ValueError:
        raise InputError(f"HARMONIZE_MAX_PIXELS must be an integer, got {value!r}") from None


def _check_float_range(arr: np.ndarray, what: str) -> None:
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError(f"{what} contains NaN or infinite values")
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"{what} is float and must lie in [0, 1]; got values in [{lo:g}, {hi:g}]")


def check_strength(strength: float) -> float:
    """``strength`` as a float in [0, 1] (0 = unchanged, 1 = full); :class:`InputError`
    otherwise."""
    value = float(strength)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InputError(f"strength must be in [0, 1]; got {strength!r}")
    return value


def check_pixel_count(
    width: int, height: int, *, max_pixels: int | None = None, what: str = "image"
) -> None:
    """Refuse a ``width`` x ``height`` image over ``max_pixels`` (default: $HARMONIZE_MAX_PIXELS
    or :data:`DEFAULT_MAX_PIXELS`)."""
    limit = max_pixels_default() if max_pixels is None else max_pixels
    if width * height > limit:
        raise InputError(
            f"{what} is {width} x {height} = {width * height:,} pixels, over the limit of "
            f"{limit:,} (raise it with max_pixels / $HARMONIZE_MAX_PIXELS)"
        )


def check_image(image: object, *, max_pixels: int | None = None, what: str = "image") -> np.ndarray:
    """Validate an RGB image and return it as a C-contiguous array (no copy when possible)."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        extra = (
            " (pass the alpha channel as the mask instead)"
            if image.ndim == 3 and image.shape[2] == 4
            else ""
        )
        raise InputError(f"{what} must have shape (H, W, 3); got {image.shape}{extra}")
    if image.dtype not in IMAGE_DTYPES:
        raise InputError(
            f"{what} dtype must be uint8, uint16 or float32; got {image.dtype}"
            + (" (convert with .astype(np.float32))" if image.dtype.kind == "f" else "")
        )
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise InputError(f"{what} is empty: {h} x {w}")
    check_pixel_count(w, h, max_pixels=max_pixels, what=what)
    if image.dtype.kind == "f":
        _check_float_range(image, what)
    return np.ascontiguousarray(image)


def check_mask(mask: object, shape: tuple[int, int], *, what: str = "mask") -> np.ndarray:
    """Validate a mask for an image of ``shape = (H, W)``; return it as float32 in [0, 1]."""
    return to_unit_float(validate_mask(mask, shape, what=what))


def validate_mask(mask: object, shape: tuple[int, int], *, what: str = "mask") -> np.ndarray:
    """Validate a mask for an image of ``shape = (H, W)`` and return it C-contiguous in its own
    scale: uint8, uint16 or bool as given, float as float32 in [0, 1]. Unlike
    :func:`check_mask` it makes no full-size float copy of an integer mask (4 bytes per pixel);
    the LUT backends and :func:`.pipeline.low_res_input` scale it band by band."""
    if not isinstance(mask, np.ndarray):
        raise InputError(f"{what} must be a numpy array, got {type(mask).__name__}")
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise InputError(f"{what} must have shape (H, W); got {mask.shape}")
    if mask.shape != tuple(shape):
        raise InputError(
            f"{what} size {mask.shape[1]} x {mask.shape[0]} does not match the image size "
            f"{shape[1]} x {shape[0]}"
        )
    if mask.dtype not in MASK_DTYPES:
        raise InputError(f"{what} dtype must be uint8, uint16, bool or float; got {mask.dtype}")
    if mask.dtype.kind == "f":
        _check_float_range(mask, what)
        return np.ascontiguousarray(mask, dtype=np.float32)
    return np.ascontiguousarray(mask)


def to_unit_float(arr: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / bool / float array -> float32 in [0, 1] (a view for float32 input)."""
    scale = _SCALE.get(arr.dtype)
    if scale is None:
        return np.asarray(arr, dtype=np.float32)
    out = arr.astype(np.float32)
    out /= scale
    return out


def from_unit_float(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float in [0, 1] -> ``dtype`` (integers are rounded to nearest, values clipped)."""
    dtype = np.dtype(dtype)
    scale = _SCALE.get(dtype)
    if scale is None:
        return np.clip(arr, 0.0, 1.0).astype(dtype, copy=False)
    out = np.clip(arr * scale + 0.5, 0.0, scale)
    return out.astype(dtype)


def convert(arr: np.ndarray, dtype: str | np.dtype) -> np.ndarray:
    """Convert between uint8 / uint16 / float32 pixel scales (no copy when already ``dtype``)."""
    dtype = np.dtype(dtype)
    if arr.dtype == dtype:
        return arr
    return from_unit_float(to_unit_float(arr), dtype)

"""Colour operations of the synthetic composites: photographic edits and colour transfers.

Every operation maps a whole ``(H, W, 3)`` float32 image in [0, 1] to a new one of the same
shape and range; the synthetic generator blends the result into the masked region only (or, for
the anti-memorising jitter, applies it to the whole photo). A *recipe* is a plain,
JSON-serialisable list of ``{"op": name, **parameters}`` applied in order
(:func:`apply_recipe`), so every composite can be logged and reproduced. Which recipes are drawn,
and how often, is :mod:`training.data.mistakes`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

Recipe = list[dict[str, Any]]
"""A list of operations, applied in order; each is ``{"op": name, **parameters}``."""

LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
"""Rec. 709 luminance weights (for linear and, approximately, for sRGB values)."""

TRANSFER_STD_RATIO = (0.5, 2.0)
"""Bounds on the Lab std ratio of a transfer (a flat silhouette must not become noise)."""


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] to linear light (same shape, float32)."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """Linear light (clipped to [0, 1]) to sRGB-encoded values in [0, 1] (float32)."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)


def _exposure(img: np.ndarray, stops: float) -> np.ndarray:
    return linear_to_srgb(srgb_to_linear(img) * np.float32(2.0**stops))


def _white_balance(img: np.ndarray, temperature: float, tint: float) -> np.ndarray:
    # Warmer = more red, less blue; tint = more green (magenta when negative). Gains are
    # normalised to keep the luminance of grey unchanged, so exposure stays a separate knob.
    gains = np.array(
        [math.exp(temperature), math.exp(tint), math.exp(-temperature)], dtype=np.float32
    )
    gains /= float(LUMA @ gains)
    return linear_to_srgb(srgb_to_linear(img) * gains)


def _gamma(img: np.ndarray, gamma: float) -> np.ndarray:
    return np.clip(img, 0.0, 1.0) ** np.float32(gamma)


def _curve(img: np.ndarray, knots: list[list[float]]) -> np.ndarray:
    # One monotone piecewise-linear curve per channel (identical rows = a global tone curve).
    xs = np.linspace(0.0, 1.0, len(knots[0]), dtype=np.float32)
    lut_x = np.linspace(0.0, 1.0, 256, dtype=np.float32)
    out = np.empty_like(img)
    for c in range(3):
        lut = np.interp(lut_x, xs, np.asarray(knots[c], dtype=np.float32)).astype(np.float32)
        out[..., c] = np.interp(img[..., c], lut_x, lut)
    return out


def _contrast(img: np.ndarray, factor: float, pivot: float) -> np.ndarray:
    return np.clip((img - pivot) * np.float32(factor) + pivot, 0.0, 1.0)


def _saturation(img: np.ndarray, factor: float) -> np.ndarray:
    lum = (img @ LUMA)[..., None]
    return np.clip(lum + (img - lum) * np.float32(factor), 0.0, 1.0)


def _hue(img: np.ndarray, degrees: float) -> np.ndarray:
    # Rotation about the grey axis (Rodrigues), so grey stays grey and luminance barely moves.
    a = math.radians(degrees)
    k = np.full(3, 1 / math.sqrt(3), dtype=np.float32)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=np.float32)
    rot = np.eye(3, dtype=np.float32) + math.sin(a) * kx + (1 - math.cos(a)) * (kx @ kx)
    return np.clip(img @ rot.T.astype(np.float32), 0.0, 1.0)


def _lab(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(img, dtype=np.float32), cv2.COLOR_RGB2Lab)


def _match_stats(x: np.ndarray, src: tuple[list, list], dst: tuple[list, list]) -> np.ndarray:
    """``(x - src mean) * (dst std / src std) + dst mean`` per channel, the std ratio bounded
    by :data:`TRANSFER_STD_RATIO` (a flat region must not become noise)."""
    sm, ss = (np.asarray(v, np.float32) for v in src)
    dm, ds = (np.asarray(v, np.float32) for v in dst)
    return (x - sm) * np.clip(ds / np.maximum(ss, 1e-3), *TRANSFER_STD_RATIO) + dm


def _transfer(
    img: np.ndarray,
    src_mean: list[float],
    src_std: list[float],
    dst_mean: list[float],
    dst_std: list[float],
    amount: float,
) -> np.ndarray:
    # Reinhard et al. 2001 in CIE Lab: move the region's Lab statistics onto another photo's.
    moved = _match_stats(_lab(img), (src_mean, src_std), (dst_mean, dst_std))
    out = cv2.cvtColor(moved.astype(np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(img + np.float32(amount) * (np.clip(out, 0, 1) - img), 0.0, 1.0)


def _rgb_transfer(
    img: np.ndarray,
    src_mean: list[float],
    src_std: list[float],
    dst_mean: list[float],
    dst_std: list[float],
    amount: float,
) -> np.ndarray:
    # Per-channel mean/std match in sRGB (what a quick "match colour" tool does).
    out = np.clip(_match_stats(img, (src_mean, src_std), (dst_mean, dst_std)), 0.0, 1.0)
    return img + np.float32(amount) * (out - img)


def _quantile_map(
    img: np.ndarray, src_q: list[list[float]], dst_q: list[list[float]], amount: float
) -> np.ndarray:
    # Histogram matching per channel: the region's quantiles are moved onto another region's
    # (piecewise linear between the stored quantiles).
    out = np.empty_like(img)
    for c in range(3):
        xs = np.maximum.accumulate(
            np.asarray(src_q[c], np.float32) + np.arange(len(src_q[c])) * 1e-6
        )
        out[..., c] = np.interp(img[..., c], xs, np.asarray(dst_q[c], np.float32))
    return img + np.float32(amount) * (out - img)


def _affine(img: np.ndarray, matrix: list[list[float]], offset: list[float]) -> np.ndarray:
    # y = M x + t per pixel (a linear colour transfer, a channel mixer or a 3x3 "look").
    m = np.asarray(matrix, np.float32)
    return np.clip(img @ m.T + np.asarray(offset, np.float32), 0.0, 1.0)


def _lut3d(img: np.ndarray, table: list) -> np.ndarray:
    # Trilinear lookup in an (N, N, N, 3) table indexed [r, g, b] (a colour-grading preset).
    lut = np.asarray(table, np.float32)
    n = lut.shape[0]
    pos = np.clip(img, 0.0, 1.0) * np.float32(n - 1)
    i0 = np.minimum(pos.astype(np.int32), n - 2)
    f = pos - i0
    out = np.zeros_like(img)
    for dr in (0, 1):
        wr = f[..., 0] if dr else 1 - f[..., 0]
        for dg in (0, 1):
            wg = f[..., 1] if dg else 1 - f[..., 1]
            for db in (0, 1):
                wb = f[..., 2] if db else 1 - f[..., 2]
                corner = lut[i0[..., 0] + dr, i0[..., 1] + dg, i0[..., 2] + db]
                out += (wr * wg * wb)[..., None] * corner
    return np.clip(out, 0.0, 1.0)


def _split_tone(img: np.ndarray, shadows: list[float], highlights: list[float]) -> np.ndarray:
    # Shadows pushed towards one tint and highlights towards another (RGB offsets).
    lum = np.clip(img @ LUMA, 0.0, 1.0)[..., None]
    sh, hi = np.asarray(shadows, np.float32), np.asarray(highlights, np.float32)
    return np.clip(img + (1 - lum) ** 2 * sh + lum**2 * hi, 0.0, 1.0)


def _fade(img: np.ndarray, amount: float, colour: list[float]) -> np.ndarray:
    # Lifted blacks / haze: a blend towards a flat colour (a matte "faded" look or fog).
    return img + np.float32(amount) * (np.asarray(colour, np.float32) - img)


OPS: dict[str, Callable[..., np.ndarray]] = {
    "rgb_transfer": _rgb_transfer,
    "quantile_map": _quantile_map,
    "affine": _affine,
    "lut3d": _lut3d,
    "split_tone": _split_tone,
    "fade": _fade,
    "exposure": _exposure,
    "white_balance": _white_balance,
    "gamma": _gamma,
    "curve": _curve,
    "contrast": _contrast,
    "saturation": _saturation,
    "hue": _hue,
    "transfer": _transfer,
}


def apply_recipe(img: np.ndarray, recipe: Recipe) -> np.ndarray:
    """Apply ``recipe`` to a whole ``(H, W, 3)`` float32 image in [0, 1]; returns a new array."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.float32:
        raise ValueError(f"image must be (H, W, 3) float32; got {img.shape} {img.dtype}")
    out = img
    for step in recipe:
        params = {k: v for k, v in step.items() if k != "op"}
        if step.get("op") not in OPS:
            raise ValueError(f"unknown recipe operation {step.get('op')!r}; known: {list(OPS)}")
        out = OPS[step["op"]](out, **params)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def region_pixels(img: np.ndarray, mask: np.ndarray, limit: int = 4096) -> np.ndarray:
    """Up to ``limit`` pixels ``(N, 3)`` float32 of ``img`` where the binary ``mask`` is set
    (an even subsample; the whole image when the mask is empty)."""
    pix = img.reshape(-1, 3)[mask.reshape(-1) >= 0.5]
    if len(pix) == 0:
        pix = img.reshape(-1, 3)
    step = max(1, len(pix) // limit)
    return np.ascontiguousarray(pix[::step][:limit], dtype=np.float32)


def region_lab_stats(img: np.ndarray, mask: np.ndarray) -> tuple[list[float], list[float]]:
    """Mask-weighted Lab mean and std of an ``(H, W, 3)`` float32 image; mask ``(H, W)``."""
    lab = _lab(img).reshape(-1, 3)
    w = mask.reshape(-1, 1).astype(np.float32)
    total = max(float(w.sum()), 1e-6)
    mean = (lab * w).sum(0) / total
    std = np.sqrt(np.maximum(((lab - mean) ** 2 * w).sum(0) / total, 0.0))
    return mean.tolist(), std.tolist()

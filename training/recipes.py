"""Colour recipes that turn a photo region into a plausible compositing mistake.

Real composites differ from their scene mostly by global photographic changes (exposure, white
balance, tone curve, saturation: a layer taken from a differently retouched photo) or by carrying
another object's colour statistics. Each recipe here is one such change, drawn at random from a
seeded generator, and applied to a whole ``(H, W, 3)`` float32 image in [0, 1]; the caller
blends the result into the masked region only.

A recipe is drawn once (:func:`draw_recipe`) and is then a plain, JSON-serialisable description
(a list of ``{"op": name, ...parameters}``) so a composite can be logged and reproduced.
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

TRANSFER_PROBABILITY = 0.35
"""Share of composites made by colour-statistics transfer (HCOCO kind); the rest are
photographic edits (HAdobe5k / HFlickr kind)."""
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


def _transfer(
    img: np.ndarray,
    src_mean: list[float],
    src_std: list[float],
    dst_mean: list[float],
    dst_std: list[float],
    amount: float,
) -> np.ndarray:
    # Reinhard et al. 2001 in CIE Lab: move the region's Lab statistics onto another photo's.
    lab = _lab(img)
    sm, ss = np.asarray(src_mean, np.float32), np.asarray(src_std, np.float32)
    dm, ds = np.asarray(dst_mean, np.float32), np.asarray(dst_std, np.float32)
    ratio = np.clip(ds / np.maximum(ss, 1e-3), *TRANSFER_STD_RATIO)  # no noise blow-up
    moved = (lab - sm) * ratio + dm
    out = cv2.cvtColor(moved.astype(np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(img + np.float32(amount) * (np.clip(out, 0, 1) - img), 0.0, 1.0)


OPS: dict[str, Callable[..., np.ndarray]] = {
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


def region_lab_stats(img: np.ndarray, mask: np.ndarray) -> tuple[list[float], list[float]]:
    """Mask-weighted Lab mean and std of an ``(H, W, 3)`` float32 image; mask ``(H, W)``."""
    lab = _lab(img).reshape(-1, 3)
    w = mask.reshape(-1, 1).astype(np.float32)
    total = max(float(w.sum()), 1e-6)
    mean = (lab * w).sum(0) / total
    std = np.sqrt(np.maximum(((lab - mean) ** 2 * w).sum(0) / total, 0.0))
    return mean.tolist(), std.tolist()


def _random_curve(rng: np.random.Generator, per_channel: bool) -> list[list[float]]:
    xs = np.linspace(0.0, 1.0, 5)

    def one() -> list[float]:
        ys = xs + rng.normal(0.0, 0.06, 5) * np.array([0.3, 1, 1, 1, 0.3])
        ys = np.maximum.accumulate(np.clip(ys, 0.0, 1.0))
        return ys.tolist()

    base = one()
    return [one() for _ in range(3)] if per_channel else [base, base, base]


def draw_photographic(rng: np.random.Generator, fg_mean: float) -> Recipe:
    """A retouch-style change: mostly exposure and white balance, plus 0-3 other edits.

    ``fg_mean`` is the mean sRGB value of the region (the contrast pivot).
    """
    recipe: Recipe = []
    if rng.random() < 0.85:
        recipe.append({"op": "exposure", "stops": float(np.clip(rng.normal(0, 0.75), -2, 2))})
    if rng.random() < 0.7:
        recipe.append(
            {
                "op": "white_balance",
                "temperature": float(np.clip(rng.normal(0, 0.18), -0.5, 0.5)),
                "tint": float(np.clip(rng.normal(0, 0.08), -0.25, 0.25)),
            }
        )
    extras = ["gamma", "curve", "contrast", "saturation", "hue"]
    for name in rng.permutation(extras)[: rng.integers(0, 4)]:
        if name == "gamma":
            recipe.append({"op": "gamma", "gamma": float(math.exp(rng.normal(0, 0.2)))})
        elif name == "curve":
            recipe.append({"op": "curve", "knots": _random_curve(rng, rng.random() < 0.4)})
        elif name == "contrast":
            factor = float(math.exp(np.clip(rng.normal(0, 0.2), -0.5, 0.5)))
            recipe.append({"op": "contrast", "factor": factor, "pivot": float(fg_mean)})
        elif name == "saturation":
            factor = float(math.exp(np.clip(rng.normal(0, 0.35), -1.2, 0.8)))
            recipe.append({"op": "saturation", "factor": factor})
        else:
            recipe.append({"op": "hue", "degrees": float(np.clip(rng.normal(0, 10), -30, 30))})
    rng.shuffle(recipe)  # edits come in any order in real retouching
    return recipe


def draw_transfer(
    rng: np.random.Generator,
    src_stats: tuple[list[float], list[float]],
    dst_stats: tuple[list[float], list[float]],
) -> Recipe:
    """An HCOCO-style change: the region takes another object's Lab statistics (partly)."""
    recipe: Recipe = [
        {
            "op": "transfer",
            "src_mean": src_stats[0],
            "src_std": src_stats[1],
            "dst_mean": dst_stats[0],
            "dst_std": dst_stats[1],
            "amount": float(rng.uniform(0.6, 1.0)),
        }
    ]
    if rng.random() < 0.3:
        recipe.append({"op": "exposure", "stops": float(np.clip(rng.normal(0, 0.4), -1, 1))})
    return recipe


def recipe_kind(recipe: Recipe) -> str:
    """``transfer`` or ``photographic`` (for per-kind tables)."""
    return "transfer" if any(s["op"] == "transfer" for s in recipe) else "photographic"

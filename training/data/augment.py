"""The paper's augmentation (random crop of 0.5-1 per side, horizontal flip) and resizing."""

from __future__ import annotations

import cv2
import numpy as np

from training.data.samples import Triplet

CROP_RATIO = 0.5
"""Smallest crop side as a share of the image side (``RandomCropNoResize(ratio=0.5)``)."""


def crop_box(
    height: int, width: int, rng: np.random.Generator, ratio: float = CROP_RATIO
) -> tuple[int, int, int, int]:
    """``(y0, x0, h, w)``: height and width drawn independently as U(ratio, 1) x side."""
    h = max(1, round(rng.uniform(ratio, 1.0) * height))
    w = max(1, round(rng.uniform(ratio, 1.0) * width))
    return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w


def fit_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """``(h, w)`` scaled down (never up) so the longer side is at most ``max_side``."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    s = max_side / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(H, W[, C])`` to ``size = (h, w)``: area filter down, linear up."""
    if image.shape[:2] == tuple(size):
        return image
    down = size[0] < image.shape[0]
    interp = cv2.INTER_AREA if down else cv2.INTER_LINEAR
    return cv2.resize(image, (size[1], size[0]), interpolation=interp)


def crop_flip(
    t: Triplet,
    rng: np.random.Generator,
    *,
    ratio: float = CROP_RATIO,
    keep_background_prob: float = 0.05,
    tries: int = 10,
) -> Triplet:
    """Paper augmentation of a training triplet: crop (redrawn while the crop holds no
    foreground, unless kept with ``keep_background_prob``), then flip with p = 0.5."""
    h, w = t.mask.shape
    for _ in range(tries):
        y0, x0, ch, cw = crop_box(h, w, rng, ratio)
        if t.mask[y0 : y0 + ch, x0 : x0 + cw].sum() > 1 or rng.random() < keep_background_prob:
            break
    else:
        y0, x0, ch, cw = 0, 0, h, w
    sl = (slice(y0, y0 + ch), slice(x0, x0 + cw))
    flip = rng.random() < 0.5

    def cut(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        a = a[sl]
        return np.ascontiguousarray(a[:, ::-1] if flip else a)

    composite, mask, real = cut(t.composite), cut(t.mask), cut(t.real)
    assert composite is not None and mask is not None
    return Triplet(t.name, t.subset, composite, mask, real, dict(t.meta))


def limit_size(t: Triplet, max_side: int | None) -> Triplet:
    """Downscale a triplet so its longer side is at most ``max_side`` (None: unchanged)."""
    size = fit_size(*t.mask.shape, max_side)
    if size == t.mask.shape:
        return t
    real = None if t.real is None else resize_image(t.real, size)
    mask = np.clip(resize_image(t.mask, size), 0.0, 1.0).astype(np.float32)
    return Triplet(t.name, t.subset, resize_image(t.composite, size), mask, real, dict(t.meta))

"""Object masks for synthetic composites: placing bank masks, BSDS regions, horizons,
feathering.

All masks here are ``(H, W)`` float32 in [0, 1] unless stated otherwise.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from layer_harmonizer.image_files import read_mask

MIN_FRACTION = 0.02
"""Smallest foreground share of the image a synthetic object may have."""
MAX_FRACTION = 0.6
"""Largest foreground share (beyond it the 'background' is too small to be a scene)."""


def load_binary(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask file as float32 {0, 1}; resized (bilinear, then thresholded) to ``shape``."""
    arr = read_mask(path)
    top = 65535.0 if arr.dtype == np.uint16 else 255.0 if arr.dtype == np.uint8 else 1.0
    m = arr.astype(np.float32) / np.float32(top)
    if shape is not None and m.shape != tuple(shape):
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return (m >= 0.5).astype(np.float32)


def fraction(mask: np.ndarray) -> float:
    """Mean mask value (the foreground share)."""
    return float(mask.mean()) if mask.size else 0.0


def sides_touched(mask: np.ndarray) -> int:
    """How many of the image's four sides the mask's foreground (> 0.5) reaches (0-4)."""
    fg = mask > 0.5
    return int(fg[0].any()) + int(fg[-1].any()) + int(fg[:, 0].any()) + int(fg[:, -1].any())


def place_bank_mask(
    shape_mask: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    max_fill: float = 1.0,
) -> np.ndarray | None:
    """Put an object shape at a random scale and position on an ``size = (H, W)`` canvas.

    ``shape_mask`` is any binary mask holding one object; its bounding box is cut out, scaled so
    the object covers about 3-45 % of the canvas (aspect kept), possibly mirrored, and placed
    fully inside. Returns a float32 {0, 1} ``(H, W)`` mask, or None for an empty shape or one
    filling more than ``max_fill`` of its bounding box (boxes are poor object shapes).
    """
    placed = place_cutout(shape_mask, size, rng, max_fill)
    return None if placed is None else placed[0]


def place_cutout(
    shape_mask: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    max_fill: float = 1.0,
    pixels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """:func:`place_bank_mask` that also carries the object's pixels along.

    Args:
        shape_mask: ``(h, w)`` binary mask of one object.
        size: ``(H, W)`` of the canvas.
        pixels: ``(h, w, 3)`` uint8 image the mask cuts the object from, or None.

    Returns:
        ``(mask, placed)``: the float32 {0, 1} ``(H, W)`` mask and the ``(H, W, 3)`` uint8
        object pixels at the same place (zero elsewhere; None without ``pixels``), or None for
        an empty shape or one filling more than ``max_fill`` of its bounding box.
    """
    ys, xs = np.nonzero(shape_mask > 0.5)
    if ys.size < 16:
        return None
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    obj = shape_mask[box].astype(np.float32)
    h, w = size
    fill = max(float(obj.mean()), 0.05)  # object pixels per bounding-box pixel
    if fill > max_fill:
        return None
    target = rng.uniform(0.03, 0.45) * h * w
    scale = np.sqrt(target / (fill * obj.shape[0] * obj.shape[1]))
    scale = min(scale, h / obj.shape[0], w / obj.shape[1])
    oh, ow = max(round(obj.shape[0] * scale), 4), max(round(obj.shape[1] * scale), 4)
    oh, ow = min(oh, h), min(ow, w)
    obj = cv2.resize(obj, (ow, oh), interpolation=cv2.INTER_LINEAR)
    patch = (
        None if pixels is None else cv2.resize(pixels[box], (ow, oh), interpolation=cv2.INTER_AREA)
    )
    if rng.random() < 0.5:
        obj = obj[:, ::-1]
        patch = None if patch is None else patch[:, ::-1]
    canvas = np.zeros((h, w), np.float32)
    y0 = int(rng.integers(0, h - oh + 1))
    x0 = int(rng.integers(0, w - ow + 1))
    canvas[y0 : y0 + oh, x0 : x0 + ow] = obj >= 0.5
    if patch is None:
        return canvas, None
    placed = np.zeros((h, w, 3), np.uint8)
    placed[y0 : y0 + oh, x0 : x0 + ow] = patch
    return canvas, placed


def horizon_mask(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The land of a sky replacement: everything below a random horizon line.

    The line sits at 30-75 % of the height, tilts a little, rolls gently (a few low waves) and
    sometimes carries a ragged tree line. Returns ``(H, W)`` float32 {0, 1}; each column is 0
    above its horizon and 1 below it, and the mask covers 25-70 % of the image (about).

    Args:
        size: ``(H, W)`` of the canvas.
    """
    h, w = size
    x = np.arange(w, dtype=np.float32) / max(w - 1, 1)
    line = np.full(w, rng.uniform(0.3, 0.75), np.float32) + rng.uniform(-0.08, 0.08) * (x - 0.5)
    for _ in range(int(rng.integers(1, 4))):
        wave = np.sin(2 * np.pi * (rng.uniform(0.3, 3.0) * x + rng.random()))
        line += rng.uniform(0.0, 0.04) * wave.astype(np.float32)
    if rng.random() < 0.5:  # a tree line or rooftops: ragged, a few pixels to a tenth high
        rough = cv2.GaussianBlur(rng.random((1, w)).astype(np.float32), (0, 0), rng.uniform(1, 6))
        rough = (rough[0] - rough.min()) / max(float(np.ptp(rough)), 1e-6)
        line -= rng.uniform(0.01, 0.1) * rough
    rows = np.arange(h, dtype=np.float32)[:, None] / max(h - 1, 1)
    return (rows >= np.clip(line, 0.2, 0.85)[None, :]).astype(np.float32)


def label_region(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """An object mask from a segmentation label map ``(H, W)`` of integer region ids.

    Picks a region covering MIN_FRACTION..MAX_FRACTION of the image, sometimes merged with one
    touching region (objects are often split into parts). Returns float32 {0, 1} or None.
    """
    ids, counts = np.unique(labels, return_counts=True)
    share = counts / labels.size
    ok = ids[(share >= MIN_FRACTION) & (share <= MAX_FRACTION)]
    if ok.size == 0:
        return None
    region = labels == rng.choice(ok)
    if rng.random() < 0.3:
        ring = cv2.dilate(region.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~region
        touching = np.unique(labels[ring])
        if touching.size:
            merged = region | (labels == rng.choice(touching))
            if fraction(merged.astype(np.float32)) <= MAX_FRACTION:
                region = merged
    return region.astype(np.float32)


def feather(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soften a binary mask the way layer masks are: anti-aliased or feathered edges.

    Returns float32 in [0, 1]; pixels farther than about 3 sigma from the object stay exactly 0.
    """
    side = max(mask.shape)
    r = rng.random()
    if r < 0.25:
        return mask.astype(np.float32)
    sigma = 0.6 if r < 0.6 else rng.uniform(0.8, 3.0) * max(side / 384.0, 0.5)
    radius = max(int(np.ceil(3 * sigma)), 1)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (2 * radius + 1, 2 * radius + 1), sigma)
    soft[soft < 1e-3] = 0.0  # a clean zero outside the feather (no faint halo over the scene)
    return np.clip(soft, 0.0, 1.0)

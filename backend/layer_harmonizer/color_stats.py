"""Classical colour-statistics matching (Reinhard-style, per RGB channel).

Used two ways: as the starting point of the colour LUT in the light variants (``color_prior``),
and as the "classical transfer" baseline of the evaluation.
"""

from __future__ import annotations

import torch
from torch import Tensor

RATIO_RANGE = (0.5, 2.0)
"""Bounds on the std ratio, so a flat foreground or background cannot explode the mapping."""

_EPS = 1e-6


def region_stats(image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mask-weighted per-channel mean and std of foreground and background.

    Args:
        image: ``(B, 3, H, W)`` in [0, 1].
        mask: ``(B, 1, H, W)`` soft mask in [0, 1]; the background weight is ``1 - mask``.

    Returns:
        ``(mean_fg, std_fg, mean_bg, std_bg)``, each ``(B, 3)``.
    """
    out = []
    for weight in (mask, 1.0 - mask):
        total = weight.sum(dim=(2, 3)).clamp_min(_EPS)
        mean = (image * weight).sum(dim=(2, 3)) / total
        var = ((image - mean[..., None, None]) ** 2 * weight).sum(dim=(2, 3)) / total
        out += [mean, var.clamp_min(0).sqrt()]
    return out[0], out[1], out[2], out[3]


def reinhard_affine(
    image: Tensor, mask: Tensor, stats: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """Per-channel gain and offset that move foreground statistics onto the background's.

    ``y = gain * x + offset``. Where either region is (nearly) empty the mapping is the
    identity. Shapes as :func:`region_stats`, whose result ``stats`` may be passed in when
    already computed; returns two ``(B, 3)`` tensors.
    """
    mean_fg, std_fg, mean_bg, std_bg = stats if stats is not None else region_stats(image, mask)
    gain = (std_bg / std_fg.clamp_min(1e-3)).clamp(*RATIO_RANGE)
    offset = mean_bg - gain * mean_fg
    area = image.shape[2] * image.shape[3]
    fg = mask.sum(dim=(2, 3)) / area  # (B, 1)
    valid = (fg > 1e-3) & (fg < 1 - 1e-3)
    gain = torch.where(valid, gain, torch.ones_like(gain))
    offset = torch.where(valid, offset, torch.zeros_like(offset))
    return gain, offset


def reinhard_knots(
    image: Tensor, mask: Tensor, knots: int, affine: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """The statistics match sampled at ``knots`` even inputs: ``(B, 3, knots)`` in [0, 1]
    (``affine``: :func:`reinhard_affine`'s result, when already computed)."""
    gain, offset = affine if affine is not None else reinhard_affine(image, mask)
    t = torch.linspace(0, 1, knots, device=image.device, dtype=image.dtype)
    return (gain[..., None] * t + offset[..., None]).clamp(0, 1)


def classical_transfer(
    image: Tensor, mask: Tensor, affine: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """Apply the statistics match to the foreground: ``(B, 3, H, W)`` in [0, 1], blended by mask
    (``affine``: :func:`reinhard_affine`'s result, when already computed)."""
    gain, offset = affine if affine is not None else reinhard_affine(image, mask)
    mapped = (image * gain[..., None, None] + offset[..., None, None]).clamp(0, 1)
    return image + mask * (mapped - image)

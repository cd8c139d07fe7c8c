"""Differentiable PyTorch reference of the AICT LUT transform.

Per pixel and colour channel ``c`` with value ``x`` in [0, 1] at LUT-grid position ``(u, v)``:

1. ``x_hat = trilinear(intervals_c, u, v, x * K)``     (K + 1 knots, monotone in x)
2. ``y = clamp(trilinear(colors_c, u, v, x_hat * (K - 1)), 0, 1)``
3. ``out = y * a + x * (1 - a)`` with ``a = strength * mask``

This is the official implementation's arithmetic (5-D ``grid_sample``, bilinear, border padding,
align corners); training uses it, and it is the fallback whenever no faster backend is there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layer_harmonizer.lut.maps import LutMaps


def _lookup(table: Tensor, value: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Trilinear lookup of ``(B*3, M, N, D)`` tables at value ``(B*3, h, W)`` in [0, 1]."""
    n, h, w = value.shape
    grid = torch.stack(
        (
            value * 2 - 1,
            v.view(1, 1, w).expand(n, h, w),
            u.view(1, h, 1).expand(n, h, w),
        ),
        dim=-1,
    )
    out = F.grid_sample(
        table.unsqueeze(1),
        grid.unsqueeze(1),
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    return out.view(n, h, w)


def _axis(count: int, start: int, stop: int, device: torch.device) -> Tensor:
    """Normalised align-corners coordinates of indices ``start..stop-1`` of ``count``."""
    idx = torch.arange(start, stop, device=device, dtype=torch.float32)
    return idx * (2.0 / (count - 1)) - 1 if count > 1 else torch.full_like(idx, -1.0)


def apply_luts(
    image: Tensor,
    maps: LutMaps,
    mask: Tensor | None = None,
    strength: float | Tensor = 1.0,
    *,
    rows: tuple[int, int, int] | None = None,
) -> Tensor:
    """Map ``image`` through the LUT maps and blend with the soft mask.

    Args:
        image: ``(B, 3, h, W)`` float in [0, 1].
        maps: LUT maps with batch ``B``.
        mask: ``(B, 1, h, W)`` in [0, 1], or None for "everywhere".
        strength: scalar in [0, 1] (or a ``(B,)`` tensor) scaling the mask: 0 gives the input
            back, 1 the full prediction.
        rows: ``(first_row, stop_row, H)`` when ``image`` is the band ``first_row:stop_row``
            of a taller ``H``-row image (the spatial mapping needs the full height).

    Returns:
        ``(B, 3, h, W)`` float in [0, 1]; equal to ``image`` wherever the blend weight is 0.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W); got {tuple(image.shape)}")
    b, _, h, w = image.shape
    if maps.batch != b:
        raise ValueError(f"maps hold {maps.batch} images but the batch has {b}")
    first, stop, height = rows if rows is not None else (0, h, h)
    if stop - first != h:
        raise ValueError(f"rows {first}:{stop} do not match an image band of {h} rows")
    u = _axis(height, first, stop, image.device)
    v = _axis(w, 0, w, image.device)
    flat = image.reshape(b * 3, h, w)
    intervals = maps.intervals.reshape(b * 3, *maps.intervals.shape[2:])
    colors = maps.colors.reshape(b * 3, *maps.colors.shape[2:])
    x_hat = _lookup(intervals, flat, u, v)
    y = _lookup(colors, x_hat, u, v).clamp(0, 1).view(b, 3, h, w)
    alpha = torch.as_tensor(strength, dtype=image.dtype, device=image.device)
    alpha = alpha.view(-1, 1, 1, 1) if alpha.ndim else alpha
    if mask is not None:
        alpha = alpha * mask
    return y * alpha + image * (1 - alpha)


class LutTransform(nn.Module):
    """Module form of :func:`apply_luts` (same arguments, same shapes)."""

    def forward(
        self,
        image: Tensor,
        maps: LutMaps,
        mask: Tensor | None = None,
        strength: float | Tensor = 1.0,
    ) -> Tensor:
        return apply_luts(image, maps, mask, strength)

"""Damping: how much of a predicted change to apply (:attr:`AICTConfig.damping`).

A network's prediction is right on average but not exact: on pastes that already fit it
changes the object by about its own error. The change it predicts is measured on the 256 x 256
input the network saw, and only the share ``m / (m + damping)`` of it is applied, so changes
of the size of that error are damped and strong corrections pass nearly whole (a Wiener-like
shrinkage with one constant per weights file, chosen on the validation sets: docs/weights.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from layer_harmonizer.lut.maps import LutMaps
from layer_harmonizer.lut.reference import apply_luts


@torch.no_grad()
def predicted_change(x: Tensor, maps: LutMaps) -> float:
    """The foreground MSE (0..255 scale) between the network input and the maps applied to it.

    Args:
        x: ``(1, 4, S, S)``: RGB in [0, 1] and the soft mask in [0, 1] (the network's input).
        maps: the network's maps for ``x`` (batch 1, on ``x``'s device).
    """
    rgb, mask = x[:, :3].float(), x[:, 3:4].float()
    mapped = apply_luts(rgb, maps, mask)
    weight = (3 * mask.sum()).clamp_min(1e-6)
    return float((((mapped - rgb) * 255.0) ** 2 * mask).sum() / weight)


def damping_gain(x: Tensor, maps: LutMaps, damping: float) -> float:
    """``m / (m + damping)`` in [0, 1] with ``m`` = :func:`predicted_change` (1 when damping
    is 0: nothing is measured)."""
    if damping <= 0.0:
        return 1.0
    change = predicted_change(x, maps)
    return change / (change + damping)

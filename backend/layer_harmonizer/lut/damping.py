"""Damping: how much of a predicted change to apply (:attr:`AICTConfig.damping`).

A network's prediction is right on average but not exact: on pastes that already fit it
changes the object by about its own error. The change it predicts is measured on (a 64 x 64
average of) the input the network saw, and only the share ``m² / (m² + K²)`` of it is applied
(``m`` that change's foreground MSE, ``K`` the damping: half of a change of ``m = K``), so
changes of the size of that error are damped while strong corrections pass whole (a change of
``m = 4K`` keeps 94 %, ``10K`` 99 %). One constant per weights file, chosen on the validation
sets (docs/weights.md); the squared form keeps strong corrections whole better than
``m / (m + K)`` at the same protection of good pastes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from layer_harmonizer.lut.maps import LutMaps
from layer_harmonizer.lut.reference import apply_luts

MEASURE_SIDE = 64
"""The change is measured on the input averaged down to this side: within a few per cent of
the 256 x 256 measurement, at a tenth of the network's time instead of about all of it
(``benchmarks/bench_damping.py``, docs/benchmarks.md)."""


@torch.no_grad()
def predicted_change(x: Tensor, maps: LutMaps, side: int = MEASURE_SIDE) -> float:
    """The foreground MSE (0..255 scale) between the network input and the maps applied to it,
    on the input averaged down to ``side`` (the maps' grid spans any size).

    Args:
        x: ``(1, 4, S, S)``: RGB in [0, 1] and the soft mask in [0, 1] (the network's input).
        maps: the network's maps for ``x`` (batch 1, on ``x``'s device).
        side: the measuring size (``S``: no averaging).
    """
    small = torch.nn.functional.adaptive_avg_pool2d(x.float(), side)
    rgb, mask = small[:, :3], small[:, 3:4]
    mapped = apply_luts(rgb, maps, mask)
    weight = (3 * mask.sum()).clamp_min(1e-6)
    return float((((mapped - rgb) * 255.0) ** 2 * mask).sum() / weight)


def damping_gain(x: Tensor, maps: LutMaps, damping: float) -> float:
    """``m² / (m² + damping²)`` in [0, 1] with ``m`` = :func:`predicted_change` (1 when
    damping is 0: nothing is measured)."""
    if damping <= 0.0:
        return 1.0
    change = predicted_change(x, maps)
    return change**2 / (change**2 + damping**2)

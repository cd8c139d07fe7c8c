"""The predicted LUT maps: what the network produces and every LUT backend consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LutMaps:
    """Position-dependent per-channel LUTs of one or more images.

    Attributes:
        intervals: ``(B, 3, M, N, K + 1)`` monotone knots in [0, 1] (first 0, last 1): the
            interval LUT that redistributes an input value ``x`` to ``x_hat``.
        colors: ``(B, 3, M, N, K)`` colour-LUT values (unbounded; the output is clamped).

    ``M x N`` is the LUT grid (256 x 256 for the paper model). Full-resolution pixel ``(i, j)``
    of an ``H x W`` image reads grid position ``(i (M-1)/(H-1), j (N-1)/(W-1))`` (align
    corners); the knot axis is last and contiguous, the layout the kernels read.
    """

    intervals: Tensor
    colors: Tensor

    def __post_init__(self) -> None:
        i, c = self.intervals, self.colors
        if i.ndim != 5 or c.ndim != 5 or i.shape[1] != 3:
            raise ValueError(
                f"LUT maps must be (B, 3, M, N, knots); got {tuple(i.shape)} and {tuple(c.shape)}"
            )
        if i.shape[:4] != c.shape[:4] or i.shape[4] != c.shape[4] + 1:
            raise ValueError(
                "interval LUT must have one knot more than the colour LUT on the same grid; "
                f"got {tuple(i.shape)} and {tuple(c.shape)}"
            )

    @property
    def batch(self) -> int:
        return self.intervals.shape[0]

    def select(self, index: int) -> LutMaps:
        """The maps of one image, keeping a batch axis of 1."""
        return LutMaps(self.intervals[index : index + 1], self.colors[index : index + 1])

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> LutMaps:
        return LutMaps(
            self.intervals.to(device=device, dtype=dtype).contiguous(),
            self.colors.to(device=device, dtype=dtype).contiguous(),
        )

    @staticmethod
    def identity(grid: tuple[int, int] = (2, 2), knots: int = 8, batch: int = 1) -> LutMaps:
        """Maps that reproduce their input exactly (uniform intervals, colour knot k = k/(K-1))."""
        m, n = grid
        intervals = torch.linspace(0, 1, knots + 1).expand(batch, 3, m, n, knots + 1)
        colors = torch.linspace(0, 1, knots).expand(batch, 3, m, n, knots)
        return LutMaps(intervals.contiguous(), colors.contiguous())

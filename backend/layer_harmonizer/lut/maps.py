"""The predicted LUT maps and the kernel contract: what the network produces, what every LUT
backend consumes, and the checks every compiled kernel (CPU and CUDA) applies to a call."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from layer_harmonizer.arrays import to_unit_float
from layer_harmonizer.errors import InputError

KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.uint8), np.dtype(np.uint16))
"""Image dtypes the compiled kernels take (``kernel.cu`` has one entry point each)."""
MASK_DTYPES = (*KERNEL_DTYPES, np.dtype(np.bool_))
"""Mask dtypes every backend takes: float32 in [0, 1] is read as is, the others (full scale
= 1) are scaled to float32 one band of rows at a time, so no full-size float copy is made."""
MASK_BAND_PIXELS = 1 << 20
"""Pixels per band when a backend scales an integer mask (4 MB of float32 at a time)."""
GPU_BLOCK = (32, 8)
"""Threads per block of the CUDA launch (x = columns, y = rows): 256, the kernel's
``__launch_bounds__``; the tests run the CPU build with it too."""
INT32_MAX = 2**31 - 1
"""The kernels index with 32-bit integers."""


@dataclass(frozen=True)
class LutMaps:
    """Position-dependent per-channel LUTs of one or more images.

    Attributes:
        intervals: ``(B, 3, M, N, K + 1)`` monotone knots in [0, 1] (first 0, last 1): the
            interval LUT that redistributes an input value ``x`` to ``x_hat``.
        colors: ``(B, 3, M, N, K)`` colour-LUT values (unbounded; the output is clamped).
        gain: share in [0, 1] of the mapped change that is applied, times the caller's strength
            (the model's damping, :func:`layer_harmonizer.lut.damping.damping_gain`; 1: all).

    ``M x N`` is the LUT grid (256 x 256 for the paper model). Full-resolution pixel ``(i, j)``
    of an ``H x W`` image reads grid position ``(i (M-1)/(H-1), j (N-1)/(W-1))`` (align
    corners); the knot axis is last and contiguous, the layout the kernels read.
    """

    intervals: Tensor
    colors: Tensor
    gain: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.gain <= 1.0:
            raise ValueError(f"LUT maps' gain must be in [0, 1]; got {self.gain}")
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
        return LutMaps(self.intervals[index : index + 1], self.colors[index : index + 1], self.gain)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> LutMaps:
        return LutMaps(
            self.intervals.to(device=device, dtype=dtype).contiguous(),
            self.colors.to(device=device, dtype=dtype).contiguous(),
            self.gain,
        )

    @staticmethod
    def identity(grid: tuple[int, int] = (2, 2), knots: int = 8, batch: int = 1) -> LutMaps:
        """Maps that reproduce their input exactly (uniform intervals, colour knot k = k/(K-1))."""
        m, n = grid
        intervals = torch.linspace(0, 1, knots + 1).expand(batch, 3, m, n, knots + 1)
        colors = torch.linspace(0, 1, knots).expand(batch, 3, m, n, knots)
        return LutMaps(intervals.contiguous(), colors.contiguous())


def check_kernel_limits(height: int, width: int, intervals_shape: tuple[int, ...]) -> None:
    """Raise :class:`InputError` when 32-bit kernel index arithmetic could overflow."""
    rows, cols = intervals_shape[-3], intervals_shape[-2]
    if (max(height, width) - 1) * (max(rows, cols) - 1) > INT32_MAX:
        raise InputError(
            f"a {width} x {height} image on a {rows} x {cols} LUT grid is too large for the kernel"
        )
    if int(np.prod(intervals_shape)) > INT32_MAX:
        raise InputError(f"LUT maps of shape {intervals_shape} are too large for the kernel")


def check_kernel_call(image: np.ndarray, mask: np.ndarray | None, maps: LutMaps) -> None:
    """The arguments of a compiled kernel's ``apply``: image ``(H, W, 3)`` of
    :data:`KERNEL_DTYPES`, mask ``(H, W)`` of :data:`MASK_DTYPES` or None, the maps of one
    image, and sizes the 32-bit index arithmetic holds; :class:`InputError` otherwise."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype not in KERNEL_DTYPES:
        raise InputError(
            f"image must be (H, W, 3) uint8, uint16 or float32; got {image.shape} {image.dtype}"
        )
    h, w, _ = image.shape
    if h == 0 or w == 0 or h > INT32_MAX or w > INT32_MAX:
        raise InputError(f"image size {w} x {h} is not supported")
    if mask is not None and (mask.shape != (h, w) or mask.dtype not in MASK_DTYPES):
        raise InputError(
            f"mask must be ({h}, {w}) float32, uint8, uint16 or bool; got {mask.shape} {mask.dtype}"
        )
    if maps.batch != 1:
        raise InputError(f"the LUT kernel takes the maps of one image; got {maps.batch}")
    check_kernel_limits(h, w, tuple(maps.intervals.shape))


def mask_band_rows(mask: np.ndarray | None, width: int) -> int:
    """Rows per call when a backend walks an image in bands for its mask: the whole image for
    no mask or a float32 one, else :data:`MASK_BAND_PIXELS` worth of rows."""
    if mask is None or mask.dtype == np.float32:
        return INT32_MAX
    return max(1, MASK_BAND_PIXELS // max(1, width))


def mask_rows(mask: np.ndarray | None, top: int, bottom: int) -> np.ndarray | None:
    """Rows ``top:bottom`` of a :data:`MASK_DTYPES` mask as C-contiguous float32 in [0, 1] (a
    view of a float32 mask; None for None)."""
    return None if mask is None else np.ascontiguousarray(to_unit_float(mask[top:bottom]))

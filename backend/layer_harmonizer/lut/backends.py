"""LUT application backends: numpy images in, numpy images out.

A backend maps a full-resolution ``H x W x 3`` image (uint8, uint16 or float32) through
:class:`LutMaps` and blends it with a soft mask, returning an image of the same dtype in which
every pixel with blend weight 0 is bit-identical to the input. The torch reference is always
available; faster backends register themselves in :data:`BACKENDS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from layer_harmonizer.arrays import from_unit_float, to_unit_float
from layer_harmonizer.errors import HarmonizeError
from layer_harmonizer.lut.maps import LutMaps, mask_rows
from layer_harmonizer.lut.reference import apply_luts

log = logging.getLogger(__name__)

BAND_PIXELS = 1 << 20
"""Pixels per band in the torch backend: bounds its temporary memory to ~150 MB."""


class LutBackend(Protocol):
    """What every LUT backend provides."""

    name: str

    def apply(
        self, image: np.ndarray, mask: np.ndarray | None, maps: LutMaps, strength: float
    ) -> np.ndarray:
        """Args: image ``(H, W, 3)`` uint8/uint16/float32 (float in [0, 1]); mask ``(H, W)``
        float32 in [0, 1], uint8/uint16/bool (full scale = 1; scaled band by band, see
        :data:`.maps.MASK_DTYPES`) or None (everywhere); maps with batch 1; strength in [0, 1].
        Returns a new ``(H, W, 3)`` array of the image's dtype."""
        ...


class TorchBackend:
    """The reference transform (:func:`layer_harmonizer.lut.reference.apply_luts`) in row bands."""

    name = "torch"

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)

    @torch.inference_mode()
    def apply(
        self, image: np.ndarray, mask: np.ndarray | None, maps: LutMaps, strength: float
    ) -> np.ndarray:
        h, w, _ = image.shape
        maps = maps.to(self.device)
        out = np.empty_like(image)
        band = max(1, BAND_PIXELS // w)
        for top in range(0, h, band):
            bottom = min(h, top + band)
            src = image[top:bottom]
            x = torch.from_numpy(to_unit_float(src)).to(self.device).permute(2, 0, 1)[None]
            m = None
            if mask is not None:
                m = torch.from_numpy(mask_rows(mask, top, bottom)).to(self.device)[None, None]
            y = apply_luts(x, maps, m, strength, rows=(top, bottom, h))
            res = from_unit_float(y[0].permute(1, 2, 0).cpu().numpy(), image.dtype)
            if mask is not None:  # bit-exact outside the mask, whatever the rounding did
                res = np.where(mask[top:bottom, :, None] > 0, res, src)
            out[top:bottom] = res
        return out


def cpu_fallback() -> LutBackend:
    """The CPU kernel when it builds, else the torch reference: what the CUDA backend checks
    itself against and falls back to."""
    from layer_harmonizer.lut.cpu_kernel import CpuKernelBackend, KernelBuildError

    try:
        return CpuKernelBackend()
    except KernelBuildError:
        return TorchBackend("cpu")


def _cuda_backend(device: str) -> LutBackend:
    from layer_harmonizer.lut.cuda_kernel import CudaBackend

    return CudaBackend(device, fallback=cpu_fallback)


def _cpu_kernel_backend(device: str) -> LutBackend:
    from layer_harmonizer.lut.cpu_kernel import CpuKernelBackend

    return CpuKernelBackend(device)


BACKENDS: dict[str, Callable[[str], LutBackend]] = {
    "cuda": _cuda_backend,
    "cpu-kernel": _cpu_kernel_backend,
    "torch": TorchBackend,
}
"""Backend factories by name, each called with the torch device name ("cpu", "cuda")."""

AUTO_ORDER: list[str] = ["cuda", "cpu-kernel", "torch"]
"""Order in which ``auto`` tries backends (``cuda`` only when the device is a CUDA device)."""


def backend_choices() -> tuple[str, ...]:
    return ("auto", *BACKENDS)


_AUTO: dict[str, tuple[LutBackend, str]] = {}
"""``auto``'s choice per device, with the reason: decided once per process."""


def _is_cuda(device: str) -> bool:
    return device == "auto" or device.startswith("cuda")


def _choose_auto(device: str) -> tuple[LutBackend, str]:
    skipped: list[str] = []
    for candidate in AUTO_ORDER:
        if candidate == "cuda" and not _is_cuda(device):
            skipped.append("cuda: the device is the CPU")
            continue
        try:
            backend = BACKENDS[candidate](device)
        except Exception as exc:
            log.warning("LUT backend %s unavailable (%s); trying the next", candidate, exc)
            skipped.append(f"{candidate}: {exc}")
            continue
        reason = "the fastest that works" if not skipped else "; ".join(skipped)
        return backend, reason
    return TorchBackend(device), "; ".join(skipped)


def auto_backend(device: str = "cpu") -> tuple[LutBackend, str]:
    """What ``auto`` picks for ``device`` and why (the skipped backends' reasons).

    The choice is made once per device and process, so an unavailable backend is reported by
    a single logged warning, not on every image.
    """
    key = "cuda" if _is_cuda(device) else "cpu"
    if key not in _AUTO:
        _AUTO[key] = _choose_auto(device)
    return _AUTO[key]


def get_backend(name: str = "auto", device: str = "cpu") -> LutBackend:
    """Return the backend called ``name``, or the first that works for ``auto``.

    Args:
        name: ``auto`` or a key of :data:`BACKENDS`.
        device: ``cpu``, ``cuda`` (``cuda:N``) or ``auto``: where the maps live; ``auto`` tries
            the CUDA kernel only for a CUDA device.
    """
    if name != "auto":
        if name not in BACKENDS:
            raise HarmonizeError(
                f"unknown LUT backend {name!r}; choose one of {', '.join(backend_choices())}"
            )
        return BACKENDS[name](device)
    return auto_backend(device)[0]

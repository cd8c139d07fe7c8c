"""The LUT kernel (``kernel.cu``) on an NVIDIA GPU, as a CuPy ``RawModule``.

CuPy compiles the same kernel text the CPU build uses with its NVRTC on first use (and caches
the binary in ``~/.cupy/kernel_cache``). The network's LUT maps are handed from torch to CuPy
through DLPack without a copy; the image travels to the device in its own dtype (uint8 is 4x
smaller than float32) and the result comes back the same way.

Tested CuPy range: 13.x and 14.x (``layer-harmonizer[cuda12]`` / ``[cuda13]``); the kernel
compiles with NVRTC 12 and 13 for sm_75 ... sm_90. **Not yet run on a GPU** (docs/kernel.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from layer_harmonizer.errors import HarmonizeError, InputError
from layer_harmonizer.lut.maps import GPU_BLOCK as BLOCK
from layer_harmonizer.lut.maps import LutMaps, check_kernel_call, mask_rows

log = logging.getLogger(__name__)

CUPY_MAJOR_RANGE = (13, 15)
"""Supported CuPy major versions: ``13 <= major < 15`` (the pyproject extras pin the same)."""
MAX_GRID_Y = 65535
KERNEL_NAMES = {
    np.dtype(np.float32): "lut_apply_f32",
    np.dtype(np.uint8): "lut_apply_u8",
    np.dtype(np.uint16): "lut_apply_u16",
}
"""The kernel's entry point per image dtype (:data:`~.maps.KERNEL_DTYPES`)."""
SELF_TEST_TOLERANCE = 1e-4


class CudaUnavailable(HarmonizeError):
    """CuPy is missing or too old/new, there is no working CUDA device, or the self-test failed."""


def kernel_source() -> str:
    """The kernel text, exactly as the CPU build includes it."""
    return (Path(__file__).resolve().parent / "kernel.cu").read_text(encoding="utf-8")


def import_cupy() -> ModuleType:
    """Import CuPy and check its version and that a CUDA device works."""
    try:
        import cupy
    except ImportError as exc:
        raise CudaUnavailable(
            "CuPy is not installed (in the harmonize clone: pip install '.[cuda12]' or '.[cuda13]')"
        ) from exc
    except Exception as exc:  # a broken CUDA install can fail the import in other ways
        raise CudaUnavailable(f"CuPy cannot be imported: {exc}") from exc
    try:
        major = int(cupy.__version__.split(".")[0])
    except ValueError:
        major = -1
    low, high = CUPY_MAJOR_RANGE
    if not low <= major < high:
        raise CudaUnavailable(
            f"CuPy {cupy.__version__} is outside the supported range >={low},<{high}"
        )
    try:
        available = cupy.cuda.is_available()
    except Exception as exc:
        raise CudaUnavailable(f"CuPy cannot query CUDA devices: {exc}") from exc
    if not available:
        raise CudaUnavailable("CuPy sees no CUDA device (no GPU or no driver)")
    return cupy


def _device_index(device: str) -> int:
    if device.startswith("cuda:"):
        try:
            return int(device.split(":", 1)[1])
        except ValueError:
            raise InputError(f"bad CUDA device name {device!r}") from None
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


class CudaBackend:
    """LUT backend running ``kernel.cu`` on a CUDA device through CuPy.

    Construction compiles the module and runs a small self-test against the CPU path; it raises
    :class:`CudaUnavailable` when any of that fails, so ``auto`` moves on to the CPU kernel.
    Out of device memory, :meth:`apply` retries in row bands of halving height and finally
    applies the LUTs on the CPU, logging a warning each time.

    Args:
        device: ``cuda`` or ``cuda:N``.
        fallback: makes the CPU backend of the self-test and of the last resort (the chain
            lives in :mod:`.backends`: :func:`~.backends.cpu_fallback`).
        self_test: run the self-test on construction.
    """

    name = "cuda"

    def __init__(
        self, device: str = "cuda", *, fallback: Callable[[], Any], self_test: bool = True
    ) -> None:
        self._fallback = fallback
        self.cp = import_cupy()
        self.device_id = _device_index(device)
        try:
            with self.cp.cuda.Device(self.device_id):
                module = self.cp.RawModule(code=kernel_source(), options=("--std=c++17",))
                self.kernels = {dt: module.get_function(n) for dt, n in KERNEL_NAMES.items()}
                self._no_mask = self.cp.zeros(1, dtype=self.cp.float32)
        except Exception as exc:  # CUDARuntimeError, CompileException, driver errors
            raise CudaUnavailable(f"cannot build the CUDA LUT kernel: {exc}") from exc
        if self_test:
            self._self_test()

    def _self_test(self) -> None:
        """An odd-sized soft-masked image through the GPU and the CPU path must agree."""
        rng = np.random.default_rng(0)
        gen = torch.Generator().manual_seed(0)
        steps = torch.softmax(torch.randn(1, 3, 5, 4, 8, generator=gen), dim=-1).cumsum(-1)
        intervals = torch.cat([torch.zeros_like(steps[..., :1]), steps], dim=-1)
        colors = torch.rand(1, 3, 5, 4, 8, generator=gen)
        maps = LutMaps(intervals.contiguous(), colors.contiguous())
        image = rng.random((9, 37, 3), dtype=np.float32)
        mask = rng.random((9, 37), dtype=np.float32)
        try:
            got = self.apply(image, mask, maps, 0.9)
        except Exception as exc:
            raise CudaUnavailable(f"CUDA LUT kernel self-test could not run: {exc}") from exc
        want = self._fallback().apply(image, mask, maps, 0.9)
        error = float(np.abs(got - want).max())
        if not error <= SELF_TEST_TOLERANCE:
            raise CudaUnavailable(f"CUDA LUT kernel self-test failed: max error {error:.3g}")

    def _device_maps(self, maps: LutMaps) -> tuple[Any, Any]:
        cp = self.cp
        tables = []
        for table in (maps.intervals[0], maps.colors[0]):
            t = table.detach().to(torch.float32).contiguous()
            if t.is_cuda and t.device.index == self.device_id:
                tables.append(cp.from_dlpack(t))  # zero copy: same device memory
            else:
                tables.append(cp.asarray(t.cpu().numpy()))
        return tables[0], tables[1]

    def apply(
        self, image: np.ndarray, mask: np.ndarray | None, maps: LutMaps, strength: float
    ) -> np.ndarray:
        """Image ``(H, W, 3)`` uint8/uint16/float32 in, a new array of the same dtype out."""
        check_kernel_call(image, mask, maps)
        h = image.shape[0]
        cp = self.cp
        band = min(h, MAX_GRID_Y * BLOCK[1])
        with cp.cuda.Device(self.device_id):
            while True:
                try:
                    return self._run(image, mask, maps, strength, band)
                except cp.cuda.memory.OutOfMemoryError:
                    cp.get_default_memory_pool().free_all_blocks()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    if band <= 1:
                        break
                    band = max(1, band // 2)
                    log.warning("GPU out of memory: applying the LUTs in bands of %d rows", band)
        log.warning("GPU out of memory even for single rows: applying the LUTs on the CPU")
        return self._fallback().apply(image, mask, maps, strength)

    def _run(
        self,
        image: np.ndarray,
        mask: np.ndarray | None,
        maps: LutMaps,
        strength: float,
        band: int,
    ) -> np.ndarray:
        cp = self.cp
        h, w, _ = image.shape
        intervals, colors = self._device_maps(maps)
        rows, cols, knots = intervals.shape[1], intervals.shape[2], colors.shape[3]
        kernel = self.kernels[image.dtype]
        out = np.empty_like(image)
        for top in range(0, h, band):
            bottom = min(h, top + band)
            src = cp.asarray(np.ascontiguousarray(image[top:bottom]))
            alpha = self._no_mask if mask is None else cp.asarray(mask_rows(mask, top, bottom))
            dst = cp.empty_like(src)
            grid = ((w + BLOCK[0] - 1) // BLOCK[0], (bottom - top + BLOCK[1] - 1) // BLOCK[1])
            kernel(
                grid,
                BLOCK,
                (
                    src,
                    alpha,
                    np.int32(mask is not None),
                    intervals,
                    colors,
                    dst,
                    np.int32(bottom - top),
                    np.int32(w),
                    np.int32(top),
                    np.int32(h),
                    np.int32(rows),
                    np.int32(cols),
                    np.int32(knots),
                    np.float32(strength),
                ),
            )
            out[top:bottom] = dst.get()
            del src, alpha, dst
        return out

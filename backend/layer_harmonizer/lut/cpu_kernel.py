"""The CUDA LUT kernel (``kernel.cu``) compiled for the CPU and called through ctypes.

``cpu_entry.cpp`` includes ``cpu_shim.h`` and ``kernel.cu`` into one translation unit; the
system C++ compiler builds it on first use into
``<cache dir>/kernels/liblut-<key>.<so|dylib|dll>``, where ``key`` hashes the three sources,
the compiler's path and ``--version`` text and the flags, so an edited kernel or another
compiler gets a fresh build. The build goes to a temporary file that is renamed into place, so
concurrent processes never load a half-written library.

Environment:
    ``HARMONIZE_CXX`` (else ``CXX``, else ``c++``/``g++``/``clang++`` on PATH): the compiler.
    ``HARMONIZE_LUT_THREADS``: OpenMP threads per call (default: torch's thread count).
    ``HARMONIZE_CACHE_DIR``: where the library is cached (see :mod:`layer_harmonizer.paths`).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layer_harmonizer import paths
from layer_harmonizer.errors import HarmonizeError, InputError
from layer_harmonizer.lut.maps import LutMaps, check_kernel_call, mask_band_rows, mask_rows

log = logging.getLogger(__name__)

KERNEL_DIR = Path(__file__).resolve().parent
SOURCES = ("kernel.cu", "cpu_shim.h", "cpu_entry.cpp")
ABI_VERSION = 1
BASE_FLAGS = ("-std=c++17", "-O3", "-fPIC", "-shared")
NATIVE_FLAGS = ("-march=native",)
OPENMP_FLAGS = ("-fopenmp",)
WARNING_FLAGS = ("-Wall", "-Wextra", "-Werror")
"""Used by the tests' warning check only: a user's newer compiler may warn, and must still build."""
ATTEMPTS = (
    (*NATIVE_FLAGS, *OPENMP_FLAGS),
    OPENMP_FLAGS,
    (*NATIVE_FLAGS, "-Wno-unknown-pragmas"),
    ("-Wno-unknown-pragmas",),
)
"""Flag sets tried in order: the first that builds wins (no OpenMP -> 1 thread, with a warning;
no ``-march=native`` for compilers that reject it)."""
PRODUCTION_BLOCK = (256, 1)
"""Block shape of normal CPU calls: row strips, the fastest shape measured here (docs/kernel.md)."""

_TYPES = {np.dtype(np.float32): "f32", np.dtype(np.uint8): "u8", np.dtype(np.uint16): "u16"}


class KernelBuildError(HarmonizeError):
    """The CPU kernel could not be compiled or loaded (no compiler, compile error, bad library)."""


@dataclass(frozen=True)
class CompiledKernel:
    """A loaded CPU build: the ctypes library, where it lives and how it was built."""

    library: ctypes.CDLL
    path: Path
    compiler: str
    openmp: bool


def find_compiler() -> str | None:
    """Path of the C++ compiler to use, or None when there is none."""
    for env in ("HARMONIZE_CXX", "CXX"):
        value = os.environ.get(env)
        if value:
            found = shutil.which(value)
            if found is None:
                raise KernelBuildError(f"${env}={value!r} is not an executable compiler")
            return found
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def lut_threads(threads: int | None = None) -> int:
    """OpenMP threads per call: ``threads``, else ``$HARMONIZE_LUT_THREADS``, else torch's."""
    if threads is None:
        value = os.environ.get("HARMONIZE_LUT_THREADS")
        if value:
            try:
                threads = int(value)
            except ValueError:
                raise InputError(
                    f"HARMONIZE_LUT_THREADS must be a positive integer, got {value!r}"
                ) from None
        else:
            import torch

            threads = torch.get_num_threads()
    if threads < 1:
        raise InputError(f"LUT thread count must be >= 1, got {threads}")
    return threads


def _library_suffix() -> str:
    if sys.platform == "win32":
        return ".dll"
    return ".dylib" if sys.platform == "darwin" else ".so"


def _compiler_identity(compiler: str) -> str:
    try:
        done = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelBuildError(f"cannot run the compiler {compiler}: {exc}") from exc
    return done.stdout + done.stderr


def build_key(compiler: str, flags: tuple[str, ...]) -> str:
    """Hash of the sources, the compiler (path and version text) and the flags."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (KERNEL_DIR / name).read_bytes() + b"\0")
    digest.update(compiler.encode() + b"\0" + _compiler_identity(compiler).encode() + b"\0")
    digest.update(" ".join(flags).encode() + f"\0abi{ABI_VERSION}".encode())
    return digest.hexdigest()[:20]


def _compile(compiler: str, flags: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    command = [compiler, *flags, "-o", tmp, str(KERNEL_DIR / "cpu_entry.cpp")]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise KernelBuildError(
                f"compiling the CPU LUT kernel failed ({' '.join(command)}):\n"
                + (done.stderr or done.stdout)[-2000:]
            )
        os.replace(tmp, target)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelBuildError(f"cannot run {compiler}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _bind(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
        version = lib.lut_cpu_abi_version()
    except (OSError, AttributeError) as exc:
        raise KernelBuildError(f"cannot load the CPU LUT kernel {path}: {exc}") from exc
    if version != ABI_VERSION:
        raise KernelBuildError(f"{path} has ABI {version}, expected {ABI_VERSION}")
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    for suffix in _TYPES.values():
        fn = getattr(lib, f"lut_cpu_{suffix}")
        fn.restype = i32
        fn.argtypes = [ptr, ptr, i32, ptr, ptr, ptr, *[i32] * 7, ctypes.c_float, i32, i32, i32]
    return lib


def build(compiler: str | None = None, *, cache: Path | None = None) -> CompiledKernel:
    """Compile (or reuse the cached build of) the CPU kernel and load it.

    Tries the flag sets of :data:`ATTEMPTS` in order; a compiler without OpenMP support (e.g.
    Apple clang) gets a single-threaded build with a warning. Raises :class:`KernelBuildError`
    when there is no compiler or no attempt works.
    """
    compiler = compiler or find_compiler()
    if compiler is None:
        raise KernelBuildError(
            "no C++ compiler found (install g++ or clang++, or set $HARMONIZE_CXX)"
        )
    folder = (cache or paths.cache_dir()) / "kernels"
    errors = []
    for extra in ATTEMPTS:
        flags = (*BASE_FLAGS, *extra)
        target = folder / f"liblut-{build_key(compiler, flags)}{_library_suffix()}"
        try:
            if not target.exists():
                log.info("building the CPU LUT kernel with %s into %s", compiler, target)
                _compile(compiler, flags, target)
            lib = _bind(target)
        except KernelBuildError as exc:
            errors.append(str(exc))
            continue
        openmp = OPENMP_FLAGS[0] in flags
        if not openmp:
            log.warning("the C++ compiler has no OpenMP: the CPU LUT kernel runs on 1 thread")
        return CompiledKernel(lib, target, compiler, openmp)
    raise KernelBuildError("\n".join(errors))


_LOCK = threading.Lock()
_LOADED: CompiledKernel | None = None


def load() -> CompiledKernel:
    """The process-wide CPU kernel, built or loaded once."""
    global _LOADED
    with _LOCK:
        if _LOADED is None:
            _LOADED = build()
        return _LOADED


def _ptr(arr: np.ndarray | None) -> int | None:
    return None if arr is None else arr.ctypes.data


def _check_call(
    image: np.ndarray, mask: np.ndarray | None, maps: LutMaps
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`check_kernel_call`, then the maps of the one image as float32 numpy tables."""
    check_kernel_call(image, mask, maps)
    cpu = maps.to("cpu")
    return cpu.intervals[0].numpy(), cpu.colors[0].numpy()


def run(
    kernel: CompiledKernel,
    image: np.ndarray,
    mask: np.ndarray | None,
    maps: LutMaps,
    strength: float,
    *,
    threads: int | None = None,
    block: tuple[int, int] = PRODUCTION_BLOCK,
    rows: tuple[int, int] | None = None,
) -> np.ndarray:
    """Run the CPU kernel: the arguments of :meth:`CpuKernelBackend.apply`, plus

    Args:
        threads: OpenMP threads (default :func:`lut_threads`).
        block: emulated CUDA block shape ``(x, y)``; the result does not depend on it.
        rows: ``(first_row, full_height)`` when ``image`` is a band of a taller image.
    """
    intervals, colors = _check_call(image, mask, maps)
    image = np.ascontiguousarray(image)
    mask = None if mask is None else np.ascontiguousarray(mask)
    h, w, _ = image.shape
    first, height = rows if rows is not None else (0, h)
    out = np.empty_like(image)
    fn = getattr(kernel.library, f"lut_cpu_{_TYPES[image.dtype]}")
    step = mask_band_rows(mask, w)  # an integer mask is scaled to float32 band by band
    for top in range(0, h, step):
        bottom = min(h, top + step)
        band_mask = mask_rows(mask, top, bottom)
        status = fn(
            _ptr(image[top:bottom]),
            _ptr(band_mask),
            int(mask is not None),
            _ptr(intervals),
            _ptr(colors),
            _ptr(out[top:bottom]),
            bottom - top,
            w,
            first + top,
            height,
            intervals.shape[1],
            intervals.shape[2],
            colors.shape[3],
            float(strength),
            block[0],
            block[1],
            lut_threads(threads),
        )
        if status != 0:
            raise InputError(f"the CPU LUT kernel rejected block {block} / threads {threads}")
    return out


class CpuKernelBackend:
    """LUT backend running the compiled kernel on the CPU (see the module docstring).

    Raises :class:`KernelBuildError` on construction when the kernel cannot be built.
    """

    name = "cpu-kernel"

    def __init__(self, device: str = "cpu", *, threads: int | None = None) -> None:
        del device  # the maps are copied to the CPU whatever device they are on
        self.kernel = load()
        self.threads = threads

    def apply(
        self, image: np.ndarray, mask: np.ndarray | None, maps: LutMaps, strength: float
    ) -> np.ndarray:
        """Image ``(H, W, 3)`` uint8/uint16/float32 in, a new array of the same dtype out."""
        return run(self.kernel, image, mask, maps, strength, threads=self.threads)

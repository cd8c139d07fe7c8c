"""The fused LUT kernel (backend/layer_harmonizer/lut/kernel.cu): CPU build vs the torch
reference, build cache, backend choice, nvcc/NVRTC compile checks, and the CuPy backend where
a CUDA device exists."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from layer_harmonizer.errors import InputError
from layer_harmonizer.lut import LutMaps, apply_luts, backends
from layer_harmonizer.lut import cpu_kernel as ck
from layer_harmonizer.lut.backends import TorchBackend, auto_backend, cpu_fallback, get_backend
from layer_harmonizer.lut.maps import GPU_BLOCK, check_kernel_limits
from layer_harmonizer.model import AICTNet
from layer_harmonizer.pipeline import harmonize
from tests.conftest import blob_mask, random_image
from tests.test_lut_reference import gather_oracle, random_maps

KERNEL = Path(ck.__file__).resolve().parent / "kernel.cu"
SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}
BLOCKS = [ck.PRODUCTION_BLOCK, GPU_BLOCK, (1, 1), (5, 3)]
MAX_REGISTERS = 64
"""ptxas register cap per thread for the CI compile check (measured 32 ... 62)."""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> ck.CompiledKernel:
    """A fresh build in a temporary cache (also exercises the compiler path every run)."""
    if ck.find_compiler() is None:
        pytest.skip("no C++ compiler on this machine: the CPU kernel cannot be built")
    return ck.build(cache=tmp_path_factory.mktemp("kernel-cache"))


@pytest.fixture
def fresh_auto(monkeypatch: pytest.MonkeyPatch, kernel: ck.CompiledKernel) -> None:
    """Forget ``auto``'s cached choice; the process-wide CPU kernel is the test build."""
    monkeypatch.setattr(backends, "_AUTO", {})
    monkeypatch.setattr(ck, "_LOADED", kernel)


def torch_reference(
    image: np.ndarray, mask: np.ndarray | None, maps: LutMaps, strength: float
) -> np.ndarray:
    """The float32 torch reference (grid_sample) on an ``(H, W, 3)`` image in [0, 1]."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    m = None if mask is None else torch.from_numpy(mask)[None, None]
    return apply_luts(x, maps, m, strength)[0].permute(1, 2, 0).numpy()


def make_mask(kind: str, h: int, w: int) -> np.ndarray | None:
    if kind == "none":
        return None
    if kind == "zeros":
        return np.zeros((h, w), np.float32)
    if kind == "ones":
        return np.ones((h, w), np.float32)
    mask = np.random.default_rng(h * 31 + w).random((h, w), dtype=np.float32)
    mask[mask < 0.25] = 0.0  # soft, with exact zeros and exact ones
    mask[mask > 0.9] = 1.0
    return mask


def with_range_ends(image: np.ndarray) -> np.ndarray:
    """Put the exact ends of the value range (0 and full scale) into the first pixels."""
    top = np.iinfo(image.dtype).max if image.dtype.kind == "u" else 1.0
    flat = image.reshape(-1)
    flat[: min(6, flat.size)] = [0, top, 0, top, top, 0][: min(6, flat.size)]
    return image


@pytest.mark.parametrize("size", [(1, 1), (1, 37), (7, 3), (4097, 13)])
@pytest.mark.parametrize("mask_kind", ["none", "zeros", "ones", "soft"])
@pytest.mark.parametrize("block", [ck.PRODUCTION_BLOCK, GPU_BLOCK])
def test_float_matches_torch_reference(
    kernel: ck.CompiledKernel, size: tuple[int, int], mask_kind: str, block: tuple[int, int]
) -> None:
    h, w = size
    image = with_range_ends(random_image(h, w, np.float32, seed=h + w))
    mask = make_mask(mask_kind, h, w)
    maps = random_maps(grid=(9, 6), seed=h)
    got = ck.run(kernel, image, mask, maps, 0.85, block=block)
    want = torch_reference(image, mask, maps, 0.85)
    assert got.dtype == np.float32 and got.shape == image.shape
    assert np.abs(got - want).max() <= 1e-4
    if mask is not None:
        assert np.array_equal(got[mask == 0], image[mask == 0])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("size", [(1, 1), (1, 37), (7, 3), (4097, 13)])
@pytest.mark.parametrize("mask_kind", ["none", "zeros", "soft"])
def test_integer_within_one_level_of_torch_backend(
    kernel: ck.CompiledKernel, dtype: type, size: tuple[int, int], mask_kind: str
) -> None:
    h, w = size
    image = with_range_ends(random_image(h, w, dtype, seed=h * w))
    mask = make_mask(mask_kind, h, w)
    maps = random_maps(grid=(9, 6), seed=w)
    got = ck.run(kernel, image, mask, maps, 1.0, block=GPU_BLOCK)
    want = TorchBackend().apply(image, mask, maps, 1.0)
    assert got.dtype == image.dtype
    assert np.abs(got.astype(np.int64) - want.astype(np.int64)).max() <= 1
    if mask is not None:
        assert np.array_equal(got[mask == 0], image[mask == 0])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_paper_size_grid_matches_float64_oracle(kernel: ck.CompiledKernel, dtype: type) -> None:
    """256 x 256 grid of spatially independent steep LUTs against exact float64 arithmetic.

    (Against the float32 torch reference such maps differ by up to ~2e-4: grid_sample's own
    float32 grid coordinates are off by ~1e-5 cells, and neighbouring random LUTs differ by
    O(1); the kernel splits the grid position exactly in integers.)
    """
    h, w = 151, 103
    image = with_range_ends(random_image(h, w, dtype, seed=7))
    mask = blob_mask(h, w)
    maps = random_maps(grid=(256, 256), seed=3)
    got = ck.run(kernel, image, mask, maps, 1.0).astype(np.float64) / SCALE[np.dtype(dtype)]
    x = torch.from_numpy(image.astype(np.float64) / SCALE[np.dtype(dtype)]).permute(2, 0, 1)
    want = gather_oracle(x[None], maps, torch.from_numpy(mask).double()[None, None])
    want = want[0].permute(1, 2, 0).numpy()
    rounding = 0.0 if dtype == np.float32 else 0.5 / SCALE[np.dtype(dtype)]
    assert np.abs(got - want).max() <= 5e-5 + rounding


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_launch_shape_and_threads_do_not_change_a_bit(
    kernel: ck.CompiledKernel, block: tuple[int, int], threads: int
) -> None:
    """The grid-emulated CUDA launch (any block shape, as on the GPU) gives identical output."""
    image = random_image(61, 45, np.float32, seed=1)
    mask = blob_mask(61, 45)
    maps = random_maps(grid=(16, 16), seed=1)
    base = ck.run(kernel, image, mask, maps, 0.7, block=(64, 1), threads=1)
    assert np.array_equal(
        ck.run(kernel, image, mask, maps, 0.7, block=block, threads=threads), base
    )


def test_row_bands_equal_whole_image(kernel: ck.CompiledKernel) -> None:
    image = random_image(53, 29, np.uint16, seed=2)
    mask = blob_mask(53, 29)
    maps = random_maps(grid=(7, 5))
    whole = ck.run(kernel, image, mask, maps, 1.0)
    bands = [
        ck.run(kernel, image[a:b], mask[a:b], maps, 1.0, rows=(a, 53)) for a, b in ((0, 1), (1, 53))
    ]
    assert np.array_equal(np.concatenate(bands), whole)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_identity_maps_and_zero_strength_keep_the_image(
    kernel: ck.CompiledKernel, dtype: type
) -> None:
    image = with_range_ends(random_image(17, 23, dtype, seed=4))
    identity = LutMaps.identity((3, 4))
    same = ck.run(kernel, image, None, identity, 1.0)
    tolerance = 0 if dtype != np.float32 else 1e-6
    assert np.abs(same.astype(np.float64) - image.astype(np.float64)).max() <= tolerance
    assert np.array_equal(ck.run(kernel, image, None, random_maps(), 0.0), image)


def test_knot_count_is_a_parameter(kernel: ck.CompiledKernel) -> None:
    image = random_image(19, 21, np.float32, seed=5)
    for knots in (2, 5, 16):
        maps = random_maps(grid=(4, 6), knots=knots, seed=knots)
        want = torch_reference(image, None, maps, 1.0)
        assert np.abs(ck.run(kernel, image, None, maps, 1.0) - want).max() <= 1e-4


def test_bad_arguments_raise_input_errors(kernel: ck.CompiledKernel) -> None:
    maps = random_maps()
    image = random_image(4, 5, np.uint8)
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        ck.run(kernel, image.astype(np.int32), None, maps, 1.0)
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        ck.run(kernel, image[..., :2], None, maps, 1.0)
    with pytest.raises(InputError, match="mask"):
        ck.run(kernel, image, np.ones((5, 4), np.float32), maps, 1.0)
    with pytest.raises(InputError, match="mask"):
        ck.run(kernel, image, np.ones((4, 5), np.float64), maps, 1.0)
    with pytest.raises(InputError, match="one image"):
        ck.run(kernel, image, None, random_maps(batch=2), 1.0)
    with pytest.raises(InputError, match="too large"):
        check_kernel_limits(10_000_000, 300, (3, 256, 256, 9))
    with pytest.raises(InputError, match="block"):
        ck.run(kernel, image, None, maps, 1.0, block=(0, 1))


def test_thread_count_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARMONIZE_LUT_THREADS", "3")
    assert ck.lut_threads() == 3
    assert ck.lut_threads(1) == 1
    monkeypatch.setenv("HARMONIZE_LUT_THREADS", "many")
    with pytest.raises(InputError, match="HARMONIZE_LUT_THREADS"):
        ck.lut_threads()
    monkeypatch.setenv("HARMONIZE_LUT_THREADS", "0")
    with pytest.raises(InputError, match=">= 1"):
        ck.lut_threads()


def test_build_is_cached_by_source_compiler_and_flags(
    kernel: ck.CompiledKernel, tmp_path: Path
) -> None:
    again = ck.build(cache=kernel.path.parent.parent)
    assert again.path == kernel.path  # reused, not rebuilt
    flags = (*ck.BASE_FLAGS, *ck.NATIVE_FLAGS, *ck.OPENMP_FLAGS)
    key = ck.build_key(kernel.compiler, flags)
    assert key in kernel.path.name
    assert ck.build_key(kernel.compiler, (*flags, "-DX")) != key
    assert list(kernel.path.parent.glob("*.tmp")) == []  # no half-written leftovers


def test_cpu_build_is_warning_free(kernel: ck.CompiledKernel) -> None:
    """Users' builds do not use -Werror (a newer compiler must still build); CI checks here."""
    command = [kernel.compiler, "-std=c++17", "-fsyntax-only", *ck.OPENMP_FLAGS]
    command += [*ck.WARNING_FLAGS, str(ck.KERNEL_DIR / "cpu_entry.cpp")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr


def test_unusable_compiler_raises_build_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARMONIZE_CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(ck.KernelBuildError, match="HARMONIZE_CXX"):
        ck.find_compiler()
    with pytest.raises(ck.KernelBuildError, match="failed"):
        ck.build(shutil.which("false") or "/bin/false", cache=tmp_path)
    assert not list((tmp_path / "kernels").glob("*"))


def test_auto_prefers_cpu_kernel_on_cpu(fresh_auto: None) -> None:
    backend, reason = auto_backend("cpu")
    assert backend.name == "cpu-kernel"
    assert "cuda" in reason and "CPU" in reason
    assert get_backend("auto", "cpu") is backend  # decided once
    assert get_backend("cpu-kernel", "cpu").name == "cpu-kernel"


def test_auto_without_compiler_warns_once_and_uses_torch(
    fresh_auto: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ck, "_LOADED", None)
    monkeypatch.setattr(ck, "find_compiler", lambda: None)
    image, mask = random_image(8, 9, np.uint8), blob_mask(8, 9)
    with caplog.at_level(logging.WARNING, logger="layer_harmonizer.lut.backends"):
        for _ in range(3):
            assert get_backend("auto", "cpu").name == "torch"
            get_backend("auto", "cpu").apply(image, mask, random_maps(), 1.0)
    warnings = [r for r in caplog.records if "cpu-kernel" in r.getMessage()]
    assert len(warnings) == 1 and "compiler" in warnings[0].getMessage()


def test_auto_on_cuda_without_a_usable_gpu_falls_back(fresh_auto: None) -> None:
    """Here (no CuPy or no device) ``auto`` for a CUDA device must still give a CPU backend."""
    try:
        import cupy

        if cupy.cuda.is_available():
            pytest.skip("a CUDA device exists: covered by the gpu tests")
    except ImportError:
        pass
    backend, reason = auto_backend("cuda")
    assert backend.name == "cpu-kernel"
    assert reason.startswith("cuda:")


def test_the_kernel_modules_import_only_the_contract_from_lut() -> None:
    """No import cycle: the CUDA and CPU kernels take from ``lut`` only :mod:`.maps`; the
    fallback chain between backends lives in :mod:`.backends`, which imports them."""
    import ast

    for module in ("cuda_kernel", "cpu_kernel"):
        tree = ast.parse((KERNEL.parent / f"{module}.py").read_text(encoding="utf-8"))
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        from_lut = {n for n in names if n.startswith("layer_harmonizer.lut")}
        assert from_lut == {"layer_harmonizer.lut.maps"}, (module, from_lut)


def test_pipeline_with_cpu_kernel_matches_torch(light_model: AICTNet, fresh_auto: None) -> None:
    image = random_image(97, 131, np.uint8, seed=9)
    mask = blob_mask(97, 131)
    fast = harmonize(image, mask, model=light_model, lut_backend="cpu-kernel")
    ref = harmonize(image, mask, model=light_model, lut_backend="torch")
    assert np.abs(fast.astype(int) - ref.astype(int)).max() <= 1
    assert np.array_equal(fast[mask == 0], image[mask == 0])


# ---- GPU compile checks (no GPU needed) -------------------------------------------------------

SM_ARCHS = ["75", "80", "86", "89", "90"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", SM_ARCHS)
def test_nvcc_compiles_without_warnings_or_spills(arch: str, tmp_path: Path) -> None:
    nvcc = shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    )
    if nvcc is None:
        pytest.skip("nvcc is not installed (the CUDA toolkit is optional; CI has it)")
    command = [
        nvcc,
        f"-arch=sm_{arch}",
        "-cubin",
        "-o",
        str(tmp_path / "kernel.cubin"),
        "--resource-usage",
        "-Werror",
        "all-warnings",
        "-Xptxas",
        "-warn-spills,-warn-lmem-usage",
        str(KERNEL),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    entries = re.findall(r"Compiling entry function '(\w+)'", log)
    assert sorted(entries) == ["lut_apply_f32", "lut_apply_u16", "lut_apply_u8"], log
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(spills) == 3 and all(s == ("0", "0") for s in spills), log
    registers = [int(r) for r in re.findall(r"Used (\d+) registers", log)]
    assert len(registers) == 3 and max(registers) <= MAX_REGISTERS, log


def test_nvrtc_compiles_the_kernel_text() -> None:
    """The compiler CuPy uses at run time; works without a GPU (skipped when not installed)."""
    nvrtc = pytest.importorskip(
        "cupy_backends.cuda.libs.nvrtc", reason="CuPy (harmonize[cuda12|cuda13]) not installed"
    )
    try:
        nvrtc.getVersion()
    except Exception as exc:  # the NVRTC library itself is a separate wheel
        pytest.skip(f"NVRTC library not loadable: {exc}")
    source = KERNEL.read_text(encoding="utf-8")
    for arch in SM_ARCHS:
        prog = nvrtc.createProgram(source, "kernel.cu", [], [])
        try:
            try:
                nvrtc.compileProgram(prog, [f"-arch=sm_{arch}", "--std=c++17"])
            except nvrtc.NVRTCError as exc:
                pytest.fail(f"sm_{arch}: {exc}\n{nvrtc.getProgramLog(prog)}")
            assert len(nvrtc.getCUBIN(prog)) > 1000
        finally:
            nvrtc.destroyProgram(prog)


# ---- CudaBackend glue on the CPU: a stand-in for CuPy that launches the CPU build ----------


class _HostArray(np.ndarray):
    """A numpy array posing as a CuPy device array (``.get()`` copies it back)."""

    def get(self) -> np.ndarray:
        return np.array(self)


class FakeCupy:
    """Just enough of CuPy for :class:`CudaBackend`: "device" arrays are host arrays and a
    kernel launch runs the CPU build of the same entry point, checking the launch arguments."""

    __version__ = "14.0.0"
    float32 = np.float32

    class OutOfMemoryError(Exception):
        pass

    def __init__(self, kernel: ck.CompiledKernel, limit_bytes: int | None = None) -> None:
        self.kernel, self.limit, self.launches = kernel, limit_bytes, []
        fake = self
        self.cuda = type(
            "cuda",
            (),
            {
                "Device": staticmethod(lambda index: contextlib.nullcontext()),
                "is_available": staticmethod(lambda: True),
                "memory": type("memory", (), {"OutOfMemoryError": FakeCupy.OutOfMemoryError}),
            },
        )
        self.RawModule = lambda code, options: type(
            "Module", (), {"get_function": lambda _, name: fake._launcher(code, name)}
        )()

    def _check(self, arr: np.ndarray) -> np.ndarray:
        if self.limit is not None and arr.nbytes > self.limit:
            raise FakeCupy.OutOfMemoryError(f"{arr.nbytes} bytes")
        return arr.view(_HostArray)

    def asarray(self, arr: np.ndarray) -> np.ndarray:
        return self._check(np.ascontiguousarray(arr))

    def zeros(self, n: int, dtype: type) -> np.ndarray:
        return self._check(np.zeros(n, dtype))

    def empty_like(self, arr: np.ndarray) -> np.ndarray:
        return self._check(np.empty_like(arr))

    def get_default_memory_pool(self) -> object:
        return type("Pool", (), {"free_all_blocks": lambda _: None})()

    def _launcher(self, code: str, name: str) -> object:
        assert code == KERNEL.read_text(encoding="utf-8")
        fn = getattr(self.kernel.library, name.replace("lut_apply_", "lut_cpu_"))

        def launch(grid: tuple[int, int], block: tuple[int, int], args: tuple) -> None:
            assert isinstance(args[2], np.int32) and isinstance(args[-1], np.float32)
            assert all(isinstance(a, np.int32) for a in args[6:13])
            band, width = int(args[6]), int(args[7])
            assert grid[0] * block[0] >= width and grid[1] * block[1] >= band
            assert (grid[0] - 1) * block[0] < width and (grid[1] - 1) * block[1] < band
            self.launches.append((band, width))
            raw = [a.ctypes.data if isinstance(a, np.ndarray) else a.item() for a in args]
            assert fn(*raw, block[0], block[1], 1) == 0

        return launch


def _cuda_with(
    monkeypatch: pytest.MonkeyPatch, kernel: ck.CompiledKernel, limit: int | None = None
) -> tuple[object, FakeCupy]:
    from layer_harmonizer.lut import cuda_kernel

    fake = FakeCupy(kernel, limit)
    monkeypatch.setattr(cuda_kernel, "import_cupy", lambda: fake)
    monkeypatch.setattr(ck, "_LOADED", kernel)
    # runs the self-test through the fake
    return cuda_kernel.CudaBackend("cuda", fallback=cpu_fallback), fake


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_cuda_backend_launch_arguments_match_the_kernel(
    monkeypatch: pytest.MonkeyPatch, kernel: ck.CompiledKernel, dtype: type
) -> None:
    backend, fake = _cuda_with(monkeypatch, kernel)
    image = random_image(41, 70, dtype, seed=8)
    mask = blob_mask(41, 70)
    maps = random_maps(grid=(8, 8))
    for m in (mask, None):
        got = backend.apply(image, m, maps, 0.8)  # type: ignore[attr-defined]
        assert np.array_equal(got, ck.run(kernel, image, m, maps, 0.8))
    assert fake.launches[-1] == (41, 70)


def test_cuda_out_of_memory_bands_then_cpu(
    monkeypatch: pytest.MonkeyPatch, kernel: ck.CompiledKernel, caplog: pytest.LogCaptureFixture
) -> None:
    image = random_image(64, 50, np.float32, seed=6)
    maps = random_maps(grid=(8, 8))
    want = ck.run(kernel, image, None, maps, 1.0)
    backend, fake = _cuda_with(monkeypatch, kernel)
    fake.limit = 16 * 50 * 3 * 4  # room for 16 rows of the image
    with caplog.at_level(logging.WARNING, logger="layer_harmonizer.lut.cuda_kernel"):
        assert np.array_equal(backend.apply(image, None, maps, 1.0), want)  # type: ignore[attr-defined]
    assert {band for band, _ in fake.launches[-4:]} == {16}
    assert "bands of 16 rows" in caplog.text
    fake.limit = 10  # not even one row: the CPU does it
    assert np.array_equal(backend.apply(image, None, maps, 1.0), want)  # type: ignore[attr-defined]
    assert "on the CPU" in caplog.text


# ---- CuPy on a real CUDA device ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda_backend() -> object:
    try:
        from layer_harmonizer.lut.cuda_kernel import CudaBackend, CudaUnavailable
    except ImportError as exc:  # pragma: no cover - the module imports only torch/numpy
        pytest.skip(f"cuda_kernel not importable: {exc}")
    try:
        return CudaBackend("cuda", fallback=cpu_fallback)
    except CudaUnavailable as exc:
        pytest.skip(f"no usable CUDA device for CuPy: {exc}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("mask_kind", ["none", "zeros", "soft"])
def test_cuda_matches_cpu_kernel(
    cuda_backend: object, kernel: ck.CompiledKernel, dtype: type, mask_kind: str
) -> None:
    for h, w in ((1, 1), (7, 3), (4097, 13), (257, 1000)):
        image = with_range_ends(random_image(h, w, dtype, seed=h))
        mask = make_mask(mask_kind, h, w)
        maps = random_maps(grid=(64, 64), seed=w)
        got = cuda_backend.apply(image, mask, maps, 0.9)  # type: ignore[attr-defined]
        want = ck.run(kernel, image, mask, maps, 0.9, block=GPU_BLOCK)
        limit = 1e-5 if dtype == np.float32 else 1
        assert np.abs(got.astype(np.float64) - want.astype(np.float64)).max() <= limit
        if mask is not None:
            assert np.array_equal(got[mask == 0], image[mask == 0])


@pytest.mark.gpu
def test_cuda_takes_maps_on_the_device_and_bands(cuda_backend: object) -> None:
    image = random_image(301, 77, np.float32, seed=3)
    maps = random_maps(grid=(256, 256), seed=3)
    on_gpu = (
        LutMaps(maps.intervals.cuda(), maps.colors.cuda()) if torch.cuda.is_available() else maps
    )
    whole = cuda_backend.apply(image, None, on_gpu, 1.0)  # type: ignore[attr-defined]
    banded = cuda_backend._run(image, None, on_gpu, 1.0, 50)  # type: ignore[attr-defined]
    assert np.array_equal(whole, banded)
    want = torch_reference(image, None, maps, 1.0)
    assert np.abs(whole - want).max() <= 3e-4

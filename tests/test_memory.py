"""Memory of the in-process path: integer masks are never copied to float at full size (the LUT
backends scale them band by band, the network's input is resized from the rows it samples),
files are read and written without extra copies of the image, and ``harmonize run`` holds at
most the image, its mask and the result at once.

Allocations are counted with :mod:`tracemalloc`, which sees numpy's and OpenCV's arrays (not
torch's own allocator, which the network uses at 256 x 256 only). Nothing here is timed.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from layer_harmonizer.arrays import check_mask, to_unit_float, validate_mask
from layer_harmonizer.cli import main
from layer_harmonizer.errors import InputError
from layer_harmonizer.image_files import read_image, write_image
from layer_harmonizer.lut import backends, maps
from layer_harmonizer.lut.cpu_kernel import KernelBuildError
from layer_harmonizer.model import AICTNet
from layer_harmonizer.model.weights import save_weights
from layer_harmonizer.pipeline import harmonize, predict, resize_mask
from tests.conftest import blob_mask, random_image
from tests.test_lut_reference import random_maps

MIB = 2**20


def peak_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` and the most bytes it had allocated at once beyond what existed before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def backend(name: str) -> backends.LutBackend:
    try:
        return backends.get_backend(name, "cpu")
    except KernelBuildError as exc:
        pytest.skip(f"the CPU kernel does not build here: {exc}")


def photo_like(h: int, w: int) -> np.ndarray:
    """An 8-bit RGB image that compresses like a photo (smooth field, a little noise)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.stack([xx / w, yy / h, 1 - xx * yy / (h * w)], axis=2) * 200 + 20
    noise = np.random.default_rng(0).normal(0, 3, (h, w, 3)).astype(np.float32)
    return np.clip(field + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["torch", "cpu-kernel"])
@pytest.mark.parametrize("image_dtype", [np.uint8, np.uint16, np.float32])
def test_integer_masks_give_the_float_masks_result_in_any_band(
    name: str, image_dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    lut = backend(name)
    image = random_image(37, 23, image_dtype, seed=4)
    soft = blob_mask(37, 23)
    lut_maps = random_maps(1, (5, 4), 8, seed=2)
    monkeypatch.setattr(maps, "MASK_BAND_PIXELS", 5 * 23)  # bands of 5 rows, the last of 2
    for mask in (
        (soft * 255).round().astype(np.uint8),
        (soft * 65535).round().astype(np.uint16),
        soft > 0.3,
    ):
        want = lut.apply(image, to_unit_float(mask), lut_maps, 0.8)
        assert np.array_equal(lut.apply(image, mask, lut_maps, 0.8), want), mask.dtype


def test_the_cpu_kernel_scales_a_mask_band_by_band(monkeypatch: pytest.MonkeyPatch) -> None:
    lut = backend("cpu-kernel")
    image = random_image(512, 512, np.uint8)
    mask = (blob_mask(512, 512) * 255).astype(np.uint8)
    lut_maps = random_maps(1, (8, 8), 8, seed=1)
    monkeypatch.setattr(maps, "MASK_BAND_PIXELS", 16 * 512)
    out, peak = peak_bytes(lambda: lut.apply(image, mask, lut_maps, 1.0))
    assert out.shape == image.shape
    assert peak < image.nbytes + 2 * 16 * 512 * 4 + 64 * 1024  # the output and one band


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (7, 300), (256, 256), (512, 512), (333, 777)])
@pytest.mark.parametrize("kind", ["float32", "uint8", "uint16", "bool"])
def test_resize_mask_is_opencvs_linear_resize(shape: tuple[int, int], kind: str) -> None:
    soft = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    mask = {
        "float32": soft,
        "uint8": (soft * 255).astype(np.uint8),
        "uint16": (soft * 65535).astype(np.uint16),
        "bool": soft > 0.5,
    }[kind]
    want = cv2.resize(to_unit_float(mask), (64, 64), interpolation=cv2.INTER_LINEAR)
    got = resize_mask(mask, 64)
    assert got.dtype == np.float32 and got.shape == (64, 64)
    assert np.abs(got - want).max() <= 2.5e-7


def test_validate_mask_keeps_the_masks_own_scale() -> None:
    u8 = (blob_mask(20, 30) * 255).astype(np.uint8)
    assert validate_mask(u8, (20, 30)) is u8  # no copy
    f64 = blob_mask(20, 30).astype(np.float64)
    assert validate_mask(f64, (20, 30)).dtype == np.float32
    assert validate_mask(u8 > 0, (20, 30)).dtype == np.bool_
    assert np.array_equal(check_mask(u8, (20, 30)), u8.astype(np.float32) / 255)
    with pytest.raises(InputError, match="must lie in"):
        validate_mask(f64 * 2, (20, 30))
    with pytest.raises(InputError, match="does not match the image size"):
        validate_mask(u8, (30, 20))


def test_harmonize_makes_no_float_copy_of_an_integer_mask(
    light_model: AICTNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend("cpu-kernel")
    image = random_image(1024, 1024, np.uint8)
    mask = (blob_mask(1024, 1024) * 255).astype(np.uint8)
    monkeypatch.setattr(maps, "MASK_BAND_PIXELS", 64 * 1024)

    def run() -> np.ndarray:
        return harmonize(image, mask, model=light_model, lut_backend="cpu-kernel")

    run()  # warm-up
    out, peak = peak_bytes(run)
    assert out.shape == image.shape
    assert peak < image.nbytes + MIB  # the result; a float mask would be 4 MiB more
    large = np.zeros((2048, 2048), np.uint8)
    large[500:1500, 600:1200] = 255
    image = random_image(2048, 2048, np.uint8)
    _, peak = peak_bytes(lambda: predict(image, large, model=light_model))
    assert peak < 6 * MIB  # the 256 x 256 input's arrays; a float mask would be 16 MiB


def test_reading_and_writing_copy_the_image_at_most_once(tmp_path: Path) -> None:
    rgb = photo_like(1024, 1024)
    path = tmp_path / "in.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    size = path.stat().st_size
    (got, alpha), peak = peak_bytes(lambda: read_image(path))
    assert np.array_equal(got, rgb) and alpha is None and got.flags.c_contiguous
    assert peak < rgb.nbytes + size + MIB  # the decoded image (reordered in place) + the file
    out = tmp_path / "out.png"
    result = rgb.copy()
    _, peak = peak_bytes(lambda: write_image(out, result, in_place=True))
    assert peak < size + MIB  # only the encoded file: the channels were reordered in place
    assert np.array_equal(cv2.imread(str(out)), rgb[..., ::-1])
    result = rgb.copy()
    _, peak = peak_bytes(lambda: write_image(out, result))
    assert np.array_equal(result, rgb)  # not in place: the caller's array is left alone
    assert peak < rgb.nbytes + size + MIB


def test_run_holds_the_image_its_mask_and_the_result_at_most(
    tmp_path: Path, light_model: AICTNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``harmonize run`` on an 8-bit RGB PNG and an 8-bit mask: at most 3 + 1 + 3 bytes per
    pixel (and the files' bytes) on top of the model, where it used to need 11 or more."""
    backend("cpu-kernel")
    weights = tmp_path / "w.pt"
    save_weights(weights, light_model, "aict-light", {}, half=False)
    rgb = photo_like(1024, 1024)
    comp, mask = tmp_path / "c.png", tmp_path / "m.png"
    cv2.imwrite(str(comp), rgb[..., ::-1])
    cv2.imwrite(str(mask), (blob_mask(1024, 1024) * 255).astype(np.uint8))
    files = comp.stat().st_size + mask.stat().st_size
    monkeypatch.setattr(maps, "MASK_BAND_PIXELS", 64 * 1024)
    args = ["run", str(comp), str(mask), "--weights", str(weights), "--lut-backend", "cpu-kernel"]
    assert main([*args, "-o", str(tmp_path / "warm.png")]) == 0  # imports, kernel, model code
    code, peak = peak_bytes(lambda: main([*args, "-o", str(tmp_path / "o.png")]))
    assert code == 0
    pixels = 1024 * 1024
    assert peak < 7 * pixels + files + 2 * MIB, peak / pixels

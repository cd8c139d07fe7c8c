"""``harmonize()``, ``predict()`` and ``apply_prediction()``: dtypes, sizes, strength, bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from layer_harmonizer.errors import InputError
from layer_harmonizer.lut import LutMaps
from layer_harmonizer.lut.damping import damping_gain, predicted_change
from layer_harmonizer.model import AICTNet
from layer_harmonizer.pipeline import apply_prediction, harmonize, low_res_input, predict
from tests.conftest import blob_mask, random_image


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("mask_kind", ["u8", "u16", "float", "bool"])
def test_dtype_round_trip_and_mask_zero_bit_identical(
    light_model: AICTNet, dtype: type, mask_kind: str
) -> None:
    image = random_image(45, 61, dtype)
    soft = blob_mask(45, 61)
    mask = {
        "u8": (soft * 255).round().astype(np.uint8),
        "u16": (soft * 65535).round().astype(np.uint16),
        "float": soft,
        "bool": soft > 0.5,
    }[mask_kind]
    out = harmonize(image, mask, model=light_model, lut_backend="torch")
    assert out.dtype == image.dtype and out.shape == image.shape
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], image[outside])
    assert not np.array_equal(out[~outside], image[~outside])  # the model did something inside


@pytest.mark.parametrize("size", [(1, 1), (1, 17), (17, 1), (7, 3), (255, 257)])
def test_any_size_runs(light_model: AICTNet, size: tuple[int, int]) -> None:
    h, w = size
    image = random_image(h, w, np.uint8)
    mask = np.ones((h, w), np.float32)
    mask[0, 0] = 0
    out = harmonize(image, mask, model=light_model, lut_backend="torch")
    assert out.shape == image.shape and np.array_equal(out[0, 0], image[0, 0])


@pytest.mark.slow
def test_large_image_keeps_mask_zero_pixels(light_model: AICTNet) -> None:
    image = random_image(2000, 3000, np.uint8, seed=3)
    mask = blob_mask(2000, 3000)
    out = harmonize(image, mask, model=light_model, lut_backend="torch")
    assert np.array_equal(out[mask == 0], image[mask == 0])


def test_cached_prediction_reapplies_any_strength(light_model: AICTNet) -> None:
    image = random_image(40, 50, np.float32)
    mask = blob_mask(40, 50)
    maps = predict(image, mask, model=light_model)
    for strength in (0.0, 0.3, 1.0):
        direct = harmonize(image, mask, model=light_model, strength=strength, lut_backend="torch")
        cached = apply_prediction(image, mask, maps, strength=strength, lut_backend="torch")
        np.testing.assert_allclose(cached, direct, atol=1e-6)
    half = apply_prediction(image, mask, maps, strength=0.5, lut_backend="torch")
    full = apply_prediction(image, mask, maps, strength=1.0, lut_backend="torch")
    np.testing.assert_allclose(half, (full + image) / 2, atol=1e-5)


def test_damping_applies_the_share_of_the_change_it_measures(light_model: AICTNet) -> None:
    image = random_image(40, 50, np.float32, seed=2)
    mask = blob_mask(40, 50)
    undamped = predict(image, mask, model=light_model)
    x = low_res_input(image, mask, light_model.config.input_size)
    change = predicted_change(x, undamped)
    assert undamped.gain == 1.0 and change > 100.0  # the random heads change the object a lot
    light_model.config = replace(light_model.config, damping=change)  # -> exactly half
    try:
        maps = predict(image, mask, model=light_model)
        assert maps.gain == pytest.approx(0.5, abs=1e-4)
        direct = harmonize(image, mask, model=light_model, lut_backend="torch")
        for strength in (1.0, 0.6):  # the gain multiplies the user's strength
            cached = apply_prediction(image, mask, maps, strength=strength, lut_backend="torch")
            plain = apply_prediction(
                image, mask, undamped, strength=strength * maps.gain, lut_backend="torch"
            )
            np.testing.assert_allclose(cached, plain, atol=1e-6)
            if strength == 1.0:
                np.testing.assert_allclose(direct, cached, atol=1e-6)
    finally:
        light_model.config = replace(light_model.config, damping=0.0)


def test_damping_leaves_strong_changes_nearly_whole_and_removes_none() -> None:
    x = torch.cat([torch.full((1, 3, 8, 8), 0.5), torch.ones(1, 1, 8, 8)], dim=1)
    same = LutMaps.identity()
    assert predicted_change(x, same) == pytest.approx(0.0, abs=1e-6)
    assert damping_gain(x, same, 50.0) == pytest.approx(0.0, abs=1e-6)
    brighter = LutMaps(same.intervals, same.colors + 0.2)  # +51 levels: m = 2601
    assert predicted_change(x, brighter) == pytest.approx(51.0**2, rel=1e-3)
    assert damping_gain(x, brighter, 2601.0) == pytest.approx(0.5, rel=1e-3)
    assert damping_gain(x, brighter, 650.25) == pytest.approx(16 / 17, rel=1e-3)  # m = 4 K
    assert damping_gain(x, brighter, 0.0) == 1.0
    with pytest.raises(ValueError, match="gain"):
        LutMaps(same.intervals, same.colors, 1.5)


class _Exploding(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> None:
        raise AssertionError("the network must not run")


def test_empty_mask_returns_input_without_running_network() -> None:
    image = random_image(8, 9, np.uint16)
    out = harmonize(image, np.zeros((8, 9), np.uint8), model=_Exploding())  # type: ignore[arg-type]
    assert np.array_equal(out, image) and out is not image


def _bad(**changes: object) -> tuple[object, object, dict[str, object]]:
    image = random_image(6, 7, np.float32)
    args: dict[str, object] = {"composite": image, "mask": np.ones((6, 7), np.float32)}
    kwargs: dict[str, object] = {}
    for key, value in changes.items():
        (args if key in args else kwargs)[key] = value
    return args["composite"], args["mask"], kwargs


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mask": np.ones((6, 8), np.float32)}, "does not match the image size"),
        ({"composite": np.zeros((6, 7, 4), np.uint8)}, r"\(H, W, 3\).*alpha"),
        ({"composite": np.zeros((6, 7), np.uint8)}, r"\(H, W, 3\)"),
        ({"composite": np.zeros((6, 7, 3), np.int32)}, "dtype"),
        ({"composite": np.zeros((6, 7, 3), np.float64)}, "float32"),
        ({"mask": np.ones((6, 7), np.int16)}, "mask dtype"),
        ({"composite": np.full((6, 7, 3), np.nan, np.float32)}, "NaN"),
        ({"mask": np.full((6, 7), np.inf, np.float32)}, "infinite"),
        ({"composite": np.full((6, 7, 3), 1.5, np.float32)}, r"\[0, 1\]"),
        ({"mask": np.full((6, 7), -0.1, np.float32)}, r"\[0, 1\]"),
        ({"max_pixels": 41}, "over the limit of 41"),
        ({"strength": 1.5}, "strength"),
        ({"strength": float("nan")}, "strength"),
        ({"composite": [[1, 2, 3]]}, "numpy array"),
        ({"composite": np.zeros((0, 7, 3), np.uint8)}, "empty"),
    ],
)
def test_bad_input_is_named(light_model: AICTNet, changes: dict[str, object], message: str) -> None:
    composite, mask, kwargs = _bad(**changes)
    with pytest.raises(InputError, match=message):
        harmonize(composite, mask, model=light_model, **kwargs)  # type: ignore[arg-type]


def test_pixel_limit_from_environment(
    light_model: AICTNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARMONIZE_MAX_PIXELS", "10")
    with pytest.raises(InputError, match="HARMONIZE_MAX_PIXELS"):
        harmonize(random_image(4, 4, np.uint8), np.ones((4, 4)), model=light_model)

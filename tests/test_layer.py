"""layer_harmonizer.layer.harmonize_layer without a daemon: crop, composite, predict, apply and
alpha on a layer, its selection and its backdrop; the cached job and reapply; channel order;
validation done once."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layer_harmonizer import arrays
from layer_harmonizer.compose import composite, crop_box
from layer_harmonizer.errors import InputError
from layer_harmonizer.layer import EmptyMask, PredictionCache, harmonize_layer, reapply
from layer_harmonizer.pipeline import apply_prediction, harmonize, predict
from layer_harmonizer.wire import messages as M


def scene(dtype=np.uint8, alpha="opaque", seed=0, h=96, w=128):
    """A layer (H, W, 4), a selection with a rectangular object and a backdrop (H, W, 3)."""
    rng = np.random.default_rng(seed)
    full = {np.uint8: 255, np.uint16: 65535}.get(dtype, 1.0)

    def noise(*shape):
        return (rng.random(shape) * full).astype(dtype)

    layer = noise(h, w, 4)
    layer[..., 3] = full if alpha == "opaque" else noise(h, w)
    selection = np.zeros((h, w), dtype)
    selection[h // 3 : h // 3 + h // 4, w // 4 : w // 2] = full
    return layer, selection, noise(h, w, 3)


def unit(a: np.ndarray) -> np.ndarray:
    return arrays.to_unit_float(a)


def test_opaque_layer_is_pipeline_harmonize_on_the_composite_crop(light_model):
    layer, sel, back = scene()
    result = harmonize_layer(layer, sel, back, model=light_model, strength=0.8)
    x0, y0, x1, y1 = crop_box(sel, M.DEFAULT_CROP_MARGIN, M.MIN_CROP_MARGIN_PX)
    assert result.offset == (x0, y0) and not result.cached
    out = result.pixels
    assert out.shape == (y1 - y0, x1 - x0, 4) and out.dtype == np.uint8
    rgb, s = layer[y0:y1, x0:x1, :3], sel[y0:y1, x0:x1]
    expected = harmonize(
        composite(rgb, unit(s), back[y0:y1, x0:x1]), s, model=light_model, strength=0.8
    )
    inside = s > 0
    assert np.array_equal(out[..., :3][inside], expected[inside])
    assert np.array_equal(out[..., :3][~inside], rgb[~inside])
    assert np.array_equal(out[..., 3], layer[y0:y1, x0:x1, 3])
    assert not np.array_equal(out[..., :3][inside], rgb[inside])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_soft_alpha_composites_alpha_x_selection_and_recolours_by_the_selection(light_model, dtype):
    layer, sel, back = scene(dtype, alpha="soft", seed=3)
    sel[40:44] = sel.max() // 2 if dtype != np.float32 else 0.5  # a soft band
    layer[34:38, 40:50, 3] = 0  # transparent pixels inside the selection
    result = harmonize_layer(layer, sel, back, model=light_model, crop_margin=None)
    assert result.offset == (0, 0)
    alpha, s = unit(layer[..., 3]), unit(sel)
    coverage = alpha * s
    maps = predict(composite(layer[..., :3], coverage, back), coverage, model=light_model)
    weight = np.where(alpha > 0, s, 0).astype(np.float32)
    expected = apply_prediction(np.ascontiguousarray(layer[..., :3]), weight, maps)
    tolerance = 1e-6 if dtype == np.float32 else 0
    np.testing.assert_allclose(result.pixels[..., :3], expected, atol=tolerance)
    assert np.array_equal(result.pixels[..., 3], layer[..., 3])
    assert np.array_equal(result.pixels[34:38, 40:50, :3], layer[34:38, 40:50, :3])


def test_no_selection_means_all_of_the_layer(light_model):
    layer, _sel, back = scene(alpha="soft", seed=5)
    layer[:, :20, 3] = 0
    whole = harmonize_layer(layer, None, back, model=light_model, crop_margin=0.0)
    full = np.full(layer.shape[:2], 255, np.uint8)
    assert whole.offset == (4, 0)  # the covered box (x >= 20) less the 16-pixel margin
    same = harmonize_layer(layer, full, back, model=light_model, crop_margin=0.0)
    assert np.array_equal(whole.pixels, same.pixels)


def test_premultiplied_mask_of_protocol_2_0_gives_the_same_result(light_model):
    layer, sel, back = scene(seed=7)
    new = harmonize_layer(layer, sel, back, model=light_model)
    old = harmonize_layer(layer, sel, back, model=light_model, premultiplied=True)
    assert np.array_equal(new.pixels, old.pixels) and new.offset == old.offset


def test_bgr_layers_keep_their_channel_order(light_model):
    layer, sel, back = scene(seed=9)
    rgba = harmonize_layer(layer, sel, back, model=light_model)
    bgra = harmonize_layer(
        np.ascontiguousarray(layer[..., [2, 1, 0, 3]]),
        sel,
        np.concatenate([back[..., ::-1], np.zeros_like(sel)[..., None]], axis=2),  # BGRA
        model=light_model,
        bgr=True,
    )
    assert np.array_equal(bgra.pixels[..., [2, 1, 0, 3]], rgba.pixels)
    bgr = harmonize_layer(
        np.ascontiguousarray(layer[..., 2::-1]), sel, back[..., ::-1], model=light_model,
        bgr=True, output="rgb",
    )  # fmt: skip
    assert np.array_equal(bgr.pixels[..., ::-1], rgba.pixels[..., :3])


def test_a_strength_change_reapplies_the_job_without_the_network(light_model, monkeypatch):
    layer, sel, back = scene(alpha="soft", seed=11)
    cache = PredictionCache(light_model)
    first = harmonize_layer(layer, sel, back, model=light_model, cache=cache)
    again = harmonize_layer(layer, sel, back, model=light_model, cache=cache, strength=0.3)
    assert (first.cached, again.cached, len(cache)) == (False, True, 1)
    job = first.job.detached()
    layer[:] = 0  # the caller's arrays change (shared memory does): the job does not
    assert not np.shares_memory(job.alpha, layer)
    from layer_harmonizer import pipeline

    monkeypatch.setattr(pipeline, "run_network", None)  # no network from here on
    assert np.array_equal(reapply(job, strength=0.3), again.pixels)
    as_float = reapply(job, strength=0.3, dtype="float32", output="rgb")
    assert as_float.dtype == np.float32 and as_float.shape == (*again.pixels.shape[:2], 3)
    assert np.array_equal(reapply(job, strength=0.0)[..., :3], first.job.rgb)


def test_the_result_is_written_where_out_says(light_model):
    layer, sel, back = scene(seed=13)
    given: list[np.ndarray] = []

    def out(shape, dtype):
        given.append(np.zeros(shape, dtype))
        return given[-1]

    result = harmonize_layer(layer, sel, back, model=light_model, out=out, dtype="uint16")
    assert result.pixels is given[0] and result.pixels.dtype == np.uint16
    assert np.all(result.pixels[..., 3] == 65535)


def test_values_are_validated_once(light_model, monkeypatch):
    """Each input's range is checked once, inside the crop (it was twice in the daemon)."""
    checked: list[str] = []
    real = arrays._check_float_range

    def spy(arr, what):
        checked.append(what)
        real(arr, what)

    monkeypatch.setattr(arrays, "_check_float_range", spy)
    layer, sel, back = scene(np.float32, alpha="soft", seed=17)
    harmonize_layer(layer, sel, back, model=light_model)
    assert sorted(checked) == ["alpha", "backdrop", "layer", "selection"]


def test_checkpoints_in_order(light_model):
    stages: list[tuple] = []
    layer, sel, back = scene(seed=19)
    harmonize_layer(
        layer, sel, back, model=light_model, checkpoint=lambda s, **i: stages.append((s, i))
    )
    assert stages == [("composed", {}), ("predicted", {"cached": False}), ("applied", {})]


def test_bad_input_gets_one_clear_error(light_model):
    layer, sel, back = scene(np.float32, seed=23)
    with pytest.raises(EmptyMask):
        harmonize_layer(layer, sel * 0, back, model=light_model)
    bad = sel.copy()
    bad[40, 40] = math.nan
    with pytest.raises(InputError, match="selection contains NaN"):
        harmonize_layer(layer, bad, back, model=light_model)
    with pytest.raises(InputError, match="backdrop is 64 x 96 but the layer is 128 x 96"):
        harmonize_layer(layer, sel, back[:, :64], model=light_model)
    with pytest.raises(InputError, match="layer dtype must be one of"):
        harmonize_layer(layer.astype(np.float64), sel, back, model=light_model)
    with pytest.raises(InputError, match=r"layer must have shape \(H, W, 4\)"):
        harmonize_layer(layer[..., :2], sel, back, model=light_model)
    with pytest.raises(InputError, match="strength"):
        harmonize_layer(layer, sel, back, model=light_model, strength=1.5)
    with pytest.raises(InputError, match="output"):
        harmonize_layer(layer, sel, back, model=light_model, output="bgra")
    with pytest.raises(InputError, match="premultiplied"):
        harmonize_layer(layer, None, back, model=light_model, premultiplied=True)


@pytest.mark.parametrize(("dtype", "order"), [(np.uint8, None), (np.float32, "BGRA")])
def test_the_daemon_answers_exactly_what_harmonize_layer_computes(light_model, dtype, order):
    """The daemon's engine calls this verb: the same request over the socket (shared memory
    where it can) gives the same pixels, offset and cache state."""
    from layer_harmonizer.daemon.engine import Engine
    from layer_harmonizer.wire import protocol as P
    from tests.test_server import Running

    layer, sel, back = scene(dtype, alpha="soft", seed=29)
    if order is not None:
        layer, back = np.ascontiguousarray(layer[..., [2, 1, 0, 3]]), back[..., ::-1].copy()
    local = harmonize_layer(
        layer, sel, back, model=light_model, strength=0.7, bgr=order is not None
    )
    run = Running(Engine(light_model))
    try:
        remote = run.client.harmonize_layer(
            P.Pixels.of(layer, order),
            P.Pixels.of(sel),
            P.Pixels.of(back, order and order[:3]),
            strength=0.7,
        )
    finally:
        run.close()
    pixels = np.frombuffer(remote.pixels.data, remote.pixels.dtype).reshape(remote.pixels.shape)
    assert np.array_equal(pixels, local.pixels)
    assert (remote.offset, remote.cached, remote.pixels.order) == (local.offset, False, order)

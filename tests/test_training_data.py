"""Training data: recipes, masks, the synthetic generator, the split, the iHarmony4 loader."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from training.config import DataSpec
from training.data import colour_edits as ops
from training.data import iharmony4, mistakes
from training.data.augment import crop_box, crop_flip, fit_size, limit_size
from training.data.masks import (
    feather,
    horizon_mask,
    label_region,
    place_bank_mask,
    place_cutout,
    sides_touched,
)
from training.data.samples import Triplet, collate, training_example
from training.data.sources import Photo, scan_folder, split_keys, split_photos
from training.data.synthetic import (
    DONOR_LIGHT,
    MAX_LIGHT_GAP,
    VAL_SEED_OFFSET,
    VIVID_SATURATION,
    CompositeGenerator,
    light_gap,
    scene_mismatch,
    write_triplets,
)


def smooth_photo(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like uint8 image: upsampled colour noise plus a gradient."""
    rng = np.random.default_rng(seed)
    small = rng.random((4, 5, 3)).astype(np.float32)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img = 0.7 * img + 0.3 * np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def write_photo_folder(root: Path, n: int = 4, h: int = 72, w: int = 96) -> tuple[Path, Path, Path]:
    """Photos, per-photo masks (for the first half) and a two-shape mask bank."""
    photos, masks, bank = root / "photos", root / "masks", root / "bank"
    for d in (photos, masks, bank):
        d.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(photos / f"p{i}.png"), smooth_photo(h, w, i)[..., ::-1])
        if i < n // 2:
            m = np.zeros((h, w), np.uint8)
            cv2.circle(m, (w // 2, h // 2), h // 4, 255, -1)
            cv2.imwrite(str(masks / f"p{i}.png"), m)
    for j, (a, b) in enumerate([(20, 40), (40, 20)]):
        m = np.zeros((64, 64), np.uint8)
        cv2.ellipse(m, (32, 32), (a // 2, b // 2), 0, 0, 360, 255, -1)
        cv2.imwrite(str(bank / f"shape{j}.png"), m)
    return photos, masks, bank


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_photo_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def generator(folder: tuple[Path, Path, Path]) -> CompositeGenerator:
    photos, masks, bank = folder
    return CompositeGenerator(
        scan_folder("test", photos, masks), sorted(bank.iterdir()), seed=3, max_side=80
    )


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread: None) -> None:
    """Tiny tensors: one torch thread is many times faster than two on a busy machine."""


# -- recipes ----------------------------------------------------------------------------------
def test_exposure_one_stop_doubles_linear_light() -> None:
    img = np.full((2, 2, 3), 0.2, np.float32)
    out = ops.apply_recipe(img, [{"op": "exposure", "stops": 1.0}])
    np.testing.assert_allclose(ops.srgb_to_linear(out), 2 * ops.srgb_to_linear(img), rtol=1e-4)


def test_white_balance_keeps_grey_luminance_and_warms() -> None:
    img = np.full((1, 1, 3), 0.5, np.float32)
    out = ops.apply_recipe(img, [{"op": "white_balance", "temperature": 0.3, "tint": 0.0}])
    lin_in, lin_out = ops.srgb_to_linear(img), ops.srgb_to_linear(out)
    assert float(lin_out[0, 0] @ ops.LUMA) == pytest.approx(
        float(lin_in[0, 0] @ ops.LUMA), rel=1e-4
    )
    assert out[0, 0, 0] > 0.5 > out[0, 0, 2]


def test_hue_and_saturation_keep_grey_grey() -> None:
    grey = np.full((3, 3, 3), 0.4, np.float32)
    for step in ({"op": "hue", "degrees": 25.0}, {"op": "saturation", "factor": 1.7}):
        np.testing.assert_allclose(ops.apply_recipe(grey, [step]), grey, atol=1e-5)


def test_transfer_moves_lab_statistics() -> None:
    img = smooth_photo(40, 40, 1).astype(np.float32) / 255
    full = np.ones((40, 40), np.float32)
    src = ops.region_lab_stats(img, full)
    target = ([60.0, 10.0, -5.0], [src[1][0] * 1.2, src[1][1], src[1][2]])
    out = ops.apply_recipe(
        img,
        [
            {
                "op": "transfer",
                "src_mean": src[0],
                "src_std": src[1],
                "dst_mean": target[0],
                "dst_std": target[1],
                "amount": 1.0,
            }
        ],
    )
    mean, _ = ops.region_lab_stats(out, full)
    np.testing.assert_allclose(mean, target[0], atol=2.0)


def test_unknown_recipe_op_is_named() -> None:
    with pytest.raises(ValueError, match="blur"):
        ops.apply_recipe(np.zeros((1, 1, 3), np.float32), [{"op": "blur"}])


def test_affine_lut_and_quantile_ops_keep_identity() -> None:
    img = smooth_photo(20, 30, 2).astype(np.float32) / 255
    axis = np.linspace(0, 1, 5)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).tolist()
    q = np.linspace(0, 1, 17)
    steps = [
        {"op": "affine", "matrix": np.eye(3).tolist(), "offset": [0, 0, 0]},
        {"op": "lut3d", "table": grid},
        {"op": "quantile_map", "src_q": [q.tolist()] * 3, "dst_q": [q.tolist()] * 3, "amount": 1},
        {"op": "split_tone", "shadows": [0, 0, 0], "highlights": [0, 0, 0]},
        {"op": "fade", "amount": 0.0, "colour": [0.5, 0.5, 0.5]},
    ]
    for step in steps:
        np.testing.assert_allclose(ops.apply_recipe(img, [step]), img, atol=1e-4)


def test_every_transfer_method_moves_the_mean_towards_the_target() -> None:
    rng = np.random.default_rng(1)
    src = (smooth_photo(30, 30, 3).astype(np.float32) / 255).reshape(-1, 3)
    dst = np.clip(src * [0.5, 0.8, 1.1] + [0.3, 0.1, 0.0], 0, 1).astype(np.float32)
    seen = set()
    for _ in range(40):
        recipe = mistakes.draw_transfer(rng, src, dst, strong=True)
        json.dumps(recipe)
        seen.add(recipe[0]["op"])
        out = ops.apply_recipe(src[None], recipe[:1])[0]
        before = np.abs(src.mean(0) - dst.mean(0)).sum()
        assert np.abs(out.mean(0) - dst.mean(0)).sum() < 0.5 * before
    assert seen == {"transfer", "rgb_transfer", "quantile_map", "affine"}


def test_drawn_recipes_are_json_and_vary() -> None:
    rng = np.random.default_rng(0)
    looks = [mistakes.draw_look(rng, 0.5, strong=False) for _ in range(60)]
    lights = [mistakes.draw_light(rng, 0.5, strong=True) for _ in range(60)]
    json.dumps([looks, lights, mistakes.draw_jitter(rng)])
    look_ops = {s["op"] for r in looks for s in r}
    assert {"lut3d", "split_tone", "curve", "white_balance", "saturation"} <= look_ops
    stops = [s["stops"] for r in lights for s in r if s["op"] == "exposure"]
    assert max(abs(x) for x in stops) > 2.0  # the heavy tail reaches more than two stops
    families = [mistakes.draw_family(rng) for _ in range(2000)]
    for name, share in mistakes.FAMILY_MIX.items():
        assert abs(sum(f == name for f, _ in families) / 2000 - share) < 0.05
    assert abs(np.mean([s for _, s in families]) - mistakes.STRONG_PROBABILITY) < 0.05


# -- masks and augmentation -------------------------------------------------------------------
def test_feather_is_soft_and_zero_far_away() -> None:
    m = np.zeros((60, 60), np.float32)
    m[20:40, 20:40] = 1
    rng = np.random.default_rng(5)
    softs = [feather(m, rng) for _ in range(12)]
    assert any(((s > 0) & (s < 1)).any() for s in softs)
    for s in softs:
        assert s.min() >= 0 and s.max() <= 1 and s[:5].max() == 0 and s[28:32, 28:32].min() > 0.9


def test_place_bank_mask_fits_canvas() -> None:
    shape = np.zeros((64, 64), np.float32)
    shape[10:50, 20:30] = 1
    rng = np.random.default_rng(0)
    for _ in range(10):
        m = place_bank_mask(shape, (50, 90), rng)
        assert m is not None and m.shape == (50, 90) and 0 < m.mean() < 0.9
    assert place_bank_mask(np.zeros((8, 8), np.float32), (10, 10), rng) is None
    box = np.zeros((64, 64), np.float32)
    box[8:40, 8:56] = 1
    assert place_bank_mask(box, (50, 90), rng) is not None
    assert place_bank_mask(box, (50, 90), rng, max_fill=0.9) is None
    assert place_bank_mask(shape, (50, 90), rng, max_fill=0.9) is None  # a filled bar, too


def test_place_cutout_carries_the_object_pixels_with_its_mask() -> None:
    shape = np.zeros((64, 64), np.float32)
    shape[10:50, 20:30] = 1
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[shape > 0] = (200, 100, 30)
    pixels[:, :5] = 255  # outside the object's box: never carried along
    for seed in range(6):
        placed = place_cutout(shape, (50, 90), np.random.default_rng(seed), pixels=pixels)
        assert placed is not None
        mask, cutout = placed
        # The same draws as place_bank_mask: the same place for the same stream.
        assert np.array_equal(mask, place_bank_mask(shape, (50, 90), np.random.default_rng(seed)))
        assert cutout is not None and cutout.shape == (50, 90, 3) and cutout.dtype == np.uint8
        inside = cutout[mask > 0]
        assert inside.size and np.abs(inside.astype(int) - (200, 100, 30)).max() <= 1
        assert cutout[mask == 0].max() <= 200 and not (cutout == 255).any()
    assert place_cutout(np.zeros((8, 8), np.float32), (10, 10), np.random.default_rng(0)) is None


def test_light_gap_tells_a_cast_and_an_exposure_apart() -> None:
    img = smooth_photo(48, 64, 1)
    assert light_gap(img, img) == (0.0, 0.0)
    warm = np.clip(img * np.array([1.3, 1.0, 0.7]), 0, 255).astype(np.uint8)
    dark = (img // 4).astype(np.uint8)
    cast, exposure = light_gap(img, warm)
    assert cast > 0.2 and exposure < 0.1
    cast, exposure = light_gap(img, dark)
    assert cast < 0.1 and exposure > 1.0
    for estimate in DONOR_LIGHT:
        assert light_gap(img, img, estimate) == (0.0, 0.0)
        assert light_gap(img, warm, estimate)[0] > 0.2
    with pytest.raises(ValueError, match="unknown light estimate 'white-patch'"):
        light_gap(img, img, "white-patch")
    # The command line offers exactly the estimates the generator knows.
    (option,) = (f for f in dataclasses.fields(DataSpec) if f.name == "donor_light")
    assert option.metadata["choices"] == DONOR_LIGHT


def test_grey_edge_reads_the_light_not_the_content() -> None:
    """A scene half filled with flat blue (a sky, the sea) under neutral light: its mean colour
    is blue, its edges (where surfaces meet) are as neutral as a grey scene's."""
    texture = np.random.default_rng(0).integers(30, 230, (32, 48)).astype(np.uint8)
    grey = np.repeat(
        cv2.resize(texture, (192, 128), interpolation=cv2.INTER_LINEAR)[..., None], 3, 2
    )
    beach = grey.copy()
    beach[:64] = (40, 90, 200)
    assert light_gap(grey, beach)[0] > 2 * MAX_LIGHT_GAP[0]
    cast, _ = light_gap(grey, beach, "grey-edge")
    assert cast < MAX_LIGHT_GAP[0] / 2
    tinted = np.clip(beach * np.array([1.3, 1.0, 0.7]), 0, 255).astype(np.uint8)
    assert light_gap(beach, tinted, "grey-edge")[0] > 0.2  # a real cast still shows


def _disc_donors(
    tmp_path: Path, disc: tuple[int, int, int], **options: Any
) -> tuple[list[Photo], CompositeGenerator]:
    """Four grey photos lit alike, the first two donors (a disc of colour ``disc`` with its
    mask), and a generator of foreign pastes on them (``options`` added)."""
    photos, masks, bank = tmp_path / "photos", tmp_path / "masks", tmp_path / "bank"
    for d in (photos, masks, bank):
        d.mkdir(parents=True)
    for i in range(4):
        img = np.full((60, 80, 3), 120, np.uint8) + np.random.default_rng(i).integers(
            0, 8, (60, 80, 3)
        ).astype(np.uint8)
        if i < 2:
            m = np.zeros((60, 80), np.uint8)
            cv2.circle(m, (40, 30), 12, 255, -1)
            img[m > 0] = disc
            cv2.imwrite(str(masks / f"p{i}.png"), m)
        cv2.imwrite(str(photos / f"p{i}.png"), img[..., ::-1])
    cv2.imwrite(str(bank / "b.png"), np.pad(np.full((20, 20), 255, np.uint8), 10))
    found = scan_folder("t", photos, masks)
    gen = CompositeGenerator(
        found, sorted(bank.iterdir()), seed=1, max_side=80, augment=False, **options
    )
    return found, gen


def _disc_core(t: Triplet) -> np.ndarray:
    """The pasted disc's inside, its resampled rim left out: ``(H, W)`` bool."""
    return cv2.erode((t.mask > 0.99).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0


def test_foreign_pastes_keep_the_donor_object_as_it_is(tmp_path: Path) -> None:
    """Two donors (a red disc on its own photo) and two scenes without masks, all lit alike:
    a foreign paste carries the disc into a scene; left as it is, the composite is the truth."""
    found, gen = _disc_donors(tmp_path, (150, 110, 100), foreign_fraction=1.0)
    assert sorted(p.key for ps in gen.donors.values() for p in ps) == ["t/p0", "t/p1"]
    out = [gen.triplet(i) for i in range(24)]
    pasted = [t for t in out if t.meta["mask_origin"].startswith("foreign:")]
    assert len(pasted) >= 20
    for t in pasted:
        donor = t.meta["mask_origin"].split(":", 1)[1]
        assert donor != t.meta["photo"] and donor in ("t/p0", "t/p1")
        # The object is the donor's disc (its resampled rim aside), not the scene's grey.
        assert np.abs(t.real[_disc_core(t)].astype(int) - (150, 110, 100)).max() <= 3
        assert t.meta["kind"] in ("none", "look", "light")
        if t.meta["kind"] == "none":
            assert np.array_equal(t.composite, t.real) and not t.meta["strong"]
    assert {t.meta["kind"] for t in pasted} == {"none", "look", "light"}
    assert gen.triplet(5).meta == out[5].meta  # still a function of (seed, i)
    # Donors bright, the other scenes black: no donor is lit like a black scene, whose
    # composites are ordinary views; a bright scene (the other donor) still gets a paste.
    for p in found:
        gen._cache[p.image] = np.full((60, 80, 3), 200 if p.masks else 0, np.uint8)
    again = [gen.triplet(i).meta for i in range(24)]
    assert {m["photo"] for m in again if m["mask_origin"].startswith("foreign")} == {
        "t/p0",
        "t/p1",
    }
    assert any(m["photo"] in ("t/p2", "t/p3") for m in again)


@pytest.mark.parametrize("disc", [(200, 110, 60), (128, 120, 112)])
def test_vivid_pastes_saturate_coloured_objects_only(
    tmp_path: Path, disc: tuple[int, int, int]
) -> None:
    """With ``vivid_fraction`` 1 a coloured disc (orange) is pasted more saturated, its vivid
    colours the truth and recorded; a greyish one (Lab chroma under the limit) as it is. The
    pastes land where they land without the option (the draw is a stream of its own)."""
    _, plain = _disc_donors(tmp_path / "plain", disc, foreign_fraction=1.0)
    _, gen = _disc_donors(tmp_path / "vivid", disc, foreign_fraction=1.0, vivid_fraction=1.0)
    coloured, pasted = disc[0] - disc[2] > 50, 0
    for i in range(12):
        t, before = gen.triplet(i), plain.triplet(i)
        assert t.meta["mask_origin"] == before.meta["mask_origin"]
        if not t.meta["mask_origin"].startswith("foreign:"):
            continue
        pasted += 1
        assert np.array_equal(t.mask, before.mask)
        assert ("vivid" in t.meta) == coloured
        core = _disc_core(t)
        if not coloured:
            assert np.array_equal(t.real, before.real)
            continue
        (step,) = t.meta["vivid"]
        assert (
            step["op"] == "saturation"
            and VIVID_SATURATION[0] <= step["factor"] <= VIVID_SATURATION[1]
        )
        want = ops.apply_recipe(np.float32([[disc]]) / 255, t.meta["vivid"])[0, 0] * 255
        assert np.abs(t.real[core].astype(float) - want).max() <= 4
        spread = np.ptp(t.real[core].astype(float).mean(0))
        assert spread > np.ptp(before.real[core].astype(float).mean(0)) + 20
        assert np.array_equal(t.real[t.mask == 0], before.real[t.mask == 0])  # scene untouched
        if t.meta["kind"] == "none":
            assert np.array_equal(t.composite, t.real)
    assert pasted >= 8


def test_horizon_pastes_are_the_land_of_another_photo_under_the_scene(tmp_path: Path) -> None:
    """Four photos, each a sky (top) over land of its own colour, all lit alike: a horizon
    paste puts another photo's land under the scene's sky; left as it is, it is the truth."""
    photos, bank = tmp_path / "photos", tmp_path / "bank"
    photos.mkdir(), bank.mkdir()
    lands = [(110, 130, 100), (130, 115, 95), (100, 120, 125), (125, 125, 110)]
    for i, land in enumerate(lands):
        img = np.full((60, 80, 3), (150, 160, 175), np.uint8)
        img[20:] = land
        cv2.imwrite(str(photos / f"p{i}.png"), img[..., ::-1])
    cv2.imwrite(str(bank / "b.png"), np.pad(np.full((20, 20), 255, np.uint8), 10))
    found = scan_folder("t", photos)
    gen = CompositeGenerator(
        found, sorted(bank.iterdir()), seed=2, max_side=80, horizon_fraction=1.0, augment=False
    )
    out = [gen.triplet(i) for i in range(16)]
    pasted = [t for t in out if t.meta["mask_origin"].startswith("horizon:")]
    assert len(pasted) >= 12
    for t in pasted:
        donor = t.meta["mask_origin"].split(":", 1)[1]
        assert donor != t.meta["photo"]
        binary = t.mask > 0.99
        # Land below a horizon: in every column the mask only grows downwards, and the sky
        # above it is the scene's; it covers about a sixth to nine tenths of the image.
        assert np.all(np.diff((t.mask > 0).astype(int), axis=0) >= 0)
        assert 0.15 <= float(binary.mean()) <= 0.9
        assert np.array_equal(t.real[0], np.full((80, 3), (150, 160, 175), np.uint8))
        core = cv2.erode(binary.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        deep = core & (np.arange(60)[:, None] >= 42)  # below the donor's own horizon too
        assert np.abs(t.real[deep].astype(int) - lands[int(donor[-1])]).max() <= 2
        assert t.meta["kind"] in ("none", "look", "light")
        if t.meta["kind"] == "none":
            assert np.array_equal(t.composite, t.real)
    assert gen.triplet(3).meta == out[3].meta  # still a function of (seed, i)


def test_horizon_mask_is_land_below_a_line() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        m = horizon_mask((90, 120), rng)
        assert m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
        assert np.all(np.diff(m, axis=0) >= 0) and m[-1].all() and not m[0].any()
        assert 0.1 <= float(m.mean()) <= 0.85


def test_label_region_picks_one_mid_sized_region() -> None:
    labels = np.ones((40, 40), np.uint8)
    labels[:, 20:] = 2
    labels[:2, :2] = 3  # too small to be an object
    m = label_region(labels, np.random.default_rng(0))
    assert m is not None and set(np.unique(labels[m > 0])) <= {1, 2}


def test_crop_box_and_fit_size() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        y, x, h, w = crop_box(100, 60, rng)
        assert 50 <= h <= 100 and 30 <= w <= 60 and y + h <= 100 and x + w <= 60
    assert fit_size(300, 600, 200) == (100, 200) and fit_size(30, 60, 200) == (30, 60)


def test_crop_flip_and_limit_size_keep_pairs_aligned() -> None:
    img = smooth_photo(60, 80, 2)
    mask = np.zeros((60, 80), np.float32)
    mask[10:50, 10:70] = 1
    t = Triplet("x_1_1", "s", img, mask, img.copy())
    for seed in range(5):
        c = crop_flip(t, np.random.default_rng(seed))
        assert np.array_equal(c.composite, c.real) and c.mask.shape == c.composite.shape[:2]
    small = limit_size(t, 40)
    assert small.composite.shape == (30, 40, 3) and small.mask.shape == (30, 40)


# -- generator --------------------------------------------------------------------------------
def test_generator_never_touches_pixels_outside_the_mask(generator: CompositeGenerator) -> None:
    changed = 0
    for i in range(12):
        t = generator.triplet(i)
        assert t.real is not None and t.composite.dtype == np.uint8
        outside = t.mask == 0
        assert outside.any()
        assert np.array_equal(t.composite[outside], t.real[outside])
        changed += int((t.composite[~outside] != t.real[~outside]).any())
        assert max(t.mask.shape) <= 80
    assert changed >= 10


def test_generator_jitters_the_photo_and_labels_families(
    generator: CompositeGenerator,
) -> None:
    metas = [generator.triplet(i).meta for i in range(30)]
    assert {m["kind"] for m in metas} == set(mistakes.FAMILY_MIX)
    assert any(m["jitter"] for m in metas) and any(m["strong"] for m in metas)


def test_family_mix_changes_the_recipe_not_the_view(folder: tuple[Path, Path, Path]) -> None:
    photos, masks, bank = folder

    def make(mix: dict[str, float]) -> CompositeGenerator:
        return CompositeGenerator(
            scan_folder("test", photos, masks),
            sorted(bank.iterdir()),
            seed=3,
            max_side=80,
            family_mix=mix,
        )

    default, only_transfer = make(mistakes.FAMILY_MIX), make({"transfer": 2, "look": 0, "light": 0})
    plain = CompositeGenerator(
        scan_folder("test", photos, masks), sorted(bank.iterdir()), seed=3, max_side=80
    )
    kinds = []
    for i in range(12):
        a, b, c = plain.triplet(i), default.triplet(i), only_transfer.triplet(i)
        assert np.array_equal(a.composite, b.composite) and a.meta == b.meta
        # The same photo, view and object (the family is one draw whatever the mix) ...
        assert np.array_equal(a.real, c.real) and np.array_equal(a.mask, c.mask)
        assert c.meta["kind"] == "transfer"  # ... recoloured by the family asked for
        kinds.append(a.meta["kind"])
    assert set(kinds) - {"transfer"}  # the default mix drew other families on these views
    for bad in ({"transfer": 1, "look": 1}, {"transfer": -1, "look": 1, "light": 1}):
        with pytest.raises(ValueError, match="family_mix needs non-negative weights"):
            make(bad)
    with pytest.raises(ValueError, match="family_mix needs a positive weight"):
        make({"transfer": 0, "look": 0, "light": 0})


def test_identity_share_leaves_the_object_as_it_is(folder: tuple[Path, Path, Path]) -> None:
    photos, masks, bank = folder
    make = lambda augment: CompositeGenerator(  # noqa: E731
        scan_folder("test", photos, masks),
        sorted(bank.iterdir()),
        seed=3,
        max_side=80,
        augment=augment,
        identity_fraction=0.5,
    )
    kept = [t for t in (make(True).triplet(i) for i in range(20)) if t.meta["kind"] == "none"]
    assert 3 <= len(kept) <= 17
    assert all(np.array_equal(t.composite, t.real) and t.meta["fmse"] == 0 for t in kept)
    plain = CompositeGenerator(
        scan_folder("test", photos, masks),
        sorted(bank.iterdir()),
        seed=3,
        max_side=80,
        augment=False,
    )
    for i in range(5):  # validation views never draw it: the same composites as before
        assert np.array_equal(make(False).triplet(i).composite, plain.triplet(i).composite)


def test_sides_touched_counts_the_sides_a_mask_reaches() -> None:
    m = np.zeros((20, 30), np.float32)
    m[5:10, 5:10] = 1
    assert sides_touched(m) == 0
    m[12:, :] = 1  # a "ground" segment: bottom, left and right
    assert sides_touched(m) == 3
    assert sides_touched(np.ones((4, 4), np.float32)) == 4


def test_object_like_limits_reject_scene_segments(tmp_path: Path) -> None:
    """Photos whose only mask is a ground segment (3 sides) or a huge blob: with the limits
    every object touches at most two sides and covers at most the given share."""
    photos, masks = tmp_path / "photos", tmp_path / "masks"
    photos.mkdir(), masks.mkdir()
    for i in range(4):
        cv2.imwrite(str(photos / f"p{i}.png"), smooth_photo(60, 80, i)[..., ::-1])
        m = np.zeros((60, 80), np.uint8)
        if i % 2:
            m[35:, :] = 255  # ground: 42 % of the frame, three sides
        else:
            m[3:57, 3:77] = 255  # 84 % of the frame, no side
        cv2.imwrite(str(masks / f"p{i}.png"), m)
    found = scan_folder("t", photos, masks)

    def shapes(**limits: float) -> list[tuple[float, int]]:
        out = []
        for augment in (False, True):
            gen = CompositeGenerator(found, [], seed=1, max_side=80, augment=augment, **limits)
            for i in range(8):
                binary = gen.triplet(i).mask >= 0.5
                out.append((float(binary.mean()), sides_touched(binary)))
        return out

    assert max(s for _, s in shapes()) >= 3 and max(a for a, _ in shapes()) > 0.6
    limited = shapes(max_object_area=0.45, max_object_sides=2)
    assert all(a <= 0.45 and s <= 2 for a, s in limited)


def test_scene_mismatch_is_small_where_the_scene_explains_the_object() -> None:
    """An object of its scene's colours (one stationary texture) scores ~0 and a global gain
    of the photo keeps it there; a flat red object on a grey scene scores high."""
    img = np.random.default_rng(0).uniform(0.2, 0.7, (40, 50, 3)).astype(np.float32)
    mask = np.zeros((40, 50), np.float32)
    mask[10:30, 15:35] = 1
    assert scene_mismatch(img, mask) < 20 and scene_mismatch(0.8 * img + 0.1, mask) < 20
    red = np.full_like(img, 0.5)
    red[mask > 0] = (0.9, 0.1, 0.1)
    assert scene_mismatch(red, mask) > 3000


def test_scene_limit_redraws_objects_the_scene_does_not_explain(tmp_path: Path) -> None:
    """One photo of four is a red disc on grey (its own mask), the others one texture
    throughout: with the limit no sample shows the disc; without it it appears, and the limit
    leaves the seed's reproducibility intact."""
    photos, masks = tmp_path / "photos", tmp_path / "masks"
    photos.mkdir(), masks.mkdir()
    for i in range(4):
        m = np.zeros((60, 80), np.uint8)
        cv2.circle(m, (40, 30), 14, 255, -1)
        img = np.random.default_rng(i).integers(60, 180, (60, 80, 3)).astype(np.uint8)
        if i == 1:
            img[:] = 128
            img[m > 0] = (230, 20, 20)
        cv2.imwrite(str(photos / f"p{i}.png"), img[..., ::-1])
        cv2.imwrite(str(masks / f"p{i}.png"), m)
    found = scan_folder("t", photos, masks)

    def views(limit: float | None, n: int = 12, **kw: Any) -> list[tuple[float, str]]:
        gen = CompositeGenerator(found, [], seed=2, max_side=80, max_scene_mismatch=limit, **kw)
        out = []
        for i in range(n):
            t = gen.triplet(i)
            assert gen.triplet(i).meta == t.meta  # still a function of (seed, i)
            out.append((scene_mismatch(t.real.astype(np.float32) / 255, t.mask), t.meta["kind"]))
        return out

    assert max(v for v, _ in views(None)) > 3000
    assert max(v for v, _ in views(1000.0)) <= 1000.0
    # identity_any_scene: the pastes left as they are come from every view (the red disc too),
    # the recoloured ones still from views under the limit.
    mixed = views(1000.0, 40, identity_fraction=0.5, identity_any_scene=True)
    kept = [v for v, kind in mixed if kind == "none"]
    assert 8 <= len(kept) <= 32 and max(kept) > 3000
    assert max(v for v, kind in mixed if kind != "none") <= 1000.0


def test_look_scale_strengthens_looks() -> None:
    img = smooth_photo(24, 32, 5).astype(np.float32) / 255

    def change(scale: float) -> float:
        total = 0.0
        for seed in range(40):
            recipe = mistakes.draw_look(np.random.default_rng(seed), 0.5, False, scale)
            total += float(np.abs(ops.apply_recipe(img, recipe) - img).mean())
        return total

    assert change(2.0) > 1.5 * change(1.0)


def test_generators_from_a_data_spec(folder: tuple[Path, Path, Path]) -> None:
    photos, masks, bank = folder
    found, shapes = scan_folder("test", photos, masks), sorted(bank.iterdir())
    spec = DataSpec(
        seed=4,
        max_side=64,
        val_max_side=48,
        identity_fraction=0.2,
        look_scale=2.0,
        max_scene_mismatch=900.0,
        identity_any_scene=True,
        foreign_fraction=0.4,
        donor_light="grey-edge",
        family_mix=(0.5, 0.3, 0.2),
        first_sample=3,
    )
    train = CompositeGenerator.from_spec(found, shapes, spec, val=False)
    val = CompositeGenerator.from_spec(found, shapes, spec, val=True)
    assert (train.seed, train.max_side, train.augment, train.identity_fraction) == (
        4,
        64,
        True,
        0.2,
    )
    assert (val.seed, val.max_side, val.augment) == (4 + VAL_SEED_OFFSET, 48, False)
    assert val.identity_fraction == 0.0 and train.look_scale == val.look_scale == 2.0
    assert train.max_scene_mismatch == val.max_scene_mismatch == 900.0
    assert train.foreign_fraction == val.foreign_fraction == 0.4
    assert train.donor_light == val.donor_light == "grey-edge"
    mix = {"transfer": 0.5, "look": 0.3, "light": 0.2}
    assert train.family_mix == val.family_mix == mix  # validation sets follow the mix too
    assert (train.first_index, val.first_index) == (3, 0)  # the validation set never moves
    assert train.identity_any_scene and not CompositeGenerator(found, shapes).identity_any_scene
    assert max(val.triplet(0).mask.shape) <= 48
    plain = CompositeGenerator(found, shapes)  # the generator's defaults are the spec's
    spec = DataSpec()
    assert (plain.max_object_area, plain.max_object_sides, plain.look_scale) == (
        spec.max_object_area,
        spec.max_object_sides,
        spec.look_scale,
    )
    assert plain.strong_probability == spec.strong_probability == mistakes.STRONG_PROBABILITY
    assert plain.max_bank_fill == spec.max_bank_fill
    assert plain.max_scene_mismatch is spec.max_scene_mismatch is None
    assert plain.first_index == spec.first_sample == 0
    assert plain.foreign_fraction == spec.foreign_fraction == 0.0
    assert plain.donor_light == spec.donor_light == "grey-world"
    assert plain.family_mix == dict(zip(mistakes.FAMILY_MIX, spec.family_mix, strict=True))
    assert plain.family_mix == mistakes.FAMILY_MIX
    with pytest.raises(ValueError, match="unknown donor_light 'sky'"):
        CompositeGenerator(found, shapes, donor_light="sky")


def test_generator_skips_greyscale_photos(tmp_path: Path) -> None:
    photos, _, bank = write_photo_folder(tmp_path, n=2)
    grey = cv2.cvtColor(cv2.imread(str(photos / "p1.png")), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(photos / "p1.png"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    gen = CompositeGenerator(scan_folder("t", photos), sorted(bank.iterdir()), max_side=80)
    assert all(gen.triplet(i).meta["photo"] == "t/p0" for i in range(12))


def test_generator_is_seeded_and_reproducible(folder: tuple[Path, Path, Path]) -> None:
    photos, masks, bank = folder

    def make(seed: int) -> CompositeGenerator:
        return CompositeGenerator(
            scan_folder("test", photos, masks), sorted(bank.iterdir()), seed=seed, max_side=80
        )

    a, b, c = make(1), make(1), make(2)
    for i in (0, 5, 3):  # any order: sample i depends on (seed, i) only
        ta, tb = a.triplet(i), b.triplet(i)
        assert np.array_equal(ta.composite, tb.composite) and ta.meta == tb.meta
    assert any(not np.array_equal(a.triplet(i).composite, c.triplet(i).composite) for i in range(3))
    later = CompositeGenerator(
        scan_folder("test", photos, masks),
        sorted(bank.iterdir()),
        seed=1,
        max_side=80,
        first_index=4,
    )  # a later stage's stream: its sample i is sample 4 + i of the stream from 0
    assert np.array_equal(later.triplet(1).composite, a.triplet(5).composite)
    assert later.triplet(1).name == a.triplet(5).name


def test_training_example_and_collate(generator: CompositeGenerator) -> None:
    batch = collate([training_example(generator.triplet(i), 64) for i in range(3)])
    assert batch.lr_input.shape == (3, 4, 64, 64) and batch.lr_real.shape == (3, 3, 64, 64)
    assert len(batch.hr_composite) == 3
    for c, m, r in zip(batch.hr_composite, batch.hr_mask, batch.hr_real, strict=True):
        assert c.shape == r.shape and m.shape == (1, *c.shape[1:]) and float(c.min()) >= 0


def test_split_holds_out_whole_photos(folder: tuple[Path, Path, Path]) -> None:
    photos, masks, bank = folder
    sources = {"a": scan_folder("a", photos, masks), "b": scan_folder("b", photos)}
    sp = split_photos(sources, sorted(bank.iterdir()), 0.25, seed=0)
    assert not set(sp.train) & set(sp.val) and len(sp.train) + len(sp.val) == 8
    assert {k.split("/")[0] for k in sp.val} == {"a", "b"}
    assert split_photos(sources, sorted(bank.iterdir()), 0.25, seed=0) == sp
    assert split_keys(["x"], 0.5, 0) == (["x"], [])


def test_scan_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_folder("x", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no photos"):
        scan_folder("x", tmp_path)


# -- iHarmony4 --------------------------------------------------------------------------------
def fake_iharmony4(root: Path) -> None:
    """Two subsets, 3 composites each (2 train, 1 test), tiny JPEGs and PNG masks."""
    for subset, prefix in (("HFlickr", "f"), ("HAdobe5k", "a")):
        d = root / subset
        for sub in ("composite_images", "masks", "real_images"):
            (d / sub).mkdir(parents=True)
        names = []
        for i in range(2):
            base = f"{prefix}{i:04d}"
            real = smooth_photo(40, 60, i)
            cv2.imwrite(str(d / "real_images" / f"{base}.jpg"), real[..., ::-1])
            m = np.zeros((40, 60), np.uint8)
            m[10:30, 20:40] = 255
            cv2.imwrite(str(d / "masks" / f"{base}_1.png"), m)
            for k in (1, 2) if i == 0 else (1,):
                cv2.imwrite(
                    str(d / "composite_images" / f"{base}_1_{k}.jpg"), (real // 2)[..., ::-1]
                )
                names.append(f"{base}_1_{k}.jpg")
        (d / f"{subset}_train.txt").write_text("\n".join(names[:2]) + "\n")
        (d / f"{subset}_test.txt").write_text(names[2] + "\n")


def test_iharmony4_names_pair_like_the_official_loader() -> None:
    assert iharmony4.parse_name("d90000002-24_1_26") == ("d90000002-24", "d90000002-24_1")
    assert iharmony4.parse_name("c49845_596485_1") == ("c49845", "c49845_596485")
    with pytest.raises(ValueError, match="maskid"):
        iharmony4.parse_name("a0001")


def test_iharmony4_loader_on_a_fake_tree(tmp_path: Path) -> None:
    fake_iharmony4(tmp_path)
    train = iharmony4.list_entries(tmp_path, "train")
    test = iharmony4.list_entries(tmp_path, "test")
    assert len(train) == 4 and len(test) == 2
    assert {e.subset for e in train} == {"HAdobe5k", "HFlickr"}
    e = next(e for e in train if e.name == "f0000_1_2")
    assert e.real.name == "f0000.jpg" and e.mask.name == "f0000_1.png"
    t = iharmony4.load_entry(e)
    assert t.composite.shape == (40, 60, 3) and t.mask.max() == 1.0 and t.real is not None
    assert len(iharmony4.list_entries(tmp_path, "train", ["HFlickr"])) == 2
    assert len(iharmony4.list_entries(tmp_path / "HFlickr", "test")) == 1
    ds = iharmony4.IHarmony4Train(train, seed=0, max_side=32, lr_size=64)
    seen = {ds.triplet(i).name for i in range(4)}
    assert seen == {x.name for x in train}  # one epoch visits every entry once
    ex = ds[5]
    assert ex["lr_input"].shape == (4, 64, 64) and max(ex["hr_composite"].shape[1:]) <= 32
    (tmp_path / "HFlickr" / "real_images" / "f0001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="f0001"):
        iharmony4.list_entries(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="lists"):
        iharmony4.list_entries(tmp_path, "val")


def test_resize_tree_limits_the_longer_side(tmp_path: Path) -> None:
    fake_iharmony4(tmp_path / "src")
    n = iharmony4.resize_tree(tmp_path / "src" / "HAdobe5k", tmp_path / "dst", max_side=30)
    assert n == 7  # 3 composites, 2 masks, 2 real images
    img = cv2.imread(str(tmp_path / "dst" / "real_images" / "a0000.jpg"))
    assert img.shape[:2] == (20, 30)
    assert len(iharmony4.list_entries(tmp_path / "dst", "train")) == 2
    assert iharmony4.resize_tree(tmp_path / "src" / "HAdobe5k", tmp_path / "dst", 30) == 0


def test_written_synthetic_set_reads_back_exactly(
    generator: CompositeGenerator, tmp_path: Path
) -> None:
    triplets = [generator.triplet(i) for i in range(3)]
    root = write_triplets(triplets, tmp_path / "syn")
    entries = iharmony4.list_entries(root, "test")
    assert len(entries) == 3
    for t, e in zip(triplets, entries, strict=True):
        back = iharmony4.load_entry(e)
        assert np.array_equal(back.composite, t.composite)
        assert back.real is not None and np.array_equal(back.real, t.real)
        np.testing.assert_allclose(back.mask, t.mask, atol=1e-6)
    loaded = iharmony4.attach_recipes(root, [iharmony4.load_entry(e) for e in entries])
    assert [b.meta["kind"] for b in loaded] == [t.meta["kind"] for t in triplets]
    assert {b.subset for b in loaded} == {"test"}  # the photo source, not the folder name

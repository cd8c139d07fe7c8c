"""Synthetic composites: recolour an object of a real photo; the untouched photo is the truth.

For sample ``i`` the generator draws, from a generator seeded by ``(seed, i)`` (so any sample can
be regenerated alone, in any worker, after any resume):

1. a colour photo (sources weighted by the square root of their size; greyscale ones redrawn),
   and an object mask: the photo's own mask, a region of its segmentation label map, or a shape
   from the object-mask bank;
2. (training) a view: a crop of 0.3-1 per side of the photo kept at 1024 px (several scales), a
   horizontal flip and sometimes a quarter turn, then a downscale so the longer side is at most
   ``max_side`` (the "full-resolution" side of CPU training);
3. a soft mask edge (anti-aliased or feathered); with ``max_scene_mismatch`` set, steps 1-3
   are redrawn (up to :data:`SCENE_TRIES` times) while the scene does not explain the object's
   colours (:func:`scene_mismatch` above the limit: a red car in a grey street); with
   ``foreign_fraction`` set, that share of views instead gets an object cut from another photo
   shot in similar light (:func:`light_gap`) and pasted as it is: its own colours are the truth;
   with ``horizon_fraction`` set, that share instead becomes a sky replacement: the land of
   another photo in similar light below a random horizon (:func:`masks.horizon_mask`); with
   ``vivid_fraction`` set, that share of pasted objects is made more saturated first (food, toys
   and clothes are vivid in their own right: the vivid colours are the truth);
4. (training) a random global colour change of the whole view (:func:`draw_jitter`): the ground
   truth changes with it, so no photo's own colours can be memorised;
5. a recipe family and a recipe (:mod:`training.data.mistakes`): a transfer of another photo's
   colours, a photographic look, or another light; a share of them strong;
6. ``composite = real + mask * (recoloured - real)``, rounded to 8 bits. Where the mask is 0 the
   composite equals the photo bit for bit.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from layer_harmonizer.color_stats import classical_transfer
from layer_harmonizer.image_files import read_image
from training.data import masks as M
from training.data.augment import crop_box, fit_size, resize_image
from training.data.colour_edits import Recipe, apply_recipe, region_lab_stats, region_pixels
from training.data.mistakes import (
    FAMILY_MIX,
    JITTER_PROBABILITY,
    STRONG_PROBABILITY,
    draw_family,
    draw_jitter,
    draw_light,
    draw_look,
    draw_transfer,
)
from training.data.samples import Triplet, training_example
from training.data.sources import Photo

if TYPE_CHECKING:
    from training.config import DataSpec

VAL_SEED_OFFSET = 10_000
"""Validation composites use seed + this, so they never coincide with training draws."""
MIN_CHANGE_FMSE = 20.0
"""Smallest foreground MSE (0..255 scale) of a composite; milder recipes are redrawn."""
CACHE_SIDE = 1024
"""Photos are decoded once and kept in memory downscaled to this longer side (large enough
that crops at several scales of a 4K photo are different views, not the same blur)."""
MIN_CROP_RATIO = 0.3
"""Smallest crop side as a share of the cached photo's side (training views)."""
ROTATE_PROBABILITY = 0.2
"""Share of training views turned by a quarter (either way)."""
GREY_TOLERANCE = 3
"""A photo whose channels never differ by more than this (0..255) is greyscale content."""
SCENE_TRIES = 8
"""Views drawn at most per sample while looking for one under ``max_scene_mismatch``."""
DONOR_TRIES = 24
"""Donor photos drawn at most per sample while looking for one lit like the scene."""
FOREIGN_MIX: dict[str, float] = {"none": 0.3, "look": 0.35, "light": 0.35}
"""Recipe families of pasted objects: left as they are, or a look or another light (a transfer
of another photo's colours is not undone from the object's own: they are its truth)."""
MAX_LIGHT_GAP = (0.12, 0.4)
"""Largest :func:`light_gap` (colour cast, exposure) between a donor photo and the scene."""
VIVID_SATURATION = (1.4, 2.4)
"""Range of the saturation factor of a vivid pasted object (``vivid_fraction``)."""
VIVID_MIN_CHROMA = 15.0
"""Smallest mean Lab chroma of a pasted object made vivid (a greyish one is left as it is)."""


DONOR_LIGHT = ("grey-world", "grey-edge")
"""How :func:`light_gap` estimates a photo's light: by its mean colour (content counts: a blue
beach reads as blue light) or by its mean edge colour (grey-edge: the colour of contrast between
surfaces, which follows the light more than what the scene shows)."""


def light_estimate(x: np.ndarray, estimate: str = "grey-world") -> tuple[np.ndarray, float]:
    """A photo's light for :func:`light_gap`: ``(colour, level)``, the ``(3,)`` log light
    colour with its mean taken out and the log mean level (natural logs; the level is the
    grey-world mean either way).

    Args:
        x: ``(H, W, 3)`` uint8 RGB photo (any size).
        estimate: one of :data:`DONOR_LIGHT`: the light colour as the photo's mean colour
            (grey-world) or as the mean gradient magnitude per channel of the photo blurred
            with a Gaussian of sigma 1 (grey-edge, first order).
    """
    if estimate not in DONOR_LIGHT:
        raise ValueError(f"unknown light estimate {estimate!r} (one of {', '.join(DONOR_LIGHT)})")
    level = np.log(x[::4, ::4].astype(np.float32).reshape(-1, 3).mean(0) + 1.0)
    colour = level
    if estimate == "grey-edge":
        half = cv2.GaussianBlur(x[::2, ::2].astype(np.float32), (0, 0), 1.0)
        edges = np.hypot(cv2.Sobel(half, cv2.CV_32F, 1, 0), cv2.Sobel(half, cv2.CV_32F, 0, 1))
        colour = np.log(edges.reshape(-1, 3).mean(0) + 1.0)
    return colour - colour.mean(), float(level.mean())


def light_gap(a: np.ndarray, b: np.ndarray, estimate: str = "grey-world") -> tuple[float, float]:
    """How differently two photos are lit: ``(cast, exposure)``, the largest per-channel
    difference of their :func:`light_estimate` colours and the difference of their levels.

    Args:
        a, b: ``(H, W, 3)`` uint8 RGB photos (any sizes).
        estimate: one of :data:`DONOR_LIGHT` (:func:`light_estimate`).
    """
    return _gap(light_estimate(a, estimate), light_estimate(b, estimate))


def _gap(a: tuple[np.ndarray, float], b: tuple[np.ndarray, float]) -> tuple[float, float]:
    """:func:`light_gap` of two :func:`light_estimate` results."""
    return float(np.abs(a[0] - b[0]).max()), abs(a[1] - b[1])


def scene_mismatch(real: np.ndarray, soft: np.ndarray) -> float:
    """How far the scene is from explaining the object's colours: the foreground MSE
    (0..255 scale, weighted by the mask) of the classical statistics match applied to the
    *untouched* photo. It is small where the object's colours follow its scene's light and
    large for an object of its own colours (a red car in a grey street); it does not depend on
    a composite's per-channel gain and offset, so it is also roughly the classical transfer's
    error on any composite of this view.

    Args:
        real: ``(H, W, 3)`` float32 RGB in [0, 1].
        soft: ``(H, W)`` float32 mask in [0, 1].
    """
    image = torch.from_numpy(np.ascontiguousarray(real)).permute(2, 0, 1)[None]
    mask = torch.from_numpy(np.ascontiguousarray(soft))[None, None]
    matched = classical_transfer(image, mask)
    diff = ((matched - image) * 255.0) ** 2 * mask
    return float(diff.sum() / (3 * mask.sum()).clamp_min(1e-6))


def _by_source(photos: list[Photo]) -> dict[str, list[Photo]]:
    """Photos grouped by their source, in the order given."""
    groups: dict[str, list[Photo]] = {}
    for p in photos:
        groups.setdefault(p.source, []).append(p)
    return groups


def _sqrt_weighted(groups: dict[str, list[Photo]]) -> tuple[list[str], np.ndarray]:
    """``(sorted source names, probabilities)``: each source drawn in proportion to the square
    root of its size (a large source does not crowd out the small ones)."""
    names = sorted(groups)
    weights = np.sqrt([len(groups[s]) for s in names])
    return names, weights / weights.sum() if names else weights


class CompositeGenerator:
    """Deterministic synthetic composites from a set of photos and a mask bank.

    Args:
        photos: the photos to draw from (one split).
        bank: object-mask files to place on photos (may be empty if every photo has masks).
        seed: base seed; sample ``i`` depends only on ``(seed, i)`` and the inputs.
        max_side: longer side of the produced images (downscale only); None keeps the size.
        augment: apply the paper's random crop and flip (training) or not (validation).
        cache_side: photos are kept in memory at this longer side.
        max_bank_fill: skip bank shapes that fill more than this share of their bounding box
            (about a quarter of the Lalonde-Efros shapes are near-rectangles, e.g. buildings,
            at 0.9); 1.0 keeps all.
        identity_fraction: (training views only) share of composites whose object is left as
            it is: a paste that already fits, which the network must learn to leave alone.
        max_object_area: largest foreground share of an accepted object mask.
        max_object_sides: largest number of image sides an accepted object mask may touch
            (a sky or ground segment touches three: a region of the scene, not an object).
        look_scale: multiplies the magnitudes of the ``look`` family's edits.
        strong_probability: share of composites drawn from the strong distributions.
        family_mix: weights of the recipe families (:data:`FAMILY_MIX` by default; any
            non-negative weights of positive sum). Pasted objects keep :data:`FOREIGN_MIX`.
        max_scene_mismatch: redraw views whose :func:`scene_mismatch` exceeds this (None: keep
            every view). Real composites' objects mostly follow their scene's light; a stream
            full of objects the scene does not explain teaches the network to distrust it.
        identity_any_scene: (training views only) composites left unchanged are drawn from
            every view, not only those under ``max_scene_mismatch``: the network also sees
            objects of their own colours, and learns to leave them as they are. Their share is
            ``identity_fraction``, decided on a stream of its own.
        foreign_fraction: share of composites whose object is cut from another photo (one
            with object masks or label regions) lit like the scene and pasted as it is, then
            left unchanged or given a look or another light (:data:`FOREIGN_MIX`): a pasted
            object of its own colours, which the network must not pull to the scene's. Decided
            on a stream of its own (validation sets too, so a set of such pastes can be made).
        donor_light: how a donor's light is compared with the scene's (:data:`DONOR_LIGHT`,
            :func:`light_gap`); ``grey-edge`` lets a scene of blue content (a beach) take
            donors under neutral light.
        horizon_fraction: share of composites that are a sky replacement: the scene's top
            over the land (everything below a random horizon) of another photo lit like it,
            pasted as it is and then treated as a pasted object (:data:`FOREIGN_MIX`): the
            land's own colours are the truth, not the new sky's. Decided on a stream of its own,
            after ``foreign_fraction`` (validation sets too).
        vivid_fraction: share of the pasted objects of ``foreign_fraction`` whose saturation
            is raised by a factor in :data:`VIVID_SATURATION` before the paste (clipped, as a
            vivid object's brightest channel is in a photo; objects of mean Lab chroma under
            :data:`VIVID_MIN_CHROMA` are left as they are): what a saturated object looks like
            when nothing is wrong with it. Drawn from a stream of its own (validation sets too).
        first_index: composite ``i`` is drawn as number ``first_index + i`` (a later training
            stage on the same recipe sees new composites).
    """

    def __init__(
        self,
        photos: list[Photo],
        bank: list[Path],
        *,
        seed: int = 0,
        max_side: int | None = 352,
        augment: bool = True,
        cache_side: int = CACHE_SIDE,
        max_bank_fill: float = 1.0,
        identity_fraction: float = 0.0,
        max_object_area: float = 0.85,
        max_object_sides: int = 4,
        look_scale: float = 1.0,
        strong_probability: float = STRONG_PROBABILITY,
        family_mix: Mapping[str, float] = FAMILY_MIX,
        max_scene_mismatch: float | None = None,
        identity_any_scene: bool = False,
        foreign_fraction: float = 0.0,
        donor_light: str = "grey-world",
        horizon_fraction: float = 0.0,
        vivid_fraction: float = 0.0,
        first_index: int = 0,
    ) -> None:
        if not photos:
            raise ValueError("the composite generator needs at least one photo")
        if not bank and any(p.mask_kind == "none" for p in photos):
            raise ValueError("photos without masks need an object-mask bank")
        self.by_source = _by_source(photos)
        self.sources, self.source_p = _sqrt_weighted(self.by_source)
        # Donors of pasted objects: the photos with object masks or label regions.
        self.donors = _by_source([p for p in photos if p.masks])
        self.donor_sources, self.donor_p = _sqrt_weighted(self.donors)
        self.bank = list(bank)
        self.seed, self.max_side, self.augment = seed, max_side, augment
        self.cache_side, self.max_bank_fill = cache_side, max_bank_fill
        self.identity_fraction = identity_fraction
        self.max_object_area, self.max_object_sides = max_object_area, max_object_sides
        self.look_scale, self.strong_probability = look_scale, strong_probability
        if set(family_mix) != set(FAMILY_MIX) or min(family_mix.values()) < 0:
            raise ValueError(f"family_mix needs non-negative weights of {sorted(FAMILY_MIX)}")
        if sum(family_mix.values()) <= 0:
            raise ValueError("family_mix needs a positive weight")
        self.family_mix = {name: float(family_mix[name]) for name in FAMILY_MIX}
        self.max_scene_mismatch = max_scene_mismatch
        self.identity_any_scene = identity_any_scene
        self.foreign_fraction = foreign_fraction
        if donor_light not in DONOR_LIGHT:
            raise ValueError(f"unknown donor_light {donor_light!r} (one of {DONOR_LIGHT})")
        self.donor_light = donor_light
        self.horizon_fraction = horizon_fraction
        self.vivid_fraction = vivid_fraction
        self.first_index = first_index
        self._cache: dict[Path, np.ndarray] = {}
        self._pixels: dict[tuple[Path, int], np.ndarray] = {}
        self._grey: dict[Path, bool] = {}

    @classmethod
    def from_spec(
        cls, photos: list[Photo], bank: list[Path], spec: DataSpec, *, val: bool
    ) -> CompositeGenerator:
        """The generator of a run's training stream (``val=False``) or its fixed validation
        set (``val=True``: held-out seed offset, ``val_max_side``, no augmentation)."""
        return cls(
            photos,
            bank,
            seed=spec.seed + (VAL_SEED_OFFSET if val else 0),
            max_side=spec.val_max_side if val else spec.max_side,
            augment=not val,
            max_bank_fill=spec.max_bank_fill,
            identity_fraction=0.0 if val else spec.identity_fraction,
            max_object_area=spec.max_object_area,
            max_object_sides=spec.max_object_sides,
            look_scale=spec.look_scale,
            strong_probability=spec.strong_probability,
            family_mix=dict(zip(FAMILY_MIX, spec.family_mix, strict=True)),
            max_scene_mismatch=spec.max_scene_mismatch,
            identity_any_scene=spec.identity_any_scene,
            foreign_fraction=spec.foreign_fraction,
            donor_light=spec.donor_light,
            horizon_fraction=spec.horizon_fraction,
            vivid_fraction=spec.vivid_fraction,
            first_index=0 if val else spec.first_sample,
        )

    # -- inputs -------------------------------------------------------------------------------
    def photo(self, p: Photo) -> np.ndarray:
        """The photo as ``(H, W, 3)`` uint8 RGB, downscaled to ``cache_side`` (cached)."""
        img = self._cache.get(p.image)
        if img is None:
            rgb, _ = read_image(p.image)
            if rgb.dtype != np.uint8:
                rgb = (rgb.astype(np.float32) / np.iinfo(rgb.dtype).max * 255 + 0.5).astype(
                    np.uint8
                )
            img = resize_image(rgb, fit_size(*rgb.shape[:2], self.cache_side))
            self._cache[p.image] = img
            spread = img[::4, ::4].max(axis=2).astype(np.int16) - img[::4, ::4].min(axis=2)
            self._grey[p.image] = int(spread.max()) <= GREY_TOLERANCE
        return img

    def _bank_mask(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray | None:
        if not self.bank:
            return None
        shape_mask = M.load_binary(self.bank[int(rng.integers(len(self.bank)))])
        return M.place_bank_mask(shape_mask, shape, rng, self.max_bank_fill)

    def object_mask(
        self, p: Photo, shape: tuple[int, int], rng: np.random.Generator
    ) -> tuple[np.ndarray, str]:
        """A binary ``(H, W)`` float32 object mask for photo ``p`` and where it came from."""
        for _ in range(6):
            mask, origin = None, "bank"
            if p.masks and (not self.bank or rng.random() < 0.6):
                path = p.masks[int(rng.integers(len(p.masks)))]
                if p.mask_kind == "labels":
                    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                    if labels is not None:
                        labels = cv2.resize(
                            labels, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST
                        )
                        mask, origin = M.label_region(labels, rng), "labels"
                else:
                    mask, origin = M.load_binary(path, shape), "own"
            else:
                mask = self._bank_mask(shape, rng)
            if mask is not None and self._object_like(mask, M.MIN_FRACTION):
                return mask, origin
        mask = self._bank_mask(shape, rng)
        if mask is None:  # no usable mask at all: a centred ellipse keeps the stream going
            mask = np.zeros(shape, np.float32)
            cv2.ellipse(
                mask,
                (shape[1] // 2, shape[0] // 2),
                (shape[1] // 4, shape[0] // 4),
                0,
                0,
                360,
                1.0,
                -1,
            )
        return mask, "bank"

    def _object_like(self, mask: np.ndarray, min_share: float) -> bool:
        """Whether ``mask`` covers ``min_share`` to ``max_object_area`` of the image and
        touches at most ``max_object_sides`` of its sides."""
        share = M.fraction(mask)
        if not min_share <= share <= self.max_object_area:
            return False
        return self.max_object_sides >= 4 or M.sides_touched(mask) <= self.max_object_sides

    def _other_pixels(self, exclude: Photo, rng: np.random.Generator) -> np.ndarray:
        """Up to 2048 ``(N, 3)`` float32 pixels of an object (or the whole frame) of another
        photo: the colours a transfer moves the object to."""
        source = self.sources[int(rng.choice(len(self.sources), p=self.source_p))]
        pool = self.by_source[source]
        other = pool[int(rng.integers(len(pool)))]
        if other.image == exclude.image and len(pool) > 1:
            other = pool[(pool.index(other) + 1) % len(pool)]
        region = int(rng.integers(4))  # a few fixed regions per photo, cached
        key = (other.image, region)
        if key not in self._pixels:
            img = self.photo(other)
            small = resize_image(img, fit_size(*img.shape[:2], 160))
            sub = np.random.default_rng([zlib.crc32(str(other.key).encode()), region])
            if region == 0:
                m = np.ones(small.shape[:2], np.float32)
            else:
                m, _ = self.object_mask(other, small.shape[:2], sub)
            self._pixels[key] = region_pixels(small.astype(np.float32) / 255, m, 2048)
        return self._pixels[key]

    def _draw_photo(self, rng: np.random.Generator) -> tuple[Photo, np.ndarray]:
        """A photo (sources weighted by the square root of their size) and its cached pixels;
        greyscale photos are redrawn (a colour recipe on them teaches nothing)."""
        for _ in range(8):
            source = self.sources[int(rng.choice(len(self.sources), p=self.source_p))]
            pool = self.by_source[source]
            p = pool[int(rng.integers(len(pool)))]
            img = self.photo(p)
            if not self._grey.get(p.image, False):
                break
        return p, img

    def _view(
        self, p: Photo, img: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """``(image, binary mask, mask origin)`` of one training view of photo ``p``: a crop at
        a random scale (a large photo gives many different views), a flip and sometimes a
        quarter turn. Without augmentation: the whole photo."""
        if not self.augment:
            mask, origin = self.object_mask(p, img.shape[:2], rng)
            return img, mask, origin
        # Crops never smaller than 3/4 of the training side, so they are not upscaled much.
        side = min(img.shape[:2])
        ratio = min(1.0, max(MIN_CROP_RATIO, 0.75 * (self.max_side or side) / side))
        if not p.masks:  # a bank shape is placed on the crop itself
            y0, x0, ch, cw = crop_box(*img.shape[:2], rng, ratio)
            img = img[y0 : y0 + ch, x0 : x0 + cw]
            mask, origin = self.object_mask(p, img.shape[:2], rng)
        else:
            mask, origin = self.object_mask(p, img.shape[:2], rng)
            for _ in range(10):
                y0, x0, ch, cw = crop_box(*img.shape[:2], rng, ratio)
                if self._object_like(mask[y0 : y0 + ch, x0 : x0 + cw], M.MIN_FRACTION / 2):
                    break
            else:
                y0, x0, ch, cw = 0, 0, *img.shape[:2]
            img, mask = img[y0 : y0 + ch, x0 : x0 + cw], mask[y0 : y0 + ch, x0 : x0 + cw]
        if rng.random() < 0.5:
            img, mask = img[:, ::-1], mask[:, ::-1]
        if rng.random() < ROTATE_PROBABILITY:
            k = 1 if rng.random() < 0.5 else 3
            img, mask = np.rot90(img, k), np.rot90(mask, k)
        return np.ascontiguousarray(img), np.ascontiguousarray(mask), origin

    def _masked_view(
        self, rng: np.random.Generator
    ) -> tuple[Photo, np.ndarray, np.ndarray, np.ndarray, str]:
        """Steps 1-3 of a sample: ``(photo, (H, W, 3) uint8 view, (H, W) binary mask,
        (H, W) soft mask in [0, 1], mask origin)`` at the output size."""
        p, img = self._draw_photo(rng)
        img, mask, origin = self._view(p, img, rng)
        size = fit_size(*img.shape[:2], self.max_side)
        real8 = np.ascontiguousarray(resize_image(img, size))
        binary = (resize_image(mask, size) >= 0.5).astype(np.float32)
        return p, real8, binary, _soft_edge(binary, rng), origin

    def _foreign_view(
        self, rng: np.random.Generator
    ) -> tuple[Photo, np.ndarray, np.ndarray, np.ndarray, str] | None:
        """:meth:`_masked_view` whose object is cut from a donor photo lit like the scene
        (:data:`MAX_LIGHT_GAP`, by ``donor_light``) and pasted as it is; mask origin
        ``foreign:<donor key>``.
        None when no donor in similar light was found in :data:`DONOR_TRIES` draws."""
        p, scene, _, _, _ = self._masked_view(rng)
        scene_light = light_estimate(scene, self.donor_light)  # once, not per donor drawn
        sources = self.donor_sources
        for _ in range(DONOR_TRIES if sources else 0):
            pool = self.donors[sources[int(rng.choice(len(sources), p=self.donor_p))]]
            donor = pool[int(rng.integers(len(pool)))]
            img = self.photo(donor)
            if self._grey[donor.image] or donor.image == p.image:
                continue
            if not self._lit_like(img, scene_light):
                continue
            mask, origin = self.object_mask(donor, img.shape[:2], rng)
            placed = (
                None if origin == "bank" else M.place_cutout(mask, scene.shape[:2], rng, pixels=img)
            )
            if placed is None or not self._object_like(placed[0], M.MIN_FRACTION):
                continue
            binary, cutout = placed
            real8, soft = _paste(scene, cutout, binary, rng)
            return p, real8, binary, soft, f"foreign:{donor.key}"
        return None

    def _horizon_view(
        self, rng: np.random.Generator
    ) -> tuple[Photo, np.ndarray, np.ndarray, np.ndarray, str] | None:
        """:meth:`_masked_view` made a sky replacement: the scene's top over the land (below
        :func:`masks.horizon_mask`) of a crop of another photo lit like the scene
        (:data:`MAX_LIGHT_GAP`, by ``donor_light``), pasted as it is; mask origin
        ``horizon:<photo key>``. None when no photo in similar light was found in
        :data:`DONOR_TRIES` draws."""
        p, scene, _, _, _ = self._masked_view(rng)
        scene_light = light_estimate(scene, self.donor_light)
        h, w = scene.shape[:2]
        for _ in range(DONOR_TRIES):
            donor, img = self._draw_photo(rng)
            if self._grey[donor.image] or donor.image == p.image:
                continue
            if not self._lit_like(img, scene_light):
                continue
            # A crop of the scene's shape, 60-100 % of the largest that fits, anywhere.
            s = rng.uniform(0.6, 1.0) * min(img.shape[0] / h, img.shape[1] / w)
            ch = min(max(1, round(h * s)), img.shape[0])
            cw = min(max(1, round(w * s)), img.shape[1])
            y0 = int(rng.integers(0, img.shape[0] - ch + 1))
            x0 = int(rng.integers(0, img.shape[1] - cw + 1))
            land = resize_image(img[y0 : y0 + ch, x0 : x0 + cw], (h, w))
            binary = M.horizon_mask((h, w), rng)
            real8, soft = _paste(scene, land, binary, rng)
            return p, real8, binary, soft, f"horizon:{donor.key}"
        return None

    def _lit_like(self, img: np.ndarray, scene_light: tuple[np.ndarray, float]) -> bool:
        """Whether photo ``img`` (``(H, W, 3)`` uint8) is within :data:`MAX_LIGHT_GAP` of the
        scene's :func:`light_estimate` (by ``donor_light``)."""
        cast, exposure = _gap(light_estimate(img, self.donor_light), scene_light)
        return cast <= MAX_LIGHT_GAP[0] and exposure <= MAX_LIGHT_GAP[1]

    # -- samples ------------------------------------------------------------------------------
    def triplet(self, index: int) -> Triplet:
        """Synthetic composite number ``index`` (deterministic)."""
        index += self.first_index
        rng = np.random.default_rng([self.seed, index])
        # Decided apart from ``rng``, so streams without the option are drawn as before.
        left_as_is = (
            self.augment
            and self.identity_any_scene
            and np.random.default_rng([self.seed, index, 1]).random() < self.identity_fraction
        )
        foreign, saturation = None, None
        if self.vivid_fraction:
            draw = np.random.default_rng([self.seed, index, 4])
            if draw.random() < self.vivid_fraction:
                saturation = round(float(draw.uniform(*VIVID_SATURATION)), 4)
        if self.foreign_fraction and (
            np.random.default_rng([self.seed, index, 2]).random() < self.foreign_fraction
        ):
            foreign = self._foreign_view(rng)
        if (
            foreign is None
            and self.horizon_fraction
            and np.random.default_rng([self.seed, index, 3]).random() < self.horizon_fraction
        ):
            foreign = self._horizon_view(rng)
        tries = 1 if self.max_scene_mismatch is None or left_as_is else SCENE_TRIES
        for _ in range(0 if foreign else tries):  # no limit: one draw, as older streams drew
            p, real8, binary, soft, origin = self._masked_view(rng)
            real = real8.astype(np.float32) / 255.0
            if tries == 1 or scene_mismatch(real, soft) <= self.max_scene_mismatch:
                break
        vivid: Recipe = []
        if foreign:
            p, real8, binary, soft, origin = foreign
            real = real8.astype(np.float32) / 255.0
            if saturation is not None and origin.startswith("foreign:"):
                vivid = _vivid(real, binary, saturation)
            if vivid:  # the object itself is vivid: its new colours are the truth
                real8 = _blend8(real, apply_recipe(real, vivid), soft[..., None])
                real = real8.astype(np.float32) / 255.0
        jitter = draw_jitter(rng) if self.augment and rng.random() < JITTER_PROBABILITY else []
        if jitter:  # the ground truth changes too: the photo's own colours are not the answer
            real8 = _round8(apply_recipe(real, jitter) * 255.0)
            real = real8.astype(np.float32) / 255.0
        weight = soft[..., None]
        fg_mean = float((real * weight).sum() / max(3 * float(soft.sum()), 1e-6))
        family, strong = draw_family(rng, self.strong_probability, self.family_mix)
        if foreign:
            family = str(rng.choice(list(FOREIGN_MIX), p=list(FOREIGN_MIX.values())))
            strong = strong and family != "none"
        # Drawn for training views only, so validation sets stay exactly what they were.
        if left_as_is or (
            not self.identity_any_scene
            and self.augment
            and self.identity_fraction
            and rng.random() < self.identity_fraction
        ):
            family, strong = "none", False
        for _ in range(4):
            if family == "none":
                recipe: Recipe = []
                comp8, fmse = real8.copy(), 0.0
                break
            if family == "transfer":
                recipe = draw_transfer(
                    rng, region_pixels(real, binary), self._other_pixels(p, rng), strong
                )
            elif family == "look":
                recipe = draw_look(rng, fg_mean, strong, self.look_scale)
            else:
                recipe = draw_light(rng, fg_mean, strong)
            recoloured = apply_recipe(real, recipe)
            comp8 = _blend8(real, recoloured, weight)
            diff = (comp8.astype(np.float32) - real8) ** 2
            fmse = float((diff * weight).sum() / (3 * float(soft.sum()) + 1e-6))
            if fmse >= MIN_CHANGE_FMSE:
                break
        # Where the soft mask is exactly 0 the composite is the photo, bit for bit.
        comp8 = np.where(weight > 0, comp8, real8)
        meta = {
            "photo": p.key,
            "mask_origin": origin,
            "kind": family,
            "strong": strong,
            "recipe": recipe,
            "jitter": jitter,
            "fmse": fmse,
        }
        if vivid:
            meta["vivid"] = vivid
        name = f"{p.key.replace('/', '-')}_{index}"
        return Triplet(name, p.source, comp8, soft, real8, meta)


def _round8(values: np.ndarray) -> np.ndarray:
    """Values on the 0..255 scale rounded half up and clipped, as uint8 (same shape)."""
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def _blend8(real: np.ndarray, recoloured: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``real + weight * (recoloured - real)`` as ``(H, W, 3)`` uint8, rounded (images
    ``(H, W, 3)`` float32 in [0, 1], ``weight`` the ``(H, W, 1)`` soft mask)."""
    return _round8((real + weight * (recoloured - real)) * 255.0)


def _vivid(real: np.ndarray, binary: np.ndarray, factor: float) -> Recipe:
    """The recipe that makes the object of ``binary`` (``(H, W)``) in ``real`` (``(H, W, 3)``
    float32 in [0, 1]) vivid (``vivid_fraction``): a saturation ``factor``; none (``[]``) for
    an object of Lab chroma under :data:`VIVID_MIN_CHROMA`, whose raised tint would read as a
    colour cast rather than a vivid object."""
    mean, _ = region_lab_stats(real, binary)
    return (
        [{"op": "saturation", "factor": factor}] if np.hypot(*mean[1:]) >= VIVID_MIN_CHROMA else []
    )


def _soft_edge(binary: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The ``(H, W)`` soft mask in [0, 1] of a binary one (:func:`masks.feather`), quantised to
    8 bits so a mask saved as PNG is exactly the one composited with."""
    return np.round(M.feather(binary, rng) * 255.0) / np.float32(255.0)


def _paste(
    scene: np.ndarray, pixels: np.ndarray, binary: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``pixels`` blended into ``scene`` (both ``(H, W, 3)`` uint8) through the soft edge of
    the ``(H, W)`` mask ``binary``. Returns ``(photo, soft)``: the ``(H, W, 3)`` uint8 scene
    with the paste, rounded, and the soft mask (:func:`_soft_edge`)."""
    soft = _soft_edge(binary, rng)
    pasted = scene + soft[..., None] * (pixels.astype(np.float32) - scene)
    return _round8(pasted), soft


class SyntheticDataset(torch.utils.data.Dataset):
    """Map-style view of a generator: item ``i`` is the training tensors of sample ``i``.

    ``length`` is nominal (the stream is endless); the trainer's sampler picks the indices.
    """

    def __init__(self, generator: CompositeGenerator, lr_size: int = 256, length: int = 10**9):
        self.generator, self.lr_size, self.length = generator, lr_size, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return training_example(self.generator.triplet(int(index)), self.lr_size)


def write_triplets(
    triplets: list[Triplet], out: str | Path, list_name: str = "SYN_test.txt"
) -> Path:
    """Write triplets as an iHarmony4-style tree (PNG, lossless) readable by the loader.

    Layout: ``composite_images/<base>_<k>_1.png``, ``masks/<base>_<k>.png`` (8-bit soft),
    ``real_images/<base>.png``, the list ``list_name`` and ``recipes.jsonl``. ``<base>`` is the
    triplet's name with ``_`` replaced, ``k`` the sample's position.
    """
    root = Path(out)
    for d in ("composite_images", "masks", "real_images"):
        (root / d).mkdir(parents=True, exist_ok=True)
    lines, meta_lines = [], []
    for k, t in enumerate(triplets, start=1):
        if t.real is None:
            raise ValueError(f"{t.name}: a synthetic triplet needs its real image")
        base = f"{t.subset}-{k:05d}".replace("_", "-")
        comp_name = f"{base}_{k}_1.png"
        cv2.imwrite(str(root / "composite_images" / comp_name), t.composite[..., ::-1])
        cv2.imwrite(str(root / "real_images" / f"{base}.png"), t.real[..., ::-1])
        mask8 = np.clip(t.mask * 255.0 + 0.5, 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "masks" / f"{base}_{k}.png"), mask8)
        lines.append(comp_name)
        meta_lines.append(json.dumps({"composite": comp_name, "source_name": t.name, **t.meta}))
    (root / list_name).write_text("\n".join(lines) + "\n")
    (root / "recipes.jsonl").write_text("\n".join(meta_lines) + "\n")
    return root

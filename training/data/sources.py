"""Where synthetic composites come from: photos, their masks, an object-mask bank, the split.

A :class:`Photo` is one real photograph with the masks that belong to it (binary object masks,
segmentation label maps, or none). :func:`shared_sources` knows the folders of ``../shared/data``;
:func:`scan_folder` takes any folder of photos with an optional folder of masks. Validation
holds out whole photos (:func:`split_photos`), so no validation photo is ever trained on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MaskKind = Literal["binary", "labels", "none"]


@dataclass(frozen=True)
class Photo:
    """One photograph and its own masks.

    Attributes:
        key: ``source/stem``, unique across sources (used for the split).
        source: data set name, e.g. ``bsds500``.
        image: path of the photo.
        masks: paths of its masks (may be empty).
        mask_kind: ``binary`` object masks, ``labels`` (integer region maps) or ``none``.
    """

    key: str
    source: str
    image: Path
    masks: tuple[Path, ...] = ()
    mask_kind: MaskKind = "none"


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def scan_folder(
    source: str,
    images: str | Path,
    masks: str | Path | None = None,
    *,
    mask_kind: MaskKind = "binary",
) -> list[Photo]:
    """Photos in ``images``; masks in ``masks`` named ``<stem>.png`` or ``<stem>_<anything>.png``.

    Raises FileNotFoundError when ``images`` is missing or holds no image.
    """
    folder = Path(images)
    if not folder.is_dir():
        raise FileNotFoundError(f"photo folder {folder} does not exist")
    mask_files = _images(Path(masks)) if masks is not None and Path(masks).is_dir() else []
    by_stem: dict[str, list[Path]] = {}
    for m in mask_files:
        by_stem.setdefault(m.stem, []).append(m)
    photos = []
    for img in _images(folder):
        own = list(by_stem.get(img.stem, []))
        own += [m for m in mask_files if m.stem.startswith(img.stem + "_")]
        kind: MaskKind = mask_kind if own else "none"
        photos.append(Photo(f"{source}/{img.stem}", source, img, tuple(sorted(own)), kind))
    if not photos:
        raise FileNotFoundError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return photos


PLAIN_PHOTO_FOLDERS = (
    "sun_hays80",
    "urban100",
    "kodak24",
    "mcmaster",
    "set14",
    "lomiri_wallpapers",
)
"""Photo folders of ``../shared/data`` without masks (see each folder's README)."""


def shared_sources(data: str | Path) -> dict[str, list[Photo]]:
    """The photo sources of ``../shared/data`` that exist there (see each folder's README)."""
    root = Path(data)
    found: dict[str, list[Photo]] = {}
    specs: list[tuple[str, str, str | None, MaskKind]] = [
        ("natural_photos_pypi", "natural_photos/pypi", "natural_photos/pypi_masks", "binary"),
        ("natural_photos_debian", "natural_photos/debian", None, "none"),
        ("bsds500", "bsds500/images", "bsds500/masks", "labels"),
        ("weizmann_horses", "weizmann_horses/images", "weizmann_horses/masks", "binary"),
        (
            "syconet_hflickr",
            "syconet_hflickr_real_masks/real",
            "syconet_hflickr_real_masks/mask",
            "binary",
        ),
    ]
    # Photos without masks (objects come from the mask bank), 2.5-5K px for some.
    specs += [(name, f"{name}/images", None, "none") for name in PLAIN_PHOTO_FOLDERS]
    for name, images, masks, kind in specs:
        if (root / images).is_dir():
            found[name] = scan_folder(
                name, root / images, root / masks if masks else None, mask_kind=kind
            )
    return found


def mask_bank(folder: str | Path) -> list[Path]:
    """All mask files of an object-mask bank folder (e.g. ``object_masks/lalonde_efros``)."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"mask bank {path} does not exist")
    return _images(path)


def split_keys(keys: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of sorted ``keys`` into (train, val); val gets at least one when possible."""
    keys = sorted(keys)
    if not keys:
        return [], []
    n_val = round(len(keys) * val_fraction)
    n_val = min(max(n_val, 1 if val_fraction > 0 and len(keys) > 1 else 0), len(keys) - 1)
    order = np.random.default_rng(seed).permutation(len(keys))
    val = {keys[i] for i in order[:n_val]}
    return [k for k in keys if k not in val], [k for k in keys if k in val]


@dataclass
class Split:
    """Which photos (and bank masks) are for training and which are held out."""

    seed: int
    val_fraction: float
    train: list[str]
    val: list[str]
    bank_train: list[str]
    bank_val: list[str]

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Split:
        return cls(**json.loads(Path(path).read_text()))


def split_photos(
    sources: dict[str, list[Photo]], bank: list[Path], val_fraction: float = 0.1, seed: int = 0
) -> Split:
    """Hold out ``val_fraction`` of the photos of every source, and of the bank masks."""
    train, val = [], []
    for i, photos in enumerate(sources[s] for s in sorted(sources)):
        t, v = split_keys([p.key for p in photos], val_fraction, seed + 1000 * i)
        train += t
        val += v
    bt, bv = split_keys([p.name for p in bank], val_fraction, seed + 7)
    return Split(seed, val_fraction, train, val, bt, bv)

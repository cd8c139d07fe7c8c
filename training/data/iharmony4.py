"""The iHarmony4 layout: listing, loading, training view, and the HAdobe5k pre-resize tool.

Layout (per subset ``HAdobe5k``, ``HCOCO``, ``Hday2night``, ``HFlickr``)::

    <root>/<subset>/composite_images/<base>_<maskid>_<k>.jpg
    <root>/<subset>/masks/<base>_<maskid>.png
    <root>/<subset>/real_images/<base>.jpg
    <root>/<subset>/<subset>_train.txt, <subset>_test.txt     (one composite file name a line)

and/or ``<root>/IHD_train.txt`` / ``IHD_test.txt`` whose lines are ``<subset>/composite_images/…``
paths. Composite ``a_b_c`` -> real ``a`` (last two ``_`` fields dropped), mask ``a_b`` (last
field dropped), as the official ``HDatasetUpsample``. ``<root>`` may also be one subset folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from layer_harmonizer.image_files import read_image, read_mask
from training.data.augment import crop_flip, fit_size, limit_size
from training.data.samples import Triplet, training_example

SUBSETS = ("HAdobe5k", "HCOCO", "Hday2night", "HFlickr")
REAL_SUFFIXES = (".jpg", ".png", ".jpeg")


@dataclass(frozen=True)
class Entry:
    """One listed composite with the files it pairs with."""

    subset: str
    name: str
    composite: Path
    mask: Path
    real: Path


def parse_name(stem: str) -> tuple[str, str]:
    """``(real_base, mask_base)`` of a composite stem ``<base>_<maskid>_<k>``."""
    parts = stem.split("_")
    if len(parts) < 3 or not all(parts[-2:]):
        raise ValueError(f"composite name {stem!r} is not <base>_<maskid>_<k> (iHarmony4 naming)")
    return "_".join(parts[:-2]), "_".join(parts[:-1])


def _real_path(folder: Path, base: str, suffix: str) -> Path:
    first = folder / f"{base}{suffix}"
    if first.is_file():
        return first
    for s in REAL_SUFFIXES:
        if (folder / f"{base}{s}").is_file():
            return folder / f"{base}{s}"
    return first  # reported as missing by the caller


def _entry(subset_dir: Path, subset: str, composite_name: str) -> Entry:
    comp = subset_dir / "composite_images" / Path(composite_name).name
    real_base, mask_base = parse_name(comp.stem)
    return Entry(
        subset,
        comp.stem,
        comp,
        subset_dir / "masks" / f"{mask_base}.png",
        _real_path(subset_dir / "real_images", real_base, comp.suffix),
    )


def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _subset_list(subset_dir: Path, split: str) -> Path | None:
    lists = sorted(p for p in subset_dir.glob("*.txt") if p.stem.lower().endswith(split.lower()))
    return lists[0] if lists else None


def list_entries(
    root: str | Path,
    split: str = "train",
    subsets: list[str] | None = None,
    *,
    check: bool = True,
) -> list[Entry]:
    """All entries of ``split`` (``train`` / ``test``), optionally of some subsets only.

    Raises FileNotFoundError for a missing root, no list file, or (``check``) missing files.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"iHarmony4 root {root} does not exist")
    entries: list[Entry] = []
    if (root / "composite_images").is_dir():  # one subset folder
        listing = _subset_list(root, split)
        if listing is None:
            raise FileNotFoundError(f"no *{split}.txt list in {root}")
        entries = [_entry(root, root.name, ln) for ln in _lines(listing)]
    else:
        top = root / f"IHD_{split}.txt"
        names = [s for s in SUBSETS if (root / s).is_dir()] or sorted(
            p.name for p in root.iterdir() if (p / "composite_images").is_dir()
        )
        for subset in names:
            listing = _subset_list(root / subset, split)
            if listing is not None:
                entries += [_entry(root / subset, subset, ln) for ln in _lines(listing)]
        if not entries and top.is_file():
            for ln in _lines(top):
                subset = Path(ln).parts[0]
                entries.append(_entry(root / subset, subset, ln))
        if not entries:
            raise FileNotFoundError(
                f"no iHarmony4 lists for split {split!r} under {root} (expected "
                f"<subset>/<subset>_{split}.txt or IHD_{split}.txt)"
            )
    if subsets:
        entries = [e for e in entries if e.subset in subsets]
    if check:
        for e in entries:
            for path in (e.composite, e.mask, e.real):
                if not path.is_file():
                    raise FileNotFoundError(f"{e.subset}/{e.name}: missing {path}")
    return entries


def _uint8(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb
    top = 65535.0 if rgb.dtype == np.uint16 else 1.0
    return np.clip(rgb.astype(np.float32) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def load_mask_float(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A mask file as soft float32 ``(H, W)`` in [0, 1] (resized bilinearly if needed)."""
    arr = read_mask(path)
    top = 65535.0 if arr.dtype == np.uint16 else 255.0 if arr.dtype == np.uint8 else 1.0
    m = np.clip(arr.astype(np.float32) / np.float32(top), 0.0, 1.0)
    if m.shape != tuple(shape):
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return m


def load_entry(e: Entry) -> Triplet:
    """Read an entry's three files (uint8 RGB images, soft mask)."""
    comp, _ = read_image(e.composite)
    real, _ = read_image(e.real)
    comp, real = _uint8(comp), _uint8(real)
    if real.shape != comp.shape:
        raise ValueError(f"{e.subset}/{e.name}: real {real.shape} != composite {comp.shape}")
    return Triplet(e.name, e.subset, comp, load_mask_float(e.mask, comp.shape[:2]), real)


def attach_recipes(root: str | Path, triplets: list[Triplet]) -> list[Triplet]:
    """For a set written by ``make-synthetic``: label each triplet with its recipe kind and
    photo source from ``recipes.jsonl`` (so tables split by kind and source). Others unchanged.
    """
    path = Path(root) / "recipes.jsonl"
    if not path.is_file():
        return triplets
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    meta = {Path(m["composite"]).stem: m for m in lines}
    for t in triplets:
        m = meta.get(t.name)
        if m is not None:
            keys = ("kind", "strong", "photo", "mask_origin")
            t.meta.update({k: m[k] for k in keys if k in m})
            t.subset = str(m.get("photo", t.subset)).split("/")[0]
    return triplets


class IHarmony4Train(torch.utils.data.Dataset):
    """Training view: item ``g`` is entry ``perm_epoch[g % N]`` with the paper's augmentation
    (crop 0.5-1, flip) seeded by ``(seed, g)``, downscaled to ``max_side`` (None: as is).

    The index is a global sample counter, so an endless, resumable stream visits every entry
    once per epoch in a seeded order.
    """

    def __init__(
        self,
        entries: list[Entry],
        *,
        seed: int = 0,
        max_side: int | None = None,
        lr_size: int = 256,
    ) -> None:
        if not entries:
            raise ValueError("no iHarmony4 entries to train on")
        self.entries, self.seed, self.max_side, self.lr_size = entries, seed, max_side, lr_size
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return 10**9

    def _order(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, 17])
            self._perm = (epoch, rng.permutation(len(self.entries)))
        return self._perm[1]

    def triplet(self, index: int) -> Triplet:
        n = len(self.entries)
        entry = self.entries[int(self._order(index // n)[index % n])]
        t = crop_flip(load_entry(entry), np.random.default_rng([self.seed, index]))
        t.meta["kind"] = entry.subset
        return limit_size(t, self.max_side)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return training_example(self.triplet(int(index)), self.lr_size)


def resize_tree(src: str | Path, dst: str | Path, max_side: int = 2048, quality: int = 90) -> int:
    """Copy an iHarmony4 subset (e.g. HAdobe5k) with every image's longer side <= ``max_side``.

    As the official ``resize_dataset.py``: cv2 LANCZOS4, JPEG quality ``quality``, masks resized
    the same way (saved as PNG); list files are copied. Files already in ``dst`` are skipped, so
    an interrupted run can be restarted. Returns the number of images written.
    """
    src, dst = Path(src), Path(dst)
    if not (src / "composite_images").is_dir():
        raise FileNotFoundError(f"{src} is not an iHarmony4 subset folder (no composite_images/)")
    written = 0
    for folder in ("composite_images", "masks", "real_images"):
        (dst / folder).mkdir(parents=True, exist_ok=True)
        for path in sorted((src / folder).iterdir()):
            out = dst / folder / path.name
            if out.exists() or path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if img is None:
                raise ValueError(f"{path} is not a readable image")
            h, w = img.shape[:2]
            nh, nw = fit_size(h, w, max_side)
            if (nh, nw) != (h, w):
                img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LANCZOS4)
            params = [cv2.IMWRITE_JPEG_QUALITY, quality] if out.suffix.lower() != ".png" else []
            if not cv2.imwrite(str(out), img, params):
                raise OSError(f"could not write {out}")
            written += 1
    for listing in src.glob("*.txt"):
        (dst / listing.name).write_bytes(listing.read_bytes())
    return written

"""Training data: the training stream and the validation set built from a :class:`DataSpec`.

The sub-package holds where photos come from (``sources``), object masks (``masks``), crops and
flips (``augment``), the colour operations (``colour_edits``) and the compositing mistakes drawn
from them (``mistakes``: recipe families and their mix), the synthetic generator
(``synthetic``), iHarmony4 (``iharmony4``) and the sample/batch types (``samples``).

* ``synthetic``: photos from ``../shared/data`` (``--shared-data``) and/or folders
  (``--photos DIR[:MASKDIR]``), object-mask banks (``--mask-bank DIR``); a seeded share of whole
  photos is held out, the split saved as ``split.json``; validation composites are generated
  from the held-out photos with a different seed and no crop.
* ``iharmony4``: the train list for training, the test list (all of it, or ``val_count``
  evenly spaced entries) for validation, as the official code does.
* Any folder with ``composite/``, ``mask/`` and optional ``real/`` (the ``../shared/data`` layout)
  loads with :func:`folder_triplets` (real composites for contact sheets).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from layer_harmonizer.image_files import read_image
from training.config import DataSpec
from training.data import iharmony4
from training.data.augment import limit_size
from training.data.samples import Triplet
from training.data.sources import Photo, Split, mask_bank, scan_folder, shared_sources, split_photos
from training.data.synthetic import CompositeGenerator, SyntheticDataset


def default_shared_data() -> Path:
    """``../shared/data`` beside the repository checkout."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def gather_photos(spec: DataSpec) -> tuple[dict[str, list[Photo]], list[Path]]:
    """All photo sources and bank masks named by ``spec``."""
    sources: dict[str, list[Photo]] = {}
    bank: list[Path] = []
    if spec.shared_data:
        root = Path(spec.shared_data)
        if not root.is_dir():
            raise FileNotFoundError(f"shared data folder {root} does not exist")
        sources.update(shared_sources(root))
        if (root / "object_masks" / "lalonde_efros").is_dir():
            bank += mask_bank(root / "object_masks" / "lalonde_efros")
    for item in spec.photos:
        images, _, masks = item.partition(":")
        name = Path(images).name or "photos"
        sources[name] = scan_folder(name, images, masks or None)
    for folder in spec.mask_banks:
        bank += mask_bank(folder)
    if not sources:
        raise ValueError("no photos: give --shared-data and/or --photos DIR[:MASKDIR]")
    return sources, bank


def synthetic_split(
    spec: DataSpec,
) -> tuple[list[Photo], list[Photo], list[Path], list[Path], Split]:
    """``(train photos, val photos, train bank, val bank, split)``."""
    sources, bank = gather_photos(spec)
    split = split_photos(sources, bank, spec.val_fraction, spec.seed)
    val = set(split.val)
    photos = [p for group in sources.values() for p in group]
    bank_val = set(split.bank_val)
    return (
        [p for p in photos if p.key not in val],
        [p for p in photos if p.key in val],
        [b for b in bank if b.name not in bank_val],
        [b for b in bank if b.name in bank_val],
        split,
    )


def build_training(spec: DataSpec) -> tuple[torch.utils.data.Dataset, list[Triplet], dict]:
    """``(training dataset, validation triplets, description for logs/metadata)``."""
    if spec.kind == "synthetic":
        train_p, val_p, train_b, val_b, split = synthetic_split(spec)
        gen = CompositeGenerator.from_spec(train_p, train_b, spec, val=False)
        val_gen = CompositeGenerator.from_spec(val_p or train_p, val_b or train_b, spec, val=True)
        val = [val_gen.triplet(i) for i in range(spec.val_count)] if spec.val_count else []
        sources = sorted({p.source for p in train_p})
        info = {
            "kind": "synthetic",
            "sources": {s: sum(p.source == s for p in train_p) for s in sources},
            "val_photos": len(val_p),
            "mask_bank": len(train_b),
            "split": split,
        }
        return SyntheticDataset(gen, spec.lr_size), val, info
    if spec.kind == "iharmony4":
        if not spec.iharmony4:
            raise ValueError("--data iharmony4 needs --iharmony4 ROOT")
        subsets = list(spec.subsets) or None
        train = iharmony4.list_entries(spec.iharmony4, "train", subsets)
        test = iharmony4.list_entries(spec.iharmony4, "test", subsets)
        if spec.val_count and len(test) > spec.val_count:
            test = [test[i] for i in np.linspace(0, len(test) - 1, spec.val_count).astype(int)]
        val = [limit_size(iharmony4.load_entry(e), spec.val_max_side) for e in test]
        ds = iharmony4.IHarmony4Train(
            train, seed=spec.seed, max_side=spec.max_side, lr_size=spec.lr_size
        )
        info = {
            "kind": "iharmony4",
            "train_pairs": len(train),
            "val_pairs": len(val),
            "subsets": sorted({e.subset for e in train}),
        }
        return ds, val, info
    raise ValueError(f"unknown data kind {spec.kind!r} (synthetic or iharmony4)")


def folder_triplets(root: str | Path, subset: str | None = None) -> list[Triplet]:
    """``root/composite/*`` with ``root/mask/<stem>.*`` and, when present, ``root/real/<stem>.*``.

    Composites whose mask is missing raise FileNotFoundError; a missing real image gives
    ``real=None`` (real composites have no ground truth).
    """
    root = Path(root)
    comp_dir = root / "composite"
    if not comp_dir.is_dir():
        raise FileNotFoundError(f"{root} has no composite/ folder")

    def find(folder: Path, stem: str) -> Path | None:
        hits = sorted(folder.glob(f"{stem}.*")) if folder.is_dir() else []
        return hits[0] if hits else None

    out = []
    for comp_path in sorted(p for p in comp_dir.iterdir() if p.is_file()):
        mask_path = find(root / "mask", comp_path.stem)
        if mask_path is None:
            raise FileNotFoundError(f"{comp_path}: no mask {root / 'mask' / comp_path.stem}.*")
        comp, _ = read_image(comp_path)
        comp = iharmony4._uint8(comp)
        real_path = find(root / "real", comp_path.stem)
        real = iharmony4._uint8(read_image(real_path)[0]) if real_path else None
        mask = iharmony4.load_mask_float(mask_path, comp.shape[:2])
        out.append(Triplet(comp_path.stem, subset or root.name, comp, mask, real))
    return out

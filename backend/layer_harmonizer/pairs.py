"""Finding (composite, mask) pairs in a folder, for batch runs.

Two layouts are recognised:

* iHarmony4: ``composite_images/<name>_<maskid>_<k>.jpg`` with ``masks/<name>_<maskid>.png``,
  either directly in the folder or in subset folders (``HCOCO/``, ``HFlickr/`` ...).
* PCT-Net: ``<name>.<ext>`` beside ``<name>_mask.<ext>`` in one folder.

Each pair is written to ``<name>_harm.<ext>``; :func:`output_paths` refuses a batch in which two
pairs would write the same file (``x.png`` and ``x.jpg`` with ``--ext png``, say).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

from layer_harmonizer.errors import FileError, InputError
from layer_harmonizer.image_files import READ_EXTENSIONS

MASK_SUFFIX = "_mask"


@dataclass(frozen=True)
class Pair:
    """One job: a composite, its mask, and a name for the output (unique within the batch)."""

    composite: Path
    mask: Path
    name: str


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in READ_EXTENSIONS
    )


def _find_mask(folder: Path, stem: str) -> Path | None:
    for ext in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"):
        candidate = folder / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def iharmony4_mask_stem(composite_stem: str) -> str:
    """``a3630_1_5`` -> ``a3630_1`` (drop the last ``_`` field)."""
    return composite_stem.rsplit("_", 1)[0]


def _iharmony4_pairs(root: Path, prefix: str) -> tuple[list[Pair], list[Path]]:
    pairs, orphans = [], []
    for comp in _images(root / "composite_images"):
        mask = _find_mask(root / "masks", iharmony4_mask_stem(comp.stem))
        if mask is None:
            orphans.append(comp)
        else:
            pairs.append(Pair(comp, mask, prefix + comp.stem))
    return pairs, orphans


def find_pairs(folder: Path) -> tuple[list[Pair], list[Path]]:
    """All pairs in ``folder`` and the composites whose mask is missing.

    Raises :class:`FileError` when a folder cannot be listed (permissions).
    """
    try:
        return _find_pairs(folder)
    except OSError as exc:
        raise FileError.from_os_error(exc, folder, "list the folder") from None


def output_paths(pairs: list[Pair], out_dir: Path, ext: str | None = None) -> list[Path]:
    """``out_dir / <name>_harm<ext>`` for each pair (``ext`` like ``".png"``; None: the
    composite's own).

    Raises :class:`InputError` when two pairs would write the same file, comparing names as a
    case-insensitive file system would, so that no result overwrites another on any system.
    """
    outputs: list[Path] = []
    first_by_key: dict[str, Pair] = {}
    clashes: list[tuple[Pair, Pair, Path]] = []
    for pair in pairs:
        out = out_dir / f"{pair.name}_harm{pair.composite.suffix if ext is None else ext}"
        key = unicodedata.normalize("NFC", out.name).casefold()
        if key in first_by_key:
            clashes.append((first_by_key[key], pair, out))
        else:
            first_by_key[key] = pair
        outputs.append(out)
    if clashes:
        first, second, out = clashes[0]
        more = f" ({len(clashes) - 1} more such clashes)" if len(clashes) > 1 else ""
        raise InputError(
            f"{first.composite} and {second.composite} would both be written to {out}{more}; "
            "rename one of them, or harmonize them into separate output folders"
        )
    return outputs


def _find_pairs(folder: Path) -> tuple[list[Pair], list[Path]]:
    if (folder / "composite_images").is_dir():
        return _iharmony4_pairs(folder, "")
    subsets = sorted(p for p in folder.iterdir() if (p / "composite_images").is_dir())
    if subsets:
        pairs, orphans = [], []
        for subset in subsets:
            found, missing = _iharmony4_pairs(subset, f"{subset.name}_")
            pairs += found
            orphans += missing
        return pairs, orphans
    pairs, orphans = [], []
    for path in _images(folder):
        if path.stem.endswith(MASK_SUFFIX):
            continue
        mask = _find_mask(folder, path.stem + MASK_SUFFIX)
        if mask is None:
            orphans.append(path)
        else:
            pairs.append(Pair(path, mask, path.stem))
    return pairs, orphans

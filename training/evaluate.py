"""Evaluation at full resolution with two baselines, CSV / summary tables, contact sheets.

Methods compared in one run, on the same images:

* ``composite``: the input as it is (what doing nothing scores);
* ``classical``: :func:`layer_harmonizer.color_stats.classical_transfer`, the per-channel
  mean/std match of the foreground to the background, computed at full resolution;
* ``model``: the network (LUT maps from the 256 x 256 input, applied to the full-resolution
  composite by the differentiable reference :func:`layer_harmonizer.lut.reference.apply_luts`);
* ``hindsight``: (needs the real image; a ceiling, not a method) the per-channel gain and offset
  fitted by least squares on the object's own pixels against the truth: what a perfect global
  correction of that form would score.

Metrics (:mod:`training.metrics`) are per image on the 0..255 scale, then averaged per subset,
per recipe kind (synthetic data), per severity (the composite's fMSE: the mildest tenth, the
rest, and the strong tail of the recipes) and over all images.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from layer_harmonizer.color_stats import classical_transfer
from layer_harmonizer.lut.damping import damping_gain
from layer_harmonizer.lut.reference import apply_luts
from layer_harmonizer.model import AICTNet
from layer_harmonizer.pipeline import low_res_input
from training.data.samples import Triplet, to_chw
from training.metrics import all_metrics

METHODS = ("composite", "classical", "model")
METRICS = ("mse", "fmse", "psnr", "mean_err", "ssim")
BAND_ROWS = 1024
"""Images taller than this are mapped through the LUTs in bands (bounded memory)."""


def _mask_tensor(mask: np.ndarray, device: torch.device | str) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None].to(device)


@torch.no_grad()
def predict(model: AICTNet, t: Triplet, device: torch.device | str = "cpu") -> Tensor:
    """The model's full-resolution output for ``t``: ``(3, H, W)`` float in [0, 1], unrounded
    (with the model's damping, as :func:`layer_harmonizer.pipeline.harmonize` applies it)."""
    x = low_res_input(t.composite, t.mask, model.config.input_size).to(device)
    maps = model(x)
    gain = damping_gain(x, maps, model.config.damping)
    comp = to_chw(t.composite)[None].to(device)
    mask = _mask_tensor(t.mask, device)
    h = comp.shape[2]
    if h <= BAND_ROWS:
        return apply_luts(comp, maps, mask, gain)[0]
    bands = [
        apply_luts(
            comp[:, :, r : r + BAND_ROWS],
            maps,
            mask[:, :, r : r + BAND_ROWS],
            gain,
            rows=(r, min(r + BAND_ROWS, h), h),
        )
        for r in range(0, h, BAND_ROWS)
    ]
    return torch.cat(bands, dim=2)[0]


def hindsight_affine(t: Triplet) -> Tensor:
    """The composite with a per-channel ``gain * x + offset`` fitted on the object against the
    real image (mask-weighted least squares), blended by the mask: ``(3, H, W)`` in [0, 1]."""
    if t.real is None:
        raise ValueError(f"{t.name}: the hindsight fit needs the real image")
    comp, real = to_chw(t.composite).double(), to_chw(t.real).double()
    w = torch.from_numpy(np.ascontiguousarray(t.mask, dtype=np.float64))
    total = w.sum().clamp_min(1e-9)
    out = comp.clone()
    for c in range(3):
        mx, my = (comp[c] * w).sum() / total, (real[c] * w).sum() / total
        var = ((comp[c] - mx) ** 2 * w).sum() / total
        cov = ((comp[c] - mx) * (real[c] - my) * w).sum() / total
        gain = cov / var if var > 1e-9 else torch.zeros((), dtype=torch.float64)
        fitted = (gain * (comp[c] - mx) + my).clamp(0, 1)
        out[c] = comp[c] + w * (fitted - comp[c])
    return out.float()


@torch.no_grad()
def baseline(method: str, t: Triplet) -> Tensor:
    """``composite``, ``classical`` or ``hindsight`` output ``(3, H, W)`` in [0, 1]."""
    comp = to_chw(t.composite)
    if method == "composite":
        return comp
    if method == "classical":
        return classical_transfer(comp[None], _mask_tensor(t.mask, "cpu"))[0]
    if method == "hindsight":
        return hindsight_affine(t)
    raise ValueError(f"unknown baseline {method!r}")


def outputs(
    t: Triplet, model: AICTNet | None, methods: Iterable[str], device: torch.device | str
) -> dict[str, Tensor]:
    """Each method's output for ``t`` (CPU ``(3, H, W)`` in [0, 1])."""
    out = {}
    for m in methods:
        if m == "model":
            if model is None:
                raise ValueError("method 'model' needs a model")
            out[m] = predict(model, t, device).cpu()
        else:
            out[m] = baseline(m, t)
    return out


def evaluate(
    triplets: list[Triplet],
    model: AICTNet | None,
    *,
    methods: Iterable[str] = METHODS,
    device: torch.device | str = "cpu",
    with_ssim: bool = True,
    keep: Callable[[Triplet, dict[str, Tensor]], None] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Per-image metric rows ``{name, subset, kind, method, mse, fmse, psnr[, ssim]}``.

    Triplets without a real image are skipped for metrics (``keep`` still sees them).
    ``keep(t, outputs)`` is called for every triplet (e.g. to collect contact-sheet rows).
    """
    methods = list(methods)
    rows: list[dict[str, Any]] = []
    if model is not None:
        model.eval()
    items: Iterable[Triplet] = triplets
    if progress:
        from tqdm import tqdm

        items = tqdm(triplets, desc="evaluate", unit="img")
    for t in items:
        outs = outputs(t, model, methods, device)
        if keep is not None:
            keep(t, outs)
        if t.real is None:
            continue
        real = to_chw(t.real) * 255.0
        mask = torch.from_numpy(np.ascontiguousarray(t.mask, dtype=np.float32))[None]
        for method, pred in outs.items():
            values = all_metrics((pred * 255.0).clamp(0, 255), real, mask, with_ssim=with_ssim)
            kind = str(t.meta.get("kind", t.subset))
            strong = "strong" if t.meta.get("strong") else "normal"
            row = {"name": t.name, "subset": t.subset, "kind": kind, "recipe": strong}
            rows.append({**row, "method": method, **values})
    return label_severity(rows)


def label_severity(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``severity`` to every row: ``mildest tenth`` for the tenth of the images whose
    composite is closest to the truth (lowest composite fMSE), else ``rest``. Without the
    ``composite`` method in ``rows`` every image is ``rest``."""
    comp = {r["name"]: r["fmse"] for r in rows if r["method"] == "composite"}
    mild = set(sorted(comp, key=comp.__getitem__)[: max(1, len(comp) // 10)]) if comp else set()
    for r in rows:
        r["severity"] = "mildest tenth" if r["name"] in mild else "rest"
    return rows


def summarize(rows: list[dict[str, Any]], group: str = "subset") -> dict[str, dict[str, dict]]:
    """``{group value or 'All': {method: {metric: mean, 'n': count}}}``."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    keys = [*sorted({r[group] for r in rows}), "All"]
    for key in keys:
        sel = [r for r in rows if key == "All" or r[group] == key]
        table[key] = {}
        for method in dict.fromkeys(r["method"] for r in sel):
            mine = [r for r in sel if r["method"] == method]
            stats: dict[str, Any] = {"n": len(mine)}
            for metric in METRICS:
                vals = [r[metric] for r in mine if metric in r]
                if vals:
                    stats[metric] = float(np.mean(vals))
            table[key][method] = stats
    return table


def format_table(table: dict[str, dict[str, dict]], title: str = "subset") -> str:
    """A Markdown table: one row per (group, method), columns n, MSE, fMSE, PSNR, mean colour
    error, SSIM."""
    lines = [
        f"| {title} | method | n | MSE | fMSE | PSNR | mean colour err | SSIM |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def fmt(stats: dict[str, Any], metric: str, digits: int) -> str:
        v = stats.get(metric)
        return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"

    for key, methods in table.items():
        for method, s in methods.items():
            lines.append(
                f"| {key} | {method} | {s['n']} | {fmt(s, 'mse', 2)} | {fmt(s, 'fmse', 2)} | "
                f"{fmt(s, 'psnr', 2)} | {fmt(s, 'mean_err', 2)} | {fmt(s, 'ssim', 4)} |"
            )
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Per-image rows as CSV (columns: name, subset, kind, method, metrics)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = ["name", "subset", "kind", "recipe", "severity", "method"]
    cols = [*head, *[m for m in METRICS if rows and m in rows[0]]]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


class ContactSheet:
    """Collects rows of tiles (composite / classical / ours / ground truth) into PNG sheets."""

    def __init__(
        self,
        tile_height: int = 192,
        rows_per_sheet: int = 16,
        max_rows: int = 48,
        *,
        methods: tuple[str, ...] = ("classical", "model"),
        only: set[str] | None = None,
    ):
        """``methods``: the output columns after the composite; ``only``: composite names to
        take (None: every one, up to ``max_rows``)."""
        self.tile_height, self.rows_per_sheet, self.max_rows = tile_height, rows_per_sheet, max_rows
        self.methods, self.only = methods, only
        self.rows: list[np.ndarray] = []

    def _tile(self, img: np.ndarray, label: str, mask: np.ndarray | None = None) -> np.ndarray:
        h = self.tile_height
        w = max(1, round(img.shape[1] * h / img.shape[0]))
        tile = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        if mask is not None:  # outline the object so one sees what was recoloured
            m = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
            edge = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3)))
            tile = tile.copy()
            tile[edge > 0] = (255, 64, 255)
        cv2.putText(tile, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3)
        cv2.putText(tile, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
        return tile

    def add(self, t: Triplet, outs: dict[str, Tensor]) -> None:
        if len(self.rows) >= self.max_rows or (self.only is not None and t.name not in self.only):
            return

        def u8(x: Tensor) -> np.ndarray:
            return (x.clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy()

        tiles = [self._tile(t.composite, f"composite {t.name}"[:40], t.mask)]
        labels = {"classical": "classical transfer", "model": "ours"}
        tiles += [self._tile(u8(outs[m]), labels[m]) for m in self.methods if m in outs]
        if t.real is not None:
            tiles.append(self._tile(t.real, "ground truth"))
        self.rows.append(np.concatenate(tiles, axis=1))

    def save(self, path: str | Path) -> list[Path]:
        """Write ``path`` (and ``path_2.png`` ... when there are more rows); returns the files."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        files = []
        for i in range(0, len(self.rows), self.rows_per_sheet):
            chunk = self.rows[i : i + self.rows_per_sheet]
            width = max(r.shape[1] for r in chunk)
            sheet = np.concatenate(
                [
                    np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=32)
                    for r in chunk
                ]
            )
            name = (
                path
                if i == 0
                else path.with_name(f"{path.stem}_{i // self.rows_per_sheet + 1}{path.suffix}")
            )
            cv2.imwrite(str(name), sheet[..., ::-1])
            files.append(name)
        return files


def write_summary(rows: list[dict[str, Any]], out_dir: str | Path, meta: dict[str, Any]) -> str:
    """Write ``per_image.csv``, ``summary.json`` and ``summary.md``; returns the Markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "per_image.csv")
    tables = {
        group: summarize(rows, group)
        for group in ("subset", "kind", "recipe", "severity")
        if all(group in r for r in rows)
    }
    md = "\n\n".join(format_table(table, group) for group, table in tables.items())
    (out / "summary.md").write_text(md + "\n")
    by = {f"by_{group}": table for group, table in tables.items()}
    (out / "summary.json").write_text(json.dumps({**meta, **by}, indent=1) + "\n")
    return md


def validate(
    model: AICTNet, val: list[Triplet], device: str, methods: tuple[str, ...] = ("model",)
) -> dict[str, dict[str, float]]:
    """Mean MSE / fMSE / PSNR over the validation triplets, per method (no SSIM: speed)."""
    rows = evaluate(val, model, methods=methods, device=device, with_ssim=False)
    table = summarize(rows, "subset")["All"]
    return {m: {k: round(v, 4) for k, v in s.items()} for m, s in table.items()}

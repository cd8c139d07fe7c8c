"""Checkpoint -> release weights file (the format of :mod:`layer_harmonizer.model.weights`).

The EMA weights are exported by default (they are what validation scored). The metadata says
what the file is: variant, network config, training hyper-parameters, the data it was trained
on, steps, samples and time, validation metrics (from an ``evaluate`` run's ``summary.json``
when given, else the checkpoint's last validation), and the sha256 of the state.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

from layer_harmonizer.model.weights import WeightsError, load_weights, save_weights
from training.checkpoint import load_checkpoint, model_from_checkpoint, run_record

TRAINED_ON_SYNTHETIC = (
    "synthetic composites (training/data/synthetic.py) from ../shared/data: natural_photos "
    "(scikit-image/scikit-learn/matplotlib/imgaug samples, Debian mate-backgrounds and "
    "plasma-workspace-wallpapers, GPL-2+/CC0/CC BY 2.0/public domain), BSDS500 photos + "
    "segmentation regions (research use), Weizmann horses (research use), SycoNet HFlickr "
    "real photos + masks (research use); object shapes from the Lalonde & Efros mask bank "
    "(MIT repo / LabelMe, research use); the six photo folders sun_hays80, urban100, kodak24, "
    "mcmaster, set14 (benchmark collections, licence not stated: research use) and "
    "lomiri_wallpapers (CC-BY-4.0 / CC-BY-SA-3.0/4.0 / CC0-1.0 per image). Whole photos held "
    "out for validation."
)

HYPERPARAMETERS = (
    "batch_size",
    "accum",
    "lr",
    "betas",
    "const_fraction",
    "final_lr_fraction",
    "ema_decay",
    "max_steps",
    "time_budget",
    "seed",
    "hr_min_area",
    "lr_min_area",
    "lr_weight",
    "relative_tau",
    "smooth_weight",
    "identity_init",
)
"""The TrainConfig fields stored as the weights' ``hyperparameters`` (None: not in that run's
config, e.g. a field newer than the checkpoint)."""


def _lineage(
    cfg: dict[str, Any], ck: dict[str, Any], seen: frozenset[Path] = frozenset()
) -> dict[str, Any]:
    """For a run started from another run's checkpoint (``init_weights``): what that run had
    trained (itself with its own ``started_from``, down the chain of stages) and the totals
    over every stage (empty for a run from scratch or a missing parent)."""
    parent_path = cfg.get("init_weights")
    if not parent_path or not Path(parent_path).is_file():
        return {}
    resolved = Path(parent_path).resolve()
    if resolved in seen:  # a chain that loops back: stop where it would repeat
        return {}
    try:
        parent = load_checkpoint(parent_path)
    except (ValueError, OSError):
        return _lineage_from_weights(Path(parent_path), ck)
    before = run_record(parent_path, parent)
    earlier = _lineage(parent.get("config", {}), parent, seen | {resolved})
    if "started_from" in earlier:
        before["started_from"] = earlier["started_from"]
    samples = earlier.get("total_samples", before["samples"])
    seconds = earlier.get("total_training_seconds", before["training_seconds"])
    return {
        "started_from": before,
        "total_samples": samples + ck["samples"],
        "total_training_seconds": round(seconds + float(ck["elapsed"]), 1),
    }


def _lineage_from_weights(path: Path, ck: dict[str, Any]) -> dict[str, Any]:
    """``_lineage`` for a run warm-started from a released weights file: that file's own
    metadata says what its stages trained (only its name where it has none, e.g. an official
    checkpoint)."""
    try:
        meta = load_weights(path)[1]
    except WeightsError:
        meta = {}
    if "samples" not in meta:
        return {"started_from": {"file": path.name}}
    before = {"file": path.name, "sha256": meta.get("sha256")}
    before.update({k: meta[k] for k in ("steps", "samples", "training_seconds") if k in meta})
    if "started_from" in meta:
        before["started_from"] = meta["started_from"]
    samples = meta.get("total_samples", meta["samples"])
    seconds = meta.get("total_training_seconds", meta.get("training_seconds", 0.0))
    return {
        "started_from": before,
        "total_samples": samples + ck["samples"],
        "total_training_seconds": round(seconds + float(ck["elapsed"]), 1),
    }


def export(
    checkpoint: str | Path,
    out: str | Path,
    *,
    use_ema: bool = True,
    half: bool = True,
    summary: str | Path | None = None,
    trained_on: str | None = None,
    extra: dict[str, Any] | None = None,
    damping: float | None = None,
) -> dict[str, Any]:
    """Write a weights file from a training checkpoint; returns the stored metadata.
    ``damping`` (0..255 foreground MSE) is stored in the network's config
    (:attr:`layer_harmonizer.model.AICTConfig.damping`); None keeps the checkpoint's."""
    if damping is not None and not damping >= 0.0:
        raise ValueError(f"damping must be 0 (off) or positive; got {damping}")
    ck = load_checkpoint(checkpoint)
    variant = ck["variant"]
    model = model_from_checkpoint(ck, ema=use_ema)
    if damping is not None:
        model.config = dataclasses.replace(model.config, damping=damping)
    cfg = ck["config"]
    data = ck.get("data", {})
    if trained_on is None:
        trained_on = (
            TRAINED_ON_SYNTHETIC
            if data.get("kind") == "synthetic"
            else (f"iHarmony4 ({', '.join(data.get('subsets', []))}), train split")
        )
    metrics: dict[str, Any] = {}
    if summary is not None:
        obj = json.loads(Path(summary).read_text())
        metrics = {
            "evaluation": obj.get("by_subset", {}).get("All", {}),
            "evaluated_on": obj.get("data", ""),
        }
    elif ck.get("baselines"):
        metrics = {"validation_baselines": ck["baselines"], "best_val_fmse": ck.get("best_fmse")}
    meta = {
        "variant": variant,
        "trained_on": trained_on,
        "data": data,
        "hyperparameters": {k: cfg.get(k) for k in HYPERPARAMETERS},
        "data_options": cfg.get("data", {}),
        "steps": ck["step"],
        "samples": ck["samples"],
        "training_seconds": round(float(ck["elapsed"]), 1),
        "weights": "ema" if use_ema else "raw",
        "metrics": metrics,
        **({"soup": ck["soup"]} if "soup" in ck else {}),
        **_lineage(cfg, ck),
        "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    return save_weights(out, model, variant, meta, half=half)

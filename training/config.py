"""The options of a training run: :class:`TrainConfig` and its :class:`DataSpec`.

These dataclasses are the only home of the defaults. Each field's metadata carries its
command-line help (and, where the plain ``--field-name VALUE`` form does not fit, the option's
flag, parser, ``nargs`` or ``action``); :mod:`training.options` builds the options of
``python -m training train`` and ``make-synthetic`` from them, and :mod:`training.presets` holds
named sets of values. A config is stored as JSON in ``config.json``, in every checkpoint and in
exported weights; :meth:`TrainConfig.from_json` reads that back (also from older versions, whose
fields are a subset of today's).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from training.losses import HR_MIN_AREA, LR_MIN_AREA, LR_WEIGHT


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``80m``, ``2.5h`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip().lower()
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 45m, 2h)") from None


def parse_side(text: str) -> int | None:
    """An image side in pixels; ``none``, ``full`` or ``0`` -> None (full resolution)."""
    if text.lower() in ("none", "0", "full"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a side: {text!r} (pixels, or none)") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``FIELD=JSON`` (one network config change) -> ``(FIELD, value)``."""
    key, sep, value = text.partition("=")
    try:
        if not sep or not key:
            raise ValueError
        return key, json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not FIELD=JSON: {text!r} (e.g. color_prior=false, input_size=64)"
        ) from None


def about(doc: str, **cli: Any) -> dict[str, Any]:
    """A field's metadata: its command-line help and argparse extras: ``flag`` (the option
    string), ``parse`` (the value parser), ``nargs``, ``action``, ``metavar``, ``choices``, or
    ``cli=False`` for a field that is not a command-line option."""
    return {"help": doc, **cli}


def opt(doc: str, default: Any = dataclasses.MISSING, **cli: Any) -> Any:
    """A dataclass field with an immutable ``default`` (none: required) and :func:`about`."""
    return field(default=default, metadata=about(doc, **cli))


@dataclass
class DataSpec:
    """Where data comes from (the ``data`` options of ``train`` and ``make-synthetic``)."""

    kind: str = opt("training data", "synthetic", flag="--data", choices=("synthetic", "iharmony4"))
    shared_data: str | None = opt(
        "the ../shared/data folder (default: beside the repository, if present)", None
    )
    photos: tuple[str, ...] = opt(
        "extra photo folder, optionally with object masks named <stem>*.png (repeatable)",
        (),
        action="append",
        metavar="DIR[:MASKDIR]",
    )
    mask_banks: tuple[str, ...] = opt(
        "folder of object-shaped masks to place on photos (repeatable)",
        (),
        flag="--mask-bank",
        action="append",
        metavar="DIR",
    )
    iharmony4: str | None = opt("iHarmony4 root", None, metavar="ROOT")
    subsets: tuple[str, ...] = opt("iHarmony4 subsets (default: all)", (), nargs="*")
    val_fraction: float = opt("share of whole photos held out (synthetic)", 0.1)
    val_count: int = opt("validation composites", 400)
    max_side: int | None = opt(
        "longer side of training crops (none = full resolution)", 352, parse=parse_side
    )
    val_max_side: int | None = opt(
        "longer side of validation composites (none = full resolution)", 512, parse=parse_side
    )
    lr_size: int = opt("side of the network input (train sets it from the network)", 256, cli=False)
    seed: int = opt("seed of the data stream and of the held-out split", 0)
    max_bank_fill: float = opt(
        "skip mask-bank shapes filling more of their bounding box (0.9 drops boxes)", 1.0
    )
    identity_fraction: float = opt(
        "share of training composites left unchanged (a paste that already fits)", 0.0
    )
    max_object_area: float = opt("largest foreground share of an object mask", 0.85)
    max_object_sides: int = opt(
        "largest number of image sides an object mask may touch (4: any; a sky or ground "
        "segment touches 3)",
        4,
    )
    look_scale: float = opt("multiplies the magnitudes of the 'look' family's edits", 1.0)
    strong_probability: float = opt(
        "share of composites whose magnitudes come from the wide ('strong') distributions", 0.3
    )
    family_mix: tuple[float, float, float] = opt(
        "weights of the transfer, look and light recipe families (normalised; the pasted "
        "objects of --foreign-fraction and --horizon-fraction keep their own mix)",
        (0.35, 0.35, 0.30),
        nargs=3,
        metavar=("TRANSFER", "LOOK", "LIGHT"),
    )
    max_scene_mismatch: float | None = opt(
        "redraw views whose object the scene does not explain: the classical statistics "
        "match's foreground MSE (0..255) on the untouched photo above this (default: keep all)",
        None,
    )
    identity_any_scene: bool = opt(
        "composites left unchanged skip the max_scene_mismatch redraw, so objects of their own "
        "colours (a black horse on a bright field) are shown left as they are",
        False,
    )
    foreign_fraction: float = opt(
        "share of composites whose object is cut from another photo lit like the scene and "
        "pasted as it is, then left so or given a look or another light: its own colours are "
        "the truth (validation sets too)",
        0.0,
    )
    donor_light: str = opt(
        "how --foreign-fraction tells a donor photo lit like the scene: by mean colour "
        "(grey-world: content counts, a blue beach takes bluish donors) or by mean edge colour "
        "(grey-edge: closer to the light itself)",
        "grey-world",
        choices=("grey-world", "grey-edge"),
    )
    horizon_fraction: float = opt(
        "share of composites that are a sky replacement: the land of another photo lit like "
        "the scene (by --donor-light) below a random horizon, pasted as it is, then left so or "
        "given a look or another light: the land's own colours are the truth (validation sets "
        "too)",
        0.0,
    )
    vivid_fraction: float = opt(
        "share of the pasted objects of --foreign-fraction made more saturated before the "
        "paste (x1.4-2.4, clipped; objects of Lab chroma >= 15 only): vivid food, toys and "
        "clothes pasted as they are; the vivid colours are the truth (validation sets too)",
        0.0,
    )
    first_sample: int = opt(
        "number of the training stream's first composite: a later stage on the same recipe "
        "starts past the samples an earlier one saw, so it draws new composites",
        0,
    )


@dataclass
class TrainConfig:
    """Every option of a training run (stored in checkpoints and in exported metadata)."""

    out: str = opt("checkpoint/log folder (resumes from last.pt)")
    variant: str = opt("network variant (layer_harmonizer.model.VARIANTS)", "aict-light")
    model_overrides: dict[str, Any] = field(
        default_factory=dict,
        metadata=about(
            "change a field of the variant's AICTConfig, e.g. color_prior=false (repeatable)",
            flag="--override",
            action="append",
            metavar="FIELD=JSON",
            parse=parse_override,
        ),
    )
    data: DataSpec = field(
        default_factory=DataSpec, metadata=about("where data comes from", cli=False)
    )
    batch_size: int = opt("samples per micro-batch and process", 8)
    accum: int = opt("gradient accumulation steps", 1)
    lr: float = opt("learning rate (Adam)", 1e-4)
    betas: tuple[float, float] = opt("Adam betas", (0.9, 0.999), nargs=2, metavar=("B1", "B2"))
    const_fraction: float = opt("share of progress at constant LR before the linear decay", 0.5)
    final_lr_fraction: float = opt("LR at the end of the decay, as a fraction of --lr", 0.0)
    ema_decay: float = opt(
        "decay of the weight EMA (what validation scores and export writes)", 0.999
    )
    max_steps: int = opt("optimiser steps", 100_000)
    time_budget: float | None = opt(
        "total training time over all resumed runs, e.g. 80m, 3h (default: none)",
        None,
        parse=parse_duration,
    )
    seed: int = opt("seed of the network's initial weights and dropout, and of the data", 0)
    device: str = opt("auto, cpu, cuda or cuda:N", "auto")
    workers: int = opt("data-loading processes", 1)
    threads: int | None = opt("torch CPU threads (default: torch's choice)", None)
    identity_init: bool = opt(
        "the official N(0, 0.02) init instead of identity/prior init",
        True,
        flag="--official-init",
    )
    init_weights: str | None = opt(
        "start a new run from these weights (a weights file or a checkpoint's EMA); "
        "{runs} is the runs folder",
        None,
        metavar="PATH",
    )
    hr_min_area: float = opt("A_min of the full-resolution loss (pixels)", HR_MIN_AREA)
    lr_min_area: float = opt("A_min of the 256 x 256 loss (pixels)", LR_MIN_AREA)
    lr_weight: float = opt(
        "weight of the 256 x 256 loss term (official 0.01; 0 skips that branch)", LR_WEIGHT
    )
    relative_tau: float = opt(
        "weight each image's loss by sqrt(REF / (composite fMSE + TAU)), [0, 1] units "
        "(0: the official unweighted loss); protects pastes that are already good",
        0.0,
    )
    smooth_weight: float = opt(
        "weight of the total-variation smoothness penalty on the predicted LUT maps "
        "(PCT-Net weighs its parameter smoothness 0.1; 0 = off)",
        0.0,
    )
    precision: str = opt(
        "network forward in bf16 autocast where a start-up measurement shows it faster",
        "auto",
        choices=("auto", "fp32", "bf16"),
    )
    log_every: int = opt("steps between 'step' log events", 10)
    eval_every: int = opt("steps between validations (0: only at the end)", 250)
    ckpt_minutes: float = opt("minutes between last.pt checkpoints", 5.0)
    resume: bool = opt("start over even if OUT/last.pt exists", True, flag="--no-resume")
    progress: bool = opt("no progress bar", True, flag="--no-progress")

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.accum

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TrainConfig:
        """The config of a ``to_json`` dict (``config.json``, a checkpoint's ``config``).

        Fields missing from an older config keep their defaults; an unknown field raises
        ValueError naming it."""
        obj = dict(obj)
        data = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in (obj.pop("data", {}) or {}).items()
        }
        unknown = sorted(
            {f"data.{k}" for k in data.keys() - _names(DataSpec)} | (obj.keys() - _names(cls))
        )
        if unknown:
            raise ValueError(f"unknown training config fields: {', '.join(unknown)}")
        if "betas" in obj:
            obj["betas"] = tuple(obj["betas"])
        return cls(data=DataSpec(**data), **obj)


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}

"""Weight soups: one network from the weighted average of runs' EMA weights.

``python -m training soup A/best.pt B/best.pt --weights 0.5,0.5 --out soup.pt`` writes a
training checkpoint that ``evaluate --checkpoint``, ``export`` and ``report`` read like any
other. Arms that started from the same weights and trained side by side on different recipes
average into a network between them (Wortsman et al., ICML 2022: "model soups"); arms from
different starting points do not, so a soup must share its arms' ``init_weights``. That start
itself may be an arm too (the training checkpoint or weights file named as the others'
``init_weights``, e.g. the shipped ``default.pt`` a stage continued): the average of a stage and
the network it started from lies between the two (Wortsman et al., CVPR 2022, "robust
fine-tuning": a part of the stage's change, with less of what it unlearned).

The soup's ``step``, ``samples`` and ``elapsed`` are the sums over its arms (the training that
went into it) but the start, which the soup's ``started_from`` history already counts, and
``soup`` lists each arm: ``{file, run, steps, samples, training_seconds, weight}``, the start's
with ``"start": true``. It cannot be resumed (its optimiser state is the first trained arm's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from layer_harmonizer.model import AICTConfig, variant_config
from layer_harmonizer.model.weights import WeightsError, load_weights
from training.checkpoint import load_checkpoint, run_record, save_checkpoint


def _average(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict:
    """Per-tensor weighted average (float64 sums, stored in each tensor's dtype); integer
    tensors (counters) are taken from the first state."""
    out = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first
            continue
        total = sum(w * s[key].double() for w, s in zip(weights, states, strict=True))
        out[key] = total.to(first.dtype)
    return out


def _arm(path: Path) -> dict[str, Any]:
    """The training checkpoint at ``path``, or a weights file read as one (:func:`_weights_arm`)."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        return load_checkpoint(path)
    except Exception:  # not one of our checkpoints: perhaps a released weights file
        return _weights_arm(path)


def _weights_arm(path: Path) -> dict[str, Any]:
    """A released weights file as a soup arm: its weights stand for both the EMA and the raw
    network, with what its metadata says it trained (``step``/``samples``/``elapsed``: those
    of its last stage) and its network config under ``network``. ValueError when ``path`` is
    neither a training checkpoint nor a weights file."""
    try:
        model, meta = load_weights(path)
    except WeightsError as exc:
        raise ValueError(
            f"{path} is neither a training checkpoint nor a weights file: {exc}"
        ) from None
    state = model.state_dict()
    return {
        "variant": meta["variant"],
        "config": {},
        "network": dataclasses.replace(model.config, damping=0.0),
        "model": state,
        "ema": {"module": state},
        "step": meta.get("steps", 0),
        "samples": meta.get("samples", 0),
        "elapsed": meta.get("training_seconds", 0.0),
    }


def _network(ck: dict[str, Any]) -> AICTConfig:
    """The network config an arm's weights belong to (inference-only damping left out)."""
    if "network" in ck:
        return ck["network"]
    return variant_config(ck["variant"], **ck["config"].get("model_overrides", {}))


def _resolved(path: str | None) -> Path | None:
    """``path`` made absolute with links resolved (None for a run from scratch)."""
    return Path(path).resolve() if path else None


def soup(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    weights: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Write the weighted average of ``checkpoints`` (two or more training checkpoints of one
    variant, network config and starting weights, or those starting weights themselves) to
    ``out``; ``weights`` (positive, scaled to sum 1) default to equal. Returns the soup's
    ``soup`` record (one entry per arm)."""
    paths = [Path(p) for p in checkpoints]
    if len(paths) < 2:
        raise ValueError("a soup needs at least two checkpoints")
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths):
        raise ValueError(f"{len(weights)} weights for {len(paths)} checkpoints")
    if not all(w > 0.0 for w in weights):  # also rejects NaN
        raise ValueError(f"soup weights must be positive; got {weights}")
    weights = [w / sum(weights) for w in weights]
    cks = [_arm(p) for p in paths]
    starts = {_resolved(ck["config"].get("init_weights")) for ck in cks}
    is_start = [p.resolve() in starts for p in paths]
    if all(is_start):
        raise ValueError("a soup needs an arm that is not another arm's starting weights")
    first_at = is_start.index(False)
    first_path, first = paths[first_at], cks[first_at]
    for path, ck, start in zip(paths, cks, is_start, strict=True):
        if "network" in ck and not start:
            raise ValueError(
                f"{path} is a weights file: only the arms' starting weights may be one "
                "(the others are training checkpoints)"
            )
        checks = [
            ("variant", lambda c: c["variant"]),
            ("network config", _network),
        ]
        if not start:
            checks.append(
                ("starting weights (init_weights)", lambda c: c["config"].get("init_weights"))
            )
        for what, value in checks:
            if value(ck) != value(first):
                raise ValueError(
                    f"{path} differs from {first_path} in its {what}: "
                    f"{value(ck)!r} against {value(first)!r}"
                )
        if ck["ema"]["module"].keys() != first["ema"]["module"].keys():
            raise ValueError(f"{path} holds other tensors than {first_path}")
    arms = [
        {**run_record(p, ck), "weight": w, **({"start": True} if start else {})}
        for p, ck, w, start in zip(paths, cks, weights, is_start, strict=True)
    ]
    trained = [ck for ck, start in zip(cks, is_start, strict=True) if not start]
    state = {
        **first,
        "model": _average([ck["model"] for ck in cks], weights),
        "ema": {**first["ema"], "module": _average([ck["ema"]["module"] for ck in cks], weights)},
        "step": sum(ck["step"] for ck in trained),
        "samples": sum(ck["samples"] for ck in trained),
        "elapsed": sum(float(ck["elapsed"]) for ck in trained),
        "soup": arms,
    }
    state.pop("best_fmse", None)  # no validation scored this network during training
    save_checkpoint(Path(out), state)
    return {"soup": arms}

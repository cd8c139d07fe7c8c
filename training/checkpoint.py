"""Training checkpoints (read, write, the network in them, warm starts) and the JSON-lines log.

A checkpoint is a ``torch.save`` dict of plain tensors and values (loaded with
``weights_only=True``): ``format`` (:data:`CHECKPOINT_FORMAT`), ``variant``, ``config`` (the
run's :meth:`~training.config.TrainConfig.to_json`), ``model`` and ``ema`` (``{"module",
"updates", "decay"}``) state dicts, ``optimizer``, ``step``, ``samples``, ``elapsed`` (training
seconds over all resumed runs), ``best_fmse``, ``data``, ``baselines``, ``torch_rng`` and
``precision``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from layer_harmonizer.fileutil import atomic_open
from layer_harmonizer.model import AICTNet, create_model
from layer_harmonizer.model.aict import expand_input_weights
from layer_harmonizer.model.weights import load_weights
from training.schedule import EMA

CHECKPOINT_FORMAT = "harmonize-train-checkpoint"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a crash never leaves half a checkpoint)."""
    with atomic_open(path) as fh:
        torch.save(state, fh)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (plain tensors and values only)."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint of this package")
    return obj


def run_record(path: str | Path, ck: dict[str, Any]) -> dict[str, Any]:
    """What checkpoint ``path`` had trained: ``{file, run, steps, samples, training_seconds}``
    (``run``: its folder's name), as weights metadata and soups record it."""
    path = Path(path)
    return {
        "file": path.name,
        "run": path.parent.name,
        "steps": ck["step"],
        "samples": ck["samples"],
        "training_seconds": round(float(ck["elapsed"]), 1),
    }


def model_from_checkpoint(ck: dict[str, Any], *, ema: bool = True) -> AICTNet:
    """The network of a checkpoint (EMA weights unless ``ema=False``), in eval mode."""
    model = create_model(ck["variant"], **ck["config"].get("model_overrides", {}))
    model.load_state_dict(ck["ema"]["module"] if ema else ck["model"])
    return model.eval()


def warm_start(model: AICTNet, path: str) -> None:
    """Load the weights of ``path`` (a weights file, or a training checkpoint's EMA) into
    ``model``; a 4-channel network fits a ``prior_input`` model with the new inputs at zero."""
    source = Path(path)
    obj = torch.load(source, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        state = obj["ema"]["module"]
    else:
        state = load_weights(source)[0].state_dict()
    model.load_state_dict(expand_input_weights(state, model))


def restore(last: Path, variant: str, model: nn.Module, opt: Any, ema: EMA) -> dict[str, Any]:
    """Load ``last`` into the model, optimiser, EMA and torch RNG; returns the run's progress
    (``step``, ``elapsed_before``, ``best``) and its precision choice."""
    ck = load_checkpoint(last)
    if ck["variant"] != variant:
        raise ValueError(f"{last} is for {ck['variant']}, not {variant}")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    ema.load_state_dict(ck["ema"])
    if "torch_rng" in ck:
        torch.set_rng_state(ck["torch_rng"])
    progress = {"step": ck["step"], "elapsed_before": ck["elapsed"]}
    return {**progress, "best": ck.get("best_fmse", math.inf), "precision": ck.get("precision")}


class JsonlLog:
    """Append-only JSON-lines log (one flushed line per event); ``None``: log nothing."""

    def __init__(self, path: Path | None) -> None:
        self.fh = path.open("a") if path is not None else None

    def write(self, event: str, **values: Any) -> None:
        if self.fh is not None:
            self.fh.write(json.dumps({"event": event, "time": time.time(), **values}) + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()

"""One training/evaluation example and how a batch of them becomes network tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from layer_harmonizer.pipeline import low_res_input


@dataclass
class Triplet:
    """A composite, its soft mask and (when known) the real photo.

    Attributes:
        name: file stem or generated id, unique within a data set.
        subset: iHarmony4 subset (``HAdobe5k`` ...) or a source name (``synthetic``).
        composite: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` float32 in [0, 1] (soft edges kept).
        real: ``(H, W, 3)`` uint8 RGB ground truth, or None for real composites.
        meta: free-form description (recipe, photo id, ...), JSON-serialisable.
    """

    name: str
    subset: str
    composite: np.ndarray
    mask: np.ndarray
    real: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        h, w = self.mask.shape[:2]
        if self.composite.shape != (h, w, 3) or self.composite.dtype != np.uint8:
            raise ValueError(
                f"{self.name}: composite must be ({h}, {w}, 3) uint8 like its mask; got "
                f"{self.composite.shape} {self.composite.dtype}"
            )
        if self.real is not None and self.real.shape != self.composite.shape:
            raise ValueError(
                f"{self.name}: real image {self.real.shape} does not match composite "
                f"{self.composite.shape}"
            )


def to_chw(image: np.ndarray) -> Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


@dataclass
class Batch:
    """Network-ready batch. LR tensors are stacked; full-resolution ones differ in size.

    Attributes:
        lr_input: ``(B, 4, S, S)``: composite RGB and mask in [0, 1] (official preprocessing).
        lr_real: ``(B, 3, S, S)`` ground truth at the same size.
        hr_composite / hr_real: ``B`` tensors ``(3, H_i, W_i)`` in [0, 1].
        hr_mask: ``B`` tensors ``(1, H_i, W_i)`` in [0, 1].
        names, kinds: per-sample labels.
    """

    lr_input: Tensor
    lr_real: Tensor
    hr_composite: list[Tensor]
    hr_mask: list[Tensor]
    hr_real: list[Tensor]
    names: list[str]
    kinds: list[str]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.lr_input.to(device),
            self.lr_real.to(device),
            [t.to(device) for t in self.hr_composite],
            [t.to(device) for t in self.hr_mask],
            [t.to(device) for t in self.hr_real],
            self.names,
            self.kinds,
        )


def training_example(t: Triplet, lr_size: int = 256) -> dict[str, Any]:
    """Tensors of one training example (the real image is required)."""
    if t.real is None:
        raise ValueError(f"{t.name}: training needs the real image")
    lr_input = low_res_input(t.composite, t.mask, lr_size)[0]
    lr_real = cv2.resize(t.real, (lr_size, lr_size), interpolation=cv2.INTER_LINEAR)
    return {
        "lr_input": lr_input,
        "lr_real": to_chw(lr_real),
        "hr_composite": to_chw(t.composite),
        "hr_mask": torch.from_numpy(np.ascontiguousarray(t.mask, dtype=np.float32))[None],
        "hr_real": to_chw(t.real),
        "name": t.name,
        "kind": str(t.meta.get("kind", t.subset)),
    }


def collate(examples: list[dict[str, Any]]) -> Batch:
    """Stack the LR tensors, keep full-resolution tensors as lists (sizes differ)."""
    return Batch(
        torch.stack([e["lr_input"] for e in examples]),
        torch.stack([e["lr_real"] for e in examples]),
        [e["hr_composite"] for e in examples],
        [e["hr_mask"] for e in examples],
        [e["hr_real"] for e in examples],
        [e["name"] for e in examples],
        [e["kind"] for e in examples],
    )

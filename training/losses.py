"""The training loss of the official code: foreground-normalised MSE on both branches.

``MaskWeightedMSE``: for each image, the sum over C, H, W of ``(pred - real)^2`` divided by
``3 * max(sum(mask), A_min)``, in [0, 1] units, averaged over the batch. The prediction is
already blended with the composite by the mask, so the background contributes (nearly) nothing.
The full-resolution term uses A_min = 1000, the 256 x 256 term A_min = 100 with weight 0.01.
Optional: per-image weights (:func:`relative_weights`) and a smoothness penalty on the predicted
LUT maps (:func:`map_smoothness`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from layer_harmonizer.lut.reference import apply_luts
from training.precision import autocast

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.data.samples import Batch

RELATIVE_REF = 0.03
"""Reference composite fMSE ([0, 1] units, about 2000 on the 0..255 scale) of the relative
weighting: an image that far off keeps weight ~1."""
HR_MIN_AREA = 1000.0
LR_MIN_AREA = 100.0
LR_WEIGHT = 0.01


def masked_mse(pred: Tensor, real: Tensor, mask: Tensor, min_area: float) -> Tensor:
    """Per-image foreground-normalised MSE of a batch.

    Args:
        pred, real: ``(B, 3, H, W)`` in [0, 1].
        mask: ``(B, 1, H, W)`` in [0, 1].
        min_area: A_min, the smallest divisor area in pixels.

    Returns:
        ``(B,)`` losses.
    """
    if pred.shape != real.shape or pred.shape[0] != mask.shape[0] or mask.shape[1] != 1:
        raise ValueError(
            f"shapes do not fit: pred {tuple(pred.shape)}, real {tuple(real.shape)}, "
            f"mask {tuple(mask.shape)}"
        )
    err = ((pred - real) ** 2).sum(dim=(1, 2, 3))
    area = mask.sum(dim=(1, 2, 3)).clamp_min(min_area)
    return err / (3.0 * area)


def harmonization_loss(
    lr_pred: Tensor,
    lr_real: Tensor,
    lr_mask: Tensor,
    hr_pred: Sequence[Tensor],
    hr_real: Sequence[Tensor],
    hr_mask: Sequence[Tensor],
    *,
    hr_min_area: float = HR_MIN_AREA,
    lr_min_area: float = LR_MIN_AREA,
    lr_weight: float = LR_WEIGHT,
    image_weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``hr + lr_weight * lr`` and its two parts (batch means).

    ``lr_*`` are ``(B, C, S, S)`` batches; ``hr_*`` are length-B sequences of ``(C, H_i, W_i)``.
    ``image_weights`` ``(B,)`` (optional, no gradient) weight each image's terms in the mean.
    """
    lr = masked_mse(lr_pred, lr_real, lr_mask, lr_min_area)
    hr = torch.stack(
        [
            masked_mse(p[None], r[None], m[None], hr_min_area)[0]
            for p, r, m in zip(hr_pred, hr_real, hr_mask, strict=True)
        ]
    )
    if image_weights is not None:
        lr, hr = lr * image_weights, hr * image_weights
    lr, hr = lr.mean(), hr.mean()
    return hr + lr_weight * lr, hr, lr


def relative_weights(
    hr_comp: Sequence[Tensor],
    hr_real: Sequence[Tensor],
    hr_mask: Sequence[Tensor],
    tau: float,
    *,
    hr_min_area: float = HR_MIN_AREA,
    ref: float = RELATIVE_REF,
) -> Tensor:
    """``sqrt(ref / (fMSE(composite) + tau))`` per image ``(B,)``: a paste that is already
    nearly right weighs more per unit of error than a badly wrong one, so the mean loss is no
    longer ruled by the strongest mismatches alone (with ``tau`` 0.0015, about 100 on the
    0..255 scale: a good paste ~4.5, a typical one ~1, a strong one ~0.8)."""
    with torch.no_grad():
        comp = torch.stack(
            [
                masked_mse(c[None], r[None], m[None], hr_min_area)[0]
                for c, r, m in zip(hr_comp, hr_real, hr_mask, strict=True)
            ]
        )
        return torch.sqrt(ref / (comp + tau))


def map_smoothness(*maps: Tensor) -> Tensor:
    """Total variation of predicted LUT maps over their grid (a smoothness penalty).

    For each ``(B, 3, M, N, K)`` tensor (``LutMaps.intervals`` / ``.colors``): the mean absolute
    difference of grid neighbours along M plus that along N; the sum over the tensors. Zero for
    maps that are the same at every grid position; means, so the scale does not depend on M, N
    or the batch size.
    """
    total = maps[0].new_zeros(())
    for m in maps:
        if m.ndim != 5:
            raise ValueError(f"LUT maps must be (B, 3, M, N, K); got {tuple(m.shape)}")
        if m.shape[2] > 1:
            total = total + (m[:, :, 1:] - m[:, :, :-1]).abs().mean()
        if m.shape[3] > 1:
            total = total + (m[:, :, :, 1:] - m[:, :, :, :-1]).abs().mean()
    return total


class LossTerms(NamedTuple):
    """The loss of one batch and its parts (scalars, batch means, [0, 1] units)."""

    total: Tensor
    hr: Tensor
    lr: Tensor
    smooth: Tensor


def batch_loss(model: nn.Module, batch: Batch, cfg: TrainConfig) -> LossTerms:
    """Forward both branches and the loss ``hr + lr_weight * lr + smooth_weight * smooth``.

    The LUT maps predicted from the 256 x 256 input are applied to that input with its mask
    (LR branch, skipped when ``cfg.lr_weight`` is 0) and to each full-resolution composite with
    its own mask (HR branch); ``smooth`` is the maps' total variation (computed for the log
    also when ``cfg.smooth_weight`` is 0, and then not added). Only the network runs under bf16
    autocast (``cfg.precision``); the LUTs and the loss are float32.
    """
    with autocast(cfg.precision, str(batch.lr_input.device)):
        maps = model(batch.lr_input)
    if torch.float32 not in (maps.intervals.dtype, maps.colors.dtype) or (
        maps.intervals.dtype != maps.colors.dtype
    ):
        maps = type(maps)(intervals=maps.intervals.float(), colors=maps.colors.float())
    lr_comp, lr_mask = batch.lr_input[:, :3], batch.lr_input[:, 3:]
    weights = None
    if cfg.relative_tau > 0:
        weights = relative_weights(
            batch.hr_composite,
            batch.hr_real,
            batch.hr_mask,
            cfg.relative_tau,
            hr_min_area=cfg.hr_min_area,
        )
    # With no LR term the 256 x 256 "prediction" is the composite itself (loss constant).
    lr_pred = apply_luts(lr_comp, maps, lr_mask) if cfg.lr_weight else lr_comp
    hr_pred = [
        apply_luts(c[None], maps.select(i), m[None])[0]
        for i, (c, m) in enumerate(zip(batch.hr_composite, batch.hr_mask, strict=True))
    ]
    total, hr, lr = harmonization_loss(
        lr_pred,
        batch.lr_real,
        lr_mask,
        hr_pred,
        batch.hr_real,
        batch.hr_mask,
        hr_min_area=cfg.hr_min_area,
        lr_min_area=cfg.lr_min_area,
        lr_weight=cfg.lr_weight,
        image_weights=weights,
    )
    with contextlib.nullcontext() if cfg.smooth_weight else torch.no_grad():
        smooth = map_smoothness(maps.intervals, maps.colors)
    if cfg.smooth_weight:
        total = total + cfg.smooth_weight * smooth
    return LossTerms(total, hr, lr, smooth)

"""The training loss of the official code: foreground-normalised MSE on both branches.

``MaskWeightedMSE``: for each image, the sum over C, H, W of ``(pred - real)^2`` divided by
``3 * max(sum(mask), A_min)``, in [0, 1] units, averaged over the batch. The prediction is
already blended with the composite by the mask, so the background contributes (nearly) nothing.
The full-resolution term uses A_min = 1000, the 256 x 256 term A_min = 100 with weight 0.01.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

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

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
) -> tuple[Tensor, Tensor, Tensor]:
    """``hr + lr_weight * lr`` and its two parts (batch means).

    ``lr_*`` are ``(B, C, S, S)`` batches; ``hr_*`` are length-B sequences of ``(C, H_i, W_i)``.
    """
    lr = masked_mse(lr_pred, lr_real, lr_mask, lr_min_area).mean()
    hr = torch.stack(
        [
            masked_mse(p[None], r[None], m[None], hr_min_area)[0]
            for p, r, m in zip(hr_pred, hr_real, hr_mask, strict=True)
        ]
    ).mean()
    return hr + lr_weight * lr, hr, lr

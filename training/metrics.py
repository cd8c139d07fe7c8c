"""Evaluation metrics of the official code (``iharm/inference/metrics.py``), on the 0..255 scale.

All functions take one image: ``pred`` and ``real`` ``(3, H, W)`` float in [0, 255] (the
prediction clamped, not rounded), ``mask`` ``(1, H, W)`` or ``(H, W)`` soft in [0, 1].

* MSE  = sum(M * (pred - real)^2) / (3 H W)          (background weight 0, divisor all pixels)
* fMSE = sum(M * (pred - real)^2) / (3 sum(M) + 1e-6)
* PSNR = 10 log10(255^2 / (MSE + 1e-6))
* mean colour error = |mean_M(pred) - mean_M(real)| (RGB, Euclidean): the object's overall
  colour, which is most of what real composites get wrong
* SSIM = Gaussian-window SSIM (11 taps, sigma 1.5, K1 0.01, K2 0.03, data range 255, valid
  convolution, mean over pixels then channels: the ``pytorch_msssim.ssim`` defaults) of
  ``pred * M + real * (1 - M)`` against ``real``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)
DATA_RANGE = 255.0


def _mask3(mask: Tensor) -> Tensor:
    return mask if mask.ndim == 3 else mask[None]


def _check(pred: Tensor, real: Tensor, mask: Tensor) -> None:
    if pred.ndim != 3 or pred.shape[0] != 3 or pred.shape != real.shape:
        raise ValueError(f"pred and real must both be (3, H, W); got {pred.shape}, {real.shape}")
    if _mask3(mask).shape != (1, *pred.shape[1:]):
        raise ValueError(f"mask {tuple(mask.shape)} does not fit an image {tuple(pred.shape)}")


def squared_error_sum(pred: Tensor, real: Tensor, mask: Tensor) -> Tensor:
    """``sum(M * (pred - real)^2)`` over channels and pixels (float64 scalar)."""
    _check(pred, real, mask)
    return ((pred.double() - real.double()) ** 2 * _mask3(mask).double()).sum()


def mse(pred: Tensor, real: Tensor, mask: Tensor) -> float:
    """Mask-weighted MSE with the all-pixels divisor (the paper's MSE)."""
    return float(squared_error_sum(pred, real, mask) / pred.numel())


def fmse(pred: Tensor, real: Tensor, mask: Tensor) -> float:
    """Foreground MSE: squared error over the mask, divided by 3 * mask area (+1e-6)."""
    return float(squared_error_sum(pred, real, mask) / (3 * _mask3(mask).double().sum() + 1e-6))


def psnr(pred: Tensor, real: Tensor, mask: Tensor) -> float:
    """PSNR in dB from the paper's MSE: ``10 log10(255^2 / (MSE + 1e-6))``."""
    return 10.0 * math.log10(DATA_RANGE**2 / (mse(pred, real, mask) + 1e-6))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """Normalised 1-D Gaussian taps ``(size,)`` float64, centred."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: Tensor, win: Tensor) -> Tensor:
    # Separable valid convolution of (1, C, H, W) per channel; a side shorter than the window
    # is left unfiltered, as pytorch_msssim does (with its warning).
    c = x.shape[1]
    if x.shape[2] >= win.numel():
        x = F.conv2d(x, win.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    if x.shape[3] >= win.numel():
        x = F.conv2d(x, win.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return x


def ssim(pred: Tensor, real: Tensor, mask: Tensor | None = None) -> float:
    """SSIM of ``pred`` composited over ``real`` by ``mask`` (None: pred as is)."""
    if mask is not None:
        _check(pred, real, mask)
        m = _mask3(mask).double()
        pred = pred.double() * m + real.double() * (1 - m)
    x, y = pred.double()[None], real.double()[None]
    win = gaussian_window().to(x.device)
    c1, c2 = (SSIM_K[0] * DATA_RANGE) ** 2, (SSIM_K[1] * DATA_RANGE) ** 2
    mu_x, mu_y = _blur(x, win), _blur(y, win)
    sxx = _blur(x * x, win) - mu_x**2
    syy = _blur(y * y, win) - mu_y**2
    sxy = _blur(x * y, win) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return float((lum * cs).flatten(2).mean(-1).mean())


def mean_colour_error(pred: Tensor, real: Tensor, mask: Tensor) -> float:
    """Distance (0..255 RGB, Euclidean) between the mask-weighted mean colours of ``pred`` and
    ``real``: how far the object's overall colour is from the truth, whatever its detail."""
    _check(pred, real, mask)
    m = _mask3(mask).double()
    area = m.sum() + 1e-6
    diff = ((pred.double() - real.double()) * m).sum(dim=(1, 2)) / area
    return float(diff.norm())


def all_metrics(pred: Tensor, real: Tensor, mask: Tensor, *, with_ssim: bool = True) -> dict:
    """``{"mse", "fmse", "psnr", "mean_err"[, "ssim"]}`` of one image (0..255 inputs)."""
    out = {
        "mse": mse(pred, real, mask),
        "fmse": fmse(pred, real, mask),
        "psnr": psnr(pred, real, mask),
        "mean_err": mean_colour_error(pred, real, mask),
    }
    if with_ssim:
        out["ssim"] = ssim(pred, real, mask)
    return out

"""``harmonize()``: the one verb every front end calls.

It is two steps, so a prediction can be cached and re-applied (another strength, another
backend) without running the network again::

    maps = predict(composite, mask, model=model)                    # network, at 256 x 256
    out = apply_prediction(composite, mask, maps, strength=0.6)     # LUTs, at full resolution
"""

from __future__ import annotations

import os
from dataclasses import replace

import cv2
import numpy as np
import torch

from layer_harmonizer.arrays import check_image, check_strength, to_unit_float, validate_mask
from layer_harmonizer.errors import InputError
from layer_harmonizer.lut import LutMaps
from layer_harmonizer.lut.backends import get_backend
from layer_harmonizer.lut.damping import damping_gain
from layer_harmonizer.model import AICTNet
from layer_harmonizer.model.weights import find_default_weights, load_weights
from layer_harmonizer.precision import autocast
from layer_harmonizer.precision import choose as choose_precision


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a CUDA device works, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"device must be auto, cpu or cuda; got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for, but torch sees no CUDA device")
    return device


def load_model(
    weights: str | os.PathLike[str] | None = None,
    *,
    variant: str | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> AICTNet:
    """Load a network for inference: ``weights`` or the default weights, in eval mode.

    The weights file's metadata (variant, training data, metrics) is on ``model.metadata``,
    with ``precision`` (``"fp32"`` or ``"bf16"``: what :func:`run_network` uses) and
    ``precision_reason``; ``precision="auto"`` decides by a cached measurement
    (:mod:`layer_harmonizer.precision`). Raises :class:`.errors.WeightsNotFoundError` when no
    weights are given and none are installed: random weights are never used as if trained.
    """
    path = weights if weights is not None else find_default_weights()
    model, meta = load_weights(path, variant)
    model.metadata = {**meta, "path": str(path)}
    target = resolve_device(device)
    model = model.to(target).eval()
    choice = choose_precision(model, target, precision)
    model.metadata.update(precision=choice.precision, precision_reason=choice.reason)
    return model


def low_res_input(image: np.ndarray, mask: np.ndarray, size: int) -> torch.Tensor:
    """The network input: ``(1, 4, size, size)`` float32, RGB in [0, 1] then the soft mask.

    Bilinear resize with half-pixel centres and no antialiasing (OpenCV ``INTER_LINEAR``),
    in the image's own dtype, exactly as the official code prepares its input. The mask (any
    :func:`.arrays.validate_mask` dtype) is resized by :func:`resize_mask`.
    """
    rgb = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    x = np.concatenate([to_unit_float(rgb), resize_mask(mask, size)[..., None]], axis=2)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """``(size, size)`` float32: OpenCV's ``INTER_LINEAR`` resize of the mask in [0, 1] (within
    2e-7 of ``cv2.resize`` on its float32 copy), computed from the two rows and two columns each
    output pixel samples, so an integer mask is never copied to float at full size."""
    (y0, y1, ty), (x0, x1, tx) = (_linear_taps(n, size) for n in mask.shape)
    taps = to_unit_float(mask[np.concatenate([y0, y1])][:, np.concatenate([x0, x1])])
    across = taps[:, :size] * (1 - tx) + taps[:, size:] * tx  # (2 size, size)
    return across[:size] * (1 - ty)[:, None] + across[size:] * ty[:, None]


def _linear_taps(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along an axis of ``n`` pixels resized to ``size``: per output, the two source indices
    and the second one's weight (float32), with half-pixel centres, clamped at the borders."""
    pos = (np.arange(size) + 0.5) * (n / size) - 0.5
    first = np.floor(pos)
    weight = (pos - first).astype(np.float32)
    weight[(first < 0) | (first >= n - 1)] = 0.0
    first = np.clip(first, 0, n - 1).astype(np.intp)
    return first, np.minimum(first + 1, n - 1), weight


def _model_device(model: AICTNet) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def run_network(x: torch.Tensor, model: AICTNet) -> LutMaps:
    """The network on an input from :func:`low_res_input` (``(1, 4, S, S)`` float32), in the
    precision :func:`load_model` chose (``model.metadata["precision"]``, default fp32); the
    maps are float32 either way, with the gain of the model's damping
    (:func:`.lut.damping.damping_gain`)."""
    device = _model_device(model)
    precision = (getattr(model, "metadata", None) or {}).get("precision", "fp32")
    x = x.to(device)
    with autocast(precision, str(device)):
        maps = model(x)
    maps = maps.to(device)
    return replace(maps, gain=damping_gain(x, maps, model.config.damping))


def _predict(image: np.ndarray, mask: np.ndarray, model: AICTNet) -> LutMaps:
    return run_network(low_res_input(image, mask, model.config.input_size), model)


def predict(composite: np.ndarray, mask: np.ndarray, *, model: AICTNet) -> LutMaps:
    """Run the network on a 256 x 256 copy of the composite; returns maps with batch 1."""
    image = check_image(composite, max_pixels=None, what="composite")
    return _predict(image, validate_mask(mask, image.shape[:2]), model)


def apply_prediction(
    composite: np.ndarray,
    mask: np.ndarray,
    maps: LutMaps,
    *,
    strength: float = 1.0,
    lut_backend: str = "auto",
    max_pixels: int | None = None,
) -> np.ndarray:
    """Apply predicted maps to the full-resolution composite (see :func:`harmonize`)."""
    image = check_image(composite, max_pixels=max_pixels, what="composite")
    alpha = validate_mask(mask, image.shape[:2])
    return apply_maps(image, alpha, maps, check_strength(strength), lut_backend)


def apply_maps(
    image: np.ndarray, alpha: np.ndarray, maps: LutMaps, strength: float, lut_backend: str
) -> np.ndarray:
    """:func:`apply_prediction` on inputs already validated: ``image`` a C-contiguous
    ``(H, W, 3)`` from :func:`.arrays.check_image`, ``alpha`` ``(H, W)`` from
    :func:`.arrays.validate_mask` or :func:`.arrays.check_mask` (integer masks are scaled
    band by band), ``strength`` from :func:`.arrays.check_strength` (times ``maps.gain``). A
    new array of ``image``'s dtype."""
    if maps.batch != 1:
        raise InputError(
            f"apply_prediction takes the maps of one image; got a batch of {maps.batch}"
        )
    strength *= maps.gain  # the model's damping
    if strength == 0.0 or not alpha.any():
        return image.copy()
    device = "cuda" if maps.intervals.is_cuda else "cpu"
    return get_backend(lut_backend, device).apply(image, alpha, maps, strength)


def harmonize(
    composite: np.ndarray,
    mask: np.ndarray,
    *,
    model: AICTNet,
    strength: float = 1.0,
    lut_backend: str = "auto",
    max_pixels: int | None = None,
) -> np.ndarray:
    """Recolour the masked object of ``composite`` so it fits the rest of the picture.

    Args:
        composite: ``(H, W, 3)`` RGB, uint8, uint16 or float32 in [0, 1].
        mask: ``(H, W)`` foreground mask: uint8/uint16 (full scale = 1), bool, or float in
            [0, 1]. Soft values blend proportionally.
        model: a network from :func:`load_model`.
        strength: 0 returns the input, 1 the full harmonization; values between blend.
        lut_backend: ``auto``, ``torch`` or any registered faster backend.
        max_pixels: size limit (default 150 MP or ``$HARMONIZE_MAX_PIXELS``).

    Returns:
        A new ``(H, W, 3)`` array of the composite's dtype. Pixels whose mask is 0 are
        bit-identical to the input; an all-zero mask returns an unchanged copy without
        running the network.

    Raises:
        layer_harmonizer.errors.InputError: wrong shape, dtype, size, NaN/inf, out-of-range values.
    """
    image = check_image(composite, max_pixels=max_pixels, what="composite")
    alpha = validate_mask(mask, image.shape[:2])  # no float copy: ~4 bytes per pixel less
    value = check_strength(strength)
    if value == 0.0 or not alpha.any():
        return image.copy()
    return apply_maps(image, alpha, _predict(image, alpha, model), value, lut_backend)

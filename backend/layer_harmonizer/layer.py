"""``harmonize_layer()``: the layer verb under every front end (the daemon, ``run --daemon``).

:func:`.pipeline.harmonize` recolours the object of a flat composite. A host application has
more: a **layer** with its own alpha, the user's **selection** on it and the **backdrop** (what
is visible below the layer). This verb does, in one pass over validated inputs::

    crop      the box around the covered pixels (alpha x selection > 0) plus a context margin
    composite rgb x m + backdrop x (1 - m), m = alpha x selection: what the network sees
    predict   the LUT maps of that composite (a :class:`PredictionCache` skips repeats)
    apply     the LUTs to the layer's own RGB, weighted by the selection, times strength
    alpha     the layer's alpha put back: the result is a layer again

The answer (:class:`LayerResult`) keeps what a strength change needs (:class:`LayerJob`), so
:func:`reapply` gives another strength without compositing or predicting again.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from layer_harmonizer.arrays import (
    IMAGE_DTYPES,
    MASK_DTYPES,
    OPAQUE,
    check_image,
    check_mask,
    convert,
)
from layer_harmonizer.compose import composite, crop_box, selection_weight
from layer_harmonizer.errors import InputError
from layer_harmonizer.lut import LutMaps
from layer_harmonizer.pipeline import apply_maps, check_strength, low_res_input, run_network
from layer_harmonizer.wire.messages import DEFAULT_CROP_MARGIN, MIN_CROP_MARGIN_PX, OUTPUTS

Destination = Callable[[tuple[int, ...], np.dtype], "np.ndarray | None"]
"""``out(shape, dtype)``: an array to write the result into (e.g. a view of shared memory),
or None for a new one."""
Checkpoint = Callable[..., None]
"""``checkpoint(stage, **info)`` between stages; it may raise to stop the job."""

_TO_RGB = {  # (channels, bgr) -> the OpenCV conversion to RGB
    (4, False): cv2.COLOR_RGBA2RGB,
    (4, True): cv2.COLOR_BGRA2RGB,
    (3, True): cv2.COLOR_BGR2RGB,
}


class EmptyMask(InputError):
    """No pixel is covered (alpha x selection is 0 everywhere): nothing to harmonize."""


class PredictionCache:
    """The last ``size`` predictions, keyed by the SHA-256 of the weights id, the variant and
    the network's low-resolution input: a request that differs only in strength, output dtype
    or channels re-applies LUTs without running the network."""

    def __init__(self, model: Any, size: int = 4) -> None:
        meta = getattr(model, "metadata", {}) or {}
        self.variant = str(meta.get("variant", "unknown"))
        self.weights_id = str(meta.get("sha256", meta.get("path", "unsaved")))[:16]
        self.size = size
        self._maps: OrderedDict[str, LutMaps] = OrderedDict()

    def predict(self, comp: np.ndarray, coverage: np.ndarray, model: Any) -> tuple[LutMaps, bool]:
        """The maps of ``comp`` ``(H, W, 3)`` with ``coverage`` ``(H, W)`` float32 (both
        validated); ``(maps, True)`` when they came from the cache."""
        x = low_res_input(comp, coverage, model.config.input_size)
        key = hashlib.sha256(f"{self.weights_id}:{self.variant}:".encode() + x.numpy().tobytes())
        digest = key.hexdigest()
        if digest in self._maps:
            self._maps.move_to_end(digest)
            return self._maps[digest], True
        maps = run_network(x, model)
        self._maps[digest] = maps
        while len(self._maps) > self.size:
            self._maps.popitem(last=False)
        return maps, False

    def clear(self) -> None:
        self._maps.clear()

    def __len__(self) -> int:
        return len(self._maps)


@dataclass
class LayerJob:
    """What re-applying another strength to a harmonized layer needs (:func:`reapply`).

    Attributes:
        rgb: ``(h, w, 3)`` the layer's RGB over the crop, C-contiguous, the layer's dtype.
        weight: ``(h, w)`` float32 in [0, 1]: the selection, 0 where alpha is 0.
        alpha: ``(h, w)`` the layer's alpha (its dtype); None for an opaque layer.
        maps: the predicted LUT maps (batch 1).
        offset: ``(x, y)`` of the crop in the layer.
        bgr: channels travel as BGR(A) (the layer's order is kept in the result).
    """

    rgb: np.ndarray
    weight: np.ndarray
    alpha: np.ndarray | None
    maps: LutMaps
    offset: tuple[int, int]
    bgr: bool = False

    @property
    def nbytes(self) -> int:
        """Bytes of pixels held."""
        return sum(a.nbytes for a in (self.rgb, self.weight, self.alpha) if a is not None)

    def detached(self) -> LayerJob:
        """This job holding no view of the caller's arrays (e.g. shared memory that the next
        request overwrites): views are copied, owned arrays kept."""

        def own(a: np.ndarray | None) -> np.ndarray | None:
            return a if a is None or a.flags.owndata else a.copy()

        return replace(self, rgb=own(self.rgb), weight=own(self.weight), alpha=own(self.alpha))


@dataclass
class LayerResult:
    """A harmonized crop: ``pixels`` ``(h, w, 4|3)`` to paste at ``offset`` ``(x, y)``."""

    pixels: np.ndarray
    offset: tuple[int, int]
    cached: bool
    job: LayerJob
    timings: dict[str, float] = field(default_factory=dict)


def _check_arrays(layer: Any, selection: Any, backdrop: Any) -> None:
    """Types, shapes and dtypes (not values) of the three inputs."""
    for name, arr, dtypes in (
        ("layer", layer, IMAGE_DTYPES),
        ("selection", selection, MASK_DTYPES),
        ("backdrop", backdrop, IMAGE_DTYPES),
    ):
        if arr is None and name == "selection":
            continue
        if not isinstance(arr, np.ndarray):
            raise InputError(f"{name} must be a numpy array, got {type(arr).__name__}")
        if arr.dtype not in dtypes:
            raise InputError(
                f"{name} dtype must be one of {[str(d) for d in dtypes]}; got {arr.dtype}"
            )
    if layer.ndim != 3 or layer.shape[2] not in (3, 4):
        raise InputError(f"layer must have shape (H, W, 4) or (H, W, 3); got {layer.shape}")
    if backdrop.ndim != 3 or backdrop.shape[2] not in (3, 4):
        raise InputError(f"backdrop must have shape (H, W, 3) or (H, W, 4); got {backdrop.shape}")
    h, w = layer.shape[:2]
    for name, arr in (("selection", selection), ("backdrop", backdrop)):
        if arr is not None and arr.shape[:2] != (h, w):
            raise InputError(
                f"{name} is {arr.shape[1]} x {arr.shape[0]} but the layer is {w} x {h}: "
                "layer, selection and backdrop must have the same size"
            )


def _covered(layer: np.ndarray, selection: np.ndarray | None, premultiplied: bool) -> Any:
    """What is nonzero where the layer is covered (alpha x selection > 0), for the crop box;
    None: all of it. Any dtype's nonzero test: NaN counts, then fails validation."""
    if premultiplied or (selection is not None and layer.shape[2] == 3):
        return selection
    if layer.shape[2] == 3:
        return None
    alpha = cv2.extractChannel(layer, 3)  # one contiguous plane (SIMD), not a strided view
    if selection is None:
        return alpha
    if selection.dtype == alpha.dtype:
        return cv2.min(alpha, selection)  # > 0 exactly where both are
    return np.not_equal(alpha, 0) & np.not_equal(selection, 0)


def _to_rgb(pixels: np.ndarray, bgr: bool, what: str, max_pixels: int | None) -> np.ndarray:
    """The RGB of an RGB(A)/BGR(A) crop as a validated C-contiguous ``(h, w, 3)`` array."""
    code = _TO_RGB.get((pixels.shape[2], bgr))
    rgb = cv2.cvtColor(pixels, code) if code is not None else pixels
    return check_image(rgb, max_pixels=max_pixels, what=what)


def _alpha(crop: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(the crop's alpha plane, as float32 in [0, 1])`` for a layer with alpha; both None
    for an RGB or fully opaque layer (the common case skips every per-pixel alpha pass)."""
    if crop.shape[2] == 3:
        return None, None
    a = cv2.extractChannel(crop, 3)  # a plane of its own: a kept job needs no copy
    if a.dtype.kind != "f" and a.min() == OPAQUE[a.dtype]:
        return None, None
    return a, check_mask(a, a.shape, what="alpha")


def _weights(
    selection: np.ndarray | None, alpha: np.ndarray | None, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(coverage m = alpha x selection, weight = selection where alpha > 0)``, float32
    (OpenCV's SIMD, multi-threaded loops: these run over every pixel of the crop)."""
    sel = np.ones(shape, np.float32) if selection is None else selection
    if alpha is None:
        return sel, sel
    present = cv2.threshold(alpha, 0.0, 1.0, cv2.THRESH_BINARY)[1]  # 1 where alpha > 0
    if selection is None:
        return alpha, present
    return cv2.multiply(alpha, sel), cv2.multiply(sel, present)


def harmonize_layer(
    layer: np.ndarray,
    selection: np.ndarray | None,
    backdrop: np.ndarray,
    *,
    model: Any,
    strength: float = 1.0,
    crop_margin: float | None = DEFAULT_CROP_MARGIN,
    min_margin: int = MIN_CROP_MARGIN_PX,
    bgr: bool = False,
    dtype: str | np.dtype | None = None,
    output: str = "rgba",
    premultiplied: bool = False,
    lut_backend: str = "auto",
    cache: PredictionCache | None = None,
    out: Destination | None = None,
    checkpoint: Checkpoint | None = None,
    max_pixels: int | None = None,
) -> LayerResult:
    """Recolour a layer so it fits what is visible below it; returns the harmonized crop.

    Args:
        layer: ``(H, W, 4)`` RGBA (channel 3 is alpha) or ``(H, W, 3)`` (opaque), uint8,
            uint16 or float32 in [0, 1].
        selection: ``(H, W)`` soft selection (uint8/uint16 full scale = 1, bool, float in
            [0, 1]) or None for all of the layer. Not multiplied by alpha: the daemon does it.
        backdrop: ``(H, W, 3)`` (or ``(H, W, 4)``, alpha ignored) of any image dtype: what is
            visible below the layer.
        model: a network from :func:`.pipeline.load_model`.
        strength: 0 returns the layer, 1 the full harmonization; values between blend.
        crop_margin: context around the covered pixels' bounding box, as a fraction of its
            longer side (at least ``min_margin`` pixels, clamped); None = the whole layer.
        bgr: layer and backdrop are BGR(A) (Krita's order); the result keeps that order.
        dtype: the result's dtype (None: the layer's). output: ``"rgba"`` or ``"rgb"``.
        premultiplied: ``selection`` is alpha x selection (protocol 2.0 hosts); the
            selection is recovered as ``clip(selection / alpha, 0, 1)``.
        cache: skips the network for a composite it has seen (None: always predict).
        out: :data:`Destination` for the result (None: a new array).
        checkpoint: called after "composed", "predicted" (``cached=``) and "applied".

    Returns:
        :class:`LayerResult`: ``pixels`` ``(h, w, 4|3)`` at ``offset`` in the layer; pixels
        outside the selection or with alpha 0 are the layer's, bit for bit; alpha is the
        layer's (converted to ``dtype``).

    Raises:
        EmptyMask: no pixel has alpha x selection > 0.
        layer_harmonizer.errors.InputError: a wrong shape, dtype, size or value (NaN, out of
            [0, 1]); values are checked once, inside the crop (outside it nothing is read).
    """
    _check_arrays(layer, selection, backdrop)
    value = check_strength(strength)
    if output not in OUTPUTS:
        raise InputError(f"output must be one of {list(OUTPUTS)}; got {output!r}")
    if premultiplied and selection is None:
        raise InputError("premultiplied needs the mask (alpha x selection) as selection")
    start = time.perf_counter()
    covered = _covered(layer, selection, premultiplied)
    whole = (0, 0, layer.shape[1], layer.shape[0])
    box = whole if covered is None else crop_box(covered, crop_margin, min_margin)
    if box is None:
        raise EmptyMask("the layer is not covered anywhere (alpha x selection is 0)")
    crop = _Crop.of(layer, selection, backdrop, box, bgr, premultiplied, max_pixels)
    times = {"compose": time.perf_counter() - start}
    _stage(checkpoint, "composed")
    tick = time.perf_counter()
    cache = cache if cache is not None else PredictionCache(model, size=0)
    maps, cached = cache.predict(crop.composite, crop.coverage, model)
    times["predict"] = time.perf_counter() - tick
    _stage(checkpoint, "predicted", cached=cached)
    job = LayerJob(crop.rgb, crop.weight, crop.alpha, maps, (box[0], box[1]), bgr)
    pixels = _render(job, value, dtype or layer.dtype, output, lut_backend, out, times)
    _stage(checkpoint, "applied")
    return LayerResult(pixels, job.offset, cached, job, times)


@dataclass
class _Crop:
    """The validated inputs inside the crop box and what the network sees."""

    rgb: np.ndarray  # (h, w, 3) the layer's RGB
    alpha: np.ndarray | None  # (h, w) the layer's alpha, None: opaque
    coverage: np.ndarray  # (h, w) float32: alpha x selection
    weight: np.ndarray  # (h, w) float32: the selection where alpha > 0
    composite: np.ndarray  # (h, w, 3): rgb x coverage + backdrop x (1 - coverage)

    @classmethod
    def of(
        cls,
        layer: np.ndarray,
        selection: np.ndarray | None,
        backdrop: np.ndarray,
        box: tuple[int, int, int, int],
        bgr: bool,
        premultiplied: bool,
        max_pixels: int | None,
    ) -> _Crop:
        """Crop, validate (once: nothing outside the box is read) and composite."""
        x0, y0, x1, y1 = box
        crop = layer[y0:y1, x0:x1]
        rgb = _to_rgb(crop, bgr, "layer", max_pixels)
        back = _to_rgb(backdrop[y0:y1, x0:x1], bgr, "backdrop", max_pixels)
        sel = None if selection is None else selection[y0:y1, x0:x1]
        sel = None if sel is None else check_mask(sel, rgb.shape[:2], what="selection")
        alpha, alpha_f = _alpha(crop)
        if premultiplied:
            coverage, weight = sel, selection_weight(sel, alpha_f)
        else:
            coverage, weight = _weights(sel, alpha_f, rgb.shape[:2])
        return cls(rgb, alpha, coverage, weight, composite(rgb, coverage, back))


def reapply(
    job: LayerJob,
    *,
    strength: float,
    dtype: str | np.dtype | None = None,
    output: str = "rgba",
    lut_backend: str = "auto",
    out: Destination | None = None,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """``job`` (from :attr:`LayerResult.job`) at another ``strength``: the LUTs applied again
    to the same crop, no compositing and no network. Same result as :func:`harmonize_layer`
    with that strength; ``timings`` (if given) receives ``apply`` and ``encode``."""
    if output not in OUTPUTS:
        raise InputError(f"output must be one of {list(OUTPUTS)}; got {output!r}")
    value = check_strength(strength)
    times = timings if timings is not None else {}
    return _render(job, value, dtype or job.rgb.dtype, output, lut_backend, out, times)


def _render(
    job: LayerJob,
    strength: float,
    dtype: str | np.dtype,
    output: str,
    lut_backend: str,
    out: Destination | None,
    times: dict[str, float],
) -> np.ndarray:
    """Apply the LUTs and lay the result out: ``(h, w, 4|3)`` of ``dtype`` in the job's
    channel order, written into ``out(shape, dtype)`` when that gives an array."""
    tick = time.perf_counter()
    rgb = apply_maps(job.rgb, job.weight, job.maps, strength, lut_backend)
    times["apply"] = time.perf_counter() - tick
    tick = time.perf_counter()
    rgb = convert(rgb, dtype)
    shape = (*rgb.shape[:2], 4 if output == "rgba" else 3)
    dest = out(shape, rgb.dtype) if out is not None else None
    if dest is None:
        dest = np.empty(shape, rgb.dtype)
    red, blue = (2, 0) if job.bgr else (0, 2)
    sources = [rgb]
    pairs = [0, red, 1, 1, 2, blue]
    if output == "rgba" and job.alpha is None:
        dest[..., 3] = OPAQUE[rgb.dtype]
    elif output == "rgba":  # channel 3 of the sources (rgb holds 0..2) goes to channel 3
        sources.append(convert(job.alpha, rgb.dtype))
        pairs += [3, 3]
    cv2.mixChannels(sources, [dest], pairs)
    times["encode"] = time.perf_counter() - tick
    return dest


def _stage(checkpoint: Checkpoint | None, stage: str, **info: Any) -> None:
    if checkpoint is not None:
        checkpoint(stage, **info)

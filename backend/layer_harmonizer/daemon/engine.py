"""The daemon's model side: one warm network, the prediction cache and the layer maths of a
``harmonize_request`` (crop, composite, predict, apply). Used by the daemon's worker thread."""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from layer_harmonizer._version import __version__
from layer_harmonizer.arrays import OPAQUE, check_image, check_mask, convert
from layer_harmonizer.compose import composite, crop_box, layer_rgb, selection_weight, with_alpha
from layer_harmonizer.wire import messages as M
from layer_harmonizer.wire import protocol as P


class Engine:
    """The warm model plus the prediction cache; used by the worker thread only.

    ``run`` takes a validated request and returns the result crop. The cache maps a hash of
    the network's low-resolution input (and the weights) to the predicted LUT maps, so a
    request that differs only in strength re-applies LUTs without running the network.
    """

    def __init__(self, model: Any, *, lut_backend: str = "auto", cache_size: int = 4) -> None:
        self.model = model
        self.lut_backend = lut_backend
        self.cache_size = cache_size
        self.cache: OrderedDict[str, Any] = OrderedDict()
        meta = getattr(model, "metadata", {}) or {}
        self.variant = str(meta.get("variant", "unknown"))
        self.weights_id = str(meta.get("sha256", meta.get("path", "unsaved")))[:16]
        self.device = str(next(model.parameters()).device)

    def info(self) -> dict[str, Any]:
        return {
            "server_version": __version__,
            "protocol_version": list(P.PROTOCOL_VERSION),
            "device": self.device,
            "variant": self.variant,
            "weights_id": self.weights_id,
            "free_memory": free_memory(self.device),
            "pid": os.getpid(),
        }

    def warm_up(self) -> float:
        """Run one small job so the first real request does not pay for lazy initialisation
        (kernel loading, allocator pools); returns the seconds it took."""
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        layer = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        mask[16:48, 16:48] = 255
        frames = {"layer": layer, "mask": mask, "backdrop": layer[..., :3].copy()}
        self.run(frames, M.HarmonizeOptions(), lambda *a, **k: None)
        self.cache.clear()
        return time.perf_counter() - start

    def _maps(self, comp: np.ndarray, mask: np.ndarray) -> tuple[Any, bool]:
        from layer_harmonizer.pipeline import low_res_input, run_network

        x = low_res_input(comp, mask, self.model.config.input_size)
        key = hashlib.sha256(f"{self.weights_id}:{self.variant}:".encode() + x.numpy().tobytes())
        digest = key.hexdigest()
        if digest in self.cache:
            self.cache.move_to_end(digest)
            return self.cache[digest], True
        maps = run_network(x, self.model)  # the key's input: validated, resized once
        self.cache[digest] = maps
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return maps, False

    def run(
        self,
        frames: dict[str, np.ndarray],
        options: M.HarmonizeOptions,
        checkpoint: Callable,
        destination: Callable[[tuple[int, ...], np.dtype], np.ndarray | None] | None = None,
    ) -> tuple[np.ndarray, tuple[int, int], dict[str, Any]]:
        """Harmonize one layer.

        Args:
            frames: ``layer (H, W, 4|3)``, ``mask (H, W)``, ``backdrop (H, W, 3)``; each
                uint8/uint16/float32 (float in [0, 1]).
            options: validated request options.
            checkpoint: called as ``checkpoint(stage, **info)`` between stages; raises
                :class:`Cancelled` to stop.
            destination: ``destination(shape, dtype)`` returns an array to write the result
                into (e.g. a view of a client's shared memory), or None for a new one.

        Returns:
            ``(result crop (h, w, 4|3) in the requested dtype, (x, y) offset, reply info)``.
        """
        from layer_harmonizer.pipeline import apply_prediction

        times: dict[str, float] = {}
        start = time.perf_counter()
        layer, backdrop, raw_mask = frames["layer"], frames["backdrop"], frames["mask"]
        box = crop_box(raw_mask, options.crop_margin, M.MIN_CROP_MARGIN_PX)
        if box is None:
            raise EmptyMask
        x0, y0, x1, y1 = box
        crop = layer[y0:y1, x0:x1]
        mask = check_mask(raw_mask[y0:y1, x0:x1], crop.shape[:2])  # values outside are 0
        rgb = check_image(layer_rgb(crop), what="layer RGB")
        back = check_image(backdrop[y0:y1, x0:x1], what="backdrop")
        alpha = None
        if crop.shape[2] == 4:  # an opaque layer (the common case) skips the division
            a = crop[..., 3]
            if a.dtype.kind == "f" or a.min() < OPAQUE[a.dtype]:
                alpha = check_mask(np.ascontiguousarray(a), mask.shape, what="alpha")
        comp = composite(rgb, mask, back)
        times["compose"] = time.perf_counter() - start
        checkpoint("composed")
        tick = time.perf_counter()
        maps, cached = self._maps(comp, mask)
        times["predict"] = time.perf_counter() - tick
        checkpoint("predicted", cached=cached)
        tick = time.perf_counter()
        weight = selection_weight(mask, alpha)
        out = apply_prediction(
            rgb, weight, maps, strength=options.strength, lut_backend=self.lut_backend
        )
        times["apply"] = time.perf_counter() - tick
        tick = time.perf_counter()
        out = convert(out, options.dtype or str(layer.dtype))
        shape = (*out.shape[:2], 4 if options.output == "rgba" else 3)
        dest = destination(shape, out.dtype) if destination is not None else None
        if options.output == "rgba":
            out = with_alpha(out, crop, out=dest)
        elif dest is not None:
            np.copyto(dest, out)
            out = dest
        times["encode"] = time.perf_counter() - tick
        checkpoint("applied")
        return out, (x0, y0), {"cached": cached, "timings": times}


class EmptyMask(Exception):
    """The mask has no pixel above 0."""


def free_memory(device: str) -> int | None:
    """Free bytes on the CUDA device, or available system memory for the CPU (None: unknown)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None

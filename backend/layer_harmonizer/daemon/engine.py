"""The daemon's model side: one warm network, the prediction cache and the jobs kept for
``reapply_request``. The layer maths is :func:`layer_harmonizer.layer.harmonize_layer`'s; this
only maps a request's frames and options onto it. Used by the daemon's worker thread."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from layer_harmonizer._version import __version__
from layer_harmonizer.layer import EmptyMask, LayerJob, PredictionCache, harmonize_layer, reapply
from layer_harmonizer.wire import messages as M
from layer_harmonizer.wire import protocol as P

__all__ = ["EmptyMask", "Engine", "UnknownJob", "free_memory"]

Destination = Callable[[tuple[int, ...], np.dtype], "np.ndarray | None"]


class UnknownJob(Exception):
    """A ``reapply_request`` names a job this daemon does not keep (any more)."""


class Engine:
    """The warm model, the prediction cache and the last jobs; used by the worker thread only.

    ``run`` harmonizes a validated request's frames; ``reapply`` gives a kept job at another
    strength. The prediction cache maps a hash of the network's low-resolution input (and the
    weights) to the predicted LUT maps, so a request that differs only in strength re-applies
    LUTs without running the network. The last ``job_cache`` jobs (at most ``job_bytes`` of
    pixels) are kept by request id, so a strength change needs no pixels at all.
    """

    def __init__(
        self,
        model: Any,
        *,
        lut_backend: str = "auto",
        cache_size: int = 4,
        job_cache: int = 2,
        job_bytes: int = 1 << 30,
    ) -> None:
        self.model = model
        self.lut_backend = lut_backend
        self.cache = PredictionCache(model, cache_size)
        self.variant, self.weights_id = self.cache.variant, self.cache.weights_id
        self.device = str(next(model.parameters()).device)
        self.job_cache, self.job_bytes = job_cache, job_bytes
        self.jobs: OrderedDict[str, LayerJob] = OrderedDict()

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
        selection = np.zeros((64, 64), np.uint8)
        selection[16:48, 16:48] = 255
        frames = {"layer": layer, M.SELECTION: selection, "backdrop": layer[..., :3].copy()}
        self.run(frames, M.HarmonizeOptions(), lambda *a, **k: None)
        self.cache.clear()
        return time.perf_counter() - start

    def run(
        self,
        frames: dict[str, np.ndarray],
        options: M.HarmonizeOptions,
        checkpoint: Callable,
        destination: Destination | None = None,
        *,
        bgr: bool = False,
        job_id: str | None = None,
    ) -> tuple[np.ndarray, tuple[int, int], dict[str, Any]]:
        """Harmonize one layer (:func:`~layer_harmonizer.layer.harmonize_layer`).

        Args:
            frames: ``layer (H, W, 4|3)``, ``backdrop (H, W, 3|4)`` and ``selection (H, W)``
                (2.1), or ``mask (H, W)`` = alpha x selection (2.0), or neither (all of the
                layer); each uint8/uint16/float32 (float in [0, 1]).
            options: validated request options.
            checkpoint: called as ``checkpoint(stage, **info)`` between stages; raises to
                stop (e.g. the worker's ``Cancelled``).
            destination: ``destination(shape, dtype)`` returns an array to write the result
                into (e.g. a view of a client's shared memory), or None for a new one.
            bgr: layer and backdrop are BGR(A); so is the result.
            job_id: keep the job under this id for :meth:`reapply`.

        Returns:
            ``(result crop (h, w, 4|3) in the requested dtype, (x, y) offset, reply info)``;
            ``info["order"]`` is ``"BGR"`` for a BGR(A) result, else None.
        """
        old = M.MASK in frames
        result = harmonize_layer(
            frames["layer"],
            frames[M.MASK] if old else frames.get(M.SELECTION),
            frames["backdrop"],
            model=self.model,
            strength=options.strength,
            crop_margin=options.crop_margin,
            bgr=bgr,
            dtype=options.dtype,
            output=options.output,
            premultiplied=old,
            lut_backend=self.lut_backend,
            cache=self.cache,
            out=destination,
            checkpoint=checkpoint,
        )
        if job_id is not None:
            self._keep(job_id, result.job.detached())  # the frames may be overwritten next
        info = {"cached": result.cached, "timings": result.timings, "order": _order(result.job)}
        return result.pixels, result.offset, info

    def reapply(
        self,
        job_id: str,
        options: M.HarmonizeOptions,
        checkpoint: Callable,
        destination: Destination | None = None,
    ) -> tuple[np.ndarray, tuple[int, int], dict[str, Any]]:
        """A kept job at ``options.strength`` (``dtype``, ``output``), as :meth:`run` returns
        it; :class:`UnknownJob` when it is not kept (any more)."""
        job = self.jobs.get(job_id)
        if job is None:
            raise UnknownJob(job_id)
        self.jobs.move_to_end(job_id)
        times: dict[str, float] = {}
        out = reapply(
            job, strength=options.strength, dtype=options.dtype, output=options.output,
            lut_backend=self.lut_backend, out=destination, timings=times,
        )  # fmt: skip
        checkpoint("applied")
        return out, job.offset, {"cached": True, "timings": times, "order": _order(job)}

    def _keep(self, job_id: str, job: LayerJob) -> None:
        """Keep ``job`` for :meth:`reapply`, dropping the oldest beyond the count or bytes (a
        job larger than ``job_bytes`` alone is not kept: its reapply falls back to a request)."""
        self.jobs[job_id] = job
        while self.jobs and (
            len(self.jobs) > self.job_cache
            or sum(j.nbytes for j in self.jobs.values()) > self.job_bytes
        ):
            self.jobs.popitem(last=False)


def _order(job: LayerJob) -> str | None:
    """The result's declared channel order: ``"BGR"`` for a BGR(A) job (the channel count is
    the frame's), None for RGB(A), which needs no declaration."""
    return "BGR" if job.bgr else None


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

"""A host's link to the daemon: what it sends for one layer (:class:`Request`) and one client
kept for a whole dialog or docker (:class:`Session`), instead of a new client, ping, hello and
shared-memory segment per request. A strength change re-applies the daemon's kept job
(protocol 2.1 ``reapply``) without sending the pixels again. Re-exported by :mod:`.host_side`.

Standard library only, like all of :mod:`layer_harmonizer.wire`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import protocol as P
from .host_messages import PROGRESS, PluginError, explain
from .host_pixels import Box, WireFormat
from .host_settings import DEFAULT_STRENGTH, Settings, endpoint_file

KEEP_CLIENT = (
    P.ErrorCode.EMPTY_MASK,
    P.ErrorCode.INVALID_INPUT,
    P.ErrorCode.CANCELLED,
    P.ErrorCode.BUSY,
    P.ErrorCode.TOO_LARGE,
    P.ErrorCode.UNKNOWN_JOB,
)
"""Errors about one request: the session's client stays. Any other drops it (the next request
finds or starts a daemon again)."""


@dataclass
class Request:
    """One layer as a host read it, over the context region (every buffer ``height x width``).

    Attributes:
        layer: ``(H, W, 4)`` of ``fmt.dtype``, channels in ``order``.
        selection: ``(H, W)`` of ``selection_dtype`` (default ``fmt.dtype``): the selection
            alone, soft; None = all of the layer. With ``premultiplied``: alpha x selection
            (the protocol 2.0 mask).
        backdrop: ``(H, W, backdrop_channels)`` of ``fmt.dtype``: what is visible below, in
            ``order`` (3 channels, or 4 with an alpha the daemon ignores).
        fmt: the wire format (:func:`.host_pixels.wire_format`).
        order: ``"RGBA"`` or ``"BGRA"`` (Krita's own order: no swizzle in Python).
        job: the daemon's id for this request once answered (:meth:`Session.restrength`).
    """

    layer: Any
    selection: Any
    backdrop: Any
    width: int
    height: int
    fmt: WireFormat
    order: str = "RGBA"
    selection_dtype: str | None = None
    backdrop_channels: int = 3
    premultiplied: bool = False
    job: str | None = None

    def check(self, strength: float) -> None:
        """The strength and the buffers' sizes; PluginError (an internal error) if wrong."""
        if not 0.0 <= strength <= 1.0:
            raise PluginError(f"Strength must be between 0 and 1; got {strength}.")
        item = self.fmt.channel_bytes
        coverage = "mask" if self.premultiplied else "selection"
        planes = [
            ("layer", self.layer, 4, item),
            ("backdrop", self.backdrop, self.backdrop_channels, item),
        ]
        if self.selection is not None:
            planes.insert(1, (coverage, self.selection, 1, P.DTYPES[self._selection_dtype]))
        for name, data, channels, size in planes:
            expected = self.width * self.height * channels * size
            if memoryview(data).nbytes != expected:
                raise PluginError(
                    f"Internal error: the {name} has {memoryview(data).nbytes} bytes, expected "
                    f"{expected} for {self.width} x {self.height} x {channels} "
                    f"{self._selection_dtype if channels == 1 else self.fmt.dtype}."
                )

    @property
    def _selection_dtype(self) -> str:
        return self.selection_dtype or self.fmt.dtype

    def frames(self) -> tuple[P.Pixels, P.Pixels | None, P.Pixels]:
        """``(layer, selection or None, backdrop)`` as wire pixels (the order declared when it
        is not RGB(A))."""
        shape, dtype = (self.height, self.width), self.fmt.dtype
        bgr = self.order != "RGBA"
        back_order = self.order[: self.backdrop_channels] if bgr else None
        selection = None
        if self.selection is not None:
            selection = P.Pixels(self.selection, shape, self._selection_dtype)
        return (
            P.Pixels(self.layer, (*shape, 4), dtype, self.order if bgr else None),
            selection,
            P.Pixels(self.backdrop, (*shape, self.backdrop_channels), dtype, back_order),
        )


@dataclass(frozen=True)
class Result:
    """A harmonized crop: ``pixels`` (``h x w x 4`` of the request's dtype, in its channel
    order) at ``box``, in the coordinates of the region that was sent.

    ``pixels`` is a read-only buffer, often a view of the session's shared memory: it stays
    valid while referenced (the session then leaves that memory alone); ``bytes(pixels)``
    makes a copy to keep."""

    pixels: Any
    box: Box
    timings: dict[str, float]


class Session:
    """One client of the daemon for a host's dialog or docker; close it with the dialog.

    Not thread-safe: one request at a time (a host's worker threads may take turns).

    Args:
        settings: the plug-in's settings (how to start the daemon, its endpoint file).
        client_module: :mod:`.client` (or its replacement in tests).
        connect: ``connect(client_module, settings)`` returns a client of the running
            daemon, starting one if none runs (:func:`.host_side.open_session` gives it).
    """

    def __init__(
        self,
        settings: Settings | None,
        *,
        client_module: Any,
        connect: Callable[[Any, Settings], Any],
    ) -> None:
        self.settings = settings or Settings()
        self.module, self.connect = client_module, connect
        self.client: Any = None
        self._daemon_id: tuple[Any, ...] | None = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and its shared-memory segment (a result still held keeps its own
        mapping)."""
        if self.client is not None:
            self.client.close()
        self.client, self._daemon_id = None, None

    def harmonize(
        self,
        request: Request,
        *,
        strength: float = DEFAULT_STRENGTH,
        on_progress: Callable[[float, str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """Send ``request`` (finding or starting the daemon) and return the harmonized crop;
        ``request.job`` is set for :meth:`restrength`. Raises :class:`PluginError` with a
        message for the user."""
        request.check(strength)
        layer, selection, backdrop = request.frames()
        options = {"strength": float(strength), "dtype": request.fmt.dtype, "output": "rgba"}
        options.update(on_progress=_progress(on_progress), cancel=cancel)

        def send(daemon: Any) -> Any:
            if request.premultiplied:
                return daemon.harmonize(layer, selection, backdrop, **options)
            return daemon.harmonize_layer(layer, selection, backdrop, **options)

        reply = self._call(send)
        request.job = getattr(reply, "job", None)
        return _result(reply, request)

    def restrength(
        self,
        request: Request,
        *,
        strength: float,
        on_progress: Callable[[float, str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """``request`` (answered before) at another strength: a ``reapply`` of its kept job,
        no pixels sent; the whole request when the daemon no longer keeps the job."""
        call = {"strength": strength, "on_progress": on_progress, "cancel": cancel}
        if request.job is None:
            return self.harmonize(request, **call)
        request.check(strength)

        def send(daemon: Any) -> Any:
            return daemon.reapply(
                request.job, strength=float(strength), dtype=request.fmt.dtype,
                output="rgba", on_progress=_progress(on_progress), cancel=cancel,
            )  # fmt: skip

        try:
            reply = self._call(send, fallback=P.ErrorCode.UNKNOWN_JOB)
        except _Expired:
            request.job = None
            return self.harmonize(request, **call)
        return _result(reply, request)

    def _call(self, send: Callable[[Any], Any], fallback: str | None = None) -> Any:
        """``send(client)`` through the kept client (connected first if need be); failures
        become :class:`PluginError` (the code ``fallback``: :class:`_Expired`)."""
        module = self.module
        try:
            return send(self._connected())
        except (P.ProtocolError, module.DaemonError, OSError, MemoryError) as exc:
            # ProtocolError: e.g. the hello's version check; OSError: the daemon cannot be run
            code = getattr(exc, "code", None)
            if code not in KEEP_CLIENT:
                self.close()
            if fallback is not None and code == fallback:
                raise _Expired from None
            raise PluginError(explain(exc)) from None

    def _connected(self) -> Any:
        """The kept client while the endpoint file still names the daemon it talks to (a
        cheap check: one small file read), else a client of the daemon found or started."""
        current = _daemon_id(self.settings)
        if self.client is not None and current is not None and current == self._daemon_id:
            return self.client
        self.close()
        self.client = self.connect(self.module, self.settings)
        self._daemon_id = _daemon_id(self.settings)
        return self.client


class _Expired(Exception):
    """The daemon no longer keeps the job to re-apply."""


def _progress(on_progress: Callable[[float, str], None] | None) -> Callable[[dict], None]:
    def progress(body: dict[str, Any]) -> None:
        stage = str(body.get("stage", ""))
        if on_progress is not None and stage in PROGRESS:
            on_progress(PROGRESS[stage], stage)

    return progress


def _daemon_id(settings: Settings) -> tuple[Any, ...] | None:
    """What names the running daemon: the endpoint file's pid, endpoint and token, when the
    file is readable and that process is alive; else None."""
    try:
        info = json.loads(endpoint_file(settings).read_text(encoding="utf-8"))
        ident = (int(info["pid"]), str(info["endpoint"]), str(info.get("token", "")))
        os.kill(ident[0], 0)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return ident


def _result(reply: Any, request: Request) -> Result:
    """The daemon's reply as a :class:`Result`, checked against the request (no copy)."""
    pix, fmt = reply.pixels, request.fmt
    order = getattr(pix, "order", None) or "RGBA"
    shape_ok = len(pix.shape) == 3 and pix.shape[2] == 4
    if pix.dtype != fmt.dtype or not shape_ok or order != request.order:
        raise PluginError(
            f"The daemon answered with {order} {pix.dtype} pixels of shape {list(pix.shape)}; "
            f"expected {request.order} {fmt.dtype}. Update the daemon and the plugin to the "
            "same version."
        )
    x, y = reply.offset
    box = Box(x, y, pix.shape[1], pix.shape[0])
    if box.intersect(Box(0, 0, request.width, request.height)) != box:
        raise PluginError(
            f"The daemon's result {box} lies outside the {request.width} x {request.height} region."
        )
    return Result(memoryview(pix.data).cast("B"), box, dict(reply.timings))

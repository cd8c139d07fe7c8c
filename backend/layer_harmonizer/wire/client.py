"""Client of the ``harmonize serve`` daemon: standard library + pyzmq + msgpack only.

No numpy and no torch, so the plug-ins carry it (all of :mod:`layer_harmonizer.wire`)::

    from layer_harmonizer.wire.client import ensure_daemon
    from layer_harmonizer.wire.protocol import Pixels

    with ensure_daemon() as client:          # finds a running daemon or starts one
        result = client.harmonize_layer(Pixels(layer_bytes, (h, w, 4), "uint8"),
                                        Pixels(selection_bytes, (h, w), "uint8"),
                                        Pixels(below_bytes, (h, w, 3), "uint8"), strength=0.8)
        x, y = result.offset                 # paste result.pixels (h', w', 4) there
        weaker = client.reapply(result.job, strength=0.4)   # no pixels sent again

The connection, handshake and retries are :class:`.connection.Connection`'s; this module adds
the harmonize and reapply requests (frames or shared memory); finding or starting a daemon is
:mod:`.startup`'s (re-exported here).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import messages as M
from . import protocol as P
from . import receive as R
from . import shm
from .connection import REPLY_LIMITS, Connection
from .discovery import DaemonError, is_loopback
from .startup import DEFAULT_IDLE_TIMEOUT, answering_client, ensure_daemon, serve_command

__all__ = [
    "CLIENT_TRANSPORTS",
    "DEFAULT_IDLE_TIMEOUT",
    "Client",
    "DaemonError",
    "HarmonizeResult",
    "answering_client",
    "ensure_daemon",
    "serve_command",
]

CLIENT_TRANSPORTS = ("auto", P.FRAMES, P.SHM)
"""``auto``: shared memory when the daemon offers it and runs on this machine, else frames."""
LAYER_PROTOCOL = (2, 1)
"""The daemon version that takes the selection, channel orders and ``reapply`` (2.1)."""


@dataclass
class HarmonizeResult:
    """A harmonized crop: ``pixels`` ``(h, w, 4|3)`` to paste at ``offset`` ``(x, y)``.

    ``pixels.data`` is a read-only buffer that stays valid for as long as it is referenced
    (over shared memory: a view of the segment, which the client then stops reusing).
    ``transport`` says how the pixels travelled (``"frames"`` or ``"shm"``). ``job`` (2.1) is
    the id to pass to :meth:`Client.reapply` for another strength.
    """

    pixels: P.Pixels
    offset: tuple[int, int]
    cached: bool
    timings: dict[str, float] = field(default_factory=dict)
    transport: str = P.FRAMES
    job: str | None = None


class Client(Connection):
    """A :class:`~.connection.Connection` that also harmonizes. Not thread-safe: one per thread.

    Args:
        transport: how ``harmonize`` sends pixels: ``"auto"`` (default, or
            ``$HARMONIZE_TRANSPORT``), ``"frames"`` or ``"shm"`` (see :data:`CLIENT_TRANSPORTS`).
        endpoint, token, endpoint_file, timeout, retries, context, curve: as for
            :class:`~.connection.Connection`.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        token: str | None = None,
        *,
        transport: str | None = None,
        **kwargs: Any,
    ) -> None:
        transport = transport or os.environ.get("HARMONIZE_TRANSPORT") or "auto"
        if transport not in CLIENT_TRANSPORTS:
            raise ValueError(f"transport must be one of {CLIENT_TRANSPORTS}; got {transport!r}")
        self.transport = transport
        self._segment: shm.Segment | None = None
        self._jobs: dict[str, tuple[int, int, str]] = {}  # job -> its result's h, w, dtype
        super().__init__(endpoint, token, **kwargs)

    def close(self) -> None:
        """Close the socket and remove the shared-memory segment (a result view still held
        keeps its own mapping)."""
        super().close()
        if self._segment is not None:
            self._segment.close()
            self._segment = None

    def harmonize(
        self,
        layer: P.Pixels,
        mask: P.Pixels,
        backdrop: P.Pixels,
        *,
        strength: float = 1.0,
        crop_margin: float | None = M.DEFAULT_CROP_MARGIN,
        dtype: str | None = None,
        output: str = "rgba",
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> HarmonizeResult:
        """Harmonize a layer over its backdrop, the protocol 2.0 way (any 2.x daemon; see
        :class:`.messages.HarmonizeOptions`).

        Args:
            layer: ``(H, W, 4)`` RGBA (or ``(H, W, 3)``) uint8/uint16/float32.
            mask: ``(H, W)``: layer alpha x selection, soft.
            backdrop: ``(H, W, 3)``: what is visible below the layer.
        """
        options = M.HarmonizeOptions(strength, crop_margin, dtype, output)
        frames = M.harmonize_frames(layer, mask, backdrop)
        return self._harmonize(frames, options, on_progress=on_progress, cancel=cancel)

    def harmonize_layer(
        self,
        layer: P.Pixels,
        selection: P.Pixels | None,
        backdrop: P.Pixels,
        *,
        strength: float = 1.0,
        crop_margin: float | None = M.DEFAULT_CROP_MARGIN,
        dtype: str | None = None,
        output: str = "rgba",
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> HarmonizeResult:
        """Harmonize a layer with its selection (protocol 2.1): the daemon multiplies alpha x
        selection itself, and the result keeps the layer's declared channel order.

        Args:
            layer: ``(H, W, 4)`` (or ``(H, W, 3)``), ``order`` ``RGBA`` (default) or ``BGRA``.
            selection: ``(H, W)`` the selection alone, soft; None = all of the layer.
            backdrop: ``(H, W, 3)`` or ``(H, W, 4)`` (alpha ignored), in the layer's order.

        Raises:
            DaemonError: ``unsupported_version`` from a daemon older than 2.1.
        """
        self._require(LAYER_PROTOCOL, "sending the selection")
        options = M.HarmonizeOptions(strength, crop_margin, dtype, output)
        frames = M.layer_frames(layer, selection, backdrop)
        return self._harmonize(frames, options, on_progress=on_progress, cancel=cancel)

    def reapply(
        self,
        job: str,
        *,
        strength: float = 1.0,
        dtype: str | None = None,
        output: str = "rgba",
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> HarmonizeResult:
        """The harmonize request ``job`` (a :attr:`HarmonizeResult.job`) at another strength,
        without sending its pixels again (protocol 2.1).

        Raises:
            DaemonError: ``unknown_job`` when the daemon no longer keeps the job (send the
                whole request again), ``unsupported_version`` from a daemon older than 2.1.
        """
        self._require(LAYER_PROTOCOL, "re-applying a job")
        options = M.HarmonizeOptions(strength, None, dtype, output).to_wire()
        body = {"job": job, "options": {k: options[k] for k in M.REAPPLY_KEYS}}
        size = self._jobs.get(job)
        capacity = None  # unknown result size (another client's job): frames
        if size is not None:
            capacity = size[0] * size[1] * (4 if output == "rgba" else 3)
            capacity *= P.DTYPES[dtype or size[2]]
        kwargs = {"on_progress": on_progress, "cancel": cancel}
        return self._exchange(P.REAPPLY, body, {}, capacity, **kwargs)

    def _require(self, version: tuple[int, int], what: str) -> None:
        """:class:`DaemonError` (``unsupported_version``) unless the daemon speaks ``version``
        or later (the hello reply's ``protocol_version``)."""
        if not self.server_info:
            self.hello()
        theirs = tuple(self.server_info.get("protocol_version", (0, 0)))
        if theirs < version:
            raise DaemonError(
                P.ErrorCode.UNSUPPORTED_VERSION,
                f"the daemon speaks protocol {'.'.join(map(str, theirs))}, but {what} needs "
                f"{'.'.join(map(str, version))}: stop it (`harmonize stop`) so that the next "
                "request starts the installed one, or update it",
            )

    def _harmonize(
        self, frames: dict[str, P.Pixels], options: M.HarmonizeOptions, **kwargs: Any
    ) -> HarmonizeResult:
        layer = frames["layer"]
        channels = 4 if options.output == "rgba" else 3
        capacity = layer.shape[0] * layer.shape[1] * channels
        capacity *= P.DTYPES[options.dtype or layer.dtype]
        body = {"options": options.to_wire()}
        result = self._exchange(P.HARMONIZE, body, frames, capacity, **kwargs)
        if result.job is not None:  # its size, for a reapply through shared memory
            self._jobs[result.job] = (*result.pixels.shape[:2], layer.dtype)
            while len(self._jobs) > 8:
                self._jobs.pop(next(iter(self._jobs)))
        return result

    def _exchange(
        self,
        msg_type: str,
        body: dict[str, Any],
        frames: dict[str, P.Pixels],
        capacity: int | None,
        **kwargs: Any,
    ) -> HarmonizeResult:
        """Send a request whose reply carries a result (up to ``capacity`` bytes; None:
        unknown, frames only) and return the result."""
        if capacity is not None and self._shm_wanted():
            result = self._exchange_shm(msg_type, body, frames, capacity, **kwargs)
            if result is not None:
                return result
        reply = self.request(msg_type, body, frames, **kwargs)
        result = reply.frames.get("result")
        if result is None:
            raise DaemonError(P.ErrorCode.BAD_MESSAGE, f"{reply.type} without a result frame")
        return _result(reply, result, P.FRAMES)

    # -- shared memory (protocol 1.1) --

    def _shm_wanted(self) -> bool:
        """Whether to try shared memory; with ``transport="shm"``, an error if impossible."""
        if self.transport == P.FRAMES:
            return False
        if not self.server_info:
            self.hello()
        if P.SHM not in self.server_info.get("transports", ()):
            reason = "the daemon does not offer shared memory (protocol < 1.1 or disabled)"
        elif not _is_local(self.endpoint):
            reason = f"the daemon at {self.endpoint} is not on this machine"
        elif not shm.available():
            reason = "shared memory needs Linux (memfd_create)"
        else:
            return True
        if self.transport == P.SHM:
            raise DaemonError(P.ErrorCode.SHM_UNAVAILABLE, f"transport shm: {reason}")
        return False

    def _exchange_shm(
        self,
        msg_type: str,
        body: dict[str, Any],
        frames: dict[str, P.Pixels],
        capacity: int,
        **kwargs: Any,
    ) -> HarmonizeResult | None:
        """Send a request through this client's segment (its frames in, the result out; a
        reapply has no frames); None = use frames."""
        offsets, input_bytes = shm.plan({n: pix.nbytes for n, pix in frames.items()})
        try:
            segment = self._segment_for(input_bytes, capacity, any_larger=not frames)
        except shm.ShmError as exc:
            return self._shm_failed(str(exc))
        for name, pix in frames.items():
            segment.write(offsets[name], pix.data)
        try:
            reply = self.request(
                msg_type, {**body, "shm": segment.describe(offsets, frames)}, **kwargs
            )
        except DaemonError as exc:
            if exc.code != P.ErrorCode.SHM_UNAVAILABLE:
                raise
            return self._shm_failed(exc.message)
        desc = reply.body.get("result")
        try:
            if not isinstance(desc, dict) or desc.get("offset") != segment.result_offset:
                raise P.ProtocolError(P.ErrorCode.BAD_MESSAGE, "no result in the segment")
            spec = {k: v for k, v in desc.items() if k != "offset"}
            template = R.check_frame(spec, None, REPLY_LIMITS)
        except P.ProtocolError as exc:
            raise DaemonError(P.ErrorCode.BAD_MESSAGE, f"{reply.type}: {exc.message}") from None
        if template.nbytes > segment.result_capacity:
            raise DaemonError(P.ErrorCode.BAD_MESSAGE, f"{reply.type}: result over capacity")
        view = segment.result(template.nbytes)
        pixels = P.Pixels(view, template.shape, template.dtype, template.order)
        return _result(reply, pixels, P.SHM)

    def _segment_for(
        self, input_bytes: int, result_bytes: int, *, any_larger: bool = False
    ) -> shm.Segment:
        """This client's segment, reused while the request fits (``any_larger``: however much
        larger it is, e.g. a reapply's result in the segment of its job) and no earlier
        result view is still held; otherwise a new one replaces it."""
        old = self._segment
        fits = old is not None and old.fits(input_bytes, result_bytes, shrink=not any_larger)
        if fits and old.reusable():
            return old
        if old is not None:
            old.close()
            self._segment = None
        self._segment = shm.Segment(input_bytes, result_bytes)
        return self._segment

    def _shm_failed(self, reason: str) -> None:
        """Shared memory does not work with this daemon: frames from now on (auto)."""
        if self.transport == P.SHM:
            raise DaemonError(P.ErrorCode.SHM_UNAVAILABLE, f"transport shm: {reason}")
        self.transport = P.FRAMES
        if self._segment is not None:
            self._segment.close()
            self._segment = None


def _result(reply: P.Message, pixels: P.Pixels, transport: str) -> HarmonizeResult:
    x, y = reply.body.get("offset", (0, 0))
    cached, timings = bool(reply.body.get("cached")), reply.body.get("timings", {})
    job = reply.body.get("job")
    job = job if isinstance(job, str) else None
    return HarmonizeResult(pixels, (int(x), int(y)), cached, timings, transport, job)


def _is_local(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint is on this machine (loopback TCP or ipc)."""
    if endpoint.startswith("ipc://"):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    return is_loopback(endpoint[len("tcp://") :].rpartition(":")[0])

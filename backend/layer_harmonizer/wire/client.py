"""Client of the ``harmonize serve`` daemon: standard library + pyzmq + msgpack only.

No numpy and no torch, so the plug-ins carry it (all of :mod:`layer_harmonizer.wire`)::

    from layer_harmonizer.wire.client import ensure_daemon
    from layer_harmonizer.wire.protocol import Pixels

    with ensure_daemon() as client:          # finds a running daemon or starts one
        result = client.harmonize(Pixels(layer_bytes, (h, w, 4), "uint8"),
                                  Pixels(mask_bytes, (h, w), "uint8"),
                                  Pixels(below_bytes, (h, w, 3), "uint8"), strength=0.8)
        x, y = result.offset                 # paste result.pixels (h', w', 4) there

The connection, handshake and retries are :class:`.connection.Connection`'s; this module adds
the harmonize request (frames or shared memory) and finding or starting a daemon.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from . import messages as M
from . import protocol as P
from . import shm
from .connection import REPLY_LIMITS, Connection
from .discovery import DaemonError, endpoint_path, is_loopback, private_runtime_dir

__all__ = [
    "CLIENT_TRANSPORTS",
    "Client",
    "DaemonError",
    "HarmonizeResult",
    "answering_client",
    "ensure_daemon",
]

DEFAULT_IDLE_TIMEOUT = 1800.0
"""Seconds an auto-started daemon waits without requests before exiting."""
CLIENT_TRANSPORTS = ("auto", P.FRAMES, P.SHM)
"""``auto``: shared memory when the daemon offers it and runs on this machine, else frames."""


@dataclass
class HarmonizeResult:
    """A harmonized crop: ``pixels`` ``(h, w, 4|3)`` to paste at ``offset`` ``(x, y)``.

    ``pixels.data`` is a read-only buffer that stays valid for as long as it is referenced
    (over shared memory: a view of the segment, which the client then stops reusing).
    ``transport`` says how the pixels travelled (``"frames"`` or ``"shm"``).
    """

    pixels: P.Pixels
    offset: tuple[int, int]
    cached: bool
    timings: dict[str, float] = field(default_factory=dict)
    transport: str = P.FRAMES


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
        """Harmonize a layer over its backdrop (see :class:`.messages.HarmonizeOptions`).

        Args:
            layer: ``(H, W, 4)`` RGBA (or ``(H, W, 3)``) uint8/uint16/float32.
            mask: ``(H, W)``: layer alpha x selection, soft.
            backdrop: ``(H, W, 3)``: what is visible below the layer.
        """
        options = M.HarmonizeOptions(strength, crop_margin, dtype, output)
        frames = M.harmonize_frames(layer, mask, backdrop)
        body = {"options": options.to_wire()}
        kwargs = {"on_progress": on_progress, "cancel": cancel}
        if self._shm_wanted():
            result = self._harmonize_shm(body, frames, options, **kwargs)
            if result is not None:
                return result
        reply = self.request(P.HARMONIZE, body, frames, **kwargs)
        result = reply.frames.get("result")
        if result is None:
            raise DaemonError(P.ErrorCode.BAD_MESSAGE, "harmonize reply without a result frame")
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

    def _harmonize_shm(
        self,
        body: dict[str, Any],
        frames: dict[str, P.Pixels],
        options: M.HarmonizeOptions,
        **kwargs: Any,
    ) -> HarmonizeResult | None:
        """Send a harmonize request through this client's segment; None = use frames."""
        layer = frames["layer"]
        channels = 4 if options.output == "rgba" else 3
        capacity = layer.shape[0] * layer.shape[1] * channels
        capacity *= P.DTYPES[options.dtype or layer.dtype]
        offsets, input_bytes = shm.plan({n: pix.nbytes for n, pix in frames.items()})
        try:
            segment = self._segment_for(input_bytes, capacity)
        except shm.ShmError as exc:
            return self._shm_failed(str(exc))
        for name, pix in frames.items():
            segment.write(offsets[name], pix.data)
        try:
            reply = self.request(
                P.HARMONIZE, {**body, "shm": segment.describe(offsets, frames)}, **kwargs
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
            template = P.check_frame(spec, None, REPLY_LIMITS)
        except P.ProtocolError as exc:
            raise DaemonError(P.ErrorCode.BAD_MESSAGE, f"harmonize reply: {exc.message}") from None
        if template.nbytes > segment.result_capacity:
            raise DaemonError(P.ErrorCode.BAD_MESSAGE, "harmonize reply: result over capacity")
        pixels = P.Pixels(segment.result(template.nbytes), template.shape, template.dtype)
        return _result(reply, pixels, P.SHM)

    def _segment_for(self, input_bytes: int, result_bytes: int) -> shm.Segment:
        """This client's segment, reused while the request fits and no earlier result view is
        still held; otherwise a new one replaces it."""
        old = self._segment
        if old is not None and old.fits(input_bytes, result_bytes) and old.reusable():
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
    return HarmonizeResult(pixels, (int(x), int(y)), cached, timings, transport)


def _is_local(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint is on this machine (loopback TCP or ipc)."""
    if endpoint.startswith("ipc://"):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    return is_loopback(endpoint[len("tcp://") :].rpartition(":")[0])


def serve_command() -> list[str]:
    """How to start the daemon: ``harmonize serve`` from PATH, else
    ``python -m layer_harmonizer serve``."""
    exe = shutil.which("harmonize")
    return [exe, "serve"] if exe else [sys.executable, "-m", "layer_harmonizer", "serve"]


def answering_client(
    path: Path, *, timeout: float = 30.0, retries: int = 3, ping_timeout: float = 2.0
) -> Client | None:
    """A client of the daemon the endpoint file ``path`` names if one answers a ping (within
    ``ping_timeout`` seconds, no retry), else None: "is a daemon running?" for every caller.

    ``timeout`` and ``retries`` are the returned client's for its later requests.
    """
    try:
        client = Client.from_endpoint_file(path, timeout=timeout, retries=retries)
    except (DaemonError, zmq.ZMQError, OSError):
        return None
    try:
        client.ping(timeout=ping_timeout, retries=0)
    except (DaemonError, zmq.ZMQError, OSError):
        client.close()
        return None
    return client


def ensure_daemon(
    *,
    command: Sequence[str] | None = None,
    args: Sequence[str] = (),
    endpoint_file: Path | None = None,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    start_timeout: float = 120.0,
    timeout: float = 30.0,
    retries: int = 3,
) -> Client:
    """A client of a running daemon, starting ``harmonize serve`` detached if none answers.

    The started daemon gets ``--idle-timeout`` so it exits when nobody uses it; its output
    goes to its log file. ``args`` are passed on (e.g. ``["--weights", path]``).
    """
    path = Path(endpoint_file) if endpoint_file else endpoint_path()
    private_runtime_dir(path.parent, create=True)  # ours, 0700, no symlink: or refuse now
    client = answering_client(path, timeout=timeout, retries=retries)
    if client is not None:
        return client
    cmd = [*(command or serve_command()), "--port", "0", "--idle-timeout", f"{idle_timeout:g}"]
    cmd += ["--quiet", *args]
    with tempfile.TemporaryFile() as errors:  # start-up errors only: --quiet drops stderr later
        proc = subprocess.Popen(cmd, **_detached(), stdout=subprocess.DEVNULL, stderr=errors)
        # reap the child when it exits (no zombie in a long-lived host application)
        threading.Thread(target=proc.wait, name="harmonize-reaper", daemon=True).start()
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            client = answering_client(path, timeout=timeout, retries=retries, ping_timeout=1.0)
            if client is not None:
                return client
            code = proc.poll()
            if code is not None and code != 1:  # 1: another daemon won the race; keep looking
                errors.seek(0)
                tail = errors.read()[-2000:].decode(errors="replace").strip()
                raise DaemonError(
                    P.ErrorCode.NO_DAEMON,
                    f"`{' '.join(cmd)}` exited with status {code}: {tail or 'no output'}",
                )
            time.sleep(0.2)
    raise DaemonError(
        P.ErrorCode.NO_DAEMON, f"the daemon did not answer within {start_timeout:g} s ({cmd})"
    )


def _detached() -> dict[str, Any]:
    if sys.platform == "win32":
        flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP
        return {"creationflags": flags, "close_fds": True}
    return {"start_new_session": True, "close_fds": True}

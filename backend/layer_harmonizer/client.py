"""Client of the ``harmonize serve`` daemon: standard library + pyzmq + msgpack only.

No numpy and no torch, so a plugin can carry this file and ``protocol.py`` side by side::

    from layer_harmonizer.client import ensure_daemon
    from layer_harmonizer.protocol import Pixels

    with ensure_daemon() as client:          # finds a running daemon or starts one
        result = client.harmonize(Pixels(layer_bytes, (h, w, 4), "uint8"),
                                  Pixels(mask_bytes, (h, w), "uint8"),
                                  Pixels(below_bytes, (h, w, 3), "uint8"), strength=0.8)
        x, y = result.offset                 # paste result.pixels (h', w', 4) there

Requests follow the Lazy Pirate pattern: wait ``timeout`` seconds of silence (progress events
count as life), then drop the socket, re-read the endpoint file (the daemon may have restarted
on another port with a new token) and send again, up to ``retries`` times.

Trust (protocol 2.0): the endpoint file is read only from a runtime dir that
:func:`.rundir.private_dir` accepts (this user's, mode 0700, no symlink). On every new
connection the client first sends a ``hello`` without token carrying a random challenge, and
sends the token or pixels only after the reply's ``proof`` shows that the peer holds the token.
A ``tcp://`` endpoint is used only with CURVE encryption and the endpoint file's keys.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

try:  # inside the backend package, or vendored as a package beside protocol.py
    from . import protocol as P
    from . import rundir, shm
except ImportError:  # vendored as top-level modules beside protocol.py (GIMP plug-in dir)
    import protocol as P  # type: ignore[no-redef]
    import rundir  # type: ignore[no-redef]
    import shm  # type: ignore[no-redef]

APP = "harmonize"
ENDPOINT_FILE = "daemon.json"
REPLY_LIMITS = P.Limits(max_pixels=1 << 40)
"""Replies come from the daemon we chose: only their structure is checked, not their size."""
DEFAULT_IDLE_TIMEOUT = 1800.0
"""Seconds an auto-started daemon waits without requests before exiting."""
BUSY_RETRY_S = 2.0
"""How long in all a request is retried, with back-off, while the daemon answers ``busy``."""
CLIENT_TRANSPORTS = ("auto", P.FRAMES, P.SHM)
"""``auto``: shared memory when the daemon offers it and runs on this machine, else frames."""


class DaemonError(Exception):
    """A structured failure: an ``error`` reply from the daemon, or a client-side one
    (``code`` ``unreachable``, ``no_daemon``, ``unsupported_version``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


def runtime_dir() -> Path:
    """Where the daemon's endpoint file lives: :func:`.rundir.default_runtime_dir`, the
    daemon's own rule (not checked here; :func:`read_endpoint_file` checks it)."""
    return rundir.default_runtime_dir()


def default_endpoint_file() -> Path:
    return runtime_dir() / ENDPOINT_FILE


def private_runtime_dir(path: Path, *, create: bool) -> Path:
    """:func:`layer_harmonizer.rundir.private_dir` with its refusal as a :class:`DaemonError`
    (``unsafe_runtime_dir``)."""
    try:
        return rundir.private_dir(path, create=create)
    except rundir.RuntimeDirError as exc:
        raise DaemonError(P.ErrorCode.UNSAFE_RUNTIME_DIR, str(exc)) from None


def read_endpoint_file(path: Path | None = None) -> dict[str, Any]:
    """The daemon's ``{endpoint, pid, protocol_version, server_version, token}`` (and
    ``curve`` keys for a TCP endpoint), read only from a private runtime dir."""
    path = Path(path) if path is not None else default_endpoint_file()
    try:
        private_runtime_dir(path.parent, create=False)
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DaemonError(
            P.ErrorCode.NO_DAEMON, f"no daemon is running (no endpoint file at {path})"
        ) from None
    except (OSError, ValueError) as exc:
        raise DaemonError(
            P.ErrorCode.NO_DAEMON, f"unreadable endpoint file {path}: {exc}"
        ) from None
    if not isinstance(info, dict) or not isinstance(info.get("endpoint"), str):
        raise DaemonError(P.ErrorCode.NO_DAEMON, f"endpoint file {path} has no endpoint")
    if info["endpoint"].startswith("ipc://"):
        # The socket lives beside the endpoint file. A host that sees the runtime dir at
        # another path (a chroot, a sandbox's bind mount) finds it there, not at the
        # daemon's path.
        info["endpoint"] = f"ipc://{path.parent / Path(info['endpoint'][6:]).name}"
    return info


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


class Client:
    """One connection (a DEALER socket) to a daemon. Not thread-safe: one per thread.

    Args:
        endpoint: ``ipc://path`` or ``tcp://host:port``; with ``token`` (and ``curve`` for TCP).
            Or leave them None and give ``endpoint_file`` (default: the runtime dir's) to
            discover and re-discover them.
        timeout: seconds of silence before a request is retried.
        retries: extra attempts after the first.
        transport: how ``harmonize`` sends pixels: ``"auto"`` (default, or
            ``$HARMONIZE_TRANSPORT``), ``"frames"`` or ``"shm"`` (see :data:`CLIENT_TRANSPORTS`).
        curve: for ``tcp://``, the endpoint file's ``curve`` keys (``server_public``,
            ``client_public``, ``client_secret``).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        token: str | None = None,
        *,
        endpoint_file: Path | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        context: zmq.Context | None = None,
        transport: str | None = None,
        curve: dict[str, str] | None = None,
    ) -> None:
        transport = transport or os.environ.get("HARMONIZE_TRANSPORT") or "auto"
        if transport not in CLIENT_TRANSPORTS:
            raise ValueError(f"transport must be one of {CLIENT_TRANSPORTS}; got {transport!r}")
        self.transport = transport
        self._segment: shm.Segment | None = None
        self.endpoint_file = endpoint_file
        self.endpoint = endpoint or ""
        self.token = token or ""
        self.curve = curve
        self._proven = False  # the daemon on this socket proved it holds the token
        self.timeout = timeout
        self.retries = retries
        self.ctx = context or zmq.Context.instance()
        self.server_info: dict[str, Any] = {}
        self._socket: zmq.Socket | None = None
        if endpoint is None:
            self._discover()

    @classmethod
    def from_endpoint_file(cls, path: Path | None = None, **kwargs: Any) -> Client:
        return cls(endpoint_file=Path(path) if path else default_endpoint_file(), **kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket and remove the shared-memory segment (a result view still held
        keeps its own mapping)."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        self._proven = False
        if self._segment is not None:
            self._segment.close()
            self._segment = None

    def _discover(self) -> bool:
        """Re-read the endpoint file; True if it names another endpoint or token."""
        if self.endpoint_file is None and self.endpoint:
            return False
        info = read_endpoint_file(self.endpoint_file)
        changed = (info["endpoint"], info.get("token", "")) != (self.endpoint, self.token)
        self.endpoint, self.token = info["endpoint"], str(info.get("token", ""))
        curve = info.get("curve")
        self.curve = curve if isinstance(curve, dict) else None
        return changed

    def _connect(self) -> zmq.Socket:
        if self._socket is None:
            sock = self.ctx.socket(zmq.DEALER)
            try:
                sock.setsockopt(zmq.LINGER, 0)
                if not self.endpoint.startswith("ipc://"):
                    secure_socket(sock, self.endpoint, self.curve)
                sock.connect(self.endpoint)
            except BaseException:
                sock.close(linger=0)
                raise
            self._socket = sock
            self._proven = False
        return self._socket

    def _reset(self) -> None:
        """Lazy Pirate: throw the socket away; pick up a restarted daemon's new endpoint."""
        self.close()
        if self.endpoint_file is not None:
            with contextlib.suppress(DaemonError):  # gone for now; a later attempt may find it
                self._discover()

    # -- requests --

    def request(
        self,
        msg_type: str,
        body: dict[str, Any] | None = None,
        frames: dict[str, P.Pixels] | None = None,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        cancel: threading.Event | None = None,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> P.Message:
        """Send one request and return its reply (``<action>_reply``).

        Raises :class:`DaemonError` for an ``error`` reply or when no reply comes.
        ``cancel`` (set from another thread) sends a ``cancel_request`` for this job.
        """
        timeout = self.timeout if timeout is None else timeout
        retries = self.retries if retries is None else retries
        auth_retry = True
        for _attempt in range(retries + 1):
            try:
                reply = self._attempt_while_busy(
                    msg_type, body, frames, timeout, on_progress, cancel
                )
            except DaemonError as exc:
                # a restarted daemon has a new token: re-read the endpoint file once
                stale = exc.code in (P.ErrorCode.UNAUTHORIZED, P.ErrorCode.NOT_AUTHENTIC)
                if stale and auth_retry and self.endpoint_file:
                    auth_retry = False
                    self._reset()
                    continue
                raise
            if reply is not None:
                return reply
            self._reset()
        raise DaemonError(
            P.ErrorCode.UNREACHABLE,
            f"no answer from the harmonize daemon at {self.endpoint} after {retries + 1} "
            f"tries of {timeout:g} s; is `harmonize serve` running? (see its log file)",
        )

    def _attempt_while_busy(
        self,
        msg_type: str,
        body: dict[str, Any] | None,
        frames: dict[str, P.Pixels] | None,
        timeout: float,
        on_progress: Callable[[dict[str, Any]], None] | None,
        cancel: threading.Event | None,
    ) -> P.Message | None:
        """:meth:`_attempt`, sent again after a pause while the daemon answers ``busy`` (its
        queue is full): pauses of 0.05 s doubling, :data:`BUSY_RETRY_S` in all, then the
        ``busy`` error. A ``cancel`` set meanwhile ends it with ``cancelled``."""
        pauses = _busy_pauses()
        while True:
            try:
                return self._attempt(msg_type, body, frames, timeout, on_progress, cancel)
            except DaemonError as exc:
                pause = next(pauses, None) if exc.code == P.ErrorCode.BUSY else None
                if pause is None:
                    raise
            if cancel is not None and cancel.is_set():
                raise DaemonError(P.ErrorCode.CANCELLED, "cancelled while the daemon was busy")
            self._pause(pause)

    @staticmethod
    def _pause(seconds: float) -> None:
        time.sleep(seconds)

    def _attempt(
        self,
        msg_type: str,
        body: dict[str, Any] | None,
        frames: dict[str, P.Pixels] | None,
        timeout: float,
        on_progress: Callable[[dict[str, Any]], None] | None,
        cancel: threading.Event | None,
    ) -> P.Message | None:
        """One try: on a new connection the hello handshake first, then the request (a hello
        request is the handshake itself). None when no answer came in time."""
        sock = self._connect()
        if not self._proven or msg_type == P.HELLO:
            hello = self._handshake(sock, body if msg_type == P.HELLO else None, timeout)
            if hello is None or msg_type == P.HELLO:
                return hello
        msg_id = P.new_id()
        sock.send_multipart(
            P.pack(msg_type, body, frames, token=self.token, msg_id=msg_id), copy=False
        )
        return self._wait(sock, msg_id, timeout, on_progress, cancel)

    def _handshake(
        self, sock: zmq.Socket, body: dict[str, Any] | None, timeout: float
    ) -> P.Message | None:
        """A ``hello`` without token and with a fresh challenge; the reply must carry the
        version we speak and ``proof`` = :func:`layer_harmonizer.protocol.hello_proof` (token,
        challenge), or :class:`DaemonError` (``unsupported_version``, ``not_authentic``)."""
        challenge = secrets.token_hex(32)
        msg_id = P.new_id()
        body = {"client": f"harmonize-client/{_version()}", **(body or {}), "challenge": challenge}
        sock.send_multipart(P.pack(P.HELLO, body, msg_id=msg_id))
        reply = self._wait(sock, msg_id, timeout, None, None)
        if reply is None:
            return None
        try:
            P.check_version(tuple(reply.body.get("protocol_version", (0, 0))), local="client")
        except P.ProtocolError as exc:
            raise DaemonError(exc.code, exc.message) from None
        proof = reply.body.get("proof")
        expected = P.hello_proof(self.token, challenge).encode()
        if not isinstance(proof, str) or not hmac.compare_digest(proof.encode(), expected):
            raise DaemonError(
                P.ErrorCode.NOT_AUTHENTIC,
                f"the daemon at {self.endpoint} did not prove that it holds the endpoint "
                "file's token (a replaced daemon, or an impostor): nothing was sent to it",
            )
        self.server_info = reply.body
        self._proven = True
        return reply

    def _wait(
        self,
        sock: zmq.Socket,
        msg_id: str,
        timeout: float,
        on_progress: Callable[[dict[str, Any]], None] | None,
        cancel: threading.Event | None,
    ) -> P.Message | None:
        deadline = time.monotonic() + timeout
        cancel_sent = False
        while (remaining := deadline - time.monotonic()) > 0:
            if cancel is not None and cancel.is_set() and not cancel_sent:
                cancel_sent = True
                sock.send_multipart(P.pack(P.CANCEL, {"id": msg_id}, token=self.token))
            if not sock.poll(int(min(remaining, 0.1) * 1000) + 1):
                continue
            try:
                msg = P.unpack(sock.recv_multipart(copy=False), REPLY_LIMITS, local="client")
            except P.ProtocolError as exc:
                raise DaemonError(exc.code, exc.message) from None
            if msg.parent != msg_id:
                continue  # a late reply to an earlier attempt, or our cancel's reply
            if msg.type == P.PROGRESS:
                deadline = time.monotonic() + timeout
                if on_progress is not None:
                    on_progress(msg.body)
                continue
            if msg.type == P.ERROR:
                raise DaemonError(str(msg.body.get("code")), str(msg.body.get("message")))
            return msg
        return None

    def hello(self) -> dict[str, Any]:
        """Handshake (a new challenge, checked): the daemon's versions, device, variant,
        weights id and free memory."""
        return self.request(P.HELLO).body

    def ping(self, *, timeout: float | None = None, retries: int | None = None) -> dict[str, Any]:
        return self.request(P.PING, timeout=timeout, retries=retries).body

    def harmonize(
        self,
        layer: P.Pixels,
        mask: P.Pixels,
        backdrop: P.Pixels,
        *,
        strength: float = 1.0,
        crop_margin: float | None = P.DEFAULT_CROP_MARGIN,
        dtype: str | None = None,
        output: str = "rgba",
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> HarmonizeResult:
        """Harmonize a layer over its backdrop (see :class:`.protocol.HarmonizeOptions`).

        Args:
            layer: ``(H, W, 4)`` RGBA (or ``(H, W, 3)``) uint8/uint16/float32.
            mask: ``(H, W)``: layer alpha x selection, soft.
            backdrop: ``(H, W, 3)``: what is visible below the layer.
        """
        options = P.HarmonizeOptions(strength, crop_margin, dtype, output)
        frames = P.harmonize_frames(layer, mask, backdrop)
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
        options: P.HarmonizeOptions,
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

    def cancel(self, job_id: str) -> bool:
        return bool(self.request(P.CANCEL, {"id": job_id}).body.get("cancelled"))

    def shutdown(self) -> None:
        self.request(P.SHUTDOWN, retries=0)


def _busy_pauses(total: float = BUSY_RETRY_S, first: float = 0.05) -> Iterator[float]:
    """Back-off pauses between tries while the daemon is busy: doubling, ``total`` in all."""
    pause, left = first, total
    while left > 1e-9:
        step = min(pause, left)
        yield step
        left -= step
        pause *= 2


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
    host = endpoint[len("tcp://") :].rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secure_socket(sock: zmq.Socket, endpoint: str, curve: dict[str, str] | None) -> None:
    """Make ``sock`` a CURVE client of a ``tcp://`` daemon with the endpoint file's keys (Z85:
    ``server_public``, ``client_public``, ``client_secret``); :class:`DaemonError`
    (``not_authentic``) when that is impossible: TCP is never used in the clear."""
    if not endpoint.startswith("tcp://"):
        raise DaemonError(
            P.ErrorCode.NOT_AUTHENTIC, f"unsupported endpoint {endpoint}: ipc:// or tcp:// only"
        )
    names = ("server_public", "client_public", "client_secret")
    if not isinstance(curve, dict) or not all(isinstance(curve.get(n), str) for n in names):
        raise DaemonError(
            P.ErrorCode.NOT_AUTHENTIC,
            f"{endpoint} is TCP but no CURVE keys came with it (the endpoint file's 'curve'); "
            "a protocol 1 daemon? update it",
        )
    if not zmq.has("curve"):
        raise DaemonError(
            P.ErrorCode.NOT_AUTHENTIC,
            f"the daemon at {endpoint} needs CURVE encryption, which this pyzmq/libzmq lacks",
        )
    try:
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve["server_public"].encode("ascii"))
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve["client_public"].encode("ascii"))
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve["client_secret"].encode("ascii"))
    except (zmq.ZMQError, UnicodeError) as exc:
        raise DaemonError(
            P.ErrorCode.NOT_AUTHENTIC, f"bad CURVE keys for {endpoint}: {exc}"
        ) from None


def _version() -> str:
    try:
        from ._version import __version__
    except ImportError:
        return "vendored"
    return __version__


def serve_command() -> list[str]:
    """How to start the daemon: ``harmonize serve`` from PATH, else
    ``python -m layer_harmonizer serve``."""
    exe = shutil.which("harmonize")
    return [exe, "serve"] if exe else [sys.executable, "-m", "layer_harmonizer", "serve"]


def _answering_client(
    path: Path, timeout: float, retries: int, *, ping_timeout: float
) -> Client | None:
    """A client for the daemon named in ``path`` if it answers a ping, else None."""
    try:
        client = Client.from_endpoint_file(path, timeout=timeout, retries=retries)
        client.ping(timeout=ping_timeout, retries=0)
    except DaemonError:
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
    path = Path(endpoint_file) if endpoint_file else default_endpoint_file()
    private_runtime_dir(path.parent, create=True)  # ours, 0700, no symlink: or refuse now
    client = _answering_client(path, timeout, retries, ping_timeout=2.0)
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
            client = _answering_client(path, timeout, retries, ping_timeout=1.0)
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

"""One connection to the ``harmonize serve`` daemon: the socket, the hello handshake and the
request loop every client request goes through (:class:`Connection`; :class:`.client.Client`
adds the harmonize request on top).

Requests follow the Lazy Pirate pattern: wait ``timeout`` seconds of silence (progress events
count as life), then drop the socket, re-read the endpoint file (the daemon may have restarted
on another port with a new token) and send again, up to ``retries`` times.

Trust (protocol 2.0): the endpoint file is read only from a runtime dir that
:func:`.discovery.private_dir` accepts (this user's, mode 0700, no symlink). On every new
connection the client first sends a ``hello`` without token carrying a random challenge, and
sends the token or pixels only after the reply's ``proof`` shows that the peer holds the token.
A ``tcp://`` endpoint is used only with CURVE encryption and the endpoint file's keys.

Standard library + pyzmq + msgpack only, like all of :mod:`layer_harmonizer.wire`.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq

from . import messages as M
from . import protocol as P
from . import receive as R
from .discovery import DaemonError, endpoint_path, read_endpoint_file

REPLY_LIMITS = P.Limits(max_pixels=1 << 40)
"""Replies come from the daemon we chose: only their structure is checked, not their size."""
BUSY_RETRY_S = 2.0
"""How long in all a request is retried, with back-off, while the daemon answers ``busy``."""


def _send(sock: zmq.Socket, parts: list[Any], timeout: float) -> bool:
    """Send a multipart message, waiting at most ``timeout`` s for the socket to take it; False
    if it did not. A DEALER whose only peer failed its handshake (e.g. something that is not
    our daemon on a stale TCP port) has no peer to queue for, and would block forever."""
    sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout * 1000)))
    try:
        sock.send_multipart(parts, copy=False)
    except zmq.Again:
        return False
    return True


class Connection:
    """One connection (a DEALER socket) to a daemon. Not thread-safe: one per thread.

    Args:
        endpoint: ``ipc://path`` or ``tcp://host:port``; with ``token`` (and ``curve`` for TCP).
            Or leave them None and give ``endpoint_file`` (default: the runtime dir's) to
            discover and re-discover them.
        timeout: seconds of silence before a request is retried.
        retries: extra attempts after the first.
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
        curve: dict[str, str] | None = None,
    ) -> None:
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
    def from_endpoint_file(cls, path: Path | None = None, **kwargs: Any) -> Any:
        """A connection (of this class) to the daemon the endpoint file ``path`` names
        (default: the runtime dir's)."""
        return cls(endpoint_file=Path(path) if path else endpoint_path(), **kwargs)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        self._proven = False

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
        parts = P.pack(msg_type, body, frames, token=self.token, msg_id=msg_id)
        if not _send(sock, parts, timeout):
            return None
        return self._wait(sock, msg_id, timeout, on_progress, cancel)

    def _handshake(
        self, sock: zmq.Socket, body: dict[str, Any] | None, timeout: float
    ) -> P.Message | None:
        """A ``hello`` without token and with a fresh challenge; the reply must carry the
        version we speak and ``proof`` = :func:`.messages.hello_proof` (token,
        challenge), or :class:`DaemonError` (``unsupported_version``, ``not_authentic``)."""
        challenge = secrets.token_hex(32)
        msg_id = P.new_id()
        body = {"client": f"harmonize-client/{_version()}", **(body or {}), "challenge": challenge}
        if not _send(sock, P.pack(P.HELLO, body, msg_id=msg_id), timeout):
            return None
        reply = self._wait(sock, msg_id, timeout, None, None)
        if reply is None:
            return None
        try:
            R.check_version(tuple(reply.body.get("protocol_version", (0, 0))), local="client")
        except P.ProtocolError as exc:
            raise DaemonError(exc.code, exc.message) from None
        proof = reply.body.get("proof")
        expected = M.hello_proof(self.token, challenge).encode()
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
                msg = R.unpack(sock.recv_multipart(copy=False), REPLY_LIMITS, local="client")
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
    from .._version import __version__  # vendored beside wire/ too

    return __version__

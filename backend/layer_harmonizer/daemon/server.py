"""The daemon's request loop: a ZeroMQ ROUTER in front of one warm :class:`Engine`.

Threads: the main thread owns every socket (ROUTER for clients, an inproc PULL for outgoing
messages) and answers ``hello``/``ping``/``cancel``/``shutdown`` at once; one worker thread
runs ``harmonize`` jobs from a bounded queue and hands its progress events and replies to the
main thread through an inproc PUSH socket (ZeroMQ sockets are not shared between threads).
Every malformed, oversized or unauthorised message gets a structured ``error`` reply, and the
loop goes on serving everyone else. The ROUTER listens on an ``ipc://`` socket in the private
runtime dir (the default) or on TCP with CURVE encryption, where ZAP drops every peer without
the client key in the handshake, before any of its messages is read (docs/protocol.md, "Trust
model"). The wire format is in :mod:`layer_harmonizer.wire.protocol`; where it listens is
:mod:`.listen`, the worker :mod:`.jobs`, the process around it (endpoint file, signals, logs)
:mod:`.process`.
"""

from __future__ import annotations

import logging
import secrets
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from layer_harmonizer.daemon.engine import Engine
from layer_harmonizer.daemon.jobs import Job, Worker
from layer_harmonizer.daemon.listen import (
    HANDSHAKE_MS,
    IPC_PATH_MAX,
    bind_ipc,
    bind_tcp,
    check_host,
)
from layer_harmonizer.wire import messages as M
from layer_harmonizer.wire import protocol as P
from layer_harmonizer.wire import receive as R
from layer_harmonizer.wire import shm, shm_mapping
from layer_harmonizer.wire.messages import check_harmonize_frames

log = logging.getLogger("harmonize.daemon")

POLL_MS = 200
PRUNE_S = 1.0
"""How often the daemon unmaps shared-memory segments that their clients closed."""
HEARTBEAT_S = 2.0
"""While a job is queued or running, its client gets an ``alive`` event this often, so a long
stage never looks like a dead daemon to a client's timeout."""


@dataclass
class ServerConfig:
    """Settings of one daemon (defaults are the ``harmonize serve`` defaults)."""

    host: str = "127.0.0.1"
    port: int = 0
    allow_remote: bool = False
    idle_timeout: float = 0.0  # seconds without requests before exiting; 0 = never
    lut_backend: str = "auto"
    limits: P.Limits = field(default_factory=P.Limits)
    max_queue: int = 16  # jobs queued or running
    max_queued_bytes: int = 4 << 30  # their pixel frames together
    cache_size: int = 4
    shm: bool = field(default_factory=shm.available)  # offer the shared-memory transport
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    ipc_path: Path | None = None  # listen on this ipc:// socket instead of TCP (when possible)


class Server:
    """ROUTER loop + worker thread. Use :meth:`bind`, then :meth:`serve_forever`; :meth:`stop`
    (thread-safe, signal-safe) ends it gracefully."""

    def __init__(
        self, engine: Engine, config: ServerConfig, context: zmq.Context | None = None
    ) -> None:
        check_host(config.host, config.allow_remote)
        self.engine = engine
        self.config = config
        self.limits = config.limits
        self._own_context = context is None  # its own, for its own ZAP handler
        self.ctx = context or zmq.Context()
        self.router: zmq.Socket = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        self.router.setsockopt(zmq.MAXMSGSIZE, self.limits.max_frame_bytes)
        self.router.setsockopt(zmq.RCVHWM, 64)
        self.router.setsockopt(zmq.SNDHWM, 256)
        inbox = f"inproc://harmonize-out-{id(self)}"
        self.outbox: zmq.Socket = self.ctx.socket(zmq.PULL)
        self.outbox.bind(inbox)
        self._worker_out: zmq.Socket = self.ctx.socket(zmq.PUSH)
        self._worker_out.connect(inbox)
        self.jobs: dict[str, Job] = {}
        self.endpoint = ""
        self.curve: dict[str, str] | None = None  # the keys a TCP client needs (Z85)
        self._auth: Any = None  # the ZAP handler (zmq.auth.thread.ThreadAuthenticator)
        self.stats = {"received": 0, "errors": 0, "jobs": 0}
        self._stopping = False  # a plain flag: set from signal handlers
        self._last_activity = self._last_heartbeat = time.monotonic()
        self._last_prune = -1e9
        self.segments = shm_mapping.Mappings()  # main thread only
        self.worker = Worker(engine, self.jobs, self._worker_out)

    # -- setup --

    def bind(self) -> str:
        """Bind the ROUTER: ``ipc://`` at ``config.ipc_path`` when given and possible, else TCP
        with CURVE (port 0 = any free one); returns the endpoint."""
        path = self.config.ipc_path
        if path is not None and zmq.has("ipc") and len(str(path)) <= IPC_PATH_MAX:
            self.endpoint = bind_ipc(self.router, path)
            return self.endpoint
        if path is not None:
            log.info("cannot listen on ipc://%s here: TCP with CURVE instead", path)
        tcp = bind_tcp(self.router, self.ctx, self.config.host, self.config.port)
        self.endpoint, self.curve, self._auth = tcp.endpoint, tcp.curve, tcp.auth
        return self.endpoint

    # -- main loop --

    def serve_forever(self) -> None:
        """Run until :meth:`stop`, a ``shutdown_request`` or the idle timeout."""
        if not self.endpoint:
            self.bind()
        self.worker.start()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.outbox, zmq.POLLIN)
        log.info("serving on %s", self.endpoint)
        try:
            while not self._stopping:
                events = dict(poller.poll(POLL_MS))
                if self.outbox in events:
                    self._forward_outgoing()
                if self.router in events:
                    self._receive_burst()
                self._check_idle()
                self._heartbeat()
                self._prune_segments()
        finally:
            self._shutdown()

    def _receive_burst(self) -> None:
        """Handle up to 64 waiting messages, then return to service the outbox. Nothing of the
        last message stays referenced once this returns (its frames can be freed at once)."""
        for _ in range(64):
            try:
                parts = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(parts)
            del parts

    def stop(self) -> None:
        self._stopping = True

    def _check_idle(self) -> None:
        timeout = self.config.idle_timeout
        if self.jobs:
            self._last_activity = time.monotonic()
        elif timeout > 0 and time.monotonic() - self._last_activity > timeout:
            log.info("no requests for %.0f s: exiting (idle timeout)", timeout)
            self.stop()

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat < HEARTBEAT_S:
            return
        self._last_heartbeat = now
        for job in list(self.jobs.values()):
            body = {"stage": "alive", "state": job.state}
            self._reply(job.route, P.PROGRESS, body, job.msg.id)

    def _forward_outgoing(self) -> None:
        while True:
            try:
                parts = self.outbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            count = int(parts[0].bytes)  # route frames count, then route, then the message
            self._send_raw(parts[1 : 1 + count], parts[1 + count :])

    def _send_raw(self, route: list[Any], message: list[Any]) -> None:
        try:
            self.router.send_multipart([*route, *message], zmq.NOBLOCK, copy=False)
        except zmq.Again:  # peer not reading: drop rather than block everyone
            log.warning("dropped a reply: the client's queue is full")
        except zmq.ZMQError as exc:
            log.warning("could not send a reply: %s", exc)

    def _reply(self, route: list[Any], msg_type: str, body: dict, parent: str | None, **kw) -> None:
        parts = P.pack(msg_type, body, kw.get("frames"), parent=parent)  # replies carry no token
        self._send_raw(route, parts)

    def _error(self, route: list[Any], code: str, message: str, parent: str | None) -> None:
        self.stats["errors"] += 1
        self._reply(route, P.ERROR, P.error_body(code, message), parent)

    @staticmethod
    def _split_route(parts: list[Any]) -> tuple[list[Any], list[Any]]:
        """ROUTER parts -> (identity [+ empty delimiter of a REQ peer], message parts)."""
        if len(parts) > 1 and len(parts[1]) == 0:
            return parts[:2], parts[2:]
        return parts[:1], parts[1:]

    def _handle(self, parts: list[Any]) -> None:
        self.stats["received"] += 1
        route, message = self._split_route(parts)
        try:
            msg = R.unpack(
                message,
                self.limits,
                local="daemon",
                token=self.config.token,
                open_types=P.OPEN_TYPES,
            )
            self._last_activity = time.monotonic()
            self._dispatch(route, msg)
        except P.ProtocolError as exc:
            log.debug("refused a message: %s %s", exc.code, exc.message)
            self._error(route, exc.code, exc.message, exc.msg_id)
        except Exception as exc:  # a bug: report it, log it, keep serving
            log.error("error handling a message:\n%s", traceback.format_exc())
            text = f"{type(exc).__name__}: {exc}"
            self._error(route, P.ErrorCode.INTERNAL, text, self._request_id(message))

    def _request_id(self, message: list[Any]) -> str | None:
        """The id of a message whose handling failed unexpectedly, when its envelope can be
        read, so that the client gets its answer at once instead of waiting out a timeout."""
        try:
            return R.decode_envelope(message[0], self.limits)["id"]
        except P.ProtocolError as exc:
            return exc.msg_id
        except Exception:
            return None

    def _dispatch(self, route: list[Any], msg: P.Message) -> None:
        kind = msg.type
        if kind in (P.HELLO, P.PING):
            if msg.frames:
                raise P.ProtocolError(P.ErrorCode.BAD_FRAMES, f"{kind} takes no frames", msg.id)
            body = self.info()
            if kind == P.HELLO and "challenge" in msg.body:  # 2.0: prove we hold the token
                challenge = M.check_challenge(msg.body["challenge"], msg.id)
                body["proof"] = M.hello_proof(self.config.token, challenge)
            self._reply(route, P.reply_type(kind), body, msg.id)
        elif kind in (P.HARMONIZE, P.REAPPLY):
            self._enqueue(route, msg)
        elif kind == P.CANCEL:
            self._cancel(route, msg)
        elif kind == P.SHUTDOWN:
            log.info("shutdown requested by a client")
            self._reply(route, P.reply_type(kind), {"stopping": True}, msg.id)
            self.stop()
        else:
            raise P.ProtocolError(
                P.ErrorCode.UNKNOWN_TYPE,
                f"unknown message type {kind[:64]!r}; known: {', '.join(P.REQUEST_TYPES)}",
                msg.id,
            )

    def info(self) -> dict[str, Any]:
        return {
            **self.engine.info(),
            "transports": [P.FRAMES, P.SHM] if self.config.shm else [P.FRAMES],
            "queued": self.worker.queue.qsize(),
            "limits": {
                "max_pixels": self.limits.max_pixels,
                "max_frame_bytes": self.limits.max_frame_bytes,
            },
        }

    def _shm_request(self, msg: P.Message) -> shm_mapping.Request:
        """Check a request's ``"shm"`` description (nothing is opened yet); the message's
        frames become templates (``data=None``) until :meth:`_map_shm`."""
        if not self.config.shm:
            raise P.ProtocolError(
                P.ErrorCode.SHM_UNAVAILABLE, "this daemon does not offer shared memory", msg.id
            )
        if msg.frames:
            raise P.ProtocolError(
                P.ErrorCode.BAD_FRAMES, "send pixels as frames or in shm, not both", msg.id
            )
        request = shm_mapping.parse_request(msg.body["shm"], self.limits, msg.id)
        msg.frames = {name: pix for name, (_offset, pix) in request.frames.items()}
        return request

    def _map_shm(self, msg: P.Message, request: shm_mapping.Request) -> Any:
        """Open, check and map the client's segment; the message's frames become read-only
        views of it (zero copy). Returns the mapping."""
        segment = self.segments.open(request, msg.id)
        with memoryview(segment) as whole, whole.toreadonly() as view:
            msg.frames = {
                name: P.Pixels(view[offset : offset + pix.nbytes], pix.shape, pix.dtype, pix.order)
                for name, (offset, pix) in request.frames.items()
            }
        return segment

    def _prune_segments(self) -> None:
        """Unmap segments whose clients closed them or died (at most every second)."""
        now = time.monotonic()
        if self.segments and now - self._last_prune > PRUNE_S:
            self._last_prune = now
            self.segments.prune()

    def _enqueue(self, route: list[Any], msg: P.Message) -> None:
        request = self._shm_request(msg) if "shm" in msg.body else None
        options = self._job_options(msg)
        if self._stopping:
            raise P.ProtocolError(P.ErrorCode.SHUTTING_DOWN, "the daemon is stopping", msg.id)
        if msg.id in self.jobs:
            raise P.ProtocolError(P.ErrorCode.BAD_MESSAGE, "a job with this id exists", msg.id)
        if len(self.jobs) >= self.config.max_queue:
            raise P.ProtocolError(
                P.ErrorCode.BUSY,
                f"{len(self.jobs)} jobs are queued (limit {self.config.max_queue}); retry later",
                msg.id,
            )
        size = sum(pix.nbytes for pix in msg.frames.values())
        queued = sum(job.nbytes for job in list(self.jobs.values()))
        if self.jobs and queued + size > self.config.max_queued_bytes:
            raise P.ProtocolError(
                P.ErrorCode.BUSY,
                f"queued jobs hold {queued >> 20} MiB of pixels (limit "
                f"{self.config.max_queued_bytes >> 20} MiB); retry when they are done",
                msg.id,
            )
        segment, start = None, time.perf_counter()
        if request is not None:  # a refused request's views die with it; the mapping stays
            segment = self._map_shm(msg, request)
        job = Job(route, msg, options, size, shm=request, segment=segment)
        job.shm_map = time.perf_counter() - start
        self.jobs[msg.id] = job
        self.stats["jobs"] += 1
        self._reply(route, P.PROGRESS, {"stage": "received", "queued": len(self.jobs)}, msg.id)
        self.worker.put(job)

    @staticmethod
    def _job_options(msg: P.Message) -> M.HarmonizeOptions:
        """The frames and options of a harmonize request, or the job and options of a reapply
        request (2.1: no pixels; its options cannot change the crop)."""
        if msg.type == P.HARMONIZE:
            check_harmonize_frames(msg)
            return M.HarmonizeOptions.from_wire(msg.body.get("options"), msg.id)
        if msg.frames:
            raise P.ProtocolError(P.ErrorCode.BAD_FRAMES, "reapply takes no pixels", msg.id)
        M.check_job_id(msg.body.get("job"), msg.id)
        return M.HarmonizeOptions.from_wire(msg.body.get("options"), msg.id, M.REAPPLY_KEYS)

    def _cancel(self, route: list[Any], msg: P.Message) -> None:
        target = msg.body.get("id")
        job = self.jobs.get(target) if isinstance(target, str) else None
        if job is None:
            raise P.ProtocolError(
                P.ErrorCode.NOT_FOUND, f"no queued or running job {P.echo(target)}", msg.id
            )
        with job.lock:
            job.cancel.set()
            was_queued, done = job.state == "queued", job.state == "done"
            if was_queued:
                job.state = "cancelled"
        if was_queued:  # the worker will skip it; answer the job now
            self.jobs.pop(job.msg.id, None)
            self._error(job.route, P.ErrorCode.CANCELLED, "cancelled before it started", job.msg.id)
        self._reply(route, P.reply_type(P.CANCEL), {"id": target, "cancelled": not done}, msg.id)

    # -- shutdown --

    def _shutdown(self) -> None:
        log.info("stopping: cancelling %d job(s)", len(self.jobs))
        for job in list(self.jobs.values()):
            job.cancel.set()
            with job.lock:
                if job.state == "queued":
                    job.state = "cancelled"
                    self._error(
                        job.route, P.ErrorCode.SHUTTING_DOWN, "the daemon stopped", job.msg.id
                    )
        self.worker.stop()
        self._forward_outgoing()  # the running job's last reply ("cancelled") goes out
        self.segments.close()
        for sock in (self._worker_out, self.outbox, self.router):
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        if self._own_context:
            self.ctx.term()
        log.info("stopped (%s)", ", ".join(f"{k} {v}" for k, v in self.stats.items()))

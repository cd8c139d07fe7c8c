"""The ``harmonize serve`` daemon: a ZeroMQ ROUTER that keeps one model warm.

Threads: the main thread owns every socket (ROUTER for clients, an inproc PULL for outgoing
messages) and answers ``hello``/``ping``/``cancel``/``shutdown`` at once; one worker thread
runs ``harmonize`` jobs from a bounded queue and hands its progress events and replies to the
main thread through an inproc PUSH socket (ZeroMQ sockets are not shared between threads).
Every malformed, oversized or unauthorised message gets a structured ``error`` reply, and the
loop goes on serving everyone else. The wire format is in :mod:`backend.protocol`.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import queue
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from backend import protocol as P
from backend._version import __version__
from backend.compose import (
    check_same_size,
    composite,
    convert,
    crop_box,
    layer_rgb,
    selection_weight,
    with_alpha,
)
from backend.errors import HarmonizeError, InputError
from backend.fileutil import atomic_open
from backend.images import check_image, check_mask

log = logging.getLogger("harmonize.daemon")

ENDPOINT_FILE = "daemon.json"
LOCK_FILE = "daemon.lock"
POLL_MS = 200
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
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless ``allow_remote``."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise HarmonizeError(
            f"--host {host} would expose the daemon beyond this machine; add --allow-remote "
            "if that is intended (anyone who can reach the port and read the token can use it)"
        )


class Cancelled(Exception):
    """Raised in the worker at a checkpoint when its job was cancelled."""


@dataclass
class Job:
    """One ``harmonize_request`` on its way through the queue."""

    route: list[Any]  # ROUTER identity frames (+ empty delimiter for REQ peers)
    msg: P.Message
    options: P.HarmonizeOptions
    nbytes: int = 0  # pixel bytes held by the job's frames
    state: str = "queued"  # queued -> running -> done | cancelled
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancel: threading.Event = field(default_factory=threading.Event)


# ---- the model side ---------------------------------------------------------------------------


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
        self.run(frames, P.HarmonizeOptions(), lambda *a, **k: None)
        self.cache.clear()
        return time.perf_counter() - start

    def _maps(self, comp: np.ndarray, mask: np.ndarray) -> tuple[Any, bool]:
        from backend.pipeline import low_res_input, predict

        x = low_res_input(comp, mask, self.model.config.input_size)
        key = hashlib.sha256(f"{self.weights_id}:{self.variant}:".encode() + x.numpy().tobytes())
        digest = key.hexdigest()
        if digest in self.cache:
            self.cache.move_to_end(digest)
            return self.cache[digest], True
        maps = predict(comp, mask, model=self.model)
        self.cache[digest] = maps
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return maps, False

    def run(
        self, frames: dict[str, np.ndarray], options: P.HarmonizeOptions, checkpoint: Callable
    ) -> tuple[np.ndarray, tuple[int, int], dict[str, Any]]:
        """Harmonize one layer.

        Args:
            frames: ``layer (H, W, 4|3)``, ``mask (H, W)``, ``backdrop (H, W, 3)``; each
                uint8/uint16/float32 (float in [0, 1]).
            options: validated request options.
            checkpoint: called as ``checkpoint(stage, **info)`` between stages; raises
                :class:`Cancelled` to stop.

        Returns:
            ``(result crop (h, w, 4|3) in the requested dtype, (x, y) offset, reply info)``.
        """
        from backend.pipeline import apply_prediction

        times: dict[str, float] = {}
        start = time.perf_counter()
        layer, backdrop, raw_mask = frames["layer"], frames["backdrop"], frames["mask"]
        box = crop_box(raw_mask, options.crop_margin, P.MIN_CROP_MARGIN_PX)
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
            if a.dtype.kind == "f" or a.min() < _opaque(str(a.dtype)):
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
        if options.output == "rgba":
            out = with_alpha(out, crop)
        times["encode"] = time.perf_counter() - tick
        checkpoint("applied")
        return out, (x0, y0), {"cached": cached, "timings": times}


class EmptyMask(Exception):
    """The mask has no pixel above 0."""


def _opaque(dtype: str) -> float:
    return {"uint8": 255, "uint16": 65535}.get(dtype, 1.0)


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


def _array(pix: P.Pixels) -> np.ndarray:
    """A read-only numpy view of received pixels (no copy)."""
    return np.frombuffer(pix.data, dtype=np.dtype(pix.dtype).newbyteorder("<")).reshape(pix.shape)


def check_harmonize_frames(msg: P.Message) -> dict[str, P.Pixels]:
    """Names and shapes of a ``harmonize_request``'s frames (before anything is allocated)."""
    frames = msg.frames
    missing = [n for n in ("layer", "mask", "backdrop") if n not in frames]
    extra = sorted(set(frames) - {"layer", "mask", "backdrop"})
    if missing or extra:
        raise P.ProtocolError(
            P.ErrorCode.BAD_FRAMES,
            f"harmonize needs frames layer, mask, backdrop; missing {missing}, unexpected {extra}",
            msg.id,
        )
    layer, mask, back = frames["layer"], frames["mask"], frames["backdrop"]
    problems = []
    if len(layer.shape) != 3 or layer.shape[2] not in (3, 4):
        problems.append(f"layer must be (H, W, 4) or (H, W, 3); got {list(layer.shape)}")
    if len(mask.shape) != 2:
        problems.append(f"mask must be (H, W); got {list(mask.shape)}")
    if len(back.shape) != 3 or back.shape[2] != 3:
        problems.append(f"backdrop must be (H, W, 3); got {list(back.shape)}")
    if problems:
        raise P.ProtocolError(P.ErrorCode.BAD_FRAMES, "; ".join(problems), msg.id)
    try:
        check_same_size({"layer": layer.shape, "mask": mask.shape, "backdrop": back.shape})
    except InputError as exc:
        raise P.ProtocolError(P.ErrorCode.BAD_FRAMES, str(exc), msg.id) from None
    return frames


# ---- the daemon -------------------------------------------------------------------------------


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
        self.ctx = context or zmq.Context.instance()
        self.router: zmq.Socket = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, self.limits.max_frame_bytes)
        self.router.setsockopt(zmq.RCVHWM, 64)
        self.router.setsockopt(zmq.SNDHWM, 256)
        inbox = f"inproc://harmonize-out-{id(self)}"
        self.outbox: zmq.Socket = self.ctx.socket(zmq.PULL)
        self.outbox.bind(inbox)
        self._worker_out: zmq.Socket = self.ctx.socket(zmq.PUSH)
        self._worker_out.connect(inbox)
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.jobs: dict[str, Job] = {}
        self.endpoint = ""
        self.stats = {"received": 0, "errors": 0, "jobs": 0}
        self._stopping = False  # a plain flag: set from signal handlers
        self._last_activity = self._last_heartbeat = time.monotonic()
        self._worker = threading.Thread(target=self._work, name="harmonize-worker", daemon=True)

    # -- setup --

    def bind(self) -> str:
        """Bind the ROUTER (port 0 = any free one); returns ``tcp://host:port``."""
        host = self.config.host
        if ":" in host.strip("[]"):
            self.router.setsockopt(zmq.IPV6, 1)
            host = f"[{host.strip('[]')}]"
        try:
            if self.config.port:
                self.router.bind(f"tcp://{host}:{self.config.port}")
            else:
                self.router.bind_to_random_port(f"tcp://{host}", 1024, 65536, 100)
        except zmq.ZMQError as exc:
            raise HarmonizeError(
                f"cannot listen on {host}:{self.config.port or 'a free port'} ({exc}); "
                "is another program using the port? `--port 0` picks a free one"
            ) from None
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    # -- main loop --

    def serve_forever(self) -> None:
        """Run until :meth:`stop`, a ``shutdown_request`` or the idle timeout."""
        if not self.endpoint:
            self.bind()
        self._worker.start()
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
                    for _ in range(64):  # bounded burst, then service the outbox again
                        try:
                            parts = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(parts)
                self._check_idle()
                self._heartbeat()
        finally:
            self._shutdown()

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
            msg = P.unpack(message, self.limits, local="daemon", token=self.config.token)
            self._last_activity = time.monotonic()
            self._dispatch(route, msg)
        except P.ProtocolError as exc:
            log.debug("refused a message: %s %s", exc.code, exc.message)
            self._error(route, exc.code, exc.message, exc.msg_id)
        except Exception as exc:  # a bug: report it, log it, keep serving
            log.error("error handling a message:\n%s", traceback.format_exc())
            self._error(route, P.ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", None)

    def _dispatch(self, route: list[Any], msg: P.Message) -> None:
        kind = msg.type
        if kind in (P.HELLO, P.PING):
            if msg.frames:
                raise P.ProtocolError(P.ErrorCode.BAD_FRAMES, f"{kind} takes no frames", msg.id)
            self._reply(route, P.reply_type(kind), self.info(), msg.id)
        elif kind == P.HARMONIZE:
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
            "queued": self.queue.qsize(),
            "limits": {
                "max_pixels": self.limits.max_pixels,
                "max_frame_bytes": self.limits.max_frame_bytes,
            },
        }

    def _enqueue(self, route: list[Any], msg: P.Message) -> None:
        check_harmonize_frames(msg)
        options = P.HarmonizeOptions.from_wire(msg.body.get("options"), msg.id)
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
        job = Job(route, msg, options, size)
        self.jobs[msg.id] = job
        self.stats["jobs"] += 1
        self._reply(route, P.PROGRESS, {"stage": "received", "queued": len(self.jobs)}, msg.id)
        self.queue.put(job)

    def _cancel(self, route: list[Any], msg: P.Message) -> None:
        target = msg.body.get("id")
        job = self.jobs.get(target) if isinstance(target, str) else None
        if job is None:
            raise P.ProtocolError(
                P.ErrorCode.NOT_FOUND, f"no queued or running job {target!r}", msg.id
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

    # -- worker thread --

    def _emit(self, route: list[Any], parts: list[Any]) -> None:
        """Hand a message to the main thread (worker side; never touches the ROUTER)."""
        self._worker_out.send_multipart([str(len(route)).encode(), *route, *parts], copy=False)

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            with job.lock:
                if job.state == "cancelled":
                    continue
                job.state = "running"
            final = self._run(job)
            with job.lock:
                job.state = "done"
            self.jobs.pop(job.msg.id, None)  # before the reply: the client may send the next job
            self._emit(job.route, final)

    def _run(self, job: Job) -> list[Any]:
        """Run one job; returns its final message (reply or error)."""
        parent = job.msg.id

        def checkpoint(stage: str, **info: Any) -> None:
            if job.cancel.is_set():
                raise Cancelled
            self._emit(job.route, P.pack(P.PROGRESS, {"stage": stage, **info}, parent=parent))

        def error(code: str, text: str) -> list[Any]:
            return P.pack(P.ERROR, P.error_body(code, text), parent=parent)

        try:
            arrays = {name: _array(pix) for name, pix in job.msg.frames.items()}
            out, (x, y), info = self.engine.run(arrays, job.options, checkpoint)
        except Cancelled:
            log.info("job %s cancelled", parent)
            return error(P.ErrorCode.CANCELLED, "cancelled")
        except EmptyMask:
            return error(
                P.ErrorCode.EMPTY_MASK, "the mask is empty (no pixel above 0): nothing to do"
            )
        except HarmonizeError as exc:
            return error(P.ErrorCode.INVALID_INPUT, str(exc))
        except MemoryError:
            return error(
                P.ErrorCode.OUT_OF_MEMORY, "out of memory: try a smaller layer or selection"
            )
        except Exception as exc:
            if "out of memory" in str(exc).lower():
                return error(
                    P.ErrorCode.OUT_OF_MEMORY, f"out of memory on {self.engine.device}: {exc}"
                )
            log.error("job %s failed:\n%s", parent, traceback.format_exc())
            return error(P.ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        h, w = out.shape[:2]
        log.info("job %s: %d x %d at (%d, %d), cached=%s", parent, w, h, x, y, info["cached"])
        body = {"offset": [x, y], "size": [w, h], **info}
        return P.pack(P.reply_type(P.HARMONIZE), body, {"result": P.Pixels.of(out)}, parent=parent)

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
        self.queue.put(None)
        if self._worker.is_alive():
            self._worker.join(timeout=30)
        self._forward_outgoing()  # the running job's last reply ("cancelled") goes out
        for sock in (self._worker_out, self.outbox, self.router):
            sock.close(linger=0)
        log.info("stopped (%s)", ", ".join(f"{k} {v}" for k, v in self.stats.items()))


# ---- files, logging, lifecycle ----------------------------------------------------------------


def setup_logging(level: str = "INFO", log_file: Path | None = None) -> Path:
    """Log to a rotating file (10 MB x 4) in the log dir and to stderr; returns the file."""
    from backend import paths

    path = log_file or paths.log_dir() / "daemon.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(path, maxBytes=10 << 20, backupCount=4, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    return path


def endpoint_file() -> Path:
    from backend import paths

    return paths.runtime_dir() / ENDPOINT_FILE


def write_endpoint_file(path: Path, endpoint: str, token: str) -> None:
    """The discovery file: JSON, mode 0600, in a 0700 directory."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = {
        "endpoint": endpoint,
        "pid": os.getpid(),
        "protocol_version": list(P.PROTOCOL_VERSION),
        "server_version": __version__,
        "token": token,
    }
    with atomic_open(path, mode=0o600) as fh:
        fh.write(json.dumps(info, indent=1).encode())


def remove_endpoint_file(path: Path) -> None:
    """Remove the file if it still names this process (a successor's file is left alone)."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


class InstanceLock:
    """An advisory lock on ``daemon.lock`` so only one daemon per runtime dir serves.

    POSIX only (``fcntl``); elsewhere :meth:`acquire` returns True and discovery relies on the
    endpoint file's pid and a ping.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        try:
            import fcntl
        except ImportError:
            return True
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            try:  # the file may have been replaced between open and lock: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return True
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self.fd)
            self.fd = None


def running_daemon(path: Path) -> dict[str, Any] | None:
    """The endpoint file's contents if a daemon there answers a ping, else None."""
    from backend.client import Client, DaemonError

    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    try:
        with Client.from_endpoint_file(path, timeout=2.0, retries=0) as client:
            client.ping()
    except (DaemonError, zmq.ZMQError, OSError):
        return None
    return info


def _silence_stdio() -> None:
    """Detached daemons: keep logging to the file only and point fds 1 and 2 at devnull."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def sd_notify(state: str) -> None:
    """Tell systemd (``Type=notify`` units) our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not hasattr(socket, "AF_UNIX"):
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


def _log_versions(engine: Engine, weights: str) -> None:
    import torch

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    log.info(
        "harmonize %s, protocol %s, python %s, torch %s, numpy %s, pyzmq %s (libzmq %s)",
        __version__,
        ".".join(map(str, P.PROTOCOL_VERSION)),
        sys.version.split()[0],
        torch.__version__,
        np.__version__,
        zmq.__version__,
        zmq.zmq_version(),
    )
    log.info(
        "device %s (CUDA: %s), variant %s, weights %s (id %s)",
        engine.device,
        cuda,
        engine.variant,
        weights,
        engine.weights_id,
    )


def serve(
    config: ServerConfig,
    *,
    weights: str | None,
    variant: str | None,
    device: str,
    log_level: str = "INFO",
    log_file: Path | None = None,
    quiet: bool = False,
) -> int:
    """``harmonize serve``: run a daemon in the foreground until SIGTERM/SIGINT; returns 0.

    Returns 1 (after saying so) when a live daemon already serves this runtime dir.
    """
    check_host(config.host, config.allow_remote)
    path = endpoint_file()
    lock = InstanceLock(path.with_name(LOCK_FILE))
    locked = lock.acquire()
    live = None if locked and lock.fd is not None else running_daemon(path)
    if live is not None:
        print(f"harmonize: a daemon is already running at {live['endpoint']} (pid {live['pid']})")
        return 1
    if not locked:
        print("harmonize: another daemon holds the lock (starting up?); try again", file=sys.stderr)
        return 1
    try:
        logfile = setup_logging(log_level, log_file)
        from backend.pipeline import load_model

        model = load_model(weights, variant=variant, device=device)
        engine = Engine(model, lut_backend=config.lut_backend, cache_size=config.cache_size)
        _log_versions(engine, str(model.metadata.get("path")))
        log.info("warm-up job took %.2f s", engine.warm_up())
        server = Server(engine, config)
        endpoint = server.bind()
        if path.exists():
            log.info("replacing a stale endpoint file %s", path)
        write_endpoint_file(path, endpoint, config.token)

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("received %s", signal.Signals(signum).name)
            server.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        print(
            f"harmonize daemon {__version__} on {endpoint} (pid {os.getpid()}, log {logfile})",
            flush=True,
        )
        sd_notify("READY=1")
        if quiet:
            _silence_stdio()
        try:
            server.serve_forever()
        finally:
            sd_notify("STOPPING=1")
            remove_endpoint_file(path)
        return 0
    finally:
        lock.release()

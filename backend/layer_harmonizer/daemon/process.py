"""``harmonize serve``: the daemon process around :class:`.server.Server`.

Single instance per runtime dir (a lock file), the endpoint file the clients discover it by,
a private rotating log (0600 in a 0700 folder), SIGTERM/SIGINT handling, systemd readiness,
and clean removal of its files. Local clients reach it on ``daemon.sock`` in the private
runtime dir; with ``--allow-remote``, ``--port`` or ``--host`` it listens on TCP with CURVE.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from layer_harmonizer._version import __version__
from layer_harmonizer.daemon.endpoint import (
    LOCK_FILE,
    SOCKET_FILE,
    InstanceLock,
    endpoint_file,
    remove_endpoint_file,
    write_endpoint_file,
)
from layer_harmonizer.daemon.engine import Engine
from layer_harmonizer.daemon.logs import log_versions, setup_logging, silence_stdio
from layer_harmonizer.daemon.server import Server, ServerConfig, check_host
from layer_harmonizer.errors import HarmonizeError
from layer_harmonizer.wire.discovery import RuntimeDirError

log = logging.getLogger("harmonize.daemon")


def running_daemon(path: Path) -> dict[str, Any] | None:
    """The endpoint file's contents if a daemon there answers a ping, else None."""
    from layer_harmonizer.wire.client import answering_client

    client = answering_client(path, timeout=2.0, retries=0)
    if client is None:
        return None
    client.close()
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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


def serve(
    config: ServerConfig,
    *,
    weights: str | None,
    variant: str | None,
    device: str,
    precision: str = "auto",
    log_level: str = "INFO",
    log_file: Path | None = None,
    quiet: bool = False,
) -> int:
    """``harmonize serve``: run a daemon in the foreground until SIGTERM/SIGINT; returns 0.
    ``precision`` is the network's (:mod:`layer_harmonizer.precision`).

    Returns 1 (after saying so) when a live daemon already serves this runtime dir.
    """
    check_host(config.host, config.allow_remote)
    try:
        path = endpoint_file()
    except RuntimeDirError as exc:
        raise HarmonizeError(str(exc)) from None
    if not _wants_tcp(config):
        config = dataclasses.replace(config, ipc_path=path.with_name(SOCKET_FILE))
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
        engine = _warm_engine(
            config, weights=weights, variant=variant, device=device, precision=precision
        )
        _raise_fd_limit()
        _serve_until_stopped(Server(engine, config), path, lock, logfile, quiet=quiet)
        return 0
    finally:
        lock.release()


def _warm_engine(
    config: ServerConfig,
    *,
    weights: str | None,
    variant: str | None,
    device: str,
    precision: str = "auto",
) -> Engine:
    """Load the model, run the warm-up job, and freeze what is loaded for good."""
    from layer_harmonizer.pipeline import load_model

    model = load_model(weights, variant=variant, device=device, precision=precision)
    engine = Engine(model, lut_backend=config.lut_backend, cache_size=config.cache_size)
    log_versions(engine, str(model.metadata.get("path")))
    meta = model.metadata
    log.info("network precision %s: %s", meta.get("precision"), meta.get("precision_reason"))
    log.info("warm-up job took %.2f s", engine.warm_up())
    # torch, numpy and the model are loaded for good: keep the cyclic garbage collector
    # from walking their ~170,000 objects again (a full pass takes ~65 ms mid-request)
    gc.collect()
    gc.freeze()
    return engine


def _serve_until_stopped(
    server: Server, path: Path, lock: InstanceLock, logfile: Path, *, quiet: bool
) -> None:
    """Bind, publish the endpoint file (guarded against a crash), serve until SIGTERM/SIGINT
    or a shutdown request, and remove what this daemon published."""
    config = server.config
    endpoint = server.bind()
    if path.exists():
        log.info("replacing a stale endpoint file %s", path)
    guardian = start_guardian(path, lock.path)  # before the file: it waits for our end
    write_endpoint_file(path, endpoint, config.token, server.curve)

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
        silence_stdio()
    try:
        server.serve_forever()
    finally:
        sd_notify("STOPPING=1")
        remove_endpoint_file(path)
        if guardian is not None:
            os.close(guardian)
        if config.ipc_path is not None and endpoint.startswith("ipc://"):
            with contextlib.suppress(OSError):  # still ours: we hold the lock
                config.ipc_path.unlink()


_GUARDIAN = """
import fcntl, json, os, signal, sys
pipe, endpoint, lock, pid = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
while os.read(pipe, 1):  # b"" once the daemon is gone, however it ended
    pass
try:
    fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
    # the dead daemon's lock may be released just after its pipe; still held after 5 s
    # (SIGALRM ends this process): a new daemon owns the files
    signal.alarm(5)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with open(endpoint, encoding="utf-8") as fh:
            if json.load(fh).get("pid") == pid:
                os.unlink(endpoint)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)  # at once: a new daemon may be starting
except (OSError, ValueError):
    pass
"""


def start_guardian(path: Path, lock_path: Path) -> int | None:
    """Start a small process that removes the endpoint file ``path`` when this daemon dies
    without removing it itself (SIGKILL, the OOM killer, a fatal signal such as SIGSEGV).

    It waits for the end of a pipe whose write end only this process holds, so it wakes
    however the daemon ends; then, once it holds the instance lock (within 5 s: else a new
    daemon holds it) and if the file still names this pid, it removes the file. Returns the
    pipe's write end (the daemon closes it when it exits cleanly), or None where this is not
    possible.
    """
    if os.name != "posix":
        return None
    read_end, write_end = os.pipe()
    command = [sys.executable, "-I", "-S", "-c", _GUARDIAN, str(read_end)]
    command += [str(path), str(lock_path), str(os.getpid())]
    try:
        subprocess.Popen(
            command,
            pass_fds=(read_end,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,  # out of reach of the terminal's Ctrl-C and hangup
        )
    except OSError as exc:
        log.warning("cannot start the endpoint file's guardian (%s): a crash leaves it", exc)
        os.close(write_end)
        return None
    finally:
        os.close(read_end)
    return write_end


def _wants_tcp(config: ServerConfig) -> bool:
    """TCP (with CURVE) when asked for by ``--allow-remote``, ``--port`` or ``--host``;
    otherwise the local ``ipc://`` socket in the runtime dir."""
    default = ServerConfig()
    return config.allow_remote or config.port != default.port or config.host != default.host


def _raise_fd_limit() -> None:
    """Raise the open-file limit to its hard maximum: TCP peers that never finish the CURVE
    handshake hold a descriptor each until it times out (``HANDSHAKE_MS``)."""
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

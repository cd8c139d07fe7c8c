"""Finding the running daemon or starting one: "is a daemon answering?" for every caller
(:func:`answering_client`) and ``harmonize serve`` started detached (:func:`ensure_daemon`).
Re-exported by :mod:`.client`.

Standard library + pyzmq + msgpack only, like all of :mod:`layer_harmonizer.wire`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from . import protocol as P
from .discovery import DaemonError, endpoint_path, private_runtime_dir

if TYPE_CHECKING:
    from .client import Client

DEFAULT_IDLE_TIMEOUT = 1800.0
"""Seconds an auto-started daemon waits without requests before exiting."""


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
    from .client import Client

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

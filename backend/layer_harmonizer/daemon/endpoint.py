"""Files in the runtime dir: the endpoint file clients read, the socket, the instance lock.

The runtime dir is checked by :func:`.wire.discovery.private_dir` (mode 0700, this user's, no
symlink). ``daemon.json`` (mode 0600) holds ``{endpoint, pid, protocol_version,
server_version, token}`` and, for a TCP endpoint, the CURVE keys ``curve``; ``daemon.sock`` is
the daemon's ``ipc://`` socket; ``daemon.lock`` is held (``flock``) by the one serving daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from layer_harmonizer._version import __version__
from layer_harmonizer.fileutil import atomic_open
from layer_harmonizer.wire import discovery
from layer_harmonizer.wire import protocol as P

LOCK_FILE = "daemon.lock"
SOCKET_FILE = "daemon.sock"


def endpoint_file() -> Path:
    """``daemon.json`` in the runtime dir, which is created or checked first.

    Raises:
        RuntimeDirError: the runtime dir is not private to this user.
    """
    return discovery.runtime_dir() / discovery.ENDPOINT_FILE


def write_endpoint_file(
    path: Path, endpoint: str, token: str, curve: dict[str, str] | None = None
) -> None:
    """The discovery file: JSON, mode 0600, in a private (0700) directory.

    ``curve``: for a TCP endpoint, the keys a client needs (``server_public``,
    ``client_public``, ``client_secret``, Z85 text); the daemon's secret key is never written.
    """
    discovery.private_dir(path.parent)
    info = {
        "endpoint": endpoint,
        "pid": os.getpid(),
        "protocol_version": list(P.PROTOCOL_VERSION),
        "server_version": __version__,
        "token": token,
    }
    if curve is not None:
        info["curve"] = curve
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
        discovery.private_dir(self.path.parent)
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

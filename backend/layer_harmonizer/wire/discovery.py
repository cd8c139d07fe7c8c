"""How the two sides find each other: the names, folder, file and limit the daemon and its
clients (the GIMP and Krita plug-ins, the CLI) must agree on, in one place.

- :data:`APP`, :data:`ENDPOINT_FILE`: the daemon's endpoint file ``daemon.json`` lives in the
  runtime directory and says where the daemon listens (:func:`read_endpoint_file`).
- The runtime directory (:func:`default_runtime_dir`, checked by :func:`private_dir`).
- :data:`DEFAULT_MAX_PIXELS`: the largest image either side accepts by default.
- :func:`is_loopback`: whether an address stays on this machine.
- :class:`DaemonError`: a failure a client reports, with an error code of
  :class:`~.protocol.ErrorCode`.

Standard library only, importable on its own (the multi-user tests run it with a bare system
Python); it does not use platformdirs, so the two sides agree whatever platformdirs version (if
any) each one has.

Location (:func:`default_runtime_dir`):

1. ``$HARMONIZE_RUNTIME_DIR`` when set;
2. Linux and other POSIX: ``$XDG_RUNTIME_DIR/harmonize`` when ``$XDG_RUNTIME_DIR`` is a
   directory of this user, else ``/run/user/<uid>/harmonize`` when that is, else
   ``/tmp/harmonize-<uid>`` (su, cron, ssh and containers often have no runtime dir);
3. macOS ``~/Library/Caches/TemporaryItems/harmonize``; Windows
   ``%LOCALAPPDATA%\\Temp\\harmonize``.

Check (:func:`private_dir`, POSIX): the directory is created with mode 0700 if missing; it must
not be a symbolic link, must be a directory owned by this user and not writable by anyone
else (read access of others is removed); its parent must belong to this user or root and be
writable by others only with the sticky bit (as ``/tmp`` is), so nobody else can swap it.
Anything else is refused with :class:`RuntimeDirError`, whose message is one line.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

APP = "harmonize"
ENV = "HARMONIZE_RUNTIME_DIR"
ENDPOINT_FILE = "daemon.json"
"""The daemon's endpoint file in the runtime dir: ``{endpoint, pid, protocol_version,
server_version, token}`` and, for a TCP endpoint, the CURVE keys ``curve``."""
DEFAULT_MAX_PIXELS = 150_000_000
"""Largest image (height x width) accepted by default, e.g. 15000 x 10000: the daemon's frame
limit and the core's image limit (``$HARMONIZE_MAX_PIXELS`` overrides the latter)."""

NO_DAEMON = "no_daemon"
"""Error code: no endpoint file, or the daemon could not be started (``ErrorCode.NO_DAEMON``)."""
UNSAFE_RUNTIME_DIR = "unsafe_runtime_dir"
"""Error code: the runtime dir is not private to this user (``ErrorCode.UNSAFE_RUNTIME_DIR``)."""


class DaemonError(Exception):
    """A structured failure: an ``error`` reply from the daemon, or a client-side one
    (``code`` ``unreachable``, ``no_daemon``, ``unsupported_version``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


class RuntimeDirError(Exception):
    """The runtime directory is not private to this user (or cannot be made so)."""


def default_runtime_dir(preferred: str | os.PathLike[str] | None = None) -> Path:
    """Where the runtime directory is for this process (nothing is created or checked):
    ``$HARMONIZE_RUNTIME_DIR``, else ``preferred`` (e.g. what a plug-in's installer recorded),
    else the platform's rule (module docstring)."""
    chosen = os.environ.get(ENV) or preferred
    if chosen:
        return Path(chosen).expanduser().absolute()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "Temp" / APP
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "TemporaryItems" / APP
    uid = os.getuid()
    for base in (os.environ.get("XDG_RUNTIME_DIR", ""), f"/run/user/{uid}"):
        if base and os.path.isabs(base) and _owned_dir(Path(base), uid):
            return Path(base) / APP
    return Path("/tmp") / f"{APP}-{uid}"  # /tmp is sticky: private_dir checks the rest


def _owned_dir(path: Path, uid: int) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid


def runtime_dir(*, create: bool = True) -> Path:
    """:func:`default_runtime_dir`, checked (and created) by :func:`private_dir`."""
    return private_dir(default_runtime_dir(), create=create)


def private_dir(path: Path | str, *, create: bool = True) -> Path:
    """Check that ``path`` is a directory only this user can use; returns it.

    Args:
        path: the directory (``~`` is expanded).
        create: make it (mode 0700, and missing parents 0700) when it does not exist; when
            False a missing directory raises :class:`FileNotFoundError`.

    Raises:
        RuntimeDirError: a symbolic link, not a directory, another owner, writable by others,
            or a parent that another user could change; the message says what to do.
    """
    path = Path(path).expanduser().absolute()
    if not hasattr(os, "getuid"):  # Windows: per-user profile folders, no POSIX modes
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path
    uid = os.getuid()
    if create:
        _make(path)
    st = os.lstat(path)  # FileNotFoundError when absent
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, "is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "is not a directory")
    if st.st_uid != uid:
        raise _refuse(path, f"belongs to uid {st.st_uid}, not to this user (uid {uid})")
    if st.st_mode & 0o022:
        raise _refuse(path, f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})")
    if st.st_mode & 0o077:  # ours, readable by others but never writable by them: tighten
        os.chmod(path, 0o700)
    _check_parent(path.parent, uid)
    return path


def _make(path: Path) -> None:
    """``mkdir -m 700 -p``: every missing component is created with mode 0700."""
    missing = []
    for part in (path, *path.parents):
        if os.path.lexists(part):
            break
        missing.append(part)
    for part in reversed(missing):
        try:
            os.mkdir(part, 0o700)
        except FileExistsError:
            pass  # made meanwhile (another client or the daemon): checked below
        except OSError as exc:
            raise RuntimeDirError(
                f"cannot create the runtime directory {path} ({exc.strerror}); set "
                f"{ENV} to a folder only you can write"
            ) from None


def _check_parent(parent: Path, uid: int) -> None:
    """The parent must not let another user rename or replace the directory."""
    try:
        st = parent.stat()
    except OSError as exc:
        raise RuntimeDirError(f"cannot check {parent} ({exc.strerror})") from None
    shared = st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX
    if st.st_uid not in (uid, 0) or shared:
        raise RuntimeDirError(
            f"the runtime directory's parent {parent} could be changed by another user "
            f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); set {ENV} to a "
            "folder inside one only you (or root) can write"
        )


def _refuse(path: Path, why: str) -> RuntimeDirError:
    return RuntimeDirError(
        f"the runtime directory {path} {why}: refusing to use it (someone else may have made "
        f"it); remove it, or set {ENV} to a folder only you can write"
    )


# ---- the endpoint file -------------------------------------------------------------------------


def endpoint_path(preferred_dir: str | os.PathLike[str] | None = None) -> Path:
    """``daemon.json`` in :func:`default_runtime_dir` (``preferred_dir`` as there; nothing is
    checked: :func:`read_endpoint_file` does that)."""
    return default_runtime_dir(preferred_dir) / ENDPOINT_FILE


def private_runtime_dir(path: Path, *, create: bool) -> Path:
    """:func:`private_dir` with its refusal as a :class:`DaemonError` (``unsafe_runtime_dir``)."""
    try:
        return private_dir(path, create=create)
    except RuntimeDirError as exc:
        raise DaemonError(UNSAFE_RUNTIME_DIR, str(exc)) from None


def read_endpoint_file(path: Path | None = None) -> dict[str, Any]:
    """The daemon's ``{endpoint, pid, protocol_version, server_version, token}`` (and
    ``curve`` keys for a TCP endpoint), read only from a private runtime dir.

    Raises:
        DaemonError: ``no_daemon`` (no file, unreadable, no endpoint) or ``unsafe_runtime_dir``.
    """
    path = Path(path) if path is not None else endpoint_path()
    try:
        private_runtime_dir(path.parent, create=False)
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DaemonError(NO_DAEMON, f"no daemon is running (no endpoint file at {path})") from None
    except (OSError, ValueError) as exc:
        raise DaemonError(NO_DAEMON, f"unreadable endpoint file {path}: {exc}") from None
    if not isinstance(info, dict) or not isinstance(info.get("endpoint"), str):
        raise DaemonError(NO_DAEMON, f"endpoint file {path} has no endpoint")
    if info["endpoint"].startswith("ipc://"):
        # The socket lives beside the endpoint file. A host that sees the runtime dir at
        # another path (a chroot, a sandbox's bind mount) finds it there, not at the
        # daemon's path.
        info["endpoint"] = f"ipc://{path.parent / Path(info['endpoint'][6:]).name}"
    return info


def is_loopback(host: str) -> bool:
    """Whether a host name or address (``[::1]`` brackets allowed) stays on this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

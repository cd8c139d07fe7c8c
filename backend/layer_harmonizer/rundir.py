"""The runtime directory: where the daemon's socket and endpoint file live, private to the user.

One implementation for both sides: the daemon (:mod:`.endpoint`, :mod:`.paths`)
and every client (:mod:`.client`, vendored into the GIMP and Krita plug-ins) locate the
directory with :func:`default_runtime_dir` and check it with :func:`private_dir` before they
trust anything in it. Standard library only; it does not use platformdirs, so the two sides
agree whatever platformdirs version (if any) each one has.

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

import os
import stat
import sys
from pathlib import Path

APP = "harmonize"
ENV = "HARMONIZE_RUNTIME_DIR"


class RuntimeDirError(Exception):
    """The runtime directory is not private to this user (or cannot be made so)."""


def default_runtime_dir() -> Path:
    """Where the runtime directory is for this process (nothing is created or checked)."""
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser().absolute()
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

"""The daemon's logging: a private rotating log file (0600 in a 0700 folder) that also takes
``faulthandler``'s report of a fatal signal, the versions it runs with, and silencing stdout
and stderr once a detached daemon serves."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from layer_harmonizer._version import __version__
from layer_harmonizer.errors import HarmonizeError
from layer_harmonizer.wire import protocol as P

log = logging.getLogger("harmonize.daemon")


class PrivateRotatingFileHandler(RotatingFileHandler):
    """A :class:`RotatingFileHandler` whose files (the current one and each one rotation
    starts) are created with mode 0600, never through a symbolic link."""

    def _open(self) -> Any:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.baseFilename, flags, 0o600)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # a file left by an older version may be 0644
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


class FatalSignalLog(PrivateRotatingFileHandler):
    """The daemon's log file, which also receives ``faulthandler``'s report (every thread's
    Python stack) when a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGABRT, SIGILL) kills the
    daemon; re-pointed at each new file when the log rotates."""

    def _open(self) -> Any:
        stream = super()._open()
        faulthandler.enable(stream, all_threads=True)
        return stream


def _private_log_folder(folder: Path) -> None:
    """Create the log folder with mode 0700 (and missing parents), or tighten our own."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for part in reversed(missing):
        with contextlib.suppress(FileExistsError):
            part.mkdir(mode=0o700)
    if hasattr(os, "getuid") and folder.stat().st_uid == os.getuid():
        folder.chmod(0o700)


def setup_logging(level: str = "INFO", log_file: Path | None = None) -> Path:
    """Log to a rotating file (10 MB x 4, mode 0600) in the log dir (mode 0700) and to stderr;
    returns the file. A ``log_file`` elsewhere gets mode 0600; its folder is made 0700 only
    when this creates it or the folder is the log dir."""
    from layer_harmonizer import paths

    path = log_file or paths.daemon_log()
    try:
        if log_file is None or not path.parent.exists():
            _private_log_folder(path.parent)
        handler = FatalSignalLog(path, maxBytes=10 << 20, backupCount=4, encoding="utf-8")
    except OSError as exc:
        raise HarmonizeError(f"cannot open the log file {path}: {exc.strerror or exc}") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    return path


def log_versions(engine: Any, weights: str) -> None:
    """Log what this daemon runs: versions, device, variant and weights."""
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


def silence_stdio() -> None:
    """Detached daemons: keep logging to the file only and point fds 1 and 2 at devnull."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)

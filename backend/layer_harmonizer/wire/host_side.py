"""What the GIMP and Krita plugins share: the daemon call and its status, plus (re-exported,
so a plug-in needs this one module) the settings (:mod:`.host_settings`), one daemon client per
dialog (:mod:`.host_session`), the geometry and pixel formats of :mod:`.host_pixels` and the
messages a user sees when something fails, :mod:`.host_messages`.

Standard library only (no numpy, no torch), like all of :mod:`layer_harmonizer.wire`, which
the installer copies into each host's plugin folder, where it runs in the host application's
own Python. The pixel maths (alpha x selection, compositing, LUTs) happens in the daemon; the
plugins only move bytes (a :class:`Request`):

- ``layer``: the layer's RGBA (or Krita's BGRA, declared) over the *context region* (layer
  bounds plus a margin, clamped to the image), transparent outside the layer;
- ``selection``: ``(H, W)`` the selection alone (x the layer mask), soft; none = all;
- ``backdrop``: ``(H, W, 3|4)`` what is visible below the layer, flattened.

The daemon answers with a harmonized crop (in the layer's channel order) and its offset inside
the region; a strength change re-applies that job without pixels (:meth:`Session.restrength`).

Importing this module never imports pyzmq; :func:`open_session` and :func:`harmonize` do, so a
host whose Python lacks it still gets a readable :class:`PluginError`.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import protocol as P
from .discovery import ENV
from .host_messages import (
    INSTALL_HINT,
    PROGRESS,
    PluginError,
    explain,
    nothing_below,
    progress_text,
    selection_covers_layer,
)
from .host_pixels import (
    RESULT_SUFFIX,
    Box,
    WireFormat,
    context_box,
    crop_rows,
    has_unselected_part,
    is_covered,
    result_name,
    wire_format,
)
from .host_session import Request, Result, Session
from .host_settings import (
    DAEMON_TIMEOUT,
    DEFAULT_STRENGTH,
    SETTINGS_FILE,
    Settings,
    endpoint_file,
    load_settings,
)

__all__ = [  # what the plug-ins use, re-exported names included
    "DAEMON_TIMEOUT",
    "DEFAULT_STRENGTH",
    "INSTALL_HINT",
    "PROGRESS",
    "RESULT_SUFFIX",
    "SETTINGS_FILE",
    "Box",
    "DaemonState",
    "PluginError",
    "Request",
    "Result",
    "Session",
    "Settings",
    "WireFormat",
    "context_box",
    "crop_rows",
    "daemon_state",
    "daemon_status",
    "endpoint_file",
    "explain",
    "harmonize",
    "has_unselected_part",
    "is_covered",
    "load_settings",
    "nothing_below",
    "open_session",
    "progress_text",
    "result_name",
    "selection_covers_layer",
    "serve_command",
    "wire_format",
]

PROCEDURE_NAME = "plug-in-harmonize-layer"
"""The GIMP PDB name of the procedure (menu: Filters ▸ Harmonize Layer…)."""


# ---- the daemon call --------------------------------------------------------------------------


def _client_module() -> Any:
    """:mod:`.client` (or its vendored copy); PluginError when pyzmq/msgpack lack."""
    try:
        from . import client
    except ImportError as exc:
        raise PluginError(
            f"The plugin cannot talk to the harmonize daemon: {exc}. The host's Python needs "
            "pyzmq and msgpack: run `harmonize install-plugin <host> --deps vendor` to put "
            "copies into the plugin folder."
        ) from None
    return client


def open_session(settings: Settings | None = None, *, client_module: Any = None) -> Session:
    """A :class:`Session` for a dialog or docker: one daemon client (and shared-memory
    segment) for all its requests; close it with the dialog. PluginError when the host's
    Python cannot talk to the daemon.

    Args:
        client_module: :mod:`layer_harmonizer.wire.client` replacement (tests).
    """
    module = client_module or _client_module()
    return Session(settings, client_module=module, connect=_daemon)


def serve_command(settings: Settings) -> list[str]:
    """The command that starts the daemon; PluginError when harmonize is not installed."""
    if settings.serve_command:
        exe = settings.serve_command[0]
        if Path(exe).is_absolute() and not Path(exe).exists():
            raise PluginError(
                f"The harmonize daemon is not installed at {exe} any more (the path "
                "`harmonize install-plugin` recorded in the plug-in's settings.json). Re-run "
                "`harmonize install-plugin` with the harmonize you use now, so the plug-in "
                f"records its path. {INSTALL_HINT}"
            )
        return [*settings.serve_command]
    exe = shutil.which("harmonize")
    if exe is None:
        raise PluginError(
            "The harmonize daemon is not installed (no `harmonize` command found). "
            f"{INSTALL_HINT} Or start `harmonize serve` yourself."
        )
    return [exe, "serve"]


def _daemon(client: Any, settings: Settings) -> Any:
    """A client of the running daemon, else of one started with the installer's command."""
    path = endpoint_file(settings)
    os.environ.setdefault(ENV, str(path.parent))  # an auto-started daemon uses it too
    found = client.answering_client(path, timeout=settings.timeout, retries=2)
    return found or client.ensure_daemon(
        command=serve_command(settings),
        args=settings.serve_args,
        endpoint_file=path,
        timeout=settings.timeout,
    )


def harmonize(
    layer: bytes,
    mask: bytes,
    backdrop: bytes,
    width: int,
    height: int,
    fmt: WireFormat,
    *,
    strength: float = DEFAULT_STRENGTH,
    settings: Settings | None = None,
    on_progress: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
    client_module: Any = None,
) -> Result:
    """Send one layer to the daemon (finding or starting it) and return the harmonized crop,
    the protocol 2.0 way, with a client of its own (a dialog keeps one: :func:`open_session`).

    Args:
        layer: ``height x width x 4`` RGBA of ``fmt.dtype`` over the region.
        mask: ``height x width`` of ``fmt.dtype``: alpha x selection, soft.
        backdrop: ``height x width x 3`` RGB of ``fmt.dtype``: what is visible below.
        fmt: the transport format (:func:`wire_format`).
        strength: 0 (unchanged) .. 1 (full harmonization).
        on_progress: called as ``on_progress(fraction, stage)``.
        client_module: :mod:`layer_harmonizer.wire.client` replacement (tests).

    Raises:
        PluginError: with a message for the user (see :func:`explain`).
    """
    request = Request(layer, mask, backdrop, width, height, fmt, premultiplied=True)
    request.check(strength)
    with open_session(settings, client_module=client_module) as session:
        return session.harmonize(request, strength=strength, on_progress=on_progress, cancel=cancel)


CONNECTED, NOT_RUNNING, STARTING, ERROR = "connected", "not_running", "starting", "error"
"""The daemon's states a host shows. :func:`daemon_state` tells the first, second and last
apart; a host shows :data:`STARTING` while its own request is starting the daemon."""


@dataclass(frozen=True)
class DaemonState:
    """What a host's status display shows: ``state`` (:data:`CONNECTED`, :data:`NOT_RUNNING`,
    :data:`ERROR`) and one line of ``text`` that starts with the state in words."""

    state: str
    text: str


def daemon_state(settings: Settings | None = None, *, client_module: Any = None) -> DaemonState:
    """Ping the daemon (1.5 s, no retry) and say whether it runs: its version, device and
    variant when it answers. Never raises.

    Args:
        client_module: :mod:`layer_harmonizer.wire.client` replacement (tests).
    """
    settings = settings or Settings()
    try:
        client = client_module or _client_module()
        path = endpoint_file(settings)
        with client.Client.from_endpoint_file(path, timeout=1.5, retries=0) as daemon:
            info = daemon.ping(timeout=1.5, retries=0)
    except PluginError as exc:
        return DaemonState(ERROR, f"Error: {exc}")
    except Exception as exc:
        if getattr(exc, "code", None) == P.ErrorCode.NO_DAEMON or _stopped(settings):
            return DaemonState(NOT_RUNNING, "Not running: it starts on the first Harmonize.")
        detail = getattr(exc, "message", None) or exc
        return DaemonState(ERROR, f"Error: the daemon does not answer ({detail}).")
    return DaemonState(
        CONNECTED,
        f"Connected: harmonize {info.get('server_version', '?')} on "
        f"{info.get('device', '?')} ({info.get('variant', '?')})",
    )


def _stopped(settings: Settings) -> bool:
    """Whether the process the endpoint file names is gone (a daemon that was killed leaves
    its file behind). False when unsure: no file, no pid, or another PID namespace's pid."""
    try:
        info = json.loads(endpoint_file(settings).read_text(encoding="utf-8"))
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, TypeError, KeyError):
        return False
    return False


def daemon_status(settings: Settings | None = None, *, client_module: Any = None) -> str:
    """One line for a host's status display (:func:`daemon_state`'s text)."""
    return daemon_state(settings, client_module=client_module).text

"""What the GIMP and Krita plugins share: settings and the daemon call, plus (re-exported, so a
plug-in needs this one module) the geometry and pixel formats of :mod:`.host_pixels` and the
messages a user sees when something fails, :mod:`.host_messages`.

Standard library only (no numpy, no torch), like all of :mod:`layer_harmonizer.wire`, which
the installer copies into each host's plugin folder, where it runs in the host application's
own Python. The pixel maths (mask x selection, compositing, LUTs) happens in
the daemon; the plugins only move bytes:

- ``layer``: the layer's RGBA over the *context region* (layer bounds plus a margin, clamped
  to the image), transparent outside the layer;
- ``mask``: ``(H, W)`` soft mask = layer alpha x selection (x layer mask), 0 outside the layer;
- ``backdrop``: ``(H, W, 3)`` what is visible below the layer, flattened.

The daemon answers with a harmonized RGBA crop and its offset inside the region.

Importing this module never imports pyzmq; :func:`harmonize` does, so a host whose Python
lacks it still gets a readable :class:`PluginError`.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import protocol as P
from .discovery import ENV, endpoint_path
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
    result_name,
    wire_format,
)

__all__ = [  # what the plug-ins use, re-exported names included
    "INSTALL_HINT",
    "PROGRESS",
    "RESULT_SUFFIX",
    "Box",
    "DaemonState",
    "PluginError",
    "Result",
    "Settings",
    "WireFormat",
    "context_box",
    "crop_rows",
    "daemon_state",
    "daemon_status",
    "explain",
    "harmonize",
    "has_unselected_part",
    "load_settings",
    "nothing_below",
    "progress_text",
    "result_name",
    "selection_covers_layer",
    "wire_format",
]

PROCEDURE_NAME = "plug-in-harmonize-layer"
"""The GIMP PDB name of the procedure (menu: Filters ▸ Harmonize Layer…)."""
SETTINGS_FILE = "settings.json"
"""Written by ``harmonize install-plugin`` into the plugin folder; read by the plugin."""
DEFAULT_STRENGTH = 1.0
DAEMON_TIMEOUT = 60.0
"""Seconds of silence from the daemon (progress events count as life) before retrying."""


# ---- settings ---------------------------------------------------------------------------------


@dataclass
class Settings:
    """What the installer recorded for the plugin (``settings.json`` in the plugin folder).

    Attributes:
        serve_command: how to start the daemon, e.g. ``["/venv/bin/harmonize", "serve"]``;
            None = ``harmonize`` from PATH.
        serve_args: extra ``harmonize serve`` arguments (``--weights``, ``--device``).
        runtime_dir: where the daemon's endpoint file is (``$HARMONIZE_RUNTIME_DIR`` wins).
        timeout: seconds of silence before a request is retried.
        strength: the default strength offered by the dialog.
    """

    serve_command: list[str] | None = None
    serve_args: list[str] = field(default_factory=list)
    runtime_dir: str | None = None
    timeout: float = DAEMON_TIMEOUT
    strength: float = DEFAULT_STRENGTH

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1)

    @classmethod
    def from_dict(cls, raw: Any) -> Settings:
        if not isinstance(raw, dict):
            raise ValueError("settings must be a JSON object")
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        settings = cls(**known)
        if settings.serve_command is not None and not (
            isinstance(settings.serve_command, list)
            and all(isinstance(s, str) for s in settings.serve_command)
        ):
            raise ValueError("serve_command must be a list of strings")
        return settings


def load_settings(plugin_dir: str | os.PathLike[str]) -> Settings:
    """Read ``settings.json`` from the plugin folder; defaults when there is none.

    Raises :class:`PluginError` for a broken file (re-running the installer fixes it).
    """
    path = Path(plugin_dir) / SETTINGS_FILE
    try:
        return Settings.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return Settings()
    except (OSError, ValueError, TypeError) as exc:
        raise PluginError(
            f"The plugin's settings file {path} is unreadable ({exc}). "
            "Run `harmonize install-plugin` again to rewrite it."
        ) from None


def endpoint_file(settings: Settings) -> Path:
    """The daemon's endpoint file: ``$HARMONIZE_RUNTIME_DIR``, else the installer's runtime
    dir, else the platform default (:func:`.discovery.endpoint_path`)."""
    return endpoint_path(settings.runtime_dir)


# ---- the daemon call --------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """A harmonized crop: ``pixels`` (``h x w x 4`` of the request's dtype) at ``box``, in the
    coordinates of the region that was sent."""

    pixels: bytes
    box: Box
    timings: dict[str, float]


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
    """Send one layer to the daemon (finding or starting it) and return the harmonized crop.

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
    _check_request(layer, mask, backdrop, width, height, fmt, strength)
    settings = settings or Settings()
    client = client_module or _client_module()
    shape = (height, width)

    def progress(body: dict[str, Any]) -> None:
        stage = str(body.get("stage", ""))
        if on_progress is not None and stage in PROGRESS:
            on_progress(PROGRESS[stage], stage)

    try:
        with _daemon(client, settings) as daemon:
            daemon.hello()
            reply = daemon.harmonize(
                P.Pixels(layer, (*shape, 4), fmt.dtype),
                P.Pixels(mask, shape, fmt.dtype),
                P.Pixels(backdrop, (*shape, 3), fmt.dtype),
                strength=float(strength),
                dtype=fmt.dtype,
                output="rgba",
                on_progress=progress,
                cancel=cancel,
            )
    except (P.ProtocolError, client.DaemonError, OSError, MemoryError) as exc:
        # ProtocolError: e.g. the hello's version check; OSError: the daemon cannot be run
        raise PluginError(explain(exc)) from None
    return _result(reply, fmt, width, height)


def _check_request(
    layer: bytes,
    mask: bytes,
    backdrop: bytes,
    width: int,
    height: int,
    fmt: WireFormat,
    strength: float,
) -> None:
    """The strength and the buffers' sizes of a :func:`harmonize` call; PluginError if wrong."""
    if not 0.0 <= strength <= 1.0:
        raise PluginError(f"Strength must be between 0 and 1; got {strength}.")
    size = width * height * fmt.channel_bytes
    for name, data, channels in (("layer", layer, 4), ("mask", mask, 1), ("backdrop", backdrop, 3)):
        if len(data) != size * channels:
            raise PluginError(
                f"Internal error: the {name} has {len(data)} bytes, expected {size * channels} "
                f"for {width} x {height} x {channels} {fmt.dtype}."
            )


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


def _result(reply: Any, fmt: WireFormat, width: int, height: int) -> Result:
    """The daemon's reply as a :class:`Result`, checked against the request."""
    pix = reply.pixels
    if pix.dtype != fmt.dtype or len(pix.shape) != 3 or pix.shape[2] != 4:
        raise PluginError(
            f"The daemon answered with {pix.dtype} pixels of shape {list(pix.shape)}; expected "
            f"RGBA {fmt.dtype}. Update the daemon and the plugin to the same version."
        )
    x, y = reply.offset
    box = Box(x, y, pix.shape[1], pix.shape[0])
    if box.intersect(Box(0, 0, width, height)) != box:
        raise PluginError(f"The daemon's result {box} lies outside the {width} x {height} region.")
    return Result(bytes(memoryview(pix.data).cast("B")), box, dict(reply.timings))


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

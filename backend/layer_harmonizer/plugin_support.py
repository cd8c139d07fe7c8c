"""What the GIMP and Krita plugins share: geometry, pixel formats, settings, the daemon call and
the messages a user sees when something fails.

Pure standard library (no numpy, no torch): the installer copies this file into each host's
plugin folder next to :mod:`.client` and :mod:`.protocol`, where it runs in the
host application's own Python. The pixel maths (mask x selection, compositing, LUTs) happens in
the daemon; the plugins only move bytes:

- ``layer``: the layer's RGBA over the *context region* (layer bounds plus a margin, clamped
  to the image), transparent outside the layer;
- ``mask``: ``(H, W)`` soft mask = layer alpha x selection (x layer mask), 0 outside the layer;
- ``backdrop``: ``(H, W, 3)`` what is visible below the layer, flattened.

The daemon answers with a harmonized RGBA crop and its offset inside the region.

Importing this module never imports pyzmq or msgpack; :func:`harmonize` does, so a host whose
Python lacks them still gets a readable :class:`PluginError`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # inside the backend package, or vendored as a package beside protocol.py
    from . import protocol as P
except ImportError:  # pragma: no cover - vendored as top-level modules
    import protocol as P  # type: ignore[no-redef]

PROCEDURE_NAME = "plug-in-harmonize-layer"
"""The GIMP PDB name of the procedure (menu: Filters ▸ Harmonize Layer…)."""
SETTINGS_FILE = "settings.json"
"""Written by ``harmonize install-plugin`` into the plugin folder; read by the plugin."""
RESULT_SUFFIX = " (harmonized)"
DEFAULT_STRENGTH = 1.0
DAEMON_TIMEOUT = 60.0
"""Seconds of silence from the daemon (progress events count as life) before retrying."""

PROGRESS = {"received": 0.1, "composed": 0.25, "predicted": 0.75, "applied": 0.95}
"""Fraction done after each daemon progress stage (for the host's progress bar)."""


class PluginError(Exception):
    """A failure to show the user as is: the text says what happened and what to do."""


# ---- geometry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle: top-left ``(x, y)``, size ``w x h`` (``w, h >= 0``)."""

    x: int
    y: int
    w: int
    h: int

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    @property
    def empty(self) -> bool:
        return self.w <= 0 or self.h <= 0

    def intersect(self, other: Box) -> Box:
        """The overlap (``w`` or ``h`` 0 when there is none)."""
        x0, y0 = max(self.x, other.x), max(self.y, other.y)
        x1, y1 = min(self.right, other.right), min(self.bottom, other.bottom)
        return Box(x0, y0, max(0, x1 - x0), max(0, y1 - y0))

    def shift(self, dx: int, dy: int) -> Box:
        return Box(self.x + dx, self.y + dy, self.w, self.h)


def context_box(
    layer: Box,
    image_width: int,
    image_height: int,
    margin: float = P.DEFAULT_CROP_MARGIN,
    min_margin: int = P.MIN_CROP_MARGIN_PX,
) -> Box:
    """The region sent to the daemon: the layer's bounds grown by a context margin, clamped to
    the image.

    The margin is ``max(min_margin, ceil(margin * longer side of the layer))``, which is at
    least the margin the daemon puts around the mask's bounding box (the mask lies inside the
    layer), so the daemon's crop never has to be clamped by this region except at the image
    border. Raises :class:`PluginError` when the layer lies outside the image.
    """
    pad = max(min_margin, math.ceil(margin * max(layer.w, layer.h)))
    grown = Box(layer.x - pad, layer.y - pad, layer.w + 2 * pad, layer.h + 2 * pad)
    region = grown.intersect(Box(0, 0, image_width, image_height))
    if region.empty or layer.intersect(region).empty:
        raise PluginError(
            "The layer lies entirely outside the image canvas: move it onto the canvas "
            "(or use Image ▸ Fit Canvas to Layers) and run Harmonize Layer again."
        )
    return region


def crop_rows(data: bytes | memoryview, width: int, pixel_bytes: int, box: Box) -> bytes:
    """Cut ``box`` out of a row-major pixel buffer ``width`` pixels wide.

    Args:
        data: ``height x width x pixel_bytes`` bytes, rows top to bottom.
        width: pixels per row of ``data``.
        pixel_bytes: bytes per pixel (channels x bytes per channel).
        box: the rectangle in ``data``'s own coordinates; must lie inside it.
    """
    view = memoryview(data).cast("B")
    height = view.nbytes // (width * pixel_bytes) if width else 0
    if box.x < 0 or box.y < 0 or box.right > width or box.bottom > height or box.empty:
        raise ValueError(f"{box} is not inside a {width} x {height} buffer")
    stride, row = width * pixel_bytes, box.w * pixel_bytes
    if box.x == 0 and box.w == width:
        return view[box.y * stride : box.bottom * stride].tobytes()
    start = box.y * stride + box.x * pixel_bytes
    return b"".join(view[start + i * stride : start + i * stride + row] for i in range(box.h))


# ---- pixel formats ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WireFormat:
    """How pixels of one host precision travel: the wire ``dtype`` and the Babl type suffix.

    Pixels always travel as perceptual (sRGB-encoded) values, what the network was trained on:
    the host converts from and to the layer's own storage (linear or perceptual, any depth).
    """

    dtype: str  # "uint8" | "uint16" | "float32"
    babl_type: str  # "u8" | "u16" | "float"

    @property
    def channel_bytes(self) -> int:
        return P.DTYPES[self.dtype]

    @property
    def rgba(self) -> str:
        return f"R'G'B'A {self.babl_type}"

    @property
    def rgb(self) -> str:
        return f"R'G'B' {self.babl_type}"

    @property
    def alpha(self) -> str:
        return f"A {self.babl_type}"


def wire_format(precision: str) -> WireFormat:
    """The transport format for a host precision name such as GIMP's ``"U16_LINEAR"``.

    ``u8`` perceptual stays 8-bit; ``u8`` *linear* travels as 16-bit (8-bit linear would lose
    shadow levels on the way to sRGB and back); ``u16`` as 16-bit; ``u32``, ``half``, ``float``
    and ``double`` as float32. Raises :class:`ValueError` for an unknown name.
    """
    name = precision.upper()
    component, _, trc = name.partition("_")
    if component == "U8":
        return WireFormat("uint16", "u16") if trc == "LINEAR" else WireFormat("uint8", "u8")
    if component == "U16":
        return WireFormat("uint16", "u16")
    if component in ("U32", "HALF", "FLOAT", "DOUBLE"):
        return WireFormat("float32", "float")
    raise ValueError(f"unknown precision {precision!r}")


def result_name(name: str) -> str:
    """``"Bird"`` -> ``"Bird (harmonized)"``."""
    return f"{name}{RESULT_SUFFIX}"


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
    dir, else the client's platform default."""
    env = os.environ.get("HARMONIZE_RUNTIME_DIR")
    if env:
        return Path(env).expanduser() / "daemon.json"
    if settings.runtime_dir:
        return Path(settings.runtime_dir) / "daemon.json"
    return Path(_client_module().default_endpoint_file())


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
        try:
            from . import client
        except ImportError as exc:
            if "zmq" in str(exc) or "msgpack" in str(exc):
                raise
            import client  # type: ignore[no-redef]
    except ImportError as exc:
        raise PluginError(
            f"The plugin cannot talk to the harmonize daemon: {exc}. The host's Python needs "
            "pyzmq and msgpack: run `harmonize install-plugin <host> --deps vendor` to put "
            "copies into the plugin folder."
        ) from None
    return client


INSTALL_HINT = (
    "Install harmonize from a clone of its repository (`pip install torch==2.13.0`, then "
    "`pip install <path to the clone>`) and run `harmonize install-plugin` again; see the "
    'README, "Install".'
)
"""How to install the daemon. Not from PyPI: the "harmonize" there is another project."""


def serve_command(settings: Settings) -> list[str]:
    """The command that starts the daemon; PluginError when harmonize is not installed."""
    if settings.serve_command:
        exe = settings.serve_command[0]
        if Path(exe).is_absolute() and not Path(exe).exists():
            raise PluginError(
                f"The harmonize daemon is not installed at {exe} any more. {INSTALL_HINT}"
            )
        return [*settings.serve_command]
    exe = shutil.which("harmonize")
    if exe is None:
        raise PluginError(
            "The harmonize daemon is not installed (no `harmonize` command found). "
            f"{INSTALL_HINT} Or start `harmonize serve` yourself."
        )
    return [exe, "serve"]


def explain(exc: BaseException) -> str:
    """A user-facing message for any failure of :func:`harmonize` (what happened + what to do)."""
    if isinstance(exc, PluginError):
        return str(exc)
    code = getattr(exc, "code", None)
    detail = getattr(exc, "message", None) or str(exc)
    E = P.ErrorCode
    advice = {
        E.NO_DAEMON: "The harmonize daemon is not running and could not be started ({detail}). "
        "Run `harmonize serve` in a terminal to see why; its log is in the log folder shown "
        "by `harmonize info`.",
        E.UNREACHABLE: "The harmonize daemon does not answer ({detail}). Restart it: "
        "`harmonize stop`, then run this filter again (it starts a new one).",
        E.UNSUPPORTED_VERSION: "The plugin and the daemon do not match ({detail}). Update "
        "both: `pip install <path to an up-to-date clone of harmonize>`, then `harmonize "
        'install-plugin` again (README, "Install").',
        E.OUT_OF_MEMORY: "The daemon ran out of memory ({detail}). Harmonize a smaller layer "
        "or selection, close other programs, or run the daemon on the CPU "
        "(`harmonize serve --device cpu`).",
        E.EMPTY_MASK: "Nothing to harmonize: the layer is fully transparent inside the "
        "selection. Select the pasted object (or Select ▸ None) and try again.",
        E.UNAUTHORIZED: "The daemon refused the plugin's token ({detail}). Stop it "
        "(`harmonize stop`) and run this filter again.",
        E.NOT_AUTHENTIC: "The program at the daemon's address could not prove it is your "
        "harmonize daemon, so no pixels were sent to it ({detail}). Run `harmonize stop`, then "
        "this filter again.",
        E.UNSAFE_RUNTIME_DIR: "The harmonize runtime folder is not private to you, so the "
        "plugin will not use it: {detail}.",
        E.BUSY: "The daemon is busy with other jobs. Wait a moment and try again.",
        E.TOO_LARGE: "The layer is too large for the daemon ({detail}). Harmonize a smaller "
        "layer or selection, or raise the daemon's limit.",
        E.CANCELLED: "Cancelled.",
        E.SHUTTING_DOWN: "The daemon was stopping. Run this filter again to start a new one.",
    }
    if code in advice:
        return advice[code].format(detail=detail)
    if isinstance(exc, FileNotFoundError):
        return f"The harmonize daemon is not installed ({exc}). {INSTALL_HINT}"
    if isinstance(exc, MemoryError):
        return "Out of memory while preparing the layer: harmonize a smaller layer or selection."
    if code is not None:
        return f"The harmonize daemon reported an error: {detail} [{code}]. See its log file."
    return f"Harmonize failed: {type(exc).__name__}: {exc}"


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
        client_module: :mod:`layer_harmonizer.client` replacement (tests).

    Raises:
        PluginError: with a message for the user (see :func:`explain`).
    """
    if not 0.0 <= strength <= 1.0:
        raise PluginError(f"Strength must be between 0 and 1; got {strength}.")
    settings = settings or Settings()
    client = client_module or _client_module()
    shape, size = (height, width), width * height * fmt.channel_bytes
    for name, data, channels in (("layer", layer, 4), ("mask", mask, 1), ("backdrop", backdrop, 3)):
        if len(data) != size * channels:
            raise PluginError(
                f"Internal error: the {name} has {len(data)} bytes, expected {size * channels} "
                f"for {width} x {height} x {channels} {fmt.dtype}."
            )

    def progress(body: dict[str, Any]) -> None:
        stage = str(body.get("stage", ""))
        if on_progress is not None and stage in PROGRESS:
            on_progress(PROGRESS[stage], stage)

    path = endpoint_file(settings)
    os.environ.setdefault("HARMONIZE_RUNTIME_DIR", str(path.parent))  # an auto-started daemon
    try:
        found = _running_client(client, path, settings)
        daemon = found or client.ensure_daemon(
            command=serve_command(settings),
            args=settings.serve_args,
            endpoint_file=path,
            timeout=settings.timeout,
        )
        with daemon:
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


def _running_client(client: Any, path: Path, settings: Settings) -> Any:
    """A client of an already running daemon, or None (then :func:`harmonize` starts one)."""
    try:
        found = client.Client.from_endpoint_file(path, timeout=settings.timeout, retries=2)
    except client.DaemonError:
        return None
    try:
        found.ping(timeout=2.0, retries=0)
    except client.DaemonError:
        found.close()
        return None
    return found


def progress_text(stage: str) -> str:
    return {
        "received": "Harmonize: queued…",
        "composed": "Harmonize: predicting colours…",
        "predicted": "Harmonize: applying colours…",
        "applied": "Harmonize: done",
    }.get(stage, "Harmonize…")


def daemon_status(settings: Settings | None = None, *, client_module: Any = None) -> str:
    """One line for a host's status display: the running daemon (version, device, variant),
    "not running", or why it cannot be reached. Never raises; pings with a short timeout.

    Args:
        client_module: :mod:`layer_harmonizer.client` replacement (tests).
    """
    settings = settings or Settings()
    try:
        client = client_module or _client_module()
        path = endpoint_file(settings)
        with client.Client.from_endpoint_file(path, timeout=1.5, retries=0) as daemon:
            info = daemon.ping(timeout=1.5, retries=0)
    except PluginError as exc:
        return str(exc)
    except Exception as exc:
        if getattr(exc, "code", None) == P.ErrorCode.NO_DAEMON:
            return "Daemon not running (it starts on the first Harmonize)."
        return f"Daemon not answering: {getattr(exc, 'message', None) or exc}"
    return (
        f"Connected: harmonize {info.get('server_version', '?')} on "
        f"{info.get('device', '?')} ({info.get('variant', '?')})"
    )

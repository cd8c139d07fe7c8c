"""What the plug-ins' "Copy diagnostics" and "Open log" buttons do, apart from the host's own
clipboard and file opener.

- :func:`diagnostics_text`: the installed backend's ``harmonize diagnose`` output (the plug-in
  settings say which executable) followed by what the plug-in itself knows (its version, the
  host and its Python, the settings, the error shown), redacted (:mod:`.redact`). When the
  backend cannot be run, its section says why in one line and the rest still comes.
- :func:`log_file`: the daemon's log file (a ``--log-file`` in the settings' serve
  arguments, else the one ``harmonize diagnose --log-path`` names).

Only the standard library is imported up front (a host whose Python lacks msgpack still gets
its diagnostics); :mod:`.host_side` is imported when the backend is looked up.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import about, discovery
from .redact import one_line, redact

DIAGNOSE_TIMEOUT = 120.0
"""Seconds ``harmonize diagnose`` may take (it imports torch and picks a LUT backend)."""
LOG_PATH_TIMEOUT = 30.0
SETTINGS_FILE = "settings.json"
HEADER = (
    "Harmonize diagnostics: paste this into the bug report. Tokens, keys, user names and "
    "home folders are replaced by placeholders."
)

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def read_settings(plugin_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], str | None]:
    """``settings.json`` of the plug-in folder as a dict, and why it could not be read (None
    when it was, or when there is none: the defaults apply)."""
    path = Path(plugin_dir) / SETTINGS_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as exc:
        return {}, f"unreadable {path}: {exc}"
    if not isinstance(raw, dict):
        return {}, f"{path} is not a JSON object"
    return raw, None


def backend_command(settings: dict[str, Any], verb: str) -> list[str]:
    """The installed ``harmonize`` command (as the plug-in starts the daemon) running ``verb``.

    Raises:
        PluginError: harmonize is not installed where the settings say, nor on PATH.
        ImportError: the host's Python lacks msgpack (needed by :mod:`.host_side`).
    """
    from .host_side import Settings, serve_command

    command = serve_command(Settings.from_dict(settings))
    if command and command[-1] == "serve":
        command = command[:-1]
    return [*command, verb]


def _option(args: list[Any], name: str) -> str | None:
    """The value of ``name`` in ``args`` (``--name VALUE`` or ``--name=VALUE``), else None."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return str(args[i + 1])
        if isinstance(arg, str) and arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _environment(settings: dict[str, Any]) -> dict[str, str]:
    """The backend's environment: this one, with the plug-in's runtime dir."""
    env = dict(os.environ)
    runtime = settings.get("runtime_dir")
    if isinstance(runtime, str) and runtime and discovery.ENV not in env:
        env[discovery.ENV] = runtime
    return env


def _run(command: list[str], settings: dict[str, Any], run: Runner | None, timeout: float) -> str:
    """``command``'s standard output; RuntimeError with one line when it fails. ``run``:
    :func:`subprocess.run` (None) or a replacement (tests)."""
    run = run or subprocess.run
    try:
        proc = run(
            command, capture_output=True, text=True, timeout=timeout,
            env=_environment(settings), stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`{' '.join(command)}` did not finish in {timeout:.0f} s") from None
    except OSError as exc:
        raise RuntimeError(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        last = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"`{' '.join(command)}` failed (exit {proc.returncode}): {last[0]}")
    return proc.stdout


def backend_diagnostics(
    settings: dict[str, Any], *, run: Runner | None = None, timeout: float = DIAGNOSE_TIMEOUT
) -> str:
    """``harmonize diagnose`` of the installed backend (already redacted by it).

    Raises:
        Exception: anything that stopped it (not installed, msgpack missing, failed, timed
            out), to be shown as one line.
    """
    command = backend_command(settings, "diagnose")
    log = _option(list(settings.get("serve_args") or []), "--log-file")
    return _run([*command, *(["--log-file", log] if log else [])], settings, run, timeout)


def plugin_section(
    plugin_dir: str | os.PathLike[str],
    host: str,
    error: str | None,
    settings: dict[str, Any],
    settings_error: str | None,
) -> str:
    """What the plug-in knows: its version and folder, the host, its Python, the settings and
    the error shown (not redacted yet)."""
    lines = [
        "[plug-in]",
        f"plug-in:       Harmonize Layer {about.version()} in {Path(plugin_dir)}",
        f"host:          {host}",
        f"host Python:   {sys.version.split()[0]} ({platform.platform()})",
        f"licence:       {about.LICENCE}",
        "settings:      "
        + (settings_error or (json.dumps(settings, sort_keys=True) if settings else "defaults")),
        f"error shown:   {error or 'none'}",
    ]
    return "\n".join(lines)


def diagnostics_text(
    plugin_dir: str | os.PathLike[str],
    host: str,
    error: str | None = None,
    *,
    run: Runner | None = None,
    timeout: float = DIAGNOSE_TIMEOUT,
) -> str:
    """The text "Copy diagnostics" puts on the clipboard; never raises.

    Args:
        plugin_dir: the plug-in's folder (holds ``settings.json``).
        host: the host application and its version, e.g. ``"Krita 5.2.9"``.
        error: the message the user was shown, if any.
        run: :func:`subprocess.run` replacement (tests).
    """
    settings, settings_error = read_settings(plugin_dir)
    try:
        backend = backend_diagnostics(settings, run=run, timeout=timeout).rstrip()
    except Exception as exc:
        backend = redact(f"[backend]\nnot available: {one_line(exc, with_type=False)}")
    mine = redact(plugin_section(plugin_dir, host, error, settings, settings_error))
    return f"{HEADER}\n\n{mine}\n\n{backend}\n"


def log_file(
    plugin_dir: str | os.PathLike[str],
    *,
    run: Runner | None = None,
    timeout: float = LOG_PATH_TIMEOUT,
) -> Path:
    """The daemon's log file, which exists (what "Open log" opens).

    Raises:
        PluginError: with a message for the user (none yet, backend not installed...).
    """
    from .host_messages import PluginError

    settings, settings_error = read_settings(plugin_dir)
    if settings_error:
        raise PluginError(f"The plug-in's {settings_error}. Run `harmonize install-plugin` again.")
    explicit = _option(list(settings.get("serve_args") or []), "--log-file")
    if explicit:
        path = Path(explicit).expanduser()
    else:
        try:
            command = [*backend_command(settings, "diagnose"), "--log-path"]
            out = _run(command, settings, run, timeout)
        except RuntimeError as exc:
            raise PluginError(f"Cannot find the daemon's log: {exc}.") from None
        path = Path(out.strip().splitlines()[-1])
    if not path.is_file():
        raise PluginError(
            f"There is no daemon log yet ({path}): the daemon has not run. It starts on the "
            "first Harmonize Layer."
        )
    return path

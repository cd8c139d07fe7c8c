"""The plug-ins' settings: what ``harmonize install-plugin`` wrote into the plugin folder
(``settings.json``: how to start the daemon, where its endpoint file is, timeouts) and the
endpoint file they point to. Re-exported by :mod:`.host_side`.

Standard library only, like all of :mod:`layer_harmonizer.wire`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .discovery import endpoint_path
from .host_messages import PluginError

SETTINGS_FILE = "settings.json"
"""Written by ``harmonize install-plugin`` into the plugin folder; read by the plugin."""
DEFAULT_STRENGTH = 1.0
DAEMON_TIMEOUT = 60.0
"""Seconds of silence from the daemon (progress events count as life) before retrying."""


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

"""A systemd user unit for the daemon (``harmonize install-service``), Linux only.

The unit runs ``harmonize serve`` in the foreground as ``Type=notify`` (the daemon sends
``READY=1`` once its endpoint file is written) and restarts it on failure::

    harmonize install-service --enable      # writes the unit, then systemctl --user enable --now
    loginctl enable-linger $USER            # optional: keep it running without a login session
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

UNIT_NAME = "harmonize.service"


def unit_dir() -> Path:
    """``$XDG_CONFIG_HOME/systemd/user`` (default ``~/.config/systemd/user``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def unit_text(serve_args: Sequence[str] = (), python: str | None = None) -> str:
    """The unit file: this interpreter runs ``-m layer_harmonizer serve`` with ``serve_args``."""
    command = [python or sys.executable, "-m", "layer_harmonizer", "serve", *serve_args]
    return (
        "[Unit]\n"
        "Description=harmonize daemon (image harmonization for GIMP and Krita)\n"
        "\n"
        "[Service]\n"
        "Type=notify\n"
        f"ExecStart={shlex.join(command)}\n"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        "TimeoutStopSec=40\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def install(serve_args: Sequence[str] = (), *, enable: bool = False) -> Path:
    """Write the unit file (replacing an older one); with ``enable``, start it now."""
    path = unit_dir() / UNIT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(unit_text(serve_args), encoding="utf-8")
    if enable:
        for cmd in (
            ["systemctl", "--user", "daemon-reload"],
            ["systemctl", "--user", "enable", "--now", UNIT_NAME],
        ):
            subprocess.run(cmd, check=True)
    return path

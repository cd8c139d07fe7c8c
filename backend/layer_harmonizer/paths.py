"""Where the tool keeps its files (platformdirs locations, each overridable by environment).

========== =============================== ==============================================
what       default (Linux)                  override
========== =============================== ==============================================
weights    ~/.local/share/harmonize/weights $HARMONIZE_DATA_DIR/weights
cache      ~/.cache/harmonize               $HARMONIZE_CACHE_DIR (compiled kernels)
logs       ~/.local/state/harmonize/log     $HARMONIZE_LOG_DIR
config     ~/.config/harmonize              $HARMONIZE_CONFIG_DIR
runtime    $XDG_RUNTIME_DIR/harmonize       $HARMONIZE_RUNTIME_DIR (socket, endpoint file)
========== =============================== ==============================================

The runtime directory follows :mod:`.wire.discovery` (shared with the plug-ins), not platformdirs:
without ``$XDG_RUNTIME_DIR`` it is ``/run/user/<uid>/harmonize`` or ``/tmp/harmonize-<uid>``.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from layer_harmonizer.wire import discovery

APP = "harmonize"


def _dir(env: str, default: str) -> Path:
    value = os.environ.get(env)
    return Path(value).expanduser() if value else Path(default)


def data_dir() -> Path:
    return _dir("HARMONIZE_DATA_DIR", platformdirs.user_data_dir(APP, appauthor=False))


def weights_dir() -> Path:
    return data_dir() / "weights"


def cache_dir() -> Path:
    return _dir("HARMONIZE_CACHE_DIR", platformdirs.user_cache_dir(APP, appauthor=False))


def log_dir() -> Path:
    return _dir("HARMONIZE_LOG_DIR", platformdirs.user_log_dir(APP, appauthor=False))


def daemon_log() -> Path:
    """The daemon's log file when ``harmonize serve`` is given no ``--log-file``."""
    return log_dir() / "daemon.log"


def config_dir() -> Path:
    return _dir("HARMONIZE_CONFIG_DIR", platformdirs.user_config_dir(APP, appauthor=False))


def runtime_dir() -> Path:
    """Where the runtime dir is (not checked: :func:`.wire.discovery.private_dir` does that)."""
    return discovery.default_runtime_dir()

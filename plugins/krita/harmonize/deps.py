"""The shared plugin modules: the installed copy in ``vendor/``, else the repository's backend.

``harmonize install-plugin krita`` (and the release zip) put ``protocol.py``, ``client.py`` and
``plugin_support.py`` into ``harmonize/vendor/`` and, where Krita's Python lacks them, pyzmq
and msgpack wheels into ``harmonize/wheels/<tag>/``. In a source checkout (unit tests,
development) the same modules come from :mod:`backend`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PLUGIN_DIR = Path(__file__).resolve().parent
WHEELS_DIR = PLUGIN_DIR / "wheels"


def wheel_tags() -> list[str]:
    """Folder names under ``wheels/`` that fit this Python, most specific first.

    ``cp311-linux_x86_64``, ``cp311-win_amd64``, ... then ``abi3-<platform>`` (pyzmq's stable-ABI
    wheels for 3.12+), then ``any`` (pure-Python packages).
    """
    import platform

    machine = platform.machine().lower()
    if sys.platform == "win32":
        plat = "win_amd64" if machine in ("amd64", "x86_64") else f"win_{machine}"
    elif sys.platform == "darwin":
        plat = "macosx"
    else:
        plat = f"linux_{machine}"
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    tags = [f"{py}-{plat}"]
    if sys.version_info >= (3, 12):
        tags.append(f"abi3-{plat}")
    return [*tags, "any"]


def add_wheels_to_path() -> list[str]:
    """Append the matching vendored wheel folders to ``sys.path`` (after the host's own
    packages, which win when present); returns the folders added."""
    added = []
    for tag in wheel_tags():
        folder = WHEELS_DIR / tag
        if folder.is_dir() and str(folder) not in sys.path:
            sys.path.append(str(folder))
            added.append(str(folder))
    return added


def _load(name: str) -> ModuleType:
    vendored = f"{__package__}.vendor"
    if __package__ and importlib.util.find_spec(vendored) is not None:
        return importlib.import_module(f"{vendored}.{name}")
    return importlib.import_module(f"backend.{name}")


def plugin_support() -> ModuleType:
    """:mod:`backend.plugin_support` (needs msgpack; pyzmq only when talking to the daemon)."""
    add_wheels_to_path()
    return _load("plugin_support")


def protocol() -> ModuleType:
    add_wheels_to_path()
    return _load("protocol")

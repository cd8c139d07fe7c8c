"""The shared plugin modules: the installed copy in ``vendor/``, else the repository's package.

``harmonize install-plugin krita`` puts a ``layer_harmonizer`` package holding the whole
``wire/`` folder (protocol, client, host side) into ``harmonize/vendor/`` and, where Krita's
Python lacks them, unpacks pyzmq and msgpack wheels there too. The release zip, which must work
with several Krita Pythons, carries the wheels per interpreter in ``harmonize/wheels/<tag>/``.
In a source checkout (unit tests, kritarunner tests) the same modules come from
:mod:`layer_harmonizer.wire` on the path.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

PLUGIN_DIR = Path(__file__).resolve().parent
VENDOR_DIR = PLUGIN_DIR / "vendor"
WHEELS_DIR = PLUGIN_DIR / "wheels"


def wheel_tags() -> list[str]:
    """Folder names under ``wheels/`` that fit this Python (:mod:`.wire.host_wheels`)."""
    _add_vendor()
    from layer_harmonizer.wire.host_wheels import wheel_tags as tags

    return tags()


def _add_vendor() -> list[str]:
    """The vendored ``layer_harmonizer`` first on ``sys.path`` (when installed)."""
    vendored = (VENDOR_DIR / "layer_harmonizer" / "__init__.py").is_file()
    if vendored and str(VENDOR_DIR) not in sys.path:
        sys.path.insert(0, str(VENDOR_DIR))
        return [str(VENDOR_DIR)]
    return []


def add_wheels_to_path() -> list[str]:
    """Put the vendored ``layer_harmonizer`` first on ``sys.path`` and append the wheel folders
    that match this Python (after the host's own packages, which win when present); returns
    the folders added."""
    vendor = _add_vendor()
    from layer_harmonizer.wire.host_wheels import add_wheel_folders

    return [*vendor, *add_wheel_folders(WHEELS_DIR)]


def host_side() -> ModuleType:
    """:mod:`layer_harmonizer.wire.host_side` (needs msgpack; pyzmq only to talk to the daemon)."""
    add_wheels_to_path()
    return importlib.import_module("layer_harmonizer.wire.host_side")


def explain(exc: BaseException) -> str:
    """A message for the user about any failure; never raises, also when the shared modules
    themselves cannot be imported (Krita's Python without msgpack or pyzmq)."""
    try:
        return str(host_side().explain(exc))
    except ImportError as missing:
        return missing_modules_message(missing)


def missing_modules_message(missing: BaseException) -> str:
    return (
        f"The Harmonize plugin cannot load its daemon client ({missing}). Krita's Python needs "
        "pyzmq and msgpack: run `harmonize install-plugin krita --deps vendor`, install the "
        "release zip (it carries them), or on Linux install python3-zmq and python3-msgpack."
    )

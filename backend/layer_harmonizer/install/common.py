"""What every installer shares: the marker, the vendored ``wire/`` package, ``settings.json``,
the plug-in sources, and the report the CLI prints.

Standard library only at import time (the CLI imports the installers for ``--help``).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from layer_harmonizer._version import __version__
from layer_harmonizer.errors import HarmonizeError

if TYPE_CHECKING:
    from layer_harmonizer.install.wheels import HostPython

PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""The installed ``layer_harmonizer`` package folder (what is vendored is copied from here)."""
MARKER = "installed-by-harmonize.json"
VENDOR = "vendor"
VENDORED_PACKAGE = "layer_harmonizer"
VENDORED = ("_version.py", "wire")
"""What of the package a plugin carries, besides an empty ``__init__``: the version and the
whole wire side (a test checks it needs nothing beyond stdlib, pyzmq, msgpack)."""


class InstallError(HarmonizeError):
    """The plugin could not be installed or uninstalled (the message says why and what to do)."""


@dataclass(frozen=True)
class PluginOptions:
    """How a plug-in folder is filled, the same for every host (``install-plugin`` options).

    Args:
        deps: ``auto`` (vendor pyzmq/msgpack only if the host's Python lacks them),
            ``host`` (trust the host's Python), ``vendor`` (always vendor).
        host_python: the host's interpreter command (default: the platform's usual one).
        python_version, platform: vendor for this Python (``"3.12"``, ``"win-amd64"``)
            without running it.
        serve_args: extra ``harmonize serve`` arguments the plugin uses when it starts the
            daemon (e.g. ``["--weights", path]``).
        wheel_dir: use these wheel files instead of downloading (offline installs).
    """

    deps: str = "auto"
    host_python: Sequence[str] | None = None
    python_version: str | None = None
    platform: str | None = None
    serve_args: Sequence[str] = ()
    wheel_dir: Path | None = None


DEFAULT_OPTIONS = PluginOptions()
"""``install-plugin`` without options: vendor only what the host's usual Python lacks."""


@dataclass
class InstallReport:
    """What an install did, for the CLI to print."""

    plugin_dir: Path
    deps: str  # "host" (host Python has them) | "vendored" | "assumed" (--deps host)
    wheels: list[str] = field(default_factory=list)
    host_python: HostPython | None = None
    notes: list[str] = field(default_factory=list)


def project_root() -> Path:
    """The checkout that holds ``plugins/`` and ``backend/layer_harmonizer/`` (in a wheel
    install: a folder without ``plugins/``, so the shipped copy is used)."""
    return PACKAGE_DIR.parents[1]


def plugin_source(host: str) -> Path:
    """``plugins/<host>/harmonize`` of a checkout, else the copy shipped in the package."""
    src = project_root() / "plugins" / host / "harmonize"
    if not src.is_dir():
        src = PACKAGE_DIR / "_plugins" / host / "harmonize"
    if not src.is_dir():
        raise InstallError(
            f"the {host} plugin's files are not in this installation (looked in {src}); "
            "install layer-harmonizer from a source checkout (pip install -e .) or its sdist"
        )
    return src


def check_replaceable(target: Path) -> None:
    """A folder that exists must carry harmonize's marker (else it is not ours to replace)."""
    if target.exists() and not (target / MARKER).is_file():
        raise InstallError(
            f"{target} exists and was not installed by harmonize; move it away first"
        )


def write_vendored_wire(vendor: Path) -> Path:
    """``vendor/layer_harmonizer/``: :data:`VENDORED` (the ``wire/`` folder whole, without
    caches) and an empty package ``__init__`` (the real one would pull in numpy/torch entry
    points); returns the package folder."""
    package = vendor / VENDORED_PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(
        f'"""harmonize {__version__}: the plugin side (vendored by install-plugin)."""\n',
        encoding="utf-8",
    )
    here = PACKAGE_DIR
    for name in VENDORED:
        if (here / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(here / name, package / name, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(here / name, package / name)
    return package


def backend_command() -> list[str]:
    """The absolute command of this installation's backend: the ``harmonize`` executable of
    the environment running the install (a pipx / ``uv tool`` venv's, a project venv's), else
    its interpreter with ``-m layer_harmonizer``. Absolute, so a host started from a desktop
    launcher, whose PATH lacks that environment, still finds it (symlinks are kept: a venv's
    ``python`` must stay the venv's)."""
    python = Path(sys.executable).absolute()
    script = python.parent / ("harmonize.exe" if sys.platform == "win32" else "harmonize")
    if script.is_file():
        return [str(script)]
    return [str(python), "-m", "layer_harmonizer"]


def settings_for_plugin(serve_args: Sequence[str] = ()) -> dict[str, object]:
    """``settings.json``: start the daemon with :func:`backend_command`; the runtime dir it
    uses."""
    from layer_harmonizer import paths
    from layer_harmonizer.wire.host_side import Settings

    settings = Settings(
        serve_command=[*backend_command(), "serve"],
        serve_args=list(serve_args),
        runtime_dir=str(paths.runtime_dir()),
    )
    return dict(settings.__dict__)


def write_plugin_files(folder: Path, host: str, serve_args: Sequence[str], deps: str) -> None:
    """``settings.json`` (:func:`settings_for_plugin`) and the marker into ``folder``."""
    (folder / "settings.json").write_text(
        json.dumps(settings_for_plugin(serve_args), indent=1), encoding="utf-8"
    )
    marker = {"host": host, "version": __version__, "deps": deps}
    (folder / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")

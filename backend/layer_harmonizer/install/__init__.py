"""``harmonize install-plugin HOST`` / ``uninstall-plugin HOST`` / ``package-plugin krita``:
put a plugin where its host application looks for it, with everything it needs to run in the
host's own Python.

A plugin folder gets:

- the plugin's own files (from ``plugins/<host>/`` of this project);
- ``vendor/layer_harmonizer/``: the :mod:`layer_harmonizer.wire` folder whole (standard
  library + pyzmq + msgpack only), ``_version.py`` and an empty package ``__init__``, so the
  plugin and the daemon share one implementation (:mod:`.common`);
- ``vendor/zmq``, ``vendor/msgpack`` unpacked from wheels for the host Python's version and
  platform, unless the host's Python already imports both (``--deps auto``, the default;
  :mod:`.wheels`);
- ``settings.json``: how to start the daemon (this interpreter) and where its endpoint file is;
- ``installed-by-harmonize.json``: the marker ``uninstall-plugin`` checks before deleting.

Per host: :mod:`.gimp`, :mod:`.krita`. Standard library only at import time (the CLI imports
this for ``--help``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from layer_harmonizer.errors import InputError
from layer_harmonizer.install.common import (
    MARKER,
    InstallError,
    InstallReport,
    PluginOptions,
    project_root,
    write_vendored_wire,
)
from layer_harmonizer.install.gimp import (
    gimp_plugin_dir,
    gimp_profile_candidates,
    install_gimp,
    uninstall_gimp,
)
from layer_harmonizer.install.krita import (
    KRITA_NAME,
    KRITA_ZIP_TARGETS,
    install_krita,
    krita_locations,
    package_krita,
    set_kritarc_enabled,
    uninstall_krita,
    wheel_tag,
)
from layer_harmonizer.install.wheels import unpack_wheels, wheel_platforms

__all__ = [
    "KRITA_NAME",
    "KRITA_ZIP_TARGETS",
    "MARKER",
    "InstallError",
    "InstallReport",
    "PluginOptions",
    "gimp_plugin_dir",
    "gimp_profile_candidates",
    "install_krita",
    "install_plugin",
    "krita_locations",
    "package_krita",
    "project_root",
    "set_kritarc_enabled",
    "uninstall_plugin",
    "unpack_wheels",
    "wheel_platforms",
    "wheel_tag",
    "write_vendored_wire",
]
HOSTS = ("gimp", "krita")


def install_plugin(
    host: str,
    *,
    plugin_dir: Path | None = None,
    host_dir: Path | None = None,
    deps: str = "auto",
    host_python: Sequence[str] | None = None,
    python_version: str | None = None,
    platform: str | None = None,
    serve_args: Sequence[str] = (),
    wheel_dir: Path | None = None,
    kritarc: Path | None = None,
) -> InstallReport:
    """Install (or replace) the plugin for ``host`` (``"gimp"`` or ``"krita"``: see
    :func:`~.krita.install_krita`, where ``host_dir`` is Krita's resource folder).

    Args:
        plugin_dir: the exact folder to install into (default: from ``host_dir``; GIMP only).
        host_dir: the host's profile folder (GIMP: ``.../GIMP/3.0``); default: found.
        kritarc: Krita's settings file (Krita only).
        deps, host_python, python_version, platform, serve_args, wheel_dir: how the folder is
            filled (:class:`~.common.PluginOptions`).
    """
    options = PluginOptions(deps, host_python, python_version, platform, serve_args, wheel_dir)
    if host == "krita":
        if plugin_dir is not None:
            raise InputError("Krita plugins live in <krita dir>/pykrita: use --krita-dir")
        return install_krita(krita_dir=host_dir, kritarc=kritarc, options=options)
    _check_host(host)
    return install_gimp(plugin_dir=plugin_dir, gimp_dir=host_dir, options=options)


def uninstall_plugin(
    host: str,
    *,
    plugin_dir: Path | None = None,
    host_dir: Path | None = None,
    kritarc: Path | None = None,
) -> Path | None:
    """Remove the plugin folder harmonize installed; returns it, or None if there was none.

    A folder without harmonize's marker file is left alone (InstallError).
    """
    if host == "krita":
        return uninstall_krita(krita_dir=host_dir, kritarc=kritarc)
    _check_host(host)
    return uninstall_gimp(plugin_dir=plugin_dir, gimp_dir=host_dir)


def _check_host(host: str) -> None:
    if host not in HOSTS:
        raise InputError(f"unknown plugin host {host!r}; known: {', '.join(HOSTS)}")

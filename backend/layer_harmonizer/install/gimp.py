"""``harmonize install-plugin gimp``: the plug-in folder in a GIMP 3 profile
(``<profile>/plug-ins/harmonize/``), staged beside it and swapped in at once."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from layer_harmonizer.install.common import (
    DEFAULT_OPTIONS,
    VENDOR,
    InstallReport,
    PluginOptions,
    check_replaceable,
    plugin_source,
    write_vendored_wire,
)
from layer_harmonizer.install.wheels import finish_plugin_folder, resolve_deps


def gimp_profile_candidates() -> list[Path]:
    """GIMP 3 profile folders on this platform, most likely first (native, then Flatpak)."""
    home = Path.home()
    if sys.platform == "win32":
        appdata = os.environ.get("APPDATA") or str(home / "AppData" / "Roaming")
        return [Path(appdata) / "GIMP" / "3.0"]
    if sys.platform == "darwin":
        return [home / "Library" / "Application Support" / "GIMP" / "3.0"]
    config = os.environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    return [
        Path(config) / "GIMP" / "3.0",
        home / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP" / "3.0",
        home / "snap" / "gimp" / "current" / ".config" / "GIMP" / "3.0",
    ]


def gimp_plugin_dir(gimp_dir: Path | None = None) -> Path:
    """``<GIMP profile>/plug-ins/harmonize``; ``gimp_dir`` is the profile (``.../GIMP/3.0``).

    Without ``gimp_dir``: the first existing candidate profile, else the native default
    (GIMP creates the profile on its first start; the folder is made for it).
    """
    if gimp_dir is not None:
        return Path(gimp_dir).expanduser() / "plug-ins" / "harmonize"
    candidates = gimp_profile_candidates()
    profile = next((c for c in candidates if c.is_dir()), candidates[0])
    return profile / "plug-ins" / "harmonize"


def default_gimp_python() -> list[str]:
    """The interpreter GIMP 3 runs Python plug-ins with on this platform (best guess)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("PROGRAMFILES", r"C:\Program Files"))
        return [str(base / "GIMP 3" / "bin" / "python.exe")]
    if sys.platform == "darwin":
        return ["/Applications/GIMP.app/Contents/MacOS/python3"]
    if "/.var/app/org.gimp.GIMP/" in str(gimp_plugin_dir()):
        return ["flatpak", "run", "--command=python3", "org.gimp.GIMP"]
    return ["/usr/bin/python3"]  # GIMP runs `python3` from PATH; distros ship it there


def install_gimp(
    *,
    plugin_dir: Path | None = None,
    gimp_dir: Path | None = None,
    options: PluginOptions = DEFAULT_OPTIONS,
) -> InstallReport:
    """Install (or replace) the GIMP plug-in: into ``plugin_dir``, else the plug-ins folder of
    the profile ``gimp_dir`` (default: found), filled as ``options`` say."""
    source = plugin_source("gimp")
    target = Path(plugin_dir) if plugin_dir else gimp_plugin_dir(gimp_dir)
    check_replaceable(target)
    mode, probed = resolve_deps(options, default_gimp_python())
    report = InstallReport(target, mode, host_python=probed)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".harmonize-", dir=target.parent))
    try:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(source, staging, dirs_exist_ok=True, ignore=ignore)
        (staging / "harmonize.py").chmod(0o755)  # GIMP runs it by its shebang
        write_vendored_wire(staging / VENDOR)
        finish_plugin_folder(staging, "gimp", report, options)
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if mode == "assumed":
        report.notes.append("pyzmq and msgpack are expected in the host's own Python")
    return report


def uninstall_gimp(*, plugin_dir: Path | None = None, gimp_dir: Path | None = None) -> Path | None:
    """Remove the GIMP plug-in folder harmonize installed; returns it, or None if there was
    none. A folder without harmonize's marker file is left alone (InstallError)."""
    target = Path(plugin_dir) if plugin_dir else gimp_plugin_dir(gimp_dir)
    if not target.exists():
        return None
    check_replaceable(target)
    shutil.rmtree(target)
    return target

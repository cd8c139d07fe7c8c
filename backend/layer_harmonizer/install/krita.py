"""``harmonize install-plugin krita`` and ``package-plugin krita``: the plug-in in Krita's
resource folder, enabled in ``kritarc``, or as the zip for Tools > Scripts > Import Python
Plugin from File (with wheels per Krita Python)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
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
from layer_harmonizer.install.wheels import (
    download_wheels,
    finish_plugin_folder,
    resolve_deps,
    unpack_wheels,
    wheel_platforms,
)

KRITA_NAME = "harmonize"
KRITA_ZIP_TARGETS: tuple[tuple[str, str], ...] = (
    ("3.10", "win-amd64"),  # Krita 5.2 for Windows (bundled Python 3.10)
    ("3.10", "linux-x86_64"),  # Krita 5.2 AppImage (bundled Python 3.10)
    ("3.11", "linux-x86_64"),  # Debian 12 (Krita 5.1)
    ("3.12", "linux-x86_64"),  # Ubuntu 24.04
    ("3.13", "linux-x86_64"),  # Debian 13 (Krita 5.2)
    ("3.10", "macosx-10.15-universal2"),  # Krita 5.2 for macOS
)
"""(Python, platform) pairs the release zip carries pyzmq + msgpack wheels for."""


def krita_locations(
    home: Path | None = None, env: dict[str, str] | None = None, system: str = sys.platform
) -> tuple[Path, Path]:
    """Krita's resource folder (it holds ``pykrita/`` and ``actions/``) and its ``kritarc``.

    Linux (also the AppImage): ``$XDG_DATA_HOME/krita`` (``~/.local/share/krita``) and
    ``$XDG_CONFIG_HOME/kritarc``; Windows: ``%APPDATA%\\krita`` and ``%LOCALAPPDATA%\\kritarc``;
    macOS: ``~/Library/Application Support/krita`` and ``~/Library/Preferences/kritarc``. The
    Flatpak keeps both under ``~/.var/app/org.kde.krita/`` (pass ``--krita-dir``/``--kritarc``).
    """
    env = dict(os.environ) if env is None else env
    home = Path(home) if home is not None else Path.home()
    if system == "win32":
        roaming = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
        local = Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return roaming / "krita", local / "kritarc"
    if system == "darwin":
        support = home / "Library" / "Application Support" / "krita"
        return support, home / "Library" / "Preferences" / "kritarc"
    data = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
    config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    return data / "krita", config / "kritarc"


def default_krita_python() -> tuple[list[str] | None, str | None, str | None]:
    """``(interpreter to probe, python_version, platform)`` for this platform's usual Krita.

    Distribution builds on Linux embed the system ``/usr/bin/python3`` (probed); Krita for
    Windows and macOS, and the AppImage, bundle Python 3.10 without pyzmq (not probeable).
    """
    if sys.platform == "win32":
        return None, "3.10", "win-amd64"
    if sys.platform == "darwin":
        return None, "3.10", "macosx-10.15-universal2"
    return ["/usr/bin/python3"], None, None


def set_kritarc_enabled(kritarc: Path, name: str = KRITA_NAME, enabled: bool = True) -> None:
    """Set ``enable_<name>=true|false`` in the ``[python]`` group of ``kritarc``.

    Only that line changes (every other line is kept as it was); the file is created when
    missing. Krita rewrites kritarc when it quits, so it must be closed while installing.
    """
    from layer_harmonizer.fileutil import atomic_open

    key, value = f"enable_{name}", "true" if enabled else "false"
    try:
        lines = kritarc.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    out: list[str] = []
    in_python = done = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if in_python and not done:
                out.append(f"{key}={value}")
                done = True
            in_python = stripped == "[python]"
        elif in_python and stripped.split("=", 1)[0].strip() == key:
            if not done:
                out.append(f"{key}={value}")
                done = True
            continue
        out.append(line)
    if not done:
        if not in_python:
            if out and out[-1].strip():
                out.append("")
            out.append("[python]")
        out.append(f"{key}={value}")
    kritarc.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(kritarc) as fh:
        fh.write(("\n".join(out) + "\n").encode("utf-8"))


def _stage_krita(staging: Path) -> Path:
    """``staging/pykrita/harmonize{/,.desktop}`` + ``staging/actions/harmonize.action`` with the
    vendored wire package; returns the package folder."""
    source = plugin_source("krita")
    package = staging / "pykrita" / KRITA_NAME
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", VENDOR, "wheels", "settings.json")
    shutil.copytree(source, package, ignore=ignore)
    shutil.copy2(source.parent / f"{KRITA_NAME}.desktop", staging / "pykrita")
    (staging / "actions").mkdir(parents=True, exist_ok=True)
    shutil.copy2(source.parent / f"{KRITA_NAME}.action", staging / "actions")
    write_vendored_wire(package / VENDOR)
    return package


def install_krita(
    *,
    krita_dir: Path | None = None,
    kritarc: Path | None = None,
    options: PluginOptions = DEFAULT_OPTIONS,
) -> InstallReport:
    """``harmonize install-plugin krita``: the plugin into Krita's resource folder
    (``pykrita/harmonize/``, ``pykrita/harmonize.desktop``, ``actions/harmonize.action``),
    enabled in ``kritarc``, with ``settings.json`` saying how to start the daemon.

    ``krita_dir`` is the resource folder and ``kritarc`` Krita's settings file (defaults:
    :func:`krita_locations`); the folder is filled as ``options`` say. Close Krita first.
    """
    default_dir, default_rc = krita_locations()
    resources = Path(krita_dir) if krita_dir else default_dir
    rc = Path(kritarc) if kritarc else default_rc
    target = resources / "pykrita" / KRITA_NAME
    check_replaceable(target)
    probe, default_version, default_platform = default_krita_python()
    if not options.host_python:  # no interpreter named: Krita's usual version and platform
        options = dataclasses.replace(
            options,
            python_version=options.python_version or default_version,
            platform=options.platform or default_platform,
        )
    mode, probed = resolve_deps(options, probe or [])
    report = InstallReport(target, mode, host_python=probed)
    with tempfile.TemporaryDirectory() as tmp:
        package = _stage_krita(Path(tmp))
        finish_plugin_folder(package, "krita", report, options)
        for folder in ("pykrita", "actions"):
            (resources / folder).mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(package, target)
        for rel in (f"pykrita/{KRITA_NAME}.desktop", f"actions/{KRITA_NAME}.action"):
            shutil.copy2(Path(tmp) / rel, resources / rel)
    set_kritarc_enabled(rc)
    report.notes.append(f"enabled in {rc} (Settings > Configure Krita > Python Plugin Manager)")
    if mode == "assumed":
        report.notes.append("pyzmq and msgpack are expected in Krita's own Python")
    return report


def uninstall_krita(*, krita_dir: Path | None = None, kritarc: Path | None = None) -> Path | None:
    """Remove what :func:`install_krita` wrote and disable the plugin in kritarc; returns the
    plugin folder, or None when none was installed. A folder harmonize did not install is
    left alone (InstallError)."""
    default_dir, default_rc = krita_locations()
    resources = Path(krita_dir) if krita_dir else default_dir
    target = resources / "pykrita" / KRITA_NAME
    if not target.exists():
        return None
    check_replaceable(target)
    shutil.rmtree(target)
    for rel in (f"pykrita/{KRITA_NAME}.desktop", f"actions/{KRITA_NAME}.action"):
        (resources / rel).unlink(missing_ok=True)
    rc = Path(kritarc) if kritarc else default_rc
    if rc.exists():
        set_kritarc_enabled(rc, enabled=False)
    return target


def wheel_tag(python_version: str, platform: str) -> str:
    """The folder name the Krita plugin looks for its wheels under (``cp310-win_amd64``,
    ``cp311-linux_x86_64``, ``cp310-macosx``); see ``plugins/krita/harmonize/deps.py``."""
    plat = platform.replace("-", "_").replace(".", "_")
    if plat.startswith("macosx"):
        plat = "macosx"
    return "cp" + python_version.replace(".", "") + "-" + plat


def wheels_per_target(
    dest: Path,
    targets: Sequence[tuple[str, str]],
    wheel_dirs: dict[str, Path] | None,
    downloads: Path,
) -> None:
    """pyzmq + msgpack unpacked into ``dest/<tag>/`` for every (Python, platform) of
    ``targets`` (:func:`wheel_tag`), from ``wheel_dirs[tag]`` when given, else downloaded into
    ``downloads``; what a release archive carries (the plug-ins pick their folder with
    :mod:`layer_harmonizer.wire.host_wheels`)."""
    for version, platform in targets:
        tag = wheel_tag(version, platform)
        if wheel_dirs is not None and tag in wheel_dirs:
            wheels = sorted(Path(wheel_dirs[tag]).glob("*.whl"))
        else:
            wheels = download_wheels(downloads / tag, version, wheel_platforms(platform))
        unpack_wheels(wheels, dest / tag)


def package_krita(
    output: Path,
    *,
    targets: Sequence[tuple[str, str]] = KRITA_ZIP_TARGETS,
    wheel_dirs: dict[str, Path] | None = None,
) -> Path:
    """The zip for Krita's Tools > Scripts > Import Python Plugin from File.

    Top level: ``harmonize.desktop``, ``harmonize.action`` and ``harmonize/`` (directory
    entries included: Krita's importer looks for ``harmonize/`` and its ``__init__.py``), with
    the vendored wire package in ``harmonize/vendor/layer_harmonizer/`` and pyzmq + msgpack
    unpacked per interpreter in ``harmonize/wheels/<tag>/`` for every (Python, platform) in
    ``targets``.

    Args:
        wheel_dirs: ``{tag: folder of .whl files}`` to use instead of downloading (offline).
    """
    output = Path(output)
    with tempfile.TemporaryDirectory() as tmp:
        package = _stage_krita(Path(tmp) / "stage")
        wheels_per_target(package / "wheels", targets, wheel_dirs, Path(tmp) / "downloads")
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.name + ".partial")
        pykrita = package.parent
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(pykrita / f"{KRITA_NAME}.desktop", f"{KRITA_NAME}.desktop")
            action = pykrita.parent / "actions" / f"{KRITA_NAME}.action"
            archive.write(action, f"{KRITA_NAME}.action")
            archive.writestr(f"{KRITA_NAME}/", "")
            for path in sorted(package.rglob("*")):
                name = path.relative_to(pykrita).as_posix()
                archive.write(path, name + "/" if path.is_dir() else name)
        partial.replace(output)
    return output

"""``harmonize install-plugin HOST`` / ``uninstall-plugin HOST``: put a plugin where its host
application looks for it, with everything it needs to run in the host's own Python.

A plugin folder gets:

- the plugin's own files (from ``plugins/<host>/`` of this project);
- ``vendor/backend/``: :mod:`backend.plugin_support`, :mod:`backend.client`,
  :mod:`backend.protocol` and ``_version`` (standard library + pyzmq + msgpack only), so the
  plugin and the daemon share one implementation;
- ``vendor/zmq``, ``vendor/msgpack`` unpacked from wheels for the host Python's version and
  platform, unless the host's Python already imports both (``--deps auto``, the default);
- ``settings.json``: how to start the daemon (this interpreter) and where its endpoint file is;
- ``installed-by-harmonize.json``: the marker ``uninstall-plugin`` checks before deleting.

Standard library only at import time (the CLI imports this for ``--help``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from backend._version import __version__
from backend.errors import HarmonizeError, InputError

MARKER = "installed-by-harmonize.json"
VENDOR = "vendor"
VENDORED_MODULES = ("_version.py", "protocol.py", "client.py", "plugin_support.py")
"""backend modules a plugin carries (checked to need nothing beyond stdlib, pyzmq, msgpack)."""
WHEELS = ("pyzmq", "msgpack")
IMPORT_NAMES = {"pyzmq": "zmq", "msgpack": "msgpack"}
DEPS_MODES = ("auto", "host", "vendor")
PROBE = (
    "import json, sys, sysconfig\n"
    "def has(m):\n"
    "    try:\n"
    "        __import__(m)\n"
    "        return True\n"
    "    except Exception:\n"
    "        return False\n"
    "print(json.dumps({'version': '%d.%d' % sys.version_info[:2], "
    "'platform': sysconfig.get_platform(), 'zmq': has('zmq'), 'msgpack': has('msgpack')}))\n"
)


class InstallError(HarmonizeError):
    """The plugin could not be installed or uninstalled (the message says why and what to do)."""


@dataclass
class HostPython:
    """What the host application's Python is: ``version`` ``"3.13"``, ``platform`` as
    ``sysconfig.get_platform()`` (``"linux-x86_64"``, ``"win-amd64"``, ``"macosx-11.0-arm64"``)."""

    version: str
    platform: str
    has_zmq: bool = False
    has_msgpack: bool = False


@dataclass
class InstallReport:
    """What an install did, for the CLI to print."""

    plugin_dir: Path
    deps: str  # "host" (host Python has them) | "vendored" | "assumed" (--deps host)
    wheels: list[str] = field(default_factory=list)
    host_python: HostPython | None = None
    notes: list[str] = field(default_factory=list)


# ---- where things are -------------------------------------------------------------------------


def project_root() -> Path:
    """The checkout (or installed tree) that holds ``plugins/``."""
    return Path(__file__).resolve().parents[1]


def plugin_source(host: str) -> Path:
    """``plugins/<host>/<name>`` of this project; InstallError if this install lacks it."""
    src = project_root() / "plugins" / host / "harmonize"
    if not src.is_dir():
        raise InstallError(
            f"the {host} plugin's files are not in this installation (looked in {src}); "
            "install harmonize from a source checkout (pip install -e .) or its sdist"
        )
    return src


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


# ---- the host's Python ------------------------------------------------------------------------


def probe_python(command: Sequence[str], timeout: float = 60.0) -> HostPython | None:
    """Ask the interpreter ``command`` for its version, platform and pyzmq/msgpack; None if it
    cannot be run."""
    try:
        proc = subprocess.run(
            [*command, "-c", PROBE], capture_output=True, text=True, timeout=timeout, check=False
        )
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        return HostPython(info["version"], info["platform"], info["zmq"], info["msgpack"])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError, KeyError):
        return None


def wheel_platforms(platform: str) -> list[str]:
    """pip ``--platform`` tags for a ``sysconfig.get_platform()`` string."""
    plat = platform.replace("-", "_").replace(".", "_")
    if plat.startswith("linux_"):
        arch = plat.removeprefix("linux_")
        return [f"manylinux_2_28_{arch}", f"manylinux_2_17_{arch}", f"manylinux2014_{arch}"]
    if plat in ("win_amd64", "win32", "win_arm64"):
        return [plat]
    if plat.startswith("macosx_"):
        parts = plat.split("_")  # macosx, major, minor, arch
        arch = parts[-1]
        return [plat, f"macosx_11_0_{arch}", "macosx_10_15_universal2", "macosx_10_9_universal2"]
    raise InstallError(f"no wheel platform tags known for {platform!r}; use --platform")


def download_wheels(
    dest: Path, python_version: str, platforms: Sequence[str], packages: Sequence[str] = WHEELS
) -> list[Path]:
    """``pip download`` binary wheels of ``packages`` for another interpreter into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--dest", str(dest)]  # fmt: skip
    for plat in platforms:
        cmd += ["--platform", plat]
    proc = subprocess.run([*cmd, *packages], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise InstallError(
            f"could not download {', '.join(packages)} wheels for Python {python_version} on "
            f"{', '.join(platforms)}: {tail}\nInstall them into the host's Python instead, or "
            "pass --deps host if it already has them."
        )
    wheels = sorted(dest.glob("*.whl"))
    found = {w.name.split("-")[0].lower() for w in wheels}
    missing = [p for p in packages if p.lower() not in found]
    if missing:
        raise InstallError(f"pip downloaded no wheel for {missing} (Python {python_version})")
    return wheels


def unpack_wheels(wheels: Sequence[Path], dest: Path) -> list[str]:
    """Unzip wheels into ``dest`` (what pip would put in site-packages); returns their names.

    Refuses members that would land outside ``dest`` (absolute paths, ``..``).
    """
    root = dest.resolve()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                target = (root / member).resolve()
                if target != root and root not in target.parents:
                    raise InstallError(f"{wheel.name}: member {member!r} escapes the folder")
            zf.extractall(root)
    return [w.name for w in wheels]


# ---- install / uninstall ----------------------------------------------------------------------


def write_vendored_backend(vendor: Path) -> None:
    """``vendor/backend/``: the modules a plugin shares with the daemon, with an empty package
    ``__init__`` (the real one would pull in numpy/torch entry points)."""
    package = vendor / "backend"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(
        f'"""harmonize {__version__}: the plugin side (vendored by install-plugin)."""\n',
        encoding="utf-8",
    )
    here = Path(__file__).resolve().parent
    for name in VENDORED_MODULES:
        shutil.copy2(here / name, package / name)


def settings_for_plugin(serve_args: Sequence[str] = ()) -> dict[str, object]:
    """``settings.json``: start the daemon with this interpreter; the runtime dir it uses."""
    from backend import paths
    from backend.plugin_support import Settings

    settings = Settings(
        serve_command=[sys.executable, "-m", "backend", "serve"],
        serve_args=list(serve_args),
        runtime_dir=str(paths.runtime_dir()),
    )
    return dict(settings.__dict__)


def _resolve_deps(
    deps: str,
    host_python: Sequence[str] | None,
    python_version: str | None,
    platform: str | None,
    default_python: Sequence[str],
) -> tuple[str, HostPython | None]:
    """``(what to do: "host" | "assumed" | "vendor", probed interpreter)``."""
    if deps not in DEPS_MODES:
        raise InputError(f"--deps must be one of {', '.join(DEPS_MODES)}; got {deps!r}")
    if deps == "host":
        return "assumed", None
    probed = None
    if not (python_version and platform):
        probed = probe_python(host_python or default_python)
    if deps == "auto" and probed is not None and probed.has_zmq and probed.has_msgpack:
        return "host", probed
    if probed is None and not (python_version and platform):
        raise InstallError(
            f"cannot run the host's Python ({' '.join(host_python or default_python)}) to see "
            "which pyzmq/msgpack wheels it needs; give --host-python PATH, or --python-version "
            "X.Y and --platform (e.g. win-amd64), or --deps host if it has pyzmq and msgpack"
        )
    return "vendor", probed


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
) -> InstallReport:
    """Install (or replace) the plugin for ``host`` (``"gimp"``).

    Args:
        plugin_dir: the exact folder to install into (default: from ``host_dir``).
        host_dir: the host's profile folder (GIMP: ``.../GIMP/3.0``); default: found.
        deps: ``auto`` (vendor pyzmq/msgpack only if the host's Python lacks them),
            ``host`` (trust the host's Python), ``vendor`` (always vendor).
        host_python: the host's interpreter command (default: the platform's usual one).
        python_version, platform: vendor for this Python (``"3.12"``, ``"win-amd64"``)
            without running it.
        serve_args: extra ``harmonize serve`` arguments the plugin uses when it starts the
            daemon (e.g. ``["--weights", path]``).
        wheel_dir: use these wheel files instead of downloading (offline installs).
    """
    if host != "gimp":
        raise InputError(f"unknown plugin host {host!r}; known: gimp")
    source = plugin_source(host)
    target = Path(plugin_dir) if plugin_dir else gimp_plugin_dir(host_dir)
    _check_replaceable(target)
    mode, probed = _resolve_deps(deps, host_python, python_version, platform,
                                 default_gimp_python())  # fmt: skip
    report = InstallReport(target, "host" if mode == "host" else mode, host_python=probed)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".harmonize-", dir=target.parent))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
        (staging / "harmonize.py").chmod(0o755)  # GIMP runs it by its shebang
        vendor = staging / VENDOR
        write_vendored_backend(vendor)
        if mode == "vendor":
            version = python_version or probed.version  # type: ignore[union-attr]
            plat = platform or probed.platform  # type: ignore[union-attr]
            with tempfile.TemporaryDirectory() as tmp:
                wheels = (
                    sorted(Path(wheel_dir).glob("*.whl"))
                    if wheel_dir
                    else download_wheels(Path(tmp), version, wheel_platforms(plat))
                )
                report.wheels = unpack_wheels(wheels, vendor)
            report.deps = "vendored"
        (staging / "settings.json").write_text(
            json.dumps(settings_for_plugin(serve_args), indent=1), encoding="utf-8"
        )
        marker = {"host": host, "version": __version__, "deps": report.deps}
        (staging / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
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


def _check_replaceable(target: Path) -> None:
    if target.exists() and not (target / MARKER).is_file():
        raise InstallError(
            f"{target} exists and was not installed by harmonize; move it away first"
        )


def uninstall_plugin(
    host: str, *, plugin_dir: Path | None = None, host_dir: Path | None = None
) -> Path | None:
    """Remove the plugin folder harmonize installed; returns it, or None if there was none.

    A folder without harmonize's marker file is left alone (InstallError).
    """
    if host != "gimp":
        raise InputError(f"unknown plugin host {host!r}; known: gimp")
    target = Path(plugin_dir) if plugin_dir else gimp_plugin_dir(host_dir)
    if not target.exists():
        return None
    _check_replaceable(target)
    shutil.rmtree(target)
    return target

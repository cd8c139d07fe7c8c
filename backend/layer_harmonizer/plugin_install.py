"""``harmonize install-plugin HOST`` / ``uninstall-plugin HOST``: put a plugin where its host
application looks for it, with everything it needs to run in the host's own Python.

A plugin folder gets:

- the plugin's own files (from ``plugins/<host>/`` of this project);
- ``vendor/layer_harmonizer/``: the :mod:`layer_harmonizer.wire` folder whole (standard
  library + pyzmq + msgpack only), ``_version.py`` and an empty package ``__init__``, so the
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

from layer_harmonizer._version import __version__
from layer_harmonizer.errors import HarmonizeError, InputError

MARKER = "installed-by-harmonize.json"
VENDOR = "vendor"
VENDORED_PACKAGE = "layer_harmonizer"
VENDORED = ("_version.py", "wire")
"""What of the package a plugin carries, besides an empty ``__init__``: the version and the
whole wire side (a test checks it needs nothing beyond stdlib, pyzmq, msgpack)."""
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
    """The checkout that holds ``plugins/`` and ``backend/layer_harmonizer/`` (in a wheel
    install: a folder without ``plugins/``, so the shipped copy is used)."""
    return Path(__file__).resolve().parents[2]


def plugin_source(host: str) -> Path:
    """``plugins/<host>/harmonize`` of a checkout, else the copy shipped in the package."""
    src = project_root() / "plugins" / host / "harmonize"
    if not src.is_dir():
        src = Path(__file__).resolve().parent / "_plugins" / host / "harmonize"
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
    here = Path(__file__).resolve().parent
    for name in VENDORED:
        if (here / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(here / name, package / name, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(here / name, package / name)
    return package


def settings_for_plugin(serve_args: Sequence[str] = ()) -> dict[str, object]:
    """``settings.json``: start the daemon with this interpreter; the runtime dir it uses."""
    from layer_harmonizer import paths
    from layer_harmonizer.wire.host_side import Settings

    settings = Settings(
        serve_command=[sys.executable, "-m", "layer_harmonizer", "serve"],
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
    kritarc: Path | None = None,
) -> InstallReport:
    """Install (or replace) the plugin for ``host`` (``"gimp"`` or ``"krita"``: see
    :func:`install_krita`, where ``host_dir`` is Krita's resource folder).

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
    if host == "krita":
        if plugin_dir is not None:
            raise InputError("Krita plugins live in <krita dir>/pykrita: use --krita-dir")
        return install_krita(
            krita_dir=host_dir, kritarc=kritarc, deps=deps, host_python=host_python,
            python_version=python_version, platform=platform, serve_args=serve_args,
            wheel_dir=wheel_dir,
        )  # fmt: skip
    if host != "gimp":
        raise InputError(f"unknown plugin host {host!r}; known: gimp, krita")
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
        write_vendored_wire(vendor)
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
    if host != "gimp":
        raise InputError(f"unknown plugin host {host!r}; known: gimp, krita")
    target = Path(plugin_dir) if plugin_dir else gimp_plugin_dir(host_dir)
    if not target.exists():
        return None
    _check_replaceable(target)
    shutil.rmtree(target)
    return target


# ---- Krita ------------------------------------------------------------------------------------

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
    vendored backend; returns the package folder."""
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
    deps: str = "auto",
    host_python: Sequence[str] | None = None,
    python_version: str | None = None,
    platform: str | None = None,
    serve_args: Sequence[str] = (),
    wheel_dir: Path | None = None,
) -> InstallReport:
    """``harmonize install-plugin krita``: the plugin into Krita's resource folder
    (``pykrita/harmonize/``, ``pykrita/harmonize.desktop``, ``actions/harmonize.action``),
    enabled in ``kritarc``, with ``settings.json`` saying how to start the daemon.

    Arguments as :func:`install_plugin`; ``krita_dir`` is the resource folder and ``kritarc``
    Krita's settings file (defaults: :func:`krita_locations`). Close Krita first.
    """
    default_dir, default_rc = krita_locations()
    resources = Path(krita_dir) if krita_dir else default_dir
    rc = Path(kritarc) if kritarc else default_rc
    target = resources / "pykrita" / KRITA_NAME
    _check_replaceable(target)
    probe, default_version, default_platform = default_krita_python()
    python_version = python_version or (None if host_python else default_version)
    platform = platform or (None if host_python else default_platform)
    mode, probed = _resolve_deps(deps, host_python, python_version, platform, probe or [])
    report = InstallReport(target, "host" if mode == "host" else mode, host_python=probed)
    with tempfile.TemporaryDirectory() as tmp:
        package = _stage_krita(Path(tmp))
        if mode == "vendor":
            version = python_version or probed.version  # type: ignore[union-attr]
            plat = platform or probed.platform  # type: ignore[union-attr]
            wheels = (
                sorted(Path(wheel_dir).glob("*.whl"))
                if wheel_dir
                else download_wheels(Path(tmp) / "wheels", version, wheel_platforms(plat))
            )
            report.wheels = unpack_wheels(wheels, package / VENDOR)
            report.deps = "vendored"
        (package / "settings.json").write_text(
            json.dumps(settings_for_plugin(serve_args), indent=1), encoding="utf-8"
        )
        marker = {"host": "krita", "version": __version__, "deps": report.deps}
        (package / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
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
    _check_replaceable(target)
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


def package_krita(
    output: Path,
    *,
    targets: Sequence[tuple[str, str]] = KRITA_ZIP_TARGETS,
    wheel_dirs: dict[str, Path] | None = None,
) -> Path:
    """The zip for Krita's Tools > Scripts > Import Python Plugin from File.

    Top level: ``harmonize.desktop``, ``harmonize.action`` and ``harmonize/`` (directory
    entries included: Krita's importer looks for ``harmonize/`` and its ``__init__.py``), with
    the vendored backend in ``harmonize/vendor/layer_harmonizer/`` and pyzmq + msgpack unpacked per
    interpreter in ``harmonize/wheels/<tag>/`` for every (Python, platform) in ``targets``.

    Args:
        wheel_dirs: ``{tag: folder of .whl files}`` to use instead of downloading (offline).
    """
    output = Path(output)
    with tempfile.TemporaryDirectory() as tmp:
        package = _stage_krita(Path(tmp) / "stage")
        for version, platform in targets:
            tag = wheel_tag(version, platform)
            if wheel_dirs is not None and tag in wheel_dirs:
                wheels = sorted(Path(wheel_dirs[tag]).glob("*.whl"))
            else:
                wheels = download_wheels(
                    Path(tmp) / "downloads" / tag, version, wheel_platforms(platform)
                )
            unpack_wheels(wheels, package / "wheels" / tag)
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

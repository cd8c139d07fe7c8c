"""The host application's Python and the pyzmq + msgpack wheels a plug-in may carry: probe the
interpreter, decide what ``--deps`` means for it, download and unpack wheels for another
Python version and platform.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from layer_harmonizer.errors import InputError
from layer_harmonizer.install.common import (
    VENDOR,
    InstallError,
    InstallReport,
    PluginOptions,
    write_plugin_files,
)

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


@dataclass
class HostPython:
    """What the host application's Python is: ``version`` ``"3.13"``, ``platform`` as
    ``sysconfig.get_platform()`` (``"linux-x86_64"``, ``"win-amd64"``, ``"macosx-11.0-arm64"``)."""

    version: str
    platform: str
    has_zmq: bool = False
    has_msgpack: bool = False


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


def resolve_deps(
    options: PluginOptions, default_python: Sequence[str]
) -> tuple[str, HostPython | None]:
    """``(what to do: "host" | "assumed" | "vendor", probed interpreter)`` for ``options``;
    ``default_python`` is the host's usual interpreter, probed when ``options`` name neither
    one nor a Python version and platform."""
    deps, host_python = options.deps, options.host_python
    python_version, platform = options.python_version, options.platform
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


def vendor_wheels(dest: Path, options: PluginOptions, probed: HostPython | None) -> list[str]:
    """Unpack pyzmq + msgpack for the host's Python (``options``' version and platform, else
    the probed interpreter's) into ``dest``: from ``options.wheel_dir`` when given, else
    downloaded. Returns the wheels' names."""
    version = options.python_version or probed.version  # type: ignore[union-attr]
    plat = options.platform or probed.platform  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as tmp:
        wheels = (
            sorted(Path(options.wheel_dir).glob("*.whl"))
            if options.wheel_dir
            else download_wheels(Path(tmp), version, wheel_platforms(plat))
        )
        return unpack_wheels(wheels, dest)


def finish_plugin_folder(
    folder: Path, host: str, report: InstallReport, options: PluginOptions
) -> None:
    """The last step of staging a plug-in in ``folder``: pyzmq + msgpack unpacked into
    ``folder/vendor`` when the install vendors them (``report.deps`` ``"vendor"`` becomes
    ``"vendored"``, ``report.wheels`` their names), then ``settings.json`` and the marker."""
    if report.deps == "vendor":
        report.wheels = vendor_wheels(folder / VENDOR, options, report.host_python)
        report.deps = "vendored"
    write_plugin_files(folder, host, options.serve_args, report.deps)

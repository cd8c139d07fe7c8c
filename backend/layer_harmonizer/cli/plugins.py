"""``harmonize install-plugin``, ``uninstall-plugin`` and ``package-plugin``: the installers'
commands (:mod:`layer_harmonizer.install`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_commands(sub: Any) -> None:
    install = sub.add_parser(
        "install-plugin",
        help="install the plugin for a host application (gimp, krita)",
        description="Copy the plugin and the daemon client into the host's plug-in folder and "
        "make pyzmq + msgpack importable by the host's own Python (its packages when present, "
        "else wheels for its Python version and platform, unpacked into the plugin folder).",
    )
    install.add_argument("host", help="gimp | krita")
    install.add_argument("--gimp-dir", type=Path, help="GIMP profile folder (.../GIMP/3.0)")
    install.add_argument("--krita-dir", type=Path, help="Krita resource folder (holds pykrita)")
    install.add_argument("--kritarc", type=Path, help="Krita's settings file (to enable it)")
    install.add_argument("--plugin-dir", type=Path, help="exact folder to install into")
    install.add_argument(
        "--deps",
        default="auto",
        help="auto (vendor pyzmq/msgpack only if the host lacks them) | host | vendor",
    )
    install.add_argument("--host-python", help="the host's Python interpreter (to probe)")
    install.add_argument("--python-version", help="vendor wheels for this Python (X.Y)")
    install.add_argument("--platform", help="...and this platform (e.g. win-amd64)")
    install.add_argument("--wheel-dir", type=Path, help="use these wheels instead of PyPI")
    install.add_argument(
        "serve_args",
        nargs="*",
        help="arguments after -- go to `harmonize serve` when the "
        "plugin starts the daemon, e.g. -- --weights my.pt",
    )
    install.set_defaults(func=cmd_install_plugin)
    uninstall = sub.add_parser("uninstall-plugin", help="remove an installed plugin")
    uninstall.add_argument("host", help="gimp | krita")
    uninstall.add_argument("--gimp-dir", type=Path, help="GIMP profile folder (.../GIMP/3.0)")
    uninstall.add_argument("--krita-dir", type=Path, help="Krita resource folder")
    uninstall.add_argument("--kritarc", type=Path, help="Krita's settings file")
    uninstall.add_argument("--plugin-dir", type=Path, help="exact folder to remove")
    uninstall.set_defaults(func=cmd_uninstall_plugin)
    package = sub.add_parser(
        "package-plugin",
        help="build the Krita plugin zip (Tools > Scripts > Import Python Plugin from File)",
        description="Zip the Krita plugin with the daemon client and pyzmq + msgpack wheels "
        "for Krita's bundled Python 3.10 (Windows, macOS, AppImage) and Linux distributions' "
        "Pythons 3.11-3.13 (downloaded from PyPI unless --wheels-from has them).",
    )
    package.add_argument("host", help="krita")
    package.add_argument("-o", "--output", type=Path, default=Path("harmonize-krita.zip"))
    package.add_argument(
        "--wheels-from", type=Path, help="folder with one subfolder of .whl files per tag"
    )
    package.set_defaults(func=cmd_package_plugin)


def cmd_install_plugin(args: argparse.Namespace) -> int:
    import shlex

    from layer_harmonizer import install

    report = install.install_plugin(
        args.host,
        plugin_dir=args.plugin_dir,
        host_dir=args.krita_dir if args.host == "krita" else args.gimp_dir,
        kritarc=args.kritarc,
        deps=args.deps,
        host_python=shlex.split(args.host_python) if args.host_python else None,
        python_version=args.python_version,
        platform=args.platform,
        serve_args=args.serve_args,
        wheel_dir=args.wheel_dir,
    )
    print(f"installed the {args.host} plugin in {report.plugin_dir}")
    if report.host_python is not None:
        hp = report.host_python
        print(f"host Python: {hp.version} ({hp.platform})")
    if report.wheels:
        print(f"vendored: {', '.join(report.wheels)}")
    elif report.deps == "host":
        print("pyzmq and msgpack: the host's own")
    for note in report.notes:
        print(f"note: {note}")
    if args.host == "krita":
        print("restart Krita, then use Filter > Harmonize Layer (Ctrl+Alt+Shift+H)")
    else:
        print("restart the host application, then use Filters > Harmonize Layer...")
    return 0


def cmd_uninstall_plugin(args: argparse.Namespace) -> int:
    from layer_harmonizer import install

    path = install.uninstall_plugin(
        args.host,
        plugin_dir=args.plugin_dir,
        host_dir=args.krita_dir if args.host == "krita" else args.gimp_dir,
        kritarc=args.kritarc,
    )
    print(f"removed {path}" if path else f"no {args.host} plugin installed")
    return 0


def cmd_package_plugin(args: argparse.Namespace) -> int:
    from layer_harmonizer import install
    from layer_harmonizer.errors import InputError

    if args.host != "krita":
        raise InputError(f"package-plugin builds the Krita zip only; got {args.host!r}")
    folders = None
    if args.wheels_from is not None:
        folders = {p.name: p for p in Path(args.wheels_from).iterdir() if p.is_dir()}
    out = install.package_krita(args.output, wheel_dirs=folders)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0

"""The release artefacts in one command::

    python -m layer_harmonizer.install.release --out DIR [--wheels-from FOLDER]

- ``harmonize-krita-<version>.zip``: for Krita's Tools ▸ Scripts ▸ Import Python Plugin from
  File (:func:`~.krita.package_krita`);
- ``harmonize-gimp-<version>.zip``: one ``harmonize/`` folder to extract into the folder GIMP
  shows in Preferences ▸ Folders ▸ Plug-ins (``harmonize.py`` executable, the vendored wire
  package, pyzmq + msgpack per Python in ``wheels/<tag>/``).

Neither carries ``settings.json``: such a plug-in starts ``harmonize`` from PATH, and when there
is none its first run says exactly what to install (``host_side.INSTALL_HINT``); running
``harmonize install-plugin`` afterwards records the absolute path. Each file is written
atomically (``.partial``, then renamed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from layer_harmonizer._version import __version__
from layer_harmonizer.install.common import MARKER, VENDOR, plugin_source, write_vendored_wire
from layer_harmonizer.install.krita import KRITA_ZIP_TARGETS, package_krita, wheels_per_target

GIMP_ARCHIVE_TARGETS: tuple[tuple[str, str], ...] = (
    ("3.12", "win-amd64"),  # GIMP 3.0 for Windows
    ("3.11", "linux-x86_64"),  # Debian 12
    ("3.12", "linux-x86_64"),  # Ubuntu 24.04, the Flatpak runtime
    ("3.13", "linux-x86_64"),  # Debian 13 (GIMP 3.0.4)
)
"""(Python, platform) pairs the GIMP archive carries pyzmq + msgpack wheels for."""


def package_gimp(
    output: Path,
    *,
    targets: Sequence[tuple[str, str]] = GIMP_ARCHIVE_TARGETS,
    wheel_dirs: dict[str, Path] | None = None,
) -> Path:
    """The GIMP plug-in archive: ``harmonize/`` (directory entries included, file modes kept so
    ``harmonize.py`` stays executable) as :func:`~.gimp.install_gimp` lays it out, with wheels
    per target instead of settings, and the marker that lets ``install-plugin`` replace it.
    ``wheel_dirs``: ``{tag: folder of .whl}`` (offline)."""
    output = Path(output)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "harmonize"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", VENDOR, "wheels", "settings.json")
        shutil.copytree(plugin_source("gimp"), folder, ignore=ignore)
        (folder / "harmonize.py").chmod(0o755)  # GIMP runs it by its shebang
        write_vendored_wire(folder / VENDOR)
        wheels_per_target(folder / "wheels", targets, wheel_dirs, Path(tmp) / "downloads")
        marker = {"host": "gimp", "version": __version__, "deps": "release"}
        (folder / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
        _zip_folder(folder, output)
    return output


def _zip_folder(folder: Path, output: Path) -> None:
    """``folder`` as the top-level entry of the zip ``output``, written atomically."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(folder, folder.name + "/")
        for path in sorted(folder.rglob("*")):
            name = path.relative_to(folder.parent).as_posix()
            archive.write(path, name + "/" if path.is_dir() else name)
    partial.replace(output)


def build_release(out: Path, *, wheel_dirs: dict[str, Path] | None = None) -> list[Path]:
    """Both artefacts into ``out``; returns their paths (Krita's first)."""
    out = Path(out)
    return [
        package_krita(
            out / f"harmonize-krita-{__version__}.zip",
            targets=KRITA_ZIP_TARGETS,
            wheel_dirs=wheel_dirs,
        ),
        package_gimp(out / f"harmonize-gimp-{__version__}.zip", wheel_dirs=wheel_dirs),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m layer_harmonizer.install.release",
        description="Build the Krita zip and the GIMP plug-in archive for a release.",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the two archives")
    parser.add_argument(
        "--wheels-from", type=Path,
        help="offline: a folder with one subfolder of .whl files per tag (as package-plugin)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    from layer_harmonizer.errors import HarmonizeError

    try:
        folders = None
        if args.wheels_from is not None:
            folders = {p.name: p for p in Path(args.wheels_from).iterdir() if p.is_dir()}
        paths = build_release(args.out, wheel_dirs=folders)
    except (HarmonizeError, OSError) as exc:
        print(f"harmonize: error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

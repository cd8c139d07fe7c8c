"""The pyzmq + msgpack a release archive carries per interpreter: ``wheels/<tag>/`` beside the
plug-in, one folder per (Python, platform) unpacked from its wheels; the plug-in appends the
folders that fit the host's Python to ``sys.path`` (after the host's own packages, which win).

Standard library only, like the rest of :mod:`layer_harmonizer.wire` (vendored into the hosts).
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path


def wheel_tags() -> list[str]:
    """Folder names under ``wheels/`` that fit this Python, most specific first.

    ``cp311-linux_x86_64``, ``cp311-win_amd64``, ... then ``abi3-<platform>`` (pyzmq's stable-ABI
    wheels for 3.12+), then ``any`` (pure-Python packages).
    """
    machine = platform.machine().lower()
    if sys.platform == "win32":
        plat = "win_amd64" if machine in ("amd64", "x86_64") else f"win_{machine}"
    elif sys.platform == "darwin":
        plat = "macosx"
    else:
        plat = f"linux_{machine}"
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    tags = [f"{py}-{plat}"]
    if sys.version_info >= (3, 12):
        tags.append(f"abi3-{plat}")
    return [*tags, "any"]


def add_wheel_folders(wheels_dir: Path) -> list[str]:
    """Append the folders of ``wheels_dir`` that fit this Python to ``sys.path``; returns them."""
    added = []
    for tag in wheel_tags():
        folder = Path(wheels_dir) / tag
        if folder.is_dir() and str(folder) not in sys.path:
            sys.path.append(str(folder))
            added.append(str(folder))
    return added

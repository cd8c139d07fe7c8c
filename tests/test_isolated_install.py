"""The README's one-line install, end to end (issue 13): build the wheel, install it as an
isolated tool with pipx into a scratch prefix, offline (pip reads only local wheel sources:
this machine's torch CPU wheel and wheel index), run that tool's ``install-plugin`` into a
scratch GIMP profile, then harmonize the bundled example through the plug-in's request path in
a host Python (Debian's, as GIMP's) whose PATH is empty: only the absolute path the installer
recorded can start the daemon.

Slow (a torch install), run by CI (``.ci/run`` installs pipx with the test extras).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import HOST_PYTHON, host_unavailable

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "backend", "plugins", "training")
EXAMPLE = REPO / "examples" / "astronaut_launch.jpg"
EXAMPLE_MASK = REPO / "examples" / "astronaut_launch_mask.png"
TORCH = "torch==2.13.0"
"""Pre-installed from the local wheel: the CPU build (the README's line uses PyTorch's CPU
index for the same choice)."""

pytestmark = pytest.mark.slow

# What the "host" runs: the installed plug-in's vendored wire package, the settings the
# installer wrote, and the same call both plug-ins make.
PLUGIN_SIDE = """
import dataclasses, json, sys
from pathlib import Path
plugin, data = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(plugin / "vendor"))
from layer_harmonizer.wire import host_side as S
meta = json.loads((data / "meta.json").read_text())
settings = dataclasses.replace(S.load_settings(plugin), timeout=600.0)
fmt = S.wire_format("U8_NON_LINEAR")
result = S.harmonize(
    (data / "layer").read_bytes(), (data / "mask").read_bytes(), (data / "backdrop").read_bytes(),
    meta["w"], meta["h"], fmt, settings=settings,
)
(data / "result").write_bytes(result.pixels)
print(json.dumps({"box": [result.box.x, result.box.y, result.box.w, result.box.h],
                  "serve_command": settings.serve_command}))
"""


def _local_pip_sources() -> dict[str, str]:
    """pip settings that reach only local files: the find-links folders and ``file://``
    indexes of this machine's pip configuration (none: the test cannot run offline)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    links: list[str] = []
    indexes: list[str] = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        values = value.strip().strip("'\"").split()
        if key.endswith(".find-links"):
            links += [v for v in values if Path(v.removeprefix("file://")).is_dir()]
        elif key.endswith("index-url"):
            indexes += [v for v in values if v.startswith("file://")]
    if not any(Path(link).glob("torch-*.whl") for link in links) or not indexes:
        host_unavailable("no local torch wheel and file:// wheel index in pip's configuration")
    return {
        "PIP_INDEX_URL": indexes[0],
        "PIP_EXTRA_INDEX_URL": " ".join(dict.fromkeys(indexes[1:])),
        "PIP_FIND_LINKS": " ".join(dict.fromkeys(links)),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }


def _build_wheel(tmp: Path) -> Path:
    """The wheel of this checkout, built from a copy (the checkout gets no build/ folder)."""
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp / "dist"), str(src)],
        check=True,
    )  # fmt: skip
    (wheel,) = (tmp / "dist").glob("layer_harmonizer-*.whl")
    return wheel


def _example(data: Path) -> tuple[int, int, np.ndarray]:
    """The bundled example as the plug-ins send a flat photo: layer = the photo (opaque),
    mask = the pasted object, backdrop = the photo itself; returns (w, h, layer RGBA)."""
    rgb = cv2.cvtColor(cv2.imread(str(EXAMPLE), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    mask = cv2.imread(str(EXAMPLE_MASK), cv2.IMREAD_GRAYSCALE)
    h, w = mask.shape
    layer = np.dstack([rgb, np.full((h, w), 255, np.uint8)])
    data.mkdir()
    (data / "layer").write_bytes(layer.tobytes())
    (data / "mask").write_bytes(mask.tobytes())
    (data / "backdrop").write_bytes(rgb.tobytes())
    (data / "meta.json").write_text(json.dumps({"w": w, "h": h}))
    return w, h, layer


def test_isolated_tool_install_then_the_plugin_path_without_path(tmp_path: Path) -> None:
    pipx = shutil.which("pipx", path=str(Path(sys.executable).parent)) or shutil.which("pipx")
    if pipx is None:
        host_unavailable("pipx is not installed (it comes with the test extras)")
    probe = [HOST_PYTHON, "-c", "import zmq, msgpack"]
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        host_unavailable(f"{HOST_PYTHON} (the host's Python here) lacks pyzmq or msgpack")
    env = {**os.environ, **_local_pip_sources(), "OMP_NUM_THREADS": "1"}
    env.update(PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"),
               PIPX_MAN_DIR=str(tmp_path / "man"),
               HARMONIZE_RUNTIME_DIR=str(tmp_path / "run"))  # fmt: skip
    env.pop("VIRTUAL_ENV", None)
    wheel = _build_wheel(tmp_path)
    subprocess.run([pipx, "install", "--preinstall", TORCH, str(wheel)], env=env, check=True)
    tool = tmp_path / "bin" / "harmonize"
    real = tool.resolve()  # the pipx venv's own script (bin/ holds a link to it)
    assert real.parent.parent.parent == tmp_path / "pipx" / "venvs"
    plugin = tmp_path / "profile" / "plug-ins" / "harmonize"
    subprocess.run(
        [str(tool), "install-plugin", "gimp", "--plugin-dir", str(plugin), "--deps", "host"],
        env=env, check=True,
    )  # fmt: skip
    settings = json.loads((plugin / "settings.json").read_text())
    assert settings["serve_command"] == [str(real.parent / "harmonize"), "serve"]

    data = tmp_path / "data"
    w, h, layer = _example(data)
    bare = {"PATH": "", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
            "HARMONIZE_RUNTIME_DIR": env["HARMONIZE_RUNTIME_DIR"]}  # fmt: skip
    try:
        proc = subprocess.run(
            [HOST_PYTHON, "-I", "-c", PLUGIN_SIDE, str(plugin), str(data)],
            env=bare, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        subprocess.run([str(tool), "stop"], env=env, capture_output=True, timeout=120, check=False)
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    x, y, bw, bh = reply["box"]
    crop = np.frombuffer((data / "result").read_bytes(), np.uint8).reshape(bh, bw, 4)
    before = layer[y : y + bh, x : x + bw]
    mask = cv2.imread(str(EXAMPLE_MASK), cv2.IMREAD_GRAYSCALE)[y : y + bh, x : x + bw]
    inside = mask > 250
    assert inside.any() and min(x, y) >= 0 and x + bw <= w and y + bh <= h
    change = np.abs(crop[..., :3].astype(int) - before[..., :3].astype(int))
    assert change[inside].mean() > 1.0, "the pasted object was recoloured"
    assert (change[mask == 0] == 0).all(), "pixels outside the mask are unchanged"

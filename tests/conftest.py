"""Shared fixtures: the reference fixture from ../shared, small seeded models, sample images."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from layer_harmonizer.model import AICTNet, create_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"
REFERENCE_CKPT = REFERENCE / "aict_reference_seed0.pth"
REFERENCE_CASE = REFERENCE / "aict_reference_seed0_300x412.npz"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared fixtures live in ../shared beside the repo)")
    return path


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run a module's tiny-tensor tests on one torch thread (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def host_unavailable(reason: str) -> None:
    """Skip a real-host test, or fail it when CI demands the hosts (HARMONIZE_REQUIRE_HOSTS=1)."""
    if os.environ.get("HARMONIZE_REQUIRE_HOSTS") == "1":
        pytest.fail(f"HARMONIZE_REQUIRE_HOSTS=1 but {reason}")
    pytest.skip(reason)


BUILD_HOSTS_ENV = "HARMONIZE_BUILD_HOSTS"
"""Set to 1 to let the tests build host environments (the Debian 13 chroot with GIMP 3 and
Krita 5.2: debootstrap, ~1.6 GB, minutes, root). Without it they use what is already built and
skip naming this switch; .ci/run sets it."""


def build_hosts_allowed() -> bool:
    return os.environ.get(BUILD_HOSTS_ENV) == "1"


HOST_TOOLS = REPO / "tests" / "hosts" / "tools.txt"
HOST_PYTHON = "/usr/bin/python3"


def host_tools() -> dict[str, str]:
    """tests/hosts/tools.txt: program (or ``py:module``) -> the Debian package providing it."""
    table = {}
    for line in HOST_TOOLS.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            tool, package = line.split()[:2]
            table[tool] = package
    return table


def need_tools(*tools: str) -> None:
    """Skip (or fail, see :func:`host_unavailable`) unless every tool is there; each must be
    listed in tests/hosts/tools.txt, which .ci/run installs and checks before the tests."""
    table = host_tools()
    unlisted = [tool for tool in tools if tool not in table]
    if unlisted:
        raise ValueError(f"{unlisted} not in {HOST_TOOLS}: add them (and their packages)")
    missing = []
    for tool in tools:
        if tool.startswith("py:"):
            try:
                probe = subprocess.run(
                    [HOST_PYTHON, "-c", f"import {tool[3:]}"], capture_output=True, check=False
                )
                found = probe.returncode == 0
            except OSError:  # no /usr/bin/python3 at all
                found = False
        else:
            found = shutil.which(tool) is not None
        if not found:
            missing.append(tool)
    if missing:
        packages = " ".join(sorted({table[tool] for tool in missing}))
        host_unavailable(f"{', '.join(missing)} missing (apt-get install {packages})")


TRIXIE_SCRIPT = REPO / "tests" / "hosts" / "gimp3-trixie.sh"
"""Builds and enters the Debian 13 chroot that holds GIMP 3 and Krita 5.2."""


def ensure_trixie_chroot(what: str) -> Path:
    """The root of the Debian 13 chroot that ``what`` (e.g. "Krita 5.2") runs in. Built only
    when ``HARMONIZE_BUILD_HOSTS=1``; else skip (or fail under ``HARMONIZE_REQUIRE_HOSTS=1``)
    with a reason that names the switch."""
    if sys.platform != "linux":
        host_unavailable(f"the Debian 13 chroot of {what} needs Linux")
    status = subprocess.run(
        ["bash", str(TRIXIE_SCRIPT), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if status.returncode != 0:
        if not build_hosts_allowed():
            host_unavailable(
                f"{what}: {status.stderr.strip()}; set {BUILD_HOSTS_ENV}=1 to build it (as "
                "root: debootstrap and apt, about 1.6 GB, a few minutes)"
            )
        if os.geteuid() != 0:
            host_unavailable(f"building the chroot of {what} needs root (debootstrap, chroot)")
        need_tools("debootstrap")
        status = subprocess.run(
            ["bash", str(TRIXIE_SCRIPT), "provision"],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if status.returncode != 0:
            reason = status.stderr.strip()[-800:]
            host_unavailable(f"could not provision the chroot of {what}: {reason}")
    if os.geteuid() != 0:
        host_unavailable(f"running {what} in its chroot needs root (chroot, mount)")
    need_tools("chroot", "mount", "mountpoint", "flock")
    return Path(status.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def reference_ckpt() -> Path:
    return _need(REFERENCE_CKPT)


@pytest.fixture(scope="session")
def reference_case() -> dict[str, np.ndarray]:
    with np.load(_need(REFERENCE_CASE)) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def light_model() -> AICTNet:
    """A seeded ``aict-light`` network with non-trivial random heads (not identity)."""
    torch.manual_seed(0)
    model = create_model("aict-light")
    with torch.no_grad():
        for layer in (model.colors_layer, model.params_layer):
            layer.weight.normal_(0, 0.5)
    return model.eval()


def random_image(h: int, w: int, dtype: np.dtype | type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return rng.random((h, w, 3), dtype=np.float32)
    top = np.iinfo(dtype).max
    return rng.integers(0, top + 1, (h, w, 3), dtype=dtype)


def blob_mask(h: int, w: int, soft: bool = True) -> np.ndarray:
    """A float32 elliptic mask with a soft edge (zero in the corners)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((yy - h / 2) / max(h / 3, 0.5), (xx - w / 2) / max(w / 3, 0.5))
    m = np.clip((1.2 - r) * 3, 0, 1) if soft else (r < 1).astype(np.float32)
    return m.astype(np.float32)

"""Shared fixtures: the reference fixture from ../shared, small seeded models, sample images."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.model import AICTNet, create_model

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

"""The ``harmonize`` command line: run, batch, info, --version, file handling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from backend.cli import main
from backend.model import AICTNet
from backend.model.weights import save_weights
from tests.conftest import blob_mask, random_image


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, light_model: AICTNet) -> Path:
    path = tmp_path_factory.mktemp("w") / "light.pt"
    save_weights(path, light_model, "aict-light", {"trained_on": "nothing (test)"}, half=False)
    return path


def _write(path: Path, rgb: np.ndarray, alpha: np.ndarray | None = None) -> Path:
    bgr = rgb[..., ::-1]
    if alpha is not None:
        bgr = np.dstack([bgr, alpha])
    assert cv2.imwrite(str(path), np.ascontiguousarray(bgr))
    return path


def _pair(folder: Path, name: str, dtype: type = np.uint8, ext: str = ".png") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = random_image(40, 56, dtype, seed=len(name))
    mask = (blob_mask(40, 56) * 255).round().astype(np.uint8)
    comp = _write(folder / f"{name}{ext}", rgb)
    cv2.imwrite(str(folder / f"{name}_mask.png"), mask)
    return comp, folder / f"{name}_mask.png"


def test_version_does_not_import_torch() -> None:
    code = (
        "import sys; from backend.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("harmonize ")


def test_run_16_bit_png_stays_16_bit_and_keeps_alpha(tmp_path: Path, weights: Path) -> None:
    rgb = random_image(30, 20, np.uint16)
    alpha = np.full((30, 20), 40000, np.uint16)
    comp = _write(tmp_path / "c16.png", rgb, alpha)
    mask = tmp_path / "m.png"
    cv2.imwrite(str(mask), (blob_mask(30, 20) * 255).astype(np.uint8))
    out = tmp_path / "out" / "o.png"
    assert main(["run", str(comp), str(mask), "-o", str(out), "--weights", str(weights)]) == 0
    got = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint16 and got.shape == (30, 20, 4)
    assert np.array_equal(got[..., 3], alpha)
    outside = blob_mask(30, 20) == 0
    assert np.array_equal(got[..., 2::-1][outside], rgb[outside])
    assert not list(out.parent.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_run_tiff_keeps_depth(tmp_path: Path, weights: Path, dtype: type) -> None:
    rgb = random_image(21, 33, dtype)
    comp = _write(tmp_path / "c.tif", rgb)
    mask = tmp_path / "m.tif"
    cv2.imwrite(str(mask), blob_mask(21, 33))
    out = tmp_path / "o.tiff"
    assert main(["run", str(comp), str(mask), "-o", str(out), "--weights", str(weights)]) == 0
    got = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert got.dtype == np.dtype(dtype) and got.shape == rgb.shape
    outside = blob_mask(21, 33) == 0
    assert np.array_equal(got[outside], rgb[outside])


def test_run_refuses_to_overwrite_input(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    comp, mask = _pair(tmp_path, "x")
    before = comp.read_bytes()
    assert main(["run", str(comp), str(mask), "-o", str(comp), "--weights", str(weights)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert comp.read_bytes() == before


def test_without_weights_says_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HARMONIZE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("HARMONIZE_WEIGHTS", raising=False)
    monkeypatch.setattr("backend.model.weights.PACKAGED_DEFAULT", tmp_path / "none.pt")
    comp, mask = _pair(tmp_path, "x")
    assert main(["run", str(comp), str(mask), "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "no default weights" in err and "--weights" in err and "train" in err
    assert not (tmp_path / "o.png").exists()


def test_batch_pct_net_naming(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    _pair(src, "a")
    _pair(src, "b", ext=".jpg")
    _write(src / "lonely.png", random_image(5, 5, np.uint8))
    out = tmp_path / "out"
    assert main(["run", str(src), "-o", str(out), "--weights", str(weights)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_harm.png", "b_harm.jpg"]
    assert "harmonized 2 of 2 images" in capsys.readouterr().out


def test_batch_iharmony4_layout(tmp_path: Path, weights: Path) -> None:
    subset = tmp_path / "HFlickr"
    (subset / "composite_images").mkdir(parents=True)
    (subset / "masks").mkdir()
    rgb = random_image(24, 32, np.uint8)
    _write(subset / "composite_images" / "f1128_1_2.jpg", rgb)
    cv2.imwrite(str(subset / "masks" / "f1128_1.png"), (blob_mask(24, 32) * 255).astype(np.uint8))
    out = tmp_path / "out"
    assert (
        main(["run", str(tmp_path), "-o", str(out), "--weights", str(weights), "--ext", "png"]) == 0
    )
    assert [p.name for p in out.iterdir()] == ["HFlickr_f1128_1_2_harm.png"]


def test_bad_mask_file_is_a_clear_error(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    comp, _ = _pair(tmp_path, "x")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"no image")
    assert (
        main(["run", str(comp), str(bad), "-o", str(tmp_path / "o.png"), "--weights", str(weights)])
        == 2
    )
    assert "not a readable image" in capsys.readouterr().err
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((3, 3), np.uint8))
    assert (
        main(
            ["run", str(comp), str(small), "-o", str(tmp_path / "o.png"), "--weights", str(weights)]
        )
        == 2
    )
    assert "does not match the image size" in capsys.readouterr().err


def test_info_lists_variants_and_weights(weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--weights", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "aict-light" in out and "5.18 M params" in out and "variant aict-light" in out

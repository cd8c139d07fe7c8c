"""The ``harmonize`` command line: run, batch, info, --version, file handling."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from layer_harmonizer.cli import main
from layer_harmonizer.errors import InputError
from layer_harmonizer.model import AICTNet
from layer_harmonizer.model.weights import save_weights
from layer_harmonizer.pairs import Pair, output_paths
from tests.conftest import blob_mask, random_image
from tests.test_imageheader import png_declaring


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
        "import sys; from layer_harmonizer.cli import main\n"
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
    monkeypatch.setattr("layer_harmonizer.model.weights.PACKAGED_DEFAULT", tmp_path / "none.pt")
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
    assert "damping" not in out  # these weights have none


def test_info_names_the_weights_damping(
    tmp_path: Path, light_model: AICTNet, capsys: pytest.CaptureFixture[str]
) -> None:
    damped = AICTNet(replace(light_model.config, damping=50.0))
    damped.load_state_dict(light_model.state_dict())
    path = tmp_path / "damped.pt"
    save_weights(path, damped, "aict-light", {"trained_on": "nothing (test)"}, half=False)
    assert main(["info", "--weights", str(path)]) == 0
    assert "damping: 50 " in capsys.readouterr().out


def _one_line(err: str) -> str:
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def _no_temporary_files(*folders: Path) -> bool:
    return not [p for folder in folders for p in folder.glob(".*.tmp")]


def _enospc_on_fsync(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """The next ``times`` fsyncs fail as on a full disk (where a write's blocks are refused)."""
    real, left = os.fsync, [times]

    def fsync(fd: int) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_run_on_a_full_disk_is_one_line_and_keeps_the_old_output(
    tmp_path: Path,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    comp, mask = _pair(tmp_path / "in", "x")
    out = tmp_path / "o.png"
    out.write_bytes(b"an earlier result")
    _enospc_on_fsync(monkeypatch, 1)
    assert main(["run", str(comp), str(mask), "-o", str(out), "--weights", str(weights)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"{out}: cannot write: No space left on device" in err
    assert out.read_bytes() == b"an earlier result"
    assert _no_temporary_files(tmp_path)


def test_folder_run_counts_a_full_disk_write_as_failed_and_goes_on(
    tmp_path: Path,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _pair(tmp_path / "in", "a")
    _pair(tmp_path / "in", "b")
    out = tmp_path / "out"
    _enospc_on_fsync(monkeypatch, 1)
    with caplog.at_level(logging.ERROR, logger="harmonize"):
        code = main(["run", str(tmp_path / "in"), "-o", str(out), "--weights", str(weights)])
    assert code == 1
    assert [p.name for p in out.iterdir()] == ["b_harm.png"]
    summary = capsys.readouterr().out
    assert "harmonized 1 of 2 images" in summary and "1 failed" in summary
    (record,) = caplog.records
    assert "a.png" in record.getMessage() and "No space left on device" in record.getMessage()
    assert "\n" not in record.getMessage() and record.exc_info is None
    assert _no_temporary_files(out)


NOBODY = 65534


@contextmanager
def _permissions_as_nobody(locked: Path) -> Iterator[None]:
    """Permission checks as an unprivileged user for this thread, inside the block.

    Root ignores chmod, so as root this thread's file system user becomes 'nobody' (Linux
    ``setfsuid``, which also drops root's file capabilities until it is set back). ``locked``
    must be unreadable inside the block: if it is not, this machine cannot test permissions.
    """
    libc = None
    if os.geteuid() == 0:
        if not sys.platform.startswith("linux"):
            pytest.skip("running as root, where chmod stops nothing, and setfsuid is Linux-only")
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setfsuid(NOBODY)
    try:
        try:
            os.close(os.open(locked, os.O_RDONLY))
        except PermissionError:
            pass
        else:
            pytest.skip("cannot drop file permissions here (setfsuid refused?)")
        yield
    finally:
        if libc is not None:
            libc.setfsuid(0)


@pytest.fixture
def open_tmp(weights: Path) -> Iterator[Path]:
    """A folder that 'nobody' may enter and write in (root's pytest folders are 0700), holding
    the weights; what the tests lock in it is unlocked again afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="harmonize-test-"))
    folder.chmod(0o777)
    shutil.copyfile(weights, folder / "w.pt")
    (folder / "w.pt").chmod(0o644)
    yield folder
    for path in folder.iterdir():
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


def test_permission_errors_are_one_line_errors(
    open_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    comp, mask = _pair(open_tmp / "pair", "x")
    locked = open_tmp / "locked"
    locked.mkdir()
    shutil.copy(comp, locked / "x.png")
    locked.chmod(0)
    read_only = open_tmp / "read-only"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    weights = ["--weights", str(open_tmp / "w.pt")]
    assert main(["run", str(comp), str(mask), "-o", str(open_tmp / "warm.png"), *weights]) == 0
    capsys.readouterr()
    with _permissions_as_nobody(locked):
        unreadable = main(["run", str(locked / "x.png"), str(mask), "-o", "o.png", *weights])
        read_err = capsys.readouterr().err
        unwritable = main(["run", str(comp), str(mask), "-o", str(read_only / "o.png"), *weights])
        write_err = capsys.readouterr().err
        no_folder = main(["run", str(comp.parent), "-o", str(read_only / "out"), *weights])
        folder_err = capsys.readouterr().err
    assert (unreadable, unwritable, no_folder) == (2, 2, 2)
    assert f"{locked / 'x.png'}: cannot access: Permission denied" in _one_line(read_err)
    assert f"{read_only / 'o.png'}: cannot write: Permission denied" in _one_line(write_err)
    assert "out: cannot create the output folder: Permission denied" in _one_line(folder_err)
    assert not list(read_only.iterdir())


def test_folder_run_counts_an_unreadable_pair_as_failed_and_goes_on(
    open_tmp: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    src = open_tmp / "in"
    _pair(src, "a")
    _pair(src, "b")
    (src / "b.png").chmod(0)
    out = open_tmp / "out"
    args = ["run", str(src), "-o", str(out), "--weights", str(open_tmp / "w.pt")]
    assert main([*args[:3], str(open_tmp / "warm"), *args[4:]]) == 0  # imports done as root
    capsys.readouterr()
    with _permissions_as_nobody(src / "b.png"), caplog.at_level(logging.ERROR, "harmonize"):
        code = main(args)
    assert code == 1
    assert [p.name for p in out.iterdir()] == ["a_harm.png"]
    summary = capsys.readouterr().out
    assert "harmonized 1 of 2 images" in summary and "1 failed" in summary
    (record,) = caplog.records
    assert f"{src / 'b.png'}: cannot read: Permission denied" in record.getMessage()


def test_folder_run_refuses_two_pairs_writing_one_file(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    _pair(src, "x")
    _write(src / "x.jpg", random_image(40, 56, np.uint8))
    out = tmp_path / "out"
    args = ["run", str(src), "-o", str(out), "--weights", str(weights)]
    assert main([*args, "--ext", "png"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert (
        f"{src / 'x.jpg'} and {src / 'x.png'} would both be written to {out / 'x_harm.png'}" in err
    )
    assert not out.exists()
    assert main(args) == 0  # each keeps its own format: no clash
    assert sorted(p.name for p in out.iterdir()) == ["x_harm.jpg", "x_harm.png"]
    assert "harmonized 2 of 2 images" in capsys.readouterr().out


def test_output_names_that_differ_in_case_only_clash(tmp_path: Path) -> None:
    pairs = [Pair(tmp_path / f"{n}.png", tmp_path / f"{n}_mask.png", n) for n in ("a", "X", "x")]
    with pytest.raises(InputError, match=r"X.png and .*x.png would both be written to"):
        output_paths(pairs, tmp_path / "out")
    assert output_paths(pairs[:2], tmp_path / "out", ".tif") == [
        tmp_path / "out" / "a_harm.tif",
        tmp_path / "out" / "X_harm.tif",
    ]


def test_oversized_images_are_refused_before_decoding(
    tmp_path: Path,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A small file declaring 32768^2 pixels is refused from its header: no pixel is decoded
    (the decoder would take gigabytes) and no model is loaded for it."""
    huge = png_declaring(32768, 32768)
    real_decode = cv2.imdecode

    def decode(data: np.ndarray, flags: int) -> np.ndarray | None:
        assert data.size != len(huge), "the oversized file was decoded"
        return real_decode(data, flags)

    monkeypatch.setattr(cv2, "imdecode", decode)
    src = tmp_path / "in"
    comp, mask = _pair(src, "a")
    (src / "huge.png").write_bytes(huge)
    shutil.copy(mask, src / "huge_mask.png")
    with monkeypatch.context() as patched:
        patched.setattr("layer_harmonizer.cli.run._load", lambda args: pytest.fail("model loaded"))
        assert main(["run", str(src / "huge.png"), str(mask), "-o", str(tmp_path / "o.png")]) == 2
        err = _one_line(capsys.readouterr().err)
        assert "huge.png (PNG) is 32768 x 32768 = 1,073,741,824 pixels, over the limit" in err
        small = ["run", str(comp), str(mask), "-o", str(tmp_path / "o.png"), "--max-pixels", "100"]
        assert main(small) == 2
        assert "a.png (PNG) is 56 x 40 = 2,240 pixels, over the limit of 100" in _one_line(
            capsys.readouterr().err
        )
    with caplog.at_level(logging.ERROR, logger="harmonize"):
        code = main(["run", str(src), "-o", str(tmp_path / "out"), "--weights", str(weights)])
    assert code == 1
    assert "harmonized 1 of 2 images" in capsys.readouterr().out
    assert "32768 x 32768" in caplog.text and "huge.png" in caplog.text

"""What ``harmonize run`` costs around the work: which modules it imports (no torch for
``--help``, a refused argument or ``--daemon``), the garbage collector frozen once the model is
loaded, the process ended without the interpreter's clean-up only after a successful write,
and ``--precision`` reaching ``info`` and ``serve``. Nothing here is timed (benchmarks/bench_run.py
measures it)."""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from layer_harmonizer.cli import main
from layer_harmonizer.cli import run as run_command
from layer_harmonizer.errors import InputError
from layer_harmonizer.model import AICTNet
from layer_harmonizer.model.weights import save_weights
from layer_harmonizer.wire.client import DaemonError, HarmonizeResult
from layer_harmonizer.wire.protocol import ErrorCode, Pixels
from tests.conftest import blob_mask, random_image
from tests.daemon_process import ROOT, DaemonProcess

BLOCK_TORCH = "import sys; sys.modules['torch'] = None  # any `import torch` now fails\n"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, light_model: AICTNet) -> Path:
    path = tmp_path_factory.mktemp("w") / "light.pt"
    save_weights(path, light_model, "aict-light", {}, half=False)
    return path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    comp, mask = tmp_path / "c.png", tmp_path / "m.png"
    cv2.imwrite(str(comp), random_image(48, 64, np.uint8))
    cv2.imwrite(str(mask), (blob_mask(48, 64) * 255).astype(np.uint8))
    return comp, mask


def python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_importing_the_package_loads_neither_torch_nor_numpy() -> None:
    done = python(
        "import sys, layer_harmonizer\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'\n"
        "assert callable(layer_harmonizer.harmonize) and 'torch' in sys.modules  # on first use\n"
    )
    assert done.returncode == 0, done.stderr


def test_help_and_refused_arguments_do_not_import_torch(pair: tuple[Path, Path]) -> None:
    comp, mask = pair
    run = ["run", str(comp), str(mask), "-o", "o.png"]
    done = python(
        f"{BLOCK_TORCH}from layer_harmonizer.cli import main\n"
        f"assert main({[*run, '--strength', '2']!r}) == 2\n"
        f"assert main({['run', 'missing.png', str(mask), '-o', 'o.png']!r}) == 2\n"
        "try:\n    main(['run', '--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
    )
    assert done.returncode == 0, done.stderr
    assert "harmonize: error: strength must be in [0, 1]; got 2.0" in done.stderr
    assert "missing.png: no such file" in done.stderr
    assert "--precision {auto,fp32,bf16}" in done.stdout


@pytest.mark.slow
def test_run_daemon_imports_no_torch_and_serve_takes_precision(
    tmp_path: Path, weights: Path, pair: tuple[Path, Path]
) -> None:
    comp, mask = pair
    with DaemonProcess(tmp_path, weights, "--precision", "bf16") as daemon:
        env = {**daemon.env, "PYTHONPATH": str(ROOT / "backend")}
        out = tmp_path / "d.png"
        argv = ["run", str(comp), str(mask), "-o", str(out), "--daemon", "--strength", "0.7"]
        done = python(
            f"{BLOCK_TORCH}from layer_harmonizer.cli import main\n"
            f"code = main({argv!r})\n"
            "assert sys.modules.get('torch') is None, 'torch was imported'\n"
            "sys.exit(code)\n",
            env,
        )
        assert done.returncode == 0, done.stderr
        assert "network precision bf16: asked for" in daemon.output()
    result = cv2.imread(str(out))  # equal to an in-process run: tests/test_daemon.py
    assert result.shape == (48, 64, 3) and not np.array_equal(result, cv2.imread(str(comp)))


def test_a_successful_run_ends_without_clean_up_and_a_failed_one_exits_normally(
    tmp_path: Path, weights: Path, pair: tuple[Path, Path]
) -> None:
    comp, mask = pair
    out = tmp_path / "o.png"
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('clean-up ran'))\n"
        "from layer_harmonizer.cli import program\n"
        "sys.argv = ['harmonize', *sys.argv[1:]]\n"
        "program()\n"
    )
    run = [sys.executable, "-c", code, "run", str(comp), str(mask), "-o", str(out)]
    done = subprocess.run(
        [*run, "--weights", str(weights)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out}") and "clean-up ran" not in done.stdout
    assert cv2.imread(str(out)).shape == (48, 64, 3)  # complete: written before the end
    failed = subprocess.run(
        [*run, "--weights", str(tmp_path / "none.pt")], capture_output=True, text=True, check=False
    )
    assert failed.returncode == 2 and "clean-up ran" in failed.stdout


def test_loading_the_model_freezes_the_collector_in_its_own_process(weights: Path) -> None:
    args = argparse.Namespace(
        daemon=False, weights=weights, variant=None, device="cpu", precision="auto"
    )
    try:
        for own in (False, True):
            gc.unfreeze()
            run_command._load(argparse.Namespace(**vars(args), own_process=own))
            assert (gc.get_freeze_count() > 0) == own
    finally:
        gc.unfreeze()


def test_info_says_which_precision_and_why(
    weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", "--weights", str(weights), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "network precision: fp32 (auto tries bf16 for aict only, not aict-light)" in out
    assert main(["info", "--weights", str(weights), "--precision", "bf16"]) == 0
    assert "network precision: bf16 (asked for)" in capsys.readouterr().out


def test_the_program_is_the_console_entry_point() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'harmonize = "layer_harmonizer.cli:program"' in pyproject
    main_module = (ROOT / "backend" / "layer_harmonizer" / "__main__.py").read_text()
    assert "program()" in main_module


class Recorder:
    """Stands in for a daemon client: answers each request with the layer it was sent and
    records the frames; ``protocol`` 2.0 refuses the 2.1 request as a 2.0 daemon does."""

    def __init__(self, protocol: tuple[int, int]) -> None:
        self.protocol, self.sent = protocol, []

    def harmonize_layer(self, layer: Pixels, selection: Pixels, backdrop: Pixels, **options):
        if self.protocol < (2, 1):
            raise DaemonError(ErrorCode.UNSUPPORTED_VERSION, "the daemon speaks protocol 2.0")
        return self._answer("2.1", layer, selection, backdrop, options)

    def harmonize(self, layer: Pixels, mask: Pixels, backdrop: Pixels, **options):
        return self._answer("2.0", layer, mask, backdrop, options)

    def _answer(self, how: str, layer: Pixels, mask: Pixels, back: Pixels, options: dict):
        self.sent.append((how, layer, mask, back, options))
        return HarmonizeResult(Pixels(bytes(layer.data), layer.shape, layer.dtype), (0, 0), False)


@pytest.mark.parametrize(("protocol", "how"), [((2, 1), "2.1"), ((2, 0), "2.0")])
def test_run_daemon_sends_the_files_pixels_as_they_are(protocol: tuple[int, int], how: str) -> None:
    rgb = random_image(30, 40, np.uint16)
    mask = (blob_mask(30, 40) * 255).astype(np.uint8)
    args = argparse.Namespace(strength=0.6, max_pixels=None)
    daemon = Recorder(protocol)
    out = run_command._harmonize_remote(daemon, rgb, mask, args)
    assert np.array_equal(out, rgb)
    ((sent_how, layer, selection, backdrop, options),) = daemon.sent
    assert sent_how == how and layer is backdrop  # one opaque layer over itself
    assert (layer.shape, layer.dtype) == ((30, 40, 3), "uint16")
    assert (selection.shape, selection.dtype) == ((30, 40), "uint8")  # not float32
    assert options == {"strength": 0.6, "crop_margin": None, "output": "rgb"}


def test_run_daemon_skips_the_daemon_when_nothing_changes_and_names_its_errors() -> None:
    rgb = random_image(8, 9, np.uint8)
    daemon = Recorder((2, 1))
    empty = np.zeros((8, 9), np.uint8)
    assert run_command._harmonize_remote(daemon, rgb, empty, argparse.Namespace(
        strength=1.0, max_pixels=None)) is rgb  # fmt: skip
    full = np.full((8, 9), 255, np.uint8)
    none = argparse.Namespace(strength=0.0, max_pixels=None)
    assert run_command._harmonize_remote(daemon, rgb, full, none) is rgb
    assert daemon.sent == []

    class Busy(Recorder):
        def harmonize_layer(self, *frames: Pixels, **options: object) -> None:
            raise DaemonError(ErrorCode.BUSY, "16 jobs are queued")

    one = argparse.Namespace(strength=1.0, max_pixels=None)
    with pytest.raises(InputError, match=r"^daemon: 16 jobs are queued$"):
        run_command._harmonize_remote(Busy((2, 1)), rgb, full, one)

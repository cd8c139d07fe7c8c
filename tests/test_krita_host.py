"""The Krita plugin inside real Krita, against a real daemon, for each Krita install:

- **5.1**: Debian 12's ``krita`` on this machine (embedded Python 3.11);
- **5.2**: Debian 13's ``krita`` in the chroot of tests/hosts/gimp3-trixie.sh (the one GIMP 3
  runs in; embedded Python 3.13), run through its ``exec`` command with the test's folders
  bound at the same paths. The chroot is only *built* with ``HARMONIZE_BUILD_HOSTS=1``
  (.ci/run sets it); without it, and without a built chroot, the 5.2 tests skip naming the
  switch.

Each test id names the version (``[krita-5.1]``, ``[krita-5.2]``), and each run checks that
Krita reports that version.

1. kritarunner (no GUI): the host-facing code (``harmonize.host``) reads a pasted layer, its
   mask and backdrop from real documents (8 bit, 8 bit + selection, 16 bit, half float), the
   daemon harmonizes, and the new layer is checked against ``harmonize run`` on the same
   composite and mask.
2. Xvfb: real Krita with the plugin installed by ``harmonize install-plugin krita`` into a
   fresh HOME; a test hook opens 8- and 16-bit documents with a pasted layer, triggers
   Filter ▸ Harmonize Layer (the real QAction) and exports; same checks.

Skipped with a reason when a Krita is not installed, unless ``HARMONIZE_REQUIRE_HOSTS=1``
(CI), which turns the skip into a failure. Every Krita run is wrapped in ``timeout``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layer_harmonizer.model.weights import save_weights
from tests.conftest import (
    BUILD_HOSTS_ENV,
    TRIXIE_SCRIPT,
    ensure_trixie_chroot,
    host_unavailable,
    need_tools,
)
from tests.daemon_process import DaemonProcess

pytestmark = [pytest.mark.krita, pytest.mark.host, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
HOSTS = REPO / "tests" / "hosts"
PLUGIN = REPO / "plugins" / "krita"
SRGB = "sRGB-elle-V2-srgbtrc.icc"
LINEAR = "sRGB-elle-V2-g10.icc"
W, H = 96, 72
"""The object's padded box covers this whole canvas, so the daemon's crop is the full image
and ``harmonize run`` (which works on the full image) sees exactly the same input."""
KRITA_TIMEOUT = int(os.environ.get("HARMONIZE_KRITA_TIMEOUT", "300"))
"""Seconds one Krita run may take. A fresh HOME builds Krita's resource database first (~15 s
on an idle machine); on a loaded one raise this, and HARMONIZE_KRITA_WATCHDOG_MS with it."""


def need_host(*programs: str) -> None:
    """Krita's programs and the modules its Python needs (Debian's python3), with ``timeout``
    and ``nice`` that wrap every run (tests/hosts/tools.txt names their packages)."""
    need_tools(*programs, "timeout", "nice", "py:PyQt5", "py:zmq", "py:msgpack")


XVFB = ["xvfb-run", "-a", "-s", "-screen 0 1280x800x24 -noreset"]
"""A fresh X server for one Krita GUI run (-noreset: Krita's throw-away X connections would
let Xvfb reset under it)."""
CHROOT_ENV = ("HOME", "PYTHONPATH", "HARMONIZE_", "QT_")
"""What of a Krita process's environment reaches Krita in the chroot (names or prefixes)."""


@dataclasses.dataclass(frozen=True)
class KritaInstall:
    """One Krita the tests run: this machine's (``root`` None) or the one in the Debian 13
    chroot at ``root``, which sees the host folders ``binds`` at the same paths."""

    version: str
    """"5.1", "5.2": the test id; ``Krita.instance().version()`` must start with it."""
    root: Path | None = None
    binds: tuple[Path, ...] = ()

    def path(self, path: str) -> Path:
        """Where the file ``path`` of this Krita's system is, seen from this machine."""
        return Path(path) if self.root is None else self.root / path.lstrip("/")

    def command(
        self, argv: list[str], env: dict[str, str], *, display: bool = False
    ) -> tuple[list[str], dict[str, str]]:
        """``(command line, environment)`` that run ``argv`` (a program of this Krita's
        system) under ``timeout`` and ``nice``, with ``env`` as the program's environment
        (see :func:`krita_env`); ``display``: under a fresh Xvfb on this machine."""
        head = ["timeout", str(KRITA_TIMEOUT), "nice", "-n", "10", *(XVFB if display else [])]
        if self.root is None:
            return [*head, *argv], env
        passed = [f"{k}={v}" for k, v in env.items() if k.startswith(CHROOT_ENV)]
        binds = [arg for folder in self.binds for arg in ("--bind", str(folder))]
        outer = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "XAUTHORITY")}
        return [*head, "bash", str(TRIXIE_SCRIPT), "exec", *binds, *passed, *argv], outer

    def run(
        self, argv: list[str], env: dict[str, str], *, display: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` (see :meth:`command`), output captured; never raises on failure."""
        cmd, run_env = self.command(argv, env, display=display)
        return subprocess.run(
            cmd, env=run_env, capture_output=True, text=True, timeout=KRITA_TIMEOUT + 30,
            check=False,
        )  # fmt: skip

    def python_version(self) -> str:
        """``X.Y`` of the Python this Krita embeds (its system's ``/usr/bin/python3``)."""
        code = "import sys; print('%d.%d' % sys.version_info[:2])"
        proc = self.run(["/usr/bin/python3", "-c", code], dict(os.environ))
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()


def krita_install(version: str, tmp_path_factory: pytest.TempPathFactory) -> KritaInstall:
    """Krita ``version`` ready to run, or skip (fail in CI) saying what is missing: 5.1 is
    Debian 12's package on this machine, 5.2 Debian 13's in the chroot (built only with
    ``HARMONIZE_BUILD_HOSTS=1``)."""
    if version == "5.1":
        need_host("kritarunner")
        return KritaInstall(version)
    root = ensure_trixie_chroot(f"Krita {version}")
    need_tools("timeout", "nice")
    return KritaInstall(version, root, binds=(tmp_path_factory.getbasetemp(), REPO))


@pytest.mark.skipif(sys.platform != "linux", reason="the Debian 13 chroot is Linux only")
def test_krita52_without_its_chroot_skips_naming_the_switch(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No chroot built and no HARMONIZE_BUILD_HOSTS: the 5.2 tests skip saying how to get it,
    and nothing is built."""
    monkeypatch.setenv("HARMONIZE_CI_CACHE", str(tmp_path))
    for name in ("GIMP3_ROOT", BUILD_HOSTS_ENV, "HARMONIZE_REQUIRE_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        krita_install("5.2", tmp_path_factory)
    reason = str(skipped.value)
    assert reason.startswith("Krita 5.2: no Debian 13 chroot (GIMP 3, Krita 5.2) at"), reason
    assert f"{BUILD_HOSTS_ENV}=1" in reason, reason
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module", params=["5.1", "5.2"], ids=lambda version: f"krita-{version}")
def krita(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> KritaInstall:
    return krita_install(request.param, tmp_path_factory)


# ---- images -----------------------------------------------------------------------------------


def scene() -> dict[str, np.ndarray]:
    """Float RGBA in [0, 1]: a gradient backdrop and an orange pasted object with soft edges."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    bg = np.stack(
        [0.2 + 0.6 * xx / W, 0.3 + 0.4 * yy / H, 0.7 - 0.3 * xx / W, np.ones_like(xx)], -1
    )
    alpha = np.zeros((H, W))
    alpha[16:56, 16:80] = 0.5  # anti-aliased rim
    alpha[18:54, 18:78] = 1.0
    layer = np.stack(
        [np.full_like(xx, 0.9), 0.5 + 0.3 * np.sin(xx / 5), 0.2 + 0.1 * (yy / H), alpha], -1
    )
    layer[..., :3] *= (alpha > 0)[..., None]
    selection = np.zeros((H, W), np.uint8)
    selection[:, :50] = 255
    selection[:, 50:60] = 128
    return {"bg": bg, "layer": layer, "selection": selection}


def quantize(image: np.ndarray, dtype: Any) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return image.astype(dtype)
    return np.round(image * np.iinfo(dtype).max).astype(dtype)


def write_png(path: Path, image: np.ndarray) -> Path:
    """RGB ``(H, W, 3)`` or a grey mask ``(H, W)`` as PNG (8 or 16 bit, as the dtype)."""
    from layer_harmonizer.image_files import write_image

    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    write_image(path, image)
    return path


def harmonize_run(
    tmp: Path, weights: Path, comp: np.ndarray, mask: np.ndarray, strength: float = 1.0
) -> np.ndarray:
    """``harmonize run`` (the CLI, a fresh process) on a composite and a mask, as arrays."""
    from layer_harmonizer.image_files import read_image

    out = tmp / f"expected_{comp.dtype}_{strength}.png"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "layer_harmonizer",
            "run",
            str(write_png(tmp / f"comp_{comp.dtype}.png", comp)),
            str(write_png(tmp / f"mask_{mask.dtype}.png", mask)),
            "-o",
            str(out),
            "--weights",
            str(weights),
            "--device",
            "cpu",
            "--strength",
            str(strength),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return read_image(out)[0]


def composite_of(layer: np.ndarray, bg: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from layer_harmonizer.compose import composite

    return composite(
        np.ascontiguousarray(layer[..., :3]),
        mask.astype(np.float32),
        np.ascontiguousarray(bg[..., :3]),
    )


def bgra(raw: bytes, dtype: Any) -> np.ndarray:
    """Krita's BGRA bytes over the canvas -> RGBA array."""
    return np.frombuffer(raw, dtype).reshape(H, W, 4)[..., [2, 1, 0, 3]]


# ---- the daemon -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, light_model: Any) -> Path:
    path = tmp_path_factory.mktemp("weights") / "light.pt"
    save_weights(path, light_model, "aict-light")
    return path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Iterator[dict[str, str]]:
    """A real ``harmonize serve`` on 127.0.0.1 (CPU), shared by every Krita; yields the
    environment that finds it (its runtime dir is under the tests' temporary folder, which the
    chroot sees at the same path)."""
    with DaemonProcess(
        tmp_path_factory.mktemp("daemon"), weights, "--device", "cpu", "--port", "0"
    ) as run:
        yield run.env


# ---- 1. kritarunner ---------------------------------------------------------------------------


def krita_env(env: dict[str, str], home: Path) -> dict[str, str]:
    """The environment for a Krita process: a fresh HOME and the system's PATH.

    Krita's embedded Python takes its prefix from the first ``python3`` on PATH: with a
    virtualenv or pyenv first it loses Debian's dist-packages ("No module named 'PyQt5'").
    """
    clean = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    return {**clean, "HOME": str(home), "PATH": "/usr/bin:/bin"}


@pytest.fixture(scope="module")
def runner_home(tmp_path_factory: pytest.TempPathFactory, krita: KritaInstall) -> Path:
    """One HOME for each Krita's kritarunner runs: its resource database is built once
    (~15 s)."""
    return tmp_path_factory.mktemp(f"kritarunner-home-{krita.version}")


def run_kritarunner(
    tmp: Path, env: dict[str, str], cases: list[dict[str, Any]], home: Path, krita: KritaInstall
) -> None:
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"cases": cases}))
    run_env = {
        **krita_env(env, home),
        "QT_QPA_PLATFORM": "offscreen",
        "HARMONIZE_KRITA_NO_REGISTER": "1",
        "PYTHONPATH": os.pathsep.join([str(HOSTS), str(PLUGIN), str(REPO / "backend"), str(REPO)]),
    }
    proc = krita.run(["kritarunner", "-s", "krita_runner", "-f", "main", str(spec)], run_env)
    log = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, (
        f"kritarunner {krita.version} failed (rc {proc.returncode}):\n{log}"
    )
    for case in cases:
        assert (Path(case["out"]) / "case.json").exists(), f"{case['name']} wrote nothing:\n{log}"


def make_case(
    tmp: Path, name: str, depth: str, dtype: Any, images: dict[str, np.ndarray], **extra: Any
) -> dict[str, Any]:
    for key in ("bg", "layer"):
        quantize(images[key], dtype).tofile(tmp / f"{key}_{name}.raw")
    selection = None
    if extra.pop("with_selection", False):
        selection = str(tmp / "selection.raw")
        images["selection"].tofile(selection)
    return {
        "name": name,
        "depth": depth,
        "profile": SRGB,
        "width": W,
        "height": H,
        "background": str(tmp / f"bg_{name}.raw"),
        "layer": str(tmp / f"layer_{name}.raw"),
        "selection": selection,
        "strength": 1.0,
        "out": str(tmp / "out" / name),
        **extra,
    }


@pytest.fixture(scope="module")
def cli_cache() -> dict[tuple[str, float], np.ndarray]:
    """``harmonize run`` results shared by the tests (each CLI run costs a torch start-up)."""
    return {}


def test_kritarunner_host_code(
    krita: KritaInstall,
    tmp_path: Path,
    daemon: dict[str, str],
    weights: Path,
    cli_cache: dict,
    runner_home: Path,
    request: pytest.FixtureRequest,
) -> None:
    images = scene()
    cases = [
        make_case(tmp_path, "u8", "U8", np.uint8, images),
        make_case(
            tmp_path, "u8_selection", "U8", np.uint8, images, with_selection=True, restrength=0.6
        ),
        make_case(tmp_path, "u16", "U16", np.uint16, images),
        make_case(
            tmp_path, "f16_linear", "F32", np.float32, images, convert_to=["RGBA", "F16", LINEAR]
        ),
        make_case(tmp_path, "bottom", "U8", np.uint8, images, bottom=True),
    ]
    start = time.monotonic()
    run_kritarunner(tmp_path, daemon, cases, runner_home, krita)
    request.node.user_properties.append(("kritarunner_seconds", round(time.monotonic() - start, 1)))
    out = tmp_path / "out"
    info = json.loads((out / "u8" / "case.json").read_text())
    assert info["krita"].startswith(f"{krita.version}."), info["krita"]  # the Krita meant
    print(f"Krita {info['krita']}, Python {info['python']}")

    # the bottom layer has nothing below it: refused as in GIMP, nothing added
    info = json.loads((out / "bottom" / "case.json").read_text())
    assert info["error"].startswith("PluginError: Nothing is visible below 'Background'"), info
    assert info["layers"] == ["Background", "pasted"]

    for name, dtype in (("u8", np.uint8), ("u16", np.uint16)):
        info = json.loads((out / name / "case.json").read_text())
        assert info["layers"] == ["Background", "pasted", "pasted (harmonized)"]
        assert info["box"] == [0, 0, W, H] and info["region"] == [0, 0, W, H]
        layer, bg = quantize(images["layer"], dtype), quantize(images["bg"], dtype)
        result = bgra((out / name / "result.raw").read_bytes(), dtype)
        before = (out / name / "source_before.raw").read_bytes()
        assert (out / name / "source_after.raw").read_bytes() == before, "source was modified"
        np.testing.assert_array_equal(result[..., 3], layer[..., 3])  # alpha kept
        backdrop = np.frombuffer((out / name / "backdrop.raw").read_bytes(), dtype)
        np.testing.assert_array_equal(backdrop.reshape(H, W, 4)[..., 2::-1], bg[..., :3])  # BGRA
        assert not (out / name / "selection.raw").exists()  # none: the daemon uses the alpha
        scale = float(np.iinfo(dtype).max)
        expected = expected_layer(tmp_path, weights, layer, bg, cache=cli_cache)
        opaque = layer[..., 3] == np.iinfo(dtype).max
        diff = np.abs(result[..., :3].astype(np.int64) - expected.astype(np.int64))[opaque]
        assert diff.max() <= 1, f"{name}: new layer differs from `harmonize run` by {diff.max()}"
        changed = np.abs(result[..., :3].astype(np.int64) - layer[..., :3])[opaque]
        assert changed.max() > scale / 50, f"{name}: the layer was hardly recoloured"

    # the selection is sent alone (the daemon multiplies it by alpha); unselected pixels keep
    # the source's colours
    info = json.loads((out / "u8_selection" / "case.json").read_text())
    x, y, w, h = info["region"]
    assert x == 0 and w < W  # the region follows the selection
    layer = quantize(images["layer"], np.uint8)
    sent = np.frombuffer((out / "u8_selection" / "selection.raw").read_bytes(), np.uint8)
    np.testing.assert_array_equal(sent.reshape(h, w), images["selection"][y : y + h, x : x + w])
    assert {"restrength_daemon", "restrength_write"} <= set(info["seconds"])  # then 0.6
    result = bgra((out / "u8_selection" / "result.raw").read_bytes(), np.uint8)
    np.testing.assert_array_equal(result[..., 3], layer[..., 3])
    outside = images["selection"] == 0
    np.testing.assert_array_equal(result[outside], layer[outside])
    inside = (images["selection"] == 255) & (layer[..., 3] == 255)
    assert np.abs(result[inside][:, :3].astype(int) - layer[inside][:, :3]).max() > 5

    # half float with a linear profile: converted to 16-bit sRGB for the daemon and back
    info = json.loads((out / "f16_linear" / "case.json").read_text())
    assert info["doc_space"] == ["RGBA", "F16", LINEAR]
    assert info["result_space"] == info["doc_space"]
    assert info["wire_dtype"] == "float32"
    assert (out / "f16_linear" / "source_after.raw").read_bytes() == (
        out / "f16_linear" / "source_before.raw"
    ).read_bytes()
    result = bgra((out / "f16_linear" / "result.raw").read_bytes(), np.float16).astype(np.float32)
    source = bgra((out / "f16_linear" / "source_before.raw").read_bytes(), np.float16)
    np.testing.assert_allclose(result[..., 3], source[..., 3].astype(np.float32), atol=1e-3)
    opaque = source[..., 3] == 1
    assert np.abs(result[opaque][:, :3] - source[opaque][:, :3].astype(np.float32)).max() > 0.02


# ---- 2. the real plugin in the Krita GUI under Xvfb -------------------------------------------


def expected_layer(
    tmp: Path,
    weights: Path,
    layer: np.ndarray,
    bg: np.ndarray,
    strength: float = 1.0,
    *,
    cache: dict[tuple[str, float], np.ndarray],
) -> np.ndarray:
    """``harmonize run`` on ``layer`` (RGBA) over ``bg`` with the layer's alpha as the mask."""
    key = (hashlib.sha256(layer.tobytes()).hexdigest(), strength)
    if key not in cache:
        mask = layer[..., 3]
        comp = composite_of(layer, bg, mask / float(np.iinfo(layer.dtype).max))
        cache[key] = harmonize_run(tmp, weights, comp, mask, strength)
    return cache[key]


def assert_matches(result: np.ndarray, expected: np.ndarray, layer: np.ndarray, what: str) -> None:
    """Opaque pixels equal ``harmonize run`` within one level; alpha is the layer's."""
    np.testing.assert_array_equal(result[..., 3], layer[..., 3])
    opaque = layer[..., 3] == np.iinfo(layer.dtype).max
    diff = np.abs(result[..., :3].astype(np.int64) - expected.astype(np.int64))[opaque]
    assert diff.max() <= 1, f"{what}: differs from `harmonize run` by {diff.max()} levels"


def test_xvfb_filter_action(
    krita: KritaInstall,
    tmp_path: Path,
    daemon: dict[str, str],
    weights: Path,
    cli_cache: dict,
    request: pytest.FixtureRequest,
) -> None:
    need_tools("xvfb-run", "xauth")
    if krita.root is None:
        need_host("krita")
    home = tmp_path / "home"
    krita_dir, kritarc = home / ".local" / "share" / "krita", home / ".config" / "kritarc"
    # the chroot's Krita: its own python3-zmq/msgpack (the installer probes this machine's)
    deps = [] if krita.root is None else ["--deps", "host"]
    install = subprocess.run(
        [sys.executable, "-m", "layer_harmonizer", "install-plugin", "krita", "--krita-dir",
         str(krita_dir), "--kritarc", str(kritarc), *deps],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    assert "enable_harmonize=true" in kritarc.read_text()
    # Edit > Paste of a clipboard image without a profile: assume sRGB instead of asking
    kritarc.write_text("pasteBehaviour=0\n" + kritarc.read_text())

    images = scene()
    cases = []
    for name, depth, dtype, reapply, paste in (
        ("gui_u8", "U8", np.uint8, 0.5, True),
        ("gui_u16", "U16", np.uint16, None, False),
    ):
        case = make_case(
            tmp_path, name, depth, dtype, images, reapply=reapply, paste=paste, undo=not paste
        )
        cases.append(case)  # fmt: skip
    # a blending mode and opacity the new layer copies (in one undo step all the same)
    cases[1].update(blending="multiply", opacity=200)
    # Harmonize on the bottom layer: refused with a message in the docker
    bottom = make_case(tmp_path, "gui_bottom", "U8", np.uint8, images, bottom=True)
    shots = os.environ.get("HARMONIZE_KRITA_SCREENSHOTS")  # docs/img when refreshing the docs
    spec = tmp_path / "gui_spec.json"
    result_file = tmp_path / "gui_result.json"
    spec.write_text(json.dumps({"cases": [*cases, bottom], "screenshots": shots,
                                "result": str(result_file)}))  # fmt: skip
    env = {
        **krita_env(daemon, home),
        "HARMONIZE_KRITA_AUTORUN": str(HOSTS / "krita_autorun.py"),
        "HARMONIZE_KRITA_SPEC": str(spec),
    }
    daemon_log = Path(daemon["HARMONIZE_LOG_DIR"]) / "daemon.log"
    log_start = daemon_log.stat().st_size  # the daemon serves every Krita: this run's lines
    start = time.monotonic()
    proc = krita.run(["krita", "--nosplash"], env, display=True)
    seconds = time.monotonic() - start
    log = "\n".join(
        line for line in (proc.stdout + proc.stderr).splitlines()
        if "harmonize" in line or "autorun" in line or "Error" in line or "Trace" in line
    )[-6000:]  # fmt: skip
    assert proc.returncode == 0, f"Krita run failed (rc {proc.returncode}, {seconds:.0f} s):\n{log}"
    result = json.loads(result_file.read_text())
    request.node.user_properties.append(("krita_gui_seconds", round(seconds, 1)))
    assert result["krita"].startswith(f"{krita.version}."), result["krita"]

    assert ["Filter"] in result["menu_paths"], result["menu_paths"]
    assert result["action"] == {"text": "Harmonize Layer", "shortcut": "Ctrl+Alt+Shift+H"}
    assert result["docker"] == ["Harmonize"]
    for case, dtype in zip(cases, (np.uint8, np.uint16), strict=True):
        name, out = case["name"], Path(case["out"])
        info = result["cases"][name]
        assert info["layers"] == ["Background", "pasted", "pasted (harmonized)"], info
        assert info["undo_steps"] == ["Add Layer"], info  # one run, one undo step
        wanted_mode = (case.get("blending") or "normal", case.get("opacity") or 255)
        assert (info["new_blending"], info["new_opacity"]) == wanted_mode, info
        assert info["exported"] and (out / "flattened.png").stat().st_size > 0
        if case["undo"]:  # inserting the finished layer is exactly one undo step
            assert info["after_undo"] == ["Background", "pasted"], info
            assert info["after_redo"] == info["layers"], info
        source = (out / "source_before.raw").read_bytes()
        assert (out / "source_after.raw").read_bytes() == source, f"{name}: source modified"
        # what Krita holds (Edit > Paste goes through an 8-bit clipboard image)
        layer = bgra(source, dtype)
        wanted = quantize(images["layer"], dtype)
        opaque = wanted[..., 3] == np.iinfo(dtype).max
        np.testing.assert_array_equal(layer[opaque], wanted[opaque])  # pasted in place
        bg = quantize(images["bg"], dtype)
        expected = expected_layer(tmp_path, weights, layer, bg, cache=cli_cache)
        assert_matches(bgra((out / "result.raw").read_bytes(), dtype), expected, layer, name)
        if case["reapply"] is not None:  # the docker's strength slider, on the same layer
            assert info["reapply_layers"] == info["layers"]
            half = expected_layer(tmp_path, weights, layer, bg, case["reapply"], cache=cli_cache)
            again = bgra((out / "result_reapplied.raw").read_bytes(), dtype)
            assert_matches(again, half, layer, f"{name} at strength {case['reapply']}")
            assert info["docker"] == {
                "apply_enabled": True,
                "connected": True,
                "hidden_when_before": True,
                "visible_after": True,
                "session_after_apply": False,
                "apply_enabled_after": False,
            }, info["docker"]
    with daemon_log.open("rb") as fh:
        fh.seek(log_start)
        assert b"cached=True" in fh.read(), "the strength change re-ran the network"
    refused = result["cases"]["gui_bottom"]
    assert refused["message"].startswith("Nothing is visible below 'Background'"), refused
    assert refused["message"] in refused["docker_labels"], refused  # said in the docker
    assert refused["layers"] == ["Background", "pasted"] and refused["undo_steps"] == []


# ---- 3. the release zip through Krita's own importer ------------------------------------------


def test_release_zip_imports_and_loads_its_wheels(
    krita: KritaInstall, tmp_path: Path, runner_home: Path
) -> None:
    """``package-plugin krita`` (wheels for Krita's Python only, from PyPI), unpacked by Krita's
    own plugin importer; in kritarunner the vendored pyzmq and msgpack load."""
    importer = "/usr/share/krita/pykrita/plugin_importer/plugin_importer.py"
    if not krita.path(importer).is_file():
        host_unavailable(f"{krita.path(importer)} is missing (Debian's krita package ships it)")
    from layer_harmonizer import install

    version = krita.python_version()
    try:
        out = install.package_krita(
            tmp_path / "harmonize-krita.zip", targets=[(version, "linux-x86_64")]
        )
    except install.InstallError as exc:  # PyPI unreachable: not a Krita problem
        pytest.skip(f"could not download the wheels: {str(exc)[:300]}")
    resources = tmp_path / "resources"
    resources.mkdir()
    imported = krita.run(["/usr/bin/python3", importer, str(out), str(resources)], {})
    assert "Imported plugin: Harmonize Layer" in imported.stdout, imported.stdout + imported.stderr
    assert (resources / "actions" / "harmonize.action").is_file()
    report_file = tmp_path / "zipcheck.json"
    env = {**krita_env(dict(os.environ), runner_home), "QT_QPA_PLATFORM": "offscreen",
           "HARMONIZE_KRITA_NO_REGISTER": "1", "PYTHONPATH": str(HOSTS)}  # fmt: skip
    proc = krita.run(
        ["kritarunner", "-s", "krita_zipcheck", "-f", "main", str(resources / "pykrita"),
         str(report_file)], env,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = json.loads(report_file.read_text())
    assert report["python"] == version
    # the wheels' folders for this Python: cp3XY-<platform>, and for 3.12+ pyzmq's stable ABI
    wheels = resources / "pykrita" / "harmonize" / "wheels"
    tags = {f"cp{version.replace('.', '')}-linux_x86_64"}
    if tuple(map(int, version.split("."))) >= (3, 12):
        tags.add("abi3-linux_x86_64")
    for module in ("zmq", "msgpack"):
        assert Path(report[module]).is_relative_to(wheels), report
        assert Path(report[module]).relative_to(wheels).parts[0] in tags, report
    assert "/vendor/layer_harmonizer/wire/host_side.py" in report["host_side"]

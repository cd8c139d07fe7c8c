"""The GIMP plug-in inside real GIMP 3 (Debian 13's 3.0.4 in a cached chroot), real daemon.

``tests/hosts/gimp3-trixie.sh provision`` builds (once) a debootstrap chroot with GIMP 3 and
python3-zmq/msgpack under ``$HARMONIZE_CI_CACHE``. The test then

1. starts ``harmonize serve`` on the host (127.0.0.1, random weights saved from a seeded
   ``aict-light``), its endpoint file in a runtime dir inside the job folder that the chroot
   sees at /job/runtime (GIMP gets ``HARMONIZE_RUNTIME_DIR=/job/runtime``);
2. installs the plug-in with ``harmonize install-plugin gimp --gimp-dir ... --deps host``
   into the HOME GIMP uses inside the chroot;
3. runs ``gimp-console-3.0`` with tests/hosts/gimp_batch.py, which builds the images (a real
   paste = floating selection, a 16-bit image with a selection and a layer above, a replace,
   a fully transparent layer), calls the procedure non-interactively through the PDB and
   dumps the layers;
4. checks here that the new layer equals ``harmonize run`` on the same composite and mask
   (within 1 level, where the mask is full), that unmasked pixels and the source layer are
   unchanged, the names, positions and the error message.

Undo: GIMP 3.0's PDB has no procedure that performs an undo (only undo-group start/end,
enable/disable, freeze/thaw), so batch mode cannot check it. ``test_undo_and_redo_in_the_gui``
therefore starts the GIMP *GUI* from the same chroot on an Xvfb display
(``gimp3-trixie.sh gui``), with tests/hosts/gimp_gui.py as its startup script: it pastes
into an image in a window and runs the procedure; the test presses Ctrl+Z and Ctrl+Y in that
window with xdotool, and the script reports the layers after each key. The same GIMP then runs
the procedure interactively: the dialog's preview, then OK (Return).

The chroot is only *built* with ``HARMONIZE_BUILD_HOSTS=1`` (.ci/run sets it; a developer opts
in): a plain ``python -m pytest`` uses an existing one or skips, naming the switch. Skipped with
a reason when the chroot cannot be provisioned (not root, no network for debootstrap), unless
``HARMONIZE_REQUIRE_HOSTS=1`` (CI) turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layer_harmonizer.compose import composite, crop_box
from layer_harmonizer.wire import host_side as S
from layer_harmonizer.wire.messages import DEFAULT_CROP_MARGIN, MIN_CROP_MARGIN_PX
from tests.conftest import ensure_trixie_chroot, host_unavailable, need_tools
from tests.daemon_process import DaemonProcess

pytestmark = [pytest.mark.gimp, pytest.mark.host, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "hosts" / "gimp3-trixie.sh"
BATCH = REPO / "tests" / "hosts" / "gimp_batch.py"
GUI_SCRIPT = REPO / "tests" / "hosts" / "gimp_gui.py"
W, H = 160, 120
OBJ_W, OBJ_H = 60, 44


def ensure_gimp_chroot() -> None:
    """Use the GIMP 3 chroot; build it only when ``HARMONIZE_BUILD_HOSTS=1``, else skip (or
    fail under ``HARMONIZE_REQUIRE_HOSTS=1``) with a reason that names the switch."""
    ensure_trixie_chroot("GIMP 3")


@pytest.fixture(scope="module")
def gimp_chroot() -> None:
    ensure_gimp_chroot()


# ---- the scene --------------------------------------------------------------------------------


def scene() -> dict[str, np.ndarray]:
    """8-bit RGB(A): a gradient photo with texture, and an object with a soft rim."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    bg = np.stack([40 + 150 * xx / W, 60 + 100 * yy / H, 170 - 90 * xx / W], -1)
    bg = np.clip(bg + rng.normal(0, 6, bg.shape), 0, 255).round().astype(np.uint8)
    oy, ox = np.mgrid[0:OBJ_H, 0:OBJ_W].astype(np.float64)
    dist = np.hypot((ox - OBJ_W / 2) / (OBJ_W / 2 - 2), (oy - OBJ_H / 2) / (OBJ_H / 2 - 2))
    alpha = np.clip((1.0 - dist) * 8.0, 0.0, 1.0)  # opaque core, soft anti-aliased rim
    obj = np.stack(
        [230 - 40 * oy / OBJ_H, 120 + 60 * np.sin(ox / 6), 30 + 20 * ox / OBJ_W, 255 * alpha], -1
    )
    return {"bg": bg, "obj": np.clip(obj, 0, 255).round().astype(np.uint8)}


def write_png(path: Path, rgb: np.ndarray, alpha: np.ndarray | None = None) -> str:
    from layer_harmonizer.image_files import write_image

    write_image(path, rgb, alpha)
    return str(path)


CASES: list[dict[str, Any]] = [
    # a fresh paste (floating selection), 8-bit, a hidden layer below that must not count
    {"name": "u8_paste", "precision": "U8_NON_LINEAR", "paste": True, "offset": [70, 40],
     "hidden_below": True, "strength": 1.0, "dtype": "uint8"},
    # 16-bit, a selection cutting the object, a half-transparent layer above it
    {"name": "u16_selection", "precision": "U16_NON_LINEAR", "paste": False, "offset": [20, 30],
     "selection": [10, 20, 55, 80], "cover": [0, 0, 90, 60], "strength": 0.7,
     "dtype": "uint16"},
    # replace in place
    {"name": "u8_replace", "precision": "U8_NON_LINEAR", "paste": False, "offset": [50, 50],
     "replace": True, "strength": 1.0, "dtype": "uint8"},
    # 32-bit float, stored linear (the plug-in reads and writes perceptual float)
    {"name": "float_linear", "precision": "FLOAT_LINEAR", "paste": True, "offset": [90, 60],
     "strength": 1.0, "dtype": "float32"},
    # nothing to harmonize: a message, no new layer
    {"name": "empty", "precision": "U8_NON_LINEAR", "paste": False, "offset": [10, 10],
     "transparent": True, "strength": 1.0, "dtype": "uint8"},
    # the bottom layer, as a user runs it from the menu: refused before any dialog opens
    {"name": "bottom_interactive", "precision": "U8_NON_LINEAR", "paste": False,
     "offset": [10, 10], "target": "background", "run_mode": "INTERACTIVE", "strength": 1.0,
     "dtype": "uint8"},
]  # fmt: skip
NO_DAEMON_CASES: list[dict[str, Any]] = [
    # a fresh paste, from the menu, with no daemon running and none that can be started
    {"name": "no_daemon_interactive", "precision": "U8_NON_LINEAR", "paste": True,
     "offset": [70, 40], "run_mode": "INTERACTIVE", "strength": 1.0, "dtype": "uint8"},
]  # fmt: skip


# ---- daemon + GIMP run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, light_model: Any) -> Path:
    """conftest's seeded aict-light with non-trivial random heads, saved for the daemon."""
    from layer_harmonizer.model.weights import save_weights

    path = tmp_path_factory.mktemp("weights") / "random-aict-light.pt"
    save_weights(path, light_model, "aict-light", {"note": "random, tests only"}, half=False)
    return path


@pytest.fixture(scope="module")
def daemon(gimp_chroot: None, weights: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Path]:  # fmt: skip
    """A real daemon on 127.0.0.1; yields the job folder whose runtime/ holds its endpoint."""
    job = tmp_path_factory.mktemp("gimp-job")
    with DaemonProcess(job, weights, "--device", "cpu", "--port", "0"):
        yield job


def install_deps() -> list[str]:
    """``--deps host`` (the chroot's python3-zmq/msgpack), or with
    ``HARMONIZE_GIMP_TEST_DEPS=vendor`` wheels for GIMP's Python 3.13 from PyPI."""
    if os.environ.get("HARMONIZE_GIMP_TEST_DEPS") == "vendor":
        return ["--deps", "vendor", "--python-version", "3.13", "--platform", "linux-x86_64"]
    return ["--deps", "host"]


@pytest.fixture(scope="module")
def gimp_run(daemon: Path) -> dict[str, Any]:
    """Install the plug-in with the installer, run every case in one GIMP; returns the reports."""
    job = daemon
    pictures = scene()
    write_png(job / "bg.png", pictures["bg"])
    obj = pictures["obj"]
    write_png(job / "obj.png", obj[..., :3], obj[..., 3])
    write_png(job / "clear.png", obj[..., :3], np.zeros_like(obj[..., 3]))
    cases = []
    for case in CASES:
        chroot_case = {
            **case,
            "background": "/job/bg.png",
            "object": "/job/clear.png" if case.get("transparent") else "/job/obj.png",
            "format": "R'G'B'A " + BABL[case["dtype"]],
        }
        cases.append(chroot_case)  # fmt: skip
    (job / "job.json").write_text(json.dumps(cases))
    (job / "batch.py").write_text(BATCH.read_text())
    install = subprocess.run(
        [sys.executable, "-m", "layer_harmonizer", "install-plugin", "gimp",
         "--gimp-dir", str(job / "home" / ".config" / "GIMP" / "3.0"), *install_deps()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPT), "run", str(job), "batch.py", "HARMONIZE_RUNTIME_DIR=/job/runtime"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    print(f"GIMP run: {time.monotonic() - start:.1f} s\n{log[-3000:]}")
    assert proc.returncode == 0, f"gimp-console failed (rc {proc.returncode}):\n{log[-4000:]}"
    reports = {c["name"]: json.loads((job / "out" / f"{c['name']}.json").read_text())
               for c in CASES}  # fmt: skip
    return {"job": job, "reports": reports, "scene": pictures, "log": log}


# ---- the reference ----------------------------------------------------------------------------


BABL = {"uint8": "u8", "uint16": "u16", "float32": "float"}
TOLERANCE = {"uint8": 1, "uint16": 1, "float32": 1e-3}
"""'Within 1 level': one level of the integer formats; 1e-3 (a quarter 8-bit level) for float,
where GIMP's u8 -> linear float -> perceptual float round trip moves inputs by ~1e-7."""


def full_scale(dtype: str) -> float:
    return 1.0 if dtype == "float32" else float(np.iinfo(dtype).max)


def scale(arr: np.ndarray, dtype: str) -> np.ndarray:
    """8-bit values in the case's dtype (GIMP converts u8 -> u16 as v * 257, float as v/255)."""
    if dtype == "float32":
        return (arr / np.float32(255)).astype(np.float32)
    return arr.astype(np.uint16) * 257 if dtype == "uint16" else arr.copy()


def expected_inputs(case: dict[str, Any], pictures: dict[str, np.ndarray]) -> dict[str, Any]:
    """What the plug-in sends for ``case``: layer, mask, backdrop over the context region."""
    dtype = case["dtype"]
    full = full_scale(dtype)
    ox, oy = case["offset"]
    layer_box = S.Box(ox, oy, OBJ_W, OBJ_H)
    region = S.context_box(layer_box, W, H)
    layer = np.zeros((region.h, region.w, 4), dtype)
    x, y = ox - region.x, oy - region.y
    layer[y : y + OBJ_H, x : x + OBJ_W] = scale(pictures["obj"], dtype)
    selection = np.ones((H, W), bool)
    if case.get("selection"):
        sx, sy, sw, sh = case["selection"]
        selection[:] = False
        selection[sy : sy + sh, sx : sx + sw] = True
    sel = selection[region.y : region.bottom, region.x : region.right]
    mask = np.where(sel, layer[..., 3], 0).astype(dtype)
    backdrop = scale(pictures["bg"], dtype)[region.y : region.bottom, region.x : region.right]
    return {"region": region, "layer": layer, "mask": mask, "backdrop": backdrop, "full": full}


def harmonize_run(job: Path, weights: Path, name: str, comp: np.ndarray, mask: np.ndarray,
                  strength: float) -> np.ndarray:  # fmt: skip
    """``harmonize run`` (the CLI, a fresh process) on a composite and a mask."""
    from layer_harmonizer.image_files import read_image

    ext = ".tiff" if comp.dtype == np.float32 else ".png"  # PNG: 8/16 bit; TIFF keeps float
    comp_png = write_png(job / f"{name}.comp{ext}", comp)
    mask_png = write_png(job / f"{name}.mask{ext}", np.repeat(mask[..., None], 3, axis=2))
    out = job / f"{name}.expected{ext}"
    subprocess.run(
        [sys.executable, "-m", "layer_harmonizer", "run", comp_png, mask_png, "-o", str(out),
         "--weights", str(weights), "--device", "cpu", "--strength", str(strength)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return read_image(out)[0]


def dumped(job: Path, name: str, part: str, dtype: str) -> np.ndarray:
    raw = (job / "out" / f"{name}.{part}.raw").read_bytes()
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(OBJ_H, OBJ_W, 4)


# ---- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["u8_paste", "u16_selection", "u8_replace", "float_linear"])
def test_new_layer_equals_harmonize_run(gimp_run: dict[str, Any], weights: Path, name: str):
    case = next(c for c in CASES if c["name"] == name)
    job, report = gimp_run["job"], gimp_run["reports"][name]
    assert report["status"] == "success", report["error"]
    assert "<Image>/Filters" in report["menu_paths"]
    dtype, full = case["dtype"], full_scale(case["dtype"])
    assert report["precision"] == f"GIMP_PRECISION_{case['precision']}"
    inputs = expected_inputs(case, gimp_run["scene"])
    region = inputs["region"]
    mask_f = inputs["mask"].astype(np.float32) / full
    box = crop_box(mask_f, DEFAULT_CROP_MARGIN, MIN_CROP_MARGIN_PX)  # the daemon's crop
    assert box is not None
    x0, y0, x1, y1 = box
    rgb = np.ascontiguousarray(inputs["layer"][y0:y1, x0:x1, :3])
    comp = composite(rgb, mask_f[y0:y1, x0:x1], inputs["backdrop"][y0:y1, x0:x1])
    expected = harmonize_run(job, weights, name, comp, inputs["mask"][y0:y1, x0:x1],
                             case["strength"])  # fmt: skip

    new = dumped(job, name, "new", dtype)
    before = dumped(job, name, "src_before", dtype)
    # the new layer over the source layer's bounds vs the reference over the crop
    lx, ly = case["offset"][0] - region.x, case["offset"][1] - region.y  # layer in region
    ref = np.zeros((OBJ_H, OBJ_W, 3), np.float64)
    in_crop = np.zeros((OBJ_H, OBJ_W), bool)
    cx0, cy0 = max(x0, lx), max(y0, ly)
    cx1, cy1 = min(x1, lx + OBJ_W), min(y1, ly + OBJ_H)
    in_crop[cy0 - ly : cy1 - ly, cx0 - lx : cx1 - lx] = True
    ref[cy0 - ly : cy1 - ly, cx0 - lx : cx1 - lx] = expected[
        cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0
    ]
    layer_mask = inputs["mask"][ly : ly + OBJ_H, lx : lx + OBJ_W]
    full_mask = (layer_mask == full) & in_crop
    assert full_mask.sum() > 300, "the case must have fully masked pixels to compare"
    diff = np.abs(new[..., :3].astype(np.float64) - ref)[full_mask]
    print(f"{name}: {full_mask.sum()} pixels compared, max diff {diff.max():.3g}")
    assert diff.max() <= TOLERANCE[dtype], f"new layer vs harmonize run: max diff {diff.max()}"
    changed = np.abs(new[..., :3].astype(np.float64) - before[..., :3])[full_mask]
    # not a trivial pass: most compared pixels moved by more than one 8-bit level
    assert (changed > full / 255).mean() > 0.5, "the harmonization changed (almost) nothing"
    # alpha is the source's; unmasked pixels are untouched (RGB where alpha > 0)
    np.testing.assert_array_equal(new[..., 3], before[..., 3])
    untouched = (layer_mask == 0) & (before[..., 3] > 0)
    np.testing.assert_array_equal(new[..., :3][untouched], before[..., :3][untouched])
    assert report["background_unchanged"]
    assert report["undo_enabled"]  # the procedure ran with undo recording, as for a user


def test_names_positions_and_source(gimp_run: dict[str, Any]):
    reports, job = gimp_run["reports"], gimp_run["job"]
    paste = reports["u8_paste"]
    assert paste["source_valid"] and paste["source_is_floating"] is False  # became a layer
    tree = paste["tree_after"]
    pos = paste["source_position"]
    assert tree[pos - 1]["name"] == S.result_name(tree[pos]["name"]) == paste["new"]["name"]
    assert len(tree) == len(paste["tree_before"]) + 1  # floating sel -> layer, + the new one
    sel = reports["u16_selection"]
    names = [lay["name"] for lay in sel["tree_after"]]
    assert names == ["cover", "object (harmonized)", "object", "Background"], names
    assert sel["new"]["offsets"] == CASES[1]["offset"]
    for name in ("u8_paste", "u16_selection"):
        before = (job / "out" / f"{name}.src_before.raw").read_bytes()
        assert (job / "out" / f"{name}.src_after.raw").read_bytes() == before, name
    replace = reports["u8_replace"]
    assert [lay["name"] for lay in replace["tree_after"]] == ["object", "Background"]
    assert not replace["source_valid"]  # replaced: the source layer is gone, the new one named


def test_empty_mask_is_a_message(gimp_run: dict[str, Any]):
    report = gimp_run["reports"]["empty"]
    assert report["status"] == "execution-error"
    assert "Nothing to harmonize" in report["error"], report["error"]
    assert [lay["name"] for lay in report["tree_after"]] == ["object", "Background"]
    # a failed run is no undo step (not even an empty "Undo Harmonize Layer"): still clean
    assert report["dirty_after"] is False


def test_bottom_layer_is_refused_before_the_dialog(gimp_run: dict[str, Any]):
    """From the menu (interactive) on the bottom layer: the reason comes at once, instead of
    a dialog (gimp-console has no display: opening one would fail differently)."""
    report = gimp_run["reports"]["bottom_interactive"]
    assert report["status"] == "execution-error", report
    assert report["error"].startswith("Nothing is visible below the layer"), report["error"]
    assert report["tree_after"] == report["tree_before"]
    assert report["dirty_after"] is False


@pytest.fixture(scope="module")
def gimp_without_daemon(gimp_run: dict[str, Any]) -> dict[str, Any]:
    """A second GIMP run on the same installation with an empty runtime dir: no daemon
    answers, and the recorded ``serve`` command (the test's venv) is absent in the chroot."""
    job = gimp_run["job"]
    (job / "nodaemon").mkdir(mode=0o700, exist_ok=True)
    cases = [{**case, "background": "/job/bg.png", "object": "/job/obj.png",
              "format": "R'G'B'A " + BABL[case["dtype"]]} for case in NO_DAEMON_CASES]  # fmt: skip
    (job / "job-nodaemon.json").write_text(json.dumps(cases))
    proc = subprocess.run(
        ["bash", str(SCRIPT), "run", str(job), "batch.py", "HARMONIZE_RUNTIME_DIR=/job/nodaemon",
         "HARMONIZE_TEST_JOB=job-nodaemon.json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"gimp-console failed (rc {proc.returncode}):\n{log[-4000:]}"
    return {c["name"]: json.loads((job / "out" / f"{c['name']}.json").read_text())
            for c in NO_DAEMON_CASES}  # fmt: skip


def test_missing_daemon_is_refused_before_the_dialog(gimp_without_daemon: dict[str, Any]):
    report = gimp_without_daemon["no_daemon_interactive"]
    assert report["status"] == "execution-error", report
    assert "not installed" in report["error"], report["error"]
    # the paste is still a floating selection: nothing was converted, added or recorded
    assert report["source_is_floating"] is True
    assert report["tree_after"] == report["tree_before"]
    assert report["dirty_after"] is False


# ---- undo, in the GUI -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xvfb() -> Iterator[str]:
    """A private Xvfb display (``:N``); the display number comes back through -displayfd."""
    need_tools("Xvfb", "xdotool")
    read, write = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1400x900x24", "-nolisten", "tcp"],
        pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 30)
        number = os.read(read, 64).decode().strip() if ready else ""
        if not number.isdigit():
            host_unavailable("Xvfb did not start within 30 s")
        yield f":{number}"
    finally:
        os.close(read)
        proc.terminate()
        proc.wait(10)


def _report(out: Path, name: str, ready: Any, timeout: float) -> dict[str, Any]:
    """Wait until gimp_gui.py's ``name`` report satisfies ``ready`` (or the script crashed)."""
    deadline = time.monotonic() + timeout
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if (out / "crash.json").exists():
            pytest.fail(f"gimp_gui.py crashed: {(out / 'crash.json').read_text()}")
        with contextlib.suppress(OSError, ValueError):  # not written yet / being replaced
            report = json.loads((out / name).read_text())
        if report and ready(report):
            return report
        time.sleep(0.1)
    return report


def _xdotool(display: str, *args: str) -> str:
    env = {**os.environ, "DISPLAY": display}
    done = subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    return done.stdout


def _press(display: str, window_name: str, keys: str, which: int = 0) -> None:
    """Focus the window whose title matches ``window_name`` (the ``which``-th match, cycling)
    and press ``keys`` there (XTEST, as a user's keyboard)."""
    found = _xdotool(display, "search", "--sync", "--onlyvisible", "--name", window_name).split()
    window = found[which % len(found)]
    _xdotool(display, "windowfocus", "--sync", window)
    _xdotool(display, "key", "--clearmodifiers", keys)


def _press_for_state(display: str, keys: str, out: Path, name: str, count: int) -> dict[str, Any]:
    """Press ``keys`` in the image window until gimp_gui.py's ``name`` report holds ``count``
    states (at most three presses, waiting 10, 20 and 30 s). A press is repeated only when the
    layers have not changed at all (the key went to another window or was lost under load), so a
    step that a single press only half undoes still shows as a state of its own."""
    report: dict[str, Any] = {}
    for attempt in range(3):
        _press(display, IMAGE_WINDOW, keys, which=attempt)
        report = _report(out, name, lambda r: len(r["states"]) >= count, timeout=10 + 10 * attempt)
        if len(report.get("states", [])) >= count:
            break
    return report


IMAGE_WINDOW = " – GIMP$"  # an image window's title ends with this (en dash)
DIALOG_WINDOW = "^Harmonize Layer$"


@pytest.fixture(scope="module")
def gimp_gui(gimp_run: dict[str, Any], xvfb: str) -> Iterator[dict[str, Any]]:
    """The GIMP GUI from the chroot on the Xvfb display, running tests/hosts/gimp_gui.py."""
    job = gimp_run["job"]  # the plug-in is installed there, bg.png / obj.png written
    out = job / "out"
    for stale in ("undo.json", "undo.stop", "dialog.json", "crash.json"):
        (out / stale).unlink(missing_ok=True)
    (job / "gui.py").write_text(GUI_SCRIPT.read_text())
    log = job / "gimp-gui.log"
    daemon_log = job / "log" / "daemon.log"

    def daemon_jobs() -> list[str]:
        """The daemon's log line of every finished harmonize job ("..., cached=True")."""
        return [x for x in daemon_log.read_text().splitlines() if "cached=" in x]

    jobs_before = len(daemon_jobs())
    with log.open("wb") as sink:
        gimp = subprocess.Popen(
            ["bash", str(SCRIPT), "gui", str(job), "gui.py", "HARMONIZE_RUNTIME_DIR=/job/runtime"],
            env={**os.environ, "DISPLAY": xvfb}, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    yield {"out": out, "display": xvfb, "log": log, "jobs": daemon_jobs, "before": jobs_before}
    (out / "undo.stop").touch()  # whatever happened: let the script finish, then quit
    with contextlib.suppress(subprocess.SubprocessError):  # a dialog left open: Cancel
        if not (out / "dialog.json").exists():
            _press(xvfb, DIALOG_WINDOW, "Escape")
    try:
        gimp.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(gimp.pid, signal.SIGTERM)
        gimp.wait(30)


def test_undo_and_redo_in_the_gui(gimp_gui: dict[str, Any]):
    """A fresh paste, harmonized: one Ctrl+Z in GIMP's window brings back exactly the floating
    selection and the layers as they were (names, pixels); Ctrl+Y redoes the whole step."""
    out, display = gimp_gui["out"], gimp_gui["display"]
    try:
        report = _report(out, "undo.json", lambda r: len(r["states"]) >= 2, timeout=240)
        assert report.get("status") == "success", (report, gimp_gui["log"].read_text()[-3000:])
        before, after = report["states"][:2]
        assert [floating for _, floating, _ in before] == [True, False]  # the paste, the photo
        assert [name for name, _, _ in after] == [
            S.result_name(after[1][0]),
            after[1][0],
            before[1][0],
        ]
        assert not after[1][1] and after[1][2] == before[0][2]  # now a layer, pixels unchanged
        report = _press_for_state(display, "ctrl+z", out, "undo.json", 3)
        assert report["states"][2:] == [before], "one Ctrl+Z did not restore the paste"
        report = _press_for_state(display, "ctrl+y", out, "undo.json", 4)
        assert report["states"][3:] == [after], "Ctrl+Y did not redo the whole step"
    finally:
        (out / "undo.stop").touch()  # on to the dialog phase


def test_dialog_preview_then_ok_in_the_gui(gimp_gui: dict[str, Any]):
    """The interactive dialog on another paste: the daemon is asked once, before the dialog
    opens (the check that the run can succeed); the preview shows that answer, OK at the same
    strength uses it (no second request), and no preview layer is left behind."""
    out, display, jobs = gimp_gui["out"], gimp_gui["display"], gimp_gui["jobs"]
    (out / "undo.stop").touch()
    first = gimp_gui["before"] + 1  # the undo phase ran one job
    _xdotool(display, "search", "--sync", "--onlyvisible", "--name", DIALOG_WINDOW)
    assert len(jobs()) == first + 1, jobs()[first:]  # answered before the dialog appeared
    assert jobs()[first].endswith("cached=False"), jobs()[first:]
    time.sleep(0.5)  # the preview shows that answer: nothing else may follow
    assert len(jobs()) == first + 1, jobs()[first:]
    _press(display, DIALOG_WINDOW, "Return")  # OK
    report = _report(out, "dialog.json", lambda r: "status" in r, timeout=60)
    assert report["status"] == "success", report
    pasted = report["layers"][1][0]
    assert report["layers"] == [[S.result_name(pasted), False], [pasted, False],
                                ["Background", False]]  # fmt: skip
    assert len(jobs()) == first + 1, jobs()[first:]

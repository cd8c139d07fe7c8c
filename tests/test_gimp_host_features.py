"""A flat image in real GIMP 3 (the chroot and daemon of tests/test_gimp_host.py): one photo
layer, nothing below it.

With a rectangle selected, Filters ▸ Harmonize Layer (run through the PDB as the menu does, by
tests/hosts/gimp_batch.py) adds "Background (harmonized)" above the photo: inside the
selection it equals ``harmonize run`` on the photo with the selection as its mask (the
backdrop is the photo itself), outside it keeps the photo's pixels; the photo is unchanged.
Without a selection the run is refused with a message that says what to do, and the image is
left clean (no undo step). In the GIMP GUI (tests/hosts/gimp_gui.py's flat phase, on Xvfb),
one Ctrl+Z in the image window brings back the photo alone with its pixels, and Ctrl+Y the
result: the run is one undo step.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layer_harmonizer.compose import crop_box
from layer_harmonizer.wire.messages import DEFAULT_CROP_MARGIN, MIN_CROP_MARGIN_PX
from tests import test_gimp_host as base
from tests.test_gimp_host import (
    BABL,
    GUI_SCRIPT,
    SCRIPT,
    H,
    W,
    _press_for_state,
    _report,
    harmonize_run,
    scene,
)

gimp_chroot, weights, daemon, gimp_run, xvfb = (
    base.gimp_chroot, base.weights, base.daemon, base.gimp_run, base.xvfb,
)  # fmt: skip
"""The fixtures of tests/test_gimp_host.py: the chroot, the test weights, the daemon, the
installed plug-in (with bg.png in the job folder) and an Xvfb display."""

pytestmark = [pytest.mark.gimp, pytest.mark.host, pytest.mark.slow]

SELECTION = [40, 30, 50, 40]
"""x, y, w, h of the rectangle selected on the photo."""
FLAT_CASES: list[dict[str, Any]] = [
    {"name": "flat_selection", "precision": "U8_NON_LINEAR", "paste": False, "flat": True,
     "offset": [0, 0], "selection": SELECTION, "strength": 1.0, "dtype": "uint8"},
    {"name": "flat_no_selection", "precision": "U8_NON_LINEAR", "paste": False, "flat": True,
     "offset": [0, 0], "strength": 1.0, "dtype": "uint8"},
]  # fmt: skip


@pytest.fixture(scope="module")
def flat_run(gimp_run: dict[str, Any]) -> dict[str, Any]:
    """A GIMP run of the flat cases on the installed plug-in; returns the reports."""
    job = gimp_run["job"]
    cases = [{**case, "background": "/job/bg.png", "object": "/job/obj.png",
              "format": "R'G'B'A " + BABL[case["dtype"]]} for case in FLAT_CASES]  # fmt: skip
    (job / "job-flat.json").write_text(json.dumps(cases))
    proc = subprocess.run(
        ["bash", str(SCRIPT), "run", str(job), "batch.py", "HARMONIZE_RUNTIME_DIR=/job/runtime",
         "HARMONIZE_TEST_JOB=job-flat.json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"gimp-console failed (rc {proc.returncode}):\n{log[-4000:]}"
    reports = {c["name"]: json.loads((job / "out" / f"{c['name']}.json").read_text())
               for c in FLAT_CASES}  # fmt: skip
    return {"job": job, "reports": reports}


def photo_raw(job: Path, name: str, part: str) -> np.ndarray:
    return np.frombuffer((job / "out" / f"{name}.{part}.raw").read_bytes(), np.uint8).reshape(
        H, W, 4
    )


def test_flat_image_selection_is_matched_to_the_rest(flat_run: dict[str, Any], weights: Path):
    job, report = flat_run["job"], flat_run["reports"]["flat_selection"]
    assert report["status"] == "success", report["error"]
    assert [lay["name"] for lay in report["tree_after"]] == [
        "Background (harmonized)", "Background"
    ]  # fmt: skip
    assert report["undo_enabled"] and report["background_unchanged"]
    photo = scene()["bg"]
    before, new = (
        photo_raw(job, "flat_selection", "src_before"),
        photo_raw(job, "flat_selection", "new"),
    )
    np.testing.assert_array_equal(before[..., :3], photo)
    x, y, w, h = SELECTION
    inside = np.zeros((H, W), bool)
    inside[y : y + h, x : x + w] = True
    np.testing.assert_array_equal(new[~inside], before[~inside])  # outside: untouched
    np.testing.assert_array_equal(
        photo_raw(job, "flat_selection", "src_after"), before
    )  # the photo itself
    mask = np.where(inside, 255, 0).astype(np.uint8)
    # the region sent is the whole photo (the layer's box); the daemon crops to the mask's box
    x0, y0, x1, y1 = crop_box(mask / 255.0, DEFAULT_CROP_MARGIN, MIN_CROP_MARGIN_PX)
    crop = (slice(y0, y1), slice(x0, x1))
    wanted = photo.copy()
    wanted[crop] = harmonize_run(job, weights, "flat_selection", np.ascontiguousarray(photo[crop]),
                                 np.ascontiguousarray(mask[crop]), 1.0)  # fmt: skip
    diff = np.abs(new[..., :3].astype(int) - wanted.astype(int))[inside]
    print(f"flat image: {inside.sum()} pixels compared, max diff {diff.max()}")
    assert diff.max() <= 1, f"differs from `harmonize run` by {diff.max()}"
    assert np.abs(new[..., :3].astype(int) - photo)[inside].max() > 5  # recoloured


def test_flat_image_without_selection_is_refused(flat_run: dict[str, Any]):
    report = flat_run["reports"]["flat_no_selection"]
    assert report["status"] == "execution-error", report
    assert report["error"].startswith("Nothing is visible below the layer"), report["error"]
    assert "select the object that looks wrong, then run Harmonize again" in report["error"]
    assert report["tree_after"] == report["tree_before"]
    assert report["dirty_after"] is False  # no undo step


def test_flat_image_is_one_undo_step_in_the_gui(gimp_run: dict[str, Any], xvfb: str):
    job = gimp_run["job"]
    out = job / "out"
    for stale in ("flat.json", "flat.stop", "crash.json"):
        (out / stale).unlink(missing_ok=True)
    (job / "gui_flat.py").write_text(GUI_SCRIPT.read_text())
    with (job / "gimp-gui-flat.log").open("wb") as sink:
        gimp = subprocess.Popen(
            ["bash", str(SCRIPT), "gui", str(job), "gui_flat.py",
             "HARMONIZE_RUNTIME_DIR=/job/runtime", "HARMONIZE_GUI_PHASES=flat"],
            env={**os.environ, "DISPLAY": xvfb}, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        report = _report(out, "flat.json", lambda r: len(r["states"]) >= 2, timeout=240)
        assert report.get("status") == "success", report
        before, after = report["states"][:2]
        assert [name for name, _, _ in before] == ["Background"]
        assert [name for name, _, _ in after] == ["Background (harmonized)", "Background"]
        assert after[1] == before[0]  # the photo itself is unchanged
        report = _press_for_state(xvfb, "ctrl+z", out, "flat.json", 3)
        assert report["states"][2:] == [before], "one Ctrl+Z did not undo the whole run"
        report = _press_for_state(xvfb, "ctrl+y", out, "flat.json", 4)
        assert report["states"][3:] == [after], "Ctrl+Y did not redo the whole run"
    finally:
        (out / "flat.stop").touch()
        try:
            gimp.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(gimp.pid, signal.SIGTERM)
            gimp.wait(30)

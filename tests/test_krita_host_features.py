"""The Krita docker's flows inside real Krita (GUI under Xvfb), against a real daemon, for
each Krita of tests/test_krita_host.py (``[krita-5.1]``, ``[krita-5.2]``; same fixtures):

- Preview then Apply: a "[Preview] …" layer, Apply keeps it, and the whole run is one undo
  step in Krita's History docker ("Add Layer": Krita names the steps, a plug-in cannot);
  Edit ▸ Undo takes it back;
- Preview then Cancel (replace mode, the source hidden meanwhile): nothing is left, the undo
  stack is back where it was (the preview's step undone);
- Replace: the result takes the source's place; Krita records "Add Layer" and "Remove Layer"
  (its scripting API has no undo groups) and two Edit ▸ Undo bring the source back unchanged;
- a flat image with a selection: harmonized against the rest of the photo, one undo step,
  pixels outside the selection untouched; without a selection, refused saying what to do;
- the docker's daemon status: Connected, then Not running after the daemon stops.

The applied pixels must equal ``harmonize run`` on the same composite and mask within one
level (as in tests/test_krita_host.py). tests/hosts/krita_features.py is the hook that drives
the docker inside Krita. Skipped like tests/test_krita_host.py when a Krita is not there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layer_harmonizer.compose import crop_box
from layer_harmonizer.wire import host_side as S
from layer_harmonizer.wire.messages import DEFAULT_CROP_MARGIN, MIN_CROP_MARGIN_PX
from tests import test_krita_host as base
from tests.conftest import need_tools
from tests.daemon_process import DaemonProcess
from tests.test_krita_host import (
    HOSTS,
    KRITA_TIMEOUT,
    SRGB,
    H,
    KritaInstall,
    W,
    assert_matches,
    bgra,
    expected_layer,
    harmonize_run,
    krita_env,
    need_host,
    quantize,
    scene,
)

krita, weights, cli_cache = base.krita, base.weights, base.cli_cache
"""The fixtures of tests/test_krita_host.py: each Krita, the test weights, `harmonize run`
results."""

pytestmark = [pytest.mark.krita, pytest.mark.host, pytest.mark.slow]

NEW_LAYER_STEP, REMOVE_STEP = "Add Layer", "Remove Layer"
"""Krita's names of the undo steps (English: the tests' Krita runs with LANG unset)."""


def install(home: Path, krita: KritaInstall) -> None:
    """``harmonize install-plugin krita`` into a fresh HOME, as a user does."""
    krita_dir, kritarc = home / ".local" / "share" / "krita", home / ".config" / "kritarc"
    deps = [] if krita.root is None else ["--deps", "host"]  # the chroot's python3-zmq
    done = subprocess.run(
        [sys.executable, "-m", "layer_harmonizer", "install-plugin", "krita", "--krita-dir",
         str(krita_dir), "--kritarc", str(kritarc), *deps],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def flat_selection() -> np.ndarray:
    """An 8-bit selection on the photo: a block with a feathered right edge."""
    sel = np.zeros((H, W), np.uint8)
    sel[20:52, 24:56] = 255
    sel[20:52, 56:60] = 128
    return sel


@pytest.fixture(scope="module")
def features(
    krita: KritaInstall, tmp_path_factory: pytest.TempPathFactory, weights: Path
) -> dict[str, Any]:
    """One Krita GUI run of tests/hosts/krita_features.py with its own daemon, which the test
    stops when the hook asks (the status flow); returns the hook's report."""
    need_tools("xvfb-run", "xauth")
    if krita.root is None:
        need_host("krita")
    tmp = tmp_path_factory.mktemp(f"features-{krita.version}")
    home = tmp / "home"
    install(home, krita)
    images = scene()
    paths = {}
    for key, image in (("bg", images["bg"]), ("layer", images["layer"])):
        paths[key] = tmp / f"{key}.raw"
        quantize(image, np.uint8).tofile(paths[key])
    flat_selection().tofile(tmp / "selection.raw")
    spec = {
        "width": W, "height": H, "profile": SRGB, "background": str(paths["bg"]),
        "layer": str(paths["layer"]), "selection": str(tmp / "selection.raw"),
        "out": str(tmp / "out"), "result": str(tmp / "result.json"),
        "stop_marker": str(tmp / "stop"),
    }  # fmt: skip
    (tmp / "spec.json").write_text(json.dumps(spec))
    (tmp / "daemon").mkdir()
    with DaemonProcess(tmp / "daemon", weights, "--device", "cpu", "--port", "0") as daemon:
        env = {
            **krita_env(daemon.env, home),
            "HARMONIZE_KRITA_AUTORUN": str(HOSTS / "krita_features.py"),
            "HARMONIZE_KRITA_SPEC": str(tmp / "spec.json"),
        }
        cmd, run_env = krita.command(["krita", "--nosplash"], env, display=True)
        log = (tmp / "krita.log").open("wb")
        start = time.monotonic()
        proc = subprocess.Popen(cmd, env=run_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + KRITA_TIMEOUT + 30
            while not Path(spec["stop_marker"]).exists() and proc.poll() is None:
                assert time.monotonic() < deadline, "Krita never reached the status flow"
                time.sleep(0.2)
            daemon.stop()  # the daemon stops (as after its idle timeout): the docker must see it
            code = proc.wait(max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    text = (tmp / "krita.log").read_text(errors="replace")
    lines = [x for x in text.splitlines() if "features" in x or "Error" in x or "Trace" in x]
    assert code == 0, f"Krita run failed (rc {code}):\n" + "\n".join(lines)[-6000:]
    report = json.loads(Path(spec["result"]).read_text())
    report.update(tmp=tmp, out=tmp / "out", seconds=round(time.monotonic() - start, 1))
    assert report["krita"].startswith(f"{krita.version}."), report["krita"]
    return report


def raw(report: dict[str, Any], name: str) -> np.ndarray:
    return bgra((report["out"] / f"{name}.raw").read_bytes(), np.uint8)


def steps(state: dict[str, Any]) -> list[str]:
    """The undo steps in effect, as the History docker shows them (its current row)."""
    return state["history"][1 : state["current"] + 1]


def test_preview_then_apply_is_one_undo_step(
    features: dict[str, Any], weights: Path, cli_cache: dict
) -> None:
    flow = features["flows"]["preview_apply"]
    before, preview, applied = flow["before"], flow["preview"], flow["applied"]
    assert preview["layers"] == ["Background", "pasted", "[Preview] pasted (harmonized)"]
    assert preview["message"][0] == "finished" and "Preview of 'pasted'" in preview["message"][1]
    assert flow["apply_enabled"]
    assert applied["layers"] == ["Background", "pasted", "pasted (harmonized)"]
    assert applied["visible"] == [True, True, True]
    assert steps(applied) == [*steps(before), NEW_LAYER_STEP], applied  # the run: one step
    assert flow["undone"]["layers"] == ["Background", "pasted"]  # one Edit > Undo: all gone
    source = raw(features, "preview_apply.source_before")
    assert (features["out"] / "preview_apply.source_after.raw").read_bytes() == (
        features["out"] / "preview_apply.source_before.raw"
    ).read_bytes()
    bg = quantize(scene()["bg"], np.uint8)
    wanted = expected_layer(features["tmp"], weights, source, bg, cache=cli_cache)
    assert_matches(raw(features, "preview_apply.result"), wanted, source, "preview + Apply")


def test_cancelled_preview_leaves_nothing(features: dict[str, Any]) -> None:
    flow = features["flows"]["preview_cancel"]
    before, preview, cancelled = flow["before"], flow["preview"], flow["cancelled"]
    assert preview["layers"] == ["Background", "pasted", "[Preview] pasted (harmonized)"]
    assert preview["visible"] == [True, False, True]  # replace mode: the source hidden
    assert cancelled["layers"] == before["layers"] == ["Background", "pasted"]
    assert cancelled["visible"] == [True, True]
    assert steps(cancelled) == steps(before), cancelled  # no undo step left behind


def test_replace_and_two_undos_restore_the_source(
    features: dict[str, Any], weights: Path, cli_cache: dict
) -> None:
    flow = features["flows"]["replace"]
    before, done, undone = flow["before"], flow["done"], flow["undone"]
    assert done["layers"] == ["Background", "pasted"] and not done["same_node"]
    assert done["message"][1].startswith("Replaced 'pasted'"), done["message"]
    assert steps(done) == [*steps(before), NEW_LAYER_STEP, REMOVE_STEP], done
    assert undone["layers"] == ["Background", "pasted"] and undone["same_node"]
    assert steps(undone) == steps(before)
    source = raw(features, "replace.source_before")
    np.testing.assert_array_equal(raw(features, "replace.source_undone"), source)
    bg = quantize(scene()["bg"], np.uint8)
    wanted = expected_layer(features["tmp"], weights, source, bg, cache=cli_cache)
    assert_matches(raw(features, "replace.result"), wanted, source, "replace")


def test_flat_image_selection_is_one_undo_step(features: dict[str, Any], weights: Path) -> None:
    flow = features["flows"]["flat"]
    before, done = flow["before"], flow["done"]
    assert done["layers"] == ["Background", "Background (harmonized)"], done
    assert "the selection of 'Background'" in done["message"][1], done["message"]
    assert steps(done) == [*steps(before), NEW_LAYER_STEP]
    photo = raw(features, "flat.source_before")
    result = raw(features, "flat.result")
    sel = flat_selection()
    np.testing.assert_array_equal(raw(features, "flat.source_after"), photo)
    np.testing.assert_array_equal(result[sel == 0], photo[sel == 0])  # outside: untouched
    np.testing.assert_array_equal(result[..., 3], photo[..., 3])
    # inside: what `harmonize run` makes of the photo with the selection as its mask, on the
    # crop the daemon works on (the selection's box + margin, within the region sent)
    ys, xs = np.nonzero(sel)
    box = S.Box(int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1)
    region = S.context_box(box, W, H)
    in_region = (slice(region.y, region.bottom), slice(region.x, region.right))
    x0, y0, x1, y1 = crop_box(sel[in_region] / 255.0, DEFAULT_CROP_MARGIN, MIN_CROP_MARGIN_PX)
    crop = (slice(region.y + y0, region.y + y1), slice(region.x + x0, region.x + x1))
    folder = features["tmp"] / "flat"
    folder.mkdir(exist_ok=True)
    comp = np.ascontiguousarray(photo[crop][..., :3])
    wanted = photo[..., :3].copy()
    wanted[crop] = harmonize_run(folder, weights, comp, np.ascontiguousarray(sel[crop]))
    full = sel == 255
    diff = np.abs(result[..., :3].astype(int) - wanted.astype(int))[full]
    assert diff.max() <= 1, f"flat image: differs from `harmonize run` by {diff.max()}"
    assert np.abs(result[..., :3].astype(int) - photo[..., :3])[full].max() > 5  # recoloured


def test_flat_image_without_selection_is_refused(features: dict[str, Any]) -> None:
    flow = features["flows"]["flat_refused"]
    kind, text = flow["done"]["message"]
    assert kind == "failed" and text.startswith("Nothing is visible below 'Background'"), text
    assert "select the object that looks wrong, then run Harmonize again" in text
    assert flow["done"]["layers"] == flow["before"]["layers"]
    assert steps(flow["done"]) == steps(flow["before"])


def test_docker_status_follows_the_daemon(features: dict[str, Any]) -> None:
    flow = features["flows"]["status"]
    assert flow["connected"][0] == "connected"
    assert flow["connected"][1].startswith("Connected: harmonize"), flow
    assert flow["stopped"] == ["not_running", "Not running: it starts on the first Harmonize."]
    print(f"the docker noticed the stopped daemon after {flow['seconds_to_notice']} s")

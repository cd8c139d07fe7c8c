"""The GIMP plug-in's wiring against a mocked ``gi.repository`` (tests/mock/gimp.py) and a fake
daemon client: what it sends (layer, mask = alpha x layer mask x selection, backdrop = visible
layers below), where the result goes, undo grouping, floating pastes, precisions, messages."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layer_harmonizer.compose import crop_box
from layer_harmonizer.wire import host_side as S
from layer_harmonizer.wire import messages as M
from layer_harmonizer.wire import protocol as P
from tests.mock import gimp as mock

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "plugins" / "gimp" / "harmonize" / "harmonize.py"


@pytest.fixture
def gi() -> Iterator[types.SimpleNamespace]:
    modules, restore = mock.install()
    spec = importlib.util.spec_from_file_location("harmonize_gimp_plugin", PLUGIN)
    assert spec is not None and spec.loader is not None
    plugin = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = plugin  # as GIMP runs it: a module of its own (dataclasses need it)
    spec.loader.exec_module(plugin)
    modules.plugin = plugin
    try:
        yield modules
    finally:
        sys.modules.pop(spec.name, None)
        restore()


class FakeDaemon:
    """Stands in for :mod:`layer_harmonizer.wire.client`: records the frames (``mask``: the
    coverage the daemon composites with, alpha x selection), inverts the covered crop, keeps
    jobs for ``reapply`` (``forget`` drops them, as a daemon's cache would)."""

    class DaemonError(Exception):
        def __init__(self, code: str, message: str) -> None:
            super().__init__(message)
            self.code, self.message = code, message

    def __init__(self, error: tuple[str, str] | None = None, running: bool = True) -> None:
        self.error, self.running = error, running
        self.requests: list[dict[str, Any]] = []
        self.started: list[list[str]] = []
        self.clients: list[Any] = []
        self.jobs: dict[str, tuple[dict, Any]] = {}
        self.forget = False
        daemon = self

        class Client:
            def __init__(self) -> None:
                self.closed = False
                daemon.clients.append(self)

            @classmethod
            def from_endpoint_file(cls, path: Path, **_kw: Any) -> Client:
                if not daemon.running:
                    raise FakeDaemon.DaemonError("no_daemon", f"no endpoint file at {path}")
                return cls()

            def ping(self, **_kw: Any) -> dict[str, Any]:
                return {}

            def hello(self) -> dict[str, Any]:
                return {"protocol_version": list(P.PROTOCOL_VERSION)}

            def close(self) -> None:
                self.closed = True

            def __enter__(self) -> Client:
                return self

            def __exit__(self, *exc: object) -> None:
                self.close()

            def harmonize(self, layer: P.Pixels, mask: P.Pixels, backdrop: P.Pixels,
                          **options: Any) -> Any:  # fmt: skip
                return daemon.answer(layer, mask, backdrop, options)

            def harmonize_layer(self, layer: P.Pixels, selection: P.Pixels | None,
                                backdrop: P.Pixels, **options: Any) -> Any:  # fmt: skip
                return daemon.answer(layer, selection, backdrop, options, premultiplied=False)

            def reapply(self, job: str, **options: Any) -> Any:
                return daemon.reapply(job, options)

        self.Client = Client

    def answering_client(self, path: Path, **_kw: Any) -> Any:
        return self.Client() if self.running else None

    def ensure_daemon(self, *, command: list[str], **_kw: Any) -> Any:
        self.started.append(command)
        self.running = True
        return self.Client()

    def answer(self, layer: P.Pixels, mask: P.Pixels | None, backdrop: P.Pixels,
               options: dict, premultiplied: bool = True) -> Any:  # fmt: skip
        def array(pix: P.Pixels) -> np.ndarray:
            raw = np.frombuffer(bytes(pix.data), dtype=np.dtype(pix.dtype).newbyteorder("<"))
            return raw.reshape(pix.shape).copy()

        arrays = {"layer": array(layer), "backdrop": array(backdrop)}
        full = 1.0 if layer.dtype == "float32" else np.iinfo(layer.dtype).max
        arrays["selection"] = None if premultiplied or mask is None else array(mask)
        if premultiplied:
            arrays["mask"] = array(mask)
        else:  # the coverage a 2.1 daemon composites with: alpha x selection
            sel = 1.0 if mask is None else arrays["selection"] / level(mask.dtype)
            coverage = arrays["layer"][..., 3] / full * sel * full
            arrays["mask"] = np.round(coverage).astype(layer.dtype)
        kind = "harmonize" if premultiplied else "harmonize_layer"
        dtypes = (layer.dtype, (mask or layer).dtype)
        self.requests.append({**arrays, "kind": kind, "options": options, "dtypes": dtypes})
        return self._result(arrays, options, f"job{len(self.requests)}")

    def reapply(self, job: str, options: dict) -> Any:
        self.requests.append({"kind": "reapply", "job": job, "options": options})
        if self.forget or job not in self.jobs:
            raise FakeDaemon.DaemonError("unknown_job", f"the daemon no longer keeps job {job}")
        return self._result(self.jobs[job], options, job)

    def _result(self, arrays: dict, options: dict, job: str) -> Any:
        for stage in ("received", "composed", "predicted", "applied"):
            options["on_progress"]({"stage": stage})
        if self.error:
            raise FakeDaemon.DaemonError(*self.error)
        self.jobs[job] = arrays
        layer = arrays["layer"]
        full = level(layer.dtype.name)
        m = arrays["mask"].astype(np.float64) / full
        x0, y0, x1, y1 = crop_box(m, M.DEFAULT_CROP_MARGIN, M.MIN_CROP_MARGIN_PX)
        out = layer[y0:y1, x0:x1].copy()
        out[..., :3] = (full - out[..., :3]).astype(out.dtype)  # "harmonized" = inverted
        return types.SimpleNamespace(
            pixels=P.Pixels.of(np.ascontiguousarray(out)), offset=(x0, y0), timings={}, job=job
        )


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeDaemon:
    fake = FakeDaemon()
    monkeypatch.setattr(S, "_client_module", lambda: fake)
    runtime = tmp_path / "runtime"
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(runtime))
    runtime.mkdir(mode=0o700)  # the endpoint file of a daemon that runs (this process)
    info = {"endpoint": "ipc://fake", "token": "t", "pid": os.getpid()}
    (runtime / "daemon.json").write_text(json.dumps(info))
    return fake


# ---- scenes -----------------------------------------------------------------------------------


def scene(gi: Any, precision: Any = None, *, size: tuple[int, int] = (80, 60)) -> dict[str, Any]:
    """Background gradient, a hidden magenta layer, the object (soft alpha) and a cover above."""
    Gimp = gi.Gimp
    w, h = size
    image = Gimp.Image(w, h, precision or Gimp.Precision.U8_NON_LINEAR)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    bg = np.stack([xx, yy, 1 - xx, np.ones_like(xx)], -1)
    background = Gimp.Layer(image, "Background", bg, alpha=False)
    hidden = Gimp.Layer(image, "hidden", np.tile([1.0, 0, 1, 1], (h, w, 1)))
    hidden.visible = False
    oy, ox = np.mgrid[0:20, 0:30]
    alpha = np.clip(1.2 - np.hypot(ox - 15, oy - 10) / 10, 0, 1)
    obj_px = np.stack([0.9 + 0 * ox, 0.5 + ox / 100, 0.2 + oy / 100, alpha], -1)
    obj = Gimp.Layer(image, "object", obj_px, x=30, y=20)
    cover = Gimp.Layer(image, "cover", np.tile([0, 0, 1.0, 0.5], (h, w, 1)))
    image.layers = [cover, obj, hidden, background]
    for layer in image.layers:
        layer.parent = None
    return {"image": image, "obj": obj, "bg": background, "cover": cover}


def run(gi: Any, image: Any, layer: Any, *, strength: float = 1.0, replace: bool = False,
        mode: Any = None, preview: bool = True) -> tuple[Any, Any]:  # fmt: skip
    plugin = gi.plugin.HarmonizePlugIn()
    proc = plugin.do_create_procedure(S.PROCEDURE_NAME)
    config = mock.Config(strength=strength, replace=replace, preview=preview)
    return plugin.run(proc, mode or gi.Gimp.RunMode.NONINTERACTIVE, image, [layer], config, None)


def level(dtype: str) -> float:
    return 1.0 if dtype == "float32" else float(np.iinfo(dtype).max)


# ---- registration -----------------------------------------------------------------------------


def test_registers_filters_and_layers_menus(gi: Any):
    plugin = gi.plugin.HarmonizePlugIn()
    assert plugin.do_query_procedures() == [S.PROCEDURE_NAME]
    proc = plugin.do_create_procedure(S.PROCEDURE_NAME)
    assert proc.menu_paths == ["<Image>/Filters", "<Layers>"]
    assert "Harmonize Layer" in proc.label.replace("_", "")
    kind, *_, low, high, default, _flags = proc.arguments["strength"]
    assert (kind, low, high, default) == ("double", 0.0, 1.0, 1.0)
    assert proc.arguments["replace"][0] == "boolean"


# ---- what is sent -----------------------------------------------------------------------------


def test_sends_layer_alpha_mask_and_visible_backdrop_below(gi: Any, daemon: FakeDaemon):
    s = scene(gi)
    status, error = run(gi, s["image"], s["obj"])
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    (req,) = daemon.requests
    region = S.context_box(S.Box(30, 20, 30, 20), 80, 60)
    assert req["layer"].shape == (region.h, region.w, 4) and req["dtypes"] == ("uint8", "uint8")
    obj = np.round(s["obj"].pixels * 255).astype(np.uint8)
    lx, ly = 30 - region.x, 20 - region.y
    np.testing.assert_array_equal(req["layer"][ly : ly + 20, lx : lx + 30], obj)
    assert req["layer"][:ly].sum() == 0  # transparent outside the layer
    # no selection: mask = alpha
    np.testing.assert_array_equal(req["mask"][ly : ly + 20, lx : lx + 30], obj[..., 3])
    assert req["mask"].sum() == obj[..., 3].sum()
    # backdrop: the background only (the hidden layer and the cover above are left out)
    bg = np.round(s["bg"].pixels[..., :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(
        req["backdrop"], bg[region.y : region.bottom, region.x : region.right]
    )
    assert req["options"]["strength"] == 1.0 and req["options"]["dtype"] == "uint8"


def test_mask_is_alpha_times_selection_and_layer_mask(gi: Any, daemon: FakeDaemon):
    s = scene(gi)
    image, obj = s["image"], s["obj"]
    image.selection[:, :40] = 1.0
    image.selection[:, 40:45] = 0.5  # feathered edge
    obj.mask = gi.Gimp.Drawable(image, "mask", np.ones((20, 30, 4)), 30, 20)
    obj.mask.pixels[15:] = 0.25
    status, error = run(gi, image, obj)
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    region = S.context_box(S.Box(30, 20, 30, 20), 80, 60)
    sel = image.selection[20:40, 30:60]
    expected = np.round(obj.pixels[..., 3] * sel * obj.mask.pixels[..., 0] * 255)
    lx, ly = 30 - region.x, 20 - region.y
    got = daemon.requests[0]["mask"][ly : ly + 20, lx : lx + 30]
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert obj.mask is not None  # the user's layer keeps its layer mask
    assert image.duplicates and all(d.deleted for d in image.duplicates)


def test_sends_the_selection_alone_and_the_daemon_multiplies_alpha(gi: Any, daemon: FakeDaemon):
    """Protocol 2.1: the selection channel as it is (no alpha x selection made in GIMP, none
    divided back in the daemon); without a selection none is sent; a layer mask is the one
    case still sent as the 2.0 mask (see test_mask_is_alpha_times_selection_and_layer_mask)."""
    s = scene(gi)
    image, obj = s["image"], s["obj"]
    assert run(gi, image, obj)[0] == gi.Gimp.PDBStatusType.SUCCESS
    image.selection[:, :40] = 1.0
    image.selection[:, 40:45] = 0.5
    assert run(gi, image, obj)[0] == gi.Gimp.PDBStatusType.SUCCESS
    whole, selected = daemon.requests
    assert whole["kind"] == selected["kind"] == "harmonize_layer"
    assert whole["selection"] is None
    region = S.context_box(S.Box(30, 20, 30, 20), 80, 60)
    expected = np.round(image.selection[region.y : region.bottom, region.x : region.right] * 255)
    np.testing.assert_array_equal(selected["selection"], expected.astype(np.uint8))


def test_backdrop_inside_groups_is_what_is_below(gi: Any, daemon: FakeDaemon):
    """Layer inside a group: siblings above it and layers above the group are left out."""
    Gimp = gi.Gimp
    s = scene(gi)
    image, obj, cover = s["image"], s["obj"], s["cover"]
    red = Gimp.Layer(image, "red", np.tile([1.0, 0, 0, 1], (60, 80, 1)))
    above = Gimp.Layer(image, "above in group", np.tile([0, 1.0, 0, 1], (60, 80, 1)))
    group = Gimp.Layer(image, "group", np.zeros((60, 80, 4)), children=[above, obj, red])
    for child in group.children:
        child.parent = group
    image.layers = [cover, group, s["bg"]]
    status, error = run(gi, image, obj)
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    assert (daemon.requests[0]["backdrop"] == [255, 0, 0]).all()  # only the red layer below
    assert group.children[0] is above and group.children[1].name == "object (harmonized)"


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("U8_NON_LINEAR", "uint8"), ("U8_LINEAR", "uint16"), ("U16_NON_LINEAR", "uint16"),
     ("U32_LINEAR", "float32"), ("HALF_LINEAR", "float32"), ("FLOAT_LINEAR", "float32"),
     ("DOUBLE_PERCEPTUAL", "float32")],
)  # fmt: skip
def test_every_precision_round_trips(gi: Any, daemon: FakeDaemon, precision: str, dtype: str):
    s = scene(gi, getattr(gi.Gimp.Precision, precision))
    status, error = run(gi, s["image"], s["obj"])
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    assert daemon.requests[0]["dtypes"] == (dtype, dtype)
    new = s["image"].layers[1]
    assert new.name == "object (harmonized)"
    # the fake daemon inverts the crop (which covers the whole layer here)
    tol = 1 / level(dtype) + 1e-7
    np.testing.assert_allclose(new.pixels[..., :3], 1 - s["obj"].pixels[..., :3], atol=tol)


# ---- the result -------------------------------------------------------------------------------


def test_result_is_a_new_layer_above_in_one_undo_group(gi: Any, daemon: FakeDaemon):
    s = scene(gi, size=(200, 150))
    image, obj = s["image"], s["obj"]
    before = obj.pixels.copy()
    status, error = run(gi, image, obj, strength=0.4)
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    assert [lay.name for lay in image.layers] == [
        "cover", "object (harmonized)", "object", "hidden", "Background"
    ]  # fmt: skip
    new = image.layers[1]
    assert (new.x, new.y, new.get_width(), new.get_height()) == (30, 20, 30, 20)
    np.testing.assert_array_equal(obj.pixels, before)  # the source is untouched
    np.testing.assert_allclose(new.pixels[..., 3], before[..., 3], atol=0.5 / 255 + 1e-9)
    assert daemon.requests[0]["options"]["strength"] == 0.4
    # every change to the user's image is inside exactly one undo group
    kinds = [k for k, _ in image.log]
    assert kinds[0] == "undo-group-start" and kinds[-1] == "undo-group-end"
    assert kinds.count("undo-group-start") == kinds.count("undo-group-end") == 1
    assert image.undo_depth == 0
    progress = [c for c in gi.Gimp.calls if c[0] == "progress_update"]
    assert progress and progress[-1][1] == (1.0,)
    assert ("progress_end", ()) in gi.Gimp.calls


def test_result_outside_the_crop_keeps_the_source_pixels(gi: Any, daemon: FakeDaemon):
    s = scene(gi, size=(300, 200))
    image, obj = s["image"], s["obj"]
    obj.pixels = np.concatenate([obj.pixels, np.zeros((20, 200, 4))], axis=1)  # 230 wide
    obj.pixels[..., :3] = 0.3  # colour under alpha 0 too
    status, error = run(gi, image, obj)
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    new = image.layers[1]
    # right part of the layer: beyond the daemon's crop (mask bbox + margin): untouched
    np.testing.assert_array_equal(new.pixels[:, 150:], obj.pixels[:, 150:])
    assert not np.allclose(new.pixels[:, :20, :3], obj.pixels[:, :20, :3])


def test_replace_puts_the_result_in_place(gi: Any, daemon: FakeDaemon):
    s = scene(gi)
    image, obj = s["image"], s["obj"]
    status, error = run(gi, image, obj, replace=True)
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    assert [lay.name for lay in image.layers] == ["cover", "object", "hidden", "Background"]
    assert image.layers[1] is not obj and not obj.is_valid()
    kinds = [k for k, _ in image.log]
    assert kinds[0] == "undo-group-start" and kinds[-1] == "undo-group-end"


def test_floating_paste_becomes_a_layer_first(gi: Any, daemon: FakeDaemon):
    s = scene(gi)
    image, obj = s["image"], s["obj"]
    obj.floating = True
    status, error = run(gi, image, obj)
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    kinds = [k for k, _ in image.log]
    assert kinds.index("floating-sel-to-layer") == 1  # first thing inside the undo group
    assert not obj.is_floating_sel()


def test_layer_without_alpha(gi: Any, daemon: FakeDaemon):
    s = scene(gi)
    image = s["image"]
    image.layers.remove(s["obj"])
    image.selection[10:30, 10:40] = 1.0
    image.layers.insert(1, s["bg"].copy())  # an opaque layer above the background
    image.layers[1].name, image.layers[1].parent = "photo", None
    status, error = run(gi, image, image.layers[1])
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    mask = daemon.requests[0]["mask"]
    assert mask.max() == 255 and (mask > 0).sum() == 20 * 30  # the selection, since alpha = 1


# ---- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "words"),
    [("out_of_memory", "ran out of memory"), ("unsupported_version", "Update both"),
     ("unreachable", "does not answer"), ("empty_mask", "Nothing to harmonize")],
)  # fmt: skip
def test_daemon_errors_become_messages_and_leave_the_image(gi: Any, daemon: FakeDaemon,
                                                           code: str, words: str):  # fmt: skip
    daemon.error = (code, "details")
    s = scene(gi)
    names = [lay.name for lay in s["image"].layers]
    for mode in (gi.Gimp.RunMode.INTERACTIVE, gi.Gimp.RunMode.NONINTERACTIVE):
        status, error = run(gi, s["image"], s["obj"], mode=mode)
        assert status == gi.Gimp.PDBStatusType.EXECUTION_ERROR
        assert words in error.message
    assert gi.dialog.opened == 0  # checked first: no dialog for a run that cannot succeed
    assert [lay.name for lay in s["image"].layers] == names
    # no undo step at all (not even an empty "Undo Harmonize Layer"), the image still clean
    assert s["image"].log == [] and not s["image"].is_dirty()
    # GIMP shows the returned error once; the plug-in adds no second message
    assert not [c for c in gi.Gimp.calls if c[0] == "message"]


@pytest.mark.parametrize("case", ["nothing below", "no daemon"])
def test_no_dialog_when_the_run_cannot_succeed(
    gi: Any, daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, case: str
):
    s = scene(gi)
    if case == "nothing below":
        s["bg"].visible = False
        words = "Nothing is visible below"
    else:
        daemon.running = False
        monkeypatch.setattr(S.shutil, "which", lambda _name: None)
        words = "not installed"
    status, error = run(gi, s["image"], s["obj"], mode=gi.Gimp.RunMode.INTERACTIVE)
    assert status == gi.Gimp.PDBStatusType.EXECUTION_ERROR
    assert words in error.message, error.message
    assert gi.dialog.opened == 0 and gi.dialog.last is None
    assert s["image"].log == [] and not s["image"].is_dirty()


def test_not_installed_daemon(gi: Any, daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch):
    daemon.running = False
    monkeypatch.setattr(S.shutil, "which", lambda _name: None)
    s = scene(gi)
    status, error = run(gi, s["image"], s["obj"])
    assert status == gi.Gimp.PDBStatusType.EXECUTION_ERROR
    assert "not installed" in error.message
    # the install that works (PyPI's "harmonize" is another project), and where it is explained
    for words in ("pipx install", "download.pytorch.org/whl/cpu", "<path to a clone or a built",
                  "harmonize install-plugin", 'README, "Install"'):  # fmt: skip
        assert words in error.message, error.message
    assert daemon.started == []
    assert s["image"].log == [] and not s["image"].is_dirty()


def test_no_message_sends_users_to_the_unrelated_pypi_package():
    """``pip install harmonize`` installs an unrelated PyPI audio tool: no plug-in, daemon or
    CLI message may suggest it (nor ``-U`` or an extra of it)."""
    import re

    wrong = re.compile(r"pip install (-U |--upgrade )?[\"']?harmonize\b")
    sources = [*(REPO / "backend").rglob("*.py"), *(REPO / "plugins").rglob("*.py")]
    hits = [f"{path.relative_to(REPO)}:{n}" for path in sources
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if wrong.search(line)]  # fmt: skip
    assert len(sources) > 20 and hits == [], hits


def test_starts_the_daemon_recorded_by_the_installer(gi: Any, daemon: FakeDaemon,
                                                     tmp_path: Path, monkeypatch):  # fmt: skip
    daemon.running = False
    exe = tmp_path / "python"
    exe.write_text("")
    settings = S.Settings(serve_command=[str(exe), "-m", "layer_harmonizer", "serve"])
    monkeypatch.setattr(S, "load_settings", lambda _dir: settings)
    s = scene(gi)
    status, error = run(gi, s["image"], s["obj"])
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    assert daemon.started == [[str(exe), "-m", "layer_harmonizer", "serve"]]


def test_refuses_channels_and_several_drawables(gi: Any, daemon: FakeDaemon):
    s = scene(gi)
    plugin = gi.plugin.HarmonizePlugIn()
    proc = plugin.do_create_procedure(S.PROCEDURE_NAME)
    config = mock.Config(strength=1.0, replace=False)
    mode = gi.Gimp.RunMode.NONINTERACTIVE
    channel = gi.Gimp.Drawable(s["image"], "ch", np.zeros((2, 2, 4)))
    for drawables in ([s["obj"], s["bg"]], [channel]):
        status, error = plugin.run(proc, mode, s["image"], drawables, config, None)
        assert status == gi.Gimp.PDBStatusType.EXECUTION_ERROR
        assert "exactly one layer" in error.message
    assert daemon.requests == []


def test_refuses_a_layer_group(gi: Any, daemon: FakeDaemon):
    s = scene(gi)
    group = gi.Gimp.Layer(s["image"], "group", np.zeros((60, 80, 4)), children=[])
    s["image"].layers.insert(0, group)
    status, error = run(gi, s["image"], group)
    assert status == gi.Gimp.PDBStatusType.EXECUTION_ERROR
    assert "not a layer group" in error.message
    assert daemon.requests == []


def test_nothing_visible_below(gi: Any, daemon: FakeDaemon):
    s = scene(gi)
    s["bg"].visible = False
    status, error = run(gi, s["image"], s["obj"])
    assert status == gi.Gimp.PDBStatusType.EXECUTION_ERROR
    assert "Nothing is visible below" in error.message
    assert daemon.requests == []
    assert s["image"].log == [] and not s["image"].is_dirty()


def flat_photo(gi: Any) -> tuple[Any, Any]:
    """A flattened photo: one opaque layer (no alpha channel), nothing below it."""
    image = gi.Gimp.Image(80, 60, gi.Gimp.Precision.U8_NON_LINEAR)
    yy, xx = np.mgrid[0:60, 0:80] / 80
    photo = gi.Gimp.Layer(image, "Background", np.stack([xx, yy, 1 - xx, 1 + 0 * xx], -1),
                          alpha=False)  # fmt: skip
    photo.parent = None
    image.layers = [photo]
    return image, photo


def test_flat_image_selection_is_matched_to_the_rest_of_the_layer(gi: Any, daemon: FakeDaemon):
    """Nothing below the layer, but a selection: mask = the selection, backdrop = the layer
    itself; the result is a new layer in one undo group."""
    image, photo = flat_photo(gi)
    image.selection[20:40, 30:50] = 1.0
    image.selection[20:40, 50:54] = 0.5  # a feathered edge stays soft
    status, error = run(gi, image, photo)
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    (req,) = daemon.requests
    rgb = np.round(photo.pixels[..., :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(req["backdrop"], rgb)  # the whole layer: region = canvas
    np.testing.assert_array_equal(req["layer"][..., :3], rgb)
    np.testing.assert_array_equal(req["mask"], np.round(image.selection * 255).astype(np.uint8))
    assert [lay.name for lay in image.layers] == ["Background (harmonized)", "Background"]
    kinds = [k for k, _ in image.log]  # every change inside exactly one undo group
    assert kinds[0] == "undo-group-start" and kinds[-1] == "undo-group-end"
    assert kinds.count("undo-group-start") == 1 and image.undo_depth == 0


def test_flat_image_without_a_usable_selection_says_what_to_do(gi: Any, daemon: FakeDaemon):
    image, photo = flat_photo(gi)
    status, error = run(gi, image, photo)
    assert status == gi.Gimp.PDBStatusType.EXECUTION_ERROR
    assert error.message.startswith("Nothing is visible below the layer")
    assert "select the object that looks wrong, then run Harmonize again" in error.message
    image.selection[:] = 1.0  # Select > All: nothing left to match against
    status, error = run(gi, image, photo)
    assert "The selection covers all of the layer" in error.message
    assert daemon.requests == [] and image.log == [] and not image.is_dirty()


def test_layer_off_canvas(gi: Any, daemon: FakeDaemon):
    s = scene(gi)
    s["obj"].x = 500
    status, error = run(gi, s["image"], s["obj"])
    assert status == gi.Gimp.PDBStatusType.EXECUTION_ERROR
    assert "outside the image canvas" in error.message


def interactive(gi: Any, image: Any, layer: Any, *, answer: bool = True, interact: Any = None,
                **options: Any) -> tuple[Any, Any]:  # fmt: skip
    """Run with the dialog: ``interact(config)`` is what the user does while it is open."""
    gi.dialog.answer, gi.dialog.interact = answer, interact
    try:
        return run(gi, image, layer, mode=gi.Gimp.RunMode.INTERACTIVE, **options)
    finally:
        gi.dialog.answer, gi.dialog.interact = True, None


def names(image: Any) -> list[str]:
    return [lay.name for lay in image.layers]


def test_dialog_preview_then_ok_is_one_undo_step(gi: Any, daemon: FakeDaemon):
    s = scene(gi)
    image, obj = s["image"], s["obj"]
    before = obj.pixels.copy()
    seen: dict[str, Any] = {}

    def user(config: Any) -> None:
        seen["layers"] = names(image)
        config.set_property("strength", 0.5)  # a slider drag: one preview update for both
        config.set_property("strength", 0.6)

    status, error = interactive(gi, image, obj, interact=user)
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    assert gi.dialog.last.filled == ["strength", "replace", "preview"]
    assert seen["layers"] == [
        "cover", "[Preview] object (harmonized)", "object", "hidden", "Background"
    ]  # fmt: skip
    # the first preview, the drag's single update, then OK (the daemon's cache hits there)
    assert [r["options"]["strength"] for r in daemon.requests] == [1.0, 0.6, 0.6]
    assert names(image) == ["cover", "object (harmonized)", "object", "hidden", "Background"]
    kinds = [k for k, _ in image.log]  # the preview never reached the undo stack
    assert kinds[0] == "undo-group-start" and kinds[-1] == "undo-group-end"
    assert kinds.count("insert-layer") == 1 and "remove-layer" not in kinds
    assert image.frozen == 0 and image.undo_enabled
    np.testing.assert_array_equal(obj.pixels, before)
    assert obj.visible


def test_dialog_cancel_removes_the_preview_and_changes_nothing(gi: Any, daemon: FakeDaemon):
    s = scene(gi)
    image, obj = s["image"], s["obj"]
    layers = names(image)
    seen: dict[str, Any] = {}

    def user(config: Any) -> None:
        seen["layers"], seen["source visible"] = names(image), obj.visible
        seen["calls"] = len(gi.Gimp.calls)
        config.set_property("replace", True)  # the preview then stands in for the layer

    status, _ = interactive(gi, image, obj, answer=False, interact=user)
    assert status == gi.Gimp.PDBStatusType.CANCEL
    assert "[Preview] object (harmonized)" in seen["layers"] and seen["source visible"]
    # the request before the dialog (shown as the first preview), the one after "replace"
    assert len(daemon.requests) == 2
    assert names(image) == layers and obj.visible and image.log == []
    assert image.frozen == 0
    # progress only before the dialog opened: the previews are quiet
    assert not [c for c in gi.Gimp.calls[seen["calls"] :] if c[0].startswith("progress")]


def test_dialog_without_preview_asks_once_before_it_opens(gi: Any, daemon: FakeDaemon):
    """Without the preview the daemon is still asked before the dialog opens (the check that
    the run can succeed); OK at the same strength uses that answer, Cancel changes nothing."""
    s = scene(gi)
    image, obj = s["image"], s["obj"]
    status, _ = interactive(gi, image, obj, answer=False, preview=False)
    assert status == gi.Gimp.PDBStatusType.CANCEL
    assert len(daemon.requests) == 1 and image.log == [] and not image.is_dirty()
    status, error = interactive(gi, image, obj, preview=False)
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    assert len(daemon.requests) == 2  # one more before the second dialog, none after OK
    assert names(image) == ["cover", "object (harmonized)", "object", "hidden", "Background"]


def test_dialog_preview_of_a_floating_paste_hides_it_meanwhile(gi: Any, daemon: FakeDaemon):
    s = scene(gi)
    image, obj = s["image"], s["obj"]
    obj.floating = True
    seen: dict[str, Any] = {}
    status, error = interactive(
        gi, image, obj, interact=lambda _c: seen.update(visible=obj.visible, floating=obj.floating)
    )
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    assert seen == {"visible": False, "floating": True}  # previewed without converting it
    assert obj.visible and not obj.is_floating_sel()
    kinds = [k for k, _ in image.log]
    assert kinds.index("floating-sel-to-layer") == 1 and "set-visible" not in kinds


def test_dialog_preview_failure_is_a_message_and_the_dialog_goes_on(gi: Any, daemon: FakeDaemon):
    s = scene(gi)
    image, obj = s["image"], s["obj"]
    seen: dict[str, Any] = {}

    def user(config: Any) -> None:  # the daemon goes away while the dialog is open
        daemon.error = ("unreachable", "no answer from the harmonize daemon")
        config.set_property("strength", 0.3)
        mock.LOOP.run_pending()  # the preview's update, as GTK's main loop would run it
        seen.update(config.values)

    status, _ = interactive(gi, image, obj, answer=False, interact=user)
    assert status == gi.Gimp.PDBStatusType.CANCEL
    assert seen["preview"] is False  # turned off after the failure
    messages = [c[1][0] for c in gi.Gimp.calls if c[0] == "message"]
    assert len(messages) == 1 and messages[0].startswith("Preview turned off:")
    assert "no answer" in messages[0]
    assert names(image) == ["cover", "object", "hidden", "Background"] and image.log == []


def test_timings_on_request(gi: Any, daemon: FakeDaemon, monkeypatch, capsys):
    s = scene(gi)
    monkeypatch.setenv("HARMONIZE_PLUGIN_TIMINGS", "1")
    status, error = run(gi, s["image"], s["obj"])
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    line = next(x for x in capsys.readouterr().err.splitlines() if "harmonize-timings" in x)
    timings = json.loads(line.split(" ", 1)[1])
    assert set(timings) >= {"read_layer", "mask_backdrop", "daemon", "write", "region", "crop"}


def test_the_dialog_keeps_one_client_and_reapplies_strength_changes(gi: Any, daemon: FakeDaemon):
    """One daemon client for the whole dialog (not a new client, ping and hello per preview);
    a strength change is a reapply of the kept job, no pixels sent again."""
    s = scene(gi)

    def user(config: Any) -> None:
        for strength in (0.5, 0.3):
            config.set_property("strength", strength)
            mock.LOOP.run_pending()

    status, error = interactive(gi, s["image"], s["obj"], interact=user)
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    assert len(daemon.clients) == 1 and daemon.clients[0].closed
    kinds = [(r["kind"], r["options"]["strength"]) for r in daemon.requests]
    # the answer before the dialog, two previews, OK (the last strength, for the real layer)
    assert kinds == [("harmonize_layer", 1.0), ("reapply", 0.5), ("reapply", 0.3), ("reapply", 0.3)]
    assert {r["job"] for r in daemon.requests[1:]} == {"job1"}


def test_a_job_the_daemon_forgot_is_sent_again_whole(gi: Any, daemon: FakeDaemon):
    s = scene(gi)

    def user(config: Any) -> None:
        daemon.forget = True  # e.g. another plug-in's jobs came in between
        config.set_property("strength", 0.4)
        mock.LOOP.run_pending()

    status, error = interactive(gi, s["image"], s["obj"], interact=user)
    assert status == gi.Gimp.PDBStatusType.SUCCESS, error
    kinds = [r["kind"] for r in daemon.requests]
    assert kinds == ["harmonize_layer", "reapply", "harmonize_layer", "reapply", "harmonize_layer"]
    assert names(s["image"]) == ["cover", "object (harmonized)", "object", "hidden", "Background"]

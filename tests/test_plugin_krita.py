"""Unit tests of the Krita plugin against the mocked ``krita`` module (tests/mock/krita.py).

No Krita, no Qt and no daemon: the byte shuffling, the mask and backdrop reading, the layer
building order (complete before insertion = one undo step) and the registration guard.
The same code runs in real Krita in tests/test_krita_host.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests.test_plugin_install import assert_vendors_the_wire_package

REPO = Path(__file__).resolve().parents[1]
MOCK = REPO / "tests" / "mock"


@pytest.fixture
def krita(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The mock ``krita`` module, fresh for each test, and the plugin imported against it."""
    monkeypatch.syspath_prepend(str(MOCK))
    for name in [m for m in sys.modules if m == "krita" or m.startswith("plugins.krita")]:
        monkeypatch.delitem(sys.modules, name)
    module = importlib.import_module("krita")
    module.Krita.reset()
    yield module
    for name in [m for m in sys.modules if m == "krita" or m.startswith("plugins.krita")]:
        sys.modules.pop(name, None)


def plugin(name: str = "") -> ModuleType:
    return importlib.import_module("plugins.krita.harmonize" + (f".{name}" if name else ""))


# ---- pixels -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_swizzles_match_numpy(dtype: str) -> None:
    from plugins.krita.harmonize import pixels

    rng = np.random.default_rng(1)
    if dtype == "float32":
        bgra = rng.random((5, 7, 4), dtype=np.float32)
    else:
        bgra = rng.integers(0, np.iinfo(dtype).max, (5, 7, 4), endpoint=True).astype(dtype)
    raw = bgra.tobytes()
    rgba = np.frombuffer(pixels.bgra_to_rgba(raw, dtype), dtype).reshape(5, 7, 4)
    np.testing.assert_array_equal(rgba, bgra[..., [2, 1, 0, 3]])
    assert pixels.rgba_to_bgra(rgba.tobytes(), dtype) == raw
    alpha = np.frombuffer(pixels.channel(raw, dtype, 3), dtype).reshape(5, 7)
    np.testing.assert_array_equal(alpha, bgra[..., 3])


def test_swizzle_refuses_partial_items() -> None:
    from plugins.krita.harmonize import pixels

    with pytest.raises(ValueError, match="whole number"):
        pixels.bgra_to_rgba(b"\x00" * 7, "uint16")
    with pytest.raises(ValueError, match="multiple of 4"):
        pixels.bgra_to_rgba(b"\x00" * 6, "uint8")


def test_alpha_to_u8() -> None:
    from plugins.krita.harmonize import pixels

    a16 = np.array([0, 257, 32896, 65535], np.uint16)
    assert list(pixels.alpha_to_u8(a16.tobytes(), "uint16")) == [0, 1, 128, 255]
    af = np.array([0.0, 0.5, 1.0, 2.0, -1.0], np.float32)
    assert list(pixels.alpha_to_u8(af.tobytes(), "float32")) == [0, 128, 255, 255, 0]


def test_paste_rows() -> None:
    from plugins.krita.harmonize import pixels

    dest = bytearray(4 * 3 * 2)  # 4 wide, 3 rows, 2 bytes a pixel
    pixels.paste(dest, 4, bytes(range(1, 9)), (1, 1, 2, 2), 2)
    grid = np.frombuffer(bytes(dest), np.uint8).reshape(3, 4, 2)
    assert grid[1, 1].tolist() == [1, 2] and grid[2, 2].tolist() == [7, 8]
    assert grid[0].sum() == 0 and grid[:, 0].sum() == 0
    with pytest.raises(ValueError, match="does not fit"):
        pixels.paste(dest, 4, bytes(8), (3, 0, 2, 2), 2)


# ---- a document with a pasted layer ------------------------------------------------------------

W, H = 40, 30


def make_doc(krita: ModuleType, depth: str = "U8", *, rim: bool = True) -> tuple[Any, Any, Any]:
    """A gradient background and a half-transparent-rimmed pasted layer (not the whole canvas)."""
    doc = krita.Krita.instance().createDocument(W, H, "t", "RGBA", depth, "sRGB", 72.0)
    bg = doc.createNode("Background", "paintlayer")
    for y in range(H):
        for x in range(W):
            bg.pixels[(x, y)] = (x / W, y / H, 0.5, 1.0)
    doc.root.addChildNode(bg, None)
    layer = doc.createNode("pasted", "paintlayer")
    for y in range(10, 20):
        for x in range(12, 26):
            edge = rim and (y in (10, 19) or x in (12, 25))
            layer.pixels[(x, y)] = (0.9, 0.4, 0.1, 0.5 if edge else 1.0)
    doc.root.addChildNode(layer, bg)
    top = doc.createNode("on top", "paintlayer")
    top.pixels[(0, 0)] = (1.0, 1.0, 1.0, 1.0)
    doc.root.addChildNode(top, layer)
    doc.setActiveNode(layer)
    krita.Krita.instance().active_document = doc
    doc.log.clear()
    return doc, bg, layer


def test_read_inputs_u8(krita: ModuleType) -> None:
    host = plugin("host")
    doc, _bg, layer = make_doc(krita)
    inputs = host.read_inputs(doc, layer)
    r = inputs.region
    # layer bounds 14 x 10 at (12, 10), grown by max(16, ceil(0.25 * 14)) = 16, clamped
    assert (r.x, r.y, r.w, r.h) == (0, 0, W, 30)
    assert inputs.fmt.dtype == "uint8"
    bgra = np.frombuffer(inputs.layer, np.uint8).reshape(r.h, r.w, 4)
    assert bgra[15, 15].tolist() == [26, 102, 230, 255]  # Krita's BGRA, declared as such
    assert inputs.request.order == "BGRA" and inputs.selection is None  # no selection: all
    back = np.frombuffer(inputs.backdrop, np.uint8).reshape(r.h, r.w, 4)
    assert back[15, 15, :3].tolist() == [128, round(15 / H * 255), round(15 / W * 255)]
    assert back[0, 0, :3].tolist() == [128, 0, 0]  # the layer above is left out too
    # the user's document was not touched: no visibility change, no refresh, no pixels
    assert doc.log == []
    assert all(n.visible() for n in doc.root.childNodes())
    clones = [d for d in krita.Krita.instance().created if d is not doc]
    assert clones and all(d.closed for d in clones)


def test_the_selection_is_sent_alone(krita: ModuleType) -> None:
    """Protocol 2.1: Krita's 8-bit selection as it is; the daemon multiplies it by alpha."""
    host = plugin("host")
    doc, _bg, layer = make_doc(krita)
    sel = krita.Selection()
    sel.select(0, 0, 18, H, 255)
    sel.select(18, 0, 2, H, 100)
    doc.setSelection(sel)
    inputs = host.read_inputs(doc, layer)
    r = inputs.region
    assert r.x == 0 and r.w < W  # the region follows the selection
    sent = np.frombuffer(inputs.selection, np.uint8).reshape(r.h, r.w)
    selection = np.frombuffer(sel.pixelData(r.x, r.y, r.w, r.h), np.uint8).reshape(r.h, r.w)
    np.testing.assert_array_equal(sent, selection)
    assert sent[15, 19] == 100 and sent[15, 22] == 0 and sent[15, 5] == 255


@pytest.mark.parametrize("depth", ["U16", "F32"])
def test_selection_at_deeper_depths(krita: ModuleType, depth: str) -> None:
    host = plugin("host")
    doc, _bg, layer = make_doc(krita, depth)
    sel = krita.Selection()
    sel.select(0, 0, 18, H, 128)
    doc.setSelection(sel)
    inputs = host.read_inputs(doc, layer)
    r = inputs.region
    dtype = {"U16": np.uint16, "F32": np.float32}[depth]
    sent = np.frombuffer(inputs.selection, np.uint8).reshape(r.h, r.w)  # Krita's 8 bits
    assert inputs.fmt.dtype == np.dtype(dtype).name and inputs.request.selection_dtype == "uint8"
    assert sent[15, 15] == 128
    assert len(inputs.layer) == r.w * r.h * 4 * np.dtype(dtype).itemsize


def test_refusals_say_what_to_do(krita: ModuleType) -> None:
    host = plugin("host")
    support = plugin("deps").host_side()
    doc, _bg, layer = make_doc(krita)
    group = doc.createNode("group", "grouplayer")
    with pytest.raises(support.PluginError, match="not a paint layer"):
        host.read_inputs(doc, group)
    empty = doc.createNode("empty", "paintlayer")
    with pytest.raises(support.PluginError, match="is empty"):
        host.read_inputs(doc, empty)
    sel = krita.Selection()
    sel.select(30, 0, 5, 5, 255)
    doc.setSelection(sel)
    with pytest.raises(support.PluginError, match="does not touch the layer"):
        host.read_inputs(doc, layer)
    with pytest.raises(support.PluginError, match="Open an image"):
        host.active_layer(None)
    doc.active = None
    with pytest.raises(support.PluginError, match="Select the pasted layer"):
        host.active_layer(doc)


def test_transparent_inside_selection_is_refused(krita: ModuleType) -> None:
    host = plugin("host")
    support = plugin("deps").host_side()
    doc, _bg, layer = make_doc(krita)
    sel = krita.Selection()
    sel.select(0, 0, 12, H, 255)  # left of the layer
    sel.select(12, 0, 1, 1, 255)  # widens the selection's box onto the layer's column 12
    doc.setSelection(sel)
    with pytest.raises(support.PluginError, match="fully transparent"):
        host.read_inputs(doc, layer)


@pytest.mark.parametrize("hide", [False, True])
def test_nothing_visible_below_is_refused(krita: ModuleType, hide: bool) -> None:
    """The bottom layer (or one over hidden layers only) has nothing to match: refused, like
    GIMP, instead of a washed-out copy."""
    host = plugin("host")
    support = plugin("deps").host_side()
    doc, bg, layer = make_doc(krita)
    if hide:
        bg.setVisible(False)
    target = layer if hide else bg
    with pytest.raises(support.PluginError, match="Nothing is visible below '"):
        host.read_inputs(doc, target)
    assert not [n for n in doc.root.childNodes() if "harmonized" in n.name()]
    assert bg.visible() is not hide  # the user's document is untouched


def flat_doc(krita: ModuleType) -> tuple[Any, Any]:
    """A flattened photo: one opaque layer, nothing below it."""
    doc = krita.Krita.instance().createDocument(W, H, "flat", "RGBA", "U8", "sRGB", 72.0)
    photo = doc.createNode("Background", "paintlayer")
    for y in range(H):
        for x in range(W):
            photo.pixels[(x, y)] = (x / W, y / H, 0.3, 1.0)
    doc.root.addChildNode(photo, None)
    krita.Krita.instance().active_document = doc
    return doc, photo


def test_flat_image_selection_is_matched_to_the_rest_of_the_layer(krita: ModuleType) -> None:
    """Nothing below the layer, but a selection: the selection is sent, backdrop = the layer
    itself, so the selected region is harmonized against the rest of the photo."""
    host = plugin("host")
    doc, photo = flat_doc(krita)
    sel = krita.Selection()
    sel.select(2, 2, 6, 4, 255)
    sel.select(8, 2, 2, 4, 128)  # a feathered edge stays soft
    doc.setSelection(sel)
    inputs = host.read_inputs(doc, photo)
    r = inputs.region
    assert inputs.flat and (r.x, r.y) == (0, 0) and r.w < W  # the selection's box + margin
    assert inputs.backdrop == inputs.layer  # both BGRA: the layer is its own backdrop
    mask = np.frombuffer(inputs.selection, np.uint8).reshape(r.h, r.w)
    wanted = np.frombuffer(sel.pixelData(r.x, r.y, r.w, r.h), np.uint8).reshape(r.h, r.w)
    np.testing.assert_array_equal(mask, wanted)
    assert mask[3, 4] == 255 and mask[3, 8] == 128 and mask[0, 0] == 0 and mask.sum() > 0


def test_flat_image_without_a_usable_selection_says_what_to_do(krita: ModuleType) -> None:
    host = plugin("host")
    support = plugin("deps").host_side()
    doc, photo = flat_doc(krita)
    with pytest.raises(support.PluginError, match="select the object that looks wrong"):
        host.read_inputs(doc, photo)
    everything = krita.Selection()
    everything.select(0, 0, W, H, 255)
    doc.setSelection(everything)
    with pytest.raises(support.PluginError, match="The selection covers all of 'Background'"):
        host.read_inputs(doc, photo)
    assert [n.name() for n in doc.root.childNodes()] == ["Background"]


def fake_result(inputs: Any) -> tuple[bytes, Any]:
    """Invert the colours of the layer over a crop, in its BGRA (what a daemon could answer)."""
    support = plugin("deps").host_side()
    r = inputs.region
    bgra = np.frombuffer(inputs.layer, np.uint8).reshape(r.h, r.w, 4).copy()
    box = support.Box(10, 8, 18, 14)
    crop = bgra[box.y : box.bottom, box.x : box.right].copy()
    crop[..., :3] = 255 - crop[..., :3]
    return crop.tobytes(), box


def test_new_layer_is_complete_before_insertion(krita: ModuleType) -> None:
    host = plugin("host")
    doc, _bg, layer = make_doc(krita)
    layer.setOpacity(200)
    layer.setBlendingMode("multiply")
    before = layer.pixelData(0, 0, W, H)
    inputs = host.read_inputs(doc, layer)
    rgba, box = fake_result(inputs)
    doc.log.clear()
    new = host.build_layer(doc, layer, inputs, rgba, box)
    assert [n.name() for n in doc.root.childNodes()] == ["Background", "pasted", "on top"]
    assert doc.log == []  # built elsewhere: no undo command reached the user's document yet
    host.insert_above(doc, layer, new)
    assert [n.name() for n in doc.root.childNodes()] == [
        "Background",
        "pasted",
        "pasted (harmonized)",
        "on top",
    ]
    # one change to the user's document, the undo step "Add Layer" of the finished layer
    assert [e[0] for e in doc.log] == ["addChildNode", "refreshProjection"]
    assert doc.log[0][2] == new.pixels
    # every write and the blending mode (an undo command in Krita) went to a closed scratch
    made = [d for d in krita.Krita.instance().created if d is not doc]
    scratch = [d for d in made if ("setBlendingMode", new.name(), "multiply") in d.log]
    assert len(scratch) == 1 and scratch[0].closed and scratch[0].depth == doc.depth
    assert "setPixelData" in [e[0] for e in scratch[0].log]
    assert not any(e[2] for e in scratch[0].log if e[0] == "setPixelData")  # detached
    assert doc.activeNode() is new
    assert layer.pixelData(0, 0, W, H) == before  # the source is untouched
    assert (new.opacity(), new.blendingMode()) == (200, "multiply")
    got = np.frombuffer(new.pixelData(0, 0, W, H), np.uint8).reshape(H, W, 4)
    src = np.frombuffer(before, np.uint8).reshape(H, W, 4)
    np.testing.assert_array_equal(got[..., 3], src[..., 3])
    inside = np.zeros((H, W), bool)
    inside[box.y : box.bottom, box.x : box.right] = True
    np.testing.assert_array_equal(got[~inside], src[~inside])
    np.testing.assert_array_equal(got[inside][:, :3], 255 - src[inside][:, :3])


def test_update_layer_rewrites_the_crop_in_place(krita: ModuleType) -> None:
    host = plugin("host")
    doc, _bg, layer = make_doc(krita)
    inputs = host.read_inputs(doc, layer)
    rgba, box = fake_result(inputs)
    new = host.build_layer(doc, layer, inputs, rgba, box)
    host.insert_above(doc, layer, new)
    src = np.frombuffer(inputs.layer, np.uint8).reshape(inputs.region.h, inputs.region.w, 4)
    original = src[box.y : box.bottom, box.x : box.right].tobytes()
    host.update_layer(doc, new, inputs, original, box)  # strength 0: the source's pixels
    assert new.pixelData(0, 0, W, H) == layer.pixelData(0, 0, W, H)
    assert len([n for n in doc.root.childNodes() if "harmonized" in n.name()]) == 1


def test_harmonize_node_end_to_end(krita: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    host = plugin("host")
    support = plugin("deps").host_side()
    doc, _bg, layer = make_doc(krita)
    seen: dict[str, Any] = {}

    class Daemon:
        def restrength(self, request: Any, **kw: Any) -> Any:
            seen.update(
                w=request.width,
                h=request.height,
                dtype=request.fmt.dtype,
                strength=kw["strength"],
                sizes=(len(request.layer), request.selection, len(request.backdrop)),
            )
            box = support.Box(0, 0, request.width, request.height)
            bgra, box = fake_result(type("I", (), {"layer": request.layer, "region": box}))
            return support.Result(bgra, box, {})

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(support, "open_session", lambda settings=None: Daemon())
    new = host.harmonize_node(doc, layer, strength=0.4)
    assert seen["strength"] == 0.4 and seen["dtype"] == "uint8"
    assert seen["sizes"] == (W * H * 4, None, W * H * 4)  # BGRA in, no selection
    assert new.name() == "pasted (harmonized)" and new.parentNode() is doc.root


def test_colour_space_helpers(krita: ModuleType) -> None:
    host = plugin("host")
    assert host.Space("RGBA", "F16", "sRGB-elle-V2-g10.icc").linear
    assert not host.Space("RGBA", "U8", "sRGB-elle-V2-srgbtrc.icc").linear
    u8 = host.wire_format_of(host.Space("RGBA", "U8", "sRGB-elle-V2-srgbtrc.icc"))
    assert u8.dtype == "uint8"
    assert host.wire_format_of(host.Space("RGBA", "U8", "sRGB-elle-V2-g10.icc")).dtype == "uint16"
    assert host.wire_format_of(host.Space("RGBA", "F16", "x")).dtype == "float32"
    assert host.wire_format_of(host.Space("GRAYA", "U16", "x")).dtype == "uint16"
    native = host.Space("RGBA", "U8", "sRGB-elle-V2-srgbtrc.icc")
    assert host.work_space(native, u8) is native
    grey = host.work_space(host.Space("GRAYA", "U8", "Gray"), u8)
    assert grey == host.Space("RGBA", "U8", host.WORK_PROFILE)
    with pytest.raises(plugin("deps").host_side().PluginError, match="depth"):
        host.wire_format_of(host.Space("RGBA", "U32", "x"))


def test_depth_conversion_goes_through_a_scratch_document(krita: ModuleType) -> None:
    host = plugin("host")
    src = host.Space("RGBA", "U16", "p")
    dst = host.Space("RGBA", "F32", "p")
    raw = np.array([0, 65535, 32768, 65535], np.uint16).tobytes()
    out = np.frombuffer(host.convert_pixels(raw, 1, 1, src, dst), np.float32)
    np.testing.assert_allclose(out, [0, 1, 32768 / 65535, 1], atol=1e-6)
    assert all(d.closed for d in krita.Krita.instance().created)
    assert host.convert_pixels(raw, 1, 1, src, src) == raw  # no scratch document needed
    support = plugin("deps").host_side()
    with pytest.raises(support.PluginError, match="could not convert"):
        host.convert_pixels(raw, 1, 1, src, host.Space("CMYKA", "U8", "p"))


# ---- packaging glue ---------------------------------------------------------------------------


def test_register_needs_qt_and_a_recent_krita(
    krita: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("PyQt5") or importlib.util.find_spec("PyQt6"):
        pytest.skip("Qt is importable here; the refusal path needs a Python without it")
    package = plugin()
    app = krita.Krita.instance()
    assert package.register() is False
    assert "PyQt5" in capsys.readouterr().err and app.extensions == []
    app.version_string = "4.4.8"
    assert package.register() is False
    assert "too old" in capsys.readouterr().err


def test_register_is_off_in_runner_mode(krita: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARMONIZE_KRITA_NO_REGISTER", "1")
    assert plugin().register() is False


def test_wheel_tags_and_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    deps = plugin("deps")
    tags = deps.wheel_tags()
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert tags[0].startswith(py + "-") and tags[-1] == "any"
    monkeypatch.setattr(deps, "WHEELS_DIR", tmp_path)
    (tmp_path / tags[0]).mkdir()
    (tmp_path / "cp27-nowhere").mkdir()
    monkeypatch.setattr(sys, "path", list(sys.path))
    added = deps.add_wheels_to_path()
    assert added == [str(tmp_path / tags[0])] and sys.path[-1] == added[0]
    assert deps.add_wheels_to_path() == []  # idempotent


def test_plugin_files_are_consistent() -> None:
    desktop = (REPO / "plugins" / "krita" / "harmonize.desktop").read_text()
    assert "X-KDE-Library=harmonize" in desktop and "ServiceTypes=Krita/PythonPlugin" in desktop
    action = (REPO / "plugins" / "krita" / "harmonize.action").read_text()
    from plugins.krita.harmonize import names

    assert f'name="{names.ACTION_ID}"' in action
    assert f"<shortcut>{names.DEFAULT_SHORTCUT}</shortcut>" in action
    assert f"<text>{names.ACTION_TEXT}</text>" in action


# ---- installer and release zip ----------------------------------------------------------------


def fake_wheel(folder: Path, dist: str, module: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-1.0-cp310-cp310-win_amd64.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{module}/__init__.py", f"NAME = {module!r}\n")
        zf.writestr(f"{dist}-1.0.dist-info/METADATA", f"Name: {dist}\n")
    return path


def test_kritarc_enabling_keeps_the_rest(tmp_path: Path) -> None:
    from layer_harmonizer.install import set_kritarc_enabled

    rc = tmp_path / "kritarc"
    rc.write_text("[General]\nfoo=1\n\n[python]\nenable_other=true\nenable_harmonize=false\n"
                  "\n[Zeta]\nx=%s\n")  # fmt: skip
    set_kritarc_enabled(rc)
    text = rc.read_text()
    assert "enable_harmonize=true" in text and "enable_harmonize=false" not in text
    assert "[General]\nfoo=1\n" in text and "enable_other=true" in text and "x=%s" in text
    set_kritarc_enabled(rc, enabled=False)
    assert text.replace("=true\n\n[Zeta]", "=false\n\n[Zeta]") == rc.read_text()
    fresh = tmp_path / "new" / "kritarc"
    set_kritarc_enabled(fresh)
    assert fresh.read_text() == "[python]\nenable_harmonize=true\n"
    other = tmp_path / "other"
    other.write_text("[General]\na=b\n")
    set_kritarc_enabled(other)
    assert other.read_text() == "[General]\na=b\n\n[python]\nenable_harmonize=true\n"


def test_install_krita_layout_and_uninstall(tmp_path: Path) -> None:
    from layer_harmonizer import install as I

    krita_dir, rc = tmp_path / "share" / "krita", tmp_path / "config" / "kritarc"
    report = I.install_plugin("krita", host_dir=krita_dir, kritarc=rc, deps="host")
    package = krita_dir / "pykrita" / "harmonize"
    assert report.plugin_dir == package and report.deps == "assumed"
    for name in ("__init__.py", "host.py", "extension.py", "docker.py", "settings.json", I.MARKER):
        assert (package / name).is_file(), name
    assert_vendors_the_wire_package(package / "vendor")
    assert (krita_dir / "pykrita" / "harmonize.desktop").is_file()
    assert (krita_dir / "actions" / "harmonize.action").is_file()
    assert "enable_harmonize=true" in rc.read_text()
    assert not list(package.rglob("__pycache__"))
    I.install_plugin("krita", host_dir=krita_dir, kritarc=rc, deps="host")  # replaces
    assert I.uninstall_plugin("krita", host_dir=krita_dir, kritarc=rc) == package
    assert not package.exists() and not (krita_dir / "actions" / "harmonize.action").exists()
    assert "enable_harmonize=false" in rc.read_text()
    assert I.uninstall_plugin("krita", host_dir=krita_dir, kritarc=rc) is None
    foreign = krita_dir / "pykrita" / "harmonize"
    foreign.mkdir(parents=True)
    with pytest.raises(I.InstallError, match="not installed by harmonize"):
        I.install_plugin("krita", host_dir=krita_dir, kritarc=rc, deps="host")


def test_install_krita_vendors_wheels(tmp_path: Path) -> None:
    from layer_harmonizer import install as I

    wheels = tmp_path / "wheels"
    fake_wheel(wheels, "pyzmq", "zmq")
    fake_wheel(wheels, "msgpack", "msgpack")
    options = I.PluginOptions(
        "vendor", python_version="3.10", platform="win-amd64", wheel_dir=wheels
    )
    report = I.install_krita(krita_dir=tmp_path / "k", kritarc=tmp_path / "rc", options=options)
    vendor = report.plugin_dir / "vendor"
    assert report.deps == "vendored" and len(report.wheels) == 2
    assert (vendor / "zmq" / "__init__.py").is_file() and (vendor / "msgpack").is_dir()


def test_release_zip_layout(tmp_path: Path) -> None:
    from layer_harmonizer import install as I

    folders = {}
    for version, platform in I.KRITA_ZIP_TARGETS:
        tag = I.wheel_tag(version, platform)
        folders[tag] = tmp_path / "w" / tag
        fake_wheel(folders[tag], "pyzmq", "zmq")
        fake_wheel(folders[tag], "msgpack", "msgpack")
    out = I.package_krita(tmp_path / "dist" / "harmonize-krita.zip", wheel_dirs=folders)
    names = zipfile.ZipFile(out).namelist()
    # what Krita's importer (plugin_importer.py) looks for: a .desktop naming the library,
    # the module folder entry with its __init__.py, and a matching .action file
    assert {"harmonize.desktop", "harmonize.action", "harmonize/", "harmonize/__init__.py"} <= set(
        names
    )
    assert "harmonize/vendor/layer_harmonizer/wire/host_side.py" in names
    assert set(folders) == {"cp310-win_amd64", "cp310-linux_x86_64", "cp311-linux_x86_64",
                            "cp312-linux_x86_64", "cp313-linux_x86_64", "cp310-macosx"}  # fmt: skip
    for tag in folders:
        assert f"harmonize/wheels/{tag}/zmq/__init__.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith("settings.json")]
    assert not out.with_name(out.name + ".partial").exists()


def test_installer_and_plugin_agree_on_wheel_folders() -> None:
    """The tag the installer writes for this interpreter is one the plugin looks up."""
    import sysconfig

    from layer_harmonizer.install import wheel_tag

    deps = plugin("deps")
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert wheel_tag(version, sysconfig.get_platform()) == deps.wheel_tags()[0]
    assert wheel_tag("3.10", "win-amd64") == "cp310-win_amd64"
    assert wheel_tag("3.10", "macosx-10.15-universal2") == "cp310-macosx"


def test_cli_install_package_uninstall(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from layer_harmonizer import cli
    from layer_harmonizer import install as I

    args = ["--krita-dir", str(tmp_path / "k"), "--kritarc", str(tmp_path / "rc")]
    assert cli.main(["install-plugin", "krita", *args, "--deps", "host"]) == 0
    out = capsys.readouterr().out
    assert "installed the krita plugin" in out and "Filter > Harmonize Layer" in out
    assert cli.main(["uninstall-plugin", "krita", *args]) == 0
    assert "removed" in capsys.readouterr().out
    wheels = tmp_path / "wheels"
    for version, platform in I.KRITA_ZIP_TARGETS:
        fake_wheel(wheels / I.wheel_tag(version, platform), "pyzmq", "zmq")
    zip_path = tmp_path / "h.zip"
    assert cli.main(["package-plugin", "krita", "-o", str(zip_path), "--wheels-from",
                     str(wheels)]) == 0  # fmt: skip
    assert zip_path.is_file() and "wrote" in capsys.readouterr().out


def test_daemon_status_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from layer_harmonizer.wire import host_side as ps
    from layer_harmonizer.wire.client import DaemonError

    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(tmp_path))

    class Running:
        class Client:
            @classmethod
            def from_endpoint_file(cls, path: Path, **kw: Any) -> Any:
                assert path == tmp_path / "daemon.json"
                return cls()

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def ping(self, **kw: Any) -> dict[str, str]:
                return {"server_version": "9.9", "device": "cuda:0", "variant": "aict"}

    assert ps.daemon_status(client_module=Running) == "Connected: harmonize 9.9 on cuda:0 (aict)"
    assert ps.daemon_state(client_module=Running).state == ps.CONNECTED

    class Absent(Running):
        class Client(Running.Client):
            @classmethod
            def from_endpoint_file(cls, path: Path, **kw: Any) -> Any:
                raise DaemonError("no_daemon", "no endpoint file")

    state = ps.daemon_state(client_module=Absent)
    assert state == ps.DaemonState(ps.NOT_RUNNING, "Not running: it starts on the first Harmonize.")

    class Silent(Running):
        class Client(Running.Client):
            def ping(self, **kw: Any) -> dict[str, str]:
                raise DaemonError("unreachable", "no answer after 1 tries")

    state = ps.daemon_state(client_module=Silent)
    assert state.state == ps.ERROR
    assert state.text == "Error: the daemon does not answer (no answer after 1 tries)."
    # a daemon that was killed leaves its endpoint file: its pid is gone, so "not running"
    (tmp_path / "daemon.json").write_text(json.dumps({"endpoint": "tcp://x", "pid": 2**22 + 17}))
    assert ps.daemon_state(client_module=Silent).state == ps.NOT_RUNNING
    (tmp_path / "daemon.json").write_text(json.dumps({"endpoint": "tcp://x", "pid": os.getpid()}))
    assert ps.daemon_state(client_module=Silent).state == ps.ERROR  # alive but not answering

    class Broken(Running):
        class Client(Running.Client):
            @classmethod
            def from_endpoint_file(cls, path: Path, **kw: Any) -> Any:
                raise ps.PluginError("The host's Python needs pyzmq.")

    assert ps.daemon_state(client_module=Broken) == ps.DaemonState(
        ps.ERROR, "Error: The host's Python needs pyzmq."
    )


def test_explain_never_raises_without_the_shared_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    deps = plugin("deps")
    support = deps.host_side()
    assert deps.explain(support.PluginError("Select the pasted layer")) == "Select the pasted layer"

    def missing() -> Any:
        raise ImportError("No module named 'msgpack'")

    monkeypatch.setattr(deps, "host_side", missing)
    text = deps.explain(RuntimeError("anything"))
    assert "msgpack" in text and "install-plugin krita --deps vendor" in text


class FakeClients:
    """Stands in for ``layer_harmonizer.wire.client``: records the clients made and what each
    request sent; answers with the layer's own crop (as a 2.1 daemon would, in BGRA)."""

    def __init__(self) -> None:
        from layer_harmonizer.wire.client import DaemonError

        self.DaemonError = DaemonError
        self.made: list[Any] = []
        self.sent: list[tuple[str, Any]] = []
        fake = self

        class Client:
            def __init__(self) -> None:
                fake.made.append(self)

            def harmonize_layer(self, layer: Any, selection: Any, backdrop: Any, **kw: Any):
                fake.sent.append(("harmonize_layer", (layer.order, backdrop.order, selection)))
                self.last = layer
                return fake.reply(layer, "job1")

            def reapply(self, job: str, **kw: Any) -> Any:
                fake.sent.append(("reapply", job))
                return fake.reply(self.last, job)

            def close(self) -> None:
                pass

        self.Client = Client

    def answering_client(self, _path: Path, **_kw: Any) -> Any:
        return self.Client()

    @staticmethod
    def reply(layer: Any, job: str) -> Any:
        from layer_harmonizer.wire import protocol as P

        pixels = P.Pixels(layer.data, layer.shape, layer.dtype, "BGRA")
        return type("Reply", (), {"pixels": pixels, "offset": (0, 0), "timings": {}, "job": job})


def test_the_docker_keeps_one_client_and_a_strength_change_sends_no_pixels(
    krita: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What the controller does for the docker: every job through one session; the slider's
    job (the same inputs again) is a reapply of the kept job; BGRA declared both ways."""
    host = plugin("host")
    support = plugin("deps").host_side()
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(tmp_path))
    info = {"endpoint": "ipc://fake", "token": "t", "pid": os.getpid()}
    (tmp_path / "daemon.json").write_text(json.dumps(info))
    fake = FakeClients()
    doc, _bg, layer = make_doc(krita)
    inputs = host.read_inputs(doc, layer)
    with support.open_session(client_module=fake) as session:
        first = host.send(inputs, strength=1.0, session=session)
        again = host.send(inputs, strength=0.4, session=session)
        other = host.send(host.read_inputs(doc, layer), strength=0.4, session=session)
    assert len(fake.made) == 1
    assert fake.sent == [
        ("harmonize_layer", ("BGRA", "BGRA", None)),
        ("reapply", "job1"),
        ("harmonize_layer", ("BGRA", "BGRA", None)),
    ]
    assert bytes(first.pixels) == bytes(again.pixels) == bytes(other.pixels) == inputs.layer

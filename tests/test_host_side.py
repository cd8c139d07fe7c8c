"""layer_harmonizer.wire.host_side: geometry, formats, settings, messages, and the daemon call
(against a real daemon over TCP for the happy path and the version check)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layer_harmonizer.compose import crop_box
from layer_harmonizer.wire import host_side as S
from layer_harmonizer.wire import messages as M
from layer_harmonizer.wire import protocol as P
from tests.daemon_process import DaemonProcess

# ---- geometry ---------------------------------------------------------------------------------


def test_box_intersect_and_shift():
    a, b = S.Box(0, 0, 10, 10), S.Box(5, 6, 10, 10)
    assert a.intersect(b) == S.Box(5, 6, 5, 4)
    assert a.intersect(S.Box(20, 20, 5, 5)).empty
    assert b.shift(-5, -6) == S.Box(0, 0, 10, 10)
    assert (b.right, b.bottom) == (15, 16)


@settings(max_examples=150, deadline=None)
@given(
    lx=st.integers(-50, 150), ly=st.integers(-50, 150), lw=st.integers(1, 120),
    lh=st.integers(1, 120), iw=st.integers(1, 160), ih=st.integers(1, 160), data=st.data(),
)  # fmt: skip
def test_context_box_holds_the_daemons_crop(lx, ly, lw, lh, iw, ih, data):
    """The region contains the layer's on-canvas part plus the daemon's margin around any mask
    inside it, except where the image ends."""
    layer = S.Box(lx, ly, lw, lh)
    on_canvas = layer.intersect(S.Box(0, 0, iw, ih))
    if on_canvas.empty:
        with pytest.raises(S.PluginError, match="outside the image canvas"):
            S.context_box(layer, iw, ih)
        return
    region = S.context_box(layer, iw, ih)
    assert region.intersect(S.Box(0, 0, iw, ih)) == region
    assert region.intersect(on_canvas) == on_canvas
    # a mask rectangle somewhere on the layer: the daemon's padded box
    mx = data.draw(st.integers(on_canvas.x, on_canvas.right - 1))
    my = data.draw(st.integers(on_canvas.y, on_canvas.bottom - 1))
    mw = data.draw(st.integers(1, on_canvas.right - mx))
    mh = data.draw(st.integers(1, on_canvas.bottom - my))
    mask = np.zeros((region.h, region.w), np.float32)
    mask[my - region.y : my - region.y + mh, mx - region.x : mx - region.x + mw] = 0.5
    x0, y0, x1, y1 = crop_box(mask, M.DEFAULT_CROP_MARGIN, M.MIN_CROP_MARGIN_PX)
    pad = max(M.MIN_CROP_MARGIN_PX, math.ceil(M.DEFAULT_CROP_MARGIN * max(mw, mh)))
    # the daemon's box is its unclamped box cut only by the image, never by the region
    assert (region.x + x0, region.x + x1) == (max(0, mx - pad), min(iw, mx + mw + pad))
    assert (region.y + y0, region.y + y1) == (max(0, my - pad), min(ih, my + mh + pad))


def test_crop_rows():
    data = bytes(range(4 * 3 * 2))  # 4 wide, 3 high, 2 bytes per pixel
    assert S.crop_rows(data, 4, 2, S.Box(1, 1, 2, 2)) == bytes([10, 11, 12, 13, 18, 19, 20, 21])
    assert S.crop_rows(data, 4, 2, S.Box(0, 1, 4, 1)) == data[8:16]
    with pytest.raises(ValueError, match="not inside"):
        S.crop_rows(data, 4, 2, S.Box(3, 0, 2, 1))


# ---- formats, names, settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "dtype", "babl"),
    [("U8_NON_LINEAR", "uint8", "u8"), ("U8_PERCEPTUAL", "uint8", "u8"),
     ("U8_LINEAR", "uint16", "u16"), ("u16_linear", "uint16", "u16"),
     ("U32_LINEAR", "float32", "float"), ("HALF_NON_LINEAR", "float32", "float"),
     ("FLOAT_PERCEPTUAL", "float32", "float"), ("DOUBLE_LINEAR", "float32", "float")],
)  # fmt: skip
def test_wire_format(precision, dtype, babl):
    fmt = S.wire_format(precision)
    assert (fmt.dtype, fmt.babl_type) == (dtype, babl)
    assert fmt.rgba == f"R'G'B'A {babl}" and fmt.rgb == f"R'G'B' {babl}"
    assert fmt.alpha == f"A {babl}"
    assert fmt.channel_bytes == P.DTYPES[dtype]


def test_wire_format_unknown():
    with pytest.raises(ValueError, match="unknown precision"):
        S.wire_format("U64_LINEAR")


def test_result_name():
    assert S.result_name("Pasted Layer") == "Pasted Layer (harmonized)"


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), max_size=64))
def test_has_unselected_part(pairs: list[tuple[int, int]]):
    """A flat image's context: some layer pixel (alpha > 0) outside the selection (< 255)."""
    alpha, selection = bytes(a for a, _ in pairs), bytes(s for _, s in pairs)
    assert S.has_unselected_part(alpha, selection) == any(a and s < 255 for a, s in pairs)


def test_has_unselected_part_checks_sizes():
    with pytest.raises(ValueError, match="differ"):
        S.has_unselected_part(b"\x01\x02", b"\x00")


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), max_size=64))
def test_is_covered(pairs: list[tuple[int, int]]):
    """Something to harmonize: some layer pixel (alpha > 0) selected (> 0; no selection: all)."""
    alpha, selection = bytes(a for a, _ in pairs), bytes(s for _, s in pairs)
    assert S.is_covered(alpha, selection) == any(a and s for a, s in pairs)
    assert S.is_covered(alpha, None) == any(alpha)
    with pytest.raises(ValueError, match="differ"):
        S.is_covered(alpha + b"\x01", selection)


def test_flat_image_messages_say_what_to_do():
    for text in (S.nothing_below("Background"), S.nothing_below()):
        assert "select the object that looks wrong, then run Harmonize again" in text
    assert S.nothing_below("Background").startswith("Nothing is visible below 'Background'")
    assert S.nothing_below().startswith("Nothing is visible below the layer")
    assert "select only the object" in S.selection_covers_layer("photo")


def test_settings_round_trip_and_errors(tmp_path: Path):
    assert S.load_settings(tmp_path) == S.Settings()
    saved = S.Settings(serve_command=["/x/harmonize", "serve"], serve_args=["--device", "cpu"],
                       runtime_dir="/run/user/1/harmonize", timeout=5.0)  # fmt: skip
    (tmp_path / S.SETTINGS_FILE).write_text(saved.to_json())
    assert S.load_settings(tmp_path) == saved
    (tmp_path / S.SETTINGS_FILE).write_text(json.dumps({"serve_command": "harmonize serve"}))
    with pytest.raises(S.PluginError, match="install-plugin"):
        S.load_settings(tmp_path)
    (tmp_path / S.SETTINGS_FILE).write_text("{not json")
    with pytest.raises(S.PluginError, match="unreadable"):
        S.load_settings(tmp_path)


def test_endpoint_file_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(tmp_path / "env"))
    settings_ = S.Settings(runtime_dir=str(tmp_path / "installed"))
    assert S.endpoint_file(settings_) == tmp_path / "env" / "daemon.json"
    monkeypatch.delenv("HARMONIZE_RUNTIME_DIR")
    assert S.endpoint_file(settings_) == tmp_path / "installed" / "daemon.json"
    assert S.endpoint_file(S.Settings()).name == "daemon.json"


def test_serve_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    exe = tmp_path / "harmonize"
    exe.write_text("")
    assert S.serve_command(S.Settings(serve_command=[str(exe), "serve"])) == [str(exe), "serve"]
    with pytest.raises(S.PluginError, match="not installed at"):
        S.serve_command(S.Settings(serve_command=[str(tmp_path / "gone"), "serve"]))
    monkeypatch.setattr(S.shutil, "which", lambda _n: "/usr/bin/harmonize")
    assert S.serve_command(S.Settings()) == ["/usr/bin/harmonize", "serve"]
    monkeypatch.setattr(S.shutil, "which", lambda _n: None)
    with pytest.raises(S.PluginError, match="not installed"):
        S.serve_command(S.Settings())


# ---- messages ---------------------------------------------------------------------------------


class Coded(Exception):
    def __init__(self, code: str, message: str = "detail text") -> None:
        super().__init__(message)
        self.code, self.message = code, message


@pytest.mark.parametrize(
    ("exc", "words"),
    [(Coded("no_daemon"), "could not be started"), (Coded("unreachable"), "harmonize stop"),
     (Coded("unsupported_version"), "up-to-date clone of harmonize"),
     (Coded("out_of_memory"), "--device cpu"), (Coded("empty_mask"), "Nothing to harmonize"),
     (Coded("busy"), "busy"), (Coded("too_large"), "too large"),
     (Coded("internal"), "[internal]"), (FileNotFoundError("harmonize"), "not installed"),
     (MemoryError(), "Out of memory"), (RuntimeError("boom"), "RuntimeError: boom")],
)  # fmt: skip
def test_explain(exc, words):
    text = S.explain(exc)
    assert words in text


def test_client_module_missing_zmq_is_a_message(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "zmq", None)  # import zmq -> ImportError
    for name in ("client", "connection", "startup"):  # the wire modules that import zmq
        monkeypatch.delitem(sys.modules, f"layer_harmonizer.wire.{name}", raising=False)
        monkeypatch.delattr(sys.modules["layer_harmonizer.wire"], name, raising=False)
    with pytest.raises(S.PluginError, match="pyzmq and msgpack"):
        S._client_module()


def test_importing_host_side_needs_no_zmq_numpy_or_torch():
    code = (
        "import sys; sys.modules['zmq'] = None\n"
        "import layer_harmonizer.wire.host_side\n"
        "bad = [m for m in ('zmq', 'numpy', 'torch') if sys.modules.get(m) is not None]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# ---- the daemon call --------------------------------------------------------------------------


def test_harmonize_checks_sizes_and_strength():
    fmt = S.wire_format("U8_NON_LINEAR")
    with pytest.raises(S.PluginError, match="Strength"):
        S.harmonize(b"", b"", b"", 1, 1, fmt, strength=1.5)
    with pytest.raises(S.PluginError, match="the mask has 2 bytes"):
        S.harmonize(b"\0" * 4, b"\0\0", b"\0" * 3, 1, 1, fmt, client_module=object())


@pytest.fixture(scope="module")
def real_daemon(tmp_path_factory: pytest.TempPathFactory, light_model) -> Iterator[Path]:
    """``harmonize serve`` (conftest's random aict-light) on 127.0.0.1; yields its runtime dir."""
    from layer_harmonizer.model.weights import save_weights

    tmp = tmp_path_factory.mktemp("daemon")
    weights = tmp / "w.pt"
    save_weights(weights, light_model, "aict-light", {"note": "random, tests"}, half=False)
    with DaemonProcess(tmp, weights, "--device", "cpu"):
        yield tmp / "runtime"


def test_harmonize_through_a_real_daemon(real_daemon: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(real_daemon))
    w, h = 48, 40
    rng = np.random.default_rng(0)
    layer = rng.integers(0, 65536, (h, w, 4), dtype=np.uint16)
    layer[..., 3] = 0
    layer[10:30, 12:36, 3] = 65535
    mask = np.ascontiguousarray(layer[..., 3])
    backdrop = rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)
    seen: list[tuple[float, str]] = []
    result = S.harmonize(
        layer.tobytes(), mask.tobytes(), backdrop.tobytes(), w, h, S.wire_format("U16_LINEAR"),
        strength=0.5, on_progress=lambda f, s: seen.append((f, s)),
    )  # fmt: skip
    box = result.box
    assert box == S.Box(0, 0, w, h)  # mask bbox + 16 px margin covers the whole region
    out = np.frombuffer(result.pixels, np.uint16).reshape(box.h, box.w, 4)
    np.testing.assert_array_equal(out[..., 3], layer[..., 3])
    assert not np.array_equal(out[10:30, 12:36, :3], layer[10:30, 12:36, :3])
    assert [s for _, s in seen] == ["received", "composed", "predicted", "applied"]
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)


def test_empty_mask_from_a_real_daemon(real_daemon: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(real_daemon))
    fmt = S.wire_format("U8_NON_LINEAR")
    with pytest.raises(S.PluginError, match="Nothing to harmonize"):
        S.harmonize(b"\0" * 64, b"\0" * 16, b"\0" * 48, 4, 4, fmt)


def test_no_daemon_and_nothing_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(S.shutil, "which", lambda _n: None)
    fmt = S.wire_format("U8_NON_LINEAR")
    with pytest.raises(S.PluginError, match="not installed"):
        S.harmonize(b"\0" * 4, b"\0", b"\0" * 3, 1, 1, fmt)


def test_daemon_that_does_not_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(tmp_path))
    fake = tmp_path / "harmonize"
    fake.write_text("#!/bin/sh\necho 'no weights installed' >&2\nexit 2\n")
    fake.chmod(0o755)
    settings_ = S.Settings(serve_command=[str(fake), "serve"])
    fmt = S.wire_format("U8_NON_LINEAR")
    with pytest.raises(S.PluginError, match=r"could not be started.*no weights installed"):
        S.harmonize(b"\0" * 4, b"\0", b"\0" * 3, 1, 1, fmt, settings=settings_)


def test_starts_a_daemon_when_none_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        light_model) -> None:  # fmt: skip
    """The plugin's path for a user with no daemon: settings.json's command is started
    detached, found through the endpoint file, used, and then shut down here."""
    from layer_harmonizer.model.weights import save_weights
    from layer_harmonizer.wire.client import Client

    weights = tmp_path / "w.pt"
    save_weights(weights, light_model, "aict-light", {"note": "random, tests"}, half=False)
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("HARMONIZE_LOG_DIR", str(tmp_path / "log"))
    settings_ = S.Settings(
        serve_command=[sys.executable, "-m", "layer_harmonizer", "serve"],
        serve_args=["--weights", str(weights), "--device", "cpu"],
    )
    w, h = 40, 32
    layer = bytes([200, 120, 40, 255]) * (w * h)
    mask = bytes([255]) * (w * h)
    backdrop = bytes([30, 60, 150]) * (w * h)
    try:
        result = S.harmonize(layer, mask, backdrop, w, h, S.wire_format("U8_NON_LINEAR"),
                             settings=settings_)  # fmt: skip
        assert result.box == S.Box(0, 0, w, h)
        assert result.pixels != layer  # recoloured
        info = json.loads((tmp_path / "run" / "daemon.json").read_text())
        assert info["pid"] != os.getpid()
    finally:
        endpoint = tmp_path / "run" / "daemon.json"
        if endpoint.exists():
            with Client.from_endpoint_file(endpoint, timeout=10, retries=0) as client:
                client.shutdown()

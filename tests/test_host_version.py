"""A host too old or too new for the plug-in says so in its own UI (issue 13): the messages
(:mod:`layer_harmonizer.wire.host_version`), GIMP's stand-in procedure and Krita's notice
extension, against the mocked hosts (tests/mock/) set to other versions."""

from __future__ import annotations

import runpy
import sys
import types
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from layer_harmonizer.wire.host_side import PROCEDURE_NAME
from layer_harmonizer.wire.host_version import parse_version, unsupported_message
from tests import test_plugin_gimp, test_plugin_krita
from tests.mock import gimp as gimp_mock

krita = test_plugin_krita.krita  # the mocked Krita fixture


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("5.2.9", (5, 2, 9)), ("5.3.0-prealpha", (5, 3, 0)), ("3.0.4", (3, 0, 4)), ("git", (0,))],
)
def test_parse_version(text: str, parsed: tuple[int, ...]) -> None:
    assert parse_version(text) == parsed


@pytest.mark.parametrize(
    ("host", "version", "verdict"),
    [
        ("GIMP", "2.99.16", "too old"), ("GIMP", "2.10.38", "too old"), ("GIMP", "3.0.4", None),
        ("GIMP", "3.2.0", None), ("GIMP", "4.0.0", "too new"), ("Krita", "4.4.8", "too old"),
        ("Krita", "5.0.2", "too old"), ("Krita", "5.1.5", None), ("Krita", "5.2.9", None),
        ("Krita", "6.0.1", None), ("Krita", "7.0.0", "too new"),
    ],
)  # fmt: skip
def test_supported_range(host: str, version: str, verdict: str | None) -> None:
    message = unsupported_message(host, version)
    if verdict is None:
        assert message is None
        return
    assert message is not None and verdict in message and f"{host} {version}" in message
    if verdict == "too new":
        assert f"harmonize install-plugin {host.lower()}" in message


def test_unknown_host_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown host 'Paint'"):
        unsupported_message("Paint", "1.0")


# ---- GIMP ---------------------------------------------------------------------------------------


@pytest.fixture
def gimp_at() -> Iterator[Any]:
    """``gimp_at((major, minor, micro))``: the mocked ``gi`` standing for that GIMP (GIMP 4
    offers only a ``Gimp 4.0`` API, as its typelib would); ``Gimp.main`` is recorded."""
    restores: list[Any] = []

    def make(version: tuple[int, int, int]) -> types.SimpleNamespace:
        modules, restore = gimp_mock.install()
        restores.append(restore)
        gimp = modules.Gimp
        gimp.MAJOR_VERSION, gimp.MINOR_VERSION, gimp.MICRO_VERSION = version
        api = f"{version[0]}.0" if version[0] >= 4 else "3.0"
        gi = sys.modules["gi"]
        required: list[tuple[str, str]] = []

        def require_version(name: str, wanted: str) -> None:
            if name == "Gimp" and wanted != api:
                raise ValueError(f"Namespace Gimp not available for version {wanted}")
            required.append((name, wanted))

        repository = types.SimpleNamespace(enumerate_versions=lambda name: [api])
        gi.require_version = require_version  # type: ignore[attr-defined]
        gi.Repository = types.SimpleNamespace(get_default=lambda: repository)  # type: ignore[attr-defined]
        gimp.PlugIn.__gtype__ = "GType(PlugIn)"
        mains: list[tuple[Any, ...]] = []
        gimp.main = lambda *args: mains.append(args) or 0
        return types.SimpleNamespace(Gimp=gimp, required=required, mains=mains)

    yield make
    for restore in reversed(restores):
        restore()


@pytest.mark.parametrize(("version", "verdict"), [((2, 99, 16), "too old"), ((4, 0, 1), "too new")])
def test_gimp_outside_the_range_registers_a_procedure_that_explains(
    gimp_at: Any, version: tuple[int, int, int], verdict: str, capsys: pytest.CaptureFixture[str]
) -> None:
    host = gimp_at(version)
    with pytest.raises(SystemExit):  # GIMP runs harmonize.py as __main__
        runpy.run_path(str(test_plugin_gimp.PLUGIN), run_name="__main__")
    assert len(host.mains) == 1  # the stand-in plug-in ran instead of the real one
    assert ("GimpUi", "3.0") not in host.required  # nothing past the Gimp API was loaded
    stderr = capsys.readouterr().err
    assert verdict in stderr and "GIMP " + ".".join(map(str, version)) in stderr
    module = sys.modules["gimp_version"]  # beside harmonize.py, imported by it
    message = stderr.strip().removeprefix("harmonize: ")
    plugin = module.notice_plugin(host.Gimp, gimp_mock.GLib, message)()
    assert plugin.do_query_procedures() == [PROCEDURE_NAME]  # the real one's menu entries
    proc = plugin.do_create_procedure(PROCEDURE_NAME)
    assert proc.label == module.MENU_LABEL and proc.menu_paths == list(module.MENU_PATHS)
    status, _error = proc.run_func(proc, host.Gimp.RunMode.INTERACTIVE, None, [], None, None)
    assert status == host.Gimp.PDBStatusType.CANCEL  # nothing changed
    ((_name, (shown,)),) = [call for call in host.Gimp.calls if call[0] == "message"]
    assert verdict in shown


def test_supported_gimp_loads_the_real_plugin(gimp_at: Any) -> None:
    host = gimp_at((3, 0, 4))
    plugin = runpy.run_path(str(test_plugin_gimp.PLUGIN), run_name="harmonize_gimp_check")
    assert plugin["_UNSUPPORTED"] is None and host.mains == []
    assert ("GimpUi", "3.0") in host.required and "HarmonizePlugIn" in plugin


# ---- Krita --------------------------------------------------------------------------------------


class FakeQt:
    """Records the warning boxes and runs ``QTimer.singleShot`` callbacks at once."""

    def __init__(self) -> None:
        self.boxes: list[str] = []
        boxes = self.boxes
        self.QtWidgets = types.SimpleNamespace(
            QMessageBox=types.SimpleNamespace(warning=lambda _p, _t, text: boxes.append(text))
        )
        self.QtCore = types.SimpleNamespace(
            QTimer=types.SimpleNamespace(singleShot=lambda _ms, func: func())
        )


class FakeWindow:
    def __init__(self) -> None:
        self.actions: dict[str, Any] = {}

    def createAction(self, name: str, text: str, menu: str) -> Any:
        slots: list[Any] = []
        action = types.SimpleNamespace(
            text=text, menu=menu, tip="", slots=slots,
            setToolTip=lambda tip: setattr(action, "tip", tip),
            triggered=types.SimpleNamespace(connect=slots.append),
        )  # fmt: skip
        self.actions[name] = action
        return action

    def qwindow(self) -> None:
        return None


@pytest.mark.parametrize(("version", "verdict"), [("4.4.8", "too old"), ("7.0.0", "too new")])
def test_krita_outside_the_range_says_so_in_a_box_and_under_the_menu_entry(
    krita: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    version: str,
    verdict: str,
) -> None:
    app = krita.Krita.instance()
    app.version_string = version
    notice = test_plugin_krita.plugin("unsupported")
    qt = FakeQt()
    monkeypatch.setattr(notice, "QtWidgets", qt.QtWidgets)
    monkeypatch.setattr(notice, "QtCore", qt.QtCore)
    app.extensions.clear()  # importing the package registered already
    assert test_plugin_krita.plugin().register() is False
    (extension,) = app.extensions
    assert isinstance(extension, notice.NoticeExtension) and app.docker_factories == []
    assert verdict in capsys.readouterr().err
    names = test_plugin_krita.plugin("names")
    for window in (FakeWindow(), FakeWindow()):
        extension.createActions(window)
        action = window.actions[names.ACTION_ID]
        assert action.text == names.ACTION_TEXT and verdict in action.tip
    assert len(qt.boxes) == 1 and f"Krita {version}" in qt.boxes[0]  # once, at the first window
    action.slots[0]()  # Filter ▸ Harmonize Layer
    assert len(qt.boxes) == 2 and verdict in qt.boxes[1]


def test_supported_krita_gets_no_notice(krita: ModuleType) -> None:
    app = krita.Krita.instance()
    app.version_string = "5.2.9"
    test_plugin_krita.plugin().register()
    notice = test_plugin_krita.plugin("unsupported")
    assert not [e for e in app.extensions if isinstance(e, notice.NoticeExtension)]

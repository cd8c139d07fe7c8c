"""The plug-ins' "Copy diagnostics" / "Open log" beside an error and their about text, through
the mocked hosts (tests/mock/): GIMP's error dialog, Krita's report functions (the Qt parts run
in real Krita: tests/test_krita_host.py), and the licence both state."""

from __future__ import annotations

import subprocess
import types
from pathlib import Path
from typing import Any

import pytest

from layer_harmonizer.wire import about, host_report
from layer_harmonizer.wire import host_side as S
from tests import test_plugin_gimp as gimp_tests
from tests import test_plugin_krita as krita_tests
from tests.test_host_report import FakeRun
from tests.test_plugin_gimp import FakeDaemon, run, scene
from tests.test_plugin_krita import plugin

gi, daemon, krita = gimp_tests.gi, gimp_tests.daemon, krita_tests.krita  # their fixtures

REPO = Path(__file__).resolve().parents[1]


class Backend(FakeRun):
    """The installed ``harmonize``: ``diagnose`` prints a report, ``--log-path`` a file; other
    commands (e.g. ``platform``'s ``uname``) run."""

    def __init__(self, log: Path) -> None:
        super().__init__()
        self.log = log
        self.real = subprocess.run

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if "diagnose" not in command:
            return self.real(command, **kwargs)
        self.calls.append((command, kwargs))
        out = f"{self.log}\n" if "--log-path" in command else "[versions]\nharmonize: 9.9\n"
        return subprocess.CompletedProcess(command, 0, out, "")


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    exe = tmp_path / "bin" / "harmonize"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    monkeypatch.setattr(S.shutil, "which", lambda _name: str(exe))
    log = tmp_path / "log" / "daemon.log"
    log.parent.mkdir()
    log.write_text("started\n")
    fake = Backend(log)
    monkeypatch.setattr(subprocess, "run", fake)
    return fake


# ---- GIMP -------------------------------------------------------------------------------------


class Gtk(types.SimpleNamespace):
    """What the error dialog uses of GTK (and Gdk, Gio), recording what happens."""

    def __init__(self, responses: list[int]) -> None:
        gtk = self
        self.responses, self.dialogs, self.clipboard, self.opened = responses, [], [], []

        class MessageDialog:
            def __init__(self, **kw: Any) -> None:
                self.kw, self.buttons, self.texts, self.destroyed = kw, [], [], False
                gtk.dialogs.append(self)

            def format_secondary_text(self, text: str) -> None:
                self.texts.append(text)

            def add_button(self, label: str, response: int) -> None:
                self.buttons.append((label, response))

            def run(self) -> int:
                return gtk.responses.pop(0)

            def destroy(self) -> None:
                self.destroyed = True

        class Clipboard:
            @staticmethod
            def get(_selection: Any) -> Clipboard:
                return Clipboard()

            def set_text(self, text: str, _length: int) -> None:
                gtk.clipboard.append(text)

            def store(self) -> None:
                gtk.clipboard.append("<stored>")

        super().__init__(
            MessageDialog=MessageDialog, Clipboard=Clipboard,
            MessageType=types.SimpleNamespace(ERROR="error"),
            ButtonsType=types.SimpleNamespace(NONE="none"),
            ResponseType=types.SimpleNamespace(CLOSE=-7),
            events_pending=lambda: False, main_iteration=lambda: None,
        )  # fmt: skip
        self.Gdk = types.SimpleNamespace(SELECTION_CLIPBOARD="CLIPBOARD")
        launch = self.opened.append
        self.Gio = types.SimpleNamespace(
            AppInfo=types.SimpleNamespace(launch_default_for_uri=lambda uri, _ctx: launch(uri))
        )


def _with_gtk(gi: Any, monkeypatch: pytest.MonkeyPatch, responses: list[int]) -> Gtk:
    import sys

    gtk = Gtk(responses)
    repo = sys.modules["gi.repository"]
    for name, module in (("Gtk", gtk), ("Gdk", gtk.Gdk), ("Gio", gtk.Gio)):
        monkeypatch.setattr(repo, name, module, raising=False)
    gi.Gimp.version = lambda: "3.0.4"
    monkeypatch.setenv("DISPLAY", ":99")
    return gtk


def test_gimp_error_dialog_copies_diagnostics_and_opens_the_log(
    gi: Any, daemon: FakeDaemon, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    dialog = gi.plugin.error_dialog
    gtk_close = -7
    gtk = _with_gtk(gi, monkeypatch, [dialog.COPY, dialog.OPEN_LOG, gtk_close])
    daemon.error = ("out_of_memory", "details")
    s = scene(gi)
    status, _ = run(gi, s["image"], s["obj"], mode=gi.Gimp.RunMode.INTERACTIVE)
    # the user saw the error in the dialog and closed it: GIMP adds no second message
    assert status == gi.Gimp.PDBStatusType.CANCEL
    (box,) = gtk.dialogs
    assert [r for _, r in box.buttons] == [dialog.COPY, dialog.OPEN_LOG, gtk_close]
    assert "ran out of memory" in box.texts[0] and box.destroyed
    copied, stored = gtk.clipboard
    assert stored == "<stored>" and copied.startswith(host_report.HEADER)
    for words in ("harmonize: 9.9", "host:          GIMP 3.0.4", "ran out of memory"):
        assert words in copied, words
    assert gtk.opened == [backend.log.as_uri()]
    assert dialog.COPIED in box.texts[-2] and f"Opened {backend.log}" in box.texts[-1]
    assert [c[0][-1] for c in backend.calls] == ["diagnose", "--log-path"]
    assert s["image"].log == [] and not s["image"].is_dirty()


def test_gimp_without_a_display_leaves_the_message_to_gimp(
    gi: Any, daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    gtk = _with_gtk(gi, monkeypatch, [])
    monkeypatch.delenv("DISPLAY")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    daemon.error = ("unreachable", "details")
    s = scene(gi)
    status, error = run(gi, s["image"], s["obj"], mode=gi.Gimp.RunMode.INTERACTIVE)
    assert status == gi.Gimp.PDBStatusType.EXECUTION_ERROR and "does not answer" in error.message
    assert gtk.dialogs == []


def test_gimp_open_log_without_a_log_says_why(
    gi: Any, daemon: FakeDaemon, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    dialog = gi.plugin.error_dialog
    gtk = _with_gtk(gi, monkeypatch, [dialog.OPEN_LOG, -7])
    backend.log.unlink()
    daemon.error = ("unreachable", "details")
    s = scene(gi)
    run(gi, s["image"], s["obj"], mode=gi.Gimp.RunMode.INTERACTIVE)
    assert "no daemon log yet" in gtk.dialogs[0].texts[-1] and gtk.opened == []


def test_gimp_procedure_states_the_licence(gi: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.mock import gimp as mock

    seen: dict[str, tuple[str, ...]] = {}
    monkeypatch.setattr(mock.Procedure, "set_documentation", lambda _s, *t: seen.update(doc=t))
    monkeypatch.setattr(mock.Procedure, "set_attribution", lambda _s, *t: seen.update(attr=t))
    gi.plugin.HarmonizePlugIn().do_create_procedure(S.PROCEDURE_NAME)
    assert seen["attr"][1] == about.LICENCE
    assert about.about_text("GIMP") in seen["doc"][1] and "research use" in seen["doc"][1]


# ---- Krita ------------------------------------------------------------------------------------


def test_krita_diagnostics_name_the_host_and_the_error(
    krita: Any, backend: Backend, tmp_path: Path
) -> None:
    report = plugin("report")
    text = report.diagnostics_text("Daemon not answering.", report.host_name())
    host = f"host:          Krita {krita.Krita.instance().version()}"
    for words in (
        host_report.HEADER,
        "harmonize: 9.9",
        host,
        "error shown:   Daemon not answering.",
    ):
        assert words in text, words
    assert report.log_file() == backend.log
    assert about.LICENCE in report.about_text() and "Krita" in report.about_text()


def test_krita_diagnostics_never_raise(krita: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    report = plugin("report")

    def broken(_name: str) -> Any:
        raise ImportError("No module named 'layer_harmonizer.wire'")

    monkeypatch.setattr(report, "_wire", broken)
    text = report.diagnostics_text("boom", "Krita 5.2.9")
    assert "modules did not load" in text and "Krita 5.2.9" in text


def test_krita_description_states_the_licence() -> None:
    desktop = (REPO / "plugins" / "krita" / "harmonize.desktop").read_text(encoding="utf-8")
    comment = next(line for line in desktop.splitlines() if line.startswith("Comment="))
    assert f"Code: {about.CODE_LICENCE}" in comment and "research use only" in comment
    assert "research use only" in about.DEFAULT_WEIGHTS_LICENCE


# ---- real Krita -------------------------------------------------------------------------------


@pytest.mark.krita
@pytest.mark.host
@pytest.mark.slow
def test_krita_buttons_in_real_krita(krita: Any, tmp_path: Path) -> None:
    """Krita 5.1's own PyQt: the docker row's Copy diagnostics puts the text on Krita's
    clipboard (a stand-in backend answers ``diagnose``), the message box's Open log says why
    nothing opened (no desktop here) and Close ends it; About names Krita and the licence."""
    import json
    import os

    from tests.test_krita_host import HOSTS, PLUGIN, KritaInstall, krita_env, need_host

    need_host("kritarunner")
    backend = tmp_path / "harmonize"
    log = tmp_path / "daemon.log"
    log.write_text("started\n")
    backend.write_text(
        f'#!/bin/sh\nif [ "$2" = --log-path ]; then echo {log}; '
        "else printf '[versions]\\nharmonize: stand-in\\n'; fi\n"
    )
    backend.chmod(0o755)
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "settings.json").write_text(json.dumps({"serve_command": [str(backend), "serve"]}))
    env = {
        **krita_env(dict(os.environ), tmp_path / "home"),
        "QT_QPA_PLATFORM": "offscreen",
        "HARMONIZE_KRITA_NO_REGISTER": "1",
        "PYTHONPATH": os.pathsep.join([str(HOSTS), str(PLUGIN), str(REPO / "backend"), str(REPO)]),
    }
    out = tmp_path / "report.json"
    proc = KritaInstall("5.1").run(
        ["kritarunner", "-s", "krita_report", "-f", "main", str(out), str(folder)], env
    )
    assert proc.returncode == 0 and out.exists(), (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(out.read_text())
    report = plugin("report")  # its status texts
    assert result["host"].startswith("Krita 5.") and about.LICENCE in result["about"]
    assert result["buttons_shown"] and result["statuses"] == [report.COLLECTING, report.COPIED]
    for words in (host_report.HEADER, "harmonize: stand-in", f"host:          {result['host']}",
                  "error shown:   The daemon broke."):  # fmt: skip
        assert words in result["clipboard"], words
    (open_log, _), (close, after_open_log) = result["box"]  # the text under it when pressed
    assert (open_log, close) == ("Open log", "Close") and str(log) in after_open_log

"""Copy diagnostics, Open log and About for the Krita plug-in: the error message box and the
docker call these.

What the buttons do apart from Qt's clipboard, file opener and message box is
``layer_harmonizer.wire.host_report`` and ``.about`` (shared with the GIMP plug-in). The
functions without Qt (:func:`diagnostics_text`, :func:`log_file`, :func:`about_text`) run in
the unit tests against the mocked ``krita``; the Qt ones need Krita's PyQt.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from .deps import PLUGIN_DIR, add_wheels_to_path
from .qt import QtCore, QtGui, QtWidgets, enum

TITLE = "Harmonize Layer"
COPIED = "Diagnostics copied to the clipboard: paste them into the bug report."
COLLECTING = "Collecting diagnostics (up to a minute)…"


def _wire(name: str) -> ModuleType:
    """``layer_harmonizer.wire.<name>`` (the vendored copy when installed)."""
    add_wheels_to_path()
    return importlib.import_module(f"layer_harmonizer.wire.{name}")


def host_name() -> str:
    """``Krita <version>`` of the running Krita (main thread)."""
    from krita import Krita

    return f"Krita {Krita.instance().version()}"


def diagnostics_text(error: str | None, host: str) -> str:
    """What Copy diagnostics copies (:func:`host_report.diagnostics_text`); never raises, so
    it may run on a worker thread (``host`` read before, on the main thread)."""
    try:
        return str(_wire("host_report").diagnostics_text(PLUGIN_DIR, host, error))
    except Exception as exc:  # the plug-in's own modules are broken: say only that
        return f"Harmonize diagnostics: {host}; the plug-in's modules did not load ({exc!r})."


def log_file() -> Path:
    """The daemon's log; raises ``PluginError`` (a message for the user) when there is none."""
    return Path(_wire("host_report").log_file(PLUGIN_DIR))


def about_text() -> str:
    return str(_wire("about").about_text(host_name()))


# ---- Qt ---------------------------------------------------------------------------------------


_RELAY: Any = None


def _relay() -> Any:
    """A QObject whose ``text`` signal carries a worker thread's text to the main thread."""
    global _RELAY
    if _RELAY is None:

        class Relay(QtCore.QObject):
            text = QtCore.pyqtSignal(str)

        _RELAY = Relay
    return _RELAY()


_relays: set[Any] = set()
"""Relays whose worker is still running (kept alive until their signal arrives)."""


def copy_diagnostics(error: str | None, on_done: Callable[[str], None]) -> None:
    """Collect the diagnostics on a worker thread, put them on the clipboard on the main
    thread, then ``on_done(status line)``."""
    relay, host = _relay(), host_name()
    _relays.add(relay)

    def done(text: str) -> None:
        _relays.discard(relay)
        QtWidgets.QApplication.clipboard().setText(text)
        on_done(COPIED)

    relay.text.connect(done)
    worker = threading.Thread(
        target=lambda: relay.text.emit(diagnostics_text(error, host)),
        name="harmonize-diagnostics",
        daemon=True,
    )
    worker.start()


def open_log() -> str:
    """Open the daemon's log in the desktop's viewer; returns the status line."""
    try:
        path = log_file()
    except Exception as exc:  # PluginError: no log yet, backend missing...
        return str(exc)
    if not QtGui.QDesktopServices.openUrl(QtCore.QUrl.fromLocalFile(str(path))):
        return f"No program opened {path}: open it yourself."
    return f"Opened {path}."


def error_box(parent: Any, message: str) -> None:
    """``message`` in a warning box with Copy diagnostics, Open log and Close, shown until the
    user closes it."""
    box = QtWidgets.QMessageBox(parent)
    box.setIcon(enum(QtWidgets.QMessageBox, "Icon", "Warning"))
    box.setWindowTitle(TITLE)
    box.setText(message)
    role = enum(QtWidgets.QMessageBox, "ButtonRole", "ActionRole")
    copy = box.addButton("Copy diagnostics", role)
    log = box.addButton("Open log", role)
    box.addButton(enum(QtWidgets.QMessageBox, "StandardButton", "Close"))
    run = getattr(box, "exec", None) or box.exec_
    while True:  # a QMessageBox closes on any button: show it again after Copy / Open log
        run()
        clicked = box.clickedButton()
        if clicked is copy:
            box.setInformativeText(COLLECTING)
            copy_diagnostics(message, box.setInformativeText)
        elif clicked is log:
            box.setInformativeText(open_log())
        else:
            return


def show_about(parent: Any) -> None:
    QtWidgets.QMessageBox.about(parent, f"About {TITLE}", about_text())


class ErrorActions:
    """The docker's row: Copy diagnostics and Open log (shown after an error) and About.

    Args:
        parent: the docker's widget.
        on_status: shows a status line (the docker's message label).
    """

    def __init__(self, parent: Any, on_status: Callable[[str], None]) -> None:
        self.widget = QtWidgets.QWidget(parent)
        row = QtWidgets.QHBoxLayout(self.widget)
        row.setContentsMargins(0, 0, 0, 0)
        self.copy = QtWidgets.QPushButton("Copy diagnostics", self.widget)
        self.copy.setToolTip("Copy what a bug report needs (tokens, user names hidden)")
        self.log = QtWidgets.QPushButton("Open log", self.widget)
        self.log.setToolTip("Open the harmonize daemon's log file")
        about = QtWidgets.QPushButton("About", self.widget)
        for button in (self.copy, self.log, about):
            row.addWidget(button)
        self.error: str | None = None
        self.copy.clicked.connect(lambda: self._copy(on_status))
        self.log.clicked.connect(lambda: on_status(open_log()))
        about.clicked.connect(lambda: show_about(self.widget))
        self.show_for(None)

    def _copy(self, on_status: Callable[[str], None]) -> None:
        on_status(COLLECTING)
        copy_diagnostics(self.error, on_status)

    def show_for(self, error: str | None) -> None:
        """After an error (its message) show Copy diagnostics and Open log; None hides them."""
        self.error = error
        for button in (self.copy, self.log):
            button.setVisible(error is not None)

"""kritarunner script for tests/test_plugin_report.py: the Krita plug-in's Copy diagnostics,
Open log and About inside real Krita (its PyQt, clipboard and message box; offscreen).

    HOME=$TMP PATH=/usr/bin:/bin QT_QPA_PLATFORM=offscreen HARMONIZE_KRITA_NO_REGISTER=1 \\
      PYTHONPATH=tests/hosts:plugins/krita:backend:. \\
      timeout 300 kritarunner -s krita_report -f main OUT.json PLUGIN_DIR

``PLUGIN_DIR`` stands in for the installed plug-in's folder (its ``settings.json`` names the
backend to run). The docker's row of buttons is shown for an error and its Copy diagnostics
pressed; then the error message box opens and a timer presses Open log, then Close. OUT.json:
``{"host", "about", "buttons_shown", "statuses", "clipboard", "box"}``. kritarunner exits 0
even when a script raises, so this one ends with ``os._exit`` (0 = it ran to the end).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _wait(app: Any, done: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.02)


def _message_box(report: Any, qt: Any) -> list[list[str]]:
    """The error box with timers pressing Open log, then Close: ``[button, text under the
    message when pressed]`` for each press."""
    pressed: list[list[str]] = []

    def press(label: str) -> None:
        box = qt.QtWidgets.QApplication.activeModalWidget()
        buttons = box.buttons() if box is not None else []
        button = next((b for b in buttons if b.text().replace("&", "") == label), None)
        pressed.append([label, box.informativeText() if button else "no such button"])
        if button is not None:
            button.click()

    def give_up() -> None:  # a missing button must not hang the run
        box = qt.QtWidgets.QApplication.activeModalWidget()
        if box is not None:
            pressed.append(["gave up", ""])
            box.done(0)

    qt.QtCore.QTimer.singleShot(300, lambda: press("Open log"))
    qt.QtCore.QTimer.singleShot(1500, lambda: press("Close"))
    qt.QtCore.QTimer.singleShot(15000, give_up)
    report.error_box(None, "Second error.")
    return pressed


def main(args: list[str]) -> None:
    rc = 1
    try:
        from harmonize import qt, report
        from krita import Krita

        Krita.instance().setBatchmode(True)
        report.PLUGIN_DIR = Path(args[1])
        app = qt.QtWidgets.QApplication.instance()
        result: dict[str, Any] = {"host": report.host_name(), "about": report.about_text()}
        statuses: list[str] = []
        widget = qt.QtWidgets.QWidget()
        actions = report.ErrorActions(widget, statuses.append)
        actions.show_for("The daemon broke.")
        result["buttons_shown"] = actions.copy.isVisibleTo(widget) and actions.log.isVisibleTo(
            widget
        )
        actions.copy.click()
        _wait(app, lambda: len(statuses) >= 2, 120)
        result["statuses"] = statuses
        result["clipboard"] = app.clipboard().text()
        result["box"] = _message_box(report, qt)
        Path(args[0]).write_text(json.dumps(result, indent=1), encoding="utf-8")
        rc = 0
    except Exception:
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)

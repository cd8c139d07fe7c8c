"""A Krita the plug-in was not made for (too old or too new): instead of the real extension,
Filter ▸ Harmonize Layer says why in a message box, and so does one box when the first
window opens, so the user is not left wondering why nothing appeared.

Needs only ``krita`` and the Qt shim (nothing of the real plug-in, which may not load here).
"""

from __future__ import annotations

import sys
from typing import Any

from krita import Extension

from .names import ACTION_ID, ACTION_TEXT, MENU
from .qt import QtCore, QtWidgets

TITLE = "Harmonize Layer"


def show(message: str, parent: Any = None) -> None:
    """``message`` on stderr and, where Qt is importable, in a warning box."""
    print(f"harmonize: {message}", file=sys.stderr, flush=True)
    if QtWidgets is not None:
        QtWidgets.QMessageBox.warning(parent, TITLE, message)


class NoticeExtension(Extension):
    """Filter ▸ Harmonize Layer, which only explains; the first window also shows it once."""

    def __init__(self, parent: Any, message: str) -> None:
        super().__init__(parent)
        self.message = message
        self.shown = False

    def setup(self) -> None:
        pass

    def createActions(self, window: Any) -> None:
        action = window.createAction(ACTION_ID, ACTION_TEXT, MENU)
        action.setToolTip(self.message)
        action.triggered.connect(lambda *_args: show(self.message, _qwindow(window)))
        if not self.shown and QtCore is not None:
            self.shown = True
            QtCore.QTimer.singleShot(0, lambda: show(self.message, _qwindow(window)))


def _qwindow(window: Any) -> Any:
    return window.qwindow() if hasattr(window, "qwindow") else None


def register_notice(app: Any, message: str) -> NoticeExtension:
    """Add the :class:`NoticeExtension` to ``app`` (the running Krita) and log ``message`` to
    stderr; returns the extension."""
    print(f"harmonize: {message}", file=sys.stderr, flush=True)
    extension = NoticeExtension(app, message)
    app.addExtension(extension)
    return extension

"""Qt binding shim: PyQt5 (Krita 5.x) or PyQt6 (Krita 6), or None outside Krita.

Only the names this plugin uses are re-exported. ``QT_API`` is ``"PyQt5"``, ``"PyQt6"`` or
``None`` (no Qt: the pure-Python fallbacks in :mod:`.host` are used, e.g. in unit tests).
"""

from __future__ import annotations

from typing import Any

QT_API: str | None
QtCore: Any
QtGui: Any
QtWidgets: Any

try:
    from PyQt5 import QtCore, QtGui, QtWidgets

    QT_API = "PyQt5"
except ImportError:
    try:
        from PyQt6 import QtCore, QtGui, QtWidgets  # type: ignore[no-redef]

        QT_API = "PyQt6"
    except ImportError:
        QtCore = QtGui = QtWidgets = None
        QT_API = None


def enum(owner: Any, scoped: str, name: str) -> Any:
    """``Qt.AlignLeft`` (PyQt5) vs ``Qt.AlignmentFlag.AlignLeft`` (PyQt6 scoped enums)."""
    scope = getattr(owner, scoped, None)
    if scope is not None and hasattr(scope, name):
        return getattr(scope, name)
    return getattr(owner, name)


def to_qbytes(data: bytes | bytearray | memoryview) -> Any:
    """``QByteArray`` for ``Node.setPixelData`` (plain ``bytes`` when Qt is absent)."""
    if QtCore is None:
        return bytes(data)
    return QtCore.QByteArray(bytes(data))

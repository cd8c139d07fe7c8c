"""The GIMP plug-in's error dialog: the message with "Copy diagnostics" and "Open log".

Shown instead of GIMP's bare error message when the plug-in runs interactively and a window
can open. What the buttons do, apart from GTK's clipboard and the desktop's file opener, is
``layer_harmonizer.wire.host_report`` (shared with the Krita plug-in). GTK is imported when the
dialog opens, so importing this module needs nothing but the standard library.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TITLE = "Harmonize Layer"
COPY = 1
"""Response id of "Copy diagnostics" (GTK's own responses are negative)."""
OPEN_LOG = 2
COPIED = "Diagnostics copied to the clipboard: paste them into the bug report."
COLLECTING = "Collecting diagnostics (up to a minute)…"


def can_show() -> bool:
    """Whether a window can open: always on Windows and macOS, with a display elsewhere (not in
    ``gimp-console`` or a batch run without one)."""
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def host_name() -> str:
    """``GIMP <version>`` of the running GIMP."""
    from gi.repository import Gimp

    try:
        return f"GIMP {Gimp.version()}"
    except Exception:  # an older libgimp: the name is enough
        return "GIMP 3"


def copy_diagnostics(error: str, plugin_dir: Path) -> str:
    """Put the diagnostics (:func:`host_report.diagnostics_text`) on the clipboard, kept after
    the plug-in exits where the desktop has a clipboard manager; returns the status line."""
    from gi.repository import Gdk, Gtk

    from layer_harmonizer.wire import host_report

    text = host_report.diagnostics_text(plugin_dir, host_name(), error)
    clipboard = Gtk.Clipboard.get(Gdk.SELECTION_CLIPBOARD)
    clipboard.set_text(text, -1)
    clipboard.store()
    return COPIED


def open_log(plugin_dir: Path) -> str:
    """Open the daemon's log in the desktop's viewer; returns the status line."""
    from gi.repository import Gio

    from layer_harmonizer.wire import host_report

    try:
        path = host_report.log_file(plugin_dir)
        Gio.AppInfo.launch_default_for_uri(path.as_uri(), None)
    except Exception as exc:  # PluginError (no log yet...) or GLib.Error (no viewer)
        return str(getattr(exc, "message", None) or exc)
    return f"Opened {path}."


def show(error: str, plugin_dir: Path, procedure_name: str) -> bool:
    """Show ``error`` in a dialog with Copy diagnostics, Open log and Close until the user
    closes it; False (nothing shown) when no window can open here."""
    if not can_show():
        return False
    try:
        from gi.repository import GimpUi, Gtk

        GimpUi.init(procedure_name)
        dialog = Gtk.MessageDialog(
            message_type=Gtk.MessageType.ERROR, buttons=Gtk.ButtonsType.NONE, text=TITLE
        )
    except Exception:  # no GTK here after all: GIMP shows the message itself
        return False
    dialog.format_secondary_text(error)
    dialog.add_button("_Copy diagnostics", COPY)
    dialog.add_button("Open _log", OPEN_LOG)
    dialog.add_button("_Close", Gtk.ResponseType.CLOSE)
    try:
        while (response := dialog.run()) in (COPY, OPEN_LOG):
            try:
                if response == COPY:
                    _status(dialog, error, COLLECTING)
                    status = copy_diagnostics(error, plugin_dir)
                else:
                    status = open_log(plugin_dir)
            except Exception as exc:  # a button must never end the dialog with a traceback
                status = f"That did not work: {exc}"
            _status(dialog, error, status)
    finally:
        dialog.destroy()
    return True


def _status(dialog: object, error: str, status: str) -> None:
    """The message, then ``status`` under it; drawn at once (a slow step may follow)."""
    from gi.repository import Gtk

    dialog.format_secondary_text(f"{error}\n\n{status}")  # type: ignore[attr-defined]
    while Gtk.events_pending():
        Gtk.main_iteration()

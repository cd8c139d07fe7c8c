"""The GIMP the plug-in runs in: load its ``Gimp`` API, and in a GIMP the plug-in was not made
for (too old, e.g. a 2.99 development build, or too new) register a stand-in procedure under
the same menu entry that says why, instead of failing on stderr where the entry silently
never appears.

Imported by ``harmonize.py`` before anything else of GIMP's (``sys.path`` is set up there).
"""

from __future__ import annotations

import sys
from typing import Any

from layer_harmonizer.wire.host_side import PROCEDURE_NAME
from layer_harmonizer.wire.host_version import parse_version, unsupported_message

API = "3.0"
"""The ``Gimp`` GObject-introspection API version the plug-in is written for."""
MENU_LABEL = "_Harmonize Layer…"
MENU_PATHS = ("<Image>/Filters", "<Layers>")


def load_gimp(gi: Any) -> tuple[Any, str | None]:
    """Import GIMP's ``Gimp`` module: API :data:`API`, else the newest this GIMP has; returns
    ``(Gimp, what to tell the user or None when this GIMP is supported)``.

    Raises:
        ValueError: from ``gi`` when this GIMP has no ``Gimp`` API at all (GIMP 2.10 and
            older do not run Python 3 plug-ins).
    """
    try:
        gi.require_version("Gimp", API)
    except ValueError:
        versions = gi.Repository.get_default().enumerate_versions("Gimp")
        if not versions:
            raise
        gi.require_version("Gimp", max(versions, key=parse_version))
    from gi.repository import Gimp

    version = (Gimp.MAJOR_VERSION, Gimp.MINOR_VERSION, Gimp.MICRO_VERSION)
    return Gimp, unsupported_message("GIMP", version)


def notice_plugin(gimp: Any, glib: Any, message: str) -> type:
    """A ``Gimp.PlugIn`` class whose one procedure (the real one's name and menu entries)
    shows ``message`` and changes nothing. Only calls that every GIMP 2.99+ API has."""

    def run(procedure: Any, *_args: Any) -> Any:
        gimp.message(message)
        return procedure.new_return_values(gimp.PDBStatusType.CANCEL, glib.Error())

    class NoticePlugIn(gimp.PlugIn):
        def do_query_procedures(self) -> list[str]:
            return [PROCEDURE_NAME]

        def do_set_i18n(self, _name: str) -> bool:
            return False

        def do_create_procedure(self, name: str) -> Any:
            proc = gimp.ImageProcedure.new(self, name, gimp.PDBProcType.PLUGIN, run, None)
            proc.set_image_types("*")
            proc.set_menu_label(MENU_LABEL)
            for path in MENU_PATHS:
                proc.add_menu_path(path)
            proc.set_documentation("Harmonize Layer cannot run in this GIMP", message, name)
            return proc

    return NoticePlugIn


def run_notice(gimp: Any, message: str) -> None:
    """Run as the stand-in plug-in of :func:`notice_plugin` (GIMP's query and run calls), then
    exit; ``message`` also goes to stderr."""
    from gi.repository import GLib

    print(f"harmonize: {message}", file=sys.stderr, flush=True)
    sys.exit(gimp.main(notice_plugin(gimp, GLib, message).__gtype__, sys.argv))

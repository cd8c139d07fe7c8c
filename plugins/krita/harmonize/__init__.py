"""Harmonize Layer for Krita: Filter ▸ Harmonize Layer and the Harmonize docker.

Inside Krita this registers the extension and the docker. Outside Krita (unit tests, the
installer, kritarunner scripts that only want :mod:`.host`) importing the package does nothing,
because the ``krita`` module is absent or has no running application.
"""

from __future__ import annotations

import os
import sys


def _version_problem(version: str) -> str | None:
    """What to tell the user in a Krita of ``version`` the plug-in was not made for."""
    from .deps import add_wheels_to_path

    add_wheels_to_path()  # the vendored layer_harmonizer.wire (stdlib only for this)
    from layer_harmonizer.wire.host_version import unsupported_message

    return unsupported_message("Krita", version)


def register() -> bool:
    """Add the extension and the docker to the running Krita; False outside Krita or when
    ``HARMONIZE_KRITA_NO_REGISTER`` is set (kritarunner scripts that only use :mod:`.host`)."""
    if os.environ.get("HARMONIZE_KRITA_NO_REGISTER"):
        return False
    try:
        from krita import Krita
    except ImportError:
        return False
    app = Krita.instance()
    if app is None:
        return False
    problem = _version_problem(app.version())
    if problem is not None:  # say so in Krita's UI too: the real menu entry will not be there
        from .unsupported import register_notice

        register_notice(app, problem)
        return False
    from .qt import QT_API

    if QT_API is None:
        print("harmonize: neither PyQt5 nor PyQt6 is importable in Krita's Python", file=sys.stderr)
        return False
    from .docker import factory
    from .extension import HarmonizeExtension

    app.addExtension(HarmonizeExtension(app))
    app.addDockWidgetFactory(factory())
    return True


register()

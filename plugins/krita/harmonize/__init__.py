"""Harmonize Layer for Krita: Filter ▸ Harmonize Layer and the Harmonize docker.

Inside Krita this registers the extension and the docker. Outside Krita (unit tests, the
installer, kritarunner scripts that only want :mod:`.host`) importing the package does nothing,
because the ``krita`` module is absent or has no running application.
"""

from __future__ import annotations

import os
import sys

MIN_KRITA = (5, 1)


def _krita_version() -> tuple[int, ...]:
    from krita import Krita

    parts = []
    for piece in Krita.instance().version().split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


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
    version = _krita_version()
    if version < MIN_KRITA:
        print(
            f"harmonize: Krita {app.version()} is too old; 5.1 or newer is needed", file=sys.stderr
        )
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

"""What the tool says about itself: the licence statement and the plug-ins' about text, in one
place for ``harmonize info``, ``harmonize diagnose`` and both plug-ins (README, "Licence", and
docs/weights.md say the same).

Standard library only, like the rest of :mod:`layer_harmonizer.wire` (vendored into the hosts).
"""

from __future__ import annotations

CODE_LICENCE = "MIT"
DEFAULT_WEIGHTS_LICENCE = (
    "research use only, until they are retrained on permissively licensed data (several of "
    "the photo sources they were trained on state no licence; see docs/weights.md)"
)
"""The licence of the bundled default weights (``weights/default.pt``)."""
LICENCE = f"Code: {CODE_LICENCE}. Default weights: {DEFAULT_WEIGHTS_LICENCE}."
"""The whole statement, one line."""
PROJECT = "harmonize (Python package layer-harmonizer)"
REPORT_HINT = (
    "To report a problem, press Copy diagnostics next to the error (or run `harmonize "
    "diagnose`) and paste the text into the bug report; it hides tokens, keys, user names and "
    "home folders."
)


def version() -> str:
    """The version of the (vendored or source) ``layer_harmonizer`` this runs, or "unknown"."""
    try:
        from .._version import __version__
    except ImportError:
        return "unknown"
    return str(__version__)


def about_text(host: str) -> str:
    """The plug-in's about text (a few lines): what it is, its version, the licence, and how to
    report a problem. ``host``: the application, e.g. ``"GIMP"`` or ``"Krita 5.2.9"``."""
    return (
        f"Harmonize Layer {version()} for {host}: recolours a pasted layer so it fits the "
        f"image below it (AICT harmonization by the local {PROJECT} daemon).\n"
        f"Licence: {LICENCE}\n"
        f"{REPORT_HINT}"
    )

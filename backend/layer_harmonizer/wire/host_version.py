"""Which host versions the plug-ins were made for, and what a plug-in says in a host outside
that range (shown in the host's own UI: in a too-old or too-new host the menu entry would
otherwise silently never appear, with the reason only on stderr).

Standard library only, like the rest of :mod:`layer_harmonizer.wire` (vendored into the hosts).
"""

from __future__ import annotations

from . import about

SUPPORTED: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "GIMP": ((3, 0), (4, 0)),
    "Krita": ((5, 1), (7, 0)),
}
"""Per host: ``(lowest supported, first unsupported)`` as ``(major, minor)``; GIMP 3.x has the
``Gimp 3.0`` Python API the plug-in is written for, Krita 5.1+ the ``Document`` calls it uses
(PyQt5 for Krita 5, PyQt6 for Krita 6 through the Qt shim)."""


def parse_version(text: str) -> tuple[int, ...]:
    """``"5.2.9"`` -> ``(5, 2, 9)``; ``"5.3.0-prealpha"`` -> ``(5, 3, 0)``; a piece without
    leading digits counts as 0 (``"git"`` -> ``(0,)``)."""
    parts = []
    for piece in str(text).strip().split(".")[:3]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits or 0))
    return tuple(parts)


def _span(host: str) -> str:
    (lo_major, lo_minor), (hi_major, hi_minor) = SUPPORTED[host]
    last = f"{hi_major - 1}.x" if hi_minor == 0 else f"{hi_major}.{hi_minor - 1}"
    return f"{host} {lo_major}.{lo_minor} to {last}"


def unsupported_message(host: str, version: tuple[int, ...] | str) -> str | None:
    """What the plug-in tells the user in ``host`` (``"GIMP"`` / ``"Krita"``) of ``version``
    (a tuple or a version string); None when that version is supported."""
    if host not in SUPPORTED:
        raise ValueError(f"unknown host {host!r}; known: {', '.join(SUPPORTED)}")
    numbers = parse_version(version) if isinstance(version, str) else tuple(version)
    shown = ".".join(str(n) for n in numbers)
    low, high = SUPPORTED[host]
    key = (*numbers, 0, 0)[:2]
    if key < low:
        return (
            f"Harmonize Layer {about.version()} needs {_span(host)}; this is {host} {shown}, "
            f"which is too old. Update {host}, then use Harmonize Layer again."
        )
    if key >= high:
        return (
            f"Harmonize Layer {about.version()} was made for {_span(host)}; this is "
            f"{host} {shown}, which is too new for it. Install a newer harmonize and run "
            f"`harmonize install-plugin {host.lower()}` again (or use {_span(host)})."
        )
    return None

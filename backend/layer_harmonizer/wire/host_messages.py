"""Every message a plug-in shows its user: :class:`PluginError` (a failure shown as is),
:func:`explain` (what happened and what to do, per error code) and the progress texts.

Standard library only, like the rest of :mod:`layer_harmonizer.wire` (vendored into the hosts).
"""

from __future__ import annotations

from . import protocol as P

PROGRESS = {"received": 0.1, "composed": 0.25, "predicted": 0.75, "applied": 0.95}
"""Fraction done after each daemon progress stage (for the host's progress bar)."""


class PluginError(Exception):
    """A failure to show the user as is: the text says what happened and what to do."""


INSTALL_HINT = (
    "Install harmonize (the Python package layer-harmonizer) as a tool, with the CPU build "
    'of PyTorch: `pipx install --pip-args="--extra-index-url '
    'https://download.pytorch.org/whl/cpu" <path to a clone or a built wheel>`, then run '
    '`harmonize install-plugin` again; see the README, "Install".'
)
"""How to install the daemon. Not from PyPI: the "harmonize" there is another project."""


def explain(exc: BaseException) -> str:
    """A user-facing message for any failure of :func:`.host_side.harmonize` (what happened +
    what to do)."""
    if isinstance(exc, PluginError):
        return str(exc)
    code = getattr(exc, "code", None)
    detail = getattr(exc, "message", None) or str(exc)
    E = P.ErrorCode
    advice = {
        E.NO_DAEMON: "The harmonize daemon is not running and could not be started ({detail}). "
        "Run `harmonize serve` in a terminal to see why; its log is in the log folder shown "
        "by `harmonize info`.",
        E.UNREACHABLE: "The harmonize daemon does not answer ({detail}). Restart it: "
        "`harmonize stop`, then run this filter again (it starts a new one).",
        E.UNSUPPORTED_VERSION: "The plugin and the daemon do not match ({detail}). Update "
        "both: `pip install <path to an up-to-date clone of harmonize>`, then `harmonize "
        'install-plugin` again (README, "Install").',
        E.OUT_OF_MEMORY: "The daemon ran out of memory ({detail}). Harmonize a smaller layer "
        "or selection, close other programs, or run the daemon on the CPU "
        "(`harmonize serve --device cpu`).",
        E.EMPTY_MASK: "Nothing to harmonize: the layer is fully transparent inside the "
        "selection. Select the pasted object (or Select ▸ None) and try again.",
        E.UNAUTHORIZED: "The daemon refused the plugin's token ({detail}). Stop it "
        "(`harmonize stop`) and run this filter again.",
        E.NOT_AUTHENTIC: "The program at the daemon's address could not prove it is your "
        "harmonize daemon, so no pixels were sent to it ({detail}). Run `harmonize stop`, then "
        "this filter again.",
        E.UNSAFE_RUNTIME_DIR: "The harmonize runtime folder is not private to you, so the "
        "plugin will not use it: {detail}.",
        E.BUSY: "The daemon is busy with other jobs. Wait a moment and try again.",
        E.TOO_LARGE: "The layer is too large for the daemon ({detail}). Harmonize a smaller "
        "layer or selection, or raise the daemon's limit.",
        E.CANCELLED: "Cancelled.",
        E.SHUTTING_DOWN: "The daemon was stopping. Run this filter again to start a new one.",
    }
    if code in advice:
        return advice[code].format(detail=detail)
    if isinstance(exc, FileNotFoundError):
        return f"The harmonize daemon is not installed ({exc}). {INSTALL_HINT}"
    if isinstance(exc, MemoryError):
        return "Out of memory while preparing the layer: harmonize a smaller layer or selection."
    if code is not None:
        return f"The harmonize daemon reported an error: {detail} [{code}]. See its log file."
    return f"Harmonize failed: {type(exc).__name__}: {exc}"


def nothing_below(name: str | None = None) -> str:
    """The refusal for a layer with nothing visible below it and no selection on it (``name``:
    the layer's, or None for "the layer"). With a selection the plug-ins harmonize the
    selected region against the rest of the layer instead (a flat image)."""
    what = f"'{name}'" if name else "the layer"
    return (
        f"Nothing is visible below {what}: Harmonize Layer matches a layer to what is under "
        "it. On a flat image, select the object that looks wrong, then run Harmonize again "
        "(it is matched to the rest of the image); otherwise show or add the layers below."
    )


def selection_covers_layer(name: str | None = None) -> str:
    """The refusal for a flat image whose selection leaves nothing of the layer outside it."""
    what = f"'{name}'" if name else "the layer"
    return (
        f"The selection covers all of {what}, and nothing is visible below it, so there is "
        "nothing to match the selection to: select only the object that looks wrong, then "
        "run Harmonize again."
    )


def progress_text(stage: str) -> str:
    return {
        "received": "Harmonize: queued…",
        "composed": "Harmonize: predicting colours…",
        "predicted": "Harmonize: applying colours…",
        "applied": "Harmonize: done",
    }.get(stage, "Harmonize…")

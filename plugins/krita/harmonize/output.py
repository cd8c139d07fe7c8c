"""Where a harmonized result goes in Krita: a temporary preview layer, a new layer above the
source, or the source replaced; and what each leaves in Krita's undo history.

Krita's scripting API has no undo groups: adding a layer is always its own undo step ("Add
Layer"), removing one too ("Remove Layer"), and the steps are named by Krita, not by the
plugin. Pixel writes (``setPixelData``), names and visibility are not undo steps. So:

- **new layer**: the result is built complete in a hidden scratch image, then inserted above
  the source: one step, "Add Layer" (:func:`write`).
- **preview**: the same insertion, the layer named "[Preview] …" (:func:`show_preview`);
  strength changes rewrite its pixels. **Apply** keeps that layer (renamed, or put in the
  source's place): the run's one step (:func:`commit`). **Cancel** takes it back with
  Edit ▸ Undo when its "Add Layer" is still the document's last step (checked against the
  History docker's list), so a cancelled preview leaves no step behind; if anything was done
  since, it is removed instead, which Krita records as "Remove Layer" (:func:`discard`).
- **replace**: the result takes the source's name, visibility and place and the source is
  removed: Krita records two steps, "Add Layer" then "Remove Layer". Two Edit ▸ Undo bring the
  source back exactly (its pixels are never written).

Everything here runs on Krita's main thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import host
from .deps import host_side

PREVIEW_PREFIX = "[Preview] "
NEW_LAYER = "new"
REPLACE = "replace"
MODES = (NEW_LAYER, REPLACE)
HISTORY_DOCKER = "History"
"""Krita's undo history docker (its list is the active document's undo stack)."""


@dataclass
class Preview:
    """A preview layer on the canvas (image coordinates, ids as :func:`host.node_id`).

    Attributes:
        mode: :data:`NEW_LAYER` or :data:`REPLACE` (the source is hidden while previewing).
        source_visible: the source's visibility before the preview, restored afterwards.
        history: the undo history's entries right after the preview was added (None when
            Krita has no History docker); :func:`discard` compares it.
    """

    doc: Any
    source_id: str
    layer_id: str
    mode: str
    source_visible: bool
    history: list[str] | None


def _error(message: str) -> Exception:
    return host_side().PluginError(message)


def check_mode(mode: str, source: Any) -> None:
    """Refuse what a mode cannot do: replacing a layer that has masks (the result would lose
    them; the new layer keeps the source and its masks)."""
    if mode not in MODES:
        raise _error(f"Unknown output mode {mode!r}; expected one of {', '.join(MODES)}.")
    if mode == REPLACE and source.childNodes():
        raise _error(
            f"'{source.name()}' has masks, which the harmonized pixels would lose: "
            "choose New layer, or apply the masks first (Layer ▸ Flatten Layer)."
        )


def write(doc: Any, source: Any, inputs: host.Inputs, rgba: bytes, box: Any, mode: str) -> Any:
    """Add the result of a run without a preview; returns the result layer (active).
    New layer: one undo step; replace: two (see the module docstring)."""
    check_mode(mode, source)
    layer = host.build_layer(doc, source, inputs, rgba, box)
    host.insert_above(doc, source, layer)
    if mode == REPLACE:
        _take_place(doc, source, layer)
    return layer


def show_preview(
    doc: Any, source: Any, inputs: host.Inputs, rgba: bytes, box: Any, mode: str
) -> Preview:
    """Put the result on the canvas as a preview layer above the source (hiding the source in
    replace mode); one "Add Layer" until :func:`commit` or :func:`discard`."""
    check_mode(mode, source)
    layer = host.build_layer(doc, source, inputs, rgba, box)
    layer.setName(PREVIEW_PREFIX + layer.name())
    host.insert_above(doc, source, layer)
    doc.waitForDone()
    preview = Preview(
        doc, host.node_id(source), host.node_id(layer), mode, source.visible(), undo_history()
    )
    set_mode(preview, mode)
    return preview


def _nodes(preview: Preview) -> tuple[Any | None, Any | None]:
    root = preview.doc.rootNode()
    return host.find_node(root, preview.source_id), host.find_node(root, preview.layer_id)


def set_mode(preview: Preview, mode: str) -> None:
    """Switch a preview between new layer and replace (the source shown or hidden)."""
    source, _layer = _nodes(preview)
    if source is None:
        return
    check_mode(mode, source)
    preview.mode = mode
    source.setVisible(preview.source_visible and mode != REPLACE)
    preview.doc.refreshProjection()


def show_before(preview: Preview, before: bool) -> None:
    """Compare: ``before`` shows the source as it was and hides the preview layer."""
    source, layer = _nodes(preview)
    if layer is not None:
        layer.setVisible(not before)
    if source is not None:
        source.setVisible(preview.source_visible and (before or preview.mode != REPLACE))
    preview.doc.refreshProjection()


def commit(preview: Preview) -> Any:
    """Apply: the preview layer becomes the result (a new layer, or in the source's place);
    returns it. No further undo step for a new layer; replace adds "Remove Layer"."""
    source, layer = _nodes(preview)
    if layer is None:
        raise _error("The preview layer was deleted (or undone): run Harmonize again.")
    layer.setVisible(True)
    if source is None:  # the source was deleted meanwhile: keep the result as it is
        layer.setName(layer.name().removeprefix(PREVIEW_PREFIX))
        return layer
    source.setVisible(preview.source_visible)
    if preview.mode == REPLACE:
        _take_place(preview.doc, source, layer)
    else:
        layer.setName(host_side().result_name(source.name()))
        preview.doc.refreshProjection()
    return layer


def discard(preview: Preview) -> str:
    """Cancel: remove the preview layer and show the source as it was. Returns how: "undone"
    (Edit ▸ Undo of its own step, none left behind), "removed" (a "Remove Layer" step) or
    "gone" (the user had removed or undone it already)."""
    source, layer = _nodes(preview)
    if source is not None:
        source.setVisible(preview.source_visible)
    if layer is None:
        preview.doc.refreshProjection()
        return "gone"
    if _is_last_step(preview):
        _krita().action("edit_undo").trigger()
        preview.doc.waitForDone()
        if _nodes(preview)[1] is None:
            return "undone"
    layer.remove()
    preview.doc.refreshProjection()
    return "removed"


def _take_place(doc: Any, source: Any, layer: Any) -> None:
    """``layer`` (just above ``source``) takes the source's name and visibility; the source is
    removed (an undo step; undoing it puts the source back unchanged)."""
    layer.setName(source.name())
    layer.setVisible(source.visible())
    if not source.remove():
        raise _error(
            f"Krita refused to remove '{source.name()}' (is it locked?); the result was added "
            "above it as a new layer."
        )
    doc.refreshProjection()
    doc.setActiveNode(layer)


# ---- the undo history ---------------------------------------------------------------------------


def _krita() -> Any:
    from krita import Krita

    return Krita.instance()


def _history_view() -> Any | None:
    """The History docker's list view (its model is the active document's undo stack)."""
    from .qt import QtWidgets

    if QtWidgets is None:
        return None
    for dock in _krita().dockers():
        if dock.objectName() == HISTORY_DOCKER:
            views = dock.findChildren(QtWidgets.QListView)
            return views[0] if views else None
    return None


def undo_history() -> list[str] | None:
    """The active document's undo stack as the History docker lists it ("<empty>" first,
    undone steps included); None without that docker."""
    view = _history_view()
    if view is None:
        return None
    model = view.model()
    return [str(model.data(model.index(row, 0))) for row in range(model.rowCount())]


def is_active(doc: Any) -> bool:
    """Whether ``doc`` is Krita's active document (the one Edit ▸ Undo and the History docker
    act on)."""
    active = _krita().activeDocument()
    return active is not None and host.node_id(active.rootNode()) == host.node_id(doc.rootNode())


def _is_last_step(preview: Preview) -> bool:
    """Whether the preview's "Add Layer" is still the last step of its document's history, so
    that Edit ▸ Undo takes back exactly that step: its document is the active one, the
    history is unchanged since the preview was added (no step pushed; an undone one would
    have taken the layer with it) and the layer is still there (checked after Krita finished
    any pending undo)."""
    if preview.history is None or not is_active(preview.doc):
        return False
    preview.doc.waitForDone()
    return undo_history() == preview.history and _nodes(preview)[1] is not None

"""Krita-facing layer I/O: read a paint layer, its selection and backdrop; build the result layer.

Everything here runs on Krita's main thread and only uses the libkis API (``krita`` module),
so the real-Krita tests call these functions directly from ``kritarunner`` (no GUI needed).

Coordinates are image pixels. The *region* is the layer's bounds grown by the daemon's context
margin and clamped to the canvas (:func:`host_side.context_box`); every buffer sent to the
daemon covers exactly that region:

- ``layer``: ``(H, W, 4)`` of the wire dtype in Krita's own channel order, BGRA, declared as
  such on the wire (protocol 2.1: no swizzle in Python; the result comes back in BGRA too);
- ``selection``: ``(H, W)`` uint8, Krita's global selection alone (the daemon multiplies it by
  the layer's alpha); none without a selection;
- ``backdrop``: ``(H, W, 4)`` BGRA (the daemon ignores its alpha): the image as it looks without
  the layer and everything above it, read from a private clone of the document (the user's
  document is not touched). When nothing is visible there (a flat image) and the layer has a
  selection, the layer itself: the selected region is matched to the rest of it
  (:func:`flat_backdrop`).

Pixels travel as perceptual (sRGB-encoded) BGRA at 8 bits, 16 bits or float32. Layers in other
colour models (greyscale, CMYK, Lab, ...), at half-float depth or with a linear profile are
converted (:mod:`.colour`) through a hidden scratch document and the result converted back to
the document's colour space. The result is a **new** paint layer built completely, in a hidden
scratch document, before it is inserted above the source, so the insertion is a single undo
step and the source is never modified (where it goes from there: :mod:`.output`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import pixels
from .colour import (  # noqa: F401 (WORK_PROFILE: re-exported for callers)
    WORK_PROFILE,
    Space,
    convert_pixels,
    wire_format_of,
    work_space,
)
from .colour import krita_app as _krita
from .colour import plugin_error as _error
from .deps import host_side
from .qt import to_qbytes


@dataclass
class Inputs:
    """What :func:`read_inputs` gathered for one request (all buffers cover ``region``).

    Attributes:
        source_id: the source layer's ``uniqueId`` (a string).
        region: the context region in image coordinates.
        fmt: the wire format (``host_side.WireFormat``); ``fmt.dtype`` is the item type.
        request: what is sent (``host_side.Request``, BGRA): ``layer`` ``(H, W, 4)``,
            ``selection`` ``(H, W)`` uint8 or None, ``backdrop`` ``(H, W, 4)``; it keeps the
            daemon's job id, so a strength change is a reapply without pixels.
        work: the colour space of those buffers (RGBA, perceptual, ``fmt``'s depth).
        target: the document's colour space, which the new layer gets.
        base_box: the layer's bounds on the canvas joined with ``region``.
        base: the new layer's starting pixels over ``base_box`` in ``target`` (a copy of the
            source), so pixels outside the harmonized crop stay exactly the source's.
        flat: nothing is visible below the layer: the selection is harmonized against the rest
            of the layer, which is also the backdrop (a flat image).
        timings: seconds spent reading (``layer``, ``selection``, ``backdrop``).
    """

    source_id: str
    region: Any
    fmt: Any
    request: Any
    work: Space
    target: Space
    base_box: Any
    base: bytes
    flat: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def layer(self) -> bytes:
        """``(H, W, 4)`` BGRA of ``fmt.dtype``, as sent."""
        return self.request.layer

    @property
    def selection(self) -> bytes | None:
        """``(H, W)`` uint8 selection as sent; None: all of the layer."""
        return self.request.selection

    @property
    def backdrop(self) -> bytes:
        """``(H, W, 4)`` BGRA of ``fmt.dtype`` (alpha ignored), as sent."""
        return self.request.backdrop


# ---- finding things ---------------------------------------------------------------------------


def node_id(node: Any) -> str:
    """A node's ``uniqueId`` as a string (``QUuid.toString()`` in Krita)."""
    uid = node.uniqueId()
    return uid.toString() if hasattr(uid, "toString") else str(uid)


def find_node(root: Any, uid: str) -> Any | None:
    """The node with ``uniqueId`` ``uid`` under ``root`` (depth first), or None."""
    for child in root.childNodes():
        if node_id(child) == uid:
            return child
        found = find_node(child, uid)
        if found is not None:
            return found
    return None


def active_layer(doc: Any) -> Any:
    """The document's active node, checked to be a paint layer (PluginError otherwise)."""
    if doc is None:
        raise _error("Open an image first: Harmonize Layer works on the active document.")
    node = doc.activeNode()
    if node is None:
        raise _error("Select the pasted layer in the Layers docker first.")
    check_layer(node)
    return node


def check_layer(node: Any) -> None:
    """Refuse what cannot be harmonized, with what to do instead."""
    kind = node.type()
    if kind != "paintlayer":
        raise _error(
            f"'{node.name()}' is a {kind or 'node of unknown type'}, not a paint layer. "
            "Select the pasted paint layer, or convert it (Layer ▸ Convert ▸ to Paint Layer)."
        )
    if node.colorModel() not in ("RGBA", "GRAYA", "CMYKA", "LABA", "XYZA", "YCbCrA"):
        raise _error(
            f"'{node.name()}' uses the {node.colorModel()} colour model, which "
            "Harmonize cannot convert; convert the image to RGB/Alpha first."
        )


# ---- reading ----------------------------------------------------------------------------------


def _bounds_box(qrect: Any) -> Any:
    box = host_side().Box
    return box(qrect.x(), qrect.y(), qrect.width(), qrect.height())


def region_of(doc: Any, node: Any) -> Any:
    """The context region for ``node`` (layer bounds x selection bounds, grown, clamped)."""
    ps = host_side()
    bounds = _bounds_box(node.bounds())
    if bounds.empty:
        raise _error(f"The layer '{node.name()}' is empty: paste something into it first.")
    selection = doc.selection()
    if selection is not None and selection.width() > 0 and selection.height() > 0:
        sel = ps.Box(selection.x(), selection.y(), selection.width(), selection.height())
        bounds = bounds.intersect(sel)
        if bounds.empty:
            raise _error(
                "The selection does not touch the layer: select (part of) the "
                "pasted object, or Select ▸ None to harmonize the whole layer."
            )
    return ps.context_box(bounds, doc.width(), doc.height())


def read_layer(node: Any, region: Any, fmt: Any) -> tuple[bytes, Space]:
    """The layer over ``region`` as BGRA of the work space; returns ``(bytes, work space)``."""
    space = Space.of(node)
    work = work_space(space, fmt)
    raw = bytes(node.pixelData(region.x, region.y, region.w, region.h))
    return convert_pixels(raw, region.w, region.h, space, work), work


def read_selection(doc: Any, region: Any) -> bytes | None:
    """The global selection over ``region``: ``(H, W)`` uint8, 255 = selected; None without
    one."""
    selection = doc.selection()
    if selection is None:
        return None
    sel = bytes(selection.pixelData(region.x, region.y, region.w, region.h))
    if len(sel) != region.w * region.h:
        raise _error(
            f"Krita returned {len(sel)} selection bytes for a {region.w} x {region.h} "
            "region; expected 8-bit selection data."
        )
    return sel


def _hide_source_and_above(root: Any, uid: str) -> bool:
    """In ``root``'s tree, hide the node ``uid`` and everything stacked above it (at every
    level up to the root). Returns True when the node was found."""
    children = root.childNodes()  # bottom to top
    for index, child in enumerate(children):
        if node_id(child) == uid or _hide_source_and_above(child, uid):
            child_is_source = node_id(child) == uid
            if child_is_source:
                child.setVisible(False)
            for above in children[index + 1 :]:
                above.setVisible(False)
            return True
    return False


def read_backdrop(doc: Any, node: Any, region: Any, work: Space) -> bytes | None:
    """``(H, W, 4)`` BGRA of ``work``'s dtype: what the image shows below ``node``; None when
    nothing is visible there (the bottom layer, or everything below hidden or empty over the
    region): there is nothing to match, and the network would only wash the layer out.

    A clone of the document (``Document.clone``: no view, never shown) has the source and all
    layers above it hidden, is re-rendered, and its projection is read. The user's document
    keeps its visibility flags and undo history.
    """
    clone = doc.clone()
    if clone is None:
        raise _error("Krita could not copy the document to read the layers below.")
    try:
        if not _hide_source_and_above(clone.rootNode(), node_id(node)):
            raise _error(f"The layer '{node.name()}' was not found in the document copy.")
        clone.refreshProjection()
        clone.waitForDone()
        raw = bytes(clone.pixelData(region.x, region.y, region.w, region.h))
        space = Space.of(clone)
        converted = convert_pixels(raw, region.w, region.h, space, work)
    finally:
        clone.close()
    alpha = pixels.channel(converted, _dtype_of(work), 3)
    return None if alpha.count(0) == len(alpha) else converted


def flat_backdrop(node: Any, layer_bgra: bytes, sel: bytes | None, dtype: str) -> bytes:
    """The backdrop of a flat image: nothing is visible below ``node``, so a selection on it
    marks the region that looks wrong and the rest of the same layer is what it must match:
    the layer's own BGRA (the selection is sent as it is). Refused, saying what to do, without
    a selection or when it leaves nothing of the layer outside."""
    ps = host_side()
    if sel is None:
        raise _error(ps.nothing_below(node.name()))
    alpha = pixels.alpha_to_u8(pixels.channel(layer_bgra, dtype, 3), dtype)
    if not ps.has_unselected_part(alpha, sel):
        raise _error(ps.selection_covers_layer(node.name()))
    return layer_bgra


def _dtype_of(space: Space) -> str:
    return pixels.DEPTH_DTYPES[space.depth]


def _hull(a: Any, b: Any) -> Any:
    """The smallest box holding ``a`` and ``b`` (``b`` may be empty)."""
    if b.empty:
        return a
    x0, y0 = min(a.x, b.x), min(a.y, b.y)
    return type(a)(x0, y0, max(a.right, b.right) - x0, max(a.bottom, b.bottom) - y0)


def read_inputs(doc: Any, node: Any) -> Inputs:
    """Gather everything one harmonize request needs (main thread; the document is unchanged)."""
    import time

    check_layer(node)
    region = region_of(doc, node)
    fmt = wire_format_of(Space.of(node))
    times: dict[str, float] = {}
    start = time.perf_counter()
    layer_bgra, work = read_layer(node, region, fmt)
    times["layer"] = time.perf_counter() - start
    start = time.perf_counter()
    sel = read_selection(doc, region)
    sent = None if sel is None or sel.count(255) == len(sel) else sel  # all selected: none
    times["selection"] = time.perf_counter() - start
    alpha8 = pixels.channel(layer_bgra, "uint8", 3) if fmt.dtype == "uint8" else None
    if alpha8 is not None and not host_side().is_covered(alpha8, sent):
        raise _error(
            "Nothing to harmonize: the layer is fully transparent inside the "
            "selection. Select the pasted object (or Select ▸ None) and try again."
        )
    start = time.perf_counter()
    backdrop = read_backdrop(doc, node, region, work)
    flat = backdrop is None
    if flat:
        backdrop = flat_backdrop(node, layer_bgra, sel, fmt.dtype)
    times["backdrop"] = time.perf_counter() - start
    target = Space.of(doc)
    base_box = _hull(
        region,
        _bounds_box(node.bounds()).intersect(host_side().Box(0, 0, doc.width(), doc.height())),
    )
    raw = bytes(node.pixelData(base_box.x, base_box.y, base_box.w, base_box.h))
    base = convert_pixels(raw, base_box.w, base_box.h, Space.of(node), target)
    request = host_side().Request(
        layer_bgra, sent, backdrop, region.w, region.h, fmt,
        order="BGRA", selection_dtype="uint8", backdrop_channels=4,
    )  # fmt: skip
    return Inputs(
        source_id=node_id(node),
        region=region,
        fmt=fmt,
        request=request,
        work=work,
        target=target,
        base_box=base_box,
        base=base,
        flat=flat,
        timings=times,
    )


# ---- writing ----------------------------------------------------------------------------------


def result_patch(inputs: Inputs, bgra: Any, box: Any) -> bytes:
    """The daemon's BGRA crop (bytes or a buffer) as raw pixels of the document's colour
    space (``box`` size)."""
    return convert_pixels(bgra, box.w, box.h, inputs.work, inputs.target)


def build_layer(doc: Any, source: Any, inputs: Inputs, bgra: Any, box: Any) -> Any:
    """A new paint layer (not yet in the image) = the source with the crop ``box`` (region
    coordinates) replaced by the harmonized ``bgra``; same opacity and blending mode.

    It is made in a hidden scratch document of ``doc``'s size and colour space, closed again
    before returning: ``Node.setBlendingMode`` records a "Composition Mode Change" in the undo
    history of the node's document, even on a node not yet in the image, so building it in
    ``doc`` would give one run two undo steps. Adding it to ``doc`` (:func:`insert_above`)
    moves it over as the run's single undo step, "Add Layer".
    """
    ps = host_side()
    target = inputs.target
    scratch = _krita().createDocument(
        doc.width(), doc.height(), "harmonize-scratch", target.model, target.depth,
        target.profile, float(doc.resolution()),
    )  # fmt: skip
    if scratch is None:
        raise _error("Krita could not create a scratch image to build the harmonized layer in.")
    try:
        layer = scratch.createNode(ps.result_name(source.name()), "paintlayer")
        if layer is None:
            raise _error("Krita could not create a new paint layer.")
        region, base = inputs.region, inputs.base_box
        layer.setPixelData(to_qbytes(inputs.base), base.x, base.y, base.w, base.h)
        patch = result_patch(inputs, bgra, box)
        layer.setPixelData(to_qbytes(patch), region.x + box.x, region.y + box.y, box.w, box.h)
        layer.setOpacity(source.opacity())
        layer.setBlendingMode(source.blendingMode())
    finally:
        scratch.close()
    return layer


def insert_above(doc: Any, source: Any, layer: Any) -> None:
    """Add the finished ``layer`` just above ``source`` (one undo step) and make it active."""
    parent = source.parentNode()
    if parent is None or not parent.addChildNode(layer, source):
        raise _error("Krita refused to add the harmonized layer (is the group locked?).")
    doc.refreshProjection()
    doc.setActiveNode(layer)


def update_layer(doc: Any, layer: Any, inputs: Inputs, bgra: Any, box: Any) -> None:
    """Rewrite a result layer's crop in place (strength changes of the docker's preview)."""
    patch = result_patch(inputs, bgra, box)
    region = inputs.region
    layer.setPixelData(to_qbytes(patch), region.x + box.x, region.y + box.y, box.w, box.h)
    doc.refreshProjection()


def send(inputs: Inputs, *, strength: float, session: Any = None, **call: Any) -> Any:
    """Send what :func:`read_inputs` gathered to the daemon (blocking; no Krita API, so any
    thread may call it); returns :class:`host_side.Result` (BGRA). Inputs sent before are a
    strength change: a reapply of the daemon's kept job, no pixels sent.

    Args:
        session: the docker's ``host_side.Session`` (one daemon client for all its jobs);
            None: one of its own for this call, made from ``call["settings"]``.
        call: ``on_progress``, ``cancel`` (and ``settings`` without a session).
    """
    if session is None:
        with host_side().open_session(call.pop("settings", None)) as own:
            return send(inputs, strength=strength, session=own, **call)
    call.pop("settings", None)
    return session.restrength(inputs.request, strength=strength, **call)


def harmonize_node(
    doc: Any, node: Any, *, strength: float = 1.0, settings: Any = None, **call: Any
) -> Any:
    """Read, send, build and insert in one go (blocking); returns the new layer.

    The GUI splits these steps across threads (see :mod:`.controller`); kritarunner tests and
    scripts call this directly. ``call`` goes to :func:`send`.
    """
    inputs = read_inputs(doc, node)
    result = send(inputs, strength=strength, settings=settings, **call)
    layer = build_layer(doc, node, inputs, result.pixels, result.box)
    insert_above(doc, node, layer)
    return layer

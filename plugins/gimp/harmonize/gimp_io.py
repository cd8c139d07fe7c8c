"""GIMP side of one request: reading the layer, its selection and backdrop out of GIMP, and
writing the daemon's result back into a layer (GEGL buffers in, bytes out, and back).

Loaded by ``harmonize.py`` after it has chosen the GIMP API version (``gi.require_version``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gi.repository import Gegl, Gimp

from layer_harmonizer.wire import host_side as S


def _layer_box(layer: Gimp.Layer) -> S.Box:
    _, x, y = layer.get_offsets()
    return S.Box(x, y, layer.get_width(), layer.get_height())


def _read(drawable: Gimp.Drawable, region: S.Box, babl_format: str) -> bytes:
    """Pixels of ``region`` (image coordinates) in ``babl_format``; transparent/0 outside."""
    _, ox, oy = drawable.get_offsets()
    rect = Gegl.Rectangle.new(region.x - ox, region.y - oy, region.w, region.h)
    return bytes(drawable.get_buffer().get(rect, 1.0, babl_format, Gegl.AbyssPolicy.NONE))


def _path_of(item: Gimp.Item) -> list[int]:
    """Positions from the top level down to ``item`` (to find its twin in a duplicate)."""
    path = []
    while item is not None:
        path.insert(0, item.get_image().get_item_position(item))
        item = item.get_parent()
    return path


def _item_at(image: Gimp.Image, path: list[int]) -> Gimp.Layer:
    children = image.get_layers()
    item = None
    for pos in path:
        item = children[pos]
        children = item.get_children() if item.is_group() else []
    return item


def _selection(
    dup: Gimp.Image, twin: Gimp.Layer, region: S.Box, fmt: S.WireFormat
) -> tuple[bytes | None, bool]:
    """``(selection, premultiplied)`` over ``region`` of ``dup`` (the user's image, copied):
    the selection channel alone, of the wire dtype (None when nothing is selected: all of the
    layer); the daemon multiplies it by the layer's alpha. A layer with a layer mask has GIMP
    apply the mask and the selection to its alpha instead, the protocol 2.0 mask (alpha x
    layer mask x selection, ``premultiplied``), which the daemon divides back."""
    selected = not Gimp.Selection.is_empty(dup)
    if twin.get_mask() is None:
        linear = f"Y {fmt.babl_type}"  # the channel's own values, no TRC
        return (_read(dup.get_selection(), region, linear) if selected else None), False
    twin.remove_mask(Gimp.MaskApplyMode.APPLY)
    if selected:
        twin.add_alpha()
        twin.add_mask(twin.create_mask(Gimp.AddMaskType.SELECTION))
        twin.remove_mask(Gimp.MaskApplyMode.APPLY)
    return _read(twin, region, fmt.alpha), True


def _selection_and_backdrop(
    image: Gimp.Image, layer: Gimp.Layer, region: S.Box, fmt: S.WireFormat
) -> tuple[bytes | None, bool, bytes]:
    """Selection (:func:`_selection`) and backdrop (visible layers below, flattened), both
    computed by GIMP in a throw-away duplicate so the user's image is never touched. With
    nothing visible below, see :func:`_flat_backdrop`."""
    dup = image.duplicate()
    try:
        dup.undo_disable()
        # only the region matters: crop first so the merge composites region-sized layers
        dup.crop(region.w, region.h, region.x, region.y)
        full, region = region, S.Box(0, 0, region.w, region.h)
        twin = _item_at(dup, _path_of(layer))
        selection, premultiplied = _selection(dup, twin, region, fmt)
        # hide the layer and everything above it, at every level of the layer tree
        item = twin
        while item is not None:
            parent = item.get_parent()
            siblings = parent.get_children() if parent is not None else dup.get_layers()
            index = dup.get_item_position(item) + (1 if item is twin else 0)
            for above in siblings[:index]:
                above.set_visible(False)
            item = parent
        if not any(lay.get_visible() for lay in dup.get_layers()):
            return selection, premultiplied, _flat_backdrop(dup, layer, full, fmt)
        below = dup.merge_visible_layers(Gimp.MergeType.CLIP_TO_IMAGE)
        return selection, premultiplied, _read(below, region, fmt.rgb)
    finally:
        dup.delete()


def _flat_backdrop(dup: Gimp.Image, layer: Gimp.Layer, full: S.Box, fmt: S.WireFormat) -> bytes:
    """A flat image: nothing is visible below ``layer``, so a selection on it marks the region
    that looks wrong and the rest of the same layer is what it must match; the backdrop is the
    layer itself over ``full`` (read from the user's layer, unchanged). Refused, saying what
    to do, without a selection (``dup``'s, cropped to ``full``) or when it covers the layer."""
    if Gimp.Selection.is_empty(dup):
        raise S.PluginError(S.nothing_below())
    selection = _read(dup.get_selection(), S.Box(0, 0, full.w, full.h), "Y u8")
    if not S.has_unselected_part(_read(layer, full, "A u8"), selection):
        raise S.PluginError(S.selection_covers_layer())
    return _read(layer, full, fmt.rgb)


def _write(drawable: Gimp.Drawable, data: bytes, box: S.Box, babl_format: str) -> None:
    """Write ``data`` (``box.w x box.h`` pixels) at ``box`` (image coordinates)."""
    _, ox, oy = drawable.get_offsets()
    rect = Gegl.Rectangle.new(box.x - ox, box.y - oy, box.w, box.h)
    buffer = drawable.get_buffer()
    buffer.set(rect, babl_format, data)
    buffer.flush()
    drawable.update(box.x - ox, box.y - oy, box.w, box.h)


@dataclass
class Inputs:
    """What is sent for ``layer``: its pixels, selection and backdrop over ``region``."""

    fmt: S.WireFormat
    layer_box: S.Box
    region: S.Box
    request: S.Request


def read_inputs(image: Gimp.Image, layer: Gimp.Layer, timings: dict[str, float]) -> Inputs:
    fmt = S.wire_format(image.get_precision().value_name.removeprefix("GIMP_PRECISION_"))
    layer_box = _layer_box(layer)
    region = S.context_box(layer_box, image.get_width(), image.get_height())
    start = time.perf_counter()
    pixels = _read(layer, region, fmt.rgba)
    read = time.perf_counter()
    selection, premultiplied, backdrop = _selection_and_backdrop(image, layer, region, fmt)
    timings["read_layer"] = round(read - start, 4)
    timings["mask_backdrop"] = round(time.perf_counter() - read, 4)
    request = S.Request(
        pixels, selection, backdrop, region.w, region.h, fmt, premultiplied=premultiplied
    )
    return Inputs(fmt, layer_box, region, request)


def request(
    inputs: Inputs,
    strength: float,
    session: S.Session,
    *,
    progress: bool = True,
    again: bool = False,
) -> S.Result:
    """Send ``inputs`` to the daemon through the run's ``session``; ``again``: the same
    inputs at another strength (a reapply of the daemon's kept job, no pixels sent);
    ``progress``: report the stages on GIMP's progress bar (not for previews, which must stay
    quiet)."""

    def on_progress(fraction: float, stage: str) -> None:
        Gimp.progress_set_text(S.progress_text(stage))
        Gimp.progress_update(fraction)

    send = session.restrength if again else session.harmonize
    return send(inputs.request, strength=strength, on_progress=on_progress if progress else None)


def write_result(new: Gimp.Layer, inputs: Inputs, result: S.Result) -> S.Box:
    """Write the daemon's crop into ``new`` (a copy of the source layer); returns the crop in
    image coordinates. The crop may reach past the layer (context margin): only the part on
    the layer is written."""
    crop = result.box.shift(inputs.region.x, inputs.region.y)
    target = crop.intersect(inputs.layer_box)
    if not target.empty:
        local = target.shift(-crop.x, -crop.y)
        data = S.crop_rows(result.pixels, crop.w, 4 * inputs.fmt.channel_bytes, local)
        if not new.has_alpha():
            new.add_alpha()
        _write(new, data, target, inputs.fmt.rgba)
    return crop


def insert_copy(image: Gimp.Image, layer: Gimp.Layer, name: str) -> Gimp.Layer:
    """A copy of ``layer`` named ``name``, directly above it."""
    new = layer.copy()
    new.set_name(name)
    image.insert_layer(new, layer.get_parent(), image.get_item_position(layer))
    return new

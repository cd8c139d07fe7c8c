"""Batch script for ``gimp-console-3.0 -b`` (python-fu-eval), driven by tests/test_gimp_host.py.

Runs inside GIMP 3 in the chroot, where the job folder is mounted at /job. It reads
/job/job.json (a list of cases; ``$HARMONIZE_TEST_JOB`` names another file), builds each image
the way a user would (open a photo, paste an object, maybe select), calls the installed plug-in
procedure non-interactively through the PDB exactly as the menu does, and dumps what the host
test compares to /job/out/<case>.*. A case with ``"run_mode": "INTERACTIVE"`` runs it as the
menu does for a user (only for runs that must be refused before any dialog: there is no display
here); ``"target": "background"`` harmonizes the bottom layer instead of the object, and
``"flat": true`` adds no object at all (a flattened photo: the photo itself is harmonized).

- ``<case>.json``: status, error text, layer names/positions/offsets before and after, whether
  the run left the image dirty (it is marked clean just before);
- ``<case>.new.raw`` / ``<case>.src_before.raw`` / ``<case>.src_after.raw``: the new layer's
  and the source layer's pixels over the source layer's bounds, in the case's wire format
  (``R'G'B'A u8`` or ``u16``), row-major.

Executed with exec(), so it must not rely on ``__file__``. Anything unexpected raises, which
makes gimp-console exit with status 64.
"""

import json
import os
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, Gio  # noqa: E402

JOB = "/job"
PROC = "plug-in-harmonize-layer"


def _load(path):
    return Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(path))


def _pixels(drawable, box, fmt):
    x, y, w, h = box
    _, ox, oy = drawable.get_offsets()
    rect = Gegl.Rectangle.new(x - ox, y - oy, w, h)
    return bytes(drawable.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.NONE))


def _tree(image):
    return [
        {
            "name": lay.get_name(),
            "visible": lay.get_visible(),
            "offsets": list(lay.get_offsets()[1:]),
            "size": [lay.get_width(), lay.get_height()],
        }
        for lay in image.get_layers()
    ]


def _fill(image, name, rgba, box, position, visible):
    """A plain RGBA layer of one colour (u8 values) at ``box`` (8-bit pixels, converted)."""
    x, y, w, h = box
    layer = Gimp.Layer.new(image, name, w, h, Gimp.ImageType.RGBA_IMAGE, 100.0,
                           Gimp.LayerMode.NORMAL)  # fmt: skip
    image.insert_layer(layer, None, position)
    layer.set_offsets(x, y)
    layer.get_buffer().set(Gegl.Rectangle.new(0, 0, w, h), "R'G'B'A u8", bytes(rgba) * (w * h))
    layer.get_buffer().flush()
    layer.set_visible(visible)
    return layer


def run_case(case):
    out = os.path.join(JOB, "out", case["name"])
    fmt = case["format"]
    image = _load(case["background"])
    # Images loaded by a plug-in start with undo off; a user's image has it on. (GIMP 3.0.4 then
    # logs a harmless "gimp_image_undo_thaw: assertion ... failed" per image at cleanup; the
    # same procedure run from the GUI on a user-opened image logs nothing.)
    image.undo_enable()
    if case["precision"] != "U8_NON_LINEAR":
        image.convert_precision(getattr(Gimp.Precision, case["precision"]))
    background = image.get_layers()[0]
    if case.get("hidden_below"):  # invisible: must not reach the backdrop
        _fill(image, "hidden", (255, 0, 255, 255), (0, 0, image.get_width(),
              image.get_height()), 0, False)  # fmt: skip
    ox, oy = case["offset"]
    if case.get("flat"):  # a flattened photo: nothing added, the photo is the layer
        layer, ox, oy = background, 0, 0
    elif case["paste"]:  # a real paste: copy from another image, paste as a floating selection
        source_image = _load(case["object"])
        Gimp.edit_copy([source_image.get_layers()[0]])
        target = image.get_layers()[0]
        floating = Gimp.edit_paste(target, False)[0]
        floating.set_offsets(ox, oy)
        source_image.delete()
        layer = floating
        assert layer.is_floating_sel(), "the paste is not a floating selection"
    else:
        layer = Gimp.file_load_layer(Gimp.RunMode.NONINTERACTIVE, image,
                                     Gio.File.new_for_path(case["object"]))  # fmt: skip
        layer.set_name("object")
        image.insert_layer(layer, None, 0)
        layer.set_offsets(ox, oy)
    if case.get("cover"):  # a layer above the object: must not reach the backdrop
        _fill(image, "cover", (0, 0, 255, 128), case["cover"], 0, True)
    if case.get("selection"):
        image.select_rectangle(Gimp.ChannelOps.REPLACE, *case["selection"])
    if case.get("target") == "background":  # the bottom layer: nothing below it
        layer = background
        ox, oy = 0, 0
    box = [ox, oy, layer.get_width(), layer.get_height()]
    before = _pixels(layer, box, fmt)
    background_before = _pixels(background, [0, 0, image.get_width(), image.get_height()], fmt)
    tree_before = _tree(image)

    proc = Gimp.get_pdb().lookup_procedure(PROC)
    assert proc is not None, "the plug-in did not register " + PROC
    cfg = proc.create_config()
    cfg.set_property("run-mode", getattr(Gimp.RunMode, case.get("run_mode", "NONINTERACTIVE")))
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", [layer])
    cfg.set_property("strength", case["strength"])
    cfg.set_property("replace", bool(case.get("replace")))
    image.clean_all()  # as a freshly saved image: a failed run must leave it clean
    result = proc.run(cfg)
    status = result.index(0)
    error = ""
    if status != Gimp.PDBStatusType.SUCCESS:
        err = result.index(1) if result.length() > 1 else None
        error = getattr(err, "message", str(err))
    report = {
        "status": status.value_nick,
        "error": error,
        "menu_paths": list(proc.get_menu_paths()),
        "precision": image.get_precision().value_name,
        "tree_before": tree_before,
        "tree_after": _tree(image),
        "source_is_floating": bool(layer.is_floating_sel()) if layer.is_valid() else None,
        "source_valid": layer.is_valid(),
        "undo_enabled": image.undo_is_enabled(),
        "dirty_after": image.is_dirty(),
    }
    if status == Gimp.PDBStatusType.SUCCESS:
        layers = image.get_layers()
        new = layers[0] if case.get("replace") else None
        if not case.get("replace"):
            position = image.get_item_position(layer)
            report["source_position"] = position
            new = layers[position - 1] if position > 0 else None
            with open(out + ".src_after.raw", "wb") as fh:
                fh.write(_pixels(layer, box, fmt))
        report["new"] = {
            "name": new.get_name(),
            "offsets": list(new.get_offsets()[1:]),
            "size": [new.get_width(), new.get_height()],
            "precision_format": str(new.get_format()),
        }
        with open(out + ".new.raw", "wb") as fh:
            fh.write(_pixels(new, box, fmt))
        background_after = _pixels(background, [0, 0, image.get_width(), image.get_height()], fmt)
        report["background_unchanged"] = background_after == background_before
    with open(out + ".src_before.raw", "wb") as fh:
        fh.write(before)
    if case.get("save_xcf"):
        Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, image,
                       Gio.File.new_for_path(out + ".xcf"), None)  # fmt: skip
    with open(out + ".json", "w") as fh:
        json.dump(report, fh, indent=1)
    image.undo_disable()  # balances undo_enable (else GIMP's plug-in cleanup complains)
    image.delete()
    print("case", case["name"], report["status"], error)


def main():
    os.makedirs(os.path.join(JOB, "out"), exist_ok=True)
    with open(os.path.join(JOB, os.environ.get("HARMONIZE_TEST_JOB", "job.json"))) as fh:
        cases = json.load(fh)
    failed = 0
    for case in cases:
        try:
            run_case(case)
        except Exception:
            failed += 1
            traceback.print_exc()
    print(f"gimp batch: {len(cases) - failed} cases ran, {failed} crashed", flush=True)
    if failed:
        raise SystemExit(1)


main()

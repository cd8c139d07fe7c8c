"""Startup script for the *GUI* GIMP (python-fu-eval ``-b``), driven by tests/test_gimp_host.py.

GIMP 3's PDB cannot perform an undo, so the undo check needs the real GUI: this script opens
a photo in a window, pastes an object into it (a floating selection, as a user's Ctrl+V),
runs the installed procedure non-interactively exactly as the batch test does, and then
watches the layers while the test presses Ctrl+Z and Ctrl+Y in the window (xdotool under
Xvfb). Each time they change it rewrites /job/out/undo.json::

    {"states": [[[name, is floating selection, md5 of the pixels], ...], ...],
     "status": "success" | ..., "error": "..."}

A single Ctrl+Z must bring back the floating selection itself, which only happens when the
procedure's changes (floating selection -> layer, the new layer) form one undo group.

It quits GIMP when /job/out/undo.stop appears (or after 180 s). Executed with exec() inside
GIMP's GUI; the batch call keeps GIMP's main loop running, so key presses are handled while
this script waits.
"""

import hashlib
import json
import os
import time
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, Gio  # noqa: E402

OUT = "/job/out"
PROC = "plug-in-harmonize-layer"


def _save(report):
    tmp = os.path.join(OUT, "undo.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(report, fh)
    os.replace(tmp, os.path.join(OUT, "undo.json"))


def _layers(image):
    """[name, floating selection?, md5 of its RGBA u8 pixels] for each layer, top first."""
    out = []
    for layer in image.get_layers():
        rect = Gegl.Rectangle.new(0, 0, layer.get_width(), layer.get_height())
        pixels = bytes(layer.get_buffer().get(rect, 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.NONE))
        digest = hashlib.md5(pixels).hexdigest()
        out.append([layer.get_name(), bool(layer.is_floating_sel()), digest])
    return out


def _load(path):
    return Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(path))


def main():
    os.makedirs(OUT, exist_ok=True)
    report = {"states": [], "status": "", "error": ""}
    image = _load("/job/bg.png")
    image.undo_enable()  # a loaded image starts without undo here; a user's has it on
    Gimp.Display.new(image)
    source = _load("/job/obj.png")
    Gimp.edit_copy([source.get_layers()[0]])
    source.delete()
    layer = Gimp.edit_paste(image.get_layers()[0], False)[0]
    layer.set_offsets(50, 40)
    Gimp.displays_flush()
    report["states"].append(_layers(image))

    proc = Gimp.get_pdb().lookup_procedure(PROC)
    cfg = proc.create_config()
    cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", [layer])
    cfg.set_property("strength", 1.0)
    result = proc.run(cfg)
    report["status"] = result.index(0).value_nick
    if result.index(0) != Gimp.PDBStatusType.SUCCESS and result.length() > 1:
        report["error"] = getattr(result.index(1), "message", str(result.index(1)))
    Gimp.displays_flush()
    report["states"].append(_layers(image))
    _save(report)

    deadline = time.monotonic() + 180
    stop = os.path.join(OUT, "undo.stop")
    while time.monotonic() < deadline and not os.path.exists(stop):
        layers = _layers(image)
        if layers != report["states"][-1]:
            report["states"].append(layers)
            _save(report)
        time.sleep(0.1)
    image.clean_all()  # no "discard changes?" dialog on quit


try:
    main()
except Exception:
    os.makedirs(OUT, exist_ok=True)
    _save({"states": [], "status": "crashed", "error": traceback.format_exc()})
finally:
    quit_proc = Gimp.get_pdb().lookup_procedure("gimp-quit")
    quit_cfg = quit_proc.create_config()
    quit_cfg.set_property("force", True)
    quit_proc.run(quit_cfg)

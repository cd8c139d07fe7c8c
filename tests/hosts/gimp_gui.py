"""Startup script for the *GUI* GIMP (python-fu-eval ``-b``), driven by tests/test_gimp_host.py.

What batch mode cannot show: undo and the interactive dialog. Executed with exec() inside
GIMP's GUI; the batch call keeps GIMP's main loop running, so key presses from the test
(xdotool under Xvfb) are handled while this script waits. Two phases, each on a fresh paste
(a floating selection, as a user's Ctrl+V) into the photo, in its own window:

1. **undo**: run the procedure non-interactively, exactly as the batch test does, then watch
   the layers while the test presses Ctrl+Z and Ctrl+Y. Each time they change, rewrite
   /job/out/undo.json::

       {"states": [[[name, is floating selection, md5 of the pixels], ...], ...],
        "status": "success" | ..., "error": "..."}

   A single Ctrl+Z must bring back the floating selection itself, which only happens when
   the procedure's changes (floating selection -> layer, the new layer) form one undo group.
   The phase ends when /job/out/undo.stop appears.
2. **dialog**: run the procedure interactively. The dialog opens with its preview on; the
   test presses Return (OK) and this script writes /job/out/dialog.json with the status and
   the layers afterwards (no "[Preview]" layer may be left).

With ``HARMONIZE_GUI_PHASES=flat`` it runs only this phase instead (for
tests/test_gimp_host_features.py):

3. **flat**: the photo alone (a flat image) with a rectangle selected, harmonized
   non-interactively; then as in the undo phase, /job/out/flat.json follows the layers while
   the test presses Ctrl+Z and Ctrl+Y, until /job/out/flat.stop appears.

Then GIMP quits. Everything waits at most 180 s.
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


def _save(name, report):
    tmp = os.path.join(OUT, name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(report, fh)
    os.replace(tmp, os.path.join(OUT, name))


def _layers(image):
    """[name, floating selection?, md5 of its RGBA u8 pixels] for each layer, top first; None
    when the layers changed while they were read (a key press ran an undo between two of these
    PDB calls: the state read would mix before and after)."""
    out = []
    layers = image.get_layers()
    for layer in layers:
        rect = Gegl.Rectangle.new(0, 0, layer.get_width(), layer.get_height())
        buffer = layer.get_buffer()
        if buffer is None:
            return None
        pixels = bytes(buffer.get(rect, 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.NONE))
        digest = hashlib.md5(pixels).hexdigest()
        out.append([layer.get_name(), bool(layer.is_floating_sel()), digest])
    now = image.get_layers()
    if [lay.get_id() for lay in now] != [lay.get_id() for lay in layers]:
        return None
    if [bool(lay.is_floating_sel()) for lay in now] != [floating for _, floating, _ in out]:
        return None
    return out


def _load(path):
    return Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(path))


def _paste_scene(x, y):
    """The photo in a new window with the object pasted on it at (x, y) (a floating
    selection)."""
    image = _load("/job/bg.png")
    image.undo_enable()  # a loaded image starts without undo here; a user's has it on
    Gimp.Display.new(image)
    source = _load("/job/obj.png")
    Gimp.edit_copy([source.get_layers()[0]])
    source.delete()
    layer = Gimp.edit_paste(image.get_layers()[0], False)[0]
    layer.set_offsets(x, y)
    Gimp.displays_flush()
    return image, layer


def _run(image, layer, run_mode):
    proc = Gimp.get_pdb().lookup_procedure(PROC)
    cfg = proc.create_config()
    cfg.set_property("run-mode", run_mode)
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", [layer])
    if run_mode == Gimp.RunMode.NONINTERACTIVE:
        cfg.set_property("strength", 1.0)
    result = proc.run(cfg)
    status, error = result.index(0), ""
    if status != Gimp.PDBStatusType.SUCCESS and result.length() > 1:
        error = getattr(result.index(1), "message", str(result.index(1)))
    Gimp.displays_flush()
    return status.value_nick, error


def undo_phase(deadline, name="undo", scene=None):
    """Run the procedure on ``scene()``'s ``(image, layer)`` (a fresh paste by default), then
    report the layers in ``<name>.json`` whenever they change, until ``<name>.stop``."""
    image, layer = scene() if scene else _paste_scene(50, 40)
    report = {"states": [_layers(image)]}
    report["status"], report["error"] = _run(image, layer, Gimp.RunMode.NONINTERACTIVE)
    report["states"].append(_layers(image))
    _save(name + ".json", report)
    stop = os.path.join(OUT, name + ".stop")
    while time.monotonic() < deadline and not os.path.exists(stop):
        layers = _layers(image)
        if layers is not None and layers != report["states"][-1]:
            report["states"].append(layers)
            _save(name + ".json", report)
        time.sleep(0.1)
    image.clean_all()  # no "discard changes?" question on quit


def _flat_scene():
    """The photo alone in a window (a flat image), a rectangle selected on it."""
    image = _load("/job/bg.png")
    image.undo_enable()
    Gimp.Display.new(image)
    image.select_rectangle(Gimp.ChannelOps.REPLACE, 40, 30, 50, 40)
    Gimp.displays_flush()
    return image, image.get_layers()[0]


def dialog_phase():
    image, layer = _paste_scene(30, 30)  # elsewhere: the daemon has not seen this one
    status, error = _run(image, layer, Gimp.RunMode.INTERACTIVE)  # returns after OK/Cancel
    layers = [[name, floating] for name, floating, _ in _layers(image)]
    _save("dialog.json", {"status": status, "error": error, "layers": layers})
    image.clean_all()


try:
    os.makedirs(OUT, exist_ok=True)
    if os.environ.get("HARMONIZE_GUI_PHASES") == "flat":
        undo_phase(time.monotonic() + 180, "flat", _flat_scene)
    else:
        undo_phase(time.monotonic() + 180)
        dialog_phase()
except Exception:
    _save("crash.json", {"status": "crashed", "error": traceback.format_exc()})
finally:
    quit_proc = Gimp.get_pdb().lookup_procedure("gimp-quit")
    quit_cfg = quit_proc.create_config()
    quit_cfg.set_property("force", True)
    quit_proc.run(quit_cfg)

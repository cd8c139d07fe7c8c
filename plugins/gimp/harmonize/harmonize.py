#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters ▸ Harmonize Layer… recolours the active layer to fit the scene.

Wiring only: GIMP objects in, bytes out, bytes back into a new layer. Geometry, formats,
settings, the daemon call and every user-facing message live in
``layer_harmonizer.wire.host_side`` (shared with the Krita plugin): ``harmonize install-plugin
gimp`` copies the whole ``layer_harmonizer/wire/`` package into ``vendor/`` beside this file.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# Installed: <plug-ins>/harmonize/vendor holds layer_harmonizer/wire/ (and _version.py) and, when
# GIMP's Python lacks them, pyzmq + msgpack. From a source checkout: the repository's backend/.
_VENDOR = _HERE / "vendor"
sys.path.insert(0, str(_VENDOR if _VENDOR.is_dir() else _HERE.parents[2] / "backend"))
sys.path.insert(1, str(_HERE))  # error_dialog.py, gimp_io.py, gimp_version.py beside this file

from layer_harmonizer.wire.host_wheels import add_wheel_folders  # noqa: E402

add_wheel_folders(_HERE / "wheels")  # a release archive's pyzmq + msgpack per Python

import gi  # noqa: E402
import gimp_version  # noqa: E402

_GIMP, _UNSUPPORTED = gimp_version.load_gimp(gi)
if _UNSUPPORTED is not None and __name__ == "__main__":
    gimp_version.run_notice(_GIMP, _UNSUPPORTED)  # the usual menu entry says why; exits
gi.require_version("GimpUi", "3.0")
gi.require_version("Gegl", "0.4")
import error_dialog  # noqa: E402
import gimp_io  # noqa: E402
from gi.repository import Gimp, GLib, GObject  # noqa: E402

from layer_harmonizer.wire import about  # noqa: E402
from layer_harmonizer.wire import host_side as S  # noqa: E402

MENU_LABEL = gimp_version.MENU_LABEL


@dataclass
class _Job:
    """A run's inputs and the daemon's answer for them, got before the image is changed."""

    inputs: gimp_io.Inputs
    result: S.Result
    strength: float
    timings: dict[str, float]


def _prepare(image: Gimp.Image, layer: Gimp.Layer, strength: float, session: S.Session) -> _Job:
    """Read ``layer``'s inputs and get the daemon's result: every step that can fail (nothing
    visible below, no daemon, an empty mask...), done before the image is touched.

    Raises:
        S.PluginError: with the message for the user.
    """
    Gimp.progress_init("Harmonize: reading the layer…")
    try:
        timings: dict[str, float] = {}
        inputs = gimp_io.read_inputs(image, layer, timings)
        start = time.perf_counter()
        result = gimp_io.request(inputs, strength, session)
        timings["daemon"] = round(time.perf_counter() - start, 4)
    finally:
        Gimp.progress_end()
    return _Job(inputs, result, strength, timings)


def _with_strength(job: _Job, strength: float, session: S.Session) -> _Job:
    """``job`` at another strength (the dialog's): the daemon re-applies its kept job (no
    pixels sent); ``job`` itself when the strength is unchanged."""
    if strength == job.strength:
        return job
    Gimp.progress_init("Harmonize: applying the strength…")
    try:
        start = time.perf_counter()
        result = gimp_io.request(job.inputs, strength, session, again=True)
    finally:
        Gimp.progress_end()
    timings = {**job.timings, "daemon": round(time.perf_counter() - start, 4)}
    return _Job(job.inputs, result, strength, timings)


def harmonize_layer(image: Gimp.Image, layer: Gimp.Layer, job: _Job, replace: bool) -> Gimp.Layer:
    """Write ``job``'s result as a new layer above ``layer`` (or in its place); returns the new
    layer. The caller wraps this in one undo group."""
    inputs, result, timings = job.inputs, job.result, job.timings
    start = time.perf_counter()
    new = gimp_io.insert_copy(image, layer, S.result_name(layer.get_name()))
    crop = gimp_io.write_result(new, inputs, result)
    if replace:
        name, visible = layer.get_name(), layer.get_visible()
        image.remove_layer(layer)
        new.set_name(name)
        new.set_visible(visible)
    timings["write"] = round(time.perf_counter() - start, 4)
    Gimp.progress_update(1.0)
    if os.environ.get("HARMONIZE_PLUGIN_TIMINGS"):  # for benchmarks and bug reports
        region = inputs.region
        size = {"region": [region.w, region.h], "crop": [crop.w, crop.h]}
        print("harmonize-timings", json.dumps({**timings, **size}), file=sys.stderr, flush=True)
    return new


class LivePreview:
    """The dialog's preview on the canvas: a temporary result layer above the source.

    It is added, rewritten and removed with the image's undo stack frozen, so it never
    becomes an undo step; the inputs are the ones read (and answered) before the dialog
    opened, and that first answer is the first preview. A strength change is a reapply of the
    daemon's kept job (no pixels sent, no network run). The source is hidden while the
    preview replaces it (the "replace" option, or a floating selection, which stays above any
    other layer). When the dialog closes everything is put back, and OK runs the real
    operation, another reapply through the same ``session`` (the dialog's one client).
    """

    PREFIX = "[Preview] "

    def __init__(self, image: Gimp.Image, layer: Gimp.Layer, session: S.Session, job: _Job) -> None:
        self.image, self.source, self.session = image, layer, session
        self.inputs = job.inputs
        self.first: _Job | None = job  # the answer got before the dialog opened
        self.layer: Gimp.Layer | None = None
        self.source_visible = layer.get_visible()

    def show(self, strength: float, replace: bool) -> None:
        """Show (or update) the preview; raises :class:`S.PluginError`."""
        first, self.first = self.first, None
        if first is not None and first.strength == strength:
            result = first.result
        else:
            result = gimp_io.request(
                self.inputs, strength, self.session, progress=False, again=True
            )
        self.image.undo_freeze()
        try:
            if self.layer is None:
                name = self.PREFIX + S.result_name(self.source.get_name())
                self.layer = gimp_io.insert_copy(self.image, self.source, name)
            gimp_io.write_result(self.layer, self.inputs, result)
            hide = replace or self.source.is_floating_sel()
            self.source.set_visible(self.source_visible and not hide)
        finally:
            self.image.undo_thaw()
        Gimp.displays_flush()

    def remove(self) -> None:
        if self.layer is None:
            return
        self.image.undo_freeze()
        try:
            self.image.remove_layer(self.layer)
            self.source.set_visible(self.source_visible)
        finally:
            self.image.undo_thaw()
        self.layer = None
        Gimp.displays_flush()


class HarmonizePlugIn(Gimp.PlugIn):
    """Registers ``plug-in-harmonize-layer`` (Filters menu and the Layers dialog menu)."""

    def do_query_procedures(self) -> list[str]:
        return [S.PROCEDURE_NAME]

    def do_set_i18n(self, _name: str) -> bool:
        return False

    def do_create_procedure(self, name: str) -> Gimp.Procedure:
        proc = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, self.run, None)
        proc.set_image_types("RGB*")
        proc.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        proc.set_menu_label(MENU_LABEL)
        proc.add_menu_path("<Image>/Filters")
        proc.add_menu_path("<Layers>")
        proc.set_documentation(
            "Recolour the layer so it fits the scene below it",
            "Sends the active layer, its mask (alpha x selection) and what is visible below it "
            "(on a flat image, the layer itself: the selection is matched to the rest of it) "
            "to the local harmonize daemon and inserts the result as a new layer "
            "'<name> (harmonized)' directly above (or replaces the layer). One undo step.\n\n"
            + about.about_text("GIMP"),
            name,
        )
        proc.set_attribution("harmonize contributors", about.LICENCE, "2026")
        proc.add_double_argument(
            "strength", "S_trength", "0 = unchanged .. 1 = full harmonization",
            0.0, 1.0, S.DEFAULT_STRENGTH, GObject.ParamFlags.READWRITE,
        )  # fmt: skip
        proc.add_boolean_argument(
            "replace", "Re_place the layer", "Replace the layer instead of adding a new one",
            False, GObject.ParamFlags.READWRITE,
        )  # fmt: skip
        proc.add_boolean_aux_argument(
            "preview", "Pre_view", "Show the result on the canvas while the dialog is open",
            True, GObject.ParamFlags.READWRITE,
        )  # fmt: skip
        return proc

    def run(self, procedure, run_mode, image, drawables, config, _data):
        def fail(text: str) -> Gimp.ValueArray:
            if run_mode == Gimp.RunMode.INTERACTIVE and error_dialog.show(
                text, _HERE, S.PROCEDURE_NAME
            ):
                # shown with Copy diagnostics / Open log; the user closed it: nothing changed
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
            # GIMP shows the error itself (no window possible here) or prints it (batch)
            error = GLib.Error.new_literal(GLib.quark_from_string("harmonize"), text, 0)
            return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, error)

        if len(drawables) != 1 or not isinstance(drawables[0], Gimp.Layer):
            return fail("Select exactly one layer (not a channel or mask) to harmonize.")
        if drawables[0].is_group():
            return fail(
                "Harmonize Layer works on a plain layer, not a layer group: select a layer "
                "inside the group, or merge the group first (Layer ▸ Merge Layer Group)."
            )
        try:
            settings = S.load_settings(_HERE)
        except S.PluginError as exc:
            return fail(str(exc))
        layer = drawables[0]
        # Everything that can fail happens first, before a dialog opens or the image changes:
        # a failed run leaves no undo step and a clean image clean.
        try:  # one daemon client for the run: its first answer, the previews and OK
            with S.open_session(settings) as session:
                job = _prepare(image, layer, config.get_property("strength"), session)
                if run_mode == Gimp.RunMode.INTERACTIVE:
                    if not _dialog(procedure, config, image, layer, session, job):
                        cancel = Gimp.PDBStatusType.CANCEL
                        return procedure.new_return_values(cancel, GLib.Error())
                    job = _with_strength(job, config.get_property("strength"), session)
        except S.PluginError as exc:
            return fail(str(exc))
        except Exception as exc:  # a bug: still a message, never a silent failure
            return fail(S.explain(exc))
        image.undo_group_start()
        try:
            Gimp.progress_init("Harmonize: adding the layer…")
            if layer.is_floating_sel():
                Gimp.floating_sel_to_layer(layer)
            harmonize_layer(image, layer, job, config.get_property("replace"))
        except S.PluginError as exc:
            return fail(str(exc))
        except Exception as exc:
            return fail(S.explain(exc))
        finally:
            image.undo_group_end()
            Gimp.progress_end()
        Gimp.displays_flush()
        return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


PREVIEW_DELAY_MS = 150
"""Strength changes closer together than this cause one preview update (slider drags)."""


def _dialog(
    procedure: Gimp.Procedure,
    config: Gimp.ProcedureConfig,
    image: Gimp.Image,
    layer: Gimp.Layer,
    session: S.Session,
    job: _Job,
) -> bool:
    """The interactive dialog (strength, replace, preview on the canvas); True on OK. Opened
    only once ``job`` (the inputs and a first answer) shows that the run can succeed."""
    from gi.repository import GimpUi

    GimpUi.init(S.PROCEDURE_NAME)
    dialog = GimpUi.ProcedureDialog.new(procedure, config, "Harmonize Layer")
    dialog.fill(["strength", "replace", "preview"])
    preview = LivePreview(image, layer, session, job)
    pending: list[int] = []

    def refresh() -> bool:
        pending.clear()
        if not config.get_property("preview"):
            preview.remove()
            return False
        try:
            preview.show(config.get_property("strength"), config.get_property("replace"))
        except S.PluginError as exc:  # say why, then carry on without a preview
            preview.remove()
            Gimp.message(f"Preview turned off: {exc}")
            config.set_property("preview", False)
        return False  # run once

    def changed(*_args: object) -> None:
        if not pending:
            pending.append(GLib.timeout_add(PREVIEW_DELAY_MS, refresh))

    for name in ("strength", "replace", "preview"):
        config.connect(f"notify::{name}", changed)
    pending.append(GLib.idle_add(refresh))  # the first preview once the dialog is up
    try:
        return bool(dialog.run())
    finally:
        for source in pending:
            GLib.source_remove(source)
        preview.remove()
        dialog.destroy()


if __name__ == "__main__":
    Gimp.main(HarmonizePlugIn.__gtype__, sys.argv)

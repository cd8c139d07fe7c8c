"""Test hook run inside real Krita (GUI under Xvfb) by the installed plugin.

The plugin's extension execs this file when ``HARMONIZE_KRITA_AUTORUN`` names it and calls
``run(extension)`` once the main window exists. ``HARMONIZE_KRITA_SPEC`` names a JSON file::

    {"cases": [{"name", "depth", "profile", "width", "height", "background", "layer", "out",
                "reapply": 0.5 | null, "blending": "multiply" | null, "opacity": 0..255 | null,
                "bottom": true | false}],
     "screenshots": "DIR" | null, "result": "FILE"}

For each case it opens a document with a background and a "pasted" layer in a view, makes
the pasted layer active, triggers the real ``harmonize_layer`` QAction (as Filter ▸ Harmonize
Layer does), waits for the job, optionally moves the strength (the docker's re-apply), and
writes the layers' bytes and a PNG export into ``out``; it also records the undo steps the run
added (``undo_steps``, as Krita's History docker lists them). A ``bottom`` case triggers the
action on the bottom layer instead, which must fail: it records the message, the docker's
labels, the layers and the undo steps. It records Krita's version, where the action sits in
the menus and whether the docker exists, saves screenshots, writes ``result`` and exits with
``os._exit`` (0 = all steps ran; the pytest side checks the pixels). A watchdog exits with 4.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

RUNNER: Any = None
WATCHDOG_MS = int(os.environ.get("HARMONIZE_KRITA_WATCHDOG_MS", "150000"))


def log(*parts: Any) -> None:
    print("autorun:", *parts, file=sys.stderr, flush=True)


def finish(result: dict[str, Any], path: Path, code: int) -> None:
    result["exit"] = code
    path.write_text(json.dumps(result, indent=1))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # QApplication.quit() can crash on shutdown; file_quit leaves Krita running


def menu_paths(bar: Any, action_id: str) -> list[list[str]]:
    """Every menu path (menu titles) under which the action ``action_id`` appears."""
    found = []

    def walk(menu: Any, path: list[str]) -> None:
        for action in menu.actions():
            if action.objectName() == action_id:
                found.append(path)
            if action.menu() is not None:
                walk(action.menu(), [*path, action.text().replace("&", "")])

    walk(bar, [])
    return found


class Runner:
    def __init__(self, extension: Any) -> None:
        from harmonize import extension as ext
        from harmonize import names
        from krita import Krita

        self.app = Krita.instance()
        self.ctl = ext.controller()
        self.names = names
        self.spec = json.loads(Path(os.environ["HARMONIZE_KRITA_SPEC"]).read_text())
        self.result_path = Path(self.spec["result"])
        self.result: dict[str, Any] = {"cases": {}, "log": []}
        self.cases = list(self.spec["cases"])
        self.current: dict[str, Any] | None = None
        self.ctl.finished.connect(self.on_finished)
        self.ctl.failed.connect(self.on_failed)

    # -- setup --

    def start(self) -> None:
        from harmonize.qt import QtCore

        QtCore.QTimer.singleShot(WATCHDOG_MS, self.watchdog)
        window = self.app.activeWindow()
        bar = window.qwindow().menuBar()
        self.result["krita"] = self.app.version()
        self.result["menu_paths"] = menu_paths(bar, self.names.ACTION_ID)
        action = self.app.action(self.names.ACTION_ID)
        self.result["action"] = {
            "text": action.text() if action else None,
            "shortcut": action.shortcut().toString() if action else None,
        }
        docks = [d for d in self.app.dockers() if d.objectName() == self.names.DOCKER_ID]
        self.result["docker"] = [d.windowTitle() for d in docks]
        self.next_case()

    def watchdog(self) -> None:
        log("watchdog: gave up waiting")
        finish(self.result, self.result_path, 4)

    # -- cases --

    def build(self, case: dict[str, Any]) -> tuple[Any, Any]:
        from harmonize import pixels
        from harmonize.qt import to_qbytes

        w, h, depth = case["width"], case["height"], case["depth"]
        dtype = pixels.DEPTH_DTYPES[depth]
        doc = self.app.createDocument(w, h, case["name"], "RGBA", depth, case["profile"], 72.0)
        window = self.app.activeWindow()
        window.addView(doc)
        root = doc.rootNode()
        background = root.childNodes()[0]
        data = Path(case["background"]).read_bytes()
        background.setPixelData(to_qbytes(pixels.rgba_to_bgra(data, dtype)), 0, 0, w, h)
        data = Path(case["layer"]).read_bytes()
        if case.get("paste"):  # through the clipboard and Edit > Paste, as a user does
            return doc, None
        layer = doc.createNode("pasted", "paintlayer")
        layer.setPixelData(to_qbytes(pixels.rgba_to_bgra(data, dtype)), 0, 0, w, h)
        if case.get("blending"):
            layer.setBlendingMode(case["blending"])
        if case.get("opacity") is not None:
            layer.setOpacity(case["opacity"])
        root.addChildNode(layer, background)
        if case.get("bottom"):
            layer = background
        doc.refreshProjection()
        doc.waitForDone()
        doc.setActiveNode(layer)
        return doc, layer

    def paste(self, doc: Any, case: dict[str, Any], then: Any, tries: int = 50) -> None:
        """Put the layer (8-bit RGBA, canvas-sized) on the clipboard, trigger Krita's
        ``edit_paste`` and call ``then(layer)`` with the new layer, renamed "pasted"."""
        from harmonize.qt import QtCore, QtGui, QtWidgets, enum

        root = doc.rootNode()
        if tries == 50:
            w, h = case["width"], case["height"]
            self._clip = Path(case["layer"]).read_bytes()  # QImage does not copy the buffer
            fmt = enum(QtGui.QImage, "Format", "Format_RGBA8888")
            image = QtGui.QImage(self._clip, w, h, w * 4, fmt).copy()
            QtWidgets.QApplication.clipboard().setImage(image)
            # queued: a modal dialog inside the paste would block a direct call, not the polling
            QtCore.QTimer.singleShot(0, self.app.action("edit_paste").trigger)
        children = root.childNodes()
        if len(children) == 2:
            layer = children[1]
            layer.setName("pasted")
            then(layer)
            return
        if tries <= 0:
            modal = QtWidgets.QApplication.activeModalWidget()
            action = self.app.action("edit_paste")
            self.on_failed(
                f"Edit > Paste made no layer ({[n.name() for n in children]}; paste action "
                f"enabled: {action.isEnabled()}, clipboard has an image: "
                f"{QtWidgets.QApplication.clipboard().mimeData().hasImage()}, modal dialog: "
                f"{modal.windowTitle() if modal else None})"
            )
            return
        QtCore.QTimer.singleShot(100, lambda: self.paste(doc, case, then, tries - 1))

    def history(self) -> list[str]:
        """The active document's undo steps, as Krita's History docker lists them."""
        from harmonize.qt import QtWidgets

        dock = next(d for d in self.app.dockers() if d.objectName() == "History")
        model = dock.findChildren(QtWidgets.QListView)[0].model()
        return [str(model.data(model.index(row, 0))) for row in range(model.rowCount())]

    def when_active(self, doc: Any, layer: Any, then: Any, tries: int = 50) -> None:
        """Call ``then`` once the view made ``layer`` the active node (it is set asynchronously
        after ``addView``)."""
        from harmonize.qt import QtCore

        active = self.app.activeDocument()
        node = active.activeNode() if active is not None else None
        if node is not None and node.name() == layer.name() and active.fileName() == doc.fileName():
            then()
            return
        if tries <= 0:
            self.on_failed(f"the pasted layer never became active (active: {node and node.name()})")
            return
        doc.setActiveNode(layer)
        QtCore.QTimer.singleShot(100, lambda: self.when_active(doc, layer, then, tries - 1))

    def next_case(self) -> None:
        if not self.cases:
            self.screenshots()
            return
        case = self.cases.pop(0)
        out = Path(case["out"])
        out.mkdir(parents=True, exist_ok=True)
        doc, layer = self.build(case)
        if layer is None:
            self.paste(doc, case, lambda pasted: self.start_case(case, doc, pasted))
        else:
            self.start_case(case, doc, layer)

    def start_case(self, case: dict[str, Any], doc: Any, layer: Any) -> None:
        out = Path(case["out"])
        w, h = case["width"], case["height"]
        (out / "source_before.raw").write_bytes(bytes(layer.pixelData(0, 0, w, h)))
        self.current = {
            "case": case,
            "doc": doc,
            "layer": layer,
            "stage": "run",
            "started": time.perf_counter(),
        }

        def trigger() -> None:
            log("triggering", self.names.ACTION_ID, "on", case["name"])
            self.current["started"] = time.perf_counter()
            self.current["history"] = self.history()
            self.app.action(self.names.ACTION_ID).trigger()

        self.when_active(doc, layer, trigger)

    def on_failed(self, message: str) -> None:
        log("failed:", message)
        self.result["log"].append(message)
        cur = self.current
        if cur is not None and cur["case"].get("bottom") and cur["stage"] == "run":
            self.expected_failure(cur, message)
            return
        finish(self.result, self.result_path, 2)

    def expected_failure(self, cur: dict[str, Any], message: str) -> None:
        """The bottom layer was refused: what the user sees, and that nothing changed."""
        from harmonize.qt import QtCore, QtWidgets

        dock = next(d for d in self.app.dockers() if d.objectName() == self.names.DOCKER_ID)
        before = cur["history"]
        self.result["cases"][cur["case"]["name"]] = {
            "message": message,
            "docker_labels": [x.text() for x in dock.widget().findChildren(QtWidgets.QLabel)],
            "layers": [n.name() for n in cur["doc"].rootNode().childNodes()],
            "undo_steps": self.history()[len(before) :],
        }
        self.current = None
        QtCore.QTimer.singleShot(0, self.next_case)

    def on_finished(self, message: str) -> None:
        from krita import InfoObject

        cur = self.current
        if cur is None:
            return
        seconds = time.perf_counter() - cur["started"]
        case, doc, source = cur["case"], cur["doc"], cur["layer"]
        out = Path(case["out"])
        w, h = case["width"], case["height"]
        names = [n.name() for n in doc.rootNode().childNodes()]
        top = doc.rootNode().childNodes()[names.index(source.name()) + 1]
        info = self.result["cases"].setdefault(case["name"], {})
        log("finished", case["name"], cur["stage"], message)
        if cur["stage"] == "run":
            info.update(
                message=message,
                seconds=seconds,
                layers=names,
                new_layer=top.name(),
                new_blending=top.blendingMode(),
                new_opacity=top.opacity(),
                undo_steps=self.history()[len(cur["history"]) :],
            )
            (out / "result.raw").write_bytes(bytes(top.pixelData(0, 0, w, h)))
            (out / "source_after.raw").write_bytes(bytes(source.pixelData(0, 0, w, h)))
            doc.setBatchmode(True)
            log("exporting")
            info["exported"] = doc.exportImage(str(out / "flattened.png"), InfoObject())
            log("exported", info["exported"])
            if case.get("undo"):
                self.current = None
                self.check_undo(doc, info, self.next_case)
                return
            if case.get("reapply") is not None:
                cur.update(stage="reapply", started=time.perf_counter())
                log("re-applying strength", case["reapply"])
                if not self.ctl.reapply(float(case["reapply"])):
                    self.on_failed("reapply did not start")
                return
        else:
            layer = self.ctl.session_layer()
            info["reapply_seconds"] = seconds
            info["reapply_layers"] = [n.name() for n in doc.rootNode().childNodes()]
            (out / "result_reapplied.raw").write_bytes(bytes(layer.pixelData(0, 0, w, h)))
            info["docker"] = self.use_docker(layer)
        self.current = None
        from harmonize.qt import QtCore

        QtCore.QTimer.singleShot(0, self.next_case)

    def check_undo(self, doc: Any, info: dict[str, Any], then: Any) -> None:
        """Edit > Undo once (must remove just the harmonized layer), then Edit > Redo."""
        from harmonize.qt import QtCore

        def names() -> list[str]:
            return [n.name() for n in doc.rootNode().childNodes()]

        def wait(want: int, key: str, after: Any, tries: int = 30) -> None:
            if len(names()) == want or tries <= 0:
                info[key] = names()
                after()
                return
            QtCore.QTimer.singleShot(100, lambda: wait(want, key, after, tries - 1))

        def redo() -> None:
            self.app.action("edit_redo").trigger()
            wait(len(info["layers"]), "after_redo", then)

        self.app.action("edit_undo").trigger()
        wait(len(info["layers"]) - 1, "after_undo", redo)

    def use_docker(self, layer: Any) -> dict[str, Any]:
        """Click the docker's "Show before" (twice) and "Apply"; report what happened."""
        from harmonize.qt import QtWidgets

        dock = next(d for d in self.app.dockers() if d.objectName() == self.names.DOCKER_ID)
        root = dock.widget()
        before = next(
            b for b in root.findChildren(QtWidgets.QCheckBox) if b.text() == "Show before"
        )
        apply = next(b for b in root.findChildren(QtWidgets.QPushButton) if b.text() == "Apply")
        labels = [label.text() for label in root.findChildren(QtWidgets.QLabel)]
        seen = {
            "apply_enabled": apply.isEnabled(),
            "connected": any(text.startswith("Connected: harmonize") for text in labels),
        }
        before.setChecked(True)
        seen["hidden_when_before"] = not layer.visible()
        before.setChecked(False)
        seen["visible_after"] = layer.visible()
        apply.click()
        seen["session_after_apply"] = self.ctl.session is not None
        seen["apply_enabled_after"] = apply.isEnabled()
        return seen

    # -- screenshots for the docs --

    def screenshots(self) -> None:
        folder = self.spec.get("screenshots")
        if not folder:
            finish(self.result, self.result_path, 0)
            return
        from harmonize.qt import QtCore, QtWidgets

        Path(folder).mkdir(parents=True, exist_ok=True)
        window = self.app.activeWindow().qwindow()
        window.move(0, 0)  # no window manager under Xvfb: place it by hand
        window.resize(1280, 800)
        for dock in self.app.dockers():
            if dock.objectName() == self.names.DOCKER_ID:
                dock.setVisible(True)
                dock.raise_()
        bar = window.menuBar()
        menu = next(
            a.menu() for a in bar.actions() if a.menu() and a.menu().objectName() == "Filter"
        )

        def open_menu() -> None:
            rect = bar.actionGeometry(menu.menuAction())
            menu.popup(bar.mapToGlobal(rect.bottomLeft()))
            QtCore.QTimer.singleShot(800, grab_menu)

        def grab_menu() -> None:
            screen = QtWidgets.QApplication.primaryScreen()
            screen.grabWindow(0).save(str(Path(folder) / "krita-filter-menu.png"))
            menu.hide()
            QtCore.QTimer.singleShot(500, grab_window)

        def grab_window() -> None:
            window.grab().save(str(Path(folder) / "krita-docker.png"))
            finish(self.result, self.result_path, 0)

        QtCore.QTimer.singleShot(1500, open_menu)


def run(extension: Any) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(WATCHDOG_MS / 1000 + 10, exit=True)  # stacks if stuck
    global RUNNER
    try:
        RUNNER = Runner(extension)  # PyQt connects bound methods weakly: keep the runner alive
        RUNNER.start()
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)

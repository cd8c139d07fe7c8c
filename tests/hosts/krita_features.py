"""Test hook for tests/test_krita_host_features.py, run inside real Krita (GUI under Xvfb) by
the installed plugin (``HARMONIZE_KRITA_AUTORUN`` names this file; ``run(extension)`` is
called once the main window exists). It drives the Harmonize docker as a user does, with its
buttons, and reports what Krita shows.

``HARMONIZE_KRITA_SPEC`` names a JSON file::

    {"width", "height", "profile", "background", "layer", "selection",  # raw U8 RGBA / 8-bit
     "out": DIR, "result": FILE, "stop_marker": FILE}

Flows, each on a new document (background + a "pasted" layer, or a flat photo):

1. ``preview_apply``: New layer, Preview, Apply, then Edit ▸ Undo;
2. ``preview_cancel``: Replace, Preview (the source hidden), Cancel;
3. ``replace``: Replace, Harmonize Layer, then Edit ▸ Undo twice;
4. ``flat``: a flat photo with a selection, New layer, Harmonize Layer; ``flat_refused``:
   the same photo without a selection;
5. ``status``: the docker's daemon status until it says Connected; then it writes
   ``stop_marker`` (the test stops the daemon) and waits until the status says Not running.

Each flow records the layers, the undo history (the History docker's list and its current
row) and the message; pixels go to ``out/<flow>.<what>.raw`` (BGRA over the canvas). The
result file gets everything; the hook exits with ``os._exit`` (0 = every flow ran; the pytest
side checks the content; 2 = a flow failed, with the reason in ``error``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

RUNNER: Any = None
Wait = tuple[str, Callable[[], bool], float]


def log(*parts: Any) -> None:
    print("features:", *parts, file=sys.stderr, flush=True)


class Flows:
    """Runs :meth:`script`, a generator that yields conditions to wait for (polled on Qt's
    event loop, so Krita keeps running between the steps)."""

    def __init__(self) -> None:
        from harmonize import extension, names
        from krita import Krita

        self.app = Krita.instance()
        self.ctl = extension.controller()
        self.names = names
        self.spec = json.loads(Path(os.environ["HARMONIZE_KRITA_SPEC"]).read_text())
        self.out = Path(self.spec["out"])
        self.out.mkdir(parents=True, exist_ok=True)
        self.result: dict[str, Any] = {"flows": {}, "krita": self.app.version()}
        self.messages: list[tuple[str, str]] = []
        self.ctl.finished.connect(lambda text: self.messages.append(("finished", text)))
        self.ctl.failed.connect(lambda text: self.messages.append(("failed", text)))
        self.steps = self.script()
        self.waiting: Wait | None = None

    # -- the driver --

    def start(self) -> None:
        self.advance()

    def advance(self) -> None:
        try:
            self.waiting = next(self.steps)
        except StopIteration:
            self.finish(0)
            return
        except Exception:
            self.result["error"] = traceback.format_exc()
            self.finish(2)
            return
        self.poll()

    def poll(self) -> None:
        from harmonize.qt import QtCore

        what, ready, deadline = self.waiting
        if ready():
            QtCore.QTimer.singleShot(0, self.advance)
        elif time.monotonic() > deadline:
            self.result["error"] = f"timed out waiting for {what}"
            self.finish(2)
        else:
            QtCore.QTimer.singleShot(100, self.poll)

    def finish(self, code: int) -> None:
        self.result["exit"] = code
        Path(self.spec["result"]).write_text(json.dumps(self.result, indent=1))
        log("finished", code, self.result.get("error", ""))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # QApplication.quit() can crash on shutdown

    @staticmethod
    def wait(what: str, ready: Callable[[], bool], seconds: float = 120) -> Wait:
        return what, ready, time.monotonic() + seconds

    def pause(self, seconds: float) -> Wait:
        until = time.monotonic() + seconds
        return self.wait(f"{seconds} s", lambda: time.monotonic() >= until, seconds + 5)

    def run_to_end(self, click: Callable[[], None]) -> Iterator[Wait]:
        """Click, then wait for the job's finished or failed message (the last one)."""
        count = len(self.messages)
        click()
        yield self.wait("the job's message", lambda: len(self.messages) > count)
        yield self.pause(0.3)  # the History docker's row follows the stack through the queue

    # -- Krita --

    def docker(self) -> Any:
        return next(d for d in self.app.dockers() if d.objectName() == self.names.DOCKER_ID)

    def widget(self, kind: str, text: str) -> Any:
        from harmonize.qt import QtWidgets

        found = self.docker().widget().findChildren(getattr(QtWidgets, kind))
        return next(w for w in found if w.text() == text)

    def click(self, kind: str, text: str) -> Callable[[], None]:
        return lambda: self.widget(kind, text).click()

    def history(self) -> tuple[list[str], int]:
        """The History docker's entries ("<empty>" first) and its current row (the undo
        stack's index: the number of steps in effect)."""
        from harmonize import output

        view = output._history_view()
        return output.undo_history() or [], view.selectionModel().currentIndex().row()

    def document(self, name: str, flat: bool = False) -> tuple[Any, Any]:
        """A new document in a view: the background, plus (unless ``flat``) a "pasted" layer
        above it; returns ``(doc, the layer to harmonize)``."""
        from harmonize.qt import to_qbytes
        from krita import Selection

        s = self.spec
        w, h = s["width"], s["height"]
        doc = self.app.createDocument(w, h, name, "RGBA", "U8", s["profile"], 72.0)
        self.app.activeWindow().addView(doc)
        root = doc.rootNode()
        layer = root.childNodes()[0]
        layer.setPixelData(to_qbytes(self.bgra(s["background"])), 0, 0, w, h)
        if flat:
            selection = Selection()
            selection.resize(w, h)
            selection.setPixelData(to_qbytes(Path(s["selection"]).read_bytes()), 0, 0, w, h)
            doc.setSelection(selection)
        else:
            pasted = doc.createNode("pasted", "paintlayer")
            pasted.setPixelData(to_qbytes(self.bgra(s["layer"])), 0, 0, w, h)
            root.addChildNode(pasted, layer)
            layer = pasted
        doc.refreshProjection()
        doc.waitForDone()
        return doc, layer

    @staticmethod
    def bgra(path: str) -> bytes:
        from harmonize import pixels

        return pixels.rgba_to_bgra(Path(path).read_bytes(), "uint8")

    def activate(self, doc: Any, layer: Any) -> Iterator[Wait]:
        """Make ``layer`` the active node of ``doc``'s view (set asynchronously by Krita)."""

        def active() -> bool:
            now = self.app.activeDocument()
            node = now.activeNode() if now is not None else None
            if node is not None and node.name() == layer.name():
                return True
            doc.setActiveNode(layer)
            return False

        yield self.wait(f"'{layer.name()}' to become active", active, 30)

    @staticmethod
    def layers(doc: Any) -> list[Any]:
        """The top-level layers (not the global selection, a "Selection Mask" node)."""
        return [n for n in doc.rootNode().childNodes() if n.type() != "selectionmask"]

    def record(self, flow: str, doc: Any, **extra: Any) -> dict[str, Any]:
        labels, current = self.history()
        info = self.result["flows"].setdefault(flow, {})
        info.update(
            layers=[n.name() for n in self.layers(doc)],
            visible=[n.visible() for n in self.layers(doc)],
            history=labels,
            current=current,
            message=self.messages[-1] if self.messages else None,
            status=self.widget_status(),
            **extra,
        )
        return info

    def widget_status(self) -> list[str]:
        from harmonize.qt import QtWidgets

        label = self.docker().widget().findChildren(QtWidgets.QLabel)[0]
        return [str(label.property("daemon_state")), label.text()]

    def dump(self, flow: str, what: str, node: Any) -> None:
        w, h = self.spec["width"], self.spec["height"]
        (self.out / f"{flow}.{what}.raw").write_bytes(bytes(node.pixelData(0, 0, w, h)))

    def undo(self, doc: Any, layers: int) -> Iterator[Wait]:
        """Edit ▸ Undo once; wait until the document has ``layers`` top-level layers."""
        self.app.action("edit_undo").trigger()
        yield self.wait("the undo", lambda: len(self.layers(doc)) == layers, 30)

    # -- the flows --

    def script(self) -> Iterator[Wait]:
        dock = self.docker()
        dock.setVisible(True)  # its status timer pings only while it shows
        yield from self.preview_apply()
        yield from self.preview_cancel()
        yield from self.replace()
        yield from self.flat()
        yield from self.status()

    def preview_apply(self) -> Iterator[Wait]:
        doc, layer = self.document("preview_apply")
        yield from self.activate(doc, layer)
        self.dump("preview_apply", "source_before", layer)
        self.widget("QRadioButton", "New layer").click()
        self.record("preview_apply", doc, stage="before")
        before = dict(self.result["flows"]["preview_apply"])
        yield from self.run_to_end(self.click("QPushButton", "Preview"))
        preview = self.record("preview_apply", doc)
        info = {"before": before, "preview": dict(preview)}
        info["apply_enabled"] = self.widget("QPushButton", "Apply").isEnabled()
        self.widget("QPushButton", "Apply").click()
        yield self.pause(0.5)
        applied = self.record("preview_apply", doc)
        info["applied"] = dict(applied)
        nodes = self.layers(doc)
        self.dump("preview_apply", "result", nodes[2])
        self.dump("preview_apply", "source_after", nodes[1])
        yield from self.undo(doc, 2)
        info["undone"] = dict(self.record("preview_apply", doc))
        self.result["flows"]["preview_apply"] = info

    def preview_cancel(self) -> Iterator[Wait]:
        doc, layer = self.document("preview_cancel")
        yield from self.activate(doc, layer)
        self.widget("QRadioButton", "Replace the layer").click()
        before = dict(self.record("preview_cancel", doc))
        yield from self.run_to_end(self.click("QPushButton", "Preview"))
        preview = dict(self.record("preview_cancel", doc))
        self.widget("QPushButton", "Cancel").click()
        yield self.pause(0.5)
        cancelled = dict(self.record("preview_cancel", doc))
        self.result["flows"]["preview_cancel"] = {
            "before": before,
            "preview": preview,
            "cancelled": cancelled,
        }

    def replace(self) -> Iterator[Wait]:
        doc, layer = self.document("replace")
        yield from self.activate(doc, layer)
        source_id = layer.uniqueId()
        self.dump("replace", "source_before", layer)
        self.widget("QRadioButton", "Replace the layer").click()
        before = dict(self.record("replace", doc))
        yield from self.run_to_end(self.click("QPushButton", "Harmonize Layer"))
        done = dict(self.record("replace", doc))
        top = self.layers(doc)[1]
        done["same_node"] = top.uniqueId() == source_id
        self.dump("replace", "result", top)
        yield from self.undo(doc, 3)  # "Remove Layer" undone: the source is back below
        yield from self.undo(doc, 2)  # "Add Layer" undone: the result is gone
        back = self.layers(doc)[1]
        undone = dict(self.record("replace", doc))
        undone["same_node"] = back.uniqueId() == source_id
        self.dump("replace", "source_undone", back)
        self.widget("QRadioButton", "New layer").click()
        self.result["flows"]["replace"] = {"before": before, "done": done, "undone": undone}

    def flat(self) -> Iterator[Wait]:
        doc, photo = self.document("flat", flat=True)
        yield from self.activate(doc, photo)
        self.dump("flat", "source_before", photo)
        before = dict(self.record("flat", doc))
        yield from self.run_to_end(self.click("QPushButton", "Harmonize Layer"))
        done = dict(self.record("flat", doc))
        nodes = self.layers(doc)
        self.dump("flat", "result", nodes[-1])
        self.dump("flat", "source_after", nodes[0])
        self.result["flows"]["flat"] = {"before": before, "done": done}
        doc.setSelection(None)  # Select ▸ None: refused, saying what to do
        yield from self.activate(doc, nodes[0])
        before = dict(self.record("flat_refused", doc))
        yield from self.run_to_end(self.click("QPushButton", "Harmonize Layer"))
        refused = dict(self.record("flat_refused", doc))
        self.result["flows"]["flat_refused"] = {"before": before, "done": refused}

    def status(self) -> Iterator[Wait]:
        def state() -> str:
            return self.widget_status()[0]

        start = time.monotonic()
        yield self.wait("the status Connected", lambda: state() == "connected", 30)
        info = {"connected": self.widget_status()}
        Path(self.spec["stop_marker"]).write_text("stop the daemon now")
        stopped = time.monotonic()
        yield self.wait("the status Not running", lambda: state() == "not_running", 60)
        info["stopped"] = self.widget_status()
        info["seconds_to_notice"] = round(time.monotonic() - stopped, 1)
        info["seconds_connected"] = round(stopped - start, 1)
        self.result["flows"]["status"] = info


def run(extension: Any) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(600, exit=True)  # stacks if stuck
    global RUNNER
    try:
        RUNNER = Flows()  # PyQt connects bound methods weakly: keep the runner alive
        RUNNER.start()
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)

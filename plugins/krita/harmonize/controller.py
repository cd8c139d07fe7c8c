"""One harmonize job at a time: read on the main thread, talk to the daemon on a worker
thread, write the result back on the main thread. Shared by the Filter-menu action and the
docker.

After a run the controller remembers the *session* (document, source, result layer and the
request's inputs), so the docker's strength slider re-sends the same request with another
strength: the daemon recognises the input and re-applies its cached prediction (no network
run), and the result layer's pixels are rewritten in place.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from . import host
from .deps import PLUGIN_DIR, explain, host_side, missing_modules_message
from .qt import QtCore

SETTINGS_GROUP = "harmonize"
DEFAULT_STRENGTH = 1.0


def _signal(*types: Any) -> Any:
    return QtCore.pyqtSignal(*types)


@dataclass
class Session:
    """The last result, kept so the strength can be changed without re-reading the image."""

    doc: Any
    source_id: str
    layer_id: str
    inputs: host.Inputs
    strength: float


class Controller(QtCore.QObject):
    """Runs jobs; emits ``progress(fraction, text)``, ``finished(message)``, ``failed(message)``
    and ``busy_changed(bool)`` on the main thread."""

    progress = _signal(float, str)
    finished = _signal(str)
    failed = _signal(str)
    busy_changed = _signal(bool)
    _done = _signal(object)
    _error = _signal(str)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.session: Session | None = None
        self._cancel: threading.Event | None = None
        self._pending: dict[str, Any] | None = None
        self._done.connect(self._on_done)
        self._error.connect(self._on_error)

    # -- settings --

    @staticmethod
    def settings() -> Any:
        return host_side().load_settings(PLUGIN_DIR)

    @staticmethod
    def strength() -> float:
        """The user's last strength (Krita's settings), else the installer's default."""
        from krita import Krita

        raw = Krita.instance().readSetting(SETTINGS_GROUP, "strength", "")
        try:
            return min(1.0, max(0.0, float(raw)))
        except ValueError:
            return DEFAULT_STRENGTH

    @staticmethod
    def set_strength(value: float) -> None:
        from krita import Krita

        Krita.instance().writeSetting(SETTINGS_GROUP, "strength", f"{value:.3f}")

    # -- jobs --

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def harmonize_active(self, strength: float | None = None) -> bool:
        """Start a job on the active layer of the active document; False if it could not start
        (the reason went out through ``failed``)."""
        from krita import Krita

        if self.busy:
            self.failed.emit("A harmonize job is still running: wait or cancel it.")
            return False
        try:
            doc = Krita.instance().activeDocument()
            node = host.active_layer(doc)
            inputs = host.read_inputs(doc, node)
        except Exception as exc:
            self.failed.emit(explain(exc))
            return False
        value = self.strength() if strength is None else strength
        self._start({"kind": "new", "doc": doc, "inputs": inputs, "strength": value})
        return True

    def reapply(self, strength: float) -> bool:
        """Re-run the last request with another strength and rewrite its layer in place."""
        session = self.session
        if session is None or self.busy:
            return False
        if host.find_node(session.doc.rootNode(), session.layer_id) is None:
            self.session = None
            return False
        self._start(
            {"kind": "update", "doc": session.doc, "inputs": session.inputs, "strength": strength}
        )
        return True

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    def _start(self, job: dict[str, Any]) -> None:
        self._pending = job
        self._cancel = threading.Event()
        job["started"] = time.perf_counter()
        self.busy_changed.emit(True)
        self.progress.emit(0.02, "Harmonize: connecting to the daemon…")
        worker = threading.Thread(
            target=self._work, args=(job, self._cancel), name="harmonize-job", daemon=True
        )
        worker.start()

    def _work(self, job: dict[str, Any], cancel: threading.Event) -> None:
        """Worker thread: only the daemon call (no Krita API here)."""
        inputs = job["inputs"]
        try:
            ps = host_side()
            result = host.send(
                inputs,
                strength=job["strength"],
                settings=self.settings(),
                on_progress=lambda f, stage: self.progress.emit(f, ps.progress_text(stage)),
                cancel=cancel,
            )
        except Exception as exc:
            self._error.emit(explain(exc))
            return
        self._done.emit(result)

    def _finish(self) -> None:
        self._pending = None
        self._cancel = None
        self.busy_changed.emit(False)

    def _on_error(self, message: str) -> None:
        self._finish()
        self.failed.emit(message)

    def _on_done(self, result: Any) -> None:
        job = self._pending
        self._finish()
        if job is None:
            return
        try:
            message = self._apply(job, result)
        except Exception as exc:
            self.failed.emit(explain(exc))
            return
        self.progress.emit(1.0, message)
        self.finished.emit(message)

    def _apply(self, job: dict[str, Any], result: Any) -> str:
        doc, inputs = job["doc"], job["inputs"]
        source = host.find_node(doc.rootNode(), inputs.source_id)
        if source is None:
            raise host_side().PluginError(
                "The source layer was deleted while harmonizing; nothing was changed."
            )
        seconds = time.perf_counter() - job["started"]
        if job["kind"] == "update" and self.session is not None:
            layer = host.find_node(doc.rootNode(), self.session.layer_id)
            if layer is None:
                raise host_side().PluginError("The harmonized layer was deleted.")
            host.update_layer(doc, layer, inputs, result.pixels, result.box)
            self.session.strength = job["strength"]
            return f"Strength {job['strength']:.2f} applied in {seconds:.2f} s"
        layer = host.build_layer(doc, source, inputs, result.pixels, result.box)
        host.insert_above(doc, source, layer)
        self.session = Session(doc, inputs.source_id, host.node_id(layer), inputs, job["strength"])
        return f"Harmonized '{source.name()}' in {seconds:.2f} s"

    def end_session(self) -> None:
        """Apply: keep the result as it is; the slider no longer changes it."""
        self.session = None

    def session_layer(self) -> Any | None:
        session = self.session
        if session is None:
            return None
        return host.find_node(session.doc.rootNode(), session.layer_id)

    # -- daemon status --

    def check_daemon(self, callback: Any) -> None:
        """Ping the daemon on a worker thread; ``callback(text)`` runs on the main thread."""
        relay = _Relay(self)
        relay.text.connect(callback)

        def work() -> None:
            try:
                text = host_side().daemon_status(self.settings())
            except ImportError as missing:
                text = missing_modules_message(missing)
            except Exception as exc:  # e.g. a broken settings.json
                text = explain(exc)
            relay.text.emit(text)

        threading.Thread(target=work, name="harmonize-ping", daemon=True).start()


class _Relay(QtCore.QObject):
    text = QtCore.pyqtSignal(str)

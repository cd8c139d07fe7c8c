"""One harmonize job at a time: read on the main thread, talk to the daemon on a worker
thread, write the result back on the main thread. Shared by the Filter-menu action and the
docker.

After a run the controller remembers the *session* (document, source, result layer and the
request's inputs), so the docker's strength slider asks for the same request at another
strength: a reapply of the daemon's kept job, no pixels sent and no network run (the whole
request again if the daemon no longer keeps it), and the result layer's pixels are rewritten
in place. All jobs go through one daemon client (:attr:`Controller.link`). A run for the
docker's Preview puts its result on a temporary preview layer (:mod:`.output`) that Apply
keeps and Cancel takes back; the result goes to a new layer or replaces the source (the
docker's choice).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from . import host, output
from .deps import PLUGIN_DIR, explain, host_side, missing_modules_message
from .qt import QtCore

SETTINGS_GROUP = "harmonize"
DEFAULT_STRENGTH = 1.0
OUTPUT_SETTING = "output"
"""Krita setting: where results go, :data:`output.NEW_LAYER` (default) or ``REPLACE``."""


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
    preview: output.Preview | None = None
    """Set while the result is a preview (not yet applied)."""


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
        self.link: Any = None  # host_side.Session: the docker's one daemon client
        self._cancel: threading.Event | None = None
        self._pending: dict[str, Any] | None = None
        self._pinging = False
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

    @staticmethod
    def output_mode() -> str:
        """Where results go: a new layer (default) or the source replaced (Krita's settings)."""
        from krita import Krita

        mode = Krita.instance().readSetting(SETTINGS_GROUP, OUTPUT_SETTING, output.NEW_LAYER)
        return mode if mode in output.MODES else output.NEW_LAYER

    def set_output_mode(self, mode: str) -> None:
        """Remember ``mode``; a preview on the canvas follows it (the source shown or hidden)."""
        from krita import Krita

        Krita.instance().writeSetting(SETTINGS_GROUP, OUTPUT_SETTING, mode)
        if self.session is not None and self.session.preview is not None:
            output.set_mode(self.session.preview, mode)

    # -- jobs --

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def harmonize_active(self, strength: float | None = None, *, preview: bool = False) -> bool:
        """Start a job on the active layer of the active document, for a preview layer or
        straight into the document (:meth:`output_mode`); False if it could not start (the
        reason went out through ``failed``). A preview on the canvas is taken back first."""
        from krita import Krita

        if self.busy:
            self.failed.emit("A harmonize job is still running: wait or cancel it.")
            return False
        try:
            self.discard_preview()
            doc = Krita.instance().activeDocument()
            node = host.active_layer(doc)
            inputs = host.read_inputs(doc, node)
        except Exception as exc:
            self.failed.emit(explain(exc))
            return False
        value = self.strength() if strength is None else strength
        kind = "preview" if preview else "new"
        self._start(
            {"kind": kind, "doc": doc, "inputs": inputs, "strength": value,
             "mode": self.output_mode()}
        )  # fmt: skip
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
                session=self._link(),
                on_progress=lambda f, stage: self.progress.emit(f, ps.progress_text(stage)),
                cancel=cancel,
            )
        except Exception as exc:
            self._error.emit(explain(exc))
            return
        self._done.emit(result)

    def _link(self) -> Any:
        """The one daemon client (and shared-memory segment) of the docker and the menu
        action, made on first use and again when the plug-in's settings change; jobs run one
        at a time, so worker threads take turns with it."""
        settings = self.settings()
        if self.link is None or self.link.settings != settings:
            if self.link is not None:
                self.link.close()
            self.link = host_side().open_session(settings)
        return self.link

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
        seconds = time.perf_counter() - job["started"]
        if job["kind"] == "update" and self.session is not None:
            layer = host.find_node(doc.rootNode(), self.session.layer_id)
            if layer is None:
                raise host_side().PluginError("The harmonized layer was deleted.")
            host.update_layer(doc, layer, inputs, result.pixels, result.box)
            self.session.strength = job["strength"]
            return f"Strength {job['strength']:.2f} applied in {seconds:.2f} s"
        source = host.find_node(doc.rootNode(), inputs.source_id)
        if source is None:
            raise host_side().PluginError(
                "The source layer was deleted while harmonizing; nothing was changed."
            )
        name, mode, what = source.name(), job["mode"], _what(inputs)
        args = (doc, source, inputs, result.pixels, result.box, mode)
        if job["kind"] == "preview":
            shown = output.show_preview(*args)
            self.session = Session(
                doc, inputs.source_id, shown.layer_id, inputs, job["strength"], shown
            )
            return f"Preview of {what}'{name}' ({seconds:.2f} s): Apply keeps it, Cancel drops it"
        layer = output.write(*args)
        self.session = Session(doc, inputs.source_id, host.node_id(layer), inputs, job["strength"])
        done = "Replaced" if mode == output.REPLACE else "Harmonized"
        return f"{done} {what}'{name}' in {seconds:.2f} s"

    def apply(self) -> str:
        """Apply: a preview becomes the result (new layer or replace); any result stops
        following the strength slider. Returns what happened; raises ``PluginError``."""
        session, self.session = self.session, None
        if session is None or session.preview is None:
            return "Applied."
        layer = output.commit(session.preview)
        return f"Applied: '{layer.name()}'."

    def discard_preview(self, *, unless_active: bool = False) -> bool:
        """Cancel a preview: its layer goes, the source shows as before; False if none (or,
        with ``unless_active``, when its document is still the active one)."""
        session = self.session
        if session is None or session.preview is None:
            return False
        if unless_active and output.is_active(session.doc):
            return False
        self.session = None
        output.discard(session.preview)
        return True

    def show_before(self, before: bool) -> None:
        """Compare with the original: hide the result (or preview) and show the source."""
        session = self.session
        if session is None:
            return
        if session.preview is not None:
            output.show_before(session.preview, before)
            return
        layer = self.session_layer()
        if layer is not None:
            layer.setVisible(not before)
            session.doc.refreshProjection()

    def session_layer(self) -> Any | None:
        session = self.session
        if session is None:
            return None
        return host.find_node(session.doc.rootNode(), session.layer_id)

    # -- daemon status --

    def check_daemon(self, callback: Any) -> bool:
        """Ping the daemon on a worker thread; ``callback(state, text)`` runs on the main
        thread (``state`` as :func:`host_side.daemon_state`, or ``host_side.STARTING`` while a
        job of ours is starting the daemon). False (no ping) while the previous one is still out."""
        if self._pinging:
            return False
        self._pinging = True
        relay = _Relay(self)
        relay.state.connect(callback)

        def work() -> None:
            try:
                ps = host_side()
                found = ps.daemon_state(self.settings())
                state, text = found.state, found.text
                if state == ps.NOT_RUNNING and self.busy:
                    state, text = ps.STARTING, "Starting: the daemon starts for this job…"
            except ImportError as missing:
                state, text = "error", f"Error: {missing_modules_message(missing)}"
            except Exception as exc:  # e.g. a broken settings.json
                state, text = "error", f"Error: {explain(exc)}"
            self._pinging = False
            relay.state.emit(state, text)

        threading.Thread(target=work, name="harmonize-ping", daemon=True).start()
        return True


def _what(inputs: host.Inputs) -> str:
    """How a message names what was harmonized: a flat image's selection (matched to the rest
    of its layer), else the layer."""
    return "the selection of " if inputs.flat else ""


class _Relay(QtCore.QObject):
    state = QtCore.pyqtSignal(str, str)

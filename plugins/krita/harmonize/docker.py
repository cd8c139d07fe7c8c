"""The Harmonize docker: daemon status, strength, new layer or replace, Harmonize / Preview,
before/after, Apply, progress and Cancel.

The status line follows the daemon: it is pinged every few seconds while the docker shows
(and after each run): Connected, Not running, Starting (while a run starts it) or Error.
Preview puts the result on a temporary "[Preview] …" layer (see :mod:`.output`): the strength
slider and the New layer / Replace choice update it, Apply keeps it, Cancel (or closing the
docker, or switching to another image) takes it back.
"""

from __future__ import annotations

from typing import Any

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Krita

from . import output, report
from .deps import explain
from .extension import controller
from .names import ACTION_ID, DOCKER_ID
from .qt import QtCore, QtWidgets, enum

TITLE = "Harmonize"
SLIDER_STEPS = 100
STATUS_INTERVAL_MS = 3000
"""How often the visible docker pings the daemon (a ping waits at most 1.5 s, off the GUI
thread)."""


class HarmonizeDocker(DockWidget):
    """Settings ▸ Dockers ▸ Harmonize."""

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle(TITLE)
        self.ctl = controller()
        root = QtWidgets.QWidget(self)
        layout = QtWidgets.QVBoxLayout(root)
        self.status = QtWidgets.QLabel("Daemon: checking…", root)
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self._add_strength(root, layout)
        self._add_output_mode(root, layout)
        self._add_buttons(root, layout)
        self._add_progress(root, layout)
        layout.addStretch(1)
        self.setWidget(root)
        self._connect()

    def _add_strength(self, root: Any, layout: Any) -> None:
        """The strength slider and its value."""
        row = QtWidgets.QHBoxLayout()
        row.addWidget(QtWidgets.QLabel("Strength", root))
        self.slider = QtWidgets.QSlider(enum(QtCore.Qt, "Orientation", "Horizontal"), root)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.setValue(round(self.ctl.strength() * SLIDER_STEPS))
        self.slider.setToolTip(
            "0 = unchanged, 100 = full harmonization; re-applied to the "
            "last result without re-running the network"
        )
        row.addWidget(self.slider, 1)
        self.value = QtWidgets.QLabel(root)
        self.value.setMinimumWidth(32)
        row.addWidget(self.value)
        layout.addLayout(row)

    def _add_output_mode(self, root: Any, layout: Any) -> None:
        """New layer / Replace the layer."""
        row = QtWidgets.QHBoxLayout()
        self.mode_new = QtWidgets.QRadioButton("New layer", root)
        self.mode_new.setToolTip("Put the result in a new layer above the source (kept as is)")
        self.mode_replace = QtWidgets.QRadioButton("Replace the layer", root)
        self.mode_replace.setToolTip(
            "Put the result in the source layer's place (two Edit ▸ Undo bring it back)"
        )
        replace = self.ctl.output_mode() == output.REPLACE
        (self.mode_replace if replace else self.mode_new).setChecked(True)
        row.addWidget(self.mode_new)
        row.addWidget(self.mode_replace)
        layout.addLayout(row)

    def _add_buttons(self, root: Any, layout: Any) -> None:
        """Harmonize, Preview; Show before, Apply."""
        row = QtWidgets.QHBoxLayout()
        self.run_button = QtWidgets.QPushButton("Harmonize Layer", root)
        self.run_button.setToolTip("Harmonize the active layer now (Filter ▸ Harmonize Layer)")
        row.addWidget(self.run_button)
        self.preview_button = QtWidgets.QPushButton("Preview", root)
        self.preview_button.setToolTip(
            "Show the result on a temporary layer first: Apply keeps it, Cancel drops it"
        )
        row.addWidget(self.preview_button)
        layout.addLayout(row)

        row = QtWidgets.QHBoxLayout()
        self.before = QtWidgets.QCheckBox("Show before", root)
        self.before.setToolTip("Hide the result to compare with the original")
        row.addWidget(self.before)
        self.apply_button = QtWidgets.QPushButton("Apply", root)
        self.apply_button.setToolTip(
            "Keep the result (a preview becomes the new layer or replaces the source); the "
            "slider stops changing it"
        )
        row.addWidget(self.apply_button)
        layout.addLayout(row)

    def _add_progress(self, root: Any, layout: Any) -> None:
        """The progress bar with Cancel, the message and the error buttons."""
        row = QtWidgets.QHBoxLayout()
        self.bar = QtWidgets.QProgressBar(root)
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(False)
        self.bar.setMaximumHeight(8)
        row.addWidget(self.bar, 1)
        self.cancel_button = QtWidgets.QPushButton("Cancel", root)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)

        self.message = QtWidgets.QLabel("", root)
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        self.report = report.ErrorActions(root, self.message.setText)
        layout.addWidget(self.report.widget)

    def _connect(self) -> None:
        """Widgets and controller signals to their handlers; the status poll."""
        self.slider.valueChanged.connect(self._show_value)
        self.slider.sliderReleased.connect(self._strength_changed)
        self.run_button.clicked.connect(self._run)
        self.preview_button.clicked.connect(self._preview)
        self.mode_replace.toggled.connect(self._mode_changed)
        self.before.toggled.connect(self._toggle_before)
        self.apply_button.clicked.connect(self._apply)
        self.cancel_button.clicked.connect(self._cancel)
        self.ctl.progress.connect(self._progress)
        self.ctl.finished.connect(self._finished)
        self.ctl.failed.connect(self._failed)
        self.ctl.busy_changed.connect(self._busy)
        self._show_value(self.slider.value())
        self._busy(False)
        self.status_timer = QtCore.QTimer(self)
        self.status_timer.setInterval(STATUS_INTERVAL_MS)
        self.status_timer.timeout.connect(self._poll_status)
        self.status_timer.start()
        QtCore.QTimer.singleShot(0, self.refresh_status)

    def canvasChanged(self, canvas: Any) -> None:
        if self.ctl.discard_preview(unless_active=True):  # another image: the preview goes
            self.message.setText("Preview removed (another image became active).")
        self._sync()

    def closeEvent(self, event: Any) -> None:
        """Closing the docker takes a preview back (its Apply and Cancel close with it)."""
        if self.ctl.discard_preview():
            self.message.setText("Preview removed.")
        super().closeEvent(event)

    # -- actions --

    def strength(self) -> float:
        return self.slider.value() / SLIDER_STEPS

    def _run(self) -> None:
        action = Krita.instance().action(ACTION_ID)
        if action is not None:
            action.trigger()  # same path as the Filter menu
        else:
            self.ctl.harmonize_active(self.strength())

    def _preview(self) -> None:
        self.ctl.harmonize_active(self.strength(), preview=True)

    def _mode_changed(self, replace: bool) -> None:
        try:
            self.ctl.set_output_mode(output.REPLACE if replace else output.NEW_LAYER)
        except Exception as exc:  # e.g. replace refused for a layer with masks
            self._failed(explain(exc))

    def _cancel(self) -> None:
        """Cancel the running job, else take back the preview."""
        if self.ctl.busy:
            self.ctl.cancel()
        elif self.ctl.discard_preview():
            self.before.setChecked(False)
            self.message.setText("Preview removed; nothing was changed.")
            self._sync()

    def _strength_changed(self) -> None:
        self.ctl.set_strength(self.strength())
        if not self.ctl.reapply(self.strength()):
            self._sync()

    def _show_value(self, value: int) -> None:
        self.value.setText(f"{value}%")
        if not self.slider.isSliderDown():
            self.ctl.set_strength(value / SLIDER_STEPS)

    def _toggle_before(self, before: bool) -> None:
        self.ctl.show_before(before)

    def _apply(self) -> None:
        self.before.setChecked(False)  # the result shows again
        try:
            self.message.setText(self.ctl.apply())
            self.report.show_for(None)
        except Exception as exc:  # e.g. the preview layer was deleted meanwhile
            self._failed(explain(exc))
        self._sync()

    # -- controller signals --

    def _progress(self, fraction: float, text: str) -> None:
        self.bar.setValue(round(fraction * 1000))
        self.message.setText(text)

    def _finished(self, text: str) -> None:
        self.message.setText(text)
        self.report.show_for(None)
        self.before.setChecked(False)
        self.refresh_status()
        self._sync()

    def _failed(self, text: str) -> None:
        self.bar.setValue(0)
        self.message.setText(text)
        self.report.show_for(text)  # Copy diagnostics / Open log beside the error
        self.refresh_status()

    def _busy(self, busy: bool) -> None:
        self.run_button.setEnabled(not busy)
        self.preview_button.setEnabled(not busy)
        if not busy and self.bar.value() < 1000:
            self.bar.setValue(0)
        if busy:
            self.refresh_status()  # Starting, when this run has to start the daemon
        self._sync()

    def _sync(self) -> None:
        busy = self.ctl.busy
        tuning = self.ctl.session_layer() is not None and not busy
        previewing = self.ctl.session is not None and self.ctl.session.preview is not None
        self.apply_button.setEnabled(tuning)
        self.before.setEnabled(tuning)
        self.cancel_button.setEnabled(busy or previewing)

    def _poll_status(self) -> None:
        if self.isVisible():
            self.refresh_status()

    def refresh_status(self) -> None:
        self.ctl.check_daemon(self._status)

    def _status(self, state: str, text: str) -> None:
        self.status.setText(text)
        self.status.setProperty("daemon_state", state)  # for tests and style sheets


def factory() -> DockWidgetFactory:
    position = getattr(DockWidgetFactoryBase, "DockRight", None)
    if position is None:
        position = DockWidgetFactoryBase.DockPosition.DockRight
    return DockWidgetFactory(DOCKER_ID, position, HarmonizeDocker)

"""The Harmonize docker: strength, before/after, Apply, daemon status, progress and cancel."""

from __future__ import annotations

from typing import Any

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Krita

from . import report
from .extension import controller
from .names import ACTION_ID, DOCKER_ID
from .qt import QtCore, QtWidgets, enum

TITLE = "Harmonize"
SLIDER_STEPS = 100


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

        self.run_button = QtWidgets.QPushButton("Harmonize Layer", root)
        self.run_button.setToolTip("Harmonize the active layer into a new layer above it")
        layout.addWidget(self.run_button)

        row = QtWidgets.QHBoxLayout()
        self.before = QtWidgets.QCheckBox("Show before", root)
        self.before.setToolTip("Hide the harmonized layer to compare with the original")
        row.addWidget(self.before)
        self.apply_button = QtWidgets.QPushButton("Apply", root)
        self.apply_button.setToolTip("Keep the result; the slider stops changing it")
        row.addWidget(self.apply_button)
        layout.addLayout(row)

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
        layout.addStretch(1)
        self.setWidget(root)

        self.slider.valueChanged.connect(self._show_value)
        self.slider.sliderReleased.connect(self._strength_changed)
        self.run_button.clicked.connect(self._run)
        self.before.toggled.connect(self._toggle_before)
        self.apply_button.clicked.connect(self._apply)
        self.cancel_button.clicked.connect(self.ctl.cancel)
        self.ctl.progress.connect(self._progress)
        self.ctl.finished.connect(self._finished)
        self.ctl.failed.connect(self._failed)
        self.ctl.busy_changed.connect(self._busy)
        self._show_value(self.slider.value())
        self._busy(False)
        QtCore.QTimer.singleShot(0, self.refresh_status)

    def canvasChanged(self, canvas: Any) -> None:
        self._sync()

    # -- actions --

    def strength(self) -> float:
        return self.slider.value() / SLIDER_STEPS

    def _run(self) -> None:
        action = Krita.instance().action(ACTION_ID)
        if action is not None:
            action.trigger()  # same path as the Filter menu
        else:
            self.ctl.harmonize_active(self.strength())

    def _strength_changed(self) -> None:
        self.ctl.set_strength(self.strength())
        if not self.ctl.reapply(self.strength()):
            self._sync()

    def _show_value(self, value: int) -> None:
        self.value.setText(f"{value}%")
        if not self.slider.isSliderDown():
            self.ctl.set_strength(value / SLIDER_STEPS)

    def _toggle_before(self, before: bool) -> None:
        layer = self.ctl.session_layer()
        if layer is None:
            return
        layer.setVisible(not before)
        self.ctl.session.doc.refreshProjection()

    def _apply(self) -> None:
        layer = self.ctl.session_layer()
        if layer is not None and not layer.visible():
            layer.setVisible(True)
            self.ctl.session.doc.refreshProjection()
        self.before.setChecked(False)
        self.ctl.end_session()
        self.message.setText("Applied.")
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
        self.cancel_button.setEnabled(busy)
        self.run_button.setEnabled(not busy)
        if not busy and self.bar.value() < 1000:
            self.bar.setValue(0)
        self._sync()

    def _sync(self) -> None:
        tuning = self.ctl.session_layer() is not None and not self.ctl.busy
        self.apply_button.setEnabled(tuning)
        self.before.setEnabled(tuning)

    def refresh_status(self) -> None:
        self.ctl.check_daemon(self._status)

    def _status(self, text: str) -> None:
        self.status.setText(text)


def factory() -> DockWidgetFactory:
    position = getattr(DockWidgetFactoryBase, "DockRight", None)
    if position is None:
        position = DockWidgetFactoryBase.DockPosition.DockRight
    return DockWidgetFactory(DOCKER_ID, position, HarmonizeDocker)

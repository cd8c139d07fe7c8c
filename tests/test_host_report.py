"""What the plug-ins' "Copy diagnostics" and "Open log" do (layer_harmonizer.wire.host_report):
the installed backend's ``diagnose`` first, the plug-in's own knowledge always, redacted; the
log file from the settings or from the backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from layer_harmonizer.wire import about, discovery, host_report
from layer_harmonizer.wire.host_messages import PluginError


class FakeRun:
    """Stands in for :func:`subprocess.run`: records the calls, answers ``result``."""

    def __init__(self, stdout: str = "", returncode: int = 0, stderr: str = "") -> None:
        self.result = subprocess.CompletedProcess([], returncode, stdout, stderr)
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((command, kwargs))
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def _plugin(tmp_path: Path, **settings: Any) -> Path:
    folder = tmp_path / "plug-ins" / "harmonize"
    folder.mkdir(parents=True)
    if settings:
        (folder / "settings.json").write_text(json.dumps(settings), encoding="utf-8")
    return folder


@pytest.fixture
def exe(tmp_path: Path) -> Path:
    """An installed backend executable (only its existence is checked)."""
    path = tmp_path / "bin" / "harmonize"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\n")
    return path


def test_runs_the_installed_backends_diagnose_with_the_plugins_runtime_dir(
    tmp_path: Path, exe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(discovery.ENV, raising=False)
    folder = _plugin(tmp_path, serve_command=[str(exe), "serve"], runtime_dir="/run/h",
                     serve_args=["--log-file", "/var/log/h.log"])  # fmt: skip
    run = FakeRun(stdout="[versions]\nharmonize: 9.9\n")
    text = host_report.diagnostics_text(folder, "Krita 5.2.9", "It broke.", run=run)
    ((command, kwargs),) = run.calls
    assert command == [str(exe), "diagnose", "--log-file", "/var/log/h.log"]
    assert kwargs["env"][discovery.ENV] == "/run/h" and kwargs["timeout"] > 0
    assert text.startswith(host_report.HEADER)
    for words in ("harmonize: 9.9", "host:          Krita 5.2.9", "error shown:   It broke.",
                  f"Harmonize Layer {about.version()}", about.LICENCE):  # fmt: skip
        assert words in text, words


def test_a_python_m_serve_command_becomes_python_m_diagnose(tmp_path: Path) -> None:
    folder = _plugin(tmp_path, serve_command=[sys.executable, "-m", "layer_harmonizer", "serve"])
    run = FakeRun(stdout="ok\n")
    host_report.diagnostics_text(folder, "GIMP 3.0.4", run=run)
    assert run.calls[0][0] == [sys.executable, "-m", "layer_harmonizer", "diagnose"]


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("failed", "failed (exit 2): harmonize: error: argument COMMAND: invalid choice"),
        ("timeout", "did not finish in"),
        ("missing", "is not installed at"),
    ],
)
def test_without_a_working_backend_the_plugin_says_why_and_what_it_knows(
    tmp_path: Path, exe: Path, monkeypatch: pytest.MonkeyPatch, case: str, words: str
) -> None:
    home = tmp_path / "home" / "dora"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USER", "dora")
    command = [str(tmp_path / "gone" / "harmonize"), "serve"] if case == "missing" else [
        str(exe), "serve"]  # fmt: skip
    folder = _plugin(tmp_path, serve_command=command, serve_args=["--weights", f"{home}/w.pt"])
    run = FakeRun(returncode=2, stderr="usage: ...\nharmonize: error: argument COMMAND: "
                  "invalid choice: 'diagnose'")  # fmt: skip
    if case == "timeout":
        run.result = subprocess.TimeoutExpired(command, 1)  # type: ignore[assignment]
    error = f"No daemon log at {home}/.local/state/harmonize/log for dora."
    text = host_report.diagnostics_text(folder, "GIMP 3.0.4", error, run=run)
    assert "[backend]\nnot available: " in text and words in text, text
    assert "error shown:   No daemon log at ~/.local/state/harmonize/log for <user>." in text
    assert '"--weights", "~/w.pt"' in text
    assert str(home) not in text and "dora" not in text


def test_a_broken_settings_file_is_reported_not_raised(tmp_path: Path) -> None:
    folder = _plugin(tmp_path)
    (folder / "settings.json").write_text("{not json", encoding="utf-8")
    text = host_report.diagnostics_text(folder, "Krita 5.1.5", run=FakeRun(stdout="ok"))
    assert "settings:      unreadable" in text and "settings.json" in text


def test_log_file_from_the_settings_or_the_backend(tmp_path: Path, exe: Path) -> None:
    log = tmp_path / "logs" / "daemon.log"
    log.parent.mkdir()
    folder = _plugin(tmp_path, serve_command=[str(exe), "serve"], serve_args=[f"--log-file={log}"])
    with pytest.raises(PluginError, match="no daemon log yet"):
        host_report.log_file(folder, run=FakeRun())
    log.write_text("started\n")
    assert host_report.log_file(folder, run=FakeRun()) == log
    other = _plugin(tmp_path / "b", serve_command=[str(exe), "serve"])
    run = FakeRun(stdout=f"{log}\n")
    assert host_report.log_file(other, run=run) == log
    assert run.calls[0][0] == [str(exe), "diagnose", "--log-path"]
    with pytest.raises(PluginError, match=r"Cannot find the daemon's log: .*exit 1"):
        host_report.log_file(other, run=FakeRun(returncode=1, stderr="boom"))


def test_log_path_from_the_real_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plug-in's "Open log" asks the real ``diagnose --log-path`` (no torch needed)."""
    monkeypatch.setenv("HARMONIZE_LOG_DIR", str(tmp_path / "log"))
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "daemon.log").write_text("x\n")
    folder = _plugin(tmp_path, serve_command=[sys.executable, "-m", "layer_harmonizer", "serve"])
    assert host_report.log_file(folder) == tmp_path / "log" / "daemon.log"

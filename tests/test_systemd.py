"""layer_harmonizer.daemon.systemd (the systemd user unit) and the daemon CLI commands without
a daemon."""

from __future__ import annotations

import shlex
import sys

from layer_harmonizer import cli
from layer_harmonizer.daemon import systemd


def test_unit_runs_this_interpreter_as_a_notify_service():
    text = systemd.unit_text(["--device", "cuda", "--weights", "/w/my weights.pt"])
    lines = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert lines["Type"] == "notify" and lines["Restart"] == "on-failure"
    assert shlex.split(lines["ExecStart"]) == [
        sys.executable,
        "-m",
        "layer_harmonizer",
        "serve",
        "--device",
        "cuda",
        "--weights",
        "/w/my weights.pt",
    ]
    assert "[Install]" in text and "WantedBy=default.target" in text


def test_install_service_writes_the_unit_under_xdg_config_home(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert cli.main(["install-service", "--", "--idle-timeout", "0"]) == 0
    unit = tmp_path / "systemd" / "user" / "harmonize.service"
    assert unit.read_text() == systemd.unit_text(["--idle-timeout", "0"])
    assert "systemctl --user enable --now" in capsys.readouterr().out
    assert cli.main(["install-service", "--print"]) == 0
    assert capsys.readouterr().out == systemd.unit_text()


def test_ping_and_stop_without_a_daemon_say_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(tmp_path))
    assert cli.main(["ping"]) == 1
    assert cli.main(["stop"]) == 1
    err = capsys.readouterr().err
    assert err.count("no daemon is running") == 2 and str(tmp_path) in err


def test_serve_refuses_remote_hosts_without_allow_remote(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(tmp_path))
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert not (tmp_path / "daemon.json").exists()

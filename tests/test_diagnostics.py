"""``harmonize diagnose`` (layer_harmonizer.diagnostics) and the redaction it shares with the
plug-ins (layer_harmonizer.wire.redact): secrets planted in the endpoint file and the daemon
log never reach the report; a failing section is one line; no daemon is started."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from layer_harmonizer import diagnostics as D
from layer_harmonizer.fileutil import tail_lines
from layer_harmonizer.model import AICTNet
from layer_harmonizer.model.weights import PACKAGED_DEFAULT, save_weights
from layer_harmonizer.wire import about, discovery, messages
from layer_harmonizer.wire.redact import REDACTED, redact

USER = "alice-reporter"
OTHER_USER = "bob-other"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A home, runtime dir and log dir of a user named :data:`USER`, with secrets planted in
    the endpoint file and the daemon log (a pid that is not running: nothing answers)."""
    home = tmp_path / "home" / USER
    runtime, logs = home / "run" / "harmonize", home / "state" / "log"
    runtime.mkdir(parents=True, mode=0o700)
    logs.mkdir(parents=True)
    env = {"HOME": home, "USER": USER, "LOGNAME": USER, "HARMONIZE_RUNTIME_DIR": runtime,
           "HARMONIZE_LOG_DIR": logs}  # fmt: skip
    for var, value in env.items():
        monkeypatch.setenv(var, str(value))
    planted = {
        "token": secrets.token_urlsafe(32),
        "server_public": "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7",
        "client_public": "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID",
        "client_secret": "D:)Q[IlAW!ahhC2ac:9*A}h:tc4[2-X$&JvI!w1c",
    }
    endpoint = {
        "endpoint": f"ipc://{runtime}/daemon.sock",
        "pid": 2**22 + 17,  # above the usual pid_max: not running
        "protocol_version": [2, 0],
        "server_version": "0.0-test",
        "token": planted["token"],
        "curve": {k: planted[k] for k in ("server_public", "client_public", "client_secret")},
    }
    (runtime / discovery.ENDPOINT_FILE).write_text(json.dumps(endpoint), encoding="utf-8")
    planted["hmac"] = messages.hello_proof(planted["token"], "c" * 64)
    planted["old_token"] = secrets.token_urlsafe(32)  # a previous daemon's, only in the log
    lines = [
        "2026-12-01 10:00:00 INFO harmonize.daemon: harmonize 0.1.0, protocol 2.0",
        f"2026-12-01 10:00:01 INFO harmonize.daemon: serving on ipc://{runtime}/daemon.sock",
        f"2026-12-01 10:00:02 DEBUG x: token={planted['token']} proof {planted['hmac']}",
        f"2026-12-01 10:00:03 DEBUG x: keys {planted['server_public']} {planted['client_secret']}",
        f"2026-12-01 10:00:04 DEBUG x: 'client_public': '{planted['client_public']}'",
        f"2026-12-01 10:00:05 DEBUG x: old {planted['old_token']} hmac: {planted['hmac']}",
        f"2026-12-01 10:00:06 ERROR x: cannot read /home/{OTHER_USER}/a.png for {USER}",
        "2026-12-01 10:00:07 INFO harmonize.server: job 1f0c2a3b4d5e6f708192a3b4c5d6e7f8: 40 x 40",
    ]
    (logs / "daemon.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"home": home, "runtime": runtime, "logs": logs, "planted": planted}


def _no_daemon_start(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record any attempt to start a daemon (``ensure_daemon`` or a ``serve`` subprocess)."""
    from layer_harmonizer.wire import client

    attempts: list[Any] = []
    real_popen = subprocess.Popen

    def popen(args: Any, *a: Any, **kw: Any) -> Any:
        if "serve" in [str(x) for x in (args if isinstance(args, list | tuple) else [args])]:
            attempts.append(args)
            raise AssertionError("diagnose started a daemon")
        return real_popen(args, *a, **kw)

    monkeypatch.setattr(client, "ensure_daemon", lambda *a, **k: attempts.append(a))
    monkeypatch.setattr(subprocess, "Popen", popen)
    return attempts


def test_report_hides_every_planted_secret_and_personal_detail(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = _no_daemon_start(monkeypatch)
    report = D.collect()
    outputs = {"text": D.render_text(report), "json": D.render_json(report)}
    for kind, text in outputs.items():
        for name, value in world["planted"].items():
            assert value not in text, f"{name} in the {kind} report"
        for personal in (USER, OTHER_USER, str(world["home"])):
            assert personal not in text, f"{personal!r} in the {kind} report"
    text = outputs["text"]
    # what a bug report needs is still there: the log lines (redacted), the job id, the state
    assert "serving on ipc://~/run/harmonize/daemon.sock" in text
    assert "job 1f0c2a3b4d5e6f708192a3b4c5d6e7f8: 40 x 40" in text
    assert "cannot read /home/<user>/a.png for <user>" in text
    assert "no such process: a stale endpoint file" in text
    assert "not answering" in text and attempts == []
    sections = json.loads(outputs["json"])["sections"]
    assert list(sections) == list(D.SECTIONS)
    assert len(sections["daemon log"]["lines"]) == 8


def test_installed_plugins_with_their_versions_and_backends(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from layer_harmonizer import install

    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    home = world["home"]
    gimp = home / ".config" / "GIMP" / "3.0" / "plug-ins" / "harmonize"
    krita = home / ".var" / "app" / "org.kde.krita" / "data" / "krita" / "pykrita" / "harmonize"
    for folder, version in ((gimp, "0.0.7"), (krita, "0.0.8")):
        folder.mkdir(parents=True)
        (folder / install.MARKER).write_text(json.dumps({"version": version}))
    (gimp / "settings.json").write_text(json.dumps({"serve_command": ["/gone/harmonize", "serve"]}))
    section = D.collect().sections["plug-ins"]
    (gimp_line,), (krita_line,) = section["gimp"], section["krita"]
    assert gimp_line.startswith("version 0.0.7, backend /gone/harmonize (missing), in ~/.config")
    assert krita_line.startswith("version 0.0.8, no readable settings.json, in ~/.var/app")


def test_no_daemon_no_runtime_dir_is_reported_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run" / "harmonize"
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("HARMONIZE_LOG_DIR", str(tmp_path / "log"))
    attempts = _no_daemon_start(monkeypatch)
    report = D.collect(D.Options(log_lines=5))
    assert "does not exist" in report.sections["daemon"]["runtime dir"]
    assert "none yet" in report.sections["daemon log"]["file"]
    assert not runtime.exists() and not (tmp_path / "log").exists() and attempts == []


def test_a_failing_section_is_one_line_and_the_others_still_come(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_opts: D.Options, _report: D.Report) -> dict[str, Any]:
        raise RuntimeError("the probe broke\nTraceback (most recent call last): ...")

    monkeypatch.setitem(D.SECTIONS, "versions", broken)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a weights file" * 100)
    monkeypatch.setenv("HARMONIZE_LOG_DIR", str(tmp_path / "log"))
    report = D.collect(D.Options(weights=corrupt))
    assert report.sections["versions"] == {"error": "RuntimeError: the probe broke"}
    error = report.sections["weights"]["error"]
    assert "\n" not in error and "corrupt.pt" in error and "not a readable weights file" in error
    assert report.sections["licence"]["code"] == "MIT"
    text = D.render_text(report)
    assert "[device]" in text and "Traceback" not in text


def test_weights_licence_follows_the_file(tmp_path: Path, light_model: AICTNet) -> None:
    from layer_harmonizer.model.weights import load_weights

    default_meta = load_weights(PACKAGED_DEFAULT)[1]
    assert D.weights_licence(PACKAGED_DEFAULT, default_meta) == about.DEFAULT_WEIGHTS_LICENCE
    stated = tmp_path / "stated.pt"
    save_weights(stated, light_model, "aict-light", {"licence": "CC BY 4.0"}, half=False)
    assert D.weights_licence(stated, load_weights(stated)[1]) == "CC BY 4.0"
    other = tmp_path / "other.pt"
    save_weights(other, light_model, "aict-light", {}, half=False)
    assert "not stated" in D.weights_licence(other, load_weights(other)[1])


def test_log_tail_reads_only_the_end(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {i} " + "x" * 60 + "\n" for i in range(5000)))
    lines = tail_lines(path, 40, max_bytes=4096)
    assert len(lines) == 40
    assert lines[-1].startswith("line 4999 ") and lines[0].startswith("line 4960 ")
    assert tail_lines(path, 0) == []


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("token=abcdefgh12345678", "abcdefgh12345678"),
        ('{"client_secret": "k3y-Value"}', "k3y-Value"),
        ("password: hunter2hunter2", "hunter2hunter2"),
        ("digest " + "ab12" * 16, "ab12" * 16),
        ("curve key Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID seen", "Yne@$w-vo<fVvi]a<NY6T1ed"),
    ],
)
def test_redact_named_values_and_long_blobs(text: str, secret: str) -> None:
    assert secret not in redact(text) and REDACTED in redact(text)


def test_redact_keeps_what_is_asked_and_ordinary_text(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = "0123456789abcdef" * 4
    assert redact(f"sha256 {digest}", keep=[digest]) == f"sha256 {digest}"
    plain = "job 1f0c2a3b4d5e6f708192a3b4c5d6e7f8 took 0.25 s on cpu (weights 068b12acf4d6476b)"
    assert redact(plain) == plain
    monkeypatch.setenv("HOME", "/srv/people/carol")
    monkeypatch.setenv("USER", "carol")
    assert redact("/srv/people/carol/x.log by carol; /srv/people/carolyn") == (
        "~/x.log by <user>; /srv/people/carolyn"
    )
    assert os.environ["USER"] == "carol"


# ---- the command line -------------------------------------------------------------------------


def test_cli_diagnose_prints_text_or_json(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from layer_harmonizer.cli import main

    assert main(["diagnose", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["sections"]) == list(D.SECTIONS)
    assert main(["diagnose", "--lut-backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("harmonize diagnose") and "torch (asked for) works" in out
    assert world["planted"]["token"] not in out and USER not in out


def test_cli_log_path_answers_without_torch(tmp_path: Path) -> None:
    """What the plug-ins' Open log asks: quick, no torch or numpy import."""
    code = (
        "import sys; from layer_harmonizer.cli import main\n"
        "assert main(['diagnose', '--log-path']) == 0\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'"
    )
    env = {**os.environ, "HARMONIZE_LOG_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "daemon.log")


def test_info_states_the_licence(capsys: pytest.CaptureFixture[str]) -> None:
    from layer_harmonizer.cli import main

    assert main(["info", "--weights", str(PACKAGED_DEFAULT)]) == 0
    out = capsys.readouterr().out
    assert f"licence: {about.LICENCE}" in out
    assert f"  licence: {about.DEFAULT_WEIGHTS_LICENCE}" in out  # the weights line's

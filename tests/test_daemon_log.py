"""The daemon's log is private (issue 12, item 7): every log file 0600, in a 0700 folder;
tests/test_trust.py checks that another user cannot read it."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from layer_harmonizer.daemon.logs import PrivateRotatingFileHandler, _private_log_folder
from tests.daemon_process import serve_once

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX modes")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_log_folder_is_created_0700_and_tightened(tmp_path):
    folder = tmp_path / "state" / "harmonize" / "log"
    _private_log_folder(folder)
    assert [mode(p) for p in (folder, folder.parent, folder.parent.parent)] == [0o700] * 3
    folder.chmod(0o755)  # made by an older version
    _private_log_folder(folder)
    assert mode(folder) == 0o700


def test_every_log_file_is_0600_rotations_and_old_files_included(tmp_path):
    folder = tmp_path / "log"
    _private_log_folder(folder)
    old = folder / "daemon.log"
    old.write_text("written by an older version\n")
    old.chmod(0o644)
    handler = PrivateRotatingFileHandler(old, maxBytes=300, backupCount=2, encoding="utf-8")
    try:
        assert mode(old) == 0o600
        for n in range(20):
            handler.emit(logging.makeLogRecord({"msg": f"line {n} " + "x" * 40}))
    finally:
        handler.close()
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["daemon.log", "daemon.log.1", "daemon.log.2"]
    assert all(mode(folder / name) == 0o600 for name in files)
    assert "line 19" in old.read_text()


def test_a_symlink_in_place_of_the_log_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep\n")
    (tmp_path / "daemon.log").symlink_to(target)
    with pytest.raises(OSError):
        PrivateRotatingFileHandler(tmp_path / "daemon.log", encoding="utf-8")
    assert target.read_text() == "keep\n"


def test_serve_says_in_one_line_when_it_cannot_open_its_log(tmp_path):
    log = tmp_path / "log"
    log.mkdir(mode=0o700)
    (log / "daemon.log").symlink_to(tmp_path / "elsewhere.txt")
    env = {**os.environ, "HARMONIZE_RUNTIME_DIR": str(tmp_path / "rt")}
    env["HARMONIZE_LOG_DIR"] = str(log)
    out = serve_once(env, tmp_path / "none.pt")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"harmonize: error: cannot open the log file {log / 'daemon.log'}")
    assert not (tmp_path / "elsewhere.txt").exists()
    assert not (tmp_path / "rt" / "daemon.lock").exists()  # released on the way out

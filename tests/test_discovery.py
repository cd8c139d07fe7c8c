"""layer_harmonizer.wire.discovery: the runtime directory both sides use, created 0700 and
checked before use (issue 12, item 3), for this user; tests/test_trust.py has the cases with a
second user."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from layer_harmonizer import paths
from layer_harmonizer.wire import client, discovery
from layer_harmonizer.wire import host_side as S
from layer_harmonizer.wire.client import DaemonError
from tests.daemon_process import serve_once

ROOT = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
pytestmark = posix_only


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_missing_directories_are_created_0700(tmp_path):
    target = tmp_path / "a" / "b" / "harmonize"
    assert discovery.private_dir(target) == target
    for folder in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert mode(folder) == 0o700, folder
    assert discovery.private_dir(target) == target  # and accepted again


def test_a_folder_of_ours_readable_by_others_is_tightened(tmp_path):
    target = tmp_path / "rt"
    target.mkdir()
    target.chmod(0o755)
    discovery.private_dir(target)
    assert mode(target) == 0o700


@pytest.mark.parametrize("bits", [0o770, 0o777, 0o702])
def test_a_folder_others_can_write_is_refused(tmp_path, bits):
    target = tmp_path / "rt"
    target.mkdir()
    target.chmod(bits)
    with pytest.raises(discovery.RuntimeDirError, match=rf"writable by other users.*{bits:04o}"):
        discovery.private_dir(target)
    assert mode(target) == bits  # left as it was: files may have been planted in it


def test_symlinks_and_files_are_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(discovery.RuntimeDirError, match="symbolic link"):
        discovery.private_dir(tmp_path / "link")
    (tmp_path / "file").write_text("")
    with pytest.raises(discovery.RuntimeDirError, match="not a directory"):
        discovery.private_dir(tmp_path / "file")


def test_a_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    target = tmp_path / "rt"
    target.mkdir(mode=0o700)
    owner = os.getuid()
    monkeypatch.setattr(discovery.os, "getuid", lambda: owner + 4_000_000)
    with pytest.raises(discovery.RuntimeDirError) as info:
        discovery.private_dir(target)
    message = str(info.value)
    assert f"belongs to uid {owner}, not to this user" in message
    assert "HARMONIZE_RUNTIME_DIR" in message and "\n" not in message


def test_a_parent_others_could_change_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # world-writable without the sticky bit: anyone may rename our folder
    with pytest.raises(discovery.RuntimeDirError, match=r"parent .* could be changed"):
        discovery.private_dir(shared / "harmonize")
    shared.chmod(0o1777)  # as /tmp is
    assert mode(discovery.private_dir(shared / "harmonize")) == 0o700


def test_missing_without_create_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        discovery.private_dir(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()


def test_location_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", "~/x")
    assert discovery.default_runtime_dir() == Path.home() / "x"
    monkeypatch.delenv("HARMONIZE_RUNTIME_DIR")
    if not sys.platform.startswith("linux"):
        return
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert discovery.default_runtime_dir() == xdg / "harmonize"
    for useless in ("relative/dir", str(tmp_path / "absent")):  # ignored, never created
        monkeypatch.setenv("XDG_RUNTIME_DIR", useless)
        assert discovery.default_runtime_dir() != Path(useless) / "harmonize"
    # su, cron, ssh, containers: no $XDG_RUNTIME_DIR and no /run/user/<uid>
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr(discovery.os, "getuid", lambda: 4_000_000)
    assert discovery.default_runtime_dir() == Path("/tmp/harmonize-4000000")


def test_a_not_owned_xdg_runtime_dir_is_ignored(tmp_path, monkeypatch):
    """After `su`, $XDG_RUNTIME_DIR still names the first user's folder."""
    if not sys.platform.startswith("linux"):
        pytest.skip("XDG runtime dirs are a Linux convention")
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.delenv("HARMONIZE_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    monkeypatch.setattr(discovery.os, "getuid", lambda: 4_000_000)
    assert discovery.default_runtime_dir() == Path("/tmp/harmonize-4000000")


def test_client_refuses_an_endpoint_file_in_a_shared_folder(tmp_path, monkeypatch):
    shared = tmp_path / "rt"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "daemon.json").write_text('{"endpoint": "ipc:///x", "token": "t"}')
    with pytest.raises(DaemonError) as info:
        discovery.read_endpoint_file(shared / "daemon.json")
    assert info.value.code == "unsafe_runtime_dir"
    with pytest.raises(DaemonError) as info:  # refused before anything is started
        client.ensure_daemon(command=[str(tmp_path / "never-run")], endpoint_file=shared / "x")
    assert info.value.code == "unsafe_runtime_dir"
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(shared))
    fmt = S.wire_format("U8_NON_LINEAR")
    settings = S.Settings(serve_command=[sys.executable, "-m", "layer_harmonizer", "serve"])
    with pytest.raises(S.PluginError, match=r"not private to you.*writable by other users"):
        S.harmonize(b"\0" * 4, b"\xff", b"\0" * 3, 1, 1, fmt, settings=settings)


def test_a_missing_runtime_dir_means_no_daemon(tmp_path):
    with pytest.raises(DaemonError) as info:
        discovery.read_endpoint_file(tmp_path / "absent" / "daemon.json")
    assert info.value.code == "no_daemon"
    assert not (tmp_path / "absent").exists()


def test_serve_refuses_an_unsafe_runtime_dir_in_one_line(tmp_path):
    shared = tmp_path / "rt"
    shared.mkdir()
    shared.chmod(0o777)
    env = {**os.environ, "HARMONIZE_RUNTIME_DIR": str(shared)}
    env["HARMONIZE_LOG_DIR"] = str(tmp_path / "log")
    out = serve_once(env, tmp_path / "none.pt")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("harmonize: error: the runtime directory") and "writable" in line
    assert os.listdir(shared) == []


def test_paths_and_client_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(tmp_path / "rt"))
    assert paths.runtime_dir() == discovery.endpoint_path().parent == tmp_path / "rt"
    assert not (tmp_path / "rt").exists()  # locating never creates


def test_an_ipc_endpoint_is_the_socket_beside_the_endpoint_file(tmp_path):
    """A host that sees the runtime dir at another path (the GIMP test chroot, a sandbox's bind
    mount) must reach the socket beside the endpoint file, not at the daemon's path."""
    here = tmp_path / "seen-here"
    here.mkdir(mode=0o700)
    (here / "daemon.json").write_text('{"endpoint": "ipc:///elsewhere/run/daemon.sock"}')
    (here / "daemon.json").chmod(0o600)
    assert discovery.read_endpoint_file(here / "daemon.json")["endpoint"] == (
        f"ipc://{here / 'daemon.sock'}"
    )

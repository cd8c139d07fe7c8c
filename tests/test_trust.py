"""Trust between client and daemon, attacked by a second, throw-away user (issue 12, items 1-4
and 7): the attacker cannot reach the local socket, cannot impersonate a dead daemon on its
TCP port, cannot plant the runtime directory, cannot inflate the daemon's memory or lock
clients out with idle connections, and cannot read the log.

The attacker runs as a user created for the module (``useradd``, removed afterwards) through
``setpriv``, with the system's Python and only the standard library (the project's virtual
environment may lie in a folder that user cannot read). Needs Linux and root (CI runs as
root); elsewhere the module is skipped with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import resource
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from layer_harmonizer.model.weights import save_weights
from layer_harmonizer.wire import host_side as S
from layer_harmonizer.wire import protocol as P
from layer_harmonizer.wire.client import Client
from tests.daemon_process import SERVE, DaemonProcess, daemon_env, serve_once

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")


@dataclass
class OtherUser:
    """A throw-away user, and a world-traversable sticky folder (like /tmp) to meet in."""

    name: str
    uid: int
    gid: int
    python: str
    shared: Path
    started: list[subprocess.Popen]

    def command(self, script: str, *args: str) -> list[str]:
        ids = [f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        return ["setpriv", *ids, "--", self.python, "-I", "-c", script, *args]

    def run(self, script: str, *args: str, timeout: float = 120) -> dict:
        """Run ``script`` as this user; returns the JSON it prints last."""
        out = subprocess.run(
            self.command(script, *args),
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    def start(self, script: str, *args: str) -> subprocess.Popen:
        """Start ``script`` as this user (killed, by pid, when the module ends at the latest)."""
        proc = subprocess.Popen(
            self.command(script, *args),
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(proc)
        return proc


def _skip_unless_possible() -> str:
    """The Python the other user will run, or a skip naming what is missing."""
    if not sys.platform.startswith("linux"):
        pytest.skip("cross-user tests need Linux (setpriv, useradd)")
    if os.geteuid() != 0:
        pytest.skip("cross-user tests need root to create a throw-away user (CI runs as root)")
    for tool in ("useradd", "userdel", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"cross-user tests need `{tool}` (util-linux / passwd)")
    python = next((p for p in SYSTEM_PYTHONS if os.access(p, os.X_OK)), None)
    if python is None:
        pytest.skip(f"cross-user tests need a Python another user can run ({SYSTEM_PYTHONS})")
    return python


@pytest.fixture(scope="module")
def other() -> Iterator[OtherUser]:
    python = _skip_unless_possible()
    name = f"hz-attacker-{secrets.token_hex(3)}"
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/bin/false", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"useradd failed here ({made.stderr.strip()}): no second user to test with")
    shared = Path(tempfile.mkdtemp(prefix="hz-trust-", dir="/tmp"))
    try:
        shared.chmod(0o1777)
        entry = pwd.getpwnam(name)
        user = OtherUser(name, entry.pw_uid, entry.pw_gid, python, shared, [])
        probe = subprocess.run(
            user.command("import socket, json"), cwd="/", capture_output=True, check=False
        )
        if probe.returncode != 0:
            pytest.skip(f"{python} does not run as another user: {probe.stderr[-200:]!r}")
        yield user
        for proc in user.started:
            proc.kill()
            proc.communicate(timeout=10)  # reaped, pipes closed
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)
        shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture(scope="module")
def weights(tmp_path_factory, light_model) -> Path:
    path = tmp_path_factory.mktemp("weights") / "random-light.pt"
    save_weights(path, light_model, "aict-light", {"note": "random, tests only"}, half=False)
    return path


def victim_root(other: OtherUser, name: str) -> Path:
    """A daemon's folders in the shared sticky folder: the other user can see that they exist
    (as it can see /tmp/harmonize-<uid>) but not enter the private ones."""
    root = other.shared / name
    root.mkdir(mode=0o755)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    layer = rng.integers(0, 256, (48, 64, 4), dtype=np.uint8)
    layer[..., 3] = 255
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 12:40] = 255
    return layer, mask, rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def harmonize_with(client: Client, seed: int = 0) -> np.ndarray:
    layer, mask, back = (P.Pixels.of(a) for a in scene(seed))
    result = client.harmonize(layer, mask, back)
    return np.frombuffer(result.pixels.data, np.uint8).reshape(result.pixels.shape)


# ---- the attacker's scripts (standard library only) --------------------------------------------

REACH_SOCKET = r"""
import errno, json, os, socket, sys
runtime, log = sys.argv[1], sys.argv[2]
out = {"connect": {}, "errors": {}}
for _ in range(1000):  # item 4: a flood of connections
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(os.path.join(runtime, "daemon.sock"))
        key = "connected"
    except OSError as exc:
        key = errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        s.close()
    out["connect"][key] = out["connect"].get(key, 0) + 1
def attempt(name, fn):
    try:
        fn()
        out["errors"][name] = "ok"
    except OSError as exc:
        out["errors"][name] = errno.errorcode.get(exc.errno, str(exc.errno))
attempt("list runtime dir", lambda: os.listdir(runtime))
attempt("read endpoint file", lambda: open(os.path.join(runtime, "daemon.json")).read())
def bind():
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(runtime, "impostor.sock"))
attempt("bind a socket in it", bind)
attempt("read the log", lambda: open(os.path.join(log, "daemon.log")).read())
attempt("list the log folder", lambda: os.listdir(log))
print(json.dumps(out))
"""

IMPOSTOR = r"""
import base64, json, socket, sys, time
port, capture = int(sys.argv[1]), sys.argv[2]
null_greeting = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0")
null_greeting += b"\0" + b"\0" * 31
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(64)
print(json.dumps({"listening": port}), flush=True)
with open(capture, "a") as out:
    while True:
        conn, _ = srv.accept()
        conn.settimeout(1.0)
        got = b""
        try:
            conn.sendall(null_greeting)  # a daemon without encryption, please
            while len(got) < 1 << 20:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
        conn.close()
        out.write(base64.b64encode(got).decode() + "\n")
        out.flush()
"""

FLOOD = r"""
import json, os, random, resource, socket, sys, time
port, count, garbage, stop = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks, sent, refused = [], [], 0
for i in range(count):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        refused += 1
        s.close()
        continue
    socks.append(s)
# item 2: a 400 MB message behind a valid greeting of the NULL (unauthenticated) mechanism
greeting = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32
ready = bytes([5]) + b"READY" + bytes([11]) + b"Socket-Type" + (6).to_bytes(4, "big") + b"DEALER"
header = greeting + bytes([0x04, len(ready)]) + ready
header += bytes([0x02]) + (400 << 20).to_bytes(8, "big")  # one long frame of 400 MB
blob = random.Random(0).randbytes(1 << 20)
for s in socks[:garbage]:
    total = 0
    s.settimeout(5.0)
    try:
        s.sendall(header)
        while total < 400 << 20:
            total += s.send(blob)
    except OSError:
        pass
    sent.append(total)
print(json.dumps({"open": len(socks), "refused": refused, "sent": sent}), flush=True)
while not os.path.exists(stop):  # keep the rest open and idle
    time.sleep(0.05)
"""

PLANT = r"""
import json, os, socket, sys
folder, kind, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "dir":
    os.mkdir(folder)
    os.chmod(folder, 0o777)
    with open(os.path.join(folder, "daemon.json"), "w") as fh:
        json.dump({"endpoint": f"tcp://127.0.0.1:{port}", "pid": 1, "token": "attacker"}, fh)
else:
    os.mkdir(folder + ".target", 0o700)
    os.symlink(folder + ".target", folder)
print(json.dumps({"planted": folder}))
"""

FALLBACK = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import discovery as rundir  # standard library only: runs on a bare system Python
where = str(rundir.default_runtime_dir())
try:
    rundir.runtime_dir()
    print(json.dumps({"where": where, "ok": True}))
except rundir.RuntimeDirError as exc:
    print(json.dumps({"where": where, "ok": False, "error": str(exc)}))
"""


# ---- item 1 and 4 (local socket), item 7 ---------------------------------------------------------


def test_another_user_cannot_reach_the_socket_the_endpoint_file_or_the_log(other, weights):
    root = victim_root(other, "local")
    with DaemonProcess(root, weights) as run:
        assert run.info["endpoint"] == f"ipc://{root / 'runtime' / 'daemon.sock'}"
        log = root / "log"
        assert stat.S_IMODE(log.stat().st_mode) == 0o700  # item 7
        assert stat.S_IMODE((log / "daemon.log").stat().st_mode) == 0o600
        before = cpu_seconds(run.proc.pid)
        seen = other.run(REACH_SOCKET, str(root / "runtime"), str(log))
        assert seen["connect"] == {"EACCES": 1000}, seen
        assert set(seen["errors"].values()) == {"EACCES"}, seen["errors"]
        assert cpu_seconds(run.proc.pid) - before < 1.0
        with run.client(timeout=20) as client:
            assert client.ping()["pid"] == run.proc.pid
        assert run.stop(signal.SIGKILL) == -signal.SIGKILL
        seen = other.run(REACH_SOCKET, str(root / "runtime"), str(log))  # dead: still closed
        assert seen["errors"]["bind a socket in it"] == "EACCES"


# ---- item 1 (TCP): an impostor on a dead daemon's port -------------------------------------------


def test_an_impostor_on_a_dead_daemons_tcp_port_gets_no_token_and_no_pixels(
    other, weights, monkeypatch
):
    root = victim_root(other, "impostor")
    port = free_port()
    first = DaemonProcess(root, weights, "--port", str(port))
    info = first.info
    assert info["endpoint"] == f"tcp://127.0.0.1:{port}" and set(info["curve"]) == {
        "server_public",
        "client_public",
        "client_secret",
    }
    assert stat.S_IMODE(first.endpoint_file.stat().st_mode) == 0o600
    with first.client(timeout=20) as client:
        genuine = harmonize_with(client)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    # the daemon's guardian process removes the dead daemon's endpoint file; let it finish
    # first, or it may remove the file written below (it read the old pid before the write)
    deadline = time.monotonic() + 10
    while first.endpoint_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    # the worst case: the endpoint file survived the crash (no clean-up could run) and names
    # the port (another pid, so that nothing that cleans up after the dead daemon removes it)
    first.endpoint_file.write_text(json.dumps({**info, "pid": 4_000_000}))
    first.endpoint_file.chmod(0o600)
    capture = other.shared / "impostor-capture.txt"
    impostor = other.start(IMPOSTOR, str(port), str(capture))
    started = None
    try:
        assert json.loads(impostor.stdout.readline()) == {"listening": port}
        for key, value in daemon_env(root).items():
            if key.startswith("HARMONIZE_"):
                monkeypatch.setenv(key, value)
        settings = S.Settings(serve_command=SERVE, serve_args=["--weights", str(weights)])
        layer, mask, back = scene()
        result = S.harmonize(  # the plug-in's own path: ping, then start a genuine daemon
            layer.tobytes(), mask.tobytes(), back.tobytes(), 64, 48,
            S.wire_format("U8_NON_LINEAR"), settings=settings,
        )  # fmt: skip
        started = json.loads(first.endpoint_file.read_text())
        assert started["endpoint"].startswith("ipc://")  # the new one is local
        out = np.frombuffer(result.pixels, np.uint8).reshape(result.box.h, result.box.w, 4)
        assert np.array_equal(out, genuine)
    finally:
        impostor.kill()
        impostor.communicate(timeout=10)
        if started is not None:
            with Client.from_endpoint_file(first.endpoint_file, timeout=20) as client:
                client.shutdown()
    connections = [base64.b64decode(line) for line in capture.read_text().split()]
    assert connections, "the client did try the stale port"
    for got in connections:  # a ZMTP greeting asking for CURVE, then nothing
        assert len(got) <= 64 and got[:1] == b"\xff", got
        assert len(got) < 32 or got[12:17] == b"CURVE", got
        assert info["token"].encode() not in got


# ---- item 3: a planted runtime directory ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["dir", "symlink"])
def test_a_runtime_dir_planted_by_another_user_is_refused(other, kind, monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    planted = other.shared / f"planted-{kind}"
    other.run(PLANT, str(planted), kind, str(listener.getsockname()[1]))
    try:
        env = {**os.environ, "HARMONIZE_RUNTIME_DIR": str(planted)}
        serve = serve_once(env, "/nonexistent.pt")
        assert serve.returncode == 2 and "Traceback" not in serve.stderr
        (line,) = serve.stderr.strip().splitlines()
        why = "belongs to uid" if kind == "dir" else "symbolic link"
        assert line.startswith("harmonize: error: the runtime directory") and why in line
        monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(planted))
        settings = S.Settings(serve_command=SERVE)
        with pytest.raises(S.PluginError, match="not private to you"):
            S.harmonize(b"\0" * 4, b"\xff", b"\0" * 3, 1, 1, S.wire_format("U8"), settings=settings)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody was sent to the attacker's endpoint
    finally:
        listener.close()


def test_the_fallback_without_xdg_runtime_dir_is_checked_too(other):
    """The other user has no $XDG_RUNTIME_DIR and no /run/user/<uid> (as under su or cron):
    its runtime dir is /tmp/harmonize-<uid>, which a planted folder (here root's) blocks."""
    code = other.shared / "code"
    code.mkdir(mode=0o755, exist_ok=True)
    shutil.copy(
        ROOT / "backend" / "layer_harmonizer" / "wire" / "discovery.py", code / "discovery.py"
    )
    (code / "discovery.py").chmod(0o644)
    fallback = Path(f"/tmp/harmonize-{other.uid}")
    if Path(f"/run/user/{other.uid}").exists() or fallback.exists():
        pytest.skip(f"/run/user/{other.uid} or {fallback} exists already")
    try:
        fallback.mkdir(mode=0o700)  # planted by another user than the one who needs it
        seen = other.run(FALLBACK, str(code))
        assert seen["where"] == str(fallback) and not seen["ok"]
        assert f"belongs to uid 0, not to this user (uid {other.uid})" in seen["error"]
        fallback.rmdir()
        seen = other.run(FALLBACK, str(code))
        assert seen == {"where": str(fallback), "ok": True}
        st = fallback.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (other.uid, 0o700)
    finally:
        with contextlib.suppress(OSError):
            fallback.rmdir()


# ---- items 2 and 4 on TCP: memory and connections before authentication --------------------------


def test_unauthenticated_tcp_peers_cannot_inflate_memory_or_lock_clients_out(other, weights):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard < 4096:
        pytest.skip(f"the open-file hard limit is {hard}: too low to hold a 1000-connection flood")
    root = victim_root(other, "flood")
    stop = other.shared / "flood-stop"
    with DaemonProcess(root, weights, "--port", str(free_port())) as run:
        port = int(run.info["endpoint"].rsplit(":", 1)[1])
        with run.client(timeout=30) as client:
            expected = harmonize_with(client, seed=1)  # warm
        before = run.rss()
        flood = other.start(FLOOD, str(port), "1000", "4", str(stop))
        try:
            report = json.loads(flood.stdout.readline())
            print(f"flood: {report['open']} connections, bytes accepted {report['sent']}")
            assert report["open"] >= 990, report
            assert all(sent < 64 << 20 for sent in report["sent"]), report  # dropped, not read
            assert run.rss() - before < 50 << 20
            cpu = cpu_seconds(run.proc.pid)
            time.sleep(3.0)  # 1000 idle connections: no core spinning
            assert cpu_seconds(run.proc.pid) - cpu < 1.0
            with run.client(timeout=30, retries=0) as client:  # not locked out
                assert client.ping()["pid"] == run.proc.pid
                assert np.array_equal(harmonize_with(client, seed=1), expected)
        finally:
            stop.touch()
            flood.communicate(timeout=30)

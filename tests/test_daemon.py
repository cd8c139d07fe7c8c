"""A real ``harmonize serve`` subprocess over TCP: discovery, concurrency, hostile input,
killed clients, killed and restarted daemons, SIGTERM, auto-start with idle timeout.

Every daemon runs with its runtime/log/data dirs in tmp (HARMONIZE_*_DIR) and random
aict-light weights, so nothing touches the user's files and no trained weights are needed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
import zmq

from layer_harmonizer import cli
from layer_harmonizer.daemon.engine import Engine
from layer_harmonizer.model import create_model
from layer_harmonizer.model.weights import save_weights
from layer_harmonizer.pipeline import load_model
from layer_harmonizer.wire import messages as M
from layer_harmonizer.wire import protocol as P
from layer_harmonizer.wire import receive as R
from layer_harmonizer.wire import shm
from layer_harmonizer.wire.client import Client, DaemonError, ensure_daemon
from tests.daemon_process import SERVE, DaemonProcess, daemon_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    model = create_model("aict-light")
    with torch.no_grad():  # away from the identity the training init starts at
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    path = tmp_path_factory.mktemp("weights") / "random-light.pt"
    save_weights(path, model, "aict-light", {"note": "random, tests only"})
    return path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, weights):
    run = DaemonProcess(tmp_path_factory.mktemp("daemon"), weights)
    yield run
    assert run.stop() == 0, run.output()
    assert not run.endpoint_file.exists()


@pytest.fixture(scope="module")
def engine(weights):
    """The same weights in this process: the reference every daemon reply must equal."""
    return Engine(load_model(weights, device="cpu"))


def payload(seed: int, h: int, w: int, dtype: str):
    rng = np.random.default_rng(seed)
    full = {"uint8": 255, "uint16": 65535}.get(dtype, 1.0)
    layer = (rng.random((h, w, 4)) * full).astype(dtype)
    mask = np.zeros((h, w), np.float32)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask[y : y + h // 2, x : x + w // 3] = rng.uniform(0.3, 1.0)
    back = (rng.random((h, w, 3)) * full).astype(dtype)
    return {"layer": layer, "mask": mask, "backdrop": back}


def remote(client: Client, frames: dict, **options) -> np.ndarray:
    pix = {k: P.Pixels.of(v) for k, v in frames.items()}
    result = client.harmonize(pix["layer"], pix["mask"], pix["backdrop"], **options)
    out = np.frombuffer(result.pixels.data, result.pixels.dtype).reshape(result.pixels.shape)
    return np.concatenate([np.array(result.offset, np.float64), out.ravel().astype(np.float64)])


def local(engine: Engine, frames: dict, **options) -> np.ndarray:
    out, offset, _ = engine.run(frames, M.HarmonizeOptions(**options), lambda *a, **k: None)
    return np.concatenate([np.array(offset, np.float64), out.ravel().astype(np.float64)])


def test_ping_cli_and_second_serve_says_so(daemon, weights, monkeypatch, capsys):
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(daemon.endpoint_file.parent))
    assert cli.main(["ping"]) == 0
    out = capsys.readouterr().out
    assert f"pid {daemon.proc.pid}" in out and "variant aict-light" in out
    assert ("by frames or shm" if shm.available() else "by frames") in out
    assert oct(daemon.endpoint_file.stat().st_mode & 0o777) == "0o600"
    second = subprocess.run(
        [*SERVE, "--weights", str(weights)],
        cwd=ROOT,
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    assert f"already running at {daemon.info['endpoint']}" in second.stdout
    assert daemon.info["pid"] == daemon.proc.pid  # the file was left alone


def test_concurrent_clients_get_correct_replies(daemon, engine):
    sizes = [
        (24, 40, "uint8"),
        (64, 48, "uint16"),
        (130, 90, "float32"),
        (200, 260, "uint8"),
        (33, 300, "uint8"),
        (256, 256, "uint16"),
        (90, 70, "float32"),
        (150, 120, "uint8"),
    ]
    cases = [payload(i, *size) for i, size in enumerate(sizes)]
    strengths = (1.0, 0.6, 0.2)
    expected = {
        (i, s): local(engine, case, strength=s) for i, case in enumerate(cases) for s in strengths
    }
    failures: list[str] = []

    def worker(index: int) -> None:
        rng = random.Random(index)
        try:
            with daemon.client() as client:
                for n in range(50):
                    key = (rng.randrange(len(cases)), rng.choice(strengths))
                    got = remote(client, cases[key[0]], strength=key[1])
                    if not np.array_equal(got, expected[key]):
                        failures.append(f"client {index} request {n} {key}: wrong result")
        except Exception as exc:
            failures.append(f"client {index}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, failures[:5]


def hostile(rng: random.Random, token: str, good: list, segment: dict) -> list:
    """One generated message: a random kind of malformed, lying or unauthorised input.
    ``segment``: the valid ``"shm"`` description of a real segment holding ``good``'s frames."""
    env = {"version": list(P.PROTOCOL_VERSION), "id": rng.randbytes(6).hex(), "type": P.PING}
    env["token"] = token
    env["parent"] = None
    kind = rng.randrange(14)
    if kind == 0:  # random frames
        return [rng.randbytes(rng.randrange(0, 2000)) for _ in range(rng.randrange(1, 6))]
    if kind == 1:  # truncated envelope
        raw = msgpack.packb(env)
        return [raw[: rng.randrange(len(raw))], b"\x80"]
    if kind == 2:  # oversized envelope
        return [msgpack.packb({**env, "token": "x" * rng.randrange(5000, 20000)}), b"\x80"]
    if kind in (3, 4):  # lying shapes / huge declared sizes
        env_b, body, *frames = good
        spec = msgpack.unpackb(body)
        frame = rng.randrange(len(frames))
        if kind == 3:
            spec["frames"][frame]["shape"][rng.randrange(2)] += rng.choice((-1, 1, 7))
        else:
            spec["frames"][frame]["shape"][:2] = [rng.randrange(1, 1 << 31)] * 2
        if rng.random() < 0.5:
            spec["frames"][frame]["dtype"] = rng.choice(["float64", "int8", "", None, 3])
        return [env_b, msgpack.packb(spec), *frames]
    if kind == 5:  # wrong token
        return P.pack(P.PING, token=rng.randbytes(8).hex())
    if kind == 6:  # other versions
        return P.pack(P.PING, token=token, version=(rng.randrange(2, 9), 0))
    if kind == 7:  # unknown type
        return P.pack(rng.choice(["", "x" * 300, "hello", "harmonize"]), token=token)
    if kind == 8:  # random msgpack values as envelope and body
        value = rng.choice([1, -5, "s", [1, [2]], {"id": 5}, None, 1.5, b"b" * 40, {1: 2}])
        return [msgpack.packb(value), msgpack.packb(value)]
    if kind == 9:  # too many frames
        return [msgpack.packb(env), msgpack.packb({}), *[b"\0" * 16] * rng.randrange(5, 12)]
    if kind == 10:  # bodies that are not maps / not msgpack / bad options
        body = rng.choice([b"\xc1", b"\x93\x01", msgpack.packb({"options": {"strength": "all"}})])
        return [msgpack.packb({**env, "type": P.HARMONIZE}), body, *good[2:]]
    if kind == 11:  # envelope fields of the wrong type or size
        field = rng.choice(["id", "version", "type", "token", "parent"])
        env[field] = rng.choice([None, 12, [1, 2, 3], "i" * 200, {"a": 1}, -1])
        return [msgpack.packb(env), msgpack.packb({})]
    if kind == 12:  # shared-memory descriptions that lie about names, offsets and sizes
        desc = json.loads(json.dumps(segment))
        where = rng.choice(["name", "pid", "fd", "size", "offset", "shape", "result"])
        if where == "name":
            desc["name"] = rng.choice(["../" * 5 + "etc/passwd", "x", desc["name"][:-1] + "0"])
        elif where == "pid":  # our parent, init, no such process, not a pid
            desc["pid"] = rng.choice([os.getppid(), 1, (1 << 31) - 1, 0, "1"])
        elif where == "fd":  # this process's stdin/stdout, a socket, not an fd
            desc["fd"] = rng.choice([0, 1, 2, desc["fd"] + 1, -1, 1 << 40])
        elif where == "size":
            desc["size"] = rng.choice([0, -1, 1 << 62, desc["size"] + 4096, "big"])
        elif where == "offset":
            desc["frames"][rng.randrange(3)]["offset"] = rng.randrange(-8, 1 << 34)
        elif where == "shape":
            desc["frames"][rng.randrange(3)]["shape"] = [rng.randrange(1, 1 << 20)] * 3
        else:
            offset, capacity = rng.randrange(0, 1 << 20), rng.randrange(1 << 24)
            desc["result"] = {"offset": offset, "capacity": capacity}
        return P.pack(P.HARMONIZE, {"shm": desc}, token=token)
    return [b"", *P.pack(P.PING, token=token)]  # REQ-style delimiter before a valid ping


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from /proc")
def test_hostile_input_never_crashes_the_daemon(tmp_path, weights):
    """10,000 generated messages (plus oversized frames) from several sockets: every one is
    answered or dropped, RSS grows by less than 50 MB, and ping still works."""
    run = DaemonProcess(tmp_path, weights, HARMONIZE_MAX_PIXELS="1000000")  # 16 MB frame limit
    ctx = zmq.Context.instance()
    socks = [ctx.socket(zmq.DEALER) for _ in range(4)]
    segment = None
    try:
        token, endpoint = run.info["token"], run.info["endpoint"]
        for sock in socks:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
        layer, mask, back = (P.Pixels.of(v) for v in payload(0, 40, 30, "uint8").values())
        frames = M.harmonize_frames(layer, mask, back)
        good = P.pack(P.HARMONIZE, {}, frames, token=token)
        offsets, size = shm.plan({n: pix.nbytes for n, pix in frames.items()})
        segment = shm.Segment(size, 40 * 30 * 4)
        for name, pix in frames.items():
            segment.write(offsets[name], pix.data)
        described = segment.describe(offsets, frames)
        rng = random.Random(1234)
        replies = 0

        def blast(count: int) -> None:
            nonlocal replies
            for n in range(count):
                socks[n % 4].send_multipart(hostile(rng, token, good, described))
                for sock in socks:
                    while sock.poll(0):
                        sock.recv_multipart()
                        replies += 1

        blast(500)  # warm-up: allocator pools, first imports of error paths
        time.sleep(0.5)
        before = run.rss()
        start = time.monotonic()
        blast(10_000)
        for _ in range(5):  # frames over MAXMSGSIZE: libzmq drops the connection
            socks[0].send_multipart([msgpack.packb({}), b"\0" * (17 << 20)])
        time.sleep(1.0)
        for sock in socks:
            while sock.poll(200):
                sock.recv_multipart()
                replies += 1
        elapsed = time.monotonic() - start
        growth = run.rss() - before
        assert run.proc.poll() is None, run.output()
        assert replies > 8_000  # nearly every message got a structured error (or a reply)
        assert growth < 50 << 20, f"RSS grew by {growth >> 20} MB"
        with run.client(timeout=10, retries=1) as client:
            assert client.ping()["pid"] == run.proc.pid
            assert client.harmonize(layer, mask, back).pixels.shape[2] == 4
        print(
            f"hostile: 10500 messages in {elapsed:.1f} s, {replies} replies, "
            f"RSS {before >> 20} -> {(before + growth) >> 20} MB"
        )
    finally:
        for sock in socks:
            sock.close(linger=0)
        assert run.stop() == 0, run.output()
        if segment is not None:
            segment.close()


CLIENT_SCRIPT = """
import sys, numpy as np
from layer_harmonizer.wire.client import Client
from layer_harmonizer.wire.protocol import Pixels
c = Client.from_endpoint_file(sys.argv[1], timeout=60)
layer = np.random.default_rng(0).integers(0, 255, (1500, 1500, 4), dtype=np.uint8)
mask = np.full((1500, 1500), 200, np.uint8)
def progress(event):
    print(event["stage"], flush=True)
c.harmonize(Pixels.of(layer), Pixels.of(mask), Pixels.of(layer[..., :3].copy()),
            crop_margin=None, on_progress=progress)
"""


def test_client_killed_mid_request(daemon, engine):
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT_SCRIPT, str(daemon.endpoint_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )

    def segments(pid: int) -> list[str]:
        """The memfd segments process ``pid`` holds open or mapped."""
        maps = Path(f"/proc/{pid}/maps").read_text()
        fds = []
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                fds.append(os.readlink(fd))
        return [line for line in [*maps.splitlines(), *fds] if "/memfd:harmonize-" in line]

    try:
        assert proc.stdout.readline().strip() == "received"
        assert segments(proc.pid), "the client sends through shared memory"
    finally:
        proc.kill()
        proc.wait(30)
        proc.stdout.close()
    case = payload(42, 80, 60, "uint8")
    with daemon.client() as client:
        assert client.ping()["pid"] == daemon.proc.pid
        assert np.array_equal(remote(client, case), local(engine, case))
    deadline = time.monotonic() + 10  # the dead client's segment: the daemon unmaps it
    while segments(daemon.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not segments(daemon.proc.pid)  # so the kernel frees its memory


def test_run_daemon_matches_in_process_run(daemon, weights, tmp_path, monkeypatch):
    import cv2

    rng = np.random.default_rng(5)
    image = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    mask = np.zeros((70, 90), np.uint8)
    mask[20:50, 30:70] = 255
    cv2.imwrite(str(tmp_path / "c.png"), image)
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(daemon.endpoint_file.parent))
    common = [str(tmp_path / "c.png"), str(tmp_path / "m.png"), "--strength", "0.7"]
    assert cli.main(["run", *common, "-o", str(tmp_path / "d.png"), "--daemon"]) == 0
    assert cli.main(["run", *common, "-o", str(tmp_path / "l.png"), "--weights", str(weights)]) == 0
    remote_out, local_out = cv2.imread(str(tmp_path / "d.png")), cv2.imread(str(tmp_path / "l.png"))
    assert np.array_equal(remote_out, local_out)
    assert not np.array_equal(remote_out, cv2.imread(str(tmp_path / "c.png")))


def test_daemon_killed_and_restarted_client_reconnects(tmp_path, weights, engine):
    first = DaemonProcess(tmp_path, weights)
    client = first.client(timeout=2.0, retries=15)
    try:
        case = payload(7, 60, 50, "uint16")
        assert np.array_equal(remote(client, case), local(engine, case))
        old = first.info
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        deadline = time.monotonic() + 20  # the guardian removes the dead daemon's file
        while first.endpoint_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not first.endpoint_file.exists()
        second = DaemonProcess(tmp_path, weights)
        try:
            assert second.info["token"] != old["token"]
            assert np.array_equal(
                remote(client, case, strength=0.5), local(engine, case, strength=0.5)
            )
            assert client.endpoint == second.info["endpoint"]
        finally:
            assert second.stop() == 0
    finally:
        client.close()


def test_sigterm_during_a_job_exits_cleanly(tmp_path, weights):
    run = DaemonProcess(tmp_path, weights)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(run.info["endpoint"])
        frames = {k: P.Pixels.of(v) for k, v in payload(3, 2000, 2000, "uint8").items()}
        request = P.pack(
            P.HARMONIZE,
            {"options": {"crop_margin": None}},
            frames,
            token=run.info["token"],
            msg_id="big",
        )
        sock.send_multipart(request, copy=False)
        assert sock.poll(30_000)
        assert R.unpack(sock.recv_multipart(), local="client").body["stage"] == "received"
        run.proc.send_signal(signal.SIGTERM)
        final = None
        while final is None and sock.poll(40_000):
            msg = R.unpack(sock.recv_multipart(), local="client")
            if msg.type != P.PROGRESS:
                final = msg
        assert final is not None and final.parent == "big"
        assert final.type == "harmonize_reply" or final.body["code"] in (
            "cancelled",
            "shutting_down",
        )
        assert run.proc.wait(40) == 0
        assert not run.endpoint_file.exists()
        assert "received SIGTERM" in (tmp_path / "log" / "daemon.log").read_text()
    finally:
        sock.close(linger=0)
        run.stop()


def test_ensure_daemon_starts_one_that_exits_when_idle(tmp_path, weights, monkeypatch):
    for key, value in daemon_env(tmp_path).items():
        if key.startswith("HARMONIZE_"):
            monkeypatch.setenv(key, value)
    path = tmp_path / "runtime" / "daemon.json"
    with pytest.raises(DaemonError) as info:
        Client.from_endpoint_file(path)
    assert info.value.code == "no_daemon"
    start = ["--weights", str(weights)]
    with ensure_daemon(command=SERVE, args=start, idle_timeout=3, timeout=10) as client:
        pid = client.ping()["pid"]
    with ensure_daemon(command=SERVE, args=start, idle_timeout=3) as again:  # found, not started
        assert again.ping()["pid"] == pid
    deadline = time.monotonic() + 30
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not path.exists(), "the idle daemon did not exit"
    with pytest.raises(DaemonError) as info:
        ensure_daemon(command=SERVE, args=["--weights", str(tmp_path / "missing.pt")])
    assert info.value.code == "no_daemon" and "does not exist" in info.value.message


def test_a_client_cannot_truncate_its_segment_mid_job(tmp_path, weights):
    """Once a SIGBUS that killed the daemon: a same-user client tries to truncate its segment
    while its job waits behind a long one. The segment is sealed against shrinking, so the
    client's ftruncate fails with EPERM, the job gets its result, and the daemon keeps serving
    and its endpoint file."""
    run = DaemonProcess(tmp_path, weights)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    segment = None
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(run.info["endpoint"])
        token = run.info["token"]
        big = np.random.default_rng(0).integers(0, 256, (4096, 4096, 4), dtype=np.uint8)
        mask = np.full((4096, 4096), 200, np.uint8)
        long_job = M.harmonize_frames(
            P.Pixels.of(big), P.Pixels.of(mask), P.Pixels.of(np.ascontiguousarray(big[..., :3]))
        )
        body = {"options": {"crop_margin": None}}
        sock.send_multipart(P.pack(P.HARMONIZE, body, long_job, token=token, msg_id="long"))
        small = {k: P.Pixels.of(v) for k, v in payload(1, 40, 30, "uint8").items()}
        offsets, size = shm.plan({n: pix.nbytes for n, pix in small.items()})
        segment = shm.Segment(size, 40 * 30 * 4)
        for name, pix in small.items():
            segment.write(offsets[name], pix.data)
        desc = segment.describe(offsets, small)
        sock.send_multipart(P.pack(P.HARMONIZE, {"shm": desc}, token=token, msg_id="cut"))
        finals: dict[str, P.Message] = {}
        refused: list[int] = []
        while len(finals) < 2 and sock.poll(120_000):
            msg = R.unpack(sock.recv_multipart(), local="client")
            if (msg.parent, msg.body.get("stage")) == ("cut", "received"):
                try:  # accepted, mapped, queued behind the long job
                    os.ftruncate(segment.fd, 0)
                except OSError as exc:
                    refused.append(exc.errno)
            elif msg.type != P.PROGRESS:
                finals[msg.parent] = msg
        assert refused == [errno.EPERM]
        assert finals["long"].type == "harmonize_reply", finals["long"].body
        assert finals["cut"].type == "harmonize_reply", finals["cut"].body
        assert run.proc.poll() is None and run.endpoint_file.exists(), run.output()
        with run.client(timeout=30, retries=0) as client:
            assert client.ping()["pid"] == run.proc.pid
    finally:
        sock.close(linger=0)
        assert run.stop() == 0, run.output()
        if segment is not None:
            segment.close()
    assert "Fatal Python error" not in (tmp_path / "log" / "daemon.log").read_text()


def test_a_fatal_signal_is_logged_and_the_endpoint_file_removed(tmp_path, weights):
    """faulthandler writes every thread's stack into the daemon log, and the guardian process
    removes the endpoint file the dead daemon could not remove itself."""
    run = DaemonProcess(tmp_path, weights)
    with run.client(timeout=30, retries=0) as client:  # serving: the worker thread runs
        assert client.ping()["pid"] == run.proc.pid
    assert run.stop(signal.SIGSEGV) == -signal.SIGSEGV
    deadline = time.monotonic() + 20
    while run.endpoint_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not run.endpoint_file.exists()
    log = (tmp_path / "log" / "daemon.log").read_text()
    assert "Fatal Python error: Segmentation fault" in log
    assert "Thread 0x" in log  # all threads: the worker's and the main loop's stacks

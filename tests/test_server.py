"""layer_harmonizer.daemon.server in-process (a thread, ipc:// in a private temporary folder, or TCP
with CURVE) with a random aict-light model: request handling, crop, cache, progress, cancel,
structured errors, the hello proof."""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
import zmq

from layer_harmonizer.compose import composite, crop_box
from layer_harmonizer.daemon.engine import Engine
from layer_harmonizer.daemon.server import Server, ServerConfig, check_host
from layer_harmonizer.errors import HarmonizeError
from layer_harmonizer.model import create_model
from layer_harmonizer.pipeline import apply_prediction, harmonize, predict
from layer_harmonizer.wire import messages as M
from layer_harmonizer.wire import protocol as P
from layer_harmonizer.wire import receive as R
from layer_harmonizer.wire.client import Client, DaemonError
from layer_harmonizer.wire.connection import BUSY_RETRY_S, REPLY_LIMITS, secure_socket


def random_model(seed: int):
    """aict-light with random weights that do not start at the identity (training init does):
    the tests need a network whose output depends on its input."""
    torch.manual_seed(seed)
    model = create_model("aict-light").eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def model():
    return random_model(0)


class Running:
    """A server thread plus a client; ``raw()`` gives a bare DEALER for hand-made messages.

    It listens on ``ipc://`` in a private temporary folder, as ``harmonize serve`` does by
    default; ``ipc_path=None`` makes it a TCP + CURVE server instead."""

    def __init__(self, engine: Engine, **config) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="hz-"))  # mode 0700, a short socket path
        config.setdefault("ipc_path", self.folder / "daemon.sock")
        self.server = Server(engine, ServerConfig(**config))
        self.endpoint = self.server.bind()
        self.token = self.server.config.token
        self.curve = self.server.curve
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.client = Client(self.endpoint, self.token, timeout=20, retries=0, curve=self.curve)
        self.sockets: list[zmq.Socket] = []

    def raw(self) -> zmq.Socket:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            secure_socket(sock, self.endpoint, self.curve)
        sock.connect(self.endpoint)
        self.sockets.append(sock)
        return sock

    def close(self) -> None:
        self.server.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.client.close()
        for sock in self.sockets:
            sock.close(linger=0)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def running(model):
    run = Running(Engine(model))
    yield run
    run.close()


def recv(sock: zmq.Socket, timeout: float = 20.0) -> P.Message:
    assert sock.poll(int(timeout * 1000)), "no reply"
    return R.unpack(sock.recv_multipart(), local="client")


def recv_final(sock: zmq.Socket, parent: str) -> P.Message:
    while True:
        msg = recv(sock)
        if msg.parent == parent and msg.type != P.PROGRESS:
            return msg


def scene(h=96, w=128, dtype=np.uint8, alpha="opaque", seed=0):
    """A layer (H, W, 4), a mask with a rectangular object, and a backdrop (H, W, 3)."""
    rng = np.random.default_rng(seed)
    full = {np.uint8: 255, np.uint16: 65535}.get(dtype, 1.0)

    def noise(*shape):
        return (rng.random(shape) * full).astype(dtype)

    layer = noise(h, w, 4)
    mask = np.zeros((h, w), dtype)
    mask[h // 3 : h // 3 + h // 4, w // 4 : w // 2] = full
    if alpha == "opaque":
        layer[..., 3] = full
    elif alpha == "soft":
        layer[..., 3] = noise(h, w)
        mask = mask.astype(np.float64) / full * layer[..., 3] / full  # alpha x selection
        mask = (mask * full).astype(dtype) if full != 1.0 else mask.astype(np.float32)
    return layer, mask, noise(h, w, 3)


def send_harmonize(client, layer, mask, back, **options):
    return client.harmonize(P.Pixels.of(layer), P.Pixels.of(mask), P.Pixels.of(back), **options)


def as_array(pix: P.Pixels) -> np.ndarray:
    return np.frombuffer(pix.data, dtype=pix.dtype).reshape(pix.shape)


def test_hello_reports_versions_device_and_weights(running):
    info = running.client.hello()
    assert info["protocol_version"] == list(P.PROTOCOL_VERSION)
    assert info["device"] == "cpu" and info["variant"]
    assert info["free_memory"] is None or info["free_memory"] > 0
    assert running.client.ping()["pid"] == info["pid"]


def test_opaque_layer_matches_in_process_harmonize_on_the_crop(running, model):
    layer, mask, back = scene()
    result = send_harmonize(running.client, layer, mask, back, strength=0.8)
    x0, y0, x1, y1 = crop_box(mask, M.DEFAULT_CROP_MARGIN, M.MIN_CROP_MARGIN_PX)
    assert result.offset == (x0, y0)
    out = as_array(result.pixels)
    assert out.shape == (y1 - y0, x1 - x0, 4) and out.dtype == np.uint8
    rgb, m = layer[y0:y1, x0:x1, :3], mask[y0:y1, x0:x1]
    # opaque layer + binary mask: composite == layer inside the mask, so the network input and
    # the recoloured pixels are those of pipeline.harmonize on the composite crop
    expected = harmonize(
        composite(rgb, m / 255.0, back[y0:y1, x0:x1]), m, model=model, strength=0.8
    )
    inside = m > 0
    assert np.array_equal(out[..., :3][inside], expected[inside])
    assert np.array_equal(out[..., :3][~inside], rgb[~inside])  # outside: the layer, untouched
    assert np.array_equal(out[..., 3], layer[y0:y1, x0:x1, 3])
    assert not np.array_equal(out[..., :3][inside], rgb[inside])  # something did change


def test_crop_box_pads_by_a_fraction_of_the_object_and_clamps():
    mask = np.zeros((200, 300), np.float32)
    mask[50:90, 100:180] = 0.5  # 80 x 40 object: margin max(16, ceil(0.25 * 80)) = 20
    assert crop_box(mask, 0.25, 16) == (80, 30, 200, 110)
    assert crop_box(mask, 0.0, 16) == (84, 34, 196, 106)
    assert crop_box(mask, 3.0, 16) == (0, 0, 300, 200)
    assert crop_box(mask, None, 16) == (0, 0, 300, 200)
    assert crop_box(np.zeros((4, 4), np.float32), 0.25, 16) is None


def test_soft_alpha_recolours_by_selection_and_keeps_alpha(running, model):
    layer, mask, back = scene(dtype=np.float32, alpha="soft", seed=3)
    result = send_harmonize(running.client, layer, mask, back, crop_margin=None)
    assert result.offset == (0, 0)
    out = as_array(result.pixels)
    alpha = layer[..., 3]
    comp = composite(layer[..., :3], mask, back)
    maps = predict(comp, mask, model=model)
    weight = np.divide(mask, alpha, out=np.zeros_like(mask), where=alpha > 0).clip(0, 1)
    expected = apply_prediction(np.ascontiguousarray(layer[..., :3]), weight, maps)
    np.testing.assert_allclose(out[..., :3], expected, atol=1e-6)
    assert np.array_equal(out[..., 3], alpha)


def test_new_strength_reuses_the_cached_prediction(running, model):
    layer, mask, back = scene(seed=5)
    first = send_harmonize(running.client, layer, mask, back, strength=1.0)
    second = send_harmonize(running.client, layer, mask, back, strength=0.25)
    assert not first.cached and second.cached
    x0, y0, x1, y1 = crop_box(mask, M.DEFAULT_CROP_MARGIN, M.MIN_CROP_MARGIN_PX)
    rgb, m = layer[y0:y1, x0:x1, :3], mask[y0:y1, x0:x1]
    expected = harmonize(
        composite(rgb, m / 255.0, back[y0:y1, x0:x1]), m, model=model, strength=0.25
    )
    assert np.array_equal(as_array(second.pixels)[..., :3][m > 0], expected[m > 0])
    # another backdrop is another network input: no cache hit
    third = send_harmonize(running.client, layer, mask, back[::-1].copy(), strength=0.25)
    assert not third.cached


def test_progress_events_in_order(running):
    layer, mask, back = scene(seed=7)
    events: list[dict] = []
    send_harmonize(running.client, layer, mask, back, on_progress=events.append)
    stages = [e["stage"] for e in events if e["stage"] != "alive"]  # heartbeats may interleave
    assert stages == ["received", "composed", "predicted", "applied"]


def test_long_jobs_send_heartbeats(model, monkeypatch):
    from layer_harmonizer.daemon import server

    monkeypatch.setattr(server, "HEARTBEAT_S", 0.1)
    run = Running(GatedEngine(model))
    try:
        layer, mask, back = scene(seed=29)
        events: list[dict] = []

        def on_progress(event):
            events.append(event)
            if event["stage"] == "alive" and event["state"] == "running":
                run.server.engine.gate.set()

        run.client.timeout = 1.0  # shorter than the job: only heartbeats keep it waiting
        result = send_harmonize(run.client, layer, mask, back, on_progress=on_progress)
        assert result.pixels.shape[2] == 4
        assert {"stage": "alive", "state": "running"} in events
    finally:
        run.server.engine.gate.set()
        run.close()


@pytest.mark.parametrize(
    ("dtype", "options", "channels", "out_dtype"),
    [
        (np.uint16, {}, 4, "uint16"),
        (np.uint8, {"dtype": "float32"}, 4, "float32"),
        (np.float32, {"dtype": "uint8", "output": "rgb"}, 3, "uint8"),
    ],
)
def test_output_dtype_and_channels(running, dtype, options, channels, out_dtype):
    layer, mask, back = scene(dtype=dtype, seed=11)
    result = send_harmonize(running.client, layer, mask, back, **options)
    assert result.pixels.dtype == out_dtype and result.pixels.shape[2] == channels


def test_rgb_layer_is_treated_as_opaque(running):
    layer, mask, back = scene(seed=12)
    result = send_harmonize(running.client, np.ascontiguousarray(layer[..., :3]), mask, back)
    assert np.all(as_array(result.pixels)[..., 3] == 255)


def _spec(name, shape, dtype="uint8"):
    return {"name": name, "shape": list(shape), "dtype": dtype}


def test_errors_are_structured_and_the_daemon_keeps_serving(running):
    sock, token = running.raw(), running.token
    layer, mask, back = scene(seed=13)

    def ask(parts):
        sock.send_multipart(parts)
        reply = recv(sock)
        while reply.type == P.PROGRESS:
            reply = recv(sock)
        assert reply.type == P.ERROR and set(reply.body) == {"code", "message"}
        return reply.body["code"], reply.body["message"], reply.parent

    assert ask(P.pack(P.PING, token="nope", msg_id="q1"))[::2] == ("unauthorized", "q1")
    assert ask(P.pack("frobnicate_request", token=token))[0] == "unknown_type"
    code, text, _ = ask(P.pack(P.PING, token=token, version=(3, 0)))
    assert code == "unsupported_version" and "update the daemon" in text
    code, text, _ = ask(P.pack(P.PING, token=token, version=(1, 1)))  # a protocol 1 plugin
    assert code == "unsupported_version" and "update the plugin" in text
    assert ask([b"\x00\xff", b"junk"])[0] == "bad_message"
    assert ask([b"only one part"])[0] == "bad_message"
    frames = M.harmonize_frames(P.Pixels.of(layer), P.Pixels.of(mask), P.Pixels.of(back))
    lying = P.pack(P.HARMONIZE, {}, frames, token=token)
    env, body, *data = lying
    spec = msgpack.unpackb(body)
    spec["frames"][0]["shape"] = [96, 129, 4]
    assert ask([env, msgpack.packb(spec), *data])[0] == "bad_frames"
    small = P.Pixels.of(np.ascontiguousarray(mask[:50]))
    other = M.harmonize_frames(P.Pixels.of(layer), small, P.Pixels.of(back))
    code, text, _ = ask(P.pack(P.HARMONIZE, {}, other, token=token))
    assert code == "bad_frames" and "same size" in text
    only = {"layer": P.Pixels.of(layer)}
    assert ask(P.pack(P.HARMONIZE, {}, only, token=token))[0] == "bad_frames"
    empty = M.harmonize_frames(P.Pixels.of(layer), P.Pixels.of(mask * 0), P.Pixels.of(back))
    assert ask(P.pack(P.HARMONIZE, {}, empty, token=token))[0] == "empty_mask"
    nan = layer.astype(np.float32) / 255
    nan[40, 40, 0] = math.nan
    bad = M.harmonize_frames(P.Pixels.of(nan), P.Pixels.of(mask), P.Pixels.of(back))
    code, text, _ = ask(P.pack(P.HARMONIZE, {}, bad, token=token))
    assert code == "invalid_input" and "NaN" in text
    opts = {"options": {"strength": 2}}
    assert ask(P.pack(P.HARMONIZE, opts, frames, token=token))[0] == "invalid_input"
    assert ask(P.pack(P.CANCEL, {"id": "nothing"}, token=token))[0] == "not_found"
    # the Client turns the same replies into DaemonError with the code
    with pytest.raises(DaemonError) as info:
        send_harmonize(running.client, layer, mask * 0, back)
    assert info.value.code == "empty_mask"
    assert running.client.ping()["pid"]


def test_req_sockets_are_answered_too(running):
    """A REQ peer adds an empty delimiter frame; replies must keep it."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(running.endpoint)
        sock.send_multipart(P.pack(P.PING, token=running.token, msg_id="r1"))
        assert sock.poll(10_000)
        reply = R.unpack(sock.recv_multipart(), local="client")
        assert (reply.type, reply.parent) == ("ping_reply", "r1")
    finally:
        sock.close(linger=0)


class GatedEngine(Engine):
    """An engine whose jobs wait at their first checkpoint until the test opens the gate."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.gate = threading.Event()

    def run(self, frames, options, checkpoint, destination=None, **kw):
        def gated(stage, **info):
            checkpoint(stage, **info)
            assert self.gate.wait(20)
            checkpoint(stage, **info)  # cancellation is seen here

        return super().run(frames, options, gated, destination, **kw)


def test_cancel_queued_and_running_jobs_while_ping_is_answered(model):
    run = Running(GatedEngine(model), max_queue=2)
    try:
        sock, token = run.raw(), run.token
        layer, mask, back = scene(seed=17)
        frames = M.harmonize_frames(P.Pixels.of(layer), P.Pixels.of(mask), P.Pixels.of(back))
        for job in ("a", "b", "c"):
            sock.send_multipart(P.pack(P.HARMONIZE, {}, frames, token=token, msg_id=job))
        seen: dict[str, list] = {"a": [], "b": [], "c": []}
        deadline = time.monotonic() + 20
        while not (seen["c"] and any(e.get("stage") == "composed" for e in seen["a"])):
            assert time.monotonic() < deadline
            msg = recv(sock)
            seen[msg.parent].append(msg.body if msg.type == P.PROGRESS else msg.body["code"])
        assert seen["c"] == ["busy"]  # queue limit 2: a running + b queued
        assert run.client.ping()["queued"] == 1  # answered while a job runs
        assert run.client.cancel("b") is True
        assert recv_final(sock, "b").body["code"] == "cancelled"
        assert run.client.cancel("a") is True
        run.server.engine.gate.set()
        assert recv_final(sock, "a").body["code"] == "cancelled"
        assert run.server.jobs == {}
        # the worker is free again
        result = send_harmonize(run.client, layer, mask, back)
        assert result.pixels.shape[2] == 4
    finally:
        run.server.engine.gate.set()
        run.close()


def test_client_cancel_event_cancels_its_own_job(model):
    run = Running(GatedEngine(model))
    try:
        layer, mask, back = scene(seed=19)
        cancel = threading.Event()

        def on_progress(event):
            if event["stage"] == "composed":
                cancel.set()
                threading.Timer(0.3, run.server.engine.gate.set).start()

        with pytest.raises(DaemonError) as info:
            send_harmonize(run.client, layer, mask, back, on_progress=on_progress, cancel=cancel)
        assert info.value.code == "cancelled"
    finally:
        run.server.engine.gate.set()
        run.close()


def test_shutdown_request_stops_the_loop(model):
    run = Running(Engine(model))
    run.client.shutdown()
    run.thread.join(10)
    assert not run.thread.is_alive()
    run.close()


def test_idle_timeout_stops_the_loop(model):
    run = Running(Engine(model), idle_timeout=0.5)
    run.thread.join(10)
    assert not run.thread.is_alive()
    run.close()


def test_remote_hosts_need_allow_remote():
    check_host("127.0.0.1", False)
    check_host("::1", False)
    check_host("localhost", False)
    for host in ("0.0.0.0", "192.168.1.4", "*", "example.org"):
        with pytest.raises(HarmonizeError, match="--allow-remote"):
            check_host(host, False)
    check_host("0.0.0.0", True)


def test_queued_pixel_bytes_are_bounded(model):
    run = Running(GatedEngine(model), max_queued_bytes=1 << 10)
    try:
        layer, mask, back = scene(seed=23)
        frames = M.harmonize_frames(P.Pixels.of(layer), P.Pixels.of(mask), P.Pixels.of(back))
        sock = run.raw()
        sock.send_multipart(P.pack(P.HARMONIZE, {}, frames, token=run.token, msg_id="one"))
        assert recv(sock).body["stage"] == "received"  # one job always fits
        sock.send_multipart(P.pack(P.HARMONIZE, {}, frames, token=run.token, msg_id="two"))
        reply = recv_final(sock, "two")
        assert reply.body["code"] == "busy" and "MiB" in reply.body["message"]
    finally:
        run.server.engine.gate.set()
        run.close()


def test_warm_up_runs_a_real_job_and_leaves_the_cache_empty(model, monkeypatch):
    engine = Engine(model)
    results = []
    real_run = engine.run
    monkeypatch.setattr(engine, "run", lambda *a: results.append(real_run(*a)))
    engine.warm_up()
    ((out, offset, info),) = results
    assert out.shape == (64, 64, 4) and offset == (0, 0) and not info["cached"]
    assert not engine.cache


@pytest.mark.parametrize("where", ["envelope", "hello body"])
def test_client_refuses_a_daemon_of_another_major_version(where, tmp_path):
    """A fake daemon that speaks protocol 3: the client says to update the plugin."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path / 'fake.sock'}"
    router.bind(endpoint)

    def answer() -> None:
        if router.poll(10_000):
            identity, *parts = router.recv_multipart()
            msg = R.unpack(parts)
            if where == "envelope":
                reply = P.pack("hello_reply", {}, parent=msg.id, version=(3, 0))
            else:
                reply = P.pack("hello_reply", {"protocol_version": [3, 1]}, parent=msg.id)
            router.send_multipart([identity, *reply])

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        client = Client(endpoint, "t", timeout=10, retries=0)
        with client, pytest.raises(DaemonError, match="update the plugin") as info:
            client.hello()
        assert info.value.code == "unsupported_version"
    finally:
        thread.join(10)
        router.close(linger=0)


# ---- trust (protocol 2.0): the hello proof, CURVE on TCP, nothing kept of the last message ----


def test_hello_proves_the_daemon_holds_the_token(running):
    sock = running.raw()
    challenge = "ab" * 32
    sock.send_multipart(P.pack(P.HELLO, {"challenge": challenge}, msg_id="h1"))  # no token
    reply = recv(sock)
    assert (reply.type, reply.parent) == ("hello_reply", "h1")
    assert reply.body["proof"] == M.hello_proof(running.token, challenge)
    sock.send_multipart(P.pack(P.PING, msg_id="p1"))  # everything else still needs the token
    assert recv(sock).body["code"] == "unauthorized"
    sock.send_multipart(P.pack(P.HELLO, {"challenge": 5}, msg_id="h2"))
    assert recv(sock).body["code"] == "bad_message"


@pytest.mark.parametrize("proof", ["missing", "made with another token"])
def test_client_sends_nothing_of_value_to_a_daemon_that_cannot_prove_the_token(tmp_path, proof):
    """An impostor (here a ROUTER that answers hello like a daemon) gets hellos without token
    and never a request with the token or pixels."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path / 'impostor.sock'}"
    router.bind(endpoint)
    received: list[P.Message] = []
    done = threading.Event()

    def answer() -> None:
        while not done.is_set():
            if not router.poll(50):
                continue
            identity, *parts = router.recv_multipart()
            msg = R.unpack(parts)
            received.append(msg)
            body = {"protocol_version": list(P.PROTOCOL_VERSION), "transports": ["frames"]}
            if proof != "missing":
                body["proof"] = M.hello_proof("another token", msg.body["challenge"])
            router.send_multipart([identity, *P.pack("hello_reply", body, parent=msg.id)])

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        layer, mask, back = scene(seed=29)
        client = Client(endpoint, "the real token", timeout=10, retries=2)
        with client, pytest.raises(DaemonError, match="did not prove") as info:
            send_harmonize(client, layer, mask, back)
        assert info.value.code == "not_authentic"
    finally:
        done.set()
        thread.join(30)
        router.close(linger=0)
    assert received, "the client did say hello"
    for msg in received:
        assert (msg.type, msg.token, msg.frames) == (P.HELLO, "", {})
        assert "the real token" not in str(msg.body)


def _handshake_end(sock: zmq.Socket, monitor: zmq.Socket) -> int:
    """Wait for the monitor event that ends ``sock``'s first handshake; returns it."""
    from zmq.utils.monitor import recv_monitor_message

    try:
        while monitor.poll(20_000):
            event = recv_monitor_message(monitor)["event"]
            if event in (
                zmq.EVENT_HANDSHAKE_SUCCEEDED,
                zmq.EVENT_HANDSHAKE_FAILED_AUTH,
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
            ):
                return event
        raise AssertionError("no handshake event within 20 s")
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


def test_tcp_is_curve_and_drops_peers_without_the_client_key_in_the_handshake(model):
    run = Running(Engine(model), ipc_path=None)
    ctx = zmq.Context.instance()
    try:
        assert run.endpoint.startswith("tcp://127.0.0.1:")
        assert run.server.router.getsockopt(zmq.MECHANISM) == zmq.CURVE  # encrypted
        assert set(run.curve) == {"server_public", "client_public", "client_secret"}
        result = send_harmonize(run.client, *scene(seed=31))
        assert result.pixels.shape[2] == 4
        received = run.server.stats["received"]
        stranger_public, stranger_secret = zmq.curve_keypair()
        strangers = {
            "no CURVE at all": None,
            "another client key": {
                **run.curve,
                "client_public": stranger_public.decode(),
                "client_secret": stranger_secret.decode(),
            },
        }
        for what, keys in strangers.items():
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            try:
                if keys is not None:
                    secure_socket(sock, run.endpoint, keys)
                monitor = sock.get_monitor_socket()
                sock.connect(run.endpoint)
                sock.send_multipart(P.pack(P.PING, token=run.token))  # queued, never delivered
                event = _handshake_end(sock, monitor)
            finally:
                sock.close(linger=0)
            assert event != zmq.EVENT_HANDSHAKE_SUCCEEDED, what
        assert run.server.stats["received"] == received  # not one of their messages was read
        assert run.client.ping()["pid"]
    finally:
        run.close()


def test_tcp_without_curve_is_refused_on_both_sides(model, monkeypatch):
    real_has = zmq.has
    monkeypatch.setattr(zmq, "has", lambda what: False if what == "curve" else real_has(what))
    server = Server(Engine(model), ServerConfig())
    try:
        with pytest.raises(HarmonizeError, match="CURVE"):
            server.bind()
    finally:
        server._shutdown()
    keys = {"server_public": "a", "client_public": "b", "client_secret": "c"}
    sock = zmq.Context.instance().socket(zmq.DEALER)
    try:
        for curve, words in ((keys, "lacks"), (None, "no CURVE keys")):
            with pytest.raises(DaemonError, match=words) as info:
                secure_socket(sock, "tcp://127.0.0.1:9", curve)
            assert info.value.code == "not_authentic"
    finally:
        sock.close(linger=0)


def test_a_socket_path_too_long_for_ipc_means_tcp_with_curve(model, tmp_path):
    run = Running(Engine(model), ipc_path=tmp_path / ("x" * 120) / "daemon.sock")
    try:
        assert run.endpoint.startswith("tcp://") and run.curve is not None
        assert run.client.ping()["pid"]
    finally:
        run.close()


def test_no_reference_to_the_last_message_is_kept(model):
    """A message's frames are freed once it is handled (not when the next one arrives), and
    libzmq drops a peer whose frame exceeds the largest legitimate one (ZMQ_MAXMSGSIZE)."""
    run = Running(Engine(model))
    try:
        assert run.server.router.getsockopt(zmq.MAXMSGSIZE) == run.server.limits.max_frame_bytes
        refs: list[weakref.ref] = []
        handle = run.server._handle

        def spy(parts: list) -> None:
            refs.extend(weakref.ref(part) for part in parts[1:])  # [0]: the peer's identity
            handle(parts)

        run.server._handle = spy
        sock = run.raw()
        frames = M.harmonize_frames(*(P.Pixels.of(a) for a in scene(seed=37)))
        sock.send_multipart(P.pack(P.HARMONIZE, {}, frames, token=run.token, msg_id="m"))
        assert recv_final(sock, "m").type == "harmonize_reply"
        assert len(refs) == 5 and all(ref() is None for ref in refs)
    finally:
        run.close()


def _deep(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def test_odd_field_shapes_get_their_error_at_once_with_the_request_id(running):
    """Fields that used to raise unhandled exceptions (answered ``internal`` without the id, so
    the client waited out its timeout) or to echo 94 KB: each is answered, with its id, within
    the client's own reply limits."""
    sock, token = running.raw(), running.token
    version = list(P.PROTOCOL_VERSION)
    layer, mask, back = scene(seed=41)
    frames = M.harmonize_frames(P.Pixels.of(layer), P.Pixels.of(mask), P.Pixels.of(back))
    _env, body, *data = P.pack(P.HARMONIZE, {}, frames, token=token)

    def harmonize(msg_id: str, spec_change: dict, options: dict | None = None) -> list:
        content = msgpack.unpackb(body)
        content["frames"][0].update(spec_change)
        if options is not None:
            content["options"] = options
        env = {"version": version, "id": msg_id, "type": P.HARMONIZE, "token": token}
        return [msgpack.packb({**env, "parent": None}), msgpack.packb(content), *data]

    deep, huge = _deep(1000), "\x00" * 60_000
    cases = {
        "o1": (harmonize("o1", {"dtype": ["uint8"]}), "bad_frames"),
        "o2": (harmonize("o2", {"dtype": {"uint8": 1}}), "bad_frames"),
        "o3": (harmonize("o3", {"shape": deep}), "bad_frames"),
        "o4": (harmonize("o4", {"name": huge, "shape": [1, 1]}), "bad_frames"),
        "o5": (harmonize("o5", {}, {"dtype": ["uint8"]}), "invalid_input"),
        "o6": (harmonize("o6", {}, {"dtype": {"a": 1}}), "invalid_input"),
        "o7": (harmonize("o7", {}, {"strength": deep}), "invalid_input"),
        "o8": (P.pack(P.CANCEL, {"id": huge}, token=token, msg_id="o8"), "not_found"),
    }
    for msg_id, (parts, code) in cases.items():
        sock.send_multipart(parts)
        raw = sock.recv_multipart() if sock.poll(20_000) else None
        assert raw is not None, f"{msg_id}: no reply"
        assert sum(len(part) for part in raw) < 4096, f"{msg_id}: a {len(raw[1])}-byte reply"
        reply = R.unpack(raw, REPLY_LIMITS, local="client")  # what the client accepts
        assert (reply.type, reply.parent, reply.body["code"]) == (P.ERROR, msg_id, code)
    no_parent = {"version": version, "id": "o9", "type": P.PING, "token": token}
    sock.send_multipart([msgpack.packb(no_parent), msgpack.packb({})])
    reply = recv(sock)
    assert (reply.type, reply.parent) == ("ping_reply", "o9")


def test_an_unexpected_failure_is_answered_internal_with_the_request_id(model):
    run = Running(Engine(model))
    try:

        def broken(route, msg) -> None:
            raise RuntimeError("a bug " + "x" * 100_000)

        run.server._dispatch = broken
        sock = run.raw()
        sock.send_multipart(P.pack(P.PING, token=run.token, msg_id="bug1"))
        reply = recv(sock)
        assert (reply.type, reply.parent, reply.body["code"]) == (P.ERROR, "bug1", "internal")
        assert reply.body["message"].startswith("RuntimeError: a bug")
        assert len(reply.body["message"]) == P.MAX_ERROR_CHARS
    finally:
        run.close()


def test_the_client_retries_a_busy_daemon_with_back_off(model):
    """max_queue=1 and a job held at its first checkpoint: the next request gets ``busy``; the
    client pauses and sends it again (here the pause lets the first job finish)."""
    run = Running(GatedEngine(model), max_queue=1)
    try:
        layer, mask, back = scene(seed=43)
        frames = M.harmonize_frames(P.Pixels.of(layer), P.Pixels.of(mask), P.Pixels.of(back))
        sock = run.raw()
        sock.send_multipart(P.pack(P.HARMONIZE, {}, frames, token=run.token, msg_id="first"))
        assert recv(sock).body["stage"] == "received"
        pauses: list[float] = []

        def pause(seconds: float) -> None:
            pauses.append(seconds)
            run.server.engine.gate.set()
            assert recv_final(sock, "first").type == "harmonize_reply"  # the queue has room

        run.client._pause = pause
        result = send_harmonize(run.client, layer, mask, back)
        assert result.pixels.shape[2] == 4
        assert pauses == [0.05]
    finally:
        run.server.engine.gate.set()
        run.close()


def test_the_client_gives_up_on_a_busy_daemon_after_about_two_seconds(model):
    run = Running(GatedEngine(model), max_queue=1)
    try:
        layer, mask, back = scene(seed=47)
        frames = M.harmonize_frames(P.Pixels.of(layer), P.Pixels.of(mask), P.Pixels.of(back))
        sock = run.raw()
        sock.send_multipart(P.pack(P.HARMONIZE, {}, frames, token=run.token, msg_id="first"))
        assert recv(sock).body["stage"] == "received"
        pauses: list[float] = []
        run.client._pause = pauses.append  # the first job never finishes meanwhile
        with pytest.raises(DaemonError) as info:
            send_harmonize(run.client, layer, mask, back)
        assert info.value.code == "busy"
        assert pauses[:3] == [0.05, 0.1, 0.2] and sum(pauses) == pytest.approx(BUSY_RETRY_S)
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(DaemonError) as info:
            send_harmonize(run.client, layer, mask, back, cancel=cancel)
        assert info.value.code == "cancelled"
    finally:
        run.server.engine.gate.set()
        run.close()


# ---- protocol 2.1: the selection, channel order, reapply ---------------------------------------


def _selection_scene(seed: int):
    """A soft-alpha uint8 layer (some pixels transparent), its selection and a backdrop."""
    layer, selection, back = scene(seed=seed)
    layer[..., 3] = np.random.default_rng(seed).integers(0, 256, layer.shape[:2])
    layer[40:44, 40:50, 3] = 0
    return layer, selection, back


def test_the_selection_is_sent_alone_and_never_divided_back(running, monkeypatch):
    from layer_harmonizer import compose

    def no_division(*_args):
        raise AssertionError("a 2.1 request must not divide the mask by alpha")

    monkeypatch.setattr(compose, "selection_weight", no_division)
    from layer_harmonizer import layer as core

    monkeypatch.setattr(core, "selection_weight", no_division)
    layer, selection, back = _selection_scene(seed=51)
    result = running.client.harmonize_layer(
        P.Pixels.of(layer), P.Pixels.of(selection), P.Pixels.of(back), crop_margin=None
    )
    out = as_array(result.pixels)
    inside = selection > 0
    assert np.array_equal(out[..., 3], layer[..., 3])  # the layer's own alpha
    assert np.array_equal(out[~inside], layer[~inside])  # outside the selection: untouched
    assert np.array_equal(out[40:44, 40:50], layer[40:44, 40:50])  # alpha 0: untouched
    assert not np.array_equal(out[..., :3][inside], layer[..., :3][inside])
    assert result.job is not None


def test_a_bgra_layer_comes_back_in_bgra_declared_in_the_result(running):
    layer, selection, back = scene(seed=53)
    rgba = running.client.harmonize_layer(
        P.Pixels.of(layer), P.Pixels.of(selection), P.Pixels.of(back)
    )
    krita_layer = np.ascontiguousarray(layer[..., [2, 1, 0, 3]])
    krita_back = np.ascontiguousarray(np.dstack([back[..., ::-1], np.full_like(selection, 255)]))
    for transport in ("frames", "shm"):
        running.client.transport = transport
        try:
            bgra = running.client.harmonize_layer(
                P.Pixels.of(krita_layer, "BGRA"),
                P.Pixels.of(selection),
                P.Pixels.of(krita_back, "BGRA"),
            )
        finally:
            running.client.transport = "auto"
        assert (bgra.transport, bgra.pixels.order, bgra.offset) == (transport, "BGRA", rgba.offset)
        assert np.array_equal(as_array(bgra.pixels)[..., [2, 1, 0, 3]], as_array(rgba.pixels))
    sock = running.raw()
    mixed = M.layer_frames(P.Pixels.of(krita_layer, "BGRA"), None, P.Pixels.of(back))
    sock.send_multipart(P.pack(P.HARMONIZE, {}, mixed, token=running.token, msg_id="mix"))
    reply = recv_final(sock, "mix")
    assert reply.body["code"] == "bad_frames" and "same order" in reply.body["message"]


@pytest.mark.parametrize("transport", ["frames", "shm"])
def test_a_strength_change_reapplies_the_kept_job_without_pixels(running, transport):
    client = running.client
    client.transport = transport
    try:
        layer, selection, back = _selection_scene(seed=57)
        frames = (P.Pixels.of(layer), P.Pixels.of(selection), P.Pixels.of(back))
        first = client.harmonize_layer(*frames, strength=1.0)
        sent: list = []
        real = client.request

        def spy(msg_type, body=None, frames=None, **kw):
            sent.append((msg_type, dict(frames or {}), (body or {}).get("shm", {})))
            return real(msg_type, body, frames, **kw)

        client.request = spy
        events: list[dict] = []
        again = client.reapply(first.job, strength=0.3, on_progress=events.append)
        del client.request
        full = client.harmonize_layer(*frames, strength=0.3)
    finally:
        client.transport = "auto"
    ((msg_type, pixels, segment),) = sent
    assert msg_type == P.REAPPLY and pixels == {} and segment.get("frames", []) == []
    assert (again.transport, again.cached, again.job, again.offset) == (
        transport, True, first.job, first.offset
    )  # fmt: skip
    assert np.array_equal(as_array(again.pixels), as_array(full.pixels))
    assert [e["stage"] for e in events if e["stage"] != "alive"] == ["received", "applied"]


def test_reapply_of_a_job_no_longer_kept_is_a_clear_error(model):
    run = Running(Engine(model, job_cache=1))
    try:
        layer, selection, back = scene(seed=59)
        frames = (P.Pixels.of(layer), P.Pixels.of(selection), P.Pixels.of(back))
        first = run.client.harmonize_layer(*frames)
        run.client.harmonize_layer(*frames, strength=0.5)  # the engine keeps only this one
        with pytest.raises(DaemonError, match="no longer keeps job") as info:
            run.client.reapply(first.job, strength=0.2)
        assert info.value.code == "unknown_job"
        sock, token = run.raw(), run.token
        checks = {
            "r1": ({"job": first.job, "options": {"crop_margin": 0.1}}, {}, "invalid_input"),
            "r2": ({"job": 42}, {}, "bad_message"),
            "r3": ({"job": first.job}, {"layer": frames[0]}, "bad_frames"),
        }
        for msg_id, (body, pixels, code) in checks.items():
            sock.send_multipart(P.pack(P.REAPPLY, body, pixels, token=token, msg_id=msg_id))
            assert recv_final(sock, msg_id).body["code"] == code
    finally:
        run.close()


def test_a_2_1_client_tells_to_stop_a_2_0_daemon_instead_of_sending_what_it_cannot_read(
    tmp_path,
):
    """A daemon of protocol 2.0 (left running across an update) would misread a selection or
    a BGRA frame: the client refuses before sending pixels, and says what to do."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path / 'old.sock'}"
    router.bind(endpoint)
    received: list[str] = []
    done = threading.Event()

    def answer() -> None:
        while not done.is_set():
            if not router.poll(50):
                continue
            identity, *parts = router.recv_multipart()
            msg = R.unpack(parts)
            received.append(msg.type)
            body = {
                "protocol_version": [2, 0],
                "proof": M.hello_proof("token", msg.body["challenge"]),
            }
            router.send_multipart([identity, *P.pack("hello_reply", body, parent=msg.id)])

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        layer, _selection, back = scene(seed=61)
        with Client(endpoint, "token", timeout=10, retries=0) as client:
            with pytest.raises(DaemonError, match="harmonize stop") as info:
                client.harmonize_layer(P.Pixels.of(layer), None, P.Pixels.of(back))
            assert info.value.code == "unsupported_version"
            with pytest.raises(DaemonError, match="harmonize stop"):
                client.reapply("abc", strength=0.5)
    finally:
        done.set()
        thread.join(30)
        router.close(linger=0)
    assert received == [P.HELLO]

"""layer_harmonizer.wire.protocol: envelope/body/frames round trips, limits, versions, torch-free
import."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from layer_harmonizer.arrays import DEFAULT_MAX_PIXELS
from layer_harmonizer.wire import messages as M
from layer_harmonizer.wire import protocol as P
from layer_harmonizer.wire import receive as R

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pair():
    """A connected DEALER -> ROUTER pair over inproc (the daemon's socket types)."""
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.bind("inproc://protocol-test")
    dealer.connect("inproc://protocol-test")
    yield dealer, router
    dealer.close(linger=0)
    router.close(linger=0)
    ctx.term()


def _envelope(**overrides):
    env = {"version": list(P.PROTOCOL_VERSION), "id": "abc", "type": P.PING, "token": "t"}
    env["parent"] = None
    env.update(overrides)
    return msgpack.packb(env)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_round_trip_over_zmq_keeps_frames_bit_exact(pair, dtype):
    dealer, router = pair
    rng = np.random.default_rng(0)
    image = (rng.random((5, 7, 4)) * (255 if dtype == "uint8" else 1)).astype(dtype)
    mask = rng.random((5, 7)).astype(np.float32)
    parts = P.pack(
        P.HARMONIZE,
        {"options": {"strength": 0.5}},
        {"layer": P.Pixels.of(image), "mask": P.Pixels.of(mask)},
        token="secret",
        msg_id="m1",
    )
    dealer.send_multipart(parts, copy=False)
    identity, *received = router.recv_multipart(copy=False)
    msg = R.unpack(received, token="secret")
    assert (msg.type, msg.id, msg.token, msg.parent) == (P.HARMONIZE, "m1", "secret", None)
    assert msg.version == P.PROTOCOL_VERSION
    assert msg.body["options"] == {"strength": 0.5}
    layer = msg.frames["layer"]
    assert (layer.shape, layer.dtype) == ((5, 7, 4), dtype)
    assert np.array_equal(np.frombuffer(layer.data, dtype=dtype).reshape(5, 7, 4), image)
    assert np.frombuffer(msg.frames["mask"].data, np.float32).tobytes() == mask.tobytes()
    # and the reply travels back with its parent id
    router.send_multipart([identity, *P.pack(P.reply_type(P.HARMONIZE), {"ok": 1}, parent="m1")])
    reply = R.unpack(dealer.recv_multipart(), local="client")
    assert (reply.type, reply.parent, reply.body) == ("harmonize_reply", "m1", {"ok": 1})


def test_pixels_of_needs_a_supported_contiguous_array():
    assert P.Pixels.of(np.zeros((2, 3), np.uint16)).nbytes == 12
    with pytest.raises(P.ProtocolError, match="dtype"):
        P.Pixels.of(np.zeros((2, 3), np.float64))
    with pytest.raises(P.ProtocolError, match="contiguous"):
        P.Pixels.of(np.zeros((4, 6), np.uint8)[:, ::2])


def _code(parts, **kw) -> str:
    with pytest.raises(P.ProtocolError) as info:
        R.unpack(parts, **kw)
    return info.value.code


def test_malformed_messages_get_named_errors():
    ok_body = msgpack.packb({})
    assert _code([b"\xc1garbage", ok_body]) == "bad_message"
    assert _code([_envelope()[:-3], ok_body]) == "bad_message"  # truncated
    assert _code([msgpack.packb([1, 2]), ok_body]) == "bad_message"  # not a map
    assert _code([_envelope(id=7), ok_body]) == "bad_message"
    assert _code([_envelope(version="1.0"), ok_body]) == "bad_message"
    assert _code([_envelope(type=None), ok_body]) == "bad_message"
    assert _code([_envelope()]) == "bad_message"  # no body
    assert _code([_envelope(), b"\x92\x01"]) == "bad_message"  # truncated body
    assert _code([_envelope(), msgpack.packb([1])]) == "bad_message"  # body not a map


def test_limits_are_checked_before_decoding_or_allocating():
    limits = P.Limits(max_pixels=1000)
    big_env = _envelope(id="x" * 64, token="t" * 5000)
    assert _code([big_env, msgpack.packb({})]) == "too_large"
    big_body = msgpack.packb({"pad": "x" * (70 * 1024)})
    assert _code([_envelope(), big_body]) == "too_large"
    assert _code([_envelope(), msgpack.packb({}), *[b""] * 5]) == "too_large"  # frame count
    # a "huge" declared shape is refused from the numbers alone
    huge = {"frames": [{"name": "a", "shape": [100_000, 100_000, 4], "dtype": "float32"}]}
    assert _code([_envelope(), msgpack.packb(huge), b"1234"], limits=limits) == "too_large"
    five = {"frames": [{"name": "a", "shape": [2, 2, 5], "dtype": "uint8"}]}
    assert _code([_envelope(), msgpack.packb(five), b"x" * 20]) == "too_large"


@pytest.mark.parametrize(
    ("spec", "size"),
    [
        ({"name": "a", "shape": [4, 4, 3], "dtype": "uint8"}, 47),  # lying length
        ({"name": "a", "shape": [4, 4, 3], "dtype": "uint16"}, 48),  # itemsize ignored
        ({"name": "a", "shape": [4, 4, 3], "dtype": "float64"}, 384),  # dtype not allowed
        ({"name": "a", "shape": [4, -4, 3], "dtype": "uint8"}, 48),
        ({"name": "a", "shape": [4, 4, 3, 1], "dtype": "uint8"}, 48),
        ({"name": "a", "shape": [4.0, 4], "dtype": "uint8"}, 16),
        ({"name": "a", "shape": [True, 4], "dtype": "uint8"}, 4),
        ({"shape": [4, 4], "dtype": "uint8"}, 16),  # no name
    ],
)
def test_frame_declarations_must_match_the_bytes(spec, size):
    body = msgpack.packb({"frames": [spec]})
    assert _code([_envelope(), body, b"\0" * size]) == "bad_frames"


def test_frame_count_and_names_must_match_the_declarations():
    spec = {"name": "a", "shape": [2, 2], "dtype": "uint8"}
    assert _code([_envelope(), msgpack.packb({"frames": [spec, spec]}), b"1234"]) == "bad_frames"
    two = msgpack.packb({"frames": [spec, spec]})
    assert _code([_envelope(), two, b"1234", b"1234"]) == "bad_frames"  # same name twice
    assert _code([_envelope(), msgpack.packb({"frames": "a"}), b"1234"]) == "bad_frames"


def test_token_is_compared_when_given():
    parts = P.pack(P.PING, token="right")
    assert R.unpack(parts, token="right").type == P.PING
    assert _code(parts, token="wrong") == "unauthorized"
    assert _code(P.pack(P.PING), token="right") == "unauthorized"


def test_hello_needs_no_token_and_its_proof_needs_the_token():
    """2.0: the hello challenge comes before the token; only a token holder can answer it."""
    hello = P.pack(P.HELLO, {"challenge": "c" * 64})
    assert _code(hello, token="right") == "unauthorized"  # not an open type unless named
    assert R.unpack(hello, token="right", open_types=P.OPEN_TYPES).type == P.HELLO
    ping = P.pack(P.PING)
    assert _code(ping, token="right", open_types=P.OPEN_TYPES) == "unauthorized"
    proof = M.hello_proof("token", "c" * 64)
    assert proof == M.hello_proof("token", "c" * 64) and len(proof) == 64
    assert proof != M.hello_proof("other", "c" * 64)
    assert proof != M.hello_proof("token", "d" * 64)
    assert M.check_challenge("x" * 32) == "x" * 32
    for bad in ("short", 7, None, "x" * 129, ["x" * 40]):
        with pytest.raises(P.ProtocolError, match="challenge") as info:
            M.check_challenge(bad, "m1")
        assert (info.value.code, info.value.msg_id) == ("bad_message", "m1")


def test_other_major_version_is_refused_naming_the_side_to_update():
    with pytest.raises(P.ProtocolError, match="update the daemon") as newer:
        R.unpack(P.pack(P.PING, version=(3, 0)))
    assert newer.value.code == "unsupported_version" and newer.value.msg_id
    with pytest.raises(P.ProtocolError, match="update the plugin"):
        R.unpack(P.pack(P.PING, version=(1, 1)))  # a protocol 1 plugin (before the proof)
    with pytest.raises(P.ProtocolError, match="update the daemon"):
        R.check_version((0, 9), local="client")
    # a newer minor version is accepted
    assert R.unpack(P.pack(P.PING, version=(2, 7))).version == (2, 7)


def test_harmonize_options_validation():
    default = M.HarmonizeOptions.from_wire(None)
    assert default == M.HarmonizeOptions()
    assert M.HarmonizeOptions.from_wire(default.to_wire()) == default
    whole = M.HarmonizeOptions(0.4, None, "uint16", "rgb")
    assert M.HarmonizeOptions.from_wire(whole.to_wire()) == whole
    for bad in (
        {"strength": True},
        {"strength": math.nan},
        {"strength": 1.5},
        {"strength": "1"},
        {"crop_margin": -1},
        {"dtype": "float64"},
        {"output": "bgr"},
        {"strenght": 0.5},
        [],
    ):
        with pytest.raises(P.ProtocolError, match="options") as info:
            M.HarmonizeOptions.from_wire(bad)
        assert info.value.code == "invalid_input"


def test_pixel_limit_matches_the_pipeline():
    assert P.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS
    assert P.reply_type(P.PING) == "ping_reply"


def test_the_wire_package_imports_without_numpy_or_torch(tmp_path):
    """The plugins' copy: every module of layer_harmonizer.wire imports with numpy, torch, cv2
    and platformdirs blocked, in the package and vendored by install-plugin."""
    from layer_harmonizer.install import write_vendored_wire

    vendored = tmp_path / "vendored"
    write_vendored_wire(vendored)
    code = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        for name in ("numpy", "torch", "cv2", "platformdirs"):
            sys.modules[name] = None  # any import of these now fails

        def import_wire():
            import layer_harmonizer.wire as wire
            names = sorted(m.name for m in pkgutil.iter_modules(wire.__path__))
            assert len(names) >= 8, names
            return [importlib.import_module(f"layer_harmonizer.wire.{{n}}") for n in names]

        import_wire()
        for name in [m for m in sys.modules if m.startswith("layer_harmonizer")]:
            del sys.modules[name]
        sys.path.insert(0, {str(vendored)!r})
        modules = import_wire()
        assert all(m.__file__.startswith({str(vendored)!r}) for m in modules)
        from layer_harmonizer.wire import client, discovery, protocol, shm
        assert client.P is protocol and client.shm is shm and shm.P is protocol
        print(discovery.endpoint_path().parent)
        """
    )
    env = {**os.environ, "HARMONIZE_RUNTIME_DIR": str(tmp_path / "rt")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "rt")


def test_client_runtime_dir_matches_the_daemons(monkeypatch, tmp_path):
    """One rule (layer_harmonizer.wire.discovery) on both sides, whatever platformdirs version."""
    import platformdirs

    from layer_harmonizer import paths
    from layer_harmonizer.wire import discovery

    # an older platformdirs answers differently: neither side may follow it
    monkeypatch.setattr(platformdirs, "user_runtime_dir", lambda *a, **k: "/elsewhere")
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(tmp_path))
    assert discovery.endpoint_path().parent == paths.runtime_dir() == tmp_path
    monkeypatch.delenv("HARMONIZE_RUNTIME_DIR")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert discovery.endpoint_path().parent == paths.runtime_dir() != Path("/elsewhere")
    if sys.platform.startswith("linux"):
        xdg = tmp_path / "xdg"
        xdg.mkdir(mode=0o700)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
        assert discovery.endpoint_path().parent == paths.runtime_dir() == xdg / "harmonize"


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


DEEP = _nested(1000)
HUGE_NAME = "\x00" * 60_000  # its repr is 4 times longer: 240 KB in an unbounded message
ODD_FRAMES = [
    ({"dtype": [1]}, "dtype must be one of"),
    ({"dtype": {"a": 1}}, "dtype must be one of"),
    ({"dtype": DEEP}, "dtype must be one of"),
    ({"shape": DEEP}, "shape must be"),
    ({"name": HUGE_NAME, "shape": DEEP}, "shape must be"),
    ({"name": HUGE_NAME, "shape": [1, 2], "dtype": "uint8"}, "bytes but 4 were sent"),
]
ODD_OPTIONS = [
    {"dtype": [1]},
    {"dtype": {"a": 1}},
    {"dtype": DEEP},
    {"output": ["rgba"]},
    {"strength": DEEP},
    {"crop_margin": {"x": DEEP}},
    {"x" * 60_000: 1, b"raw": 2},
]


@pytest.mark.parametrize(("override", "message"), ODD_FRAMES)
def test_odd_frame_fields_are_named_errors_with_the_id_and_a_bounded_message(override, message):
    """Lists, maps and 1,000-deep values where a string or shape belongs: a ProtocolError with
    the request id, never a TypeError or RecursionError, and never a huge echo."""
    spec = {"name": "layer", "shape": [2, 2], "dtype": "uint8", **override}
    env = _envelope(id="odd1")
    with pytest.raises(P.ProtocolError, match=message) as info:
        R.unpack([env, msgpack.packb({"frames": [spec]}), b"\0" * 4])
    assert (info.value.code, info.value.msg_id) == (P.ErrorCode.BAD_FRAMES, "odd1")
    assert len(info.value.message) <= 2 * P.ECHO_CHARS + 100


@pytest.mark.parametrize("options", ODD_OPTIONS, ids=range(len(ODD_OPTIONS)))
def test_odd_option_values_are_named_errors_with_a_bounded_message(options):
    with pytest.raises(P.ProtocolError, match="options: ") as info:
        M.HarmonizeOptions.from_wire(options, "odd2")
    assert (info.value.code, info.value.msg_id) == (P.ErrorCode.INVALID_INPUT, "odd2")
    assert len(info.value.message) <= P.ECHO_CHARS + 100


def test_an_envelope_without_parent_is_a_request_like_any_other():
    env = {"version": list(P.PROTOCOL_VERSION), "id": "np1", "type": P.PING, "token": "t"}
    msg = R.unpack([msgpack.packb(env), msgpack.packb({})], token="t")
    assert (msg.id, msg.parent) == ("np1", None)


def test_echo_and_error_messages_are_bounded():
    assert P.echo("abc") == "'abc'" and P.echo([1, [2]]) == "[1, [2]]"
    for value in (DEEP, HUGE_NAME, list(range(10_000)), {str(i): i for i in range(5000)}):
        assert len(P.echo(value)) <= P.ECHO_CHARS
    body = P.error_body(P.ErrorCode.INTERNAL, "é" * 100_000)
    assert len(body["message"]) == P.MAX_ERROR_CHARS
    reply = P.pack(P.ERROR, body, parent="x")
    assert len(reply[1]) < P.Limits().max_body_bytes // 8  # far below what a client accepts


# ---- protocol 2.1: channel order, the selection frame, reapply ---------------------------------


def test_a_frame_declares_its_channel_order_and_the_declaration_is_checked():
    bgra = np.zeros((2, 3, 4), np.uint8)
    parts = P.pack(P.HARMONIZE, {}, {"layer": P.Pixels.of(bgra, "BGRA")})
    assert msgpack.unpackb(parts[1])["frames"][0]["order"] == "BGRA"
    layer = R.unpack(parts).frames["layer"]
    assert (layer.order, layer.bgr) == ("BGRA", True)
    plain = R.unpack(P.pack(P.HARMONIZE, {}, {"layer": P.Pixels.of(bgra)})).frames["layer"]
    assert (plain.order, plain.bgr) == (None, False)  # undeclared: RGBA, as in 2.0
    for order in ("BGR", "ARGB", "bgra", ["B", "G", "R", "A"], 4):
        spec = {"name": "layer", "shape": [2, 3, 4], "dtype": "uint8", "order": order}
        with pytest.raises(P.ProtocolError, match="order") as info:
            R.check_frame(spec, 24, P.Limits(), "o1")
        assert (info.value.code, info.value.msg_id) == ("bad_frames", "o1")


def _frames_message(**frames) -> P.Message:
    return P.Message(P.HARMONIZE, "f1", {}, frames=frames)


def test_harmonize_frames_take_a_selection_a_mask_or_neither():
    layer = P.Pixels(None, (4, 5, 4), "uint8")
    plane = P.Pixels(None, (4, 5), "uint8")
    rgb, rgba = P.Pixels(None, (4, 5, 3), "uint8"), P.Pixels(None, (4, 5, 4), "uint16")
    for frames in (
        {"layer": layer, "selection": plane, "backdrop": rgb},  # 2.1
        {"layer": layer, "mask": plane, "backdrop": rgb},  # 2.0
        {"layer": layer, "backdrop": rgba},  # 2.1: all of the layer, a 4-channel backdrop
    ):
        assert M.check_harmonize_frames(_frames_message(**frames)) == frames
    assert M.layer_frames(layer, None, rgb) == {"layer": layer, "backdrop": rgb}
    cases = {
        "one of mask": {"layer": layer, "mask": plane, "selection": plane, "backdrop": rgb},
        "selection must be": {"layer": layer, "selection": rgb, "backdrop": rgb},
        "selection is 5 x 3": {
            "layer": layer, "selection": P.Pixels(None, (3, 5), "uint8"), "backdrop": rgb
        },
        "same order": {
            "layer": P.Pixels(None, (4, 5, 4), "uint8", "BGRA"), "backdrop": rgb,
        },
    }  # fmt: skip
    for words, frames in cases.items():
        with pytest.raises(P.ProtocolError, match=words) as info:
            M.check_harmonize_frames(_frames_message(**frames))
        assert (info.value.code, info.value.msg_id) == ("bad_frames", "f1")


def test_reapply_options_cannot_change_the_crop_and_its_job_is_an_id():
    options = M.HarmonizeOptions.from_wire({"strength": 0.3}, "r1", M.REAPPLY_KEYS)
    assert options.strength == 0.3
    with pytest.raises(P.ProtocolError, match="crop_margin") as info:
        M.HarmonizeOptions.from_wire({"crop_margin": 0.5}, "r1", M.REAPPLY_KEYS)
    assert info.value.code == "invalid_input"
    assert M.check_job_id("a" * 32) == "a" * 32
    for bad in ("", "x" * 65, 7, None):
        with pytest.raises(P.ProtocolError, match="job") as info:
            M.check_job_id(bad, "r2")
        assert (info.value.code, info.value.msg_id) == ("bad_message", "r2")
    assert P.reply_type(P.REAPPLY) == "reapply_reply" and P.REAPPLY in P.REQUEST_TYPES

"""The shared-memory transport (protocol 1.1): segments, the daemon's checks of a request's
description, mapping reuse, stale-segment sweeping, and the client/server round trip with
fallback to frames."""

from __future__ import annotations

import copy
import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend import protocol as P
from backend import shm
from backend.client import Client, DaemonError
from backend.engine import Engine
from tests.test_server import (
    GatedEngine,
    Running,
    as_array,
    random_model,
    recv,
    recv_final,
    scene,
    send_harmonize,
)

pytestmark = pytest.mark.skipif(not shm.available(), reason="shared memory needs Linux /dev/shm")


def own_segments() -> set[str]:
    return {n for n in os.listdir(shm.SHM_DIR) if n.startswith(f"harmonize-{os.getpid()}-")}


@pytest.fixture
def frames():
    layer, mask, back = scene(40, 30)
    return {"layer": P.Pixels.of(layer), "mask": P.Pixels.of(mask), "backdrop": P.Pixels.of(back)}


@pytest.fixture
def written(frames):
    """A segment holding ``frames`` and its (valid) request description."""
    offsets, size = shm.plan({n: p.nbytes for n, p in frames.items()})
    segment = shm.Segment(size, 40 * 30 * 4)
    for name, pix in frames.items():
        segment.write(offsets[name], pix.data)
    yield segment, segment.describe(offsets, frames)
    segment.close()


# ---- the client's segment -----------------------------------------------------------------


def test_segment_is_private_preallocated_and_removed_on_close():
    segment = shm.Segment(1000, 5000)
    st = os.stat(segment.path)
    assert oct(st.st_mode & 0o777) == oct(0o600)
    assert st.st_size == segment.size and st.st_blocks * 512 >= segment.size  # allocated
    assert segment.result_offset % shm.PAGE == 0 and segment.result_capacity >= 5000
    assert segment.path.name in own_segments()
    segment.close()
    assert not segment.path.exists()
    segment.close()  # twice is harmless


def test_a_forgotten_segment_is_removed_when_collected():
    segment = shm.Segment(10, 10)
    path = segment.path
    del segment
    gc.collect()
    assert not path.exists()


def test_only_the_creating_process_removes_the_file(tmp_path):
    """A forked child's copy of a client must not unlink its parent's segment at exit."""
    path = tmp_path / "segment"
    for owner, removed in ((os.getpid() + 1, False), (os.getpid(), True)):
        path.write_bytes(b"x")
        shm._remove_file(os.open(path, os.O_RDONLY), str(path), owner)
        assert path.exists() is not removed


def test_a_held_result_view_stops_reuse_and_stays_valid():
    segment = shm.Segment(64, 64)
    assert segment.reusable()
    view = segment.result(16)
    assert view.readonly and view.nbytes == 16
    alias = np.frombuffer(view, np.uint8)
    del view
    assert not segment.reusable()  # the numpy array still reads the region
    segment.close()  # unlinks; the array keeps its mapping
    assert alias.sum() == 0
    del alias
    segment2 = shm.Segment(64, 64)
    segment2.result(8).release()
    assert segment2.reusable()
    segment2.close()


def test_segment_fits_requests_up_to_four_times_smaller():
    segment = shm.Segment(1 << 20, 1 << 20)
    assert segment.fits(1 << 20, 1 << 20) and segment.fits(1 << 19, 1 << 18)
    assert not segment.fits((1 << 20) + 1, 10) and not segment.fits(10, (1 << 20) + 1)
    assert not segment.fits(1000, 1000)  # far too big: the client makes a smaller one
    segment.close()


def test_a_full_shm_dir_is_a_clear_error(tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(shm.ShmError, match=r"cannot allocate .* --shm-size"):
        shm.Segment(100, 100, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---- the daemon's checks ------------------------------------------------------------------


def mutate(desc: dict, path: str, value) -> dict:
    out = copy.deepcopy(desc)
    target = out
    *keys, last = path.split(".")
    for key in keys:
        target = target[int(key)] if key.isdigit() else target[key]
    if value is KeyError:
        del target[last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return out


BAD_DESCRIPTIONS = [
    ("name", "../../etc/passwd", "name must match"),
    ("name", "harmonize-1-" + "g" * 32, "name must match"),
    ("name", "/dev/shm/harmonize-1-" + "a" * 32, "name must match"),
    ("name", 7, "name must match"),
    ("size", -1, "size must be an int"),
    ("size", True, "size must be an int"),
    ("size", 1 << 60, "over the limit"),
    ("size", 100, "outside the 100-byte segment"),
    ("frames", "all", "frames must be a list"),
    ("frames", [{}] * 9, "frames must be a list of at most"),
    ("frames.0.offset", -64, "frame offset must be an int"),
    ("frames.0.offset", 1.5, "frame offset must be an int"),
    ("frames.0.offset", KeyError, "frame offset must be an int"),
    ("frames.1.offset", 0, "overlap"),
    ("frames.0.shape", [40, 30, 9], "channels"),
    ("frames.0.shape", [1 << 20, 1 << 20, 4], "over the limit"),
    ("frames.0.dtype", "float64", "dtype must be one of"),
    ("frames.2.name", "layer", "declared twice"),
    ("result", {"offset": 0}, "result must be a map"),
    ("result.offset", 0, "overlap"),
    ("result.capacity", 1 << 40, "outside"),
    ("extra", 1, "must be a map of"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_DESCRIPTIONS)
def test_bad_descriptions_are_refused_before_anything_is_opened(written, path, value, message):
    _segment, desc = written
    with pytest.raises(P.ProtocolError, match=message) as caught:
        shm.parse_request(mutate(desc, path, value), P.Limits(), "id1")
    assert caught.value.code in (P.ErrorCode.BAD_FRAMES, P.ErrorCode.TOO_LARGE)
    assert caught.value.msg_id == "id1"


def open_segment_files() -> set[str]:
    """The segments this process has open (its clients' and, in-process, its server's)."""
    fds = Path("/proc/self/fd")
    targets = {os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink()}
    return {t for t in targets if t.startswith(f"{shm.SHM_DIR}/{shm.PREFIX}")}


def test_a_valid_description_opens_the_segment_to_copy_frames_and_result(written, frames):
    segment, desc = written
    request = shm.parse_request(desc, P.Limits())
    fd = shm.open_segment(request)
    try:
        for name, (offset, template) in request.frames.items():
            assert template.shape == frames[name].shape
            copy = bytearray(template.nbytes)
            shm.read_into(fd, offset, copy, name)
            assert copy == bytes(frames[name].data)
        shm.write_from(fd, request.result_offset, b"\x07" * 100, request.size)
        assert bytes(segment.result(100)) == b"\x07" * 100
    finally:
        os.close(fd)


def test_a_truncated_segment_is_an_error_not_a_crash(written):
    """Copies go through preadv/pwrite, never a mapping: a client that shrinks its segment
    gets an error instead of the daemon being killed by SIGBUS."""
    segment, desc = written
    request = shm.parse_request(desc, P.Limits())
    fd = shm.open_segment(request, msg_id="t1")
    try:
        offset, layer = request.frames["layer"]
        os.truncate(segment.path, offset + 100)
        with pytest.raises(P.ProtocolError, match="ended after 100 of") as caught:
            shm.read_into(fd, offset, bytearray(layer.nbytes), "frame 'layer'", "t1")
        assert (caught.value.code, caught.value.msg_id) == (P.ErrorCode.BAD_FRAMES, "t1")
        with pytest.raises(P.ProtocolError, match="resized during the request") as caught:
            shm.write_from(fd, request.result_offset, b"\x01" * 64, request.size, "t1")
        assert caught.value.msg_id == "t1"
        assert os.fstat(fd).st_size == offset + 100  # not grown back by the write
    finally:
        os.close(fd)


def test_the_file_itself_is_checked(written, tmp_path):
    segment, desc = written
    request = shm.parse_request(desc, P.Limits())
    before = open_segment_files()
    os.chmod(segment.path, 0o644)
    with pytest.raises(P.ProtocolError, match="has mode 644") as caught:
        shm.open_segment(request)
    assert caught.value.code == P.ErrorCode.BAD_FRAMES
    os.chmod(segment.path, 0o600)
    os.truncate(segment.path, segment.size - shm.PAGE)
    with pytest.raises(P.ProtocolError, match="not the declared"):
        shm.open_segment(request)
    missing = shm.parse_request(mutate(desc, "name", "harmonize-1-" + "0" * 32), P.Limits())
    with pytest.raises(P.ProtocolError, match="no segment") as caught:
        shm.open_segment(missing)
    assert caught.value.code == P.ErrorCode.SHM_UNAVAILABLE
    link = tmp_path / missing.name
    link.symlink_to(segment.path)
    with pytest.raises(P.ProtocolError, match="cannot open"):
        shm.open_segment(missing, tmp_path)  # O_NOFOLLOW
    assert open_segment_files() == before  # a refused segment is closed again


def test_stale_segments_of_dead_clients_are_swept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f"harmonize-{dead.stdout.strip()}-{'a' * 32}"
    live = tmp_path / f"harmonize-{os.getpid()}-{'b' * 32}"
    other = tmp_path / "harmonize-notes.txt"
    for path in (stale, live, other):
        path.write_bytes(b"x")
    assert shm.sweep_stale(tmp_path) == 1
    assert not stale.exists() and live.exists() and other.exists()


# ---- through a server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    return Engine(random_model(0))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_shm_results_equal_frames_results_bit_for_bit(engine, dtype):
    run = Running(engine)
    try:
        layer, mask, back = scene(70, 90, dtype, alpha="soft", seed=3)
        with Client(run.endpoint, run.token, transport="frames") as frames_client:
            expected = send_harmonize(frames_client, layer, mask, back, strength=0.7)
        with Client(run.endpoint, run.token, transport="shm") as shm_client:
            got = send_harmonize(shm_client, layer, mask, back, strength=0.7)
            assert (got.transport, expected.transport) == ("shm", "frames")
            assert got.offset == expected.offset
            np.testing.assert_array_equal(as_array(got.pixels), as_array(expected.pixels))
            name = shm_client._segment.name
            assert name in own_segments()
            again = send_harmonize(shm_client, layer, mask, back, strength=0.7)
            assert shm_client._segment.name != name  # `got` still holds the first result
            np.testing.assert_array_equal(as_array(again.pixels), as_array(got.pixels))
            del got, again
            send_harmonize(shm_client, layer, mask, back)
            reused = shm_client._segment.name
            send_harmonize(shm_client, layer, mask, back)
            assert shm_client._segment.name == reused  # nothing held: the segment is reused
        assert not (shm.SHM_DIR / name).exists() and not (shm.SHM_DIR / reused).exists()
    finally:
        run.close()
    assert open_segment_files() == set()  # every job closed the segment it read


def test_auto_falls_back_to_frames_when_the_daemon_cannot_see_the_segment(engine, tmp_path):
    run = Running(engine)
    run.server.shm_dir = tmp_path  # as if the daemon ran in another container
    try:
        with Client(run.endpoint, run.token) as client:
            layer, mask, back = scene()
            first = send_harmonize(client, layer, mask, back)
            assert first.transport == "frames" and client.transport == "frames"
            assert client._segment is None
        with Client(run.endpoint, run.token, transport="shm") as forced:
            with pytest.raises(DaemonError, match="no segment") as caught:
                send_harmonize(forced, layer, mask, back)
            assert caught.value.code == P.ErrorCode.SHM_UNAVAILABLE
    finally:
        run.close()


def test_a_daemon_without_shm_gets_frames(engine):
    run = Running(engine, shm=False)
    try:
        with Client(run.endpoint, run.token) as client:
            assert client.hello()["transports"] == ["frames"]
            assert send_harmonize(client, *scene()).transport == "frames"
        forced = Client(run.endpoint, run.token, transport="shm")
        with forced, pytest.raises(DaemonError, match="does not offer shared memory"):
            send_harmonize(forced, *scene())
    finally:
        run.close()


def test_hostile_shm_requests_get_errors_and_the_daemon_keeps_serving(engine, written):
    _segment, desc = written
    run = Running(engine)
    sock = run.raw()
    try:
        cases = [mutate(desc, path, value) for path, value, _ in BAD_DESCRIPTIONS]
        cases += [
            mutate(desc, "name", f"harmonize-1-{'c' * 32}"),  # no such file
            mutate(desc, "result.capacity", 64),  # result does not fit: refused at the end
        ]
        for body_shm in cases:
            parts = P.pack(P.HARMONIZE, {"shm": body_shm}, token=run.token)
            msg_id = P.unpack(parts, local="client").id
            sock.send_multipart(parts)
            reply = recv_final(sock, msg_id)
            assert reply.type == P.ERROR, body_shm
            assert reply.body["code"] in ("bad_frames", "too_large", "shm_unavailable")
        pixels = P.harmonize_frames(*(P.Pixels.of(a) for a in scene(40, 30)))
        both = P.pack(P.HARMONIZE, {"shm": desc}, pixels, token=run.token)
        sock.send_multipart(both)
        reply = recv_final(sock, P.unpack(both, local="client").id)
        assert "not both" in reply.body["message"]
        assert run.client.ping()["pid"] == os.getpid()
        good = send_harmonize(run.client, *scene(40, 30))
        assert good.transport == "shm"
    finally:
        run.close()


def fill_segment(frames: dict[str, P.Pixels], result_bytes: int) -> tuple[shm.Segment, dict]:
    """A new segment holding ``frames``, and its request description."""
    offsets, size = shm.plan({n: p.nbytes for n, p in frames.items()})
    segment = shm.Segment(size, result_bytes)
    for name, pix in frames.items():
        segment.write(offsets[name], pix.data)
    return segment, segment.describe(offsets, frames)


def recv_stage(sock, parent: str, stage: str) -> None:
    """Read messages until ``parent``'s progress event ``stage``."""
    while True:
        msg = recv(sock)
        if msg.parent == parent and msg.type == P.PROGRESS and msg.body["stage"] == stage:
            return


@pytest.mark.parametrize("when", ["queued", "running"])
def test_a_segment_truncated_during_its_job_gets_an_error_and_the_daemon_goes_on(engine, when):
    """Queued: the worker's preadv of the frames comes up short. Running (frames already
    read): the result is not written into the shrunk file. Either way an error reply with the
    request id, where a mapping of the lost pages would have killed the daemon (SIGBUS)."""
    run = Running(GatedEngine(engine.model))
    segment = None
    try:
        sock, token = run.raw(), run.token
        frames = P.harmonize_frames(*(P.Pixels.of(a) for a in scene(40, 30)))
        if when == "queued":  # a frames job holds the worker at its first checkpoint
            sock.send_multipart(P.pack(P.HARMONIZE, {}, frames, token=token, msg_id="first"))
            recv_stage(sock, "first", "composed")
        segment, desc = fill_segment(frames, 40 * 30 * 4)
        sock.send_multipart(P.pack(P.HARMONIZE, {"shm": desc}, token=token, msg_id="cut"))
        recv_stage(sock, "cut", "received" if when == "queued" else "composed")
        os.truncate(segment.path, desc["frames"][0]["offset"] + 100)
        run.server.engine.gate.set()
        if when == "queued":  # its reply comes first
            assert recv_final(sock, "first").type == P.reply_type(P.HARMONIZE)
        reply = recv_final(sock, "cut")
        assert reply.type == P.ERROR and reply.body["code"] == P.ErrorCode.BAD_FRAMES
        expected = "was it truncated" if when == "queued" else "resized during the request"
        assert expected in reply.body["message"]
        assert os.path.getsize(segment.path) == desc["frames"][0]["offset"] + 100
        assert run.client.ping()["pid"] == os.getpid()
        assert send_harmonize(run.client, *scene(40, 30)).transport == "shm"
    finally:
        run.server.engine.gate.set()
        run.close()
        if segment is not None:
            segment.close()


def test_a_segment_grown_in_place_is_read_at_its_new_size(engine, frames):
    """The same file (same inode), grown, with the result region moved into the new part."""
    run = Running(engine)
    segment, desc = fill_segment(frames, 40 * 30 * 4)
    try:
        sock = run.raw()
        sock.send_multipart(P.pack(P.HARMONIZE, {"shm": desc}, token=run.token, msg_id="g1"))
        first = recv_final(sock, "g1")
        assert first.type == P.reply_type(P.HARMONIZE), first.body
        grown = {**desc, "size": segment.size + 2 * shm.PAGE}
        grown["result"] = {"offset": segment.size, "capacity": 2 * shm.PAGE}
        os.truncate(segment.path, grown["size"])
        sock.send_multipart(P.pack(P.HARMONIZE, {"shm": grown}, token=run.token, msg_id="g2"))
        second = recv_final(sock, "g2")
        assert second.type == P.reply_type(P.HARMONIZE), second.body
        assert second.body["result"]["offset"] == segment.size
        shape = second.body["result"]["shape"]
        assert shape == first.body["result"]["shape"]
        nbytes = shape[0] * shape[1] * shape[2]
        with open(segment.path, "rb") as fh:
            old = os.pread(fh.fileno(), nbytes, segment.result_offset)
            new = os.pread(fh.fileno(), nbytes, segment.size)
        assert new == old and any(new)
    finally:
        run.close()
        segment.close()

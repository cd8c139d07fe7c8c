"""The shared-memory transport (protocol 1.1): sealed memfd segments, the daemon's checks of a
request's description and of the file, mapping reuse and release, and the client/server round
trip with fallback to frames."""

from __future__ import annotations

import copy
import errno
import fcntl
import gc
import os
from pathlib import Path

import numpy as np
import pytest

from layer_harmonizer.daemon.engine import Engine
from layer_harmonizer.wire import messages as M
from layer_harmonizer.wire import protocol as P
from layer_harmonizer.wire import receive as R
from layer_harmonizer.wire import shm, shm_mapping
from layer_harmonizer.wire.client import Client, DaemonError
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

pytestmark = pytest.mark.skipif(not shm.available(), reason="shared memory needs Linux memfd")


def own_segments() -> set[str]:
    """The names of the segments (memfds) this process has open: its clients' and, in-process,
    its server's mappings (Python's mmap keeps a duplicate of the file descriptor)."""
    names = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("/memfd:harmonize-") and "probe" not in target:
            names.add(target.removeprefix("/memfd:").removesuffix(" (deleted)"))
    return names


def raw_memfd(size: int, seals: int = 0, allow_sealing: bool = True) -> tuple[int, str]:
    """A memfd of ``size`` bytes made by hand (not a :class:`shm.Segment`), and its name."""
    name = f"harmonize-{os.urandom(16).hex()}"
    flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if allow_sealing else 0)
    fd = os.memfd_create(name, flags)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, shm.F_ADD_SEALS, seals)
    return fd, name


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


def test_segment_is_a_sealed_preallocated_memfd_closed_on_close():
    segment = shm.Segment(1000, 5000)
    st = os.fstat(segment.fd)
    assert st.st_size == segment.size and st.st_blocks * 512 >= segment.size  # allocated
    assert segment.result_offset % shm.PAGE == 0 and segment.result_capacity >= 5000
    seals = fcntl.fcntl(segment.fd, shm.F_GET_SEALS)
    assert seals & shm.F_SEAL_SHRINK and seals & shm.F_SEAL_SEAL
    assert segment.name in own_segments()
    desc = segment.describe({}, {})
    assert (desc["name"], desc["pid"], desc["fd"]) == (segment.name, os.getpid(), segment.fd)
    segment.close()
    assert segment.name not in own_segments()
    segment.close()  # twice is harmless


def test_nobody_can_shrink_a_segment_or_unseal_it():
    """The seal that makes the daemon's mapping safe: ftruncate to less fails with EPERM, also
    through /proc (as another process of the user would do it); growing is allowed."""
    segment = shm.Segment(1000, 5000)
    try:
        for shrink in (
            lambda: os.ftruncate(segment.fd, segment.size - shm.PAGE),
            lambda: os.truncate(f"/proc/self/fd/{segment.fd}", 0),
        ):
            with pytest.raises(PermissionError) as caught:
                shrink()
            assert caught.value.errno == errno.EPERM
        with pytest.raises(PermissionError):  # F_SEAL_SEAL: no seal can be added or removed
            fcntl.fcntl(segment.fd, shm.F_ADD_SEALS, 0x0008)  # F_SEAL_WRITE
        assert os.fstat(segment.fd).st_size == segment.size
        os.ftruncate(segment.fd, segment.size + shm.PAGE)
        assert os.fstat(segment.fd).st_size == segment.size + shm.PAGE
    finally:
        segment.close()


def test_a_forgotten_segment_is_closed_when_collected():
    segment = shm.Segment(10, 10)
    name = segment.name
    del segment
    gc.collect()
    assert name not in own_segments()


def test_a_held_result_view_stops_reuse_and_stays_valid():
    segment = shm.Segment(64, 64)
    assert segment.reusable()
    view = segment.result(16)
    assert view.readonly and view.nbytes == 16
    alias = np.frombuffer(view, np.uint8)
    del view
    assert not segment.reusable()  # the numpy array still reads the region
    segment.close()  # the array keeps its mapping
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


def test_no_memory_for_a_segment_is_a_clear_error(monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    before = own_segments()
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(shm.ShmError, match=r"cannot allocate .* MiB of shared memory \(No space"):
        shm.Segment(100, 100)
    assert own_segments() == before  # the memfd was closed again


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
    ("name", "harmonize-" + "g" * 32, "name must match"),
    ("name", "/memfd:harmonize-" + "a" * 32, "name must match"),
    ("name", 7, "name must match"),
    ("pid", 0, "pid must be an int in"),
    ("pid", "1", "pid must be an int in"),
    ("pid", 1 << 40, "pid must be an int in"),
    ("fd", -1, "fd must be an int in"),
    ("fd", 3.0, "fd must be an int in"),
    ("fd", KeyError, "must be a map of"),
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
        shm_mapping.parse_request(mutate(desc, path, value), P.Limits(), "id1")
    assert caught.value.code in (P.ErrorCode.BAD_FRAMES, P.ErrorCode.TOO_LARGE)
    assert caught.value.msg_id == "id1"


def test_a_valid_description_maps_the_segment_to_read_frames_and_write_the_result(written, frames):
    segment, desc = written
    request = shm_mapping.parse_request(desc, P.Limits())
    mappings = shm_mapping.Mappings()
    try:
        mapping = mappings.open(request)
        for name, (offset, template) in request.frames.items():
            assert template.shape == frames[name].shape
            assert mapping[offset : offset + template.nbytes] == bytes(frames[name].data)
        start = request.result_offset
        mapping[start : start + 100] = b"\x07" * 100  # in place: the client sees it
        assert bytes(segment.result(100)) == b"\x07" * 100
        assert mappings.open(request) is mapping  # kept while the client holds the segment
    finally:
        mappings.close()


def describe_fd(desc: dict, fd: int, name: str) -> shm_mapping.Request:
    return shm_mapping.parse_request({**desc, "fd": fd, "name": name}, P.Limits())


def test_unsealed_small_or_foreign_files_are_refused_and_closed(written, tmp_path):
    _segment, desc = written
    size = desc["size"]
    before = sorted(os.listdir("/proc/self/fd"))
    cases = [
        (raw_memfd(size), "not sealed against shrinking", P.ErrorCode.BAD_FRAMES),
        (raw_memfd(size, allow_sealing=False), "not sealed", P.ErrorCode.BAD_FRAMES),
        (raw_memfd(size - 1, shm.F_SEAL_SHRINK), "less than the declared", P.ErrorCode.BAD_FRAMES),
    ]
    opened = [fd for (fd, _name), _, _ in cases]
    try:
        for (fd, name), message, code in cases:
            with pytest.raises(P.ProtocolError, match=message) as caught:
                shm_mapping.open_memfd(describe_fd(desc, fd, name), msg_id="t1")
            assert (caught.value.code, caught.value.msg_id) == (code, "t1")
        # a pipe, a wrong name and a dead pid: the link is not the segment; nothing is opened
        read_end, write_end = os.pipe()
        opened += [read_end, write_end]
        unseen = [
            describe_fd(desc, read_end, desc["name"]),
            describe_fd(desc, desc["fd"], f"harmonize-{'c' * 32}"),
            shm_mapping.parse_request({**desc, "pid": shm.ID_MAX}, P.Limits()),
        ]
        for request in unseen:
            with pytest.raises(P.ProtocolError, match="send frames instead") as caught:
                shm_mapping.open_memfd(request, msg_id="t2")
            assert (caught.value.code, caught.value.msg_id) == (P.ErrorCode.SHM_UNAVAILABLE, "t2")
        # a tmpfs or disk file is not a memfd, even under a matching name
        path = tmp_path / "segment"
        path.write_bytes(b"\0" * size)
        fd = os.open(path, os.O_RDWR)
        opened.append(fd)
        with pytest.raises(P.ProtocolError, match="is not a memfd"):
            shm_mapping._check_memfd(fd, os.readlink(f"/proc/self/fd/{fd}"), size, "shm:", "t3")
    finally:
        for fd in opened:
            os.close(fd)
    assert sorted(os.listdir("/proc/self/fd")) == before  # every refused file was closed


def test_mappings_follow_their_segments(written, frames):
    """Kept while the client holds the segment, remapped when it grew or its fd names another
    file, and unmapped by prune once the client closed it (its memory is then freed)."""
    segment, desc = written
    request = shm_mapping.parse_request(desc, P.Limits())
    mappings = shm_mapping.Mappings()
    try:
        first = mappings.open(request)
        os.ftruncate(segment.fd, segment.size + shm.PAGE)
        grown = shm_mapping.parse_request({**desc, "size": segment.size + shm.PAGE}, P.Limits())
        second = mappings.open(grown)
        assert second is not first and len(second) == segment.size + shm.PAGE
        assert first.closed and len(mappings) == 1
        assert mappings.open(request) is second  # big enough for the smaller description
        mappings.prune()
        assert len(mappings) == 1
        segment.close()
        mappings.prune()
        assert len(mappings) == 0 and second.closed
        assert segment.name not in own_segments()
    finally:
        mappings.close()


# ---- through a server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    return Engine(random_model(0))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_shm_results_equal_frames_results_bit_for_bit(engine, dtype):
    before = own_segments()  # other tests' clients may still await garbage collection
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
            assert "shm_map" in got.timings
            again = send_harmonize(shm_client, layer, mask, back, strength=0.7)
            assert shm_client._segment.name != name  # `got` still holds the first result
            np.testing.assert_array_equal(as_array(again.pixels), as_array(got.pixels))
            del got, again
            send_harmonize(shm_client, layer, mask, back)
            reused = shm_client._segment.name
            send_harmonize(shm_client, layer, mask, back)
            assert shm_client._segment.name == reused  # nothing held: the segment is reused
    finally:
        run.close()
    assert own_segments() <= before  # clients closed, server mappings unmapped: memory freed


def test_auto_falls_back_to_frames_when_the_daemon_cannot_see_the_segment(engine, tmp_path):
    run = Running(engine)
    run.server.segments.proc = tmp_path  # as if the daemon ran in another PID namespace
    try:
        with Client(run.endpoint, run.token) as client:
            layer, mask, back = scene()
            first = send_harmonize(client, layer, mask, back)
            assert first.transport == "frames" and client.transport == "frames"
            assert client._segment is None
        with Client(run.endpoint, run.token, transport="shm") as forced:
            with pytest.raises(DaemonError, match="cannot open the segment") as caught:
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
            mutate(desc, "name", f"harmonize-{'c' * 32}"),  # the fd is another segment
            mutate(desc, "fd", 0),  # not a segment at all
            mutate(desc, "result.capacity", 64),  # result does not fit: refused at the end
        ]
        for body_shm in cases:
            parts = P.pack(P.HARMONIZE, {"shm": body_shm}, token=run.token)
            msg_id = R.unpack(parts, local="client").id
            sock.send_multipart(parts)
            reply = recv_final(sock, msg_id)
            assert reply.type == P.ERROR, body_shm
            assert reply.body["code"] in ("bad_frames", "too_large", "shm_unavailable")
        pixels = M.harmonize_frames(*(P.Pixels.of(a) for a in scene(40, 30)))
        both = P.pack(P.HARMONIZE, {"shm": desc}, pixels, token=run.token)
        sock.send_multipart(both)
        reply = recv_final(sock, R.unpack(both, local="client").id)
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
def test_a_client_cannot_truncate_its_segment_during_a_job(engine, when):
    """Once a SIGBUS that killed the daemon. Queued or running (frames mapped and read), the
    client's ftruncate fails with EPERM (the seal), so the daemon's mapping keeps every page:
    the job finishes with the result in the segment, and the daemon goes on serving."""
    run = Running(GatedEngine(engine.model))
    segment = None
    try:
        sock, token = run.raw(), run.token
        frames = M.harmonize_frames(*(P.Pixels.of(a) for a in scene(40, 30)))
        if when == "queued":  # a frames job holds the worker at its first checkpoint
            sock.send_multipart(P.pack(P.HARMONIZE, {}, frames, token=token, msg_id="first"))
            recv_stage(sock, "first", "composed")
        segment, desc = fill_segment(frames, 40 * 30 * 4)
        sock.send_multipart(P.pack(P.HARMONIZE, {"shm": desc}, token=token, msg_id="cut"))
        recv_stage(sock, "cut", "received" if when == "queued" else "composed")
        for size in (desc["frames"][0]["offset"] + 100, 0):
            with pytest.raises(PermissionError) as caught:
                os.ftruncate(segment.fd, size)
            assert caught.value.errno == errno.EPERM
        run.server.engine.gate.set()
        if when == "queued":  # its reply comes first
            assert recv_final(sock, "first").type == P.reply_type(P.HARMONIZE)
        reply = recv_final(sock, "cut")
        assert reply.type == P.reply_type(P.HARMONIZE), reply.body
        shape = reply.body["result"]["shape"]
        assert any(segment.result(shape[0] * shape[1] * shape[2]))
        assert os.fstat(segment.fd).st_size == segment.size
        assert run.client.ping()["pid"] == os.getpid()
        assert send_harmonize(run.client, *scene(40, 30)).transport == "shm"
    finally:
        run.server.engine.gate.set()
        run.close()
        if segment is not None:
            segment.close()


def test_an_unsealed_segment_is_refused_with_the_request_id(engine, frames):
    """A memfd a client forgot to seal could shrink under the daemon's mapping: refused before
    it is mapped, and the daemon goes on serving."""
    run = Running(engine)
    segment, desc = fill_segment(frames, 40 * 30 * 4)
    fd, name = raw_memfd(segment.size)
    try:
        sock = run.raw()
        body = {"shm": {**desc, "fd": fd, "name": name}}
        sock.send_multipart(P.pack(P.HARMONIZE, body, token=run.token, msg_id="open"))
        reply = recv_final(sock, "open")
        assert reply.type == P.ERROR and reply.body["code"] == P.ErrorCode.BAD_FRAMES
        assert "F_SEAL_SHRINK" in reply.body["message"]
        assert len(run.server.segments) == 0
        assert send_harmonize(run.client, *scene(40, 30)).transport == "shm"
    finally:
        run.close()
        segment.close()
        os.close(fd)


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
        os.ftruncate(segment.fd, grown["size"])  # growing is allowed
        sock.send_multipart(P.pack(P.HARMONIZE, {"shm": grown}, token=run.token, msg_id="g2"))
        second = recv_final(sock, "g2")
        assert second.type == P.reply_type(P.HARMONIZE), second.body
        assert second.body["result"]["offset"] == segment.size
        shape = second.body["result"]["shape"]
        assert shape == first.body["result"]["shape"]
        nbytes = shape[0] * shape[1] * shape[2]
        old = os.pread(segment.fd, nbytes, segment.result_offset)
        new = os.pread(segment.fd, nbytes, segment.size)
        assert new == old and any(new)
    finally:
        run.close()
        segment.close()

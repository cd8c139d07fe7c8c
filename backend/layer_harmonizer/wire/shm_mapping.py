"""The daemon side of the shared-memory transport (:mod:`.shm`): check a request's ``"shm"``
description (:func:`parse_request`), open and check the client's memfd (:func:`open_memfd`)
and keep it mapped while the client holds it (:class:`Mappings`). Anything wrong becomes a
:class:`~.protocol.ProtocolError` with the request id. Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import protocol as P
from . import receive as R
from .shm import F_GET_SEALS, F_SEAL_SHRINK, ID_MAX, NAME_PATTERN, PROC


@dataclass(frozen=True)
class Request:
    """A checked ``"shm"`` description: frame templates (``data=None``) with their offsets."""

    name: str
    pid: int
    fd: int
    size: int
    frames: dict[str, tuple[int, P.Pixels]]
    result_offset: int
    result_capacity: int


def _int(raw: Any, what: str, msg_id: str | None) -> int:
    if type(raw) is not int or raw < 0:
        raise P.ProtocolError(P.ErrorCode.BAD_FRAMES, f"shm: {what} must be an int >= 0", msg_id)
    return raw


KEYS = {"name", "pid", "fd", "size", "frames", "result"}


def parse_request(raw: Any, limits: P.Limits, msg_id: str | None = None) -> Request:
    """Check a request body's ``"shm"`` entry; nothing is opened or allocated.

    Raises :class:`~.protocol.ProtocolError` (``bad_frames`` or ``too_large``).
    """

    def bad(text: str) -> P.ProtocolError:
        return P.ProtocolError(P.ErrorCode.BAD_FRAMES, f"shm: {text}", msg_id)

    if not isinstance(raw, dict) or set(raw) != KEYS:
        raise bad("must be a map of name, pid, fd, size, frames, result")
    name = raw["name"]
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise bad(f"name must match {NAME_PATTERN.pattern}")
    pid, fd = raw["pid"], raw["fd"]
    if type(pid) is not int or not 0 < pid <= ID_MAX:
        raise bad(f"pid must be an int in 1..{ID_MAX}")
    if type(fd) is not int or not 0 <= fd <= ID_MAX:
        raise bad(f"fd must be an int in 0..{ID_MAX}")
    size = _int(raw["size"], "size", msg_id)
    ceiling = limits.max_frames * limits.max_frame_bytes + limits.max_frame_bytes
    if size > ceiling:
        raise P.ProtocolError(
            P.ErrorCode.TOO_LARGE, f"shm: size {size} is over the limit of {ceiling}", msg_id
        )
    specs, result = raw["frames"], raw["result"]
    if not isinstance(specs, list) or len(specs) > limits.max_frames:
        raise bad(f"frames must be a list of at most {limits.max_frames}")
    if not isinstance(result, dict) or set(result) != {"offset", "capacity"}:
        raise bad("result must be a map of offset, capacity")
    result_region = (
        _int(result["offset"], "result offset", msg_id),
        _int(result["capacity"], "result capacity", msg_id),
    )
    regions = [result_region]
    frames: dict[str, tuple[int, P.Pixels]] = {}
    for spec in specs:
        if not isinstance(spec, dict):
            raise bad("each frame must be a map")
        offset = _int(spec.get("offset"), "frame offset", msg_id)
        declared = {k: v for k, v in spec.items() if k != "offset"}
        template = R.check_frame(declared, None, limits, msg_id)
        if spec["name"] in frames:
            raise bad(f"frame {P.echo(spec['name'])} declared twice")
        frames[spec["name"]] = (offset, template)
        regions.append((offset, template.nbytes))
    for start, length in regions:
        if start + length > size:
            raise bad(f"region {start}..{start + length} lies outside the {size}-byte segment")
    ordered = sorted(regions)
    for (a, alen), (b, _) in itertools.pairwise(ordered):
        if a + alen > b:
            raise bad("frames and the result region overlap")
    return Request(name, pid, fd, size, frames, *result_region)


class Mappings:
    """The daemon's mappings of client segments, kept while their clients hold them.

    Mapping 300 MB costs ~10 ms (``MAP_POPULATE``) and unmapping ~5 ms, so a segment stays
    mapped across requests while its client's ``/proc/<pid>/fd/<fd>`` still names the same
    file; :meth:`prune` (called about once a second by the daemon loop) unmaps the others, so
    the memory of a closed segment or a dead client is freed, and at most ``keep`` stay
    mapped. A mapping is never larger than the file, and the file can never shrink (its seal),
    so touching any byte of it is safe. Main thread only; a job's views keep their mapping
    alive even after it is dropped here.
    """

    def __init__(self, proc: Path = PROC, keep: int = 2) -> None:
        self.proc = Path(proc)
        self.keep = keep
        self._maps: dict[tuple[int, int], tuple[tuple[int, int], mmap.mmap]] = {}

    def open(self, request: Request, msg_id: str | None = None) -> mmap.mmap:
        """A read-write mapping of at least ``request.size`` bytes of the client's segment,
        checked by :func:`open_memfd` (raises its ``ProtocolError``)."""
        fd = open_memfd(request, self.proc, msg_id)
        try:
            st = os.fstat(fd)
            identity, key = (st.st_dev, st.st_ino), (request.pid, request.fd)
            cached = self._maps.pop(key, None)
            if cached is not None and cached[0] == identity and len(cached[1]) >= request.size:
                self._maps[key] = cached  # most recent last
                return cached[1]
            if cached is not None:
                _unmap(cached[1])
            # MAP_POPULATE: map every page now, instead of one page fault per 4 KiB later
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            mapping = mmap.mmap(fd, request.size, flags=flags)
        except OSError as exc:
            raise P.ProtocolError(
                P.ErrorCode.BAD_FRAMES, f"shm: cannot map the segment: {exc.strerror}", msg_id
            ) from None
        finally:
            os.close(fd)
        self._maps[key] = (identity, mapping)
        while len(self._maps) > self.keep:
            _unmap(self._maps.pop(next(iter(self._maps)))[1])
        return mapping

    def prune(self) -> None:
        """Unmap segments whose client closed them or died."""
        for key, (identity, mapping) in list(self._maps.items()):
            try:
                st = os.stat(self.proc / str(key[0]) / "fd" / str(key[1]))
                gone = (st.st_dev, st.st_ino) != identity
            except OSError:
                gone = True
            if gone:
                del self._maps[key]
                _unmap(mapping)

    def close(self) -> None:
        for _identity, mapping in self._maps.values():
            _unmap(mapping)
        self._maps.clear()

    def __len__(self) -> int:
        return len(self._maps)


def _unmap(mapping: mmap.mmap) -> None:
    """Unmap now, or, while a job still has views of it, when the last one goes."""
    with contextlib.suppress(BufferError):
        mapping.close()


def open_memfd(request: Request, proc: Path = PROC, msg_id: str | None = None) -> int:
    """Open a client's segment read-write through ``/proc/<pid>/fd/<fd>`` and check it; returns
    the file descriptor, which the caller closes.

    ``/proc/<pid>/fd/<fd>`` is a magic link (``O_NOFOLLOW`` would refuse it), so the link's
    target is compared with the memfd's name before it is opened (nothing else, e.g. a device,
    is ever opened) and the opened file is checked with ``fstat`` and ``F_GET_SEALS``.

    Raises ``ProtocolError``: ``shm_unavailable`` when the link does not name the segment here
    (another PID namespace, machine or user: the client then falls back to frames), else
    ``bad_frames`` naming the problem.
    """
    link = Path(proc) / str(request.pid) / "fd" / str(request.fd)
    expected = f"/memfd:{request.name} (deleted)"
    where = f"pid {request.pid} fd {request.fd}"
    try:
        target = os.readlink(link)
        if target != expected:
            raise P.ProtocolError(
                P.ErrorCode.SHM_UNAVAILABLE,
                f"shm: {where} is not the segment {request.name} on the daemon's side "
                "(another PID namespace?); send frames instead",
                msg_id,
            )
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
        fd = os.open(link, flags)
    except OSError as exc:
        raise P.ProtocolError(
            P.ErrorCode.SHM_UNAVAILABLE,
            f"shm: cannot open the segment ({where}) on the daemon's side: {exc.strerror}; "
            "send frames instead",
            msg_id,
        ) from None
    try:
        _check_memfd(fd, expected, request.size, f"shm: segment {request.name}", msg_id)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_memfd(fd: int, expected: str, size: int, what: str, msg_id: str | None) -> None:
    """The file open at ``fd`` is the memfd ``expected`` names (not replaced since the link
    was read), of this user, sealed against shrinking and at least ``size`` bytes long. The
    seals are read before the size: once sealed, the size read can only grow."""

    def bad(problem: str) -> P.ProtocolError:
        return P.ProtocolError(P.ErrorCode.BAD_FRAMES, f"{what} {problem}", msg_id)

    try:
        target = os.readlink(PROC / "self" / "fd" / str(fd))
        st = os.fstat(fd)
    except OSError as exc:
        raise bad(f"cannot be checked: {exc.strerror}") from None
    if target != expected:
        raise bad("was replaced while it was opened")
    if not stat.S_ISREG(st.st_mode) or st.st_dev != _memfd_device():
        raise bad("is not a memfd")
    if st.st_uid != os.geteuid():
        raise bad("belongs to another user")
    try:
        seals = fcntl.fcntl(fd, F_GET_SEALS)
    except OSError:
        raise bad("is not a memfd that can be sealed (MFD_ALLOW_SEALING)") from None
    if not seals & F_SEAL_SHRINK:
        raise bad("is not sealed against shrinking (F_SEAL_SHRINK); it could vanish while mapped")
    now = os.fstat(fd).st_size
    if now < size:
        raise bad(f"is {now} bytes, less than the declared {size}")


@functools.cache
def _memfd_device() -> int:
    """The device number of the kernel's internal memfd (shmem) filesystem, where every
    memfd made without ``MFD_HUGETLB`` lives."""
    fd = os.memfd_create("harmonize-probe", os.MFD_CLOEXEC)
    try:
        return os.fstat(fd).st_dev
    finally:
        os.close(fd)

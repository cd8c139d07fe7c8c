"""Shared-memory transport for pixel frames between a client and a daemon on one machine.

New in protocol 1.1 (spec: docs/protocol.md, "Shared memory"). Instead of sending megabytes of
pixels through a socket, a client on the same machine writes them into a segment: a sealed
``memfd`` (an anonymous shared-memory file) that it creates, and names in the request by its
own pid and file descriptor. The daemon opens it through ``/proc/<pid>/fd/<fd>``, maps it, reads
the frames in place and writes the result into the segment's result region (zero copy).

Who owns what:

- The **client** creates, reuses and closes its segment (:class:`Segment`). The memfd is
  sealed with ``F_SEAL_SHRINK`` (and ``F_SEAL_SEAL``) before anyone else sees it, so nobody,
  the client included, can ever make it smaller: a mapping of it can never lose pages, and
  so never raise SIGBUS in the daemon. A memfd has no name in any directory: it vanishes with
  its last file descriptor and mapping, so a killed client leaves nothing behind.
- The **daemon** maps a segment for the jobs that use it (:class:`Mappings`) after checking
  the request's description (:func:`parse_request`: name pattern, every frame and the result
  region inside the declared size and disjoint) and then the file itself (:func:`open_memfd`):
  ``/proc/<pid>/fd/<fd>`` links to ``/memfd:<name> (deleted)``, it is a regular file on the
  kernel's memfd filesystem, owned by the daemon's user, sealed against shrinking, and at
  least the declared size. Anything wrong becomes an error reply with the request id.

Trust: the kernel lets a process open another's ``/proc/<pid>/fd`` entries only with ptrace
read access (the same user, or root), and only processes of the daemon's own user pass the
owner check; those can already do anything the daemon can. The checks are against mistakes,
other users and other PID namespaces, not against the same user.

Standard library only (a plugin carries a copy, like :mod:`layer_harmonizer.client`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import mmap
import os
import re
import secrets
import stat
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # inside the backend package, or vendored beside protocol.py
    from . import protocol as P
except ImportError:
    import protocol as P  # type: ignore[no-redef]

PROC = Path("/proc")
PREFIX = "harmonize-"
NAME_PATTERN = re.compile(r"harmonize-[0-9a-f]{32}\Z")
ALIGN = 64
"""Frame offsets are multiples of this (cache-line aligned rows for SIMD loops)."""
PAGE = mmap.ALLOCATIONGRANULARITY
"""The result region starts on a page so a client can map it on its own."""
ID_MAX = (1 << 31) - 1
"""Largest pid or file descriptor number a description may name."""
# fcntl's names exist on Linux from Python 3.8 (kernel 3.17); the numbers are the kernel's ABI
F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
F_SEAL_SEAL = getattr(fcntl, "F_SEAL_SEAL", 0x0001)
F_SEAL_SHRINK = getattr(fcntl, "F_SEAL_SHRINK", 0x0002)


class ShmError(Exception):
    """A segment cannot be created or used on this side (the caller falls back to frames)."""


def available() -> bool:
    """True where this module works: Linux with ``memfd_create`` (Python >= 3.8)."""
    return sys.platform.startswith("linux") and hasattr(os, "memfd_create")


def align(n: int, to: int = ALIGN) -> int:
    return -(-n // to) * to


def plan(frame_sizes: Mapping[str, int]) -> tuple[dict[str, int], int]:
    """Offsets of frames packed back to back (each :data:`ALIGN`-aligned), and the bytes they
    need."""
    offsets, end = {}, 0
    for name, size in frame_sizes.items():
        offsets[name] = end
        end = align(end + size)
    return offsets, end


# ---- client side ----------------------------------------------------------------------------


class Segment:
    """A client's segment: an input region for frames, then a page-aligned result region.

    A memfd (``MFD_CLOEXEC | MFD_ALLOW_SEALING``) named ``harmonize-<32 hex>``;
    ``posix_fallocate`` allocates every page up front, so a lack of memory fails here with a
    clear error and not later, and ``F_SEAL_SHRINK | F_SEAL_SEAL`` then fixes that it never
    gets smaller (``ftruncate`` to less fails with EPERM, for everyone). Both regions stay
    mapped for the segment's life (mapping costs page faults), so a client reuses one segment
    while requests fit and no caller still holds the previous result (:meth:`reusable`).
    :meth:`close` unmaps and closes; the memory is freed with the last mapping.
    """

    def __init__(self, input_capacity: int, result_capacity: int) -> None:
        self.name = f"{PREFIX}{secrets.token_hex(16)}"
        self.result_offset = align(max(input_capacity, 1), PAGE)
        self.result_capacity = align(max(result_capacity, 1), PAGE)
        self.size = self.result_offset + self.result_capacity
        try:
            self.fd = os.memfd_create(self.name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except (AttributeError, OSError) as exc:
            reason = getattr(exc, "strerror", None) or "not supported here"
            raise ShmError(f"cannot create a shared-memory segment (memfd): {reason}") from None
        # closed by close(), or when this object is collected, or at interpreter exit
        self._discard = weakref.finalize(self, _close_fd, self.fd)
        try:
            os.posix_fallocate(self.fd, 0, self.size)
        except OSError as exc:
            self._discard()
            raise ShmError(
                f"cannot allocate {self.size >> 20} MiB of shared memory ({exc.strerror}); "
                "free some memory or use a smaller layer"
            ) from None
        try:
            fcntl.fcntl(self.fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_SEAL)
            self._inputs = mmap.mmap(self.fd, self.result_offset)
            populate = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self._results = mmap.mmap(
                self.fd, self.result_capacity, flags=populate, offset=self.result_offset
            )
        except OSError as exc:
            self._discard()
            raise ShmError(f"cannot seal or map a shared-memory segment: {exc.strerror}") from None

    @property
    def input_capacity(self) -> int:
        return self.result_offset

    def fits(self, input_bytes: int, result_bytes: int) -> bool:
        """Big enough for a request, and not more than 4 times too big."""
        need = align(input_bytes, PAGE) + align(result_bytes, PAGE)
        return (
            input_bytes <= self.input_capacity
            and result_bytes <= self.result_capacity
            and self.size < 4 * need
        )

    def reusable(self) -> bool:
        """False while a view from :meth:`result` is still referenced somewhere.

        ``mmap.resize`` refuses while buffers are exported; resizing the result mapping (the
        file's tail) to its own size changes nothing otherwise (the file keeps its size).
        """
        try:
            self._results.resize(self.result_capacity)
        except BufferError:
            return False
        return True

    def write(self, offset: int, data: Any) -> None:
        """Copy a buffer into the input region at ``offset``."""
        src = memoryview(data).cast("B")
        with memoryview(self._inputs) as view:
            view[offset : offset + src.nbytes] = src

    def result(self, nbytes: int) -> memoryview:
        """A read-only view of the first ``nbytes`` of the result region; it stays valid (and
        the segment is not reused) for as long as it is referenced."""
        return memoryview(self._results).toreadonly()[:nbytes]

    def describe(self, offsets: Mapping[str, int], frames: Mapping[str, P.Pixels]) -> dict:
        """The request body's ``"shm"`` entry for ``frames`` written at ``offsets``."""
        return {
            "name": self.name,
            "pid": os.getpid(),
            "fd": self.fd,
            "size": self.size,
            "frames": [{**pix.spec(n), "offset": offsets[n]} for n, pix in frames.items()],
            "result": {"offset": self.result_offset, "capacity": self.result_capacity},
        }

    def close(self) -> None:
        """Unmap and close (a result view still held keeps its own mapping)."""
        for mapping in (self._inputs, self._results):
            with contextlib.suppress(BufferError):
                mapping.close()
        self._discard()


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


# ---- daemon side ----------------------------------------------------------------------------


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

    Raises :class:`~layer_harmonizer.protocol.ProtocolError` (``bad_frames`` or ``too_large``).
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
        template = P.check_frame(declared, None, limits, msg_id)
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

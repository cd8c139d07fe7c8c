"""Shared-memory transport for pixel frames between a client and a daemon on one machine.

New in protocol 1.1 (spec: docs/protocol.md, "Shared memory"). Instead of sending megabytes of
pixels through a TCP socket, a client on the same machine writes them into a segment: a file
in ``/dev/shm`` (Linux tmpfs) that it creates, and names in the request. The daemon copies the
frames out of the file and writes the result into the segment's result region.

Who owns what:

- The **client** creates, reuses, grows and unlinks its segment (:class:`Segment`). The name
  ``harmonize-<creator pid>-<32 hex>`` lets a daemon remove segments whose creator died
  (:func:`sweep_stale`), so a killed plugin leaves nothing behind in ``/dev/shm`` for long.
- The **daemon** opens a segment for the duration of one job (:func:`open_segment`) after
  checking the request's description of it (:func:`parse_request`): name pattern, no symlink,
  a regular file owned by its own user with mode 0600, the exact declared size, and every
  frame and the result region inside it and disjoint. Anything wrong becomes an error reply.
  It never maps the file: it copies the frames out with ``preadv`` (:func:`read_into`) and
  the result in with ``pwrite`` (:func:`write_from`), so a client that truncates its segment
  during a job gets an error reply (a short read), where touching a mapping of the lost pages
  would kill the daemon with SIGBUS.

Trust: only processes of the daemon's own user can create such a file, and those can already
do anything the daemon can; the checks are against mistakes and other users, not against the
same user.

Standard library only (a plugin carries a copy, like :mod:`backend.client`).
"""

from __future__ import annotations

import contextlib
import errno
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

SHM_DIR = Path("/dev/shm")
PREFIX = "harmonize-"
NAME_PATTERN = re.compile(r"harmonize-([0-9]{1,10})-[0-9a-f]{32}\Z")
ALIGN = 64
"""Frame offsets are multiples of this (cache-line aligned rows for SIMD loops)."""
PAGE = mmap.ALLOCATIONGRANULARITY
"""The result region starts on a page so a client can map it on its own."""


class ShmError(Exception):
    """A segment cannot be created or used on this side (the caller falls back to frames)."""


def available() -> bool:
    """True where this module works: Linux with a writable ``/dev/shm``."""
    return sys.platform.startswith("linux") and os.access(SHM_DIR, os.W_OK | os.X_OK)


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

    Created ``O_EXCL`` with mode 0600; ``posix_fallocate`` allocates every page up front, so
    a full ``/dev/shm`` (e.g. a container's 64 MB default) fails here with a clear error and
    not as a SIGBUS later. Both regions stay mapped for the segment's life (mapping costs page
    faults), so a client reuses one segment while requests fit and no caller still holds the
    previous result (:meth:`reusable`). :meth:`close` unmaps and unlinks.
    """

    def __init__(
        self, input_capacity: int, result_capacity: int, directory: Path = SHM_DIR
    ) -> None:
        self.name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(16)}"
        self.path = Path(directory) / self.name
        self.result_offset = align(max(input_capacity, 1), PAGE)
        self.result_capacity = align(max(result_capacity, 1), PAGE)
        self.size = self.result_offset + self.result_capacity
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            self._fd = os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise ShmError(f"cannot create {self.path}: {exc.strerror}") from None
        # unlinked by close(), or when this object is collected, or at interpreter exit
        owner = os.getpid()
        self._discard = weakref.finalize(self, _remove_file, self._fd, str(self.path), owner)
        try:
            os.posix_fallocate(self._fd, 0, self.size)
            self._inputs = mmap.mmap(self._fd, self.result_offset)
            populate = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self._results = mmap.mmap(
                self._fd, self.result_capacity, flags=populate, offset=self.result_offset
            )
        except OSError as exc:
            self._discard()
            raise ShmError(
                f"cannot allocate {self.size >> 20} MiB in {directory} ({exc.strerror}); "
                "it may be too small (containers: --shm-size)"
            ) from None

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
        file's tail) to its own size changes nothing otherwise.
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
            "size": self.size,
            "frames": [{**pix.spec(n), "offset": offsets[n]} for n, pix in frames.items()],
            "result": {"offset": self.result_offset, "capacity": self.result_capacity},
        }

    def close(self) -> None:
        """Unlink the file and unmap (a result view still held keeps its own mapping)."""
        for mapping in (self._inputs, self._results):
            with contextlib.suppress(BufferError):
                mapping.close()
        self._discard()


def _remove_file(fd: int, path: str, owner: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    if os.getpid() == owner:  # not in a forked child, whose copy of the client is not the owner
        with contextlib.suppress(OSError):
            os.unlink(path)


# ---- daemon side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A checked ``"shm"`` description: frame templates (``data=None``) with their offsets."""

    name: str
    size: int
    frames: dict[str, tuple[int, P.Pixels]]
    result_offset: int
    result_capacity: int


def _int(raw: Any, what: str, msg_id: str | None) -> int:
    if type(raw) is not int or raw < 0:
        raise P.ProtocolError(P.ErrorCode.BAD_FRAMES, f"shm: {what} must be an int >= 0", msg_id)
    return raw


def parse_request(raw: Any, limits: P.Limits, msg_id: str | None = None) -> Request:
    """Check a request body's ``"shm"`` entry; nothing is opened or allocated.

    Raises :class:`~backend.protocol.ProtocolError` (``bad_frames`` or ``too_large``).
    """

    def bad(text: str) -> P.ProtocolError:
        return P.ProtocolError(P.ErrorCode.BAD_FRAMES, f"shm: {text}", msg_id)

    if not isinstance(raw, dict) or set(raw) != {"name", "size", "frames", "result"}:
        raise bad("must be a map of name, size, frames, result")
    name = raw["name"]
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise bad(f"name must match {NAME_PATTERN.pattern}")
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
    return Request(name, size, frames, *result_region)


def open_segment(request: Request, directory: Path = SHM_DIR, msg_id: str | None = None) -> int:
    """Open a client's segment read-write after checking the file itself; returns the file
    descriptor, which the caller closes.

    Raises ``ProtocolError``: ``shm_unavailable`` when the file does not exist here
    (another machine, container or mount namespace: the client then falls back to
    frames), else ``bad_frames`` naming the problem.
    """
    path = Path(directory) / request.name
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise P.ProtocolError(
            P.ErrorCode.SHM_UNAVAILABLE,
            f"shm: no segment {path} on the daemon's side; send frames instead",
            msg_id,
        ) from None
    except OSError as exc:
        raise P.ProtocolError(
            P.ErrorCode.SHM_UNAVAILABLE, f"shm: cannot open {path}: {exc.strerror}", msg_id
        ) from None
    try:
        _check_file(os.fstat(fd), request.size, path, msg_id)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_into(fd: int, offset: int, buffer: Any, what: str, msg_id: str | None = None) -> None:
    """Fill ``buffer`` (any writable C-contiguous buffer) with the segment's bytes from
    ``offset`` on, by ``os.preadv`` (a syscall that may return fewer bytes: looped).

    Raises ``ProtocolError`` (``bad_frames``) when the file ends first (the client truncated
    it) or cannot be read.
    """
    view = memoryview(buffer).cast("B")
    done, total = 0, view.nbytes
    try:
        while done < total:
            count = os.preadv(fd, [view[done:]], offset + done)
            if count == 0:
                break
            done += count
    except OSError as exc:
        raise P.ProtocolError(
            P.ErrorCode.BAD_FRAMES, f"shm: cannot read {what}: {exc.strerror}", msg_id
        ) from None
    finally:
        view.release()
    if done < total:
        raise P.ProtocolError(
            P.ErrorCode.BAD_FRAMES,
            f"shm: {what}: the segment ended after {done} of {total} bytes at offset {offset} "
            "(was it truncated during the request?)",
            msg_id,
        )


def write_from(fd: int, offset: int, data: Any, size: int, msg_id: str | None = None) -> None:
    """Copy ``data`` (a C-contiguous buffer) into the segment at ``offset`` by ``os.pwrite``
    (looped over short writes), after checking the file still has its declared ``size``: a
    segment truncated during the job is an error reply, not silently grown back.

    Raises ``ProtocolError`` (``bad_frames``).
    """
    try:
        now = os.fstat(fd).st_size
        if now != size:
            raise P.ProtocolError(
                P.ErrorCode.BAD_FRAMES,
                f"shm: the segment is {now} bytes, not the declared {size} "
                "(was it resized during the request?); the result was not written",
                msg_id,
            )
        with memoryview(data) as src, src.cast("B") as view:
            done = 0
            while done < view.nbytes:
                count = os.pwrite(fd, view[done:], offset + done)
                if count == 0:
                    raise OSError(errno.EIO, "no progress writing the segment")
                done += count
    except OSError as exc:
        raise P.ProtocolError(
            P.ErrorCode.BAD_FRAMES, f"shm: cannot write the result: {exc.strerror}", msg_id
        ) from None


def _check_file(st: os.stat_result, size: int, path: Path, msg_id: str | None) -> None:
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = "belongs to another user"
    elif st.st_mode & 0o077:
        problem = f"has mode {stat.S_IMODE(st.st_mode):o}; it must be 600"
    elif st.st_size != size:
        problem = f"is {st.st_size} bytes, not the declared {size}"
    if problem:
        raise P.ProtocolError(P.ErrorCode.BAD_FRAMES, f"shm: {path} {problem}", msg_id)


def sweep_stale(directory: Path = SHM_DIR) -> int:
    """Unlink this user's segments whose creating process is gone; returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        found = NAME_PATTERN.match(entry.name)
        if not found or _alive(int(found.group(1))):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid == os.geteuid():
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that pid: not ours, leave it
        return True
    except (OverflowError, OSError):
        return False
    return True

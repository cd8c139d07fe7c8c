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
- The **daemon** maps a segment for the jobs that use it (:class:`.shm_mapping.Mappings`) after
  checking the request's description (:func:`.shm_mapping.parse_request`: name pattern, every
  frame and the result region inside the declared size and disjoint) and then the file itself
  (:func:`.shm_mapping.open_memfd`):
  ``/proc/<pid>/fd/<fd>`` links to ``/memfd:<name> (deleted)``, it is a regular file on the
  kernel's memfd filesystem, owned by the daemon's user, sealed against shrinking, and at
  least the declared size. Anything wrong becomes an error reply with the request id.

Trust: the kernel lets a process open another's ``/proc/<pid>/fd`` entries only with ptrace
read access (the same user, or root), and only processes of the daemon's own user pass the
owner check; those can already do anything the daemon can. The checks are against mistakes,
other users and other PID namespaces, not against the same user.

Standard library only (the plug-ins carry it with the rest of :mod:`layer_harmonizer.wire`).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import re
import secrets
import sys
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import protocol as P

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

    def fits(self, input_bytes: int, result_bytes: int, *, shrink: bool = True) -> bool:
        """Big enough for a request, and (``shrink``) not more than 4 times too big."""
        need = align(input_bytes, PAGE) + align(result_bytes, PAGE)
        return (
            input_bytes <= self.input_capacity
            and result_bytes <= self.result_capacity
            and (not shrink or self.size < 4 * need)
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

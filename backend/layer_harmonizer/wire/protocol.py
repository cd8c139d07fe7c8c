"""Wire protocol between the ``harmonize serve`` daemon and its clients (spec: docs/protocol.md).

A message is a ZeroMQ multipart message (DEALER client, ROUTER daemon)::

    [envelope, body, *frames]

- ``envelope``: msgpack map ``{"version": [major, minor], "id": str, "type": str,
  "token": str, "parent": str | None}``. Its layout never changes between protocol versions,
  so any peer can read the version and refuse clearly.
- ``body``: msgpack map; binary pixel data is never inside it. It declares the frames in
  ``body["frames"] = [{"name": str, "shape": [int, ...], "dtype": "uint8"|"uint16"|"float32"}]``.
- ``frames``: raw little-endian, C-ordered pixel bytes, one per declaration.

Since 1.1 a client on the daemon's machine may instead put the pixels in a shared-memory
segment and describe it in ``body["shm"]`` (:mod:`.shm`), when the daemon lists ``"shm"`` in
its hello reply's ``transports``. Since 2.0 a client's first message on a connection is a
``hello_request`` without token whose ``challenge`` the daemon answers with a proof that it
holds the token (:mod:`.messages`, the bodies of each request type). Since 2.1 a frame may
declare its channel order (``"order": "BGRA"``), a ``harmonize_request`` sends the selection
instead of alpha x selection, and a ``reapply_request`` re-applies a kept job at another
strength without its pixels (docs/protocol.md, "Versioning"). The daemon listens on an
``ipc://`` socket in the private runtime dir, or on TCP with CURVE (docs/protocol.md, "Trust
model").

Decoding a received message, with every check on receipt, is :mod:`.receive`.

Standard library and msgpack only (no numpy, no torch), like all of :mod:`layer_harmonizer.wire`,
which the GIMP and Krita plug-ins carry. The protocol version is independent of the package
version (``layer_harmonizer._version``).
"""

from __future__ import annotations

import reprlib
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from . import discovery

PROTOCOL_VERSION: tuple[int, int] = (2, 1)
"""(major, minor). Minor: backwards-compatible additions. Major: peers must be updated."""
OPEN_TYPES = ("hello_request",)
"""Requests the daemon answers without a token (2.0: the hello challenge comes first)."""

# Message types: requests are answered by "<action>_reply", or by "error".
HELLO = "hello_request"
PING = "ping_request"
HARMONIZE = "harmonize_request"
CANCEL = "cancel_request"
SHUTDOWN = "shutdown_request"
REAPPLY = "reapply_request"  # 2.1
REQUEST_TYPES = (HELLO, PING, HARMONIZE, REAPPLY, CANCEL, SHUTDOWN)
PROGRESS = "progress"
ERROR = "error"


def reply_type(request_type: str) -> str:
    """``"ping_request"`` -> ``"ping_reply"``."""
    return request_type.removesuffix("_request") + "_reply"


class ErrorCode:
    """The ``code`` of an ``error`` message body (``{"code": str, "message": str}``)."""

    BAD_MESSAGE = "bad_message"  # not msgpack, wrong envelope/body structure
    UNSUPPORTED_VERSION = "unsupported_version"  # other major protocol version
    UNAUTHORIZED = "unauthorized"  # missing or wrong token
    UNKNOWN_TYPE = "unknown_type"  # message type this daemon does not know
    TOO_LARGE = "too_large"  # a size limit (envelope, body, frames, pixels) exceeded
    BAD_FRAMES = "bad_frames"  # declared shape/dtype do not match the frames sent
    INVALID_INPUT = "invalid_input"  # pixel values, sizes or options are wrong
    EMPTY_MASK = "empty_mask"  # no mask pixel above 0: nothing to harmonize
    BUSY = "busy"  # job queue full
    CANCELLED = "cancelled"  # the job was cancelled
    NOT_FOUND = "not_found"  # cancel: no such queued or running job
    OUT_OF_MEMORY = "out_of_memory"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"  # a bug: the daemon logged a traceback
    SHM_UNAVAILABLE = "shm_unavailable"  # 1.1: the shared-memory segment is not reachable here
    UNKNOWN_JOB = "unknown_job"  # 2.1: reapply of a job the daemon no longer keeps
    # Client-side only (never sent by the daemon):
    UNREACHABLE = "unreachable"  # no reply after all retries
    NO_DAEMON = discovery.NO_DAEMON  # no endpoint file / daemon could not be started
    NOT_AUTHENTIC = "not_authentic"  # 2.0: the peer failed the hello proof, or is not secured
    UNSAFE_RUNTIME_DIR = discovery.UNSAFE_RUNTIME_DIR  # 2.0: the runtime dir is not private


FRAMES, SHM = "frames", "shm"
TRANSPORTS = (FRAMES, SHM)
"""How pixels travel (1.1): raw message frames (always), or a shared-memory segment."""

DTYPES: dict[str, int] = {"uint8": 1, "uint16": 2, "float32": 4}
"""Pixel dtypes on the wire (little-endian) and their item sizes in bytes."""
ORDERS = ("RGB", "RGBA", "BGR", "BGRA")
"""Channel orders a 3- or 4-channel frame may declare (2.1; undeclared = RGB or RGBA)."""

DEFAULT_MAX_PIXELS = discovery.DEFAULT_MAX_PIXELS
"""Largest frame (height x width) accepted by default (:data:`.discovery.DEFAULT_MAX_PIXELS`)."""

ECHO_CHARS = 200
"""Most characters of a peer's value quoted in an error message (:func:`echo`)."""
MAX_ERROR_CHARS = 2000
"""Longest ``error`` message (:func:`error_body`): a reply stays far below any body limit."""

_ECHO = reprlib.Repr()
_ECHO.maxlevel, _ECHO.maxlist, _ECHO.maxdict = 3, 8, 8
_ECHO.maxstring = _ECHO.maxother = _ECHO.maxlong = ECHO_CHARS


def echo(value: Any) -> str:
    """``repr`` of a value a peer sent, for an error message: at most :data:`ECHO_CHARS`
    characters and 3 levels deep, whatever its size or nesting (``reprlib``)."""
    text = _ECHO.repr(value)
    return text if len(text) <= ECHO_CHARS else text[: ECHO_CHARS - 3] + "..."


@dataclass(frozen=True)
class Limits:
    """Size limits, checked on receipt before anything is allocated for the pixels."""

    max_envelope_bytes: int = 4096
    max_body_bytes: int = 64 * 1024
    max_frames: int = 4
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_channels: int = 4

    @property
    def max_frame_bytes(self) -> int:
        """Largest single frame: ``max_pixels`` of 4 float32 channels."""
        return self.max_pixels * self.max_channels * 4


class ProtocolError(Exception):
    """A message that cannot be accepted; becomes an ``error`` reply with ``code``.

    ``msg_id`` is the id of the offending request when it could be read (the reply's parent).
    """

    def __init__(self, code: str, message: str, msg_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.msg_id = msg_id


@dataclass(frozen=True)
class Pixels:
    """Raw pixels: a C-ordered, little-endian buffer with its shape and dtype name.

    ``shape`` is ``(H, W)`` or ``(H, W, C)``; ``data`` is any buffer (bytes, memoryview, a
    numpy array, a zmq frame buffer) of exactly ``H * W * C * itemsize`` bytes. ``order``
    (2.1, one of :data:`ORDERS`) declares the channel order; None = RGB(A).
    """

    data: Any
    shape: tuple[int, ...]
    dtype: str
    order: str | None = None

    @property
    def bgr(self) -> bool:
        """Blue comes first (``BGR``/``BGRA``, as Krita stores pixels)."""
        return self.order is not None and self.order.startswith("B")

    @classmethod
    def of(cls, array: Any, order: str | None = None) -> Pixels:
        """Wrap a numpy-like array (``.shape``, ``.dtype``, buffer protocol) without numpy."""
        dtype = str(array.dtype)
        if dtype not in DTYPES:
            raise ProtocolError(
                ErrorCode.INVALID_INPUT, f"pixel dtype must be one of {list(DTYPES)}; got {dtype}"
            )
        if sys.byteorder != "little" and DTYPES[dtype] > 1:
            raise ProtocolError(ErrorCode.INVALID_INPUT, "big-endian hosts must byteswap pixels")
        view = memoryview(array)
        if not view.c_contiguous:
            raise ProtocolError(ErrorCode.INVALID_INPUT, "pixel arrays must be C-contiguous")
        return cls(view.cast("B"), tuple(int(s) for s in array.shape), dtype, order)

    @property
    def nbytes(self) -> int:
        return _product(self.shape) * DTYPES[self.dtype]

    def spec(self, name: str) -> dict[str, Any]:
        """The frame declaration for a message body."""
        spec = {"name": name, "shape": list(self.shape), "dtype": self.dtype}
        if self.order is not None:
            spec["order"] = self.order
        return spec


@dataclass
class Message:
    """A decoded message. ``frames`` maps declared names to :class:`Pixels` (zero-copy)."""

    type: str
    id: str
    body: dict[str, Any]
    version: tuple[int, int] = PROTOCOL_VERSION
    token: str = ""
    parent: str | None = None
    frames: dict[str, Pixels] = field(default_factory=dict)


def new_id() -> str:
    return uuid.uuid4().hex


def _product(shape: Iterable[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def pack(
    msg_type: str,
    body: Mapping[str, Any] | None = None,
    frames: Mapping[str, Pixels] | None = None,
    *,
    token: str = "",
    msg_id: str | None = None,
    parent: str | None = None,
    version: Sequence[int] = PROTOCOL_VERSION,
) -> list[Any]:
    """Build the multipart list ``[envelope, body, *frame buffers]`` of one message.

    Frame buffers are passed through uncopied (send them with ``copy=False`` for large ones).
    """
    envelope = {
        "version": list(version),
        "id": msg_id or new_id(),
        "type": msg_type,
        "token": token,
        "parent": parent,
    }
    content = dict(body or {})
    frames = dict(frames or {})
    if frames:
        content["frames"] = [pix.spec(name) for name, pix in frames.items()]
    return [
        msgpack.packb(envelope, use_bin_type=True),
        msgpack.packb(content, use_bin_type=True),
        *(pix.data for pix in frames.values()),
    ]


def error_body(code: str, message: str) -> dict[str, str]:
    """An ``error`` body; the message is cut at :data:`MAX_ERROR_CHARS` characters."""
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    return {"code": code, "message": message}

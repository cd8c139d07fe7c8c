"""Decoding what a peer sent, checked before anything is allocated for the pixels: the
envelope (:func:`decode_envelope`), the protocol version (:func:`check_version`), the token,
the sizes against :class:`~.protocol.Limits` and every frame declaration (:func:`check_frame`);
:func:`unpack` does all of it in that order. Any failure is a :class:`~.protocol.ProtocolError`
carrying the request id as soon as it could be read.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

import msgpack

from .protocol import (
    DTYPES,
    ORDERS,
    PROTOCOL_VERSION,
    ErrorCode,
    Limits,
    Message,
    Pixels,
    ProtocolError,
    echo,
)

DEFAULT_LIMITS = Limits()
"""The default :class:`~.protocol.Limits` (frozen: one shared instance)."""


def _unpackb(data: Any, limit: int, what: str, msg_id: str | None) -> Any:
    data = memoryview(data)
    size = data.nbytes
    if size > limit:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"{what} is {size} bytes, over the limit of {limit}", msg_id
        )
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=max(16, limit // 8),
            max_map_len=max(16, limit // 16),
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many kinds (ValueError, ExtraData, FormatError...)
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"{what} is not valid msgpack ({type(exc).__name__})", msg_id
        ) from None


def decode_envelope(data: Any, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Decode and type-check an envelope; raises :class:`ProtocolError` (``bad_message``)."""
    env = _unpackb(data, limits.max_envelope_bytes, "envelope", None)
    if not isinstance(env, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "envelope must be a msgpack map")
    msg_id = env.get("id")
    if not isinstance(msg_id, str) or not 0 < len(msg_id) <= 64:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "envelope 'id' must be a string of 1-64 chars")
    version = env.get("version")
    if (
        not isinstance(version, list)
        or len(version) != 2
        or not all(type(v) is int and 0 <= v < 1 << 16 for v in version)
    ):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, "envelope 'version' must be [major, minor]", msg_id
        )
    for key, kinds in (("type", (str,)), ("token", (str,)), ("parent", (str, type(None)))):
        if not isinstance(env.get(key), kinds):
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, f"envelope {key!r} has the wrong type", msg_id
            )
    return env


def check_version(version: Sequence[int], msg_id: str | None = None, *, local: str) -> None:
    """Refuse another major version, naming which side must be updated.

    ``local`` is this side's role ("daemon" or "client"); ``version`` is the peer's.
    """
    major = version[0]
    if major == PROTOCOL_VERSION[0]:
        return
    peer = "client" if local == "daemon" else "daemon"
    older = peer if major < PROTOCOL_VERSION[0] else local
    fix = (
        "the plugin (client)"
        if older == "client"
        else "the daemon (`pip install <path to an up-to-date clone of harmonize>`)"
    )
    ours = ".".join(map(str, PROTOCOL_VERSION))
    theirs = ".".join(map(str, version))
    raise ProtocolError(
        ErrorCode.UNSUPPORTED_VERSION,
        f"the {peer} speaks protocol {theirs} but this {local} speaks {ours}: update {fix}",
        msg_id,
    )


def _frame_specs(body: dict[str, Any], count: int, limits: Limits, msg_id: str) -> list[Any]:
    specs = body.get("frames", [])
    if not isinstance(specs, list):
        raise ProtocolError(ErrorCode.BAD_FRAMES, "body 'frames' must be a list", msg_id)
    if len(specs) != count:
        raise ProtocolError(
            ErrorCode.BAD_FRAMES,
            f"the body declares {len(specs)} frames but {count} were sent",
            msg_id,
        )
    return specs


def check_frame(spec: Any, size: int | None, limits: Limits, msg_id: str | None = None) -> Pixels:
    """Validate one frame declaration against the frame's byte length (``None``: pixels that
    are not in a frame, e.g. in shared memory); returns an empty :class:`Pixels` template
    (``data=None``). Never allocates from declared sizes."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ProtocolError(ErrorCode.BAD_FRAMES, "each frame needs a 'name' string", msg_id)
    name, shape, dtype = echo(spec["name"]), spec.get("shape"), spec.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError(
            ErrorCode.BAD_FRAMES,
            f"frame {name}: dtype must be one of {list(DTYPES)}; got {echo(dtype)}",
            msg_id,
        )
    if (
        not isinstance(shape, list)
        or len(shape) not in (2, 3)
        or not all(type(s) is int and s > 0 for s in shape)
    ):
        raise ProtocolError(
            ErrorCode.BAD_FRAMES,
            f"frame {name}: shape must be [H, W] or [H, W, C] of positive ints; got {echo(shape)}",
            msg_id,
        )
    channels = shape[2] if len(shape) == 3 else 1
    if channels > limits.max_channels:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"frame {name} has {channels} channels, over the limit of {limits.max_channels}",
            msg_id,
        )
    pixels = shape[0] * shape[1]  # each side is bounded by the msgpack int range: no overflow
    if pixels > limits.max_pixels:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"frame {name} is {shape[1]} x {shape[0]} = {pixels:,} pixels, over the limit of "
            f"{limits.max_pixels:,}",
            msg_id,
        )
    expected = pixels * channels * DTYPES[dtype]
    if size is not None and expected != size:
        raise ProtocolError(
            ErrorCode.BAD_FRAMES,
            f"frame {name}: shape {shape} of {dtype} is {expected} bytes but {size} were sent",
            msg_id,
        )
    order = spec.get("order")
    if order is not None and (order not in ORDERS or len(order) != channels):
        raise ProtocolError(
            ErrorCode.BAD_FRAMES,
            f"frame {name}: order must be null or one of {list(ORDERS)} with one letter per "
            f"channel ({channels}); got {echo(order)}",
            msg_id,
        )
    return Pixels(None, tuple(shape), dtype, order)


def unpack(
    parts: Sequence[Any],
    limits: Limits = DEFAULT_LIMITS,
    *,
    local: str = "daemon",
    token: str | None = None,
    open_types: Sequence[str] = (),
) -> Message:
    """Decode ``[envelope, body, *frames]`` (bytes or buffers) and check every limit.

    Order: envelope, version, ``token`` (compared in constant time unless None; not for a
    type in ``open_types``), frame count, body, frame declarations. Raises
    :class:`ProtocolError` whose ``msg_id`` is set as soon as the envelope could be read.
    """
    if len(parts) < 2:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"a message has at least 2 parts; got {len(parts)}"
        )
    env = decode_envelope(parts[0], limits)
    msg_id = env["id"]
    check_version(env["version"], msg_id, local=local)
    if (
        token is not None
        and env["type"] not in open_types
        and not hmac.compare_digest(env["token"].encode(), token.encode())
    ):
        raise ProtocolError(
            ErrorCode.UNAUTHORIZED,
            "wrong or missing token: read it from the daemon's endpoint file",
            msg_id,
        )
    if len(parts) - 2 > limits.max_frames:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"{len(parts) - 2} frames sent, over the limit of {limits.max_frames}",
            msg_id,
        )
    body = _unpackb(parts[1], limits.max_body_bytes, "body", msg_id)
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "body must be a msgpack map", msg_id)
    frames: dict[str, Pixels] = {}
    for spec, data in zip(
        _frame_specs(body, len(parts) - 2, limits, msg_id), parts[2:], strict=True
    ):
        view = memoryview(data)
        template = check_frame(spec, view.nbytes, limits, msg_id)
        if spec["name"] in frames:
            raise ProtocolError(
                ErrorCode.BAD_FRAMES, f"frame {echo(spec['name'])} sent twice", msg_id
            )
        frames[spec["name"]] = Pixels(view, template.shape, template.dtype, template.order)
    return Message(
        type=env["type"],
        id=msg_id,
        body=body,
        version=(env["version"][0], env["version"][1]),
        token=env["token"],
        parent=env.get("parent"),  # a missing parent is null, as decode_envelope accepts
        frames=frames,
    )

"""The bodies of the request types (spec: docs/protocol.md): the ``hello`` challenge and proof,
and a ``harmonize_request``'s options and frames. The message format itself (envelope, body,
frames, limits, error codes) is :mod:`.protocol`.

Standard library only, like the rest of the wire package (vendored into the plug-ins).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from .protocol import DTYPES, ErrorCode, Message, Pixels, ProtocolError, echo

# ---- hello ------------------------------------------------------------------------------------

CHALLENGE_CHARS = (32, 128)
"""Length range of a hello ``challenge`` (the client sends 32 random bytes as 64 hex)."""


def hello_proof(token: str, challenge: str) -> str:
    """What a daemon answers to a hello ``challenge``: HMAC-SHA256 keyed with the token, hex.

    Only a holder of the endpoint file's token can compute it, so a client checks it before it
    sends the token or any pixels.
    """
    message = b"harmonize hello proof\0" + challenge.encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def check_challenge(challenge: Any, msg_id: str | None = None) -> str:
    """A hello body's ``challenge``: a string of :data:`CHALLENGE_CHARS` characters."""
    low, high = CHALLENGE_CHARS
    if not isinstance(challenge, str) or not low <= len(challenge) <= high:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE,
            f"hello 'challenge' must be a string of {low}-{high} characters",
            msg_id,
        )
    return challenge


# ---- harmonize ---------------------------------------------------------------------------------

DEFAULT_CROP_MARGIN = 0.25
"""Context around the mask's bounding box, as a fraction of the box's longer side."""
MIN_CROP_MARGIN_PX = 16
"""The context margin is never smaller than this many pixels (then clamped to the layer)."""
OUTPUTS = ("rgba", "rgb")


@dataclass(frozen=True)
class HarmonizeOptions:
    """Options of a ``harmonize_request`` (``body["options"]``).

    Attributes:
        strength: 0 returns the layer unchanged, 1 the full harmonization.
        crop_margin: context margin around the mask's bounding box as a fraction of its longer
            side (at least :data:`MIN_CROP_MARGIN_PX`, clamped to the layer); ``None`` = work on
            the whole layer.
        dtype: dtype of the result (``None``: the layer's).
        output: ``"rgba"`` (harmonized RGB + the layer's alpha) or ``"rgb"``.
    """

    strength: float = 1.0
    crop_margin: float | None = DEFAULT_CROP_MARGIN
    dtype: str | None = None
    output: str = "rgba"

    def to_wire(self) -> dict[str, Any]:
        return {
            "strength": float(self.strength),
            "crop_margin": None if self.crop_margin is None else float(self.crop_margin),
            "dtype": self.dtype,
            "output": self.output,
        }

    @classmethod
    def from_wire(cls, raw: Any, msg_id: str | None = None) -> HarmonizeOptions:
        """Validate options from a request body; unknown keys are refused (typos show up)."""

        def fail(text: str) -> ProtocolError:
            return ProtocolError(ErrorCode.INVALID_INPUT, f"options: {text}", msg_id)

        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise fail("must be a map")
        unknown = sorted(map(str, set(raw) - {"strength", "crop_margin", "dtype", "output"}))
        if unknown:
            raise fail(f"unknown keys {echo(unknown)}")
        default = cls()
        strength = raw.get("strength", default.strength)
        if type(strength) not in (int, float) or not 0.0 <= strength <= 1.0:
            raise fail(f"strength must be a number in [0, 1]; got {echo(strength)}")
        margin = raw.get("crop_margin", default.crop_margin)
        if margin is not None and (type(margin) not in (int, float) or not 0.0 <= margin <= 10.0):
            raise fail(f"crop_margin must be null or a number in [0, 10]; got {echo(margin)}")
        dtype = raw.get("dtype")
        if dtype is not None and (not isinstance(dtype, str) or dtype not in DTYPES):
            raise fail(f"dtype must be null or one of {list(DTYPES)}; got {echo(dtype)}")
        output = raw.get("output", default.output)
        if not isinstance(output, str) or output not in OUTPUTS:
            raise fail(f"output must be one of {list(OUTPUTS)}; got {echo(output)}")
        return cls(float(strength), None if margin is None else float(margin), dtype, output)


def harmonize_frames(layer: Pixels, mask: Pixels, backdrop: Pixels) -> dict[str, Pixels]:
    """The frames of a ``harmonize_request``: layer ``(H, W, 4|3)``, mask ``(H, W)``, backdrop
    ``(H, W, 3)`` (all of the same H x W; dtypes independent)."""
    return {"layer": layer, "mask": mask, "backdrop": backdrop}


FRAME_NAMES = ("layer", "mask", "backdrop")
"""The frames of a ``harmonize_request``."""


def check_harmonize_frames(msg: Message) -> dict[str, Pixels]:
    """Names and shapes of a ``harmonize_request``'s frames (before anything is allocated):
    :data:`FRAME_NAMES`, layer ``(H, W, 4|3)``, mask ``(H, W)``, backdrop ``(H, W, 3)``, all of
    one ``H x W``; :class:`ProtocolError` (``bad_frames``) naming what is wrong."""
    frames = msg.frames
    missing = [n for n in FRAME_NAMES if n not in frames]
    extra = sorted(set(frames) - set(FRAME_NAMES))
    if missing or extra:
        raise ProtocolError(
            ErrorCode.BAD_FRAMES,
            f"harmonize needs frames layer, mask, backdrop; missing {missing}, unexpected {extra}",
            msg.id,
        )
    layer, mask, back = frames["layer"], frames["mask"], frames["backdrop"]
    problems = []
    if len(layer.shape) != 3 or layer.shape[2] not in (3, 4):
        problems.append(f"layer must be (H, W, 4) or (H, W, 3); got {list(layer.shape)}")
    if len(mask.shape) != 2:
        problems.append(f"mask must be (H, W); got {list(mask.shape)}")
    if len(back.shape) != 3 or back.shape[2] != 3:
        problems.append(f"backdrop must be (H, W, 3); got {list(back.shape)}")
    for name, pix in (("mask", mask), ("backdrop", back)):
        if not problems and pix.shape[:2] != layer.shape[:2]:
            problems.append(
                f"{name} is {pix.shape[1]} x {pix.shape[0]} but layer is {layer.shape[1]} x "
                f"{layer.shape[0]}: layer, mask and backdrop must have the same size"
            )
    if problems:
        raise ProtocolError(ErrorCode.BAD_FRAMES, "; ".join(problems), msg.id)
    return frames

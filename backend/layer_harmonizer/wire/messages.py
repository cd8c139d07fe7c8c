"""The bodies of the request types (spec: docs/protocol.md): the ``hello`` challenge and proof,
a ``harmonize_request``'s options and frames, a ``reapply_request``'s job (2.1). The message
format itself (envelope, body, frames, limits, error codes) is :mod:`.protocol`.

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
OPTION_KEYS = ("strength", "crop_margin", "dtype", "output")
REAPPLY_KEYS = ("strength", "dtype", "output")
"""The options a ``reapply_request`` may change (2.1): the crop is the job's."""


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
    def from_wire(
        cls, raw: Any, msg_id: str | None = None, keys: tuple[str, ...] = OPTION_KEYS
    ) -> HarmonizeOptions:
        """Validate options from a request body; unknown keys (not in ``keys``) are refused, so
        typos show up."""

        def fail(text: str) -> ProtocolError:
            return ProtocolError(ErrorCode.INVALID_INPUT, f"options: {text}", msg_id)

        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise fail("must be a map")
        unknown = sorted(map(str, set(raw) - set(keys)))
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
    """The frames of a protocol 2.0 ``harmonize_request``: layer ``(H, W, 4|3)``, mask
    ``(H, W)`` = alpha x selection, backdrop ``(H, W, 3)`` (one H x W; dtypes independent)."""
    return {"layer": layer, "mask": mask, "backdrop": backdrop}


def layer_frames(layer: Pixels, selection: Pixels | None, backdrop: Pixels) -> dict[str, Pixels]:
    """The frames of a 2.1 ``harmonize_request``: layer ``(H, W, 4|3)``, the selection alone
    ``(H, W)`` (None: all of the layer) and backdrop ``(H, W, 3|4)``; layer and backdrop may
    declare their channel order (e.g. ``BGRA``)."""
    frames = {"layer": layer, "backdrop": backdrop}
    if selection is not None:
        frames[SELECTION] = selection
    return frames


FRAME_NAMES = ("layer", "mask", "backdrop")
"""The frames of a protocol 2.0 ``harmonize_request``."""
MASK, SELECTION = "mask", "selection"
COVERAGE_FRAMES = (MASK, SELECTION)
"""At most one of these: ``mask`` (2.0: alpha x selection) or ``selection`` (2.1: the
selection alone); neither = all of the layer selected (2.1)."""


def check_harmonize_frames(msg: Message) -> dict[str, Pixels]:
    """Names, shapes and channel orders of a ``harmonize_request``'s frames (before anything is
    allocated): layer ``(H, W, 4|3)``, backdrop ``(H, W, 3|4)``, at most one of
    :data:`COVERAGE_FRAMES` ``(H, W)``, all of one ``H x W``, layer and backdrop both RGB(A)
    or both BGR(A); :class:`ProtocolError` (``bad_frames``) naming what is wrong."""
    frames = msg.frames
    missing = [n for n in ("layer", "backdrop") if n not in frames]
    extra = sorted(set(frames) - {"layer", "backdrop", *COVERAGE_FRAMES})
    if missing or extra or all(n in frames for n in COVERAGE_FRAMES):
        raise ProtocolError(
            ErrorCode.BAD_FRAMES,
            "harmonize needs frames layer, backdrop and one of mask (2.0) or selection; "
            f"missing {missing}, unexpected {extra or sorted(set(frames) & {MASK, SELECTION})}",
            msg.id,
        )
    layer, back = frames["layer"], frames["backdrop"]
    problems = []
    if len(layer.shape) != 3 or layer.shape[2] not in (3, 4):
        problems.append(f"layer must be (H, W, 4) or (H, W, 3); got {list(layer.shape)}")
    if len(back.shape) != 3 or back.shape[2] not in (3, 4):
        problems.append(f"backdrop must be (H, W, 3) or (H, W, 4); got {list(back.shape)}")
    coverage = [(n, frames[n]) for n in COVERAGE_FRAMES if n in frames]
    for name, pix in coverage:
        if len(pix.shape) != 2:
            problems.append(f"{name} must be (H, W); got {list(pix.shape)}")
    planes = ", ".join(["layer", *(n for n, _ in coverage)])
    for name, pix in [*coverage, ("backdrop", back)]:
        if not problems and pix.shape[:2] != layer.shape[:2]:
            problems.append(
                f"{name} is {pix.shape[1]} x {pix.shape[0]} but layer is {layer.shape[1]} x "
                f"{layer.shape[0]}: {planes} and backdrop must have the same size"
            )
    if layer.bgr != back.bgr:
        problems.append(
            f"layer ({layer.order or 'RGB'}) and backdrop ({back.order or 'RGB'}) must put "
            "their channels in the same order"
        )
    if problems:
        raise ProtocolError(ErrorCode.BAD_FRAMES, "; ".join(problems), msg.id)
    return frames


def check_job_id(raw: Any, msg_id: str | None = None) -> str:
    """A ``reapply_request``'s ``job``: the id of an earlier ``harmonize_request`` (a string
    of 1-64 characters, as envelope ids are)."""
    if not isinstance(raw, str) or not 0 < len(raw) <= 64:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, "reapply 'job' must be a request id (1-64 characters)", msg_id
        )
    return raw

"""Krita colour spaces and conversions for the plugin: which colour space pixels travel in
(:func:`work_space`, :func:`wire_format_of`) and converting raw pixels between spaces with
Krita's own colour engine in a hidden scratch document (:func:`convert_pixels`).

Everything here runs on Krita's main thread and only uses the libkis API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .deps import host_side
from .qt import to_qbytes

WORK_PROFILE = "sRGB-elle-V2-srgbtrc.icc"
"""Krita's perceptual sRGB profile: what converted pixels travel in."""
DEPTH_OF_DTYPE = {"uint8": "U8", "uint16": "U16", "float32": "F32"}
HOST_PRECISION = {"U8": "U8", "U16": "U16", "F16": "HALF", "F32": "FLOAT"}
"""Krita depth -> the precision names :func:`host_side.wire_format` knows."""


@dataclass(frozen=True)
class Space:
    """A Krita colour space: model (``RGBA``, ``GRAYA``, ``CMYKA``...), depth, profile name."""

    model: str
    depth: str
    profile: str

    @classmethod
    def of(cls, thing: Any) -> Space:
        """The colour space of a ``Node`` or ``Document``."""
        return cls(thing.colorModel(), thing.colorDepth(), thing.colorProfile())

    @property
    def linear(self) -> bool:
        """True for linear-light profiles (Krita's ``*-g10.icc`` and "linear" built-ins)."""
        name = self.profile.lower()
        return "g10" in name or "linear" in name


def krita_app() -> Any:
    """The running ``Krita`` instance."""
    from krita import Krita

    return Krita.instance()


def plugin_error(message: str) -> Exception:
    """A :class:`host_side.PluginError` with ``message`` (shown to the user as it is)."""
    return host_side().PluginError(message)


# ---- colour conversion through a scratch document ---------------------------------------------


def convert_pixels(data: bytes, width: int, height: int, src: Space, dst: Space) -> bytes:
    """Convert raw ``width x height`` pixels between colour spaces using Krita's own engine.

    A hidden scratch document (no view) holds the pixels, ``Document.setColorSpace`` converts
    them, and the document is closed again. The user's documents are not touched.
    """
    if src == dst:
        return bytes(data)
    doc = krita_app().createDocument(
        width, height, "harmonize-scratch", src.model, src.depth, src.profile, 72.0
    )
    if doc is None:
        raise plugin_error(
            f"Krita could not create a {src.model}/{src.depth} scratch image "
            f"(profile {src.profile!r}) to convert the layer."
        )
    try:
        node = doc.createNode("pixels", "paintlayer")
        node.setPixelData(to_qbytes(data), 0, 0, width, height)
        doc.rootNode().addChildNode(node, None)
        if not doc.setColorSpace(dst.model, dst.depth, dst.profile):
            raise plugin_error(
                f"Krita could not convert {src.model}/{src.depth} ({src.profile}) to "
                f"{dst.model}/{dst.depth} ({dst.profile})."
            )
        doc.waitForDone()
        return bytes(node.pixelData(0, 0, width, height))
    finally:
        doc.close()


def work_space(layer_space: Any, fmt: Any) -> Space:
    """The RGBA perceptual space the wire format stands for (the layer's own if it is one)."""
    depth = DEPTH_OF_DTYPE[fmt.dtype]
    native = layer_space.model == "RGBA" and layer_space.depth == depth and not layer_space.linear
    return layer_space if native else Space("RGBA", depth, WORK_PROFILE)


def wire_format_of(space: Space) -> Any:
    """The wire format for a layer: 8 bit, 16 bit (also for linear 8 bit) or float32."""
    precision = HOST_PRECISION.get(space.depth)
    if precision is None:
        raise plugin_error(
            f"Unsupported colour depth {space.depth}; convert the image to 8-bit, "
            "16-bit or float (Image ▸ Convert Image Color Space)."
        )
    if space.linear:
        precision += "_LINEAR"
    return host_side().wire_format(precision)

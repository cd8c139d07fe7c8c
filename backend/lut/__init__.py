"""The AICT LUT transform: maps, torch reference, and application backends."""

from backend.lut.maps import LutMaps
from backend.lut.reference import LutTransform, apply_luts

__all__ = ["LutMaps", "LutTransform", "apply_luts"]

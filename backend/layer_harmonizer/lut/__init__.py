"""The AICT LUT transform: maps, torch reference, and application backends."""

from layer_harmonizer.lut.maps import LutMaps
from layer_harmonizer.lut.reference import LutTransform, apply_luts

__all__ = ["LutMaps", "LutTransform", "apply_luts"]

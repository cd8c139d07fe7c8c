"""Harmonize: make a pasted object look like it belongs in the photo (AICT, NeurIPS 2024).

    >>> from layer_harmonizer import harmonize, load_model
    >>> out = harmonize(composite, mask, model=load_model())       # doctest: +SKIP

Heavy modules (torch) load on first use of ``harmonize``/``load_model``/``predict``, so
importing the package for its version costs nothing.
"""

from typing import TYPE_CHECKING, Any

from layer_harmonizer._version import __version__

if TYPE_CHECKING:
    from layer_harmonizer.layer import harmonize_layer
    from layer_harmonizer.pipeline import apply_prediction, harmonize, load_model, predict

__all__ = [
    "__version__",
    "apply_prediction",
    "harmonize",
    "harmonize_layer",
    "load_model",
    "predict",
]


def __getattr__(name: str) -> Any:
    if name in ("apply_prediction", "harmonize", "load_model", "predict"):
        from layer_harmonizer import pipeline

        return getattr(pipeline, name)
    if name == "harmonize_layer":
        from layer_harmonizer.layer import harmonize_layer

        return harmonize_layer
    raise AttributeError(f"module 'layer_harmonizer' has no attribute {name!r}")

"""Registry of network variants, by name.

``aict`` is the published network, bit-for-bit compatible with official checkpoints. The light
variants keep the heads and the LUT semantics but see fewer, larger patches through a narrower,
shallower transformer, and start their colour LUT from a colour-statistics match, so they run
interactively on a laptop CPU.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from layer_harmonizer.model.aict import AICTConfig, AICTNet, init_weights

VARIANTS: dict[str, AICTConfig] = {
    "aict": AICTConfig(),
    "aict-small": AICTConfig(
        patch_size=8, dim=192, depth=6, num_heads=4, mlp_dim=384, head_width=96, color_prior=True
    ),
    "aict-light": AICTConfig(
        patch_size=16, dim=192, depth=4, num_heads=4, mlp_dim=384, head_width=96, color_prior=True
    ),
}
"""Named configurations. Each variant's description is in the README's model table."""

DEFAULT_VARIANT = "aict-light"


def variant_config(name: str, **overrides: Any) -> AICTConfig:
    """The configuration of variant ``name``, with keyword overrides."""
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    return replace(VARIANTS[name], **overrides)


def create_model(name: str = DEFAULT_VARIANT, **overrides: Any) -> AICTNet:
    """A freshly initialised network of variant ``name`` (weights random, training init)."""
    return init_weights(AICTNet(variant_config(name, **overrides)))


def config_dict(config: AICTConfig) -> dict[str, Any]:
    return asdict(config)


__all__ = [
    "DEFAULT_VARIANT",
    "VARIANTS",
    "AICTConfig",
    "AICTNet",
    "config_dict",
    "create_model",
    "init_weights",
    "variant_config",
]

"""Exceptions raised by the harmonization backend.

Every error a user can cause derives from :class:`HarmonizeError`, so front ends (CLI, daemon,
plugins) can turn it into a message without a traceback.
"""


class HarmonizeError(Exception):
    """Base class for errors caused by input, configuration or weights (not by bugs)."""


class InputError(HarmonizeError, ValueError):
    """An image or mask has the wrong shape, dtype, range or size."""


class WeightsError(HarmonizeError):
    """A weights file is missing, unreadable, or does not fit the network it claims."""


class WeightsNotFoundError(WeightsError):
    """No weights were given and no default weights are installed."""

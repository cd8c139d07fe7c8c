"""Exceptions raised by the harmonization backend.

Every error a user can cause derives from :class:`HarmonizeError`, so front ends (CLI, daemon,
plugins) can turn it into a message without a traceback.
"""

import os


class HarmonizeError(Exception):
    """Base class for errors caused by input, configuration or weights (not by bugs)."""


class InputError(HarmonizeError, ValueError):
    """An image or mask has the wrong shape, dtype, range or size."""


class WeightsError(HarmonizeError):
    """A weights file is missing, unreadable, or does not fit the network it claims."""


class WeightsNotFoundError(WeightsError):
    """No weights were given and no default weights are installed."""


class FileError(HarmonizeError):
    """A file or folder cannot be read or written (permissions, a full disk, a missing folder)."""

    @classmethod
    def from_os_error(cls, exc: OSError, path: str | os.PathLike[str], action: str) -> "FileError":
        """One line: ``<path>: cannot <action>: <cause>``, naming the file the cause lies with
        when that is another one (a parent folder, say); temporary files beside ``path`` are
        not named."""
        cause = exc.strerror or str(exc) or type(exc).__name__
        if exc.filename is not None:
            other, name = os.fsdecode(exc.filename), os.fspath(path)
            tmp_beside = os.path.basename(other).startswith(f".{os.path.basename(name)}.")
            if os.path.normpath(other) != os.path.normpath(name) and not tmp_beside:
                cause = f"{cause}: {other}"
        return cls(f"{path}: cannot {action}: {cause}")

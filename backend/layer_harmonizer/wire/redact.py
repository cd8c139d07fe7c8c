"""Text meant for a bug report (``harmonize diagnose``, the plug-ins' "Copy diagnostics"):
secrets and personal details taken out (:func:`redact`), an exception as one line
(:func:`one_line`).

What goes (:func:`redact`):

- the exact values given as ``secrets`` (the endpoint file's token and CURVE keys);
- the value after a secret-sounding name: ``token``, ``secret``, ``proof``, ``hmac``,
  ``password``, ``curve``, ``*_key``, ``*_public``, ``*_secret`` followed by ``=`` or ``:``;
- anything that looks like a token, key or digest: a run of 40 or more characters of
  ``[A-Za-z0-9_+=-]`` with letters and digits (hex HMACs and digests, URL-safe tokens), or
  exactly 40 Z85 characters with upper, lower case and digits (a CURVE key); shorter ids
  (job ids, 16-character weights ids) stay, and so does whatever is listed in ``keep``;
- this user's home folder (written ``~``) and other users' ``/home/<name>``,
  ``/Users/<name>``, ``C:\\Users\\<name>`` folders;
- this user's login name and the machine's host name, as whole words.

Standard library only, like the rest of :mod:`layer_harmonizer.wire` (vendored into the hosts).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import socket
from collections.abc import Iterable
from pathlib import Path

REDACTED = "<redacted>"
USER = "<user>"
HOST = "<host>"

_NAMED = re.compile(
    r"""(?ix)
    (\b(?:token|secret|proof|hmac|password|passwd|curve|\w+_key|\w+_public|\w+_secret)s?\b
     ["']?\s*[:=]\s*["']?)        # the name, its separator and an opening quote
    ([^\s"',;)}\]{\[][^\s"',;)}\]]*)  # the value (not an opening brace)
    """
)
_BLOB = re.compile(r"(?<![A-Za-z0-9_+=-])[A-Za-z0-9_+=-]{40,}(?![A-Za-z0-9_+=-])")
_Z85_CHARS = r"0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#"
_Z85 = re.compile(rf"(?<![{_Z85_CHARS}])[{_Z85_CHARS}]{{40}}(?![{_Z85_CHARS}])")
_OTHER_HOMES = re.compile(r"(/home/|/Users/|[A-Za-z]:\\Users\\)([^/\\\s\"']+)")
_KEEP_USERS = frozenset({"harmonize", "root"})
"""Login names left alone: not personal, and too common as words."""


def _looks_secret(blob: str) -> bool:
    return any(c.isdigit() for c in blob) and any(c.isalpha() for c in blob)


def _is_key(candidate: str) -> bool:
    """Whether a 40-character Z85 run is likely a CURVE key rather than a path or a word."""
    return (
        not candidate.startswith(("/", "~", "."))
        and any(c.isdigit() for c in candidate)
        and any(c.isupper() for c in candidate)
        and any(c.islower() for c in candidate)
    )


def user_names() -> list[str]:
    """This user's login names (``getpass``, ``$USER``, ``$USERNAME``, ``$LOGNAME``)."""
    names = {os.environ.get(v, "") for v in ("USER", "USERNAME", "LOGNAME")}
    with contextlib.suppress(Exception):  # no name for this uid (a container): nothing to hide
        names.add(getpass.getuser())
    return sorted(n for n in names if len(n) >= 2 and n not in _KEEP_USERS)


def host_names() -> list[str]:
    """The machine's host name (short and full), unless it says nothing (``localhost``)."""
    try:
        full = socket.gethostname()
    except OSError:
        return []
    names = {full, full.split(".")[0]}
    return sorted(n for n in names if len(n) >= 2 and n != "localhost")


def home_folders() -> list[str]:
    """This user's home folder as written and as resolved, longest first."""
    try:
        home = Path.home()
    except (KeyError, RuntimeError):
        return []
    found = {str(home), str(home.resolve())} - {"/", ""}
    return sorted(found, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] = (), keep: Iterable[str] = ()) -> str:
    """``text`` without secrets, home folders, user and host names (module docstring).

    Args:
        text: any text (a log, an error message, a settings dump).
        secrets: exact values to remove wherever they appear (values under 8 characters are
            ignored: too likely to hit ordinary words).
        keep: long values that must stay, e.g. the weights' sha256 that diagnostics report.
    """
    kept = {k for k in keep if k}
    for value in sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    text = _NAMED.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BLOB.sub(
        lambda m: m.group(0) if m.group(0) in kept or not _looks_secret(m.group(0)) else REDACTED,
        text,
    )
    text = _Z85.sub(lambda m: REDACTED if _is_key(m.group(0)) else m.group(0), text)
    for home in home_folders():
        text = re.sub(re.escape(home) + r"(?=$|[/\\\s\"',;:)])", "~", text)
    text = _OTHER_HOMES.sub(lambda m: m.group(1) + USER, text)
    for name in user_names():
        text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", USER, text)
    for name in host_names():
        text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", HOST, text)
    return text


def one_line(exc: BaseException, *, with_type: bool = True) -> str:
    """An exception as one line for a report: its message's first line, after its type name
    unless ``with_type`` is False (a message written for users); the type alone when empty."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}" if with_type else text

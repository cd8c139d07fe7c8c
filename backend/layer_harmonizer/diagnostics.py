"""``harmonize diagnose``: what a bug report needs, as plain text (or JSON), redacted.

Sections (:data:`SECTIONS`): versions (package, protocol, Python, torch, CuPy, numpy, pyzmq
and libzmq, msgpack), the installed host plug-ins, the device and LUT backend with the reason
for each choice, the weights (path, variant, sha256 verified, licence), the folders, the
runtime dir and daemon endpoint (does a daemon answer, its pid and transport) and the last
lines of the daemon log.

Rules: a section that fails says why in one line (``error``) and the others still come; no
daemon is ever started (a running one is only asked ``hello``); the endpoint file's token and
CURVE keys, other tokens and keys, user names and home folders are redacted
(:func:`layer_harmonizer.wire.redact.redact`) everywhere, the log included.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layer_harmonizer._version import __version__
from layer_harmonizer.fileutil import tail_lines
from layer_harmonizer.wire import about, discovery
from layer_harmonizer.wire.redact import one_line, redact

LOG_LINES = 40
"""How many of the daemon log's last lines the report shows."""
HELLO_TIMEOUT = 2.0
"""Seconds a running daemon has to answer the report's ``hello``."""


@dataclass
class Options:
    """What the report looks at: ``weights``/``variant``/``device``/``lut_backend`` as
    ``harmonize run`` takes them, and the daemon log (default: :func:`.paths.daemon_log`)."""

    weights: Path | None = None
    variant: str | None = None
    device: str = "auto"
    lut_backend: str = "auto"
    log_file: Path | None = None
    log_lines: int = LOG_LINES


@dataclass
class Report:
    """Sections in order, each a dict of fields or ``{"error": one line}``; ``secrets`` and
    ``keep`` feed the redaction (never shown)."""

    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)
    keep: set[str] = field(default_factory=set)


# ---- sections ---------------------------------------------------------------------------------


def _dist_version(*names: str) -> str:
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    return "not installed"


def _cupy_version() -> str:
    """CuPy's distribution and version, read from its metadata (importing CuPy is slow)."""
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name == "cupy" or name.startswith("cupy-"):
            return f"{name} {dist.version}"
    return "not installed"


def versions(_opts: Options, _report: Report) -> dict[str, Any]:
    import numpy
    import torch
    import zmq

    from layer_harmonizer.wire import protocol

    return {
        "harmonize": __version__,
        "protocol": ".".join(map(str, protocol.PROTOCOL_VERSION)),
        "python": f"{sys.version.split()[0]} ({sys.executable})",
        "platform": platform.platform(),
        "torch": f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none'})",
        "cupy": _cupy_version(),
        "numpy": numpy.__version__,
        "pyzmq": f"{zmq.__version__} (libzmq {zmq.zmq_version()})",
        "msgpack": _dist_version("msgpack"),
    }


def device(opts: Options, _report: Report) -> dict[str, Any]:
    import torch

    from layer_harmonizer.lut.backends import auto_backend

    if opts.device == "cpu":
        chosen, why = "cpu", "asked for (--device cpu)"
    elif torch.cuda.is_available():
        chosen, why = "cuda", f"CUDA GPU found: {torch.cuda.get_device_name(0)}"
    elif torch.version.cuda is None:
        chosen, why = "cpu", "this torch is a CPU-only build"
    else:
        chosen, why = "cpu", f"torch is built for CUDA {torch.version.cuda} but sees no GPU"
    backend, reason = auto_backend(chosen)
    fields = {
        "device": f"{chosen} ({why})",
        "threads": torch.get_num_threads(),
        "lut backend": f"auto picks {backend.name} ({reason})",
    }
    if opts.lut_backend != "auto":
        from layer_harmonizer.lut.backends import get_backend

        try:
            get_backend(opts.lut_backend, chosen)
            fields["lut backend"] += f"; {opts.lut_backend} (asked for) works"
        except Exception as exc:
            fields["lut backend"] += f"; {opts.lut_backend} (asked for) fails: {one_line(exc)}"
    return fields


def weights_licence(path: Path, meta: dict[str, Any]) -> str:
    """The licence of a weights file: the one stored in it, else the default weights' licence
    when it is (a copy of) the bundled default, else "not stated"."""
    from layer_harmonizer.model.weights import PACKAGED_DEFAULT, load_weights

    stated = meta.get("licence") or meta.get("license")
    if isinstance(stated, str) and stated:
        return stated
    same = path.resolve() == PACKAGED_DEFAULT.resolve()
    if not same and meta.get("sha256") and PACKAGED_DEFAULT.is_file():
        same = load_weights(PACKAGED_DEFAULT)[1].get("sha256") == meta["sha256"]
    if same:
        return about.DEFAULT_WEIGHTS_LICENCE
    return "not stated in the file: ask whoever provided it"


def weights(opts: Options, report: Report) -> dict[str, Any]:
    from layer_harmonizer.model.weights import PACKAGED_DEFAULT, find_default_weights, load_weights

    if opts.weights is not None:
        path, source = opts.weights, "--weights"
    else:
        path = find_default_weights()
        source = (
            "$HARMONIZE_WEIGHTS"
            if os.environ.get("HARMONIZE_WEIGHTS")
            else "bundled with the package"
            if path.resolve() == PACKAGED_DEFAULT.resolve()
            else "the data dir"
        )
    _, meta = load_weights(path, opts.variant)
    digest = str(meta.get("sha256") or "none stored")
    report.keep.add(digest)
    verified = meta.get("sha256_verified")
    return {
        "path": f"{path} ({source})",
        "variant": meta.get("variant"),
        "sha256": f"{digest} ({'verified' if verified else 'not verified'})",
        "trained on": str(meta.get("trained_on") or meta.get("source") or "not stated")[:200],
        "licence": weights_licence(Path(path), meta),
    }


def plugins(_opts: Options, _report: Report) -> dict[str, Any]:
    from layer_harmonizer import install

    found: dict[str, Any] = {}
    candidates = [("gimp", p / "plug-ins" / "harmonize") for p in install.gimp_profile_candidates()]
    flatpak = Path.home() / ".var" / "app" / "org.kde.krita" / "data" / "krita"
    for resources in (install.krita_locations()[0], flatpak):
        candidates.append(("krita", resources / "pykrita" / install.KRITA_NAME))
    for host, folder in candidates:
        if folder.is_dir():
            found.setdefault(host, []).append(_plugin_summary(folder, install.MARKER))
    return {host: found.get(host, "not installed") for host in ("gimp", "krita")}


def _plugin_summary(folder: Path, marker: str) -> str:
    """``version <v>, backend <command> (found|missing), in <folder>``; never raises."""
    try:
        version = json.loads((folder / marker).read_text(encoding="utf-8")).get("version", "?")
    except (OSError, ValueError, AttributeError):
        version = "not installed by harmonize"
    try:
        settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
        command = settings.get("serve_command") or ["harmonize (from PATH)"]
        exe = Path(str(command[0]))
        state = "missing" if exe.is_absolute() and not exe.exists() else "found"
        backend = f"backend {exe} ({state})"
    except (OSError, ValueError, AttributeError, IndexError, TypeError):
        backend = "no readable settings.json"
    return f"version {version}, {backend}, in {folder}"


def folders(_opts: Options, _report: Report) -> dict[str, Any]:
    from layer_harmonizer import paths

    return {
        name: str(fn())
        for name, fn in (
            ("weights dir", paths.weights_dir),
            ("cache dir", paths.cache_dir),
            ("log dir", paths.log_dir),
            ("config dir", paths.config_dir),
        )
    }


def _endpoint_secrets(path: Path) -> set[str]:
    """Every token and key in the endpoint file (read raw: a broken file's too)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(raw, dict):
        return set()
    found = {str(raw.get("token") or "")}
    curve = raw.get("curve")
    if isinstance(curve, dict):
        found |= {str(v) for v in curve.values()}
    return {s for s in found if s}


def _pid_state(pid: Any) -> str:
    if not isinstance(pid, int) or pid <= 0:
        return f"{pid!r} (not a pid)"
    if not hasattr(os, "getuid"):
        return str(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"{pid} (no such process: a stale endpoint file)"
    except PermissionError:
        return f"{pid} (another user's process)"
    return f"{pid} (running)"


def runtime(_opts: Options, report: Report) -> dict[str, Any]:
    directory = discovery.default_runtime_dir()
    path = directory / discovery.ENDPOINT_FILE
    report.secrets |= _endpoint_secrets(path)
    fields: dict[str, Any] = {"runtime dir": str(directory)}
    try:
        discovery.private_dir(directory, create=False)
        fields["runtime dir"] += " (private)"
    except FileNotFoundError:
        fields["runtime dir"] += " (does not exist: no daemon has run)"
        return fields
    except discovery.RuntimeDirError as exc:
        fields["runtime dir"] += f" (refused: {exc})"
        return fields
    try:
        info = discovery.read_endpoint_file(path)
    except discovery.DaemonError as exc:
        fields["endpoint file"] = exc.message
        return fields
    endpoint = str(info["endpoint"])
    fields["endpoint file"] = str(path)
    fields["endpoint"] = endpoint
    fields["transport"] = "ipc (local socket)" if endpoint.startswith("ipc://") else (
        "tcp with CURVE" if info.get("curve") else "tcp without CURVE keys (refused by clients)"
    )  # fmt: skip
    fields["pid"] = _pid_state(info.get("pid"))
    fields["daemon"] = _hello(path)
    return fields


def _hello(path: Path) -> str:
    """One line: what the daemon at ``path`` answers to ``hello`` (no retry, no start)."""
    try:
        from layer_harmonizer.wire.client import Client

        with Client.from_endpoint_file(path, timeout=HELLO_TIMEOUT, retries=0) as client:
            info = client.hello()
    except Exception as exc:
        return f"not answering ({getattr(exc, 'message', None) or one_line(exc)})"
    return (
        f"answering: harmonize {info.get('server_version')}, protocol "
        f"{'.'.join(map(str, info.get('protocol_version', ())))}, device {info.get('device')}, "
        f"variant {info.get('variant')}, pixels by {' or '.join(info.get('transports', []))}, "
        f"{info.get('queued')} queued"
    )


def log_path(log_file: Path | None = None) -> Path:
    """The daemon log the report reads: ``log_file``, else the default one."""
    from layer_harmonizer import paths

    return Path(log_file) if log_file is not None else paths.daemon_log()


def log(opts: Options, _report: Report) -> dict[str, Any]:
    path = log_path(opts.log_file)
    if not path.exists():
        return {"file": f"{path} (none yet: the daemon has not run)"}
    return {"file": str(path), "lines": tail_lines(path, opts.log_lines)}


def licence(_opts: Options, _report: Report) -> dict[str, Any]:
    return {"code": about.CODE_LICENCE, "default weights": about.DEFAULT_WEIGHTS_LICENCE}


Section = Callable[[Options, Report], dict[str, Any]]
SECTIONS: dict[str, Section] = {
    "versions": versions,
    "plug-ins": plugins,
    "device": device,
    "weights": weights,
    "licence": licence,
    "folders": folders,
    "daemon": runtime,
    "daemon log": log,
}


# ---- the report -------------------------------------------------------------------------------


def collect(opts: Options | None = None) -> Report:
    """Every section, each one's failure caught as one line; then redacted."""
    opts = opts or Options()
    report = Report()
    for name, section in SECTIONS.items():
        try:
            report.sections[name] = section(opts, report)
        except Exception as exc:
            report.sections[name] = {"error": one_line(exc)}
    report.sections = _redacted(report.sections, report)
    return report


def _redacted(value: Any, report: Report) -> Any:
    if isinstance(value, str):
        return redact(value, report.secrets, report.keep)
    if isinstance(value, dict):
        return {k: _redacted(v, report) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, report) for v in value]
    return value


def render_text(report: Report) -> str:
    """The report as plain text, ready to paste into a bug report."""
    out = [
        f"harmonize diagnose ({__version__}): paste this into the bug report. Tokens, keys, "
        "user names and home folders are replaced by placeholders.",
    ]
    for name, fields in report.sections.items():
        out.append(f"\n[{name}]")
        for key, value in fields.items():
            if isinstance(value, list):
                out.append(f"{key}:")
                out.extend(f"  {line}" for line in value)
            else:
                out.append(f"{key + ':':<14} {value}")
    return "\n".join(out) + "\n"


def render_json(report: Report) -> str:
    return json.dumps({"harmonize": __version__, "sections": report.sections}, indent=1)

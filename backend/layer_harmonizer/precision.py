"""The network's precision at inference: fp32, or bfloat16 autocast where it is measured to pay.

On CPUs with AMX or AVX-512 BF16, bf16 autocast runs the paper-size ``aict`` network several
times faster with nearly the same output; on other CPUs bf16 is emulated and slower. ``auto``
therefore decides by measurement, never by CPU name: the network runs a fixed probe in both
precisions, and bf16 is used only when it is at least :data:`MIN_SPEEDUP` times faster **and**
the probe harmonized with it stays within :data:`MAX_LEVELS` 8-bit level of fp32's. The
measurement is kept in ``precision.json`` in the cache dir, per CPU model, torch version and
weights (the error depends on the weights), so it runs once (a few seconds for ``aict``).

Only the variants in :data:`AUTO_VARIANTS` are measured: the light variants' network takes
milliseconds, so bf16 could not save anything a user would notice.

torch is imported inside the functions, so the command line reads :data:`PRECISIONS` without it
(and no :mod:`dataclasses` either: ``harmonize --help`` stays quick).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from layer_harmonizer.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
"""``--precision`` values: ``auto`` measures (see the module docstring)."""
AUTO_VARIANTS = ("aict",)
"""Variants for which ``auto`` measures bf16; every other variant runs in fp32."""
MIN_SPEEDUP = 1.1
"""bf16 must take at most 1 / 1.1 of fp32's time (a smaller gain is within timing noise)."""
MAX_LEVELS = 1.0
"""Largest difference of the harmonized probe, bf16 against fp32, in 8-bit levels."""
CACHE_FILE = "precision.json"


class Measurement(NamedTuple):
    """What the probe showed: best-of timings of one forward pass (None: not timed, because the
    error already ruled bf16 out) and the largest difference of the harmonized probe."""

    fp32_s: float | None
    bf16_s: float | None
    levels: float


class Choice(NamedTuple):
    """The precision the network runs in (``"fp32"`` or ``"bf16"``) and why."""

    precision: str
    reason: str


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``) for ``"bf16"``, else
    nothing."""
    if precision == "bf16":
        import torch

        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def decide(measured: Measurement) -> Choice:
    """The rule of ``auto``, given what the probe showed (no timing happens here)."""
    if measured.levels > MAX_LEVELS:
        return Choice(
            "fp32",
            f"bf16 changed the probe by {measured.levels:.2f} 8-bit levels (> {MAX_LEVELS:g})",
        )
    fp32_s, bf16_s = measured.fp32_s, measured.bf16_s
    if fp32_s is None or bf16_s is None:
        return Choice("fp32", "bf16 was not timed")
    if bf16_s * MIN_SPEEDUP > fp32_s:
        return Choice(
            "fp32",
            f"bf16 is not {MIN_SPEEDUP:g}x faster on this CPU "
            f"({bf16_s:.3f} s vs {fp32_s:.3f} s in fp32)",
        )
    return Choice(
        "bf16",
        f"bf16 measured {fp32_s / bf16_s:.1f}x faster ({bf16_s:.3f} s vs {fp32_s:.3f} s) "
        f"and within {measured.levels:.2f} 8-bit levels of fp32 on the probe",
    )


def choose(
    model: nn.Module,
    device: str,
    requested: str = "auto",
    *,
    cache_dir: Path | None = None,
    measure: Callable[[nn.Module], Measurement] | None = None,
) -> Choice:
    """The precision for ``model`` (on ``device``) when ``requested`` (one of
    :data:`PRECISIONS`) is asked for.

    ``model.metadata`` (from :func:`layer_harmonizer.pipeline.load_model`) names the variant and
    the weights. ``measure`` (default :func:`measure_probe`) runs only when ``auto`` needs a
    measurement that is not cached in ``cache_dir`` (default: the cache dir).
    """
    if requested not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}; got {requested!r}")
    if requested != "auto":
        return Choice(requested, "asked for")
    if not device.startswith("cpu"):
        return Choice("fp32", "auto measures bf16 on the CPU only")
    meta = getattr(model, "metadata", None) or {}
    variant = str(meta.get("variant", "unknown"))
    if variant not in AUTO_VARIANTS:
        return Choice("fp32", f"auto tries bf16 for {', '.join(AUTO_VARIANTS)} only, not {variant}")
    path = (cache_dir if cache_dir is not None else _default_cache_dir()) / CACHE_FILE
    key = cache_key(model)
    cached = _read_cache(path).get(key)
    if cached is not None:
        choice = decide(cached)
        return Choice(choice.precision, f"{choice.reason} (measured once, cached in {path})")
    log.info("measuring bf16 against fp32 for %s on this CPU (once)", variant)
    measured = (measure or measure_probe)(model)
    _write_cache(path, key, measured)
    return decide(measured)


def cpu_model() -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``), else what :mod:`platform` says."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cache_key(model: nn.Module) -> str:
    """``CPU model | torch version | variant weights-digest``: what the measurement depends on."""
    import torch

    from layer_harmonizer.model.weights import state_sha256

    meta = getattr(model, "metadata", None) or {}
    digest = str(meta.get("sha256") or state_sha256(model.state_dict()))[:16]
    return f"{cpu_model()} | torch {torch.__version__} | {meta.get('variant')} {digest}"


def probe_input(size: int) -> torch.Tensor:
    """The fixed probe: ``(1, 4, size, size)`` float32, a smooth colour field with a little
    seeded noise and an elliptical object mask (the same on every machine)."""
    import torch

    axis = torch.linspace(0.0, 1.0, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    noise = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    rgb = (torch.stack([xx, yy, 1 - xx * yy]) * 0.8 + 0.1 + 0.05 * noise).clamp(0, 1)
    mask = (((xx - 0.5) / 0.3) ** 2 + ((yy - 0.5) / 0.25) ** 2 < 1).float()
    return torch.cat([rgb, mask[None]])[None]


def measure_probe(model: nn.Module, repeat: int = 2) -> Measurement:
    """Run the probe in fp32 and in bf16 on the CPU: the error first, then (only if it is within
    :data:`MAX_LEVELS`) the best of ``repeat`` timed forward passes each, interleaved."""
    import torch

    from layer_harmonizer.lut.reference import apply_luts

    x = probe_input(model.config.input_size)

    def forward(precision: str) -> tuple[Any, float]:
        start = time.perf_counter()
        with torch.inference_mode(), autocast(precision, "cpu"):
            maps = model(x)
        return maps.to("cpu"), time.perf_counter() - start

    with torch.inference_mode():  # the first passes also warm up (allocator, oneDNN kernels)
        out = {p: apply_luts(x[:, :3], forward(p)[0], x[:, 3:]) for p in ("fp32", "bf16")}
        levels = float((out["fp32"] - out["bf16"]).abs().max()) * 255
    if levels > MAX_LEVELS:
        return Measurement(None, None, levels)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(repeat):
        for precision, runs in times.items():
            runs.append(forward(precision)[1])
    return Measurement(min(times["fp32"]), min(times["bf16"]), levels)


def _default_cache_dir() -> Path:
    from layer_harmonizer import paths

    return paths.cache_dir()


def _read_cache(path: Path) -> dict[str, Measurement]:
    """The cached measurements; an unreadable or malformed file counts as empty."""
    import json

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {k: Measurement(**v) for k, v in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _write_cache(path: Path, key: str, measured: Measurement) -> None:
    """Add a measurement to the cache file (atomically); a cache that cannot be written only
    means measuring again next time."""
    import json

    from layer_harmonizer.fileutil import atomic_open

    entries = {k: v._asdict() for k, v in _read_cache(path).items()}
    entries[key] = measured._asdict()
    try:
        with atomic_open(path) as fh:
            fh.write(json.dumps(entries, indent=1, sort_keys=True).encode())
    except OSError as exc:
        log.warning("could not cache the precision measurement in %s: %s", path, exc)

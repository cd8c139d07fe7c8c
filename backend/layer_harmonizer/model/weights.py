"""Weight files: reading (ours and official checkpoints), writing, and finding the default.

Our format is a ``torch.save`` dict holding only tensors and plain values, read with
``weights_only=True`` (no arbitrary unpickling)::

    {"format": "harmonize-weights", "format_version": 1,
     "variant": "aict-light", "config": {...AICTConfig fields...},
     "metadata": {...training data, metrics, sha256 of the state...},
     "state_dict": {name: tensor}}            # fp16 or fp32

so a file alone says which network it needs. Official AICT checkpoints
(``{"model": state_dict}``) and bare state dicts load as the ``aict`` variant with
``strict=True``; anything that does not fit fails with the missing and unexpected keys.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from layer_harmonizer import paths
from layer_harmonizer.errors import WeightsError, WeightsNotFoundError
from layer_harmonizer.fileutil import atomic_open
from layer_harmonizer.model import VARIANTS, AICTConfig, AICTNet, config_dict, variant_config

FORMAT = "harmonize-weights"
FORMAT_VERSION = 1
PACKAGED_DEFAULT = Path(__file__).resolve().parent.parent / "weights" / "default.pt"


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """A digest of tensor names, shapes, dtypes and bytes (independent of pickling details)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def find_default_weights() -> Path:
    """``$HARMONIZE_WEIGHTS``, else the user's data dir, else the weights shipped in the package."""
    env = os.environ.get("HARMONIZE_WEIGHTS")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"$HARMONIZE_WEIGHTS points to {path}, which does not exist")
        return path
    for path in (paths.weights_dir() / "default.pt", PACKAGED_DEFAULT):
        if path.is_file():
            return path
    raise WeightsNotFoundError(
        "no default weights are installed. Pass --weights FILE (a harmonize weights file or an "
        "official AICT checkpoint), set $HARMONIZE_WEIGHTS, put a file at "
        f"{paths.weights_dir() / 'default.pt'}, or train one: python -m training --help"
    )


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsError(
            f"{path} is not a readable weights file ({first}); it may be truncated or "
            "corrupted: download or export it again"
        ) from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a weights dict")
    return obj


def _config_from(meta: dict[str, Any], path: Path) -> AICTConfig:
    variant = meta.get("variant")
    if variant not in VARIANTS:
        raise WeightsError(f"{path} is for variant {variant!r}, which this version does not know")
    known = {f.name for f in fields(AICTConfig)}
    stored = meta.get("config") or {}
    unknown = sorted(set(stored) - known)
    if unknown:
        raise WeightsError(f"{path} has config fields this version does not know: {unknown}")
    damping = stored.get("damping", 0.0)
    if isinstance(damping, bool) or not isinstance(damping, int | float) or not damping >= 0.0:
        raise WeightsError(
            f"{path} stores damping {damping!r}; it must be 0 (off) or a positive number "
            "(export the file again with --damping)"
        )
    return variant_config(variant, **stored)


def _verify(path: Path, state: Any, meta: dict[str, Any]) -> None:
    """Check the weights against the sha256 stored with them (about 10 ms for 3 MB); sets
    ``meta["sha256_verified"]``. A file without a stored digest is loaded unverified."""
    stored = meta.get("sha256")
    if not stored or not isinstance(state, dict):
        meta["sha256_verified"] = False
        return
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        return  # reported as "not a state dict of tensors" by the caller
    actual = state_sha256(state)
    if actual != stored:
        raise WeightsError(
            f"{path} is corrupted: its weights do not match the sha256 stored in it "
            f"(stored {str(stored)[:12]}…, found {actual[:12]}…); reinstall the package or "
            "export the file again"
        )
    meta["sha256_verified"] = True


def load_weights(
    path: str | os.PathLike[str], variant: str | None = None
) -> tuple[AICTNet, dict[str, Any]]:
    """Build the network a weights file needs and load it strictly.

    Args:
        path: our weights file, an official checkpoint, or a bare state dict.
        variant: expected variant; required to match the file's when the file names one.

    Returns:
        ``(model in eval mode on the CPU, float32; metadata dict)``.
    """
    path = Path(path)
    obj = _read(path)
    if obj.get("format") == FORMAT:
        if obj.get("format_version", 0) > FORMAT_VERSION:
            raise WeightsError(
                f"{path} uses weights format {obj.get('format_version')}, newer than this "
                f"version understands ({FORMAT_VERSION}); update harmonize"
            )
        config = _config_from(obj, path)
        if variant is not None and variant != obj["variant"]:
            raise WeightsError(f"{path} holds variant {obj['variant']!r}, not {variant!r}")
        state, meta = obj.get("state_dict", {}), dict(obj.get("metadata") or {})
        meta["variant"] = obj["variant"]
        _verify(path, state, meta)
    else:
        state = obj.get("model", obj)
        name = variant or "aict"
        if name not in VARIANTS:
            raise WeightsError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        config, meta = VARIANTS[name], {"variant": name, "source": "checkpoint without metadata"}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not contain a state dict of tensors")
    model = AICTNet(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        problems = []
        if missing:
            problems.append(f"missing keys: {show(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {show(unexpected)}")
        if wrong:
            problems.append(
                "wrong shapes: "
                + show(
                    [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in wrong]
                )
            )
        raise WeightsError(
            f"{path} does not fit variant {meta['variant']!r}: " + "; ".join(problems)
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return model.eval(), meta


def save_weights(
    path: str | os.PathLike[str],
    model: AICTNet,
    variant: str,
    metadata: dict[str, Any] | None = None,
    *,
    half: bool = True,
) -> dict[str, Any]:
    """Write a weights file atomically; returns the metadata it stored (with ``sha256``).

    ``half`` stores floating tensors as fp16 (half the size; the LUT output changes by far
    less than one 8-bit level).
    """
    state = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in model.state_dict().items()
    }
    meta = dict(metadata or {})
    meta["sha256"] = state_sha256(state)
    meta["dtype"] = "float16" if half else "float32"
    obj = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "variant": variant,
        "config": config_dict(model.config),
        "metadata": meta,
        "state_dict": state,
    }
    with atomic_open(path) as fh:
        torch.save(obj, fh)
    return meta

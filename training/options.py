"""Command-line options built from the config dataclasses, and configs built from them.

Every field of :class:`~training.config.TrainConfig` and :class:`~training.config.DataSpec`
becomes an option named ``--field-name`` (or its metadata's ``flag``) with the field's help and
type; a ``bool`` field becomes a flag that turns its default over. The options carry no
defaults of their own (argparse ``SUPPRESS``): a config is the dataclass defaults, then the
values of ``--preset NAME``, then the options given, so a preset never hides an option and an
option always wins over a preset (``--override`` entries are merged with the preset's).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from training import presets
from training.config import DataSpec, TrainConfig, parse_duration


def flag(f: dataclasses.Field) -> str:
    """The option string of a config field."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _value_type(hint: Any) -> Any:
    """``int | None`` -> int, ``tuple[str, ...]`` -> str, ``float`` -> float."""
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    return args[0] if args else hint


def _help(f: dataclasses.Field) -> str:
    """The field's help with its default (not for flags, required options, empty lists and
    None, nor where the help already says what the default is)."""
    text, d = f.metadata["help"].replace("%", "%%"), f.default
    if d is dataclasses.MISSING or d is None or isinstance(d, bool) or d == () or "default" in text:
        return text
    return f"{text} (default: {d})"


def _argument(f: dataclasses.Field, hint: Any) -> dict[str, Any]:
    """argparse keywords of one field."""
    kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": _help(f)}
    if hint is bool:
        return {**kw, "action": "store_false" if f.default else "store_true"}
    kw["type"] = f.metadata.get("parse", _value_type(hint))
    kw.update(
        {k: f.metadata[k] for k in ("action", "nargs", "metavar", "choices") if k in f.metadata}
    )
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        kw["required"] = True
    return kw


def add_fields(parser: argparse._ActionsContainer, cls: type, seen: set[str]) -> None:
    """Add an option for every command-line field of ``cls`` not already in ``seen``
    (``DataSpec.seed`` and ``TrainConfig.seed`` are one ``--seed``)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True) and f.name not in seen:
            seen.add(f.name)
            parser.add_argument(flag(f), **_argument(f, hints[f.name]))


def given(ns: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` given on the command line, as the field's type."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True) and f.name in vars(ns):
            value, origin = getattr(ns, f.name), typing.get_origin(hints[f.name])
            out[f.name] = origin(value) if origin in (tuple, dict) else value
    return out


class _PresetAction(argparse.Action):
    """``--preset NAME`` stores the name; ``--preset list`` prints the presets and exits."""

    def __call__(self, parser: argparse.ArgumentParser, ns: Any, value: Any, _opt: Any = None):
        if value == "list":
            print(describe_presets())
            parser.exit()
        if value not in presets.PRESETS:
            names = ", ".join(presets.PRESETS)
            parser.error(f"unknown preset {value!r} (one of {names}, or list)")
        setattr(ns, self.dest, value)


def add_preset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        action=_PresetAction,
        metavar="NAME",
        help=f"start from a named recipe ({', '.join(presets.PRESETS)}; list: show them); "
        "options given win over it",
    )


def add_data_options(parser: argparse.ArgumentParser, seen: set[str]) -> None:
    g = parser.add_argument_group("data")
    add_fields(g, DataSpec, seen)
    g.add_argument("--no-shared-data", action="store_true", help="do not use ../shared/data")


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """All options of ``train``: the TrainConfig fields, the data group, ``--preset``."""
    seen: set[str] = set()
    add_preset(parser)
    add_fields(parser, TrainConfig, seen)
    add_data_options(parser, seen)


def _values(ns: argparse.Namespace) -> dict[str, Any]:
    """Preset values overlaid with the options given (field name -> value)."""
    chosen = getattr(ns, "preset", None)
    base = copy.deepcopy(dict(presets.PRESETS[chosen].values)) if chosen else {}
    explicit = {**given(ns, DataSpec), **given(ns, TrainConfig)}
    if "model_overrides" in base and "model_overrides" in explicit:
        explicit["model_overrides"] = {**base["model_overrides"], **explicit["model_overrides"]}
    return {**base, **explicit}


def _pick(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)} - {"data"}
    return {k: v for k, v in values.items() if k in names}


def data_spec(ns: argparse.Namespace) -> DataSpec:
    """The DataSpec of the options (``--shared-data`` defaults to ``../shared/data`` beside the
    checkout, if present, for synthetic data)."""
    from training.data import default_shared_data

    spec = DataSpec(**_pick(DataSpec, _values(ns)))
    if min(spec.family_mix) < 0 or sum(spec.family_mix) <= 0:
        shown = " ".join(f"{w:g}" for w in spec.family_mix)
        sys.exit(f"--family-mix {shown}: the three weights must be >= 0, one of them > 0")
    shared = None
    if not ns.no_shared_data and spec.kind == "synthetic":
        beside = default_shared_data()
        shared = spec.shared_data or (str(beside) if beside.is_dir() else None)
    return dataclasses.replace(spec, shared_data=shared)


def train_config(ns: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of ``train``'s options; ``{runs}`` in ``--init-weights`` is expanded."""
    values = _pick(TrainConfig, _values(ns))
    if values.get("init_weights"):
        values["init_weights"] = presets.expand_path(values["init_weights"])
    return TrainConfig(data=data_spec(ns), **values)


def check_init_weights(cfg: TrainConfig) -> None:
    """Exit with one line if ``cfg`` starts from weights that are not there (a resumed run
    does not read them)."""
    if not cfg.init_weights or Path(cfg.init_weights).is_file():
        return
    if cfg.resume and (Path(cfg.out) / "last.pt").is_file():
        return
    sys.exit(
        f"--init-weights {cfg.init_weights}: no such file (a preset's {{runs}} is "
        f"{presets.runs_dir()}; train the run it names first, or give --init-weights PATH)"
    )


def _shown(f: dataclasses.Field, value: Any) -> str:
    """One field's value as command-line options ("" for a flag left at its default)."""
    if isinstance(value, dict):
        return " ".join(f"{flag(f)} {k}={json.dumps(v)}" for k, v in value.items())
    if isinstance(value, bool):
        return flag(f) if value != f.default else ""
    if f.metadata.get("parse") is parse_duration and value and value % 60 == 0:
        value = f"{value / 60:g}m"
    elif isinstance(value, tuple):
        value = " ".join(map(str, value))
    elif isinstance(value, float):
        value = f"{value:g}"
    return f"{flag(f)} {value}"


def preset_arguments(name: str) -> str:
    """The options equivalent to preset ``name``."""
    fields = {f.name: f for cls in (DataSpec, TrainConfig) for f in dataclasses.fields(cls)}
    shown = (_shown(fields[k], v) for k, v in presets.PRESETS[name].values.items())
    return " ".join(s for s in shown if s)


def describe_presets() -> str:
    """Every preset: its name, what it is, and the options it stands for."""
    lines = [f"runs folder ({{runs}}): {presets.runs_dir()}"]
    for name, p in presets.PRESETS.items():
        lines += ["", f"{name}: {p.description}", f"  {preset_arguments(name)}"]
    return "\n".join(lines)

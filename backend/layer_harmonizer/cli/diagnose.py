"""``harmonize diagnose``: what a bug report needs (:mod:`layer_harmonizer.diagnostics`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from layer_harmonizer.cli import add_model_options


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "diagnose",
        help="print what a bug report needs (tokens, keys and user names hidden)",
        description="Versions, installed plug-ins, device and LUT backend with the reasons, "
        "weights, the daemon's state and the last lines of its log, as plain text to paste "
        "into a bug report. Tokens, keys, user names and home folders are redacted; no daemon "
        "is started.",
    )
    p.add_argument("--json", action="store_true", help="the same as JSON")
    p.add_argument("--log-file", type=Path, help="the daemon log to show (default: the usual)")
    p.add_argument(
        "--log-path", action="store_true", help="print only the daemon log's path and exit"
    )
    add_model_options(p)
    p.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Exit status 0 whatever fails: a failing part is reported in one line, not fatal."""
    from layer_harmonizer import diagnostics as D

    if args.log_path:
        print(D.log_path(args.log_file))
        return 0
    opts = D.Options(args.weights, args.variant, args.device, args.lut_backend, args.log_file)
    report = D.collect(opts)
    print(D.render_json(report) if args.json else D.render_text(report).rstrip("\n"))
    return 0

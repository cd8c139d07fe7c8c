"""``harmonize`` command line: a thin adapter over the library, one module per command group
(:mod:`.run`: run, info; :mod:`.daemon`: serve, ping, stop, install-service; :mod:`.plugins`:
install-plugin, uninstall-plugin, package-plugin; :mod:`.diagnose`: diagnose).

Only the standard library is imported at module level, so ``harmonize --version`` and
``--help`` answer at once; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from layer_harmonizer._version import __version__

log = logging.getLogger("harmonize")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--weights``, ``--variant``, ``--device``, ``--precision`` and ``--lut-backend`` of the
    commands that load a model."""
    from layer_harmonizer.precision import PRECISIONS  # standard library only

    p.add_argument("--weights", type=Path, help="weights file (default: the installed default)")
    p.add_argument("--variant", help="network variant the weights are for (checked)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (network and LUTs)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="the network's precision: auto = bf16 for aict on a CPU where a one-time "
        "measurement shows it faster and within one 8-bit level (`harmonize info` says)",
    )
    p.add_argument(
        "--lut-backend",
        default="auto",
        help="auto | cuda | cpu-kernel | torch (`harmonize info` says what auto picks)",
    )


def _build_parser() -> argparse.ArgumentParser:
    from layer_harmonizer.cli import daemon, diagnose, plugins, run

    parser = argparse.ArgumentParser(
        prog="harmonize",
        description="Recolour a pasted object so it fits the photo (AICT harmonization).",
    )
    parser.add_argument("--version", action="version", version=f"harmonize {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run.add_commands(sub)
    daemon.add_commands(sub)
    plugins.add_commands(sub)
    diagnose.add_commands(sub)
    return parser


def main(argv: list[str] | None = None, *, own_process: bool = False) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    ``own_process``: the process exists for this command alone (the ``harmonize`` program), so
    a command may freeze the garbage collector after its imports and end the process itself
    once its output is safely written (:func:`end_process`).
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    args.own_process = own_process
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    from layer_harmonizer.errors import HarmonizeError

    try:
        return int(args.func(args))
    except HarmonizeError as exc:
        print(f"harmonize: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harmonize: interrupted", file=sys.stderr)
        return 130


def program() -> None:
    """The ``harmonize`` executable and ``python -m layer_harmonizer``."""
    sys.exit(main(own_process=True))


def end_process() -> None:
    """End this process now with status 0, skipping the interpreter's clean-up (module
    teardown and a last collection over torch's objects: ~0.3 s after a run).

    Call only on success, once every output is written and durable: nothing still to happen
    at exit (atexit handlers, finalizers) is run. Returns (for a normal exit) when stdout or
    stderr cannot be flushed, so that the interpreter reports that as it always does.
    """
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(0)

"""``harmonize serve``, ``ping``, ``stop`` and ``install-service``: the daemon's commands."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from layer_harmonizer.cli import add_model_options


def add_commands(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the daemon the plugins talk to (foreground)",
        description="Load the model once and answer plugin requests over ZeroMQ "
        "(protocol: docs/protocol.md). Stops on SIGTERM/SIGINT.",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="listen on TCP (always CURVE-encrypted) at this address instead of the local socket",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=0,
        help="listen on this TCP port (CURVE) instead of the local socket",
    )
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="listen on TCP (CURVE) and allow a --host that is not loopback",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        help="exit after this many idle seconds (0 = never)",
    )
    serve.add_argument("--log-level", default="INFO", help="DEBUG | INFO | WARNING | ERROR")
    serve.add_argument(
        "--log-file", type=Path, help="log file (default: daemon.log in the log dir)"
    )
    serve.add_argument(
        "--quiet", action="store_true", help="once serving, log to the file only (for detached use)"
    )
    add_model_options(serve)
    serve.set_defaults(func=cmd_serve)

    for name, func, text in (
        ("ping", cmd_ping, "show the running daemon's versions, device and weights"),
        ("stop", cmd_stop, "ask the running daemon to shut down"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
        p.set_defaults(func=func)

    service = sub.add_parser(
        "install-service",
        help="write a systemd user unit that runs the daemon (Linux)",
        description="Write ~/.config/systemd/user/harmonize.service. Arguments after -- go to "
        "`harmonize serve`, e.g. `harmonize install-service -- --device cuda`.",
    )
    service.add_argument("--print", action="store_true", help="print the unit, write nothing")
    service.add_argument("--enable", action="store_true", help="systemctl --user enable --now")
    service.add_argument("serve_args", nargs="*", help="extra `harmonize serve` arguments")
    service.set_defaults(func=cmd_install_service)


def cmd_serve(args: argparse.Namespace) -> int:
    from layer_harmonizer.arrays import max_pixels_default
    from layer_harmonizer.daemon.process import serve
    from layer_harmonizer.daemon.server import ServerConfig
    from layer_harmonizer.wire.protocol import Limits

    config = ServerConfig(
        limits=Limits(max_pixels=max_pixels_default()),
        host=args.host,
        port=args.port,
        allow_remote=args.allow_remote,
        idle_timeout=args.idle_timeout,
        lut_backend=args.lut_backend,
    )
    return serve(
        config,
        weights=None if args.weights is None else str(args.weights),
        variant=args.variant,
        device=args.device,
        precision=args.precision,
        log_level=args.log_level,
        log_file=args.log_file,
        quiet=args.quiet,
    )


def _daemon_client(args: argparse.Namespace) -> Any:
    from layer_harmonizer.wire.client import Client

    return Client.from_endpoint_file(timeout=args.timeout, retries=0)


def cmd_ping(args: argparse.Namespace) -> int:
    from layer_harmonizer.wire.client import DaemonError

    try:
        with _daemon_client(args) as client:
            info = client.hello()
    except DaemonError as exc:
        print(f"harmonize: {exc.message}", file=sys.stderr)
        return 1
    memory = info.get("free_memory")
    print(
        f"daemon {info.get('server_version')} (protocol "
        f"{'.'.join(map(str, info.get('protocol_version', ())))}) at {client.endpoint}, "
        f"pid {info.get('pid')}\n"
        f"device {info.get('device')}, variant {info.get('variant')}, weights "
        f"{info.get('weights_id')}, free memory "
        f"{'?' if memory is None else f'{memory / 2**30:.1f} GiB'}, {info.get('queued')} queued\n"
        f"pixels travel by {' or '.join(info.get('transports', ['frames']))}"
    )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from layer_harmonizer.wire.client import DaemonError

    try:
        with _daemon_client(args) as client:
            pid = client.ping().get("pid")
            client.shutdown()
    except DaemonError as exc:
        print(f"harmonize: {exc.message}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + max(args.timeout, 40.0)
    while time.monotonic() < deadline and client.endpoint_file and client.endpoint_file.exists():
        time.sleep(0.1)
    print(f"stopped the daemon (pid {pid})")
    return 0


def cmd_install_service(args: argparse.Namespace) -> int:
    from layer_harmonizer.daemon import systemd

    if args.print:
        print(systemd.unit_text(args.serve_args), end="")
        return 0
    path = systemd.install(args.serve_args, enable=args.enable)
    print(f"wrote {path}")
    if not args.enable:
        print(
            f"start it with: systemctl --user daemon-reload && systemctl --user enable --now "
            f"{systemd.UNIT_NAME}"
        )
    return 0

"""Where the daemon listens: the ``ipc://`` socket in the private runtime dir (the default), or
TCP with CURVE encryption, where ZAP drops every peer without the client key in the handshake,
before any of its messages is read (docs/protocol.md, "Trust model")."""

from __future__ import annotations

import contextlib
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from layer_harmonizer.errors import HarmonizeError
from layer_harmonizer.wire.discovery import is_loopback

HANDSHAKE_MS = 10_000
"""A TCP peer that has not completed the CURVE handshake by then is disconnected."""
IPC_PATH_MAX = 100
"""Longest ``ipc://`` socket path used (Linux allows 107 bytes, macOS 103); longer: TCP."""
ZAP_DOMAIN = "harmonize"


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless ``allow_remote``."""
    if not is_loopback(host) and not allow_remote:
        raise HarmonizeError(
            f"--host {host} would expose the daemon beyond this machine; add --allow-remote "
            "if that is intended (clients then need a copy of the endpoint file's keys)"
        )


class _OneClientKey:
    """ZAP credentials check (``configure_curve_callback``): only this daemon's client key."""

    def __init__(self, client_public: bytes) -> None:
        self.key = client_public

    def callback(self, _domain: str, key: bytes) -> bool:
        return secrets.compare_digest(key, self.key)


def bind_ipc(router: zmq.Socket, path: Path) -> str:
    """Listen on a Unix socket; its folder (the private runtime dir) keeps others out. Returns
    the endpoint."""
    with contextlib.suppress(FileNotFoundError):  # a dead daemon's socket (we hold the lock)
        path.unlink()
    try:
        router.bind(f"ipc://{path}")
    except zmq.ZMQError as exc:
        raise HarmonizeError(f"cannot listen on ipc://{path} ({exc})") from None
    return f"ipc://{path}"


@dataclass
class TcpListener:
    """What :func:`bind_tcp` set up: the endpoint, the keys a client needs (Z85:
    ``server_public``, ``client_public``, ``client_secret``) and the running ZAP handler
    (stop it when the ROUTER closes)."""

    endpoint: str
    curve: dict[str, str]
    auth: Any


def bind_tcp(router: zmq.Socket, context: zmq.Context, host: str, port: int) -> TcpListener:
    """Listen on TCP as a CURVE server whose ZAP handler admits only a fresh client key: other
    peers are dropped in the handshake, and all traffic is encrypted. ``port`` 0: a free one."""
    if not zmq.has("curve"):
        raise HarmonizeError(
            f"TCP needs ZeroMQ's CURVE encryption, which libzmq {zmq.zmq_version()} here "
            "lacks; use the default local socket (no --allow-remote/--port) or install a "
            "pyzmq built with CURVE (the PyPI wheels are)"
        )
    curve, auth = _start_zap(context)
    server_public, server_secret = zmq.curve_keypair()
    router.setsockopt(zmq.CURVE_SERVER, 1)
    router.setsockopt(zmq.CURVE_SECRETKEY, server_secret)
    router.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    curve["server_public"] = server_public.decode("ascii")
    if ":" in host.strip("[]"):
        router.setsockopt(zmq.IPV6, 1)
        host = f"[{host.strip('[]')}]"
    try:
        if port:
            router.bind(f"tcp://{host}:{port}")
        else:
            router.bind_to_random_port(f"tcp://{host}", 1024, 65536, 100)
    except zmq.ZMQError as exc:
        auth.stop()
        raise HarmonizeError(
            f"cannot listen on {host}:{port or 'a free port'} ({exc}); "
            "is another program using the port? `--port 0` picks a free one"
        ) from None
    return TcpListener(router.getsockopt_string(zmq.LAST_ENDPOINT), curve, auth)


def _start_zap(context: zmq.Context) -> tuple[dict[str, str], Any]:
    """Start the ZAP handler (before the bind: without one, libzmq admits any key) for a new
    client key pair; returns the client's keys and the handler."""
    from zmq.auth.thread import ThreadAuthenticator

    client_public, client_secret = zmq.curve_keypair()
    curve = {
        "client_public": client_public.decode("ascii"),
        "client_secret": client_secret.decode("ascii"),
    }
    auth = ThreadAuthenticator(context, log=logging.getLogger("harmonize.zap"))
    auth.start()
    auth.configure_curve_callback(ZAP_DOMAIN, _OneClientKey(client_public))
    return curve, auth

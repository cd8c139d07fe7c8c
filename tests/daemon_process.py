"""A real ``harmonize serve`` subprocess for tests, with all its folders under one root."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layer_harmonizer.wire.client import Client

ROOT = Path(__file__).resolve().parents[1]
SERVE = [sys.executable, "-m", "layer_harmonizer", "serve"]


def serve_once(env: dict[str, str], weights: str | Path) -> subprocess.CompletedProcess[str]:
    """``harmonize serve`` run to its end (a start that must be refused), output captured."""
    return subprocess.run(
        [*SERVE, "--weights", str(weights)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def daemon_env(root: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    for name in ("RUNTIME", "LOG", "DATA", "CACHE", "CONFIG"):
        env[f"HARMONIZE_{name}_DIR"] = str(root / name.lower())
    env.pop("HARMONIZE_WEIGHTS", None)
    return env


class DaemonProcess:
    """A ``harmonize serve`` subprocess; output goes to files under ``root``."""

    def __init__(self, root: Path, weights: Path, *args: str, **env: str) -> None:
        self.root = root
        self.env = daemon_env(root, **env)
        self.endpoint_file = root / "runtime" / "daemon.json"
        self.out = open(root / f"serve-{time.monotonic_ns()}.out", "wb")  # noqa: SIM115
        cmd = [*SERVE, "--weights", str(weights), "--log-level", "DEBUG", *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self.out, stderr=self.out)
        deadline = time.monotonic() + 90
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = self.output()
                self.stop()
                pytest.fail(f"daemon did not start: {output}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            return json.loads(self.endpoint_file.read_text())["pid"] == self.proc.pid
        except (OSError, ValueError, KeyError):
            return False

    @property
    def info(self) -> dict:
        return json.loads(self.endpoint_file.read_text())

    def client(self, **kw) -> Client:
        kw.setdefault("timeout", 60)
        return Client.from_endpoint_file(self.endpoint_file, **kw)

    def rss(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1]) << 10

    def output(self) -> str:
        self.out.flush()
        return (Path(self.out.name).read_bytes()[-3000:]).decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.out.close()
        return code

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

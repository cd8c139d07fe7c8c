"""Round trip of a large RGBA layer through the daemon vs the same work in-process, in one run.

    nice -n 10 python benchmarks/bench_daemon.py                 # 4096 x 4096, both transports
    python benchmarks/bench_daemon.py --size 2048 --repeat 5 --weights my.pt --device cuda

Starts ``harmonize serve`` as a subprocess (private tmp runtime/log dirs) and sends the layer,
mask and backdrop with ``crop_margin=None`` (the whole layer) and a different backdrop each
time (no prediction-cache hits), once per transport: ``frames`` (pixels inside the ZeroMQ
message over TCP) and ``shm`` (protocol 1.1: a shared-memory segment, TCP only for the
envelope).

- ``job``: the daemon's own work on the request (compose + predict + apply + encode, as it
  reports in the reply): what ``Engine.run`` does, which is also timed in this process;
- ``transport + decode`` = round trip - job: copying pixels in and out, sockets, message
  decode and checks, the client's receive. The target is <= 10 % of the job.

Then, over shared memory, the requests of protocol 2.0 and 2.1 side by side on a layer with a
soft alpha (``--kinds-only`` runs just this part): a first request with the 2.0 mask (alpha x
selection, which the daemon divides back) vs the 2.1 selection alone; a strength change as
the 2.0 plug-ins made it (the whole request again; the prediction comes from the cache) vs a
2.1 ``reapply`` of the kept job (no pixels sent).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from layer_harmonizer.daemon.engine import Engine  # noqa: E402
from layer_harmonizer.wire import messages as M  # noqa: E402
from layer_harmonizer.wire import protocol as P  # noqa: E402
from layer_harmonizer.wire.client import Client  # noqa: E402


def make_layer(size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An opaque RGBA layer with a soft-edged ellipse mask over ~45 % of it, and a backdrop."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([xx, yy, 1 - xx * yy], axis=2)
    layer = np.empty((size, size, 4), np.uint8)
    layer[..., :3] = (base * 200 + rng.integers(0, 40, (size, size, 3))).astype(np.uint8)
    layer[..., 3] = 255
    radius = ((xx - 0.5) / 0.4) ** 2 + ((yy - 0.5) / 0.35) ** 2
    mask = (np.clip((1.0 - radius) * 8, 0, 1) * 255).astype(np.uint8)
    back = (base[..., ::-1] * 150 + rng.integers(0, 60, (size, size, 3))).astype(np.uint8)
    return layer, mask, back


def soft_layer(size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`make_layer` with a soft alpha (128..255): ``(layer, selection, 2.0 mask, back)``."""
    layer, selection, back = make_layer(size, seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    layer[..., 3] = (128 + 127 * (xx + yy) / 2).astype(np.uint8)
    mask = ((layer[..., 3].astype(np.uint32) * selection + 127) // 255).astype(np.uint8)
    return layer, selection, mask, back


def compare_requests(client: Client, size: int, repeat: int) -> None:
    """Print the 2.0 vs 2.1 requests (round trip and the daemon's job, median of ``repeat``)."""
    kinds: dict[str, list[tuple[float, float]]] = {}

    def timed(name: str, call: Any, *args: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        result = call(*args, **kw)
        seconds = time.perf_counter() - start
        kinds.setdefault(name, []).append((seconds, sum(result.timings.values())))
        return result.job  # the pixels (a view of the segment) are let go at once

    for rep in range(repeat + 1):
        layer, selection, mask, back = soft_layer(size, seed=100 + rep)
        pix = [P.Pixels.of(a) for a in (layer, selection, mask, back)]
        timed("2.0 request (mask)", client.harmonize, pix[0], pix[2], pix[3])
        again = {"strength": 0.5}
        timed("2.0 strength change (request)", client.harmonize, pix[0], pix[2], pix[3], **again)
        job = timed("2.1 request (selection)", client.harmonize_layer, pix[0], pix[1], pix[3])
        timed("2.1 strength change (reapply)", client.reapply, job, **again)
        if not rep:
            kinds.clear()  # the first round warms up
    print(f"\nrequests on a {size}x{size} soft-alpha layer, shm, median of {repeat}:")
    for name, data in kinds.items():
        trip = statistics.median(d[0] for d in data)
        job = statistics.median(d[1] for d in data)
        print(f"{name:31s} round trip {trip:7.3f} s   daemon job {job:.3f} s")


def start_daemon(
    weights: Path, device: str, lut_backend: str, tmp: Path
) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "HARMONIZE_RUNTIME_DIR": str(tmp / "rt"), "HARMONIZE_LOG_DIR": str(tmp)}
    cmd = [sys.executable, "-m", "layer_harmonizer", "serve", "--weights", str(weights)]
    cmd += ["--device", device, "--lut-backend", lut_backend, "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    path = tmp / "rt" / "daemon.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if json.loads(path.read_text())["pid"] == proc.pid:
                return proc, path
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the daemon did not start")


def zmq_floor(nbytes_in: int, nbytes_out: int, repeat: int) -> float:
    """Median round trip of the same byte counts over a bare DEALER/ROUTER TCP pair."""
    import threading

    import zmq

    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    payload, answer = np.ones(nbytes_in, np.uint8), np.ones(nbytes_out, np.uint8)

    def echo() -> None:
        for _ in range(repeat + 1):
            identity, *_ = router.recv_multipart(copy=False)
            router.send_multipart([identity, answer], copy=False)

    thread = threading.Thread(target=echo)
    thread.start()
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        dealer.send_multipart([payload], copy=False)
        dealer.recv_multipart(copy=False)
        times.append(time.perf_counter() - start)
    thread.join()
    dealer.close(linger=0)
    router.close(linger=0)
    ctx.term()
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--weights", type=Path, help="default: random aict-light (timing only)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lut-backend", default="auto", help="auto | torch | cpu-kernel | ...")
    parser.add_argument("--transport", choices=["both", "frames", "shm"], default="both")
    parser.add_argument("--kinds-only", action="store_true", help="only the 2.0 vs 2.1 table")
    args = parser.parse_args()
    transports = ["frames", "shm"] if args.transport == "both" else [args.transport]

    import torch

    from layer_harmonizer.model import create_model
    from layer_harmonizer.model.weights import save_weights
    from layer_harmonizer.pipeline import load_model

    rows: dict[str, list[tuple[float, ...]]] = {t: [] for t in transports}
    local: list[float] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        weights = args.weights
        if weights is None:
            torch.manual_seed(0)
            weights = tmp / "random.pt"
            save_weights(weights, create_model("aict-light"), "aict-light")
        engine = Engine(load_model(weights, device=args.device), lut_backend=args.lut_backend)
        options = M.HarmonizeOptions(crop_margin=None)
        proc, endpoint_file = start_daemon(weights, args.device, args.lut_backend, tmp)
        # This process holds torch for the in-process reference; a plugin's client does not.
        # Keep full garbage-collector passes over torch's objects (~65 ms) out of the timings.
        gc.collect()
        gc.freeze()
        try:
            clients = {
                t: Client.from_endpoint_file(endpoint_file, timeout=600, retries=0, transport=t)
                for t in transports
            }
            info = clients[transports[0]].hello()
            for rep in range(0 if args.kinds_only else args.repeat + 1):  # 0: warm-up
                layer, mask, back = make_layer(args.size, seed=rep)
                start = time.perf_counter()
                reference, _, _ = engine.run(
                    {"layer": layer, "mask": mask, "backdrop": back}, options, lambda *a, **k: None
                )
                engine.cache.clear()
                if rep:
                    local.append(time.perf_counter() - start)
                for transport, client in clients.items():
                    frames = [P.Pixels.of(layer), P.Pixels.of(mask), P.Pixels.of(back)]
                    start = time.perf_counter()
                    result = client.harmonize(*frames, crop_margin=None)
                    out = np.frombuffer(result.pixels.data, np.uint8)
                    roundtrip = time.perf_counter() - start
                    assert result.transport == transport, (result.transport, transport)
                    t = result.timings
                    job = t["compose"] + t["predict"] + t["apply"] + t["encode"]
                    same = np.array_equal(out.reshape(reference.shape), reference)
                    del out, result
                    if rep:
                        rows[transport].append((roundtrip, job, same))
            shm_client = Client.from_endpoint_file(endpoint_file, timeout=600, transport="shm")
            compare_requests(shm_client, args.size, args.repeat)
            for client in [*clients.values(), shm_client]:
                client.close()
        finally:
            proc.terminate()
            proc.wait(60)

    if args.kinds_only:
        return
    mib_in, mib_out = args.size**2 * 8 / 2**20, args.size**2 * 4 / 2**20
    print(
        f"device {info['device']}, LUT backend {args.lut_backend}, "
        f"layer {args.size}x{args.size} RGBA uint8 ({mib_in:.0f} MiB in, {mib_out:.0f} MiB out), "
        f"median of {args.repeat}"
    )
    print(f"in-process job          {statistics.median(local):7.3f} s   Engine.run, same work")
    for transport, data in rows.items():
        roundtrip = statistics.median(r[0] for r in data)
        job = statistics.median(r[1] for r in data)
        shares = sorted(100 * (r[0] - r[1]) / r[1] for r in data)  # per repetition
        print(
            f"{transport:6s} round trip {roundtrip:7.3f} s   daemon job {job:.3f} s   "
            f"transport + decode {roundtrip - job:.3f} s = {100 * (roundtrip - job) / job:.1f} % "
            f"of the job (per repetition: min {shares[0]:.1f} %, median "
            f"{statistics.median(shares):.1f} %)   identical to in-process: "
            f"{all(r[2] for r in data)}"
        )
    floor = zmq_floor(args.size**2 * 8, args.size**2 * 4, args.repeat)
    print(f"bare zmq TCP            {floor:7.3f} s   same bytes echoed, no processing")


if __name__ == "__main__":
    main()

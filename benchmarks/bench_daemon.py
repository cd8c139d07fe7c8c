"""Round trip of a large RGBA layer through the daemon vs in-process ``harmonize``, in one run.

    nice -n 10 python benchmarks/bench_daemon.py                 # 4096 x 4096, random weights
    python benchmarks/bench_daemon.py --size 2048 --repeat 5 --weights my.pt --device cuda

Starts ``harmonize serve`` as a subprocess (private tmp runtime/log dirs), sends the layer,
mask and backdrop over TCP with ``crop_margin=None`` (the whole layer, so both sides do the
same network + LUT work) and a different backdrop each time (no prediction-cache hits).

- ``compute``: the daemon's own predict + apply time (reported in the reply);
- ``overhead`` = round trip - compute: serialisation, TCP, frame decode, compositing, result
  encode and the client's receive; the target is <= 10 % of ``compute``;
- ``in-process``: ``backend.pipeline.harmonize`` on the composite, same model, for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend import protocol as P  # noqa: E402
from backend.client import Client  # noqa: E402
from backend.compose import composite  # noqa: E402


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


def start_daemon(
    weights: Path, device: str, lut_backend: str, tmp: Path
) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "HARMONIZE_RUNTIME_DIR": str(tmp / "rt"), "HARMONIZE_LOG_DIR": str(tmp)}
    cmd = [sys.executable, "-m", "backend", "serve", "--weights", str(weights)]
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
    args = parser.parse_args()

    import torch

    from backend.model import create_model
    from backend.model.weights import save_weights
    from backend.pipeline import harmonize, load_model

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        weights = args.weights
        if weights is None:
            torch.manual_seed(0)
            weights = tmp / "random.pt"
            save_weights(weights, create_model("aict-light"), "aict-light")
        model = load_model(weights, device=args.device)
        proc, endpoint_file = start_daemon(weights, args.device, args.lut_backend, tmp)
        try:
            client = Client.from_endpoint_file(endpoint_file, timeout=600, retries=0)
            info = client.hello()
            rows = []
            for rep in range(args.repeat + 1):  # the first round warms both sides up
                layer, mask, back = make_layer(args.size, seed=rep)
                frames = [P.Pixels.of(layer), P.Pixels.of(mask), P.Pixels.of(back)]
                start = time.perf_counter()
                result = client.harmonize(*frames, crop_margin=None)
                out = np.frombuffer(result.pixels.data, np.uint8).reshape(result.pixels.shape)
                roundtrip = time.perf_counter() - start
                t = result.timings
                compute = t["predict"] + t["apply"]
                comp = composite(layer[..., :3], mask.astype(np.float32) / 255, back)
                start = time.perf_counter()
                reference = harmonize(comp, mask, model=model, lut_backend=args.lut_backend)
                inprocess = time.perf_counter() - start
                solid = mask == 255  # where layer semantics and composite semantics coincide
                same = np.array_equal(out[..., :3][solid], reference[solid])
                if rep:
                    rows.append((roundtrip, compute, inprocess, t["compose"], t["encode"], same))
            client.close()
        finally:
            proc.terminate()
            proc.wait(60)

    def med(i: int) -> float:
        return statistics.median(r[i] for r in rows)

    roundtrip, compute, inprocess = med(0), med(1), med(2)
    overhead = roundtrip - compute
    print(
        f"device {info['device']}, LUT backend {args.lut_backend}, "
        f"layer {args.size}x{args.size} RGBA uint8 "
        f"({args.size**2 * 8 / 2**20:.0f} MiB in, {args.size**2 * 4 / 2**20:.0f} MiB out), "
        f"median of {len(rows)}"
    )
    print(f"round trip      {roundtrip:7.3f} s")
    print(f"daemon compute  {compute:7.3f} s   (predict + apply)")
    print(
        f"overhead        {overhead:7.3f} s   = {100 * overhead / compute:.1f} % of compute "
        f"(compose {med(3):.3f} s, result encode {med(4):.3f} s, rest transport/decode)"
    )
    print(
        f"in-process      {inprocess:7.3f} s   harmonize() on the composite; round trip is "
        f"{100 * (roundtrip / inprocess - 1):+.1f} %"
    )
    floor = zmq_floor(args.size**2 * 8, args.size**2 * 4, args.repeat)
    print(f"bare zmq TCP    {floor:7.3f} s   same bytes echoed, no processing (transport floor)")
    print(f"results identical to in-process where mask = 1: {all(r[5] for r in rows)}")


if __name__ == "__main__":
    main()

"""What the weights' damping adds to a prediction: the network beside the change measurement.

    nice -n 10 python benchmarks/bench_damping.py --threads 1 --repeat 20

On the probe composite of :mod:`layer_harmonizer.precision` and the shipped default weights
(or ``--weights``): the best-of-``--repeat`` time of the network's forward pass in fp32, of
:func:`layer_harmonizer.lut.damping.predicted_change` at its 64 x 64 measuring size, and of the
same measurement on the full 256 x 256 input (what the size was chosen against), interleaved,
with the change each measures. The ratio to the network is the cost of damping per request.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from layer_harmonizer import precision  # noqa: E402
from layer_harmonizer.lut import damping  # noqa: E402
from layer_harmonizer.model.weights import find_default_weights, load_weights  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=20, help="timed passes of each")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--weights", type=Path, help="weights file (default: the shipped default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_weights(args.weights or find_default_weights())
    model.eval()
    x = precision.probe_input(model.config.input_size)
    with torch.inference_mode():
        maps = model(x)
    side, full = damping.MEASURE_SIDE, model.config.input_size
    steps = {
        "network (fp32)": lambda: model(x),
        f"change at {side}x{side}": lambda: damping.predicted_change(x, maps),
        f"change at {full}x{full}": lambda: damping.predicted_change(x, maps, full),
    }
    best = dict.fromkeys(steps, float("inf"))
    with torch.inference_mode():
        for _ in range(args.repeat + 1):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                best[name] = min(best[name], time.perf_counter() - start)
        small, whole = damping.predicted_change(x, maps), damping.predicted_change(x, maps, full)
    print(f"CPU: {precision.cpu_model()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, best of {args.repeat}; weights {meta['variant']}, "
          f"damping {model.config.damping:g}")  # fmt: skip
    print("\n| step | ms | vs network |\n|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1e3:.2f} | {seconds / best['network (fp32)']:.2f}x |")
    print(f"\nchange measured: {small:.1f} at {side}x{side}, {whole:.1f} at {full}x{full}")


if __name__ == "__main__":
    main()

"""The network in fp32 and under bf16 autocast on this CPU: time, probe error, ``auto``'s choice.

    nice -n 10 python benchmarks/bench_precision.py                  # aict (seeded) + reference
    python benchmarks/bench_precision.py --weights my-aict.pt --repeat 9 --threads 2

For each network (a seeded ``aict`` from ``create_model``, the official-format reference
checkpoint in ``../shared/reference`` when present, and any ``--weights``): the probe of
:mod:`layer_harmonizer.precision` run in both precisions, its largest difference after the LUTs
(in 8-bit levels), the best-of-``--repeat`` forward time of each (interleaved), and what
``--precision auto`` decides from those numbers (:func:`layer_harmonizer.precision.decide`;
nothing is read from or written to the cache). ``aict-light`` is timed too, for comparison:
``auto`` leaves it in fp32 without measuring.
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
from layer_harmonizer.model import VARIANTS, create_model  # noqa: E402
from layer_harmonizer.model.weights import load_weights  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "reference" / "aict_reference_seed0.pth"


def networks(extra: list[Path]) -> list[tuple[str, torch.nn.Module]]:
    torch.manual_seed(0)
    out = [("aict, seeded init", create_model("aict").eval())]
    out.append(("aict-light, seeded init", create_model("aict-light").eval()))
    for path in ([REFERENCE] if REFERENCE.exists() else []) + extra:
        model, meta = load_weights(path)
        out.append((f"{path.name} ({meta['variant']})", model))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="timed forward passes per precision")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--weights", type=Path, action="append", default=[], help="more networks")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {precision.cpu_model()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, best of {args.repeat}")  # fmt: skip
    print("\n| network | fp32 s | bf16 s | speed-up | probe max diff (8-bit levels) | auto |")
    print("|---|---|---|---|---|---|")
    for name, model in networks(args.weights):
        levels = precision.measure_probe(model, repeat=1).levels
        fp32_s, bf16_s = _times(model, args.repeat)
        choice = precision.decide(precision.Measurement(fp32_s, bf16_s, levels)).precision
        if model.config != VARIANTS["aict"]:
            choice = "fp32 (not measured: not aict)"
        print(
            f"| {name} | {fp32_s:.3f} | {bf16_s:.3f} | {fp32_s / bf16_s:.2f}x | {levels:.2f} "
            f"| {choice} |"
        )


def _times(model: torch.nn.Module, repeat: int) -> tuple[float, float]:
    """Best-of-``repeat + 1`` forward seconds in fp32 and bf16 on the probe, interleaved (the
    first pass of each warms up; the minimum leaves it out)."""
    x = precision.probe_input(model.config.input_size)
    best = {"fp32": float("inf"), "bf16": float("inf")}
    for _ in range(repeat + 1):
        for name in ("fp32", "bf16"):
            start = time.perf_counter()
            with torch.inference_mode(), precision.autocast(name, "cpu"):
                model(x)
            best[name] = min(best[name], time.perf_counter() - start)
    return best["fp32"], best["bf16"]


if __name__ == "__main__":
    main()

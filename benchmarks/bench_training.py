"""Training throughput: samples per second of one optimiser step, per variant, on CPU (or GPU).

A step is exactly what ``python -m training train`` does per batch: the network forward at
256 x 256, the LUTs applied to the 256 x 256 input and to every full-resolution crop (torch
reference, differentiable), the fMSE losses, backward and Adam. Batches are built beforehand from
the synthetic generator (``../shared/data`` when present, else generated photos), so data
loading is timed separately (``data samples/s``: one process, the generator alone).

Each variant is timed in every configuration of ``--precisions`` (fp32, bf16 autocast of the
network) x ``--lr-weights`` (0.01: official loss with the 256 x 256 term; 0: that LUT pass
skipped) x ``--modes`` (``eager``; ``compile``: the network wrapped in ``torch.compile``, its
compilation inside the untimed warm-up step; ``channels-last``: the network and its input in
channels-last memory format), side by side on the same batches, so the ratios hold even on a
busy machine.

Usage (documented in docs/benchmarks.md)::

    nice -n 10 python benchmarks/bench_training.py --threads 2
    python benchmarks/bench_training.py --variants aict-light --max-side 256 --steps 5
    python benchmarks/bench_training.py --variants aict-light --max-side 256 --precisions bf16 \
        --lr-weights 0 --modes eager,compile,channels-last,eager --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from layer_harmonizer.model import create_model  # noqa: E402
from training.config import DataSpec, TrainConfig  # noqa: E402
from training.data import build_training, default_shared_data  # noqa: E402
from training.data.samples import collate  # noqa: E402
from training.losses import batch_loss  # noqa: E402

DEFAULT_BATCH = {"aict-light": 8, "aict-small": 8, "aict": 2}
"""Batch per variant (the paper network is too slow on CPU for 8 per step)."""


def data_spec(max_side: int, tmp: Path) -> DataSpec:
    shared = default_shared_data()
    if shared.is_dir():
        return DataSpec(shared_data=str(shared), val_count=0, max_side=max_side)
    from tests.test_training_data import write_photo_folder

    photos, masks, bank = write_photo_folder(tmp, n=8, h=480, w=640)
    return DataSpec(
        photos=(f"{photos}:{masks}",), mask_banks=(str(bank),), val_count=0, max_side=max_side
    )


def bench_variant(
    variant: str,
    dataset,
    batch: int,
    steps: int,
    device: str,
    precision: str = "fp32",
    lr_weight: float = 0.01,
    mode: str = "eager",
) -> dict:
    torch.manual_seed(0)
    model = create_model(variant).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    if mode == "channels-last":
        model = model.to(memory_format=torch.channels_last)
    elif mode == "compile":
        model = torch.compile(model)
    elif mode != "eager":
        raise SystemExit(f"unknown mode {mode!r} (eager, compile, channels-last)")
    cfg = TrainConfig(out="unused", precision=precision, lr_weight=lr_weight)
    batches = [collate([dataset[s * batch + j] for j in range(batch)]) for s in range(steps + 1)]
    times = []
    for i, cpu_batch in enumerate(batches):
        b = cpu_batch.to(device)
        if mode == "channels-last":
            b = dataclasses.replace(
                b, lr_input=b.lr_input.contiguous(memory_format=torch.channels_last)
            )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = batch_loss(model, b, cfg).total
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "variant": variant,
        "precision": precision,
        "lr_weight": lr_weight,
        "mode": mode,
        "batch": batch,
        "steps": len(times),
        "step_s_median": round(med, 3),
        "samples_per_s": round(batch / med, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="aict-light,aict-small,aict")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    ap.add_argument("--batch", type=int, default=0, help="batch (0: per-variant default)")
    ap.add_argument("--max-side", type=int, default=352, help="full-resolution crop side")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", default="fp32,bf16", help="network precisions to compare")
    ap.add_argument("--lr-weights", default="0.01,0", help="256x256 loss weights to compare")
    ap.add_argument("--modes", default="eager", help="eager, compile, channels-last to compare")
    ap.add_argument("--json", action="store_true", help="print JSON lines only")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dataset, _, _ = build_training(data_spec(args.max_side, Path(tmp)))
        t0 = time.perf_counter()
        n_data = 24
        for i in range(n_data):
            dataset[10_000 + i]
        data_rate = n_data / (time.perf_counter() - t0)
        env = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "max_side": args.max_side,
            "data_samples_per_s": round(data_rate, 1),
        }
        print(json.dumps(env))
        for variant in args.variants.split(","):
            batch = args.batch or DEFAULT_BATCH.get(variant, 4)
            for precision in args.precisions.split(","):
                for lr_weight in (float(w) for w in args.lr_weights.split(",")):
                    for mode in args.modes.split(","):
                        res = bench_variant(
                            variant,
                            dataset,
                            batch,
                            args.steps,
                            args.device,
                            precision,
                            lr_weight,
                            mode,
                        )
                        print(json.dumps(res))
                        sys.stdout.flush()


if __name__ == "__main__":
    main()

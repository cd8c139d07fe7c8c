"""bfloat16 autocast for the network's forward, and the start-up measurement that chooses it."""

from __future__ import annotations

import copy
import time

import torch
from torch import Tensor, nn

from layer_harmonizer.precision import autocast

__all__ = ["autocast", "choose_precision"]


def choose_precision(model: nn.Module, device: str, batch_size: int, repeat: int = 3) -> dict:
    """Time the network's forward + backward in fp32 and under bf16 autocast on a random batch
    and pick bf16 only where it is at least 10 % faster (CPUs with AMX or AVX-512 BF16; on
    others bf16 is emulated and slower). Returns ``{"precision", "fp32_s", "bf16_s"}``."""
    if torch.device(device).type != "cpu":
        return {"precision": "fp32", "reason": "not a CPU"}
    probe = copy.deepcopy(model).train()
    size = probe.config.input_size
    x = torch.rand(batch_size, 4, size, size, generator=torch.Generator().manual_seed(0))
    times = {}
    with torch.random.fork_rng(devices=[]):  # dropout here must not shift the training stream
        for precision in ("fp32", "bf16"):
            times[precision] = _time_step(probe, x, precision, device, repeat)
    faster = times["bf16"] < 0.9 * times["fp32"]
    return {
        "precision": "bf16" if faster else "fp32",
        "fp32_s": round(times["fp32"], 4),
        "bf16_s": round(times["bf16"], 4),
    }


def _time_step(model: nn.Module, x: Tensor, precision: str, device: str, repeat: int) -> float:
    """Best of ``repeat`` timed forward + backward passes (after one warm-up), seconds."""
    runs = []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        with autocast(precision, device):
            maps = model(x)
        (maps.intervals.float().mean() + maps.colors.float().mean()).backward()
        runs.append(time.perf_counter() - t0)
    return min(runs[1:])

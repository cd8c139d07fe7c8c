"""Multi-process training with ``torchrun``: process group, model wrapping, rank helpers.

``torchrun --nproc-per-node N -m training train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` then joins the process group (NCCL on GPUs, gloo on CPUs) and
:func:`wrap` puts the model in ``DistributedDataParallel``. As in the official code, BatchNorm
becomes ``SyncBatchNorm`` on GPUs; PyTorch's SyncBatchNorm has no CPU kernel, so on CPU the
ordinary BatchNorm stays and DDP broadcasts rank 0's running statistics every step (the
parameters are identical on all ranks either way: gradients are averaged).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """Rank, world size and local rank from the ``torchrun`` environment (1 process if unset)."""
    return DistInfo(
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def setup(device: str) -> tuple[DistInfo, str]:
    """Join the process group when launched by torchrun; returns ``(info, device)``.

    On CUDA each process takes GPU ``LOCAL_RANK``.
    """
    info = from_env()
    if not info.enabled:
        return info, device
    if device.startswith("cuda"):
        torch.cuda.set_device(info.local_rank)
        device = f"cuda:{info.local_rank}"
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return info, device


def wrap(model: nn.Module, info: DistInfo, device: str) -> nn.Module:
    """The model as DDP (with SyncBatchNorm on GPUs) when distributed, else unchanged."""
    if not info.enabled:
        return model
    if device.startswith("cuda"):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[info.local_rank])
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(value: float, info: DistInfo, device: str = "cpu") -> float:
    """The mean of a float over all ranks (the value itself when not distributed)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather_strings(value: str, info: DistInfo) -> list[str]:
    """Every rank's ``value``, in rank order (``[value]`` when not distributed)."""
    if not info.enabled:
        return [value]
    out: list[str] = [""] * info.world
    dist.all_gather_object(out, value)
    return out

"""What changes from step to step: the LR schedule, the weight EMA and the sample stream."""

from __future__ import annotations

import copy
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from training.data.samples import Batch, collate

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.distributed import DistInfo


def lr_factor(progress: float, const_fraction: float, final: float = 0.0) -> float:
    """LR multiplier at ``progress`` in [0, 1]: 1 until ``const_fraction``, then linear to
    ``final`` at 1 (``final`` afterwards)."""
    if progress <= const_fraction:
        return 1.0
    if const_fraction >= 1.0:
        return 1.0
    t = min((progress - const_fraction) / (1.0 - const_fraction), 1.0)
    return 1.0 + (final - 1.0) * t


class EMA:
    """Exponential moving average of a model's parameters (buffers are copied).

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early
    averages are not dominated by the random-ish initial weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.module.parameters(), model.parameters(), strict=True):
            e.mul_(d).add_(p.detach(), alpha=1 - d)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


class StepSampler(torch.utils.data.Sampler[int]):
    """Endless global sample indices for one rank, starting at micro-batch ``start_micro``.

    Micro-batch ``n`` of rank ``r`` holds samples ``(n * world + r) * B ... + B - 1``.
    """

    def __init__(self, batch_size: int, start_micro: int, rank: int = 0, world: int = 1):
        self.b, self.start, self.rank, self.world = batch_size, start_micro, rank, world

    def __iter__(self) -> Iterator[int]:
        n = self.start
        while True:
            base = (n * self.world + self.rank) * self.b
            yield from range(base, base + self.b)
            n += 1

    def __len__(self) -> int:  # nominal; the stream is endless
        return 2**62


def _ignore_stop_signals(_worker_id: int) -> None:
    """Loader workers leave SIGTERM/SIGINT to the trainer, which stops after the current step
    and writes ``last.pt`` (a signal to the whole process group must not kill a worker first
    and turn a clean stop into a crash)."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)


def batch_stream(dataset: Any, cfg: TrainConfig, step: int, info: DistInfo) -> Iterator[Batch]:
    """The endless batch stream of this rank from optimiser step ``step`` on."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=StepSampler(cfg.batch_size, step * cfg.accum, info.rank, info.world),
        num_workers=cfg.workers,
        collate_fn=collate,
        # Its own generator: creating the iterator must not draw from the global RNG (which
        # drives dropout and is restored on resume).
        generator=torch.Generator().manual_seed(cfg.seed),
        persistent_workers=cfg.workers > 0,
        worker_init_fn=_ignore_stop_signals,
        prefetch_factor=2 if cfg.workers > 0 else None,
    )
    return iter(loader)

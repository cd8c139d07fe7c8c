"""The training loop: Adam, constant-then-linear LR decay, weight EMA, accumulation, resume.

One optimiser step sees ``batch_size * accum * world_size`` samples. Sample indices are a global
counter, so the data stream after a resume (or on another rank) is exactly the one a single
uninterrupted run would have seen. The schedule runs on *progress*, the larger of
``step / max_steps`` and ``elapsed / time_budget``: the LR stays at ``lr`` for the first
``const_fraction`` of progress and then falls linearly to ``final_lr_fraction * lr``, so a
time-budgeted CPU run decays properly whatever its speed. ``elapsed`` is training time summed
over all resumed runs.

Files in ``out``: ``last.pt`` (full state, rewritten every ``ckpt_minutes`` and at the end),
``best.pt`` (the state with the lowest validation fMSE of the EMA weights), ``train.jsonl``
(one JSON object per event: ``start``, ``step``, ``eval``, ``checkpoint``, ``end``),
``config.json`` and, for synthetic data, ``split.json``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from backend.fileutil import atomic_open
from backend.lut.reference import apply_luts
from backend.model import AICTNet, create_model
from backend.model.aict import expand_input_weights
from backend.model.weights import load_weights, state_sha256
from backend.pipeline import resolve_device
from training import distributed as D
from training.data import DataSpec, build_training
from training.evaluate import evaluate, summarize
from training.losses import (
    HR_MIN_AREA,
    LR_MIN_AREA,
    LR_WEIGHT,
    harmonization_loss,
    relative_weights,
)
from training.samples import Batch, Triplet, collate

CHECKPOINT_FORMAT = "harmonize-train-checkpoint"


@dataclass
class TrainConfig:
    """Every option of a training run (stored in checkpoints and in exported metadata)."""

    out: str
    variant: str = "aict-light"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # AICTConfig fields
    data: DataSpec = field(default_factory=DataSpec)
    batch_size: int = 8
    accum: int = 1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    const_fraction: float = 0.5
    final_lr_fraction: float = 0.0
    ema_decay: float = 0.999
    max_steps: int = 100_000
    time_budget: float | None = None  # seconds of training, summed over resumed runs
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    threads: int | None = None
    identity_init: bool = True
    init_weights: str | None = None  # start a new run from these weights (file or checkpoint EMA)
    hr_min_area: float = HR_MIN_AREA
    lr_min_area: float = LR_MIN_AREA
    lr_weight: float = LR_WEIGHT  # 0 skips the 256 x 256 branch (saves ~25 % of a CPU step)
    relative_tau: float = 0.0  # > 0: per-image weights sqrt(ref / (composite fMSE + tau))
    precision: str = "auto"  # network forward in "fp32", "bf16" (autocast) or "auto" (measured)
    log_every: int = 10
    eval_every: int = 250
    ckpt_minutes: float = 5.0
    resume: bool = True
    progress: bool = True

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.accum

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TrainConfig:
        obj = dict(obj)
        data = obj.pop("data", {}) or {}
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        if "betas" in obj:
            obj["betas"] = tuple(obj["betas"])
        return cls(data=DataSpec(**data), **obj)


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


def _autocast(precision: str, device: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
        with _autocast(precision, device):
            maps = model(x)
        (maps.intervals.float().mean() + maps.colors.float().mean()).backward()
        runs.append(time.perf_counter() - t0)
    return min(runs[1:])


def batch_loss(model: nn.Module, batch: Batch, cfg: TrainConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Forward both branches and the loss: ``(total, hr, lr)`` (batch means, [0, 1] units).

    The LUT maps predicted from the 256 x 256 input are applied to that input with its mask
    (LR branch, skipped when ``cfg.lr_weight`` is 0) and to each full-resolution composite with
    its own mask (HR branch). Only the network runs under bf16 autocast (``cfg.precision``);
    the LUTs and the loss are float32.
    """
    device = str(batch.lr_input.device)
    with _autocast(cfg.precision, device):
        maps = model(batch.lr_input)
    if torch.float32 not in (maps.intervals.dtype, maps.colors.dtype) or (
        maps.intervals.dtype != maps.colors.dtype
    ):
        maps = type(maps)(intervals=maps.intervals.float(), colors=maps.colors.float())
    lr_comp, lr_mask = batch.lr_input[:, :3], batch.lr_input[:, 3:]
    weights = None
    if cfg.relative_tau > 0:
        weights = relative_weights(
            batch.hr_composite,
            batch.hr_real,
            batch.hr_mask,
            cfg.relative_tau,
            hr_min_area=cfg.hr_min_area,
        )
    # With no LR term the 256 x 256 "prediction" is the composite itself (loss constant).
    lr_pred = apply_luts(lr_comp, maps, lr_mask) if cfg.lr_weight else lr_comp
    hr_pred = [
        apply_luts(c[None], maps.select(i), m[None])[0]
        for i, (c, m) in enumerate(zip(batch.hr_composite, batch.hr_mask, strict=True))
    ]
    return harmonization_loss(
        lr_pred,
        batch.lr_real,
        lr_mask,
        hr_pred,
        batch.hr_real,
        batch.hr_mask,
        hr_min_area=cfg.hr_min_area,
        lr_min_area=cfg.lr_min_area,
        lr_weight=cfg.lr_weight,
        image_weights=weights,
    )


def warm_start(model: AICTNet, path: str) -> None:
    """Load the weights of ``path`` (a weights file, or a training checkpoint's EMA) into
    ``model``; a 4-channel network fits a ``prior_input`` model with the new inputs at zero."""
    source = Path(path)
    obj = torch.load(source, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        state = obj["ema"]["module"]
    else:
        state = load_weights(source)[0].state_dict()
    model.load_state_dict(expand_input_weights(state, model))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_open(path) as fh:
        torch.save(state, fh)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (plain tensors and values only)."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint of this package")
    return obj


def model_from_checkpoint(ck: dict[str, Any], *, ema: bool = True) -> AICTNet:
    """The network of a checkpoint (EMA weights unless ``ema=False``), in eval mode."""
    model = create_model(ck["variant"], **ck["config"].get("model_overrides", {}))
    model.load_state_dict(ck["ema"]["module"] if ema else ck["model"])
    return model.eval()


class JsonlLog:
    """Append-only JSON-lines log (one flushed line per event)."""

    def __init__(self, path: Path | None) -> None:
        self.fh = path.open("a") if path is not None else None

    def write(self, event: str, **values: Any) -> None:
        if self.fh is not None:
            self.fh.write(json.dumps({"event": event, "time": time.time(), **values}) + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def _eval_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    table = summarize(rows, "subset")["All"]
    return {m: {k: round(v, 4) for k, v in s.items()} for m, s in table.items()}


def validate(
    model: AICTNet, val: list[Triplet], device: str, methods: tuple[str, ...] = ("model",)
) -> dict[str, dict[str, float]]:
    """Mean MSE / fMSE / PSNR over the validation triplets, per method (no SSIM: speed)."""
    rows = evaluate(val, model, methods=methods, device=device, with_ssim=False)
    return _eval_summary(rows)


def _ignore_stop_signals(_worker_id: int) -> None:
    """Loader workers leave SIGTERM/SIGINT to the trainer, which stops after the current step
    and writes ``last.pt`` (a signal to the whole process group must not kill a worker first
    and turn a clean stop into a crash)."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training as configured; returns the final state summary."""
    info, device = D.setup(resolve_device(cfg.device))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
    D.barrier(info)
    torch.manual_seed(cfg.seed)

    model = create_model(cfg.variant, **cfg.model_overrides)
    # The LR branch is whatever size the network takes (256 for every shipped variant).
    dataset, val, data_info = build_training(
        dataclasses.replace(cfg.data, lr_size=model.config.input_size)
    )
    if not cfg.identity_init:
        from backend.model import init_weights

        init_weights(model, identity=False)
    if cfg.init_weights:
        warm_start(model, cfg.init_weights)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=1e-8)
    ema = EMA(model, cfg.ema_decay)
    step, elapsed_before, best = 0, 0.0, math.inf
    resumed_precision = None
    last = out / "last.pt"
    if cfg.resume and last.is_file():
        ck = load_checkpoint(last)
        if ck["variant"] != cfg.variant:
            raise ValueError(f"{last} is for {ck['variant']}, not {cfg.variant}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        ema.load_state_dict(ck["ema"])
        step, elapsed_before, best = ck["step"], ck["elapsed"], ck.get("best_fmse", math.inf)
        if "torch_rng" in ck:
            torch.set_rng_state(ck["torch_rng"])
        resumed_precision = ck.get("precision")
    ema.module.to(device)
    precision = {"precision": cfg.precision}
    if cfg.precision == "auto":  # measured once per run; a resumed run keeps the choice
        precision = resumed_precision or choose_precision(model, device, cfg.batch_size)
        cfg = dataclasses.replace(cfg, precision=precision["precision"])
    net = D.wrap(model, info, device)

    log = JsonlLog(out / "train.jsonl" if info.main else None)
    split = data_info.pop("split", None)
    if info.main:
        (out / "config.json").write_text(json.dumps(cfg.to_json(), indent=1) + "\n")
        if split is not None:
            split.save(out / "split.json")
    log.write(
        "start",
        step=step,
        elapsed=elapsed_before,
        world=info.world,
        device=device,
        data=data_info,
        config=cfg.to_json(),
        torch=torch.__version__,
        precision=precision,
    )

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
    batches = iter(loader)

    stop = {"signal": None}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    baselines: dict[str, dict[str, float]] = {}
    if info.main and val:
        baselines = validate(ema.module, val, device, ("composite", "classical"))
        log.write("baselines", n=len(val), **baselines)

    def state() -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "variant": cfg.variant,
            "config": cfg.to_json(),
            "model": D.unwrap(net).state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "samples": step * cfg.samples_per_step * info.world,
            "elapsed": elapsed,
            "best_fmse": best,
            "data": {k: v for k, v in data_info.items()},
            "baselines": baselines,
            "torch_rng": torch.get_rng_state(),
            "precision": precision,
        }

    def run_eval() -> dict[str, Any]:
        nonlocal best
        res = validate(ema.module, val, device)["model"]
        improved = res["fmse"] < best
        if improved:
            best = res["fmse"]
        log.write("eval", step=step, elapsed=elapsed, ema=res, best_fmse=best, **baselines)
        if improved:
            save_checkpoint(out / "best.pt", state())
        return res

    t_start = time.monotonic()
    elapsed = elapsed_before
    last_ckpt = time.monotonic()
    bar = None
    if info.main and cfg.progress:
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        bar = tqdm(
            total=cfg.max_steps,
            initial=step,
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5 if tty else 30.0,
            smoothing=0.05,
        )
    window: list[tuple[float, float, float]] = []
    t_window = time.monotonic()

    def progress_now() -> float:
        p = step / cfg.max_steps
        if cfg.time_budget:
            p = max(p, elapsed / cfg.time_budget)
        return min(p, 1.0)

    net.train()
    reason = "max_steps"
    try:
        while step < cfg.max_steps:
            if cfg.time_budget and elapsed >= cfg.time_budget:
                reason = "time_budget"
                break
            if stop["signal"] is not None:
                reason = f"signal {stop['signal']}"
                break
            lr = cfg.lr * lr_factor(progress_now(), cfg.const_fraction, cfg.final_lr_fraction)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            tot = hr = lo = 0.0
            for micro in range(cfg.accum):
                batch = next(batches).to(device)
                sync = micro == cfg.accum - 1 or not info.enabled
                ctx = net.no_sync() if not sync else contextlib.nullcontext()
                with ctx:
                    loss, l_hr, l_lr = batch_loss(net, batch, cfg)
                    (loss / cfg.accum).backward()
                tot += float(loss.detach()) / cfg.accum
                hr += float(l_hr.detach()) / cfg.accum
                lo += float(l_lr.detach()) / cfg.accum
            if not math.isfinite(tot):
                raise FloatingPointError(f"loss is {tot} at step {step}; lower --lr")
            opt.step()
            ema.update(D.unwrap(net))
            step += 1
            elapsed = elapsed_before + (time.monotonic() - t_start)
            window.append((tot, hr, lo))
            if step % cfg.log_every == 0:
                loss_mean = D.all_reduce_mean(float(np.mean([w[0] for w in window])), info, device)
                now = time.monotonic()
                sps = len(window) * cfg.samples_per_step * info.world / max(now - t_window, 1e-9)
                log.write(
                    "step",
                    step=step,
                    loss=loss_mean,
                    hr=float(np.mean([w[1] for w in window])),
                    lr_loss=float(np.mean([w[2] for w in window])),
                    lr=lr,
                    elapsed=elapsed,
                    samples_per_s=sps,
                )
                window, t_window = [], now
                if bar is not None:
                    left = (cfg.max_steps - step) * elapsed / max(step - 0, 1)
                    if cfg.time_budget:
                        left = min(left, cfg.time_budget - elapsed)
                    bar.set_postfix_str(
                        f"loss={loss_mean:.5f} lr={lr:.2e} {sps:.1f} samples/s "
                        f"ETA {_fmt_time(left)}",
                        refresh=False,
                    )
            if bar is not None:
                bar.update(1)
            if info.main and val and cfg.eval_every and step % cfg.eval_every == 0:
                res = run_eval()
                if bar is not None:
                    bar.write(
                        f"step {step}: EMA val fMSE {res['fmse']:.2f} (classical "
                        f"{baselines['classical']['fmse']:.2f}, composite "
                        f"{baselines['composite']['fmse']:.2f})"
                    )
            if info.main and time.monotonic() - last_ckpt >= cfg.ckpt_minutes * 60:
                save_checkpoint(last, state())
                log.write("checkpoint", step=step, elapsed=elapsed, path=str(last))
                last_ckpt = time.monotonic()
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if bar is not None:
            bar.close()
    if info.enabled:  # record that every rank ended with the same weights
        # Parameters only: BatchNorm running statistics are per rank between DDP's broadcasts
        # (rank 0's, which DDP broadcasts at every forward, are the ones saved).
        params = {k: v.detach() for k, v in D.unwrap(net).named_parameters()}
        digests = D.gather_strings(state_sha256(params), info)
        log.write("sync", step=step, digests=digests, in_sync=len(set(digests)) == 1)
    final: dict[str, Any] = {}
    if info.main:
        if val and (not cfg.eval_every or step % cfg.eval_every):
            final = run_eval()
        save_checkpoint(last, state())
        log.write("end", step=step, elapsed=elapsed, reason=reason, best_fmse=best, ema=final)
    log.close()
    D.barrier(info)
    D.teardown(info)
    del batches, loader
    return {
        "step": step,
        "elapsed": elapsed,
        "reason": reason,
        "best_fmse": best,
        "last": str(last),
        "pid": os.getpid(),
    }

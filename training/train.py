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

:func:`train` is :func:`setup` (network, data, resume), :func:`loop` (the optimiser steps) and
:func:`teardown` (last validation, ``last.pt``); checkpoints are :mod:`training.checkpoint`, the
LR schedule, EMA and sample stream :mod:`training.schedule`, bf16 :mod:`training.precision`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from layer_harmonizer.model import AICTNet, create_model
from layer_harmonizer.model.weights import state_sha256
from layer_harmonizer.pipeline import resolve_device
from training import distributed as D
from training.checkpoint import CHECKPOINT_FORMAT, JsonlLog, restore, save_checkpoint, warm_start
from training.config import TrainConfig
from training.data import build_training
from training.data.samples import Batch, Triplet
from training.evaluate import validate
from training.losses import LossTerms, batch_loss
from training.precision import choose_precision
from training.schedule import EMA, batch_stream, lr_factor


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class Run:
    """One training run between :func:`setup` and :func:`teardown`: what it trains, with what,
    and how far it is (``step``; ``elapsed`` training seconds over all resumed runs)."""

    cfg: TrainConfig
    info: D.DistInfo
    device: str
    out: Path
    net: nn.Module  # the model, wrapped for DistributedDataParallel when there are ranks
    opt: torch.optim.Optimizer
    ema: EMA
    val: list[Triplet]
    data_info: dict[str, Any]
    log: JsonlLog
    batches: Iterator[Batch]
    precision: dict[str, Any]
    step: int = 0
    elapsed_before: float = 0.0  # at the start of this invocation
    elapsed: float = 0.0
    best: float = math.inf
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    stop_signal: int | None = None
    bar: Any = None  # tqdm progress bar (rank 0 with progress on)
    t_start: float = 0.0  # time.monotonic() when the loop started

    @property
    def last(self) -> Path:
        return self.out / "last.pt"

    def progress(self) -> float:
        """The larger of ``step / max_steps`` and ``elapsed / time_budget``, at most 1."""
        p = self.step / self.cfg.max_steps
        if self.cfg.time_budget:
            p = max(p, self.elapsed / self.cfg.time_budget)
        return min(p, 1.0)

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds (:mod:`training.checkpoint`)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "variant": self.cfg.variant,
            "config": self.cfg.to_json(),
            "model": D.unwrap(self.net).state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "samples": self.step * self.cfg.samples_per_step * self.info.world,
            "elapsed": self.elapsed,
            "best_fmse": self.best,
            "data": dict(self.data_info),
            "baselines": self.baselines,
            "torch_rng": torch.get_rng_state(),
            "precision": self.precision,
        }

    def validate_ema(self) -> dict[str, Any]:
        """Score the EMA weights, log them and keep ``best.pt`` (rank 0 only)."""
        res = validate(self.ema.module, self.val, self.device)["model"]
        improved = res["fmse"] < self.best
        if improved:
            self.best = res["fmse"]
        self.log.write(
            "eval",
            step=self.step,
            elapsed=self.elapsed,
            ema=res,
            best_fmse=self.best,
            **self.baselines,
        )
        if improved:
            save_checkpoint(self.out / "best.pt", self.state())
        return res


def _initial_weights(model: AICTNet, cfg: TrainConfig, resuming: bool) -> None:
    """The official random init if asked; the weights of ``cfg.init_weights`` for a new run
    (a resumed run reads its own)."""
    if not cfg.identity_init:
        from layer_harmonizer.model import init_weights

        init_weights(model, identity=False)
    if cfg.init_weights and not resuming:
        warm_start(model, cfg.init_weights)


def _precision(cfg: TrainConfig, model: nn.Module, device: str, resumed: dict) -> dict:
    """``cfg.precision``, or for "auto" the resumed run's choice or a new measurement."""
    if cfg.precision != "auto":
        return {"precision": cfg.precision}
    return resumed.get("precision") or choose_precision(model, device, cfg.batch_size)


def setup(cfg: TrainConfig) -> Run:
    """Process group, network (fresh, warm-started or resumed from ``last.pt``), optimiser,
    EMA, data, precision; writes ``config.json``, ``split.json`` and the ``start`` event."""
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
    split = data_info.pop("split", None)
    resuming = cfg.resume and (out / "last.pt").is_file()
    _initial_weights(model, cfg, resuming)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=1e-8)
    ema = EMA(model, cfg.ema_decay)
    resumed = restore(out / "last.pt", cfg.variant, model, opt, ema) if resuming else {}
    ema.module.to(device)
    precision = _precision(cfg, model, device, resumed)  # measured once; a resume keeps it
    cfg = dataclasses.replace(cfg, precision=precision["precision"])
    step, elapsed = resumed.get("step", 0), resumed.get("elapsed_before", 0.0)
    run = Run(
        cfg=cfg,
        info=info,
        device=device,
        out=out,
        net=D.wrap(model, info, device),
        opt=opt,
        ema=ema,
        val=val,
        data_info=data_info,
        log=JsonlLog(out / "train.jsonl" if info.main else None),
        batches=batch_stream(dataset, cfg, step, info),
        precision=precision,
        step=step,
        elapsed_before=elapsed,
        elapsed=elapsed,
        best=resumed.get("best", math.inf),
    )
    _write_start(run, split)
    return run


def _write_start(run: Run, split: Any) -> None:
    if run.info.main:
        (run.out / "config.json").write_text(json.dumps(run.cfg.to_json(), indent=1) + "\n")
        if split is not None:
            split.save(run.out / "split.json")
    run.log.write(
        "start",
        step=run.step,
        elapsed=run.elapsed_before,
        world=run.info.world,
        device=run.device,
        data=run.data_info,
        config=run.cfg.to_json(),
        torch=torch.__version__,
        precision=run.precision,
    )


def _optimiser_step(run: Run, lr: float) -> list[float]:
    """One optimiser step over ``accum`` micro-batches; the loss terms' means as floats."""
    cfg = run.cfg
    for g in run.opt.param_groups:
        g["lr"] = lr
    run.opt.zero_grad(set_to_none=True)
    parts = [0.0] * len(LossTerms._fields)
    for micro in range(cfg.accum):
        batch = next(run.batches).to(run.device)
        sync = micro == cfg.accum - 1 or not run.info.enabled
        with contextlib.nullcontext() if sync else run.net.no_sync():
            terms = batch_loss(run.net, batch, cfg)
            (terms.total / cfg.accum).backward()
        parts = [p + float(t.detach()) / cfg.accum for p, t in zip(parts, terms, strict=True)]
    if not math.isfinite(parts[0]):
        raise FloatingPointError(f"loss is {parts[0]} at step {run.step}; lower --lr")
    run.opt.step()
    run.ema.update(D.unwrap(run.net))
    run.step += 1
    run.elapsed = run.elapsed_before + (time.monotonic() - run.t_start)
    return parts


def _log_steps(run: Run, window: list[list[float]], lr: float, seconds: float) -> None:
    """The ``step`` event over the steps since the last one, and the progress bar's text."""
    cfg, info = run.cfg, run.info
    means = {k: float(np.mean([w[i] for w in window])) for i, k in enumerate(LossTerms._fields)}
    loss = D.all_reduce_mean(means["total"], info, run.device)
    sps = len(window) * cfg.samples_per_step * info.world / max(seconds, 1e-9)
    run.log.write(
        "step",
        step=run.step,
        loss=loss,
        hr=means["hr"],
        lr_loss=means["lr"],
        smooth=means["smooth"],
        lr=lr,
        elapsed=run.elapsed,
        samples_per_s=sps,
    )
    if run.bar is not None:
        left = (cfg.max_steps - run.step) * run.elapsed / max(run.step, 1)
        if cfg.time_budget:
            left = min(left, cfg.time_budget - run.elapsed)
        run.bar.set_postfix_str(
            f"loss={loss:.5f} lr={lr:.2e} {sps:.1f} samples/s ETA {_fmt_time(left)}",
            refresh=False,
        )


def _validate_and_show(run: Run) -> None:
    res = run.validate_ema()
    if run.bar is not None:
        base = run.baselines
        run.bar.write(
            f"step {run.step}: EMA val fMSE {res['fmse']:.2f} (classical "
            f"{base['classical']['fmse']:.2f}, composite {base['composite']['fmse']:.2f})"
        )


def loop(run: Run) -> str:
    """Optimiser steps until ``max_steps``, the time budget or a stop signal, validating every
    ``eval_every`` steps and writing ``last.pt`` every ``ckpt_minutes``; returns why it ended."""
    cfg, main = run.cfg, run.info.main
    run.t_start = last_ckpt = t_window = time.monotonic()
    window: list[list[float]] = []
    run.net.train()
    while run.step < cfg.max_steps:
        if cfg.time_budget and run.elapsed >= cfg.time_budget:
            return "time_budget"
        if run.stop_signal is not None:
            return f"signal {run.stop_signal}"
        lr = cfg.lr * lr_factor(run.progress(), cfg.const_fraction, cfg.final_lr_fraction)
        window.append(_optimiser_step(run, lr))
        if run.step % cfg.log_every == 0:
            now = time.monotonic()
            _log_steps(run, window, lr, now - t_window)
            window, t_window = [], now
        if run.bar is not None:
            run.bar.update(1)
        if main and run.val and cfg.eval_every and run.step % cfg.eval_every == 0:
            _validate_and_show(run)
        if main and time.monotonic() - last_ckpt >= cfg.ckpt_minutes * 60:
            save_checkpoint(run.last, run.state())
            run.log.write("checkpoint", step=run.step, elapsed=run.elapsed, path=str(run.last))
            last_ckpt = time.monotonic()
    return "max_steps"


def teardown(run: Run, reason: str) -> dict[str, Any]:
    """Check the ranks agree, validate a last time, write ``last.pt`` and the ``end`` event,
    stop the loader workers and the process group; returns the run's summary."""
    cfg, info = run.cfg, run.info
    if info.enabled:  # record that every rank ended with the same weights
        # Parameters only: BatchNorm running statistics are per rank between DDP's broadcasts
        # (rank 0's, which DDP broadcasts at every forward, are the ones saved).
        params = {k: v.detach() for k, v in D.unwrap(run.net).named_parameters()}
        digests = D.gather_strings(state_sha256(params), info)
        run.log.write("sync", step=run.step, digests=digests, in_sync=len(set(digests)) == 1)
    final: dict[str, Any] = {}
    if info.main:
        if run.val and (not cfg.eval_every or run.step % cfg.eval_every):
            final = run.validate_ema()
        save_checkpoint(run.last, run.state())
        run.log.write(
            "end", step=run.step, elapsed=run.elapsed, reason=reason, best_fmse=run.best, ema=final
        )
    run.log.close()
    D.barrier(info)
    D.teardown(info)
    run.batches = iter(())  # the loader's iterator goes, and with it its worker processes
    return {
        "step": run.step,
        "elapsed": run.elapsed,
        "reason": reason,
        "best_fmse": run.best,
        "last": str(run.last),
        "pid": os.getpid(),
    }


def _progress_bar(run: Run) -> Any:
    if not (run.info.main and run.cfg.progress):
        return None
    from tqdm import tqdm

    return tqdm(
        total=run.cfg.max_steps,
        initial=run.step,
        unit="step",
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
        smoothing=0.05,
    )


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training as configured; returns the final state summary.

    SIGTERM and SIGINT stop the run after the current step (``last.pt`` is written)."""
    run = setup(cfg)

    def on_signal(signum: int, _frame: object) -> None:
        run.stop_signal = signum

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if run.info.main and run.val:
            run.baselines = validate(
                run.ema.module, run.val, run.device, ("composite", "classical")
            )
            run.log.write("baselines", n=len(run.val), **run.baselines)
        run.bar = _progress_bar(run)
        reason = loop(run)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if run.bar is not None:
            run.bar.close()
    return teardown(run, reason)

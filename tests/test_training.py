"""Training package: metrics, losses, the train loop (loss falls, resume is exact), export,
evaluation outputs, and DistributedDataParallel with two gloo processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from layer_harmonizer.lut.damping import predicted_change
from layer_harmonizer.model import create_model
from layer_harmonizer.model.weights import load_weights
from layer_harmonizer.pipeline import low_res_input
from tests.test_training_data import write_photo_folder
from training import metrics as M
from training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, model_from_checkpoint
from training.config import DataSpec, TrainConfig
from training.data import build_training, folder_triplets
from training.data.samples import collate
from training.evaluate import ContactSheet, evaluate, predict, summarize, write_summary
from training.export import export
from training.losses import batch_loss, harmonization_loss, masked_mse
from training.precision import choose_precision
from training.schedule import EMA, lr_factor
from training.train import train

REPO = Path(__file__).resolve().parents[1]
SMALL = {"input_size": 64}
"""aict-light at a 64 x 64 input (4 x 4 tokens): the same code paths, 16x less compute."""


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread: None) -> None:
    """Tiny tensors: one torch thread is many times faster than two on a busy machine."""


# -- metrics ----------------------------------------------------------------------------------
def test_metrics_match_hand_computed_values() -> None:
    real = torch.zeros(3, 2, 2)
    pred = torch.zeros(3, 2, 2)
    pred[:, 0, 0] = 10.0  # error 10 in all channels of pixel (0, 0)
    pred[0, 1, 1] = 4.0  # error 4 in one channel of pixel (1, 1)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    # sum M (p - r)^2 = 1 * 3 * 100 + 0.5 * 16 = 308
    assert M.mse(pred, real, mask) == pytest.approx(308 / 12)
    assert M.fmse(pred, real, mask) == pytest.approx(308 / (3 * 1.5 + 1e-6))
    assert M.psnr(pred, real, mask) == pytest.approx(10 * math.log10(255**2 / (308 / 12 + 1e-6)))
    assert M.psnr(real, real, mask) == pytest.approx(10 * math.log10(255**2 / 1e-6))


def _ssim_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Direct SSIM: explicit 11 x 11 Gaussian windows at every valid position."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    per_channel = []
    for c in range(x.shape[0]):
        vals = []
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                a, b = x[c, i : i + 11, j : j + 11], y[c, i : i + 11, j : j + 11]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
                cov = (w * a * b).sum() - ma * mb
                vals.append(
                    (2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
                )
        per_channel.append(np.mean(vals))
    return float(np.mean(per_channel))


def test_ssim_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    real = rng.uniform(0, 255, (3, 14, 15))
    pred = np.clip(real + rng.normal(0, 20, real.shape), 0, 255)
    mask = np.zeros((14, 15))
    mask[3:10, 2:12] = 1.0
    composited = pred * mask + real * (1 - mask)
    got = M.ssim(torch.tensor(pred), torch.tensor(real), torch.tensor(mask))
    assert got == pytest.approx(_ssim_by_hand(composited, real), abs=1e-9)
    assert M.ssim(torch.tensor(real), torch.tensor(real)) == pytest.approx(1.0)
    assert got < 0.99


def test_metrics_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="mask"):
        M.fmse(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4), torch.zeros(5, 5))


# -- losses -----------------------------------------------------------------------------------
def test_masked_mse_uses_the_minimum_area() -> None:
    pred = torch.zeros(2, 3, 10, 10)
    real = torch.zeros(2, 3, 10, 10)
    pred[:, :, :2, :2] = 0.5  # 12 values with error 0.25 each -> 3.0 per image
    mask = torch.zeros(2, 1, 10, 10)
    mask[0, :, :2, :2] = 1.0
    mask[1] = 1.0  # area 100
    np.testing.assert_allclose(
        masked_mse(pred, real, mask, 50).numpy(), [3.0 / 150, 3.0 / 300], rtol=1e-6
    )
    total, hr, lr = harmonization_loss(
        pred,
        real,
        mask,
        list(pred),
        list(real),
        list(mask),
        hr_min_area=1000,
        lr_min_area=50,
        lr_weight=0.01,
    )
    assert float(hr) == pytest.approx(3.0 / 3000)
    assert float(total) == pytest.approx(float(hr) + 0.01 * float(lr))


def test_lr_schedule_is_constant_then_linear() -> None:
    assert lr_factor(0.2, 0.5) == 1.0 and lr_factor(0.75, 0.5) == pytest.approx(0.5)
    assert lr_factor(1.0, 0.5) == 0.0 and lr_factor(1.0, 0.5, 0.1) == pytest.approx(0.1)


def test_ema_warms_up_and_tracks() -> None:
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, 0.9)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # warm-up decay min(0.9, 2 / 11)
    d = 2 / 11
    torch.testing.assert_close(ema.module.weight, d * start + (1 - d) * 1.0)
    for _ in range(200):
        ema.update(net)
    torch.testing.assert_close(ema.module.weight, torch.ones(1, 2), atol=1e-6, rtol=0)
    assert ema.updates == 201


# -- training ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory: pytest.TempPathFactory) -> DataSpec:
    photos, masks, bank = write_photo_folder(tmp_path_factory.mktemp("train_photos"), n=6)
    return DataSpec(
        photos=(f"{photos}:{masks}",),
        mask_banks=(str(bank),),
        val_fraction=0.34,
        val_count=3,
        max_side=64,
        val_max_side=64,
        lr_size=SMALL["input_size"],
        seed=0,
    )


def test_a_few_steps_lower_the_loss(tiny_spec: DataSpec) -> None:
    torch.manual_seed(0)
    dataset, _, _ = build_training(tiny_spec)
    batch = collate([dataset[i] for i in range(4)])
    model = create_model("aict-light", **SMALL).train()
    cfg = TrainConfig(out="unused")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = batch_loss(model, batch, cfg).total
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def _cfg(spec: DataSpec, out: Path, **kw: object) -> TrainConfig:
    base = TrainConfig(
        out=str(out),
        model_overrides=SMALL,
        data=spec,
        batch_size=2,
        accum=2,
        lr=5e-4,
        max_steps=4,
        workers=0,
        eval_every=2,
        log_every=1,
        progress=False,
        seed=1,
        precision="fp32",  # "auto" measures, and two runs on a busy machine may choose apart
    )
    return replace(base, **kw)


def test_resumed_training_equals_an_uninterrupted_run(tiny_spec: DataSpec, tmp_path: Path) -> None:
    # Constant LR, so stopping at max_steps=2 and resuming with 4 follows the same schedule.
    train(_cfg(tiny_spec, tmp_path / "straight", const_fraction=1.0))
    train(_cfg(tiny_spec, tmp_path / "resumed", const_fraction=1.0, max_steps=2))
    summary = train(_cfg(tiny_spec, tmp_path / "resumed", const_fraction=1.0))
    assert summary["step"] == 4
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["precision"] == b["precision"] == {"precision": "fp32"}
    assert a["step"] == b["step"] == 4 and a["samples"] == 16
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6)
    for key in a["ema"]["module"]:
        torch.testing.assert_close(
            a["ema"]["module"][key], b["ema"]["module"][key], rtol=1e-5, atol=1e-6
        )
    events = [
        json.loads(x) for x in (tmp_path / "straight" / "train.jsonl").read_text().splitlines()
    ]
    kinds = {e["event"] for e in events}
    assert {"start", "baselines", "step", "eval", "end"} <= kinds
    ev = [e for e in events if e["event"] == "eval"][-1]
    assert {"composite", "classical", "ema"} <= set(ev) and ev["ema"]["n"] == 3
    assert json.loads((tmp_path / "straight" / "split.json").read_text())["val"]
    assert (tmp_path / "straight" / "best.pt").is_file()


def test_a_checkpoint_of_the_previous_version_resumes_and_exports(
    tiny_spec: DataSpec, tmp_path: Path
) -> None:
    """``last.pt`` as the code before the config move wrote it: its config JSON has today's old
    shape (no newer fields; an ``init_weights`` file that is gone), and it still exports and
    resumes."""
    from tests.test_training_config import OLD_CONFIG

    torch.manual_seed(0)
    model = create_model("aict-light", **SMALL)
    cfg = json.loads(json.dumps(_cfg(tiny_spec, tmp_path, max_steps=3, eval_every=0).to_json()))
    old = {k: v for k, v in cfg.items() if k in OLD_CONFIG}
    old["data"] = {k: v for k, v in old["data"].items() if k in OLD_CONFIG["data"]}
    old["init_weights"] = str(tmp_path / "gone" / "last.pt")
    assert set(old) == set(OLD_CONFIG) and set(old["data"]) == set(OLD_CONFIG["data"])
    ck = {
        "format": CHECKPOINT_FORMAT,
        "variant": "aict-light",
        "config": old,
        "model": model.state_dict(),
        "ema": EMA(model, 0.999).state_dict(),
        "optimizer": torch.optim.Adam(model.parameters()).state_dict(),
        "step": 2,
        "samples": 8,
        "elapsed": 1.5,
        "best_fmse": math.inf,
        "data": {"kind": "synthetic"},
        "baselines": {},
        "torch_rng": torch.get_rng_state(),
        "precision": {"precision": "fp32"},
    }
    torch.save(ck, tmp_path / "last.pt")
    meta = export(tmp_path / "last.pt", tmp_path / "w.pt")
    assert meta["steps"] == 2 and meta["hyperparameters"]["smooth_weight"] is None
    assert "started_from" not in meta  # the parent run is gone: nothing is claimed
    # With the parent checkpoint present, the weights say what it had trained, and the totals.
    (tmp_path / "gone").mkdir()
    torch.save({**ck, "step": 5, "samples": 40, "elapsed": 10.0}, tmp_path / "gone" / "last.pt")
    meta = export(tmp_path / "last.pt", tmp_path / "w.pt")
    assert meta["started_from"] == {
        "file": "last.pt",
        "run": "gone",
        "steps": 5,
        "samples": 40,
        "training_seconds": 10.0,
    }
    assert meta["total_samples"] == 48 and meta["total_training_seconds"] == 11.5
    # A chain of stages: the parent itself started from a grandparent; totals cover all three.
    grand = tmp_path / "stage1" / "best.pt"
    grand.parent.mkdir()
    torch.save({**ck, "step": 7, "samples": 100, "elapsed": 20.0}, grand)
    torch.save(
        {
            **ck,
            "step": 5,
            "samples": 40,
            "elapsed": 10.0,
            "config": {**old, "init_weights": str(grand)},
        },
        tmp_path / "gone" / "last.pt",
    )
    meta = export(tmp_path / "last.pt", tmp_path / "w.pt")
    assert meta["started_from"]["started_from"] == {
        "file": "best.pt",
        "run": "stage1",
        "steps": 7,
        "samples": 100,
        "training_seconds": 20.0,
    }
    assert meta["total_samples"] == 148 and meta["total_training_seconds"] == 31.5
    (tmp_path / "gone" / "last.pt").unlink()
    summary = train(TrainConfig.from_json(old))
    assert summary["step"] == 3 and summary["elapsed"] > 1.5
    assert load_checkpoint(tmp_path / "last.pt")["samples"] == 3 * 2 * 2


def test_precision_is_measured_without_touching_the_training_rng() -> None:
    model = create_model("aict-light", **SMALL)
    before = torch.get_rng_state()
    choice = choose_precision(model, "cpu", batch_size=2, repeat=1)
    assert torch.equal(before, torch.get_rng_state())
    assert choice["precision"] in {"fp32", "bf16"} and choice["fp32_s"] > 0 < choice["bf16_s"]


def test_bf16_and_no_lr_branch_train_on_the_same_batches(tiny_spec: DataSpec) -> None:
    ds, _, _ = build_training(replace(tiny_spec, lr_size=64))
    batch = collate([ds[i] for i in range(2)])
    model = create_model("aict-light", **SMALL)
    full = batch_loss(model, batch, TrainConfig(out="x", precision="fp32"))
    fast = batch_loss(model, batch, TrainConfig(out="x", precision="bf16", lr_weight=0.0))
    hr_full, loss_fast = float(full[1].detach()), float(fast[0].detach())
    assert fast[0].dtype == torch.float32 and loss_fast == pytest.approx(hr_full, rel=0.05)
    fast[0].backward()
    assert all(p.grad is not None for p in model.class_layer.parameters())


def test_sigterm_to_the_process_group_stops_cleanly(tiny_spec: DataSpec, tmp_path: Path) -> None:
    """A stop signal sent to the whole group (Ctrl-C, systemd, kill -- -PGID) also reaches the
    loader worker; the trainer must still finish its step and write ``last.pt``."""
    import signal
    import time

    photos, bank = tiny_spec.photos[0], tiny_spec.mask_banks[0]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "training", "train", "--out", str(out), "--no-shared-data"]
    cmd += ["--photos", photos, "--mask-bank", bank, "--val-count", "0", "--max-side", "64"]
    cmd += ["--batch-size", "2", "--workers", "1", "--log-every", "1", "--no-progress"]
    cmd += ["--override", "input_size=64", "--precision", "fp32", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL)
    try:
        log = out / "train.jsonl"
        deadline = time.monotonic() + 120
        while '"event": "step"' not in (log.read_text() if log.is_file() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    events = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    end = events[-1]
    assert end["event"] == "end" and end["reason"] == f"signal {int(signal.SIGTERM)}"
    assert load_checkpoint(out / "last.pt")["step"] == end["step"] >= 1


def test_relative_weights_favour_pastes_that_are_nearly_right() -> None:
    from training.losses import relative_weights

    real = torch.full((3, 8, 8), 0.5)
    mask = torch.ones(1, 8, 8)
    comps = [real.clone(), real + 0.02, real + 0.3]
    w = relative_weights(comps, [real] * 3, [mask] * 3, tau=0.0015, hr_min_area=1.0)
    assert w.shape == (3,) and float(w[0]) > float(w[1]) > float(w[2]) > 0
    assert float(w[0]) == pytest.approx(math.sqrt(0.03 / 0.0015), rel=1e-5)


def test_time_budget_stops_training(tiny_spec: DataSpec, tmp_path: Path) -> None:
    out = train(_cfg(tiny_spec, tmp_path, max_steps=1000, time_budget=1e-3, eval_every=0))
    assert out["reason"] == "time_budget" and out["step"] == 1


def test_export_load_round_trip(tiny_spec: DataSpec, tmp_path: Path) -> None:
    train(_cfg(tiny_spec, tmp_path / "run", max_steps=2, eval_every=0))
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    meta = export(tmp_path / "run" / "last.pt", tmp_path / "w.pt")
    model, loaded = load_weights(tmp_path / "w.pt")
    assert loaded["variant"] == "aict-light" and loaded["steps"] == 2
    assert loaded["sha256"] == meta["sha256"] and loaded["dtype"] == "float16"
    assert loaded["hyperparameters"]["batch_size"] == 2 and "synthetic" in loaded["trained_on"]
    ema = create_model("aict-light", **SMALL)
    ema.load_state_dict(ck["ema"]["module"])
    x = torch.rand(1, 4, 64, 64)
    with torch.no_grad():
        a, b = ema.eval()(x), model(x)
    torch.testing.assert_close(a.colors, b.colors, atol=5e-3, rtol=5e-3)
    assert (tmp_path / "w.pt").stat().st_size < 5 * 2**20
    assert model.config.damping == 0.0  # what training used; export can set it
    export(tmp_path / "run" / "last.pt", tmp_path / "d.pt", damping=50.0)
    assert load_weights(tmp_path / "d.pt")[0].config.damping == 50.0
    with pytest.raises(ValueError, match="damping must be"):
        export(tmp_path / "run" / "last.pt", tmp_path / "e.pt", damping=-1.0)
    assert not (tmp_path / "e.pt").exists()
    from training.__main__ import main

    for bad in ("-1", "nan", "lots"):  # the command line says so in one line
        with pytest.raises(SystemExit):
            main(
                [
                    "export",
                    str(tmp_path / "run" / "last.pt"),
                    str(tmp_path / "e.pt"),
                    "--damping",
                    bad,
                ]
            )
    assert not (tmp_path / "e.pt").exists()


def test_a_stage_from_released_weights_carries_their_history(
    tiny_spec: DataSpec, tmp_path: Path
) -> None:
    """A run warm-started from a weights file (not a run folder) exports that file's steps,
    samples and time, its own earlier stages, and totals over all of them."""
    train(_cfg(tiny_spec, tmp_path / "a", max_steps=2, eval_every=0))
    first = export(tmp_path / "a" / "last.pt", tmp_path / "a.pt")
    for stage, parent in (("b", "a.pt"), ("c", "b.pt")):  # each from the previous file
        start = str(tmp_path / parent)
        train(_cfg(tiny_spec, tmp_path / stage, max_steps=1, eval_every=0, init_weights=start))
        export(tmp_path / stage / "last.pt", tmp_path / f"{stage}.pt")
    meta = export(tmp_path / "c" / "last.pt", tmp_path / "c.pt")
    before = meta["started_from"]
    assert before["file"] == "b.pt" and before["steps"] == 1 and before["samples"] == 4
    assert before["started_from"]["file"] == "a.pt" and before["started_from"]["samples"] == 8
    assert before["started_from"]["sha256"] == first["sha256"]
    assert meta["total_samples"] == 8 + 4 + 4
    # A parent without our metadata (here a bare state dict) is named, and nothing more claimed.
    torch.save(load_weights(tmp_path / "b.pt")[0].state_dict(), tmp_path / "b.pt")
    meta = export(tmp_path / "c" / "last.pt", tmp_path / "c.pt")
    assert meta["started_from"] == {"file": "b.pt"} and "total_samples" not in meta


def test_a_soup_averages_arms_from_the_same_start(tiny_spec: DataSpec, tmp_path: Path) -> None:
    """``soup``: the weighted mean of the arms' EMA weights, steps/samples/time summed, each arm
    recorded; export and report name it; the arms' start may be an arm, also as a weights file;
    arms from other starts, one arm, bad weights and files that are no arm are refused in one
    line."""
    from training.__main__ import main
    from training.report import report
    from training.soup import soup

    train(_cfg(tiny_spec, tmp_path / "stage", max_steps=2, eval_every=0))
    export(tmp_path / "stage" / "last.pt", tmp_path / "stage.pt")
    start = str(tmp_path / "stage.pt")
    for arm, lr in (("a", 5e-4), ("b", 1e-3)):
        train(_cfg(tiny_spec, tmp_path / arm, max_steps=1, eval_every=0, lr=lr, init_weights=start))
    a, b = tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt"
    main(["soup", str(a), str(b), "--weights", "1,3", "--out", str(tmp_path / "s.pt")])
    ck, ca, cb = (load_checkpoint(p) for p in (tmp_path / "s.pt", a, b))
    for key, value in ck["ema"]["module"].items():
        if value.is_floating_point():
            mix = 0.25 * ca["ema"]["module"][key] + 0.75 * cb["ema"]["module"][key]
            torch.testing.assert_close(value, mix)
    assert ck["samples"] == ca["samples"] + cb["samples"] and ck["step"] == 2
    assert [arm["weight"] for arm in ck["soup"]] == [0.25, 0.75]
    assert ca["ema"]["module"].keys() == ck["ema"]["module"].keys()
    meta = export(tmp_path / "s.pt", tmp_path / "s_w.pt")
    assert [arm["run"] for arm in meta["soup"]] == ["a", "b"]
    assert meta["started_from"]["file"] == "stage.pt"
    assert meta["total_samples"] == 8 + ca["samples"] + cb["samples"]
    rows = evaluate(build_training(tiny_spec)[1][:2], model_from_checkpoint(ck), with_ssim=False)
    write_summary(rows, tmp_path / "ev", {"data": "tiny"})
    assert "weight soup" in report(tmp_path / "s.pt", [(None, tmp_path / "ev" / "summary.json")])
    with pytest.raises(ValueError, match="at least two"):
        soup([a], tmp_path / "x.pt")
    with pytest.raises(ValueError, match="positive"):
        soup([a, b], tmp_path / "x.pt", [1.0, float("nan")])
    train(_cfg(tiny_spec, tmp_path / "c", max_steps=1, eval_every=0))  # from scratch
    with pytest.raises(SystemExit, match=r"soup: .* starting weights"):
        main(["soup", str(a), str(tmp_path / "c" / "last.pt"), "--out", str(tmp_path / "x.pt")])
    assert not (tmp_path / "x.pt").exists()
    # The start may be a released weights file (a stage continued the shipped default.pt).
    soup([tmp_path / "stage.pt", a], tmp_path / "sw.pt", [0.5, 0.5])
    ck, released = load_checkpoint(tmp_path / "sw.pt"), load_weights(start)[0].state_dict()
    key = next(k for k, v in ck["ema"]["module"].items() if v.is_floating_point())
    torch.testing.assert_close(
        ck["ema"]["module"][key], 0.5 * released[key] + 0.5 * ca["ema"]["module"][key]
    )
    assert ck["samples"] == ca["samples"] and ck["soup"][0]["start"]
    assert export(tmp_path / "sw.pt", tmp_path / "sw_w.pt")["total_samples"] == 8 + ca["samples"]
    export(a, tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"a\.pt is a weights file: only the arms. starting"):
        soup([tmp_path / "a.pt", b], tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(ValueError, match=r"junk\.pt is neither a training checkpoint nor"):
        soup([tmp_path / "junk.pt", b], tmp_path / "x.pt")
    with pytest.raises(SystemExit, match=r"soup: .*gone\.pt: no such file"):
        main(["soup", str(a), str(tmp_path / "gone.pt"), "--out", str(tmp_path / "x.pt")])
    # A stage with the checkpoint it started from: its start's training is counted once, in
    # the history (started_from), not again in the soup's own samples.
    start = tmp_path / "stage" / "last.pt"
    train(_cfg(tiny_spec, tmp_path / "d", max_steps=1, eval_every=0, init_weights=str(start)))
    d = tmp_path / "d" / "last.pt"
    soup([start, d], tmp_path / "sd.pt", [0.4, 0.6])
    ck, cs, cd = (load_checkpoint(p) for p in (tmp_path / "sd.pt", start, d))
    key = next(k for k, v in ck["ema"]["module"].items() if v.is_floating_point())
    mix = 0.4 * cs["ema"]["module"][key] + 0.6 * cd["ema"]["module"][key]
    torch.testing.assert_close(ck["ema"]["module"][key], mix)
    assert ck["samples"] == cd["samples"] == 4 and ck["config"] == cd["config"]
    assert [arm.get("start", False) for arm in ck["soup"]] == [True, False]
    meta = export(tmp_path / "sd.pt", tmp_path / "sd_w.pt")
    assert meta["started_from"]["run"] == "stage" and meta["total_samples"] == 8 + 4


def test_evaluate_writes_tables_csv_and_contact_sheet(tiny_spec: DataSpec, tmp_path: Path) -> None:
    _, val, _ = build_training(tiny_spec)
    sheet = ContactSheet(tile_height=48)
    model = create_model("aict-light", **SMALL).eval()
    rows = evaluate(val, model, keep=sheet.add)
    assert {r["method"] for r in rows} == {"composite", "classical", "model"}
    assert len(rows) == 3 * len(val)
    table = summarize(rows)
    assert table["All"]["composite"]["n"] == len(val)
    # The "model" row is the metrics of the full-resolution prediction of that very model.
    t = val[0]
    pred = predict(model, t) * 255.0
    real = torch.from_numpy(t.real).permute(2, 0, 1).float()
    row = next(r for r in rows if r["name"] == t.name and r["method"] == "model")
    assert row["fmse"] == pytest.approx(M.fmse(pred.clamp(0, 255), real, torch.from_numpy(t.mask)))
    comp = torch.from_numpy(t.composite).permute(2, 0, 1).float()
    comp_row = next(r for r in rows if r["name"] == t.name and r["method"] == "composite")
    assert comp_row["fmse"] == pytest.approx(t.meta["fmse"], rel=1e-4)
    md = write_summary(rows, tmp_path, {"data": "tiny"})
    assert "| All | model |" in md and "| mildest tenth | composite |" in md
    assert {r["severity"] for r in rows} == {"mildest tenth", "rest"}
    assert (tmp_path / "per_image.csv").read_text().count("\n") == 1 + len(rows)
    files = sheet.save(tmp_path / "sheet.png")
    assert files and files[0].stat().st_size > 0
    # With damping it is the same change, scaled by the gain harmonize() uses: half, here.
    x = low_res_input(t.composite, t.mask, model.config.input_size)
    with torch.no_grad():
        change = predicted_change(x, model(x))
    model.config = replace(model.config, damping=change)
    damped = predict(model, t) * 255.0
    torch.testing.assert_close(damped, (pred + comp) / 2, atol=1e-3, rtol=0)


def test_hindsight_affine_undoes_a_global_gain_and_offset() -> None:
    from training.data.samples import Triplet
    from training.evaluate import hindsight_affine

    rng = np.random.default_rng(0)
    real = rng.integers(40, 200, (20, 24, 3)).astype(np.uint8)
    mask = np.zeros((20, 24), np.float32)
    mask[4:16, 5:20] = 1
    edited = np.clip(real * np.array([0.7, 1.1, 0.9]) + [20, -5, 10], 0, 255)
    comp = np.where(mask[..., None] > 0, edited.round(), real).astype(np.uint8)
    out = hindsight_affine(Triplet("t", "s", comp, mask, real)) * 255
    err = (out - torch.from_numpy(real).permute(2, 0, 1).float()).abs().max()
    assert float(err) < 1.0  # only the 8-bit rounding of the edit is left


def test_mean_colour_error_is_the_distance_of_the_object_means() -> None:
    real = torch.zeros(3, 4, 4)
    pred = real.clone()
    pred[0] += 3.0
    pred[1] += 4.0
    mask = torch.zeros(1, 4, 4)
    mask[:, :2] = 1
    assert M.mean_colour_error(pred, real, mask) == pytest.approx(5.0, rel=1e-5)
    assert M.all_metrics(pred, real, mask, with_ssim=False)["mean_err"] == pytest.approx(
        5.0, rel=1e-5
    )


def test_folder_triplets_without_ground_truth(tmp_path: Path) -> None:
    import cv2

    (tmp_path / "composite").mkdir()
    (tmp_path / "mask").mkdir()
    cv2.imwrite(str(tmp_path / "composite" / "a.jpg"), np.full((8, 9, 3), 100, np.uint8))
    cv2.imwrite(str(tmp_path / "mask" / "a.png"), np.full((8, 9), 255, np.uint8))
    (t,) = folder_triplets(tmp_path)
    assert t.real is None and t.mask.shape == (8, 9)
    assert evaluate([t], None, methods=("composite",)) == []


@pytest.mark.slow
def test_two_gloo_processes_stay_in_sync(tiny_spec: DataSpec, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "training",
        "train",
        "--out",
        str(out),
        "--no-shared-data",
        "--photos",
        tiny_spec.photos[0],
        "--mask-bank",
        tiny_spec.mask_banks[0],
        "--val-fraction",
        "0.34",
        "--val-count",
        "2",
        "--max-side",
        "64",
        "--val-max-side",
        "64",
        "--override",
        "input_size=64",
        "--batch-size",
        "2",
        "--max-steps",
        "3",
        "--workers",
        "0",
        "--threads",
        "1",
        "--eval-every",
        "0",
        "--no-progress",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert start["world"] == 2
    sync = next(e for e in events if e["event"] == "sync")
    assert sync["step"] == 3 and len(sync["digests"]) == 2 and sync["in_sync"]
    ck = load_checkpoint(out / "last.pt")
    assert ck["samples"] == 3 * 2 * 2  # two ranks, each a batch of 2 per step
    torch.manual_seed(0)  # the run's --seed: its initial weights
    fresh = create_model("aict-light", **SMALL).state_dict()
    assert any(not torch.equal(fresh[k], ck["model"][k]) for k in fresh)


def test_command_line_round_trip(tiny_spec: DataSpec, tmp_path: Path) -> None:
    """make-synthetic -> train -> evaluate (checkpoint) -> export -> evaluate (weights)."""
    from training.__main__ import main

    photos, bank = tiny_spec.photos[0], tiny_spec.mask_banks[0]
    data = ["--no-shared-data", "--photos", photos, "--mask-bank", bank, "--val-fraction", "0.34"]
    syn = tmp_path / "syn"
    assert main(["make-synthetic", *data, "--out", str(syn), "--count", "3"]) == 0
    assert len((syn / "SYN_test.txt").read_text().split()) == 3
    run = tmp_path / "run"
    train_args = ["--max-side", "64", "--val-count", "2", "--batch-size", "2", "--max-steps", "2"]
    train_args += ["--workers", "0", "--no-progress", "--override", "input_size=64"]
    assert main(["train", "--out", str(run), *data, *train_args]) == 0
    ev = tmp_path / "ev"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(run / "last.pt"),
                "--iharmony4",
                str(syn),
                "--out",
                str(ev),
            ]
        )
        == 0
    )
    summary = json.loads((ev / "summary.json").read_text())
    assert set(summary["by_subset"]["All"]) == {"composite", "classical", "model", "hindsight"}
    assert set(summary["by_severity"]) == {"mildest tenth", "rest", "All"}
    assert (ev / "contact_sheet.png").is_file()
    first = (syn / "SYN_test.txt").read_text().split()[0].rsplit(".", 1)[0]
    fig = ["evaluate", "--iharmony4", str(syn), "--out", str(ev / "f"), "--figure", first]
    assert main([*fig, "--checkpoint", str(run / "last.pt"), "--damping", "40"]) == 0
    assert (ev / "f" / "before_after.png").is_file()
    assert summary["damping"] == 0.0  # what training used
    assert json.loads((ev / "f" / "summary.json").read_text())["damping"] == 40.0
    doc = tmp_path / "weights.md"
    doc.write_text("# W\n<!-- report:start -->\nold\n<!-- report:end -->\ntail\n")
    assert (
        main(
            [
                "report",
                str(run / "last.pt"),
                "--summary",
                str(ev / "summary.json"),
                "--summary",
                f"second set={ev / 'f' / 'summary.json'}",
                "--fill",
                str(doc),
            ]
        )
        == 0
    )
    text = doc.read_text()
    assert "old" not in text and text.endswith("<!-- report:end -->\ntail\n")
    model_fmse = summary["by_kind"]["All"]["model"]["fmse"]
    assert "| All | model | 3 |" in text and f"{model_fmse:.2f}" in text
    first_part, second_part = text.split("### Validation: second set")
    assert "### Validation\n" in first_part and "### Validation" not in second_part
    assert "K = 40" in second_part and "K = " not in first_part
    assert second_part.count("| All | model | 3 |") == first_part.count("| All | model | 3 |")
    weights = tmp_path / "w.pt"
    assert (
        main(["export", str(run / "last.pt"), str(weights), "--summary", str(ev / "summary.json")])
        == 0
    )
    _, meta = load_weights(weights)
    assert meta["metrics"]["evaluation"]["model"]["n"] == 3 and meta["steps"] == 2
    ev2 = tmp_path / "ev2"
    assert (
        main(
            [
                "evaluate",
                "--weights",
                str(weights),
                "--iharmony4",
                str(syn),
                "--out",
                str(ev2),
                "--no-ssim",
            ]
        )
        == 0
    )
    again = json.loads((ev2 / "summary.json").read_text())["by_subset"]["All"]["model"]
    assert again["fmse"] == pytest.approx(summary["by_subset"]["All"]["model"]["fmse"], rel=1e-2)

"""Training configuration: the command line built from the config dataclasses, presets, configs
of older versions, and the smoothness penalty on the predicted LUT maps."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch

from layer_harmonizer.model import create_model
from training import options, presets
from training.__main__ import build_parser, main
from training.config import DataSpec, TrainConfig
from training.data.samples import Batch
from training.losses import batch_loss, map_smoothness

SHIPPED = (
    "--variant aict-light --max-side 256 --val-count 400 --val-max-side 384 --lr-weight 0 "
    "--batch-size 8 --lr 2.5e-4 --const-fraction 0.3 --max-steps 15000 --time-budget 150m "
    "--eval-every 2500 --ckpt-minutes 5 --threads 2 --identity-fraction 0.1 --relative-tau 0.0015"
)
"""The command behind the shipped weights, as docs/weights.md gives it."""
FINE_TUNE = (
    f"{SHIPPED} --lr 1e-4 --const-fraction 0.3 --max-steps 100000 --time-budget 100m "
    "--eval-every 1250 --threads 1 --init-weights {runs}/light-2026-12/last.pt"
)
"""The command of the two fine-tunes started from the shipped run's last.pt."""
OBJECTS = (
    f"{FINE_TUNE} --override prior_input=true --time-budget 120m "
    "--init-weights {runs}/light-2026-12-ft-prior-input/best.pt "
    "--max-object-area 0.45 --max-object-sides 2 --look-scale 2"
)
"""The third stage's command: object-like masks and stronger looks."""
BOLD = f"{OBJECTS} --strong-probability 0.5 --relative-tau 0.006"
"""The third stage's arm that was shipped."""
SCENE = (
    f"{BOLD} --time-budget 90m --init-weights {{runs}}/light-2026-12-objects-bold/best.pt "
    "--max-scene-mismatch 1500"
)
"""The fourth stage's command: objects their scene explains."""
POLISH = (
    f"{SCENE} --time-budget 80m --init-weights {{runs}}/light-2026-12-scene-loose/best.pt "
    "--max-scene-mismatch 3000 --first-sample 100000"
)
"""The fifth stage's command: stage 4's loose recipe again on new composites."""
SIXTH = (
    f"{POLISH} --time-budget 150m --init-weights {{runs}}/light-2026-12-polish/best.pt "
    "--first-sample 200000"
)
"""The sixth stage's command: the polish recipe again from its weights."""
SEVENTH = (
    f"{SIXTH} --time-budget 85m --init-weights {{runs}}/default-stage6.pt --first-sample 400000"
)
"""The seventh stage's command: the polish recipe again from the stage-6 default."""
EIGHTH = (
    f"{SIXTH} --time-budget 75m --init-weights {{runs}}/default-stage7.pt --first-sample 500000 "
    "--foreign-fraction 0.25"
)
"""The eighth stage's command: a quarter of the objects pasted from other photos."""
NINTH = (
    f"{SIXTH} --time-budget 100m --init-weights {{runs}}/default-stage7.pt --first-sample 700000"
)
"""The ninth stage's command: the polish recipe again from the stage-7 default."""
TENTH = (
    f"{NINTH} --time-budget 80m --first-sample 900000 --foreign-fraction 0.15 "
    "--donor-light grey-edge"
)
"""The tenth stage's command: some objects pasted from other photos lit alike by grey-edge."""

TRAIN_OPTIONS: dict[str, tuple[list[str], Any]] = {
    "out": (["--out", "o"], "o"),
    "variant": (["--variant", "aict-small"], "aict-small"),
    "model_overrides": (
        ["--override", "input_size=64", "--override", "color_prior=false"],
        {"input_size": 64, "color_prior": False},
    ),
    "batch_size": (["--batch-size", "3"], 3),
    "accum": (["--accum", "2"], 2),
    "lr": (["--lr", "2e-4"], 2e-4),
    "betas": (["--betas", "0.8", "0.99"], (0.8, 0.99)),
    "const_fraction": (["--const-fraction", "0.3"], 0.3),
    "final_lr_fraction": (["--final-lr-fraction", "0.1"], 0.1),
    "ema_decay": (["--ema-decay", "0.99"], 0.99),
    "max_steps": (["--max-steps", "7"], 7),
    "time_budget": (["--time-budget", "2.5h"], 9000.0),
    "seed": (["--seed", "5"], 5),
    "device": (["--device", "cpu"], "cpu"),
    "workers": (["--workers", "0"], 0),
    "threads": (["--threads", "2"], 2),
    "identity_init": (["--official-init"], False),
    "init_weights": (["--init-weights", "w.pt"], "w.pt"),
    "hr_min_area": (["--hr-min-area", "500"], 500.0),
    "lr_min_area": (["--lr-min-area", "50"], 50.0),
    "lr_weight": (["--lr-weight", "0"], 0.0),
    "relative_tau": (["--relative-tau", "0.0015"], 0.0015),
    "smooth_weight": (["--smooth-weight", "0.1"], 0.1),
    "precision": (["--precision", "bf16"], "bf16"),
    "log_every": (["--log-every", "1"], 1),
    "eval_every": (["--eval-every", "0"], 0),
    "ckpt_minutes": (["--ckpt-minutes", "1.5"], 1.5),
    "resume": (["--no-resume"], False),
    "progress": (["--no-progress"], False),
}
"""Every TrainConfig option with a value that is not its default (and the value it gives)."""
DATA_OPTIONS: dict[str, tuple[list[str], Any]] = {
    "shared_data": (["--shared-data", "shared"], "shared"),
    "photos": (["--photos", "a:am", "--photos", "b"], ("a:am", "b")),
    "mask_banks": (["--mask-bank", "bank"], ("bank",)),
    "iharmony4": (["--iharmony4", "ihd"], "ihd"),
    "subsets": (["--subsets", "HCOCO", "HFlickr"], ("HCOCO", "HFlickr")),
    "val_fraction": (["--val-fraction", "0.2"], 0.2),
    "val_count": (["--val-count", "9"], 9),
    "max_side": (["--max-side", "none"], None),
    "val_max_side": (["--val-max-side", "128"], 128),
    "seed": (["--seed", "5"], 5),
    "max_bank_fill": (["--max-bank-fill", "0.9"], 0.9),
    "identity_fraction": (["--identity-fraction", "0.1"], 0.1),
    "max_object_area": (["--max-object-area", "0.45"], 0.45),
    "max_object_sides": (["--max-object-sides", "2"], 2),
    "look_scale": (["--look-scale", "2"], 2.0),
    "strong_probability": (["--strong-probability", "0.5"], 0.5),
    "family_mix": (["--family-mix", "0.5", "0.3", "0.2"], (0.5, 0.3, 0.2)),
    "max_scene_mismatch": (["--max-scene-mismatch", "1500"], 1500.0),
    "identity_any_scene": (["--identity-any-scene"], True),
    "foreign_fraction": (["--foreign-fraction", "0.3"], 0.3),
    "donor_light": (["--donor-light", "grey-edge"], "grey-edge"),
    "horizon_fraction": (["--horizon-fraction", "0.05"], 0.05),
    "vivid_fraction": (["--vivid-fraction", "0.5"], 0.5),
    "first_sample": (["--first-sample", "7"], 7),
}
"""Every DataSpec option (``--data`` apart: iharmony4 data drops the shared folder)."""


def config_of(argv: list[str]) -> TrainConfig:
    return options.train_config(build_parser().parse_args(["train", *argv]))


def command_line(text: str, runs: Path) -> list[str]:
    return shlex.split(text.replace("{runs}", str(runs)))


# -- the command line is built from the dataclasses ----------------------------------------------
def test_no_options_give_the_dataclass_defaults() -> None:
    assert config_of(["--out", "o", "--no-shared-data"]) == TrainConfig(out="o")
    spec = options.data_spec(build_parser().parse_args(["make-synthetic", "--out", "o"]))
    assert dataclasses.replace(spec, shared_data=None) == DataSpec()


def test_every_config_field_is_reachable_from_the_command_line() -> None:
    argv = [tok for table in (TRAIN_OPTIONS, DATA_OPTIONS) for a, _ in table.values() for tok in a]
    cfg = config_of(argv)
    # Fields without an option of their own: the data group, and the network's input side.
    assert set(TRAIN_OPTIONS) == {f.name for f in dataclasses.fields(TrainConfig)} - {"data"}
    assert set(DATA_OPTIONS) == {f.name for f in dataclasses.fields(DataSpec)} - {
        "kind",
        "lr_size",
    }
    for obj, table in ((cfg, TRAIN_OPTIONS), (cfg.data, DATA_OPTIONS)):
        default = TrainConfig(out="-") if isinstance(obj, TrainConfig) else DataSpec()
        for name, (_, value) in table.items():
            assert getattr(obj, name) == value != getattr(default, name), name
    ihd = config_of(["--out", "o", "--data", "iharmony4", "--shared-data", "s"]).data
    assert ihd.kind == "iharmony4" and ihd.shared_data is None


def test_help_gives_the_dataclass_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("lr", "ema_decay", "eval_every", "hr_min_area", "variant"):
            assert f"(default: {f.default})" in text, f.name


def test_bad_option_values_are_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (["--time-budget", "soon"], ["--override", "prior_input"], ["--max-side", "x"]):
        with pytest.raises(SystemExit) as exc:
            config_of(["--out", "o", *bad])
        assert exc.value.code == 2
        assert bad[1] in capsys.readouterr().err.splitlines()[-1]


# -- presets -------------------------------------------------------------------------------------
def test_presets_are_the_commands_behind_the_shipped_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(presets.RUNS_ENV, str(tmp_path))
    base = ["--out", "o", "--no-shared-data"]
    expected = {
        "light-2026-12": SHIPPED,
        "light-2026-12-ft": FINE_TUNE,
        "light-2026-12-ft-prior-input": f"{FINE_TUNE} --override prior_input=true",
        "light-2026-12-objects": OBJECTS,
        "light-2026-12-objects-smooth": f"{OBJECTS} --smooth-weight 0.1",
        "light-2026-12-objects-bold": BOLD,
        "light-2026-12-scene": SCENE,
        "light-2026-12-scene-loose": SCENE.replace("1500", "3000"),
        "light-2026-12-polish": POLISH,
        "light-2026-12-polish-gentle": f"{POLISH} --identity-fraction 0.2 --relative-tau 0.0015",
        "light-2026-12-polish-2": SIXTH,
        "light-2026-12-polish-2-wide": f"{SIXTH} --max-scene-mismatch 6000",
        "light-2026-12-polish-2-own": f"{SIXTH} --identity-any-scene",
        "light-2026-12-seventh": SEVENTH,
        "light-2026-12-seventh-own-wide": (
            f"{SEVENTH} --identity-any-scene --max-scene-mismatch 6000 --first-sample 300000"
        ),
        "light-2026-12-eighth-foreign": EIGHTH,
        "light-2026-12-eighth-foreign-half": (
            f"{EIGHTH} --foreign-fraction 0.5 --first-sample 600000"
        ),
        "light-2026-12-ninth": NINTH,
        "light-2026-12-ninth-own-foreign": (
            f"{NINTH} --identity-any-scene --max-scene-mismatch 6000 --foreign-fraction 0.1 "
            "--first-sample 800000"
        ),
        "light-2026-12-tenth-edge": TENTH,
        "light-2026-12-tenth-edge-third": (
            f"{TENTH} --foreign-fraction 0.3 --first-sample 1000000"
        ),
        "light-2026-12-eleventh-edge": (
            f"{NINTH} --time-budget 100m --first-sample 1100000 --foreign-fraction 0.08 "
            "--donor-light grey-edge"
        ),
        "light-2026-12-twelfth-edge": (
            f"{NINTH} --time-budget 90m --first-sample 1200000 --foreign-fraction 0.08 "
            "--donor-light grey-edge --init-weights {runs}/light-2026-12-eleventh-edge8/best.pt"
        ),
        "light-2026-12-thirteenth-edge": (
            f"{NINTH} --time-budget 95m --first-sample 1300000 --foreign-fraction 0.08 "
            "--donor-light grey-edge --init-weights {runs}/light-2026-12-twelfth-edge/best.pt"
        ),
        "light-2026-12-fourteenth-horizon": (
            f"{NINTH} --time-budget 80m --first-sample 1400000 --foreign-fraction 0.08 "
            "--donor-light grey-edge --horizon-fraction 0.05 "
            "--init-weights {runs}/light-2026-12-twelfth-edge/best.pt"
        ),
        "light-2026-12-fifteenth-vivid": (
            f"{NINTH} --time-budget 70m --first-sample 1500000 --foreign-fraction 0.12 "
            "--donor-light grey-edge --horizon-fraction 0.05 --vivid-fraction 0.7 "
            "--init-weights {runs}/light-2026-12-fourteenth-horizon/best.pt"
        ),
        "light-2026-12-sixteenth-transfer": (
            f"{NINTH} --time-budget 60m --first-sample 1600000 --foreign-fraction 0.12 "
            "--donor-light grey-edge --horizon-fraction 0.05 --vivid-fraction 0.7 "
            "--family-mix 0.55 0.25 0.20 --init-weights {runs}/default-stage15.pt"
        ),
    }
    assert set(expected) == set(presets.PRESETS)
    for name, text in expected.items():
        by_hand = config_of([*base, *command_line(text, tmp_path)])
        assert config_of([*base, "--preset", name]) == by_hand, name
        # What `python -m training presets` prints is that command too.
        shown = options.preset_arguments(name)
        assert config_of([*base, *command_line(shown, tmp_path)]) == by_hand, name
    ft = config_of([*base, "--preset", "light-2026-12-ft"])
    assert ft.init_weights == str(tmp_path / "light-2026-12" / "last.pt")


def test_options_given_win_over_the_preset() -> None:
    given = ["--lr", "3e-4", "--max-side", "128", "--override", "input_size=64"]
    given += ["--init-weights", "mine.pt"]
    cfg = config_of(["--out", "o", "--preset", "light-2026-12-ft-prior-input", *given])
    assert cfg.lr == 3e-4 and cfg.data.max_side == 128 and cfg.init_weights == "mine.pt"
    assert cfg.model_overrides == {"prior_input": True, "input_size": 64}
    assert cfg.batch_size == 8 and cfg.data.val_max_side == 384 and cfg.time_budget == 6000
    assert presets.PRESETS["light-2026-12-ft-prior-input"].values["model_overrides"] == {
        "prior_input": True
    }


def test_presets_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["train", "--preset", "list"])
    assert exc.value.code == 0 and capsys.readouterr().out == listed
    for name in presets.PRESETS:
        assert f"\n{name}: " in listed and options.preset_arguments(name) in listed
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", "o", "--preset", "heavy"])
    assert exc.value.code == 2 and "unknown preset 'heavy'" in capsys.readouterr().err


def test_missing_init_weights_is_one_line_unless_the_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(presets.RUNS_ENV, str(tmp_path / "runs"))
    cfg = config_of(["--out", str(tmp_path / "ft"), "--preset", "light-2026-12-ft"])
    with pytest.raises(SystemExit) as exc:
        options.check_init_weights(cfg)
    assert str(exc.value).startswith(f"--init-weights {tmp_path}/runs/light-2026-12/last.pt: no")
    assert "\n" not in str(exc.value)
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "last.pt").write_bytes(b"")
    options.check_init_weights(cfg)  # resuming: the run has its own weights
    with pytest.raises(SystemExit):
        options.check_init_weights(dataclasses.replace(cfg, resume=False))
    Path(cfg.init_weights).parent.mkdir(parents=True)
    Path(cfg.init_weights).write_bytes(b"")
    options.check_init_weights(dataclasses.replace(cfg, resume=False))


@pytest.mark.parametrize("mix", [("0", "0", "0"), ("1", "-1", "0.5")])
def test_a_family_mix_no_stream_can_draw_is_one_line(mix: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exc:
        config_of(["--out", "o", "--family-mix", *mix])
    assert str(exc.value) == (
        f"--family-mix {' '.join(f'{float(w):g}' for w in mix)}: the three weights must be "
        ">= 0, one of them > 0"
    )


# -- configs of older versions -------------------------------------------------------------------
OLD_CONFIG: dict[str, Any] = {
    "out": "/root/.local/share/harmonize-runs/ft-plain-2026-12",
    "variant": "aict-light",
    "model_overrides": {},
    "data": {
        "kind": "synthetic",
        "shared_data": "/work/shared/data",
        "photos": [],
        "mask_banks": [],
        "iharmony4": None,
        "subsets": [],
        "val_fraction": 0.1,
        "val_count": 400,
        "max_side": 256,
        "val_max_side": 384,
        "lr_size": 256,
        "seed": 0,
        "max_bank_fill": 1.0,
        "identity_fraction": 0.1,
    },
    "batch_size": 8,
    "accum": 1,
    "lr": 0.0001,
    "betas": [0.9, 0.999],
    "const_fraction": 0.3,
    "final_lr_fraction": 0.0,
    "ema_decay": 0.999,
    "max_steps": 100000,
    "time_budget": 6000.0,
    "seed": 0,
    "device": "auto",
    "workers": 1,
    "threads": 1,
    "identity_init": True,
    "init_weights": "/root/.local/share/harmonize-runs/light-2026-12/last.pt",
    "hr_min_area": 1000.0,
    "lr_min_area": 100.0,
    "lr_weight": 0.0,
    "relative_tau": 0.0015,
    "precision": "bf16",
    "log_every": 10,
    "eval_every": 1250,
    "ckpt_minutes": 5.0,
    "resume": True,
    "progress": False,
}
"""``config.json`` (and a checkpoint's ``config``) as the code before the presets wrote it, for
the first fine-tune (JSON: tuples are lists)."""


NEWER_DATA_FIELDS = {
    "max_object_area": 0.85,
    "max_object_sides": 4,
    "look_scale": 1.0,
    "strong_probability": 0.3,
    "family_mix": (0.35, 0.35, 0.30),
    "max_scene_mismatch": None,
    "identity_any_scene": False,
    "foreign_fraction": 0.0,
    "donor_light": "grey-world",
    "horizon_fraction": 0.0,
    "vivid_fraction": 0.0,
    "first_sample": 0,
}
"""DataSpec fields added after that version, with the defaults that reproduce its data."""


def test_a_config_of_the_previous_version_loads() -> None:
    cfg = TrainConfig.from_json(OLD_CONFIG)
    assert cfg.init_weights == OLD_CONFIG["init_weights"] and cfg.betas == (0.9, 0.999)
    assert cfg.data.max_side == 256 and cfg.data.photos == () and cfg.smooth_weight == 0.0
    assert cfg.data == dataclasses.replace(cfg.data, **NEWER_DATA_FIELDS)  # their defaults
    again = cfg.to_json()
    new_data = {k: again["data"].pop(k) for k in NEWER_DATA_FIELDS}
    assert new_data == NEWER_DATA_FIELDS
    assert {k: v for k, v in again.items() if k != "smooth_weight"} == {
        **OLD_CONFIG,
        "betas": (0.9, 0.999),
        "data": {**OLD_CONFIG["data"], "photos": (), "mask_banks": (), "subsets": ()},
    }
    again["data"] |= new_data
    assert TrainConfig.from_json(again) == cfg
    with pytest.raises(ValueError, match=r"unknown training config fields: data\.colour, mode$"):
        TrainConfig.from_json({**OLD_CONFIG, "mode": 1, "data": {"colour": 1}})


# -- smoothness penalty --------------------------------------------------------------------------
def test_map_smoothness_is_zero_only_for_spatially_constant_maps() -> None:
    gen = torch.Generator().manual_seed(0)
    knots = torch.rand(2, 3, 1, 1, 8, generator=gen)
    flat = knots.expand(2, 3, 5, 6, 8)
    assert float(map_smoothness(flat, flat[..., :7])) == 0.0
    bumpy = flat.clone()
    bumpy[:, :, 2, 3] += 0.5
    step = float(map_smoothness(bumpy))
    assert step > 0
    # Mean |neighbour difference|: the bump differs by 0.5 from 2 neighbours along M and 2 along
    # N, in 2 * 3 * 8 = 48 entries each, over 4 x 6 and 5 x 5 neighbour pairs of the grid.
    along_m, along_n = 2 * 48 * 0.5 / (48 * 4 * 6), 2 * 48 * 0.5 / (48 * 5 * 5)
    assert step == pytest.approx(along_m + along_n)
    with pytest.raises(ValueError, match="B, 3, M, N, K"):
        map_smoothness(torch.zeros(2, 3, 4, 4))


def _random_batch(n: int = 2, side: int = 64) -> Batch:
    gen = torch.Generator().manual_seed(1)
    comp, real = torch.rand(2, n, 3, side, side, generator=gen)
    mask = torch.zeros(n, 1, side, side)
    mask[:, :, 16:48, 8:40] = 1.0
    lr_input = torch.cat([comp, mask], 1)
    return Batch(lr_input, real, list(comp), list(mask), list(real), ["a", "b"], ["x", "x"])


def test_smoothness_weight_adds_the_penalty_and_zero_leaves_the_loss_unchanged() -> None:
    torch.manual_seed(0)
    model = create_model("aict-light", input_size=64).eval()
    batch = _random_batch()
    off = batch_loss(model, batch, TrainConfig(out="x", precision="fp32"))
    on = batch_loss(model, batch, TrainConfig(out="x", precision="fp32", smooth_weight=0.1))
    assert not off.smooth.requires_grad and on.smooth.requires_grad
    off_v, on_v = ({k: float(v.detach()) for k, v in t._asdict().items()} for t in (off, on))
    assert off_v["total"] == float((off.hr + 0.01 * off.lr).detach())  # no term added
    assert off_v["smooth"] > 0 and on_v["smooth"] == off_v["smooth"]
    assert on_v["total"] == pytest.approx(off_v["total"] + 0.1 * off_v["smooth"], rel=1e-6)
    on.total.backward()
    assert all(p.grad is not None for p in model.class_layer.parameters())


def test_options_carry_no_defaults_of_their_own() -> None:
    """Only options given reach the namespace, so every default is the dataclass's."""
    ns = build_parser().parse_args(["train", "--out", "o"])
    assert set(vars(ns)) == {"command", "func", "out", "preset", "no_shared_data"}
    ns = build_parser().parse_args(["make-synthetic", "--out", "o"])
    assert set(vars(ns)) == {"command", "func", "out", "preset", "no_shared_data", "split", "count"}

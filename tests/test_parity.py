"""Parity with the official implementation, through the fixture in ../shared/reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from layer_harmonizer.lut import apply_luts
from layer_harmonizer.model.weights import load_weights
from layer_harmonizer.pipeline import low_res_input


def test_network_and_luts_reproduce_official_outputs(
    reference_ckpt: Path, reference_case: dict[str, np.ndarray]
) -> None:
    model, _ = load_weights(reference_ckpt)
    case = reference_case
    rgb_lr = torch.from_numpy(case["composite_lr"]).float().div(255).permute(2, 0, 1)[None]
    x = torch.cat([rgb_lr, torch.from_numpy(case["mask_lr"])[None, None]], dim=1)
    with torch.inference_mode():
        maps = model(x)
        lr = apply_luts(x[:, :3], maps, x[:, 3:])
        full = torch.from_numpy(case["composite"]).float().div(255).permute(2, 0, 1)[None]
        hr = apply_luts(full, maps, torch.from_numpy(case["mask"])[None, None])
    assert np.abs(lr[0].permute(1, 2, 0).numpy() - case["output_lr"]).max() < 1e-4
    assert np.abs(hr[0].permute(1, 2, 0).numpy() - case["output"]).max() < 1e-4


def test_low_res_input_is_the_official_preprocessing(reference_case: dict[str, np.ndarray]) -> None:
    x = low_res_input(reference_case["composite"], reference_case["mask"], 256)[0]
    rgb = (x[:3].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(rgb, reference_case["composite_lr"])  # bit-exact OpenCV INTER_LINEAR
    assert np.abs(x[3].numpy() - reference_case["mask_lr"]).max() < 1e-6


def test_cli_reproduces_official_output_within_one_level(
    tmp_path: Path, reference_ckpt: Path, reference_case: dict[str, np.ndarray]
) -> None:
    comp, mask, out = tmp_path / "c.png", tmp_path / "m.png", tmp_path / "o.png"
    cv2.imwrite(str(comp), reference_case["composite"][..., ::-1])
    soft16 = (reference_case["mask"] * 65535).round().astype(np.uint16)
    cv2.imwrite(str(mask), soft16)  # a 16-bit PNG keeps the soft mask to 1/65535
    cmd = [sys.executable, "-m", "layer_harmonizer", "run", str(comp), str(mask), "-o", str(out)]
    done = subprocess.run(
        [*cmd, "--weights", str(reference_ckpt), "--lut-backend", "torch"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.float64)
    want = reference_case["output"].astype(np.float64) * 255
    assert np.abs(got - want).max() <= 1.0

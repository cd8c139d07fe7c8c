"""The network's precision (``--precision``): the ``auto`` rule with injected measurements, the
cache per CPU model / torch version / weights, and bf16 inference returning float32 maps.

No test here times anything: the measurement is replaced by a function returning fixed numbers.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from layer_harmonizer import precision
from layer_harmonizer.errors import InputError
from layer_harmonizer.model import AICTNet, create_model
from layer_harmonizer.model.weights import save_weights
from layer_harmonizer.pipeline import load_model, low_res_input, run_network
from layer_harmonizer.precision import Choice, Measurement, choose, decide
from tests.conftest import blob_mask, random_image


def _never(model: torch.nn.Module) -> Measurement:
    raise AssertionError("measured although no measurement was needed")


class Counting:
    """A measurement that returns fixed numbers and counts its calls."""

    def __init__(self, result: Measurement) -> None:
        self.result, self.calls = result, 0

    def __call__(self, model: torch.nn.Module) -> Measurement:
        self.calls += 1
        return self.result


@pytest.fixture
def paper_model() -> AICTNet:
    """Stands in for a loaded ``aict`` network: the metadata is what ``auto`` reads (a small
    network keeps the test fast; no test here runs it in the measurement)."""
    model = create_model("aict-light")
    model.metadata = {"variant": "aict", "sha256": "0123456789abcdef0123"}
    return model


@pytest.mark.parametrize(
    ("measured", "chosen", "words"),
    [
        (Measurement(1.0, 0.27, 0.6), "bf16", ["3.7x faster", "0.60 8-bit levels"]),
        (Measurement(1.0, 0.27, 1.4), "fp32", ["1.40 8-bit levels"]),
        (Measurement(1.0, 0.95, 0.2), "fp32", ["not 1.1x faster", "0.950 s vs 1.000 s"]),
        (Measurement(1.0, 1.8, 0.2), "fp32", ["not 1.1x faster"]),
        (Measurement(None, None, 3.1), "fp32", ["3.10 8-bit levels"]),
        (Measurement(None, None, 0.5), "fp32", ["not timed"]),
    ],
)
def test_auto_rule_needs_faster_and_within_one_level(
    measured: Measurement, chosen: str, words: list[str]
) -> None:
    choice = decide(measured)
    assert choice.precision == chosen
    assert all(word in choice.reason for word in words), choice.reason


def test_exactly_one_level_is_within_and_exactly_the_speedup_is_enough() -> None:
    assert decide(Measurement(1.1, 1.0, 1.0)).precision == "bf16"
    assert decide(Measurement(1.1, 1.0001, 1.0)).precision == "fp32"
    assert decide(Measurement(2.0, 1.0, 1.0001)).precision == "fp32"


def test_an_asked_for_precision_is_used_without_measuring(
    paper_model: AICTNet, tmp_path: Path
) -> None:
    for asked in ("fp32", "bf16"):
        got = choose(paper_model, "cpu", asked, cache_dir=tmp_path, measure=_never)
        assert got == Choice(asked, "asked for")
    with pytest.raises(InputError, match="precision must be one of auto, fp32, bf16; got 'fp16'"):
        choose(paper_model, "cpu", "fp16", cache_dir=tmp_path, measure=_never)


def test_auto_keeps_fp32_off_the_cpu_and_for_light_variants(
    paper_model: AICTNet, tmp_path: Path
) -> None:
    got = choose(paper_model, "cuda:0", cache_dir=tmp_path, measure=_never)
    assert got.precision == "fp32" and "CPU only" in got.reason
    paper_model.metadata = {"variant": "aict-light"}
    got = choose(paper_model, "cpu", cache_dir=tmp_path, measure=_never)
    assert got.precision == "fp32" and "not aict-light" in got.reason
    assert not list(tmp_path.iterdir())  # nothing measured, nothing cached


def test_auto_measures_once_per_cpu_model_and_torch_version(
    paper_model: AICTNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = Counting(Measurement(1.2, 0.3, 0.5))
    first = choose(paper_model, "cpu", cache_dir=tmp_path, measure=fast)
    assert first.precision == "bf16" and fast.calls == 1
    again = choose(paper_model, "cpu", cache_dir=tmp_path, measure=_never)
    assert again.precision == "bf16" and "cached in" in again.reason
    monkeypatch.setattr(precision, "cpu_model", lambda: "Another CPU")
    slow = Counting(Measurement(1.0, 2.5, 0.5))  # bf16 emulated: slower
    assert choose(paper_model, "cpu", cache_dir=tmp_path, measure=slow).precision == "fp32"
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert choose(paper_model, "cpu", cache_dir=tmp_path, measure=slow).precision == "fp32"
    assert slow.calls == 2
    keys = (tmp_path / precision.CACHE_FILE).read_text()
    assert "Another CPU" in keys and "torch 9.9.9" in keys and precision.cpu_model() != ""


def test_other_weights_are_measured_again(paper_model: AICTNet, tmp_path: Path) -> None:
    choose(paper_model, "cpu", cache_dir=tmp_path, measure=Counting(Measurement(1, 0.3, 0.5)))
    paper_model.metadata = {**paper_model.metadata, "sha256": "fedcba9876543210"}
    worse = Counting(Measurement(1.0, 0.3, 2.0))  # these weights lose too much in bf16
    assert choose(paper_model, "cpu", cache_dir=tmp_path, measure=worse).precision == "fp32"
    assert worse.calls == 1


def test_a_damaged_cache_is_measured_again(paper_model: AICTNet, tmp_path: Path) -> None:
    (tmp_path / precision.CACHE_FILE).write_text('{"half": [1, 2')
    measure = Counting(Measurement(1.0, 0.3, 0.4))
    assert choose(paper_model, "cpu", cache_dir=tmp_path, measure=measure).precision == "bf16"
    assert measure.calls == 1
    (tmp_path / precision.CACHE_FILE).write_text('{"key": {"wrong": 1}}')
    assert choose(paper_model, "cpu", cache_dir=tmp_path, measure=measure).precision == "bf16"
    assert measure.calls == 2


def test_an_unwritable_cache_still_chooses(paper_model: AICTNet, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    measure = Counting(Measurement(1.0, 0.3, 0.4))
    assert choose(paper_model, "cpu", cache_dir=blocked, measure=measure).precision == "bf16"


def test_the_probe_measurement_compares_real_outputs(light_model: AICTNet) -> None:
    """The real measurement on a small network: an error in levels, and timings only when that
    error leaves bf16 in the running (what the numbers are is not asserted)."""
    measured = precision.measure_probe(light_model, repeat=1)
    assert measured.levels >= 0.0
    timed = measured.fp32_s is not None
    assert timed == (measured.levels <= precision.MAX_LEVELS)
    assert timed == (measured.bf16_s is not None)
    probe = precision.probe_input(64)
    assert probe.shape == (1, 4, 64, 64) and torch.equal(probe, precision.probe_input(64))


def test_bf16_network_returns_float32_maps_close_to_fp32(light_model: AICTNet) -> None:
    image, mask = random_image(48, 64, np.uint8), blob_mask(48, 64)
    model = copy.deepcopy(light_model)
    x = low_res_input(image, mask, model.config.input_size)
    model.metadata = {"precision": "fp32"}
    full = run_network(x, model)
    model.metadata = {"precision": "bf16"}
    half = run_network(x, model)
    assert half.intervals.dtype == torch.float32 and half.colors.dtype == torch.float32
    assert (half.colors - full.colors).abs().max() < 0.1
    assert not torch.equal(half.colors, full.colors)  # bf16 did run


def test_load_model_records_the_choice(light_model: AICTNet, tmp_path: Path) -> None:
    path = tmp_path / "light.pt"
    save_weights(path, light_model, "aict-light", {}, half=False)
    model = load_model(path, device="cpu", precision="bf16")
    assert model.metadata["precision"] == "bf16"
    assert model.metadata["precision_reason"] == "asked for"
    model = load_model(path, device="cpu")
    assert model.metadata["precision"] == "fp32"
    assert "not aict-light" in model.metadata["precision_reason"]

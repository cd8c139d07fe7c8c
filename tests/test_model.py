"""The parameter network, the variant registry and weight files."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from layer_harmonizer.errors import WeightsError, WeightsNotFoundError
from layer_harmonizer.model import VARIANTS, AICTNet, create_model
from layer_harmonizer.model.weights import find_default_weights, load_weights, save_weights
from tests.conftest import REFERENCE


def test_paper_variant_parameter_count() -> None:
    model = AICTNet(VARIANTS["aict"])
    assert sum(p.numel() for p in model.parameters()) == 5_181_140
    assert not any("pos" in name for name in model.state_dict())  # no positional encoding


def test_state_dict_matches_official_keys() -> None:
    table = REFERENCE / "aict_official_keys.tsv"
    if not table.exists():
        pytest.skip(f"{table} is absent")
    rows = [line.split("\t") for line in table.read_text().splitlines()[1:] if line.strip()]
    official = {key: shape for key, shape, _ in rows}
    ours = {k: str(tuple(v.shape)) for k, v in AICTNet(VARIANTS["aict"]).state_dict().items()}
    assert ours == official


def test_official_checkpoint_loads_strictly(reference_ckpt: Path) -> None:
    model, meta = load_weights(reference_ckpt)
    assert meta["variant"] == "aict"
    assert not model.training  # eval-mode BatchNorm


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_predict_valid_maps(name: str) -> None:
    model = create_model(name).eval()
    size = model.config.input_size
    with torch.inference_mode():
        maps = model(torch.rand(2, 4, size, size))
    m, k = model.config.map_size, model.config.knots
    assert maps.intervals.shape == (2, 3, m, m, k + 1)
    assert maps.colors.shape == (2, 3, m, m, k)
    steps = maps.intervals.diff(dim=-1)
    assert (steps >= 0).all()  # the interval LUT is monotone
    torch.testing.assert_close(maps.intervals[..., 0], torch.zeros_like(maps.intervals[..., 0]))
    torch.testing.assert_close(maps.intervals[..., -1], torch.ones_like(maps.intervals[..., -1]))


def test_identity_init_reproduces_input_for_plain_variant() -> None:
    model = create_model("aict", depth=1).eval()
    from layer_harmonizer.lut import apply_luts

    x = torch.rand(1, 4, 256, 256)
    with torch.inference_mode():
        out = apply_luts(x[:, :3], model(x), None)
    assert (out - x[:, :3]).abs().max() < 0.03


def test_wrong_input_shape_is_named() -> None:
    with pytest.raises(ValueError, match=r"\(B, 4, 256, 256\)"):
        create_model("aict-light")(torch.rand(1, 3, 256, 256))


def test_weights_round_trip_keeps_variant_and_outputs(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = create_model("aict-light").eval()
    path = tmp_path / "w.pt"
    meta = save_weights(path, model, "aict-light", {"trained_on": "unit test"}, half=False)
    loaded, read_meta = load_weights(path)
    assert read_meta["variant"] == "aict-light" and read_meta["trained_on"] == "unit test"
    assert read_meta["sha256"] == meta["sha256"] and len(meta["sha256"]) == 64
    x = torch.rand(1, 4, 256, 256)
    with torch.inference_mode():
        a, b = model(x), loaded(x)
    torch.testing.assert_close(a.colors, b.colors)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left nothing behind


def test_half_precision_file_is_small_and_close(tmp_path: Path) -> None:
    model = create_model("aict-light").eval()
    full, half = tmp_path / "f.pt", tmp_path / "h.pt"
    save_weights(full, model, "aict-light", half=False)
    save_weights(half, model, "aict-light", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_weights(half)
    x = torch.rand(1, 4, 256, 256)
    with torch.inference_mode():
        diff = (model(x).colors - loaded(x).colors).abs().max()
    assert diff < 2e-3


def test_variant_mismatch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    save_weights(path, create_model("aict-light"), "aict-light")
    with pytest.raises(WeightsError, match="aict-light"):
        load_weights(path, variant="aict-small")


def test_wrong_state_dict_fails_loudly(tmp_path: Path) -> None:
    state = AICTNet(VARIANTS["aict"]).state_dict()
    state.pop("class_layer.bias")
    state["extra.weight"] = torch.zeros(1)
    state["decoder.dec.bias"] = torch.zeros(13)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError) as info:
        load_weights(path)
    text = str(info.value)
    assert "class_layer.bias" in text and "extra.weight" in text and "decoder.dec.bias" in text


def test_light_weights_are_not_the_paper_network(tmp_path: Path) -> None:
    path = tmp_path / "light.pth"
    torch.save({"model": create_model("aict-light").state_dict()}, path)
    with pytest.raises(WeightsError, match="does not fit variant 'aict'"):
        load_weights(path)


@pytest.mark.parametrize("damping", [-200.0, float("nan"), "200", True])
def test_a_stored_damping_that_is_not_a_number_ge_0_is_refused(
    tmp_path: Path, damping: object
) -> None:
    path = tmp_path / "w.pt"
    save_weights(path, create_model("aict-light"), "aict-light")
    obj = torch.load(path, weights_only=True)
    obj["config"]["damping"] = damping
    torch.save(obj, path)
    with pytest.raises(WeightsError, match=r"stores damping .*must be 0 \(off\) or a positive"):
        load_weights(path)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled arbitrary code",))


@pytest.mark.parametrize("content", ["garbage", "pickle", "list"])
def test_unreadable_files_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "w.pt"
    if content == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif content == "pickle":
        torch.save({"model": _Evil()}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError):
        load_weights(path)


@pytest.mark.parametrize("damage", ["corrupted", "truncated"])
def test_damaged_weights_give_one_line_errors_and_exit_2(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from layer_harmonizer.cli import main

    path = tmp_path / "w.pt"
    save_weights(path, create_model("aict-light"), "aict-light")
    assert load_weights(path)[1]["sha256_verified"] is True
    if damage == "corrupted":  # one weight changed, the stored digest kept
        obj = torch.load(path, weights_only=True)
        obj["state_dict"]["class_layer.bias"][0] += 1
        torch.save(obj, path)
        expected = "is corrupted: its weights do not match the sha256"
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        expected = "truncated or corrupted"
    with pytest.raises(WeightsError, match=expected):
        load_weights(path)
    image, mask = tmp_path / "c.png", tmp_path / "m.png"
    cv2.imwrite(str(image), np.full((16, 16, 3), 90, np.uint8))
    cv2.imwrite(str(mask), np.pad(np.full((8, 8), 255, np.uint8), 4))
    out = tmp_path / "o.png"
    code = main(["run", str(image), str(mask), "-o", str(out), "--weights", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_missing_file_and_missing_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(tmp_path / "nope.pt")
    monkeypatch.setenv("HARMONIZE_WEIGHTS", str(tmp_path / "nope.pt"))
    with pytest.raises(WeightsNotFoundError, match="HARMONIZE_WEIGHTS"):
        find_default_weights()


@pytest.mark.parametrize(("gate", "expect"), [(-30.0, "identity"), (30.0, "classical")])
def test_prior_gate_mixes_identity_and_classical_match(gate: float, expect: str) -> None:
    from layer_harmonizer.color_stats import classical_transfer
    from layer_harmonizer.lut import apply_luts

    model = create_model("aict-light").eval()
    with torch.no_grad():
        model.prior_gate.bias.fill_(gate)
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 64:192, 64:192] = 1
    rgb = torch.rand(1, 3, 256, 256) * 0.4 + 0.1
    rgb = rgb + mask * torch.tensor([0.4, 0.1, -0.05]).view(1, 3, 1, 1)  # a tinted object
    x = torch.cat([rgb, mask], dim=1)
    with torch.inference_mode():
        out = apply_luts(rgb, model(x), mask)
    want = rgb if expect == "identity" else classical_transfer(rgb, mask)
    assert (out - want).abs().max() < 0.02
    assert (rgb - classical_transfer(rgb, mask)).abs().max() > 0.2  # the two really differ


def test_prior_input_model_warm_started_from_plain_weights_predicts_the_same() -> None:
    from layer_harmonizer.model.aict import expand_input_weights

    torch.manual_seed(0)
    plain = create_model("aict-light").eval()
    for p in plain.parameters():  # away from the identity init, so outputs depend on the input
        p.data.add_(torch.randn_like(p) * 0.05)
    grown = create_model("aict-light", prior_input=True).eval()
    assert grown.encoder.patch_to_embedding[1].in_features == 16 * 16 * 7
    grown.load_state_dict(expand_input_weights(plain.state_dict(), grown))
    x = torch.rand(2, 4, 256, 256)
    x[:, 3] = (x[:, 3] > 0.6).float()
    a, b = plain(x), grown(x)
    torch.testing.assert_close(b.colors, a.colors, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.intervals, a.intervals, atol=1e-5, rtol=0)
    # The matched channels do reach the network once their columns are not zero.
    grown.encoder.patch_to_embedding[1].weight.data.normal_(0, 0.02)
    assert not torch.allclose(grown(x).colors, a.colors, atol=1e-3)
    with pytest.raises(ValueError, match="cannot fit"):
        expand_input_weights(grown.state_dict(), plain)

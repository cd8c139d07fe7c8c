"""The differentiable torch LUT reference and the numpy-level torch backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layer_harmonizer.errors import HarmonizeError
from layer_harmonizer.lut import LutMaps, LutTransform, apply_luts
from layer_harmonizer.lut.backends import TorchBackend, get_backend
from tests.conftest import blob_mask, random_image


def random_maps(
    batch: int = 1, grid: tuple[int, int] = (5, 7), knots: int = 8, seed: int = 0
) -> LutMaps:
    """Steep random LUTs: monotone intervals, colour knots beyond [0, 1] (so clamping matters)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, 3, *grid, knots, generator=g) * 2
    steps = torch.softmax(logits, dim=-1).cumsum(-1)
    intervals = torch.cat([torch.zeros_like(steps[..., :1]), steps], dim=-1)
    colors = torch.rand(batch, 3, *grid, knots, generator=g) * 1.4 - 0.2
    return LutMaps(intervals.contiguous(), colors.contiguous())


def gather_oracle(image: torch.Tensor, maps: LutMaps, alpha: torch.Tensor) -> torch.Tensor:
    """float64 per-pixel index arithmetic of the AICT transform (independent of grid_sample)."""
    x = image.double()
    _, _, h, w = x.shape
    m, n = maps.intervals.shape[2:4]
    u = torch.arange(h, dtype=torch.float64) * ((m - 1) / (h - 1) if h > 1 else 0)
    v = torch.arange(w, dtype=torch.float64) * ((n - 1) / (w - 1) if w > 1 else 0)
    u0 = u.floor().clamp(max=m - 1).long()
    v0 = v.floor().clamp(max=n - 1).long()
    u1, v1 = (u0 + 1).clamp(max=m - 1), (v0 + 1).clamp(max=n - 1)
    fu, fv = (u - u0)[:, None], (v - v0)[None, :]

    def lookup(table: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        d = table.shape[-1]
        pos = (value * (d - 1)).clamp(0, d - 1)
        k0 = pos.floor().clamp(max=d - 2).long()
        fk = pos - k0
        out = 0
        for uu, wu in ((u0, 1 - fu), (u1, fu)):
            for vv, wv in ((v0, 1 - fv), (v1, fv)):
                row = table[uu][:, vv]  # (h, w, d)
                a = row.gather(-1, k0[..., None])[..., 0]
                b = row.gather(-1, (k0 + 1)[..., None])[..., 0]
                out = out + wu * wv * (a + fk * (b - a))
        return out

    ys = []
    for c in range(3):
        xh = lookup(maps.intervals[0, c].double(), x[0, c])
        ys.append(lookup(maps.colors[0, c].double(), xh).clamp(0, 1))
    y = torch.stack(ys)[None]
    return y * alpha + x * (1 - alpha)


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (7, 3), (33, 20)])
def test_matches_float64_oracle(size: tuple[int, int]) -> None:
    h, w = size
    maps = random_maps()
    image = torch.rand(1, 3, h, w)
    image[0, 0, 0, 0], image[0, 1, 0, 0] = 0.0, 1.0  # exact ends of the range
    alpha = torch.from_numpy(blob_mask(h, w))[None, None]
    got = apply_luts(image, maps, alpha)
    want = gather_oracle(image, maps, alpha.double())
    assert (got.double() - want).abs().max() < 1e-4


def test_identity_maps_reproduce_input() -> None:
    image = torch.rand(2, 3, 31, 17)
    out = apply_luts(image, LutMaps.identity((4, 6), batch=2))
    assert (out - image).abs().max() < 1e-6


def test_zero_mask_and_zero_strength_keep_input_exactly() -> None:
    image = torch.rand(1, 3, 20, 30)
    mask = torch.from_numpy(blob_mask(20, 30))[None, None]
    out = apply_luts(image, random_maps(), mask)
    zero = mask[0, 0] == 0
    assert zero.any()
    assert torch.equal(out[0][:, zero], image[0][:, zero])
    assert torch.equal(apply_luts(image, random_maps(), mask, 0.0), image)


def test_strength_blends_linearly() -> None:
    image = torch.rand(1, 3, 10, 12)
    maps = random_maps()
    full = apply_luts(image, maps)
    half = apply_luts(image, maps, None, 0.5)
    torch.testing.assert_close(half, (full + image) / 2)


def test_row_bands_equal_whole_image() -> None:
    image = torch.rand(1, 3, 37, 11)
    maps = random_maps()
    whole = apply_luts(image, maps)
    parts = [apply_luts(image[:, :, a:b], maps, rows=(a, b, 37)) for a, b in ((0, 10), (10, 37))]
    torch.testing.assert_close(torch.cat(parts, dim=2), whole)


def test_gradients_reach_both_luts_and_image_weights(light_model: torch.nn.Module) -> None:
    model = light_model.train()
    try:
        x = torch.rand(2, 4, 256, 256)
        maps = model(x)
        out = LutTransform()(x[:, :3], maps, x[:, 3:])
        out.square().mean().backward()
        for layer in (model.colors_layer, model.params_layer, model.class_layer):
            assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_shape_errors_name_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        apply_luts(torch.rand(1, 4, 5, 5), random_maps())
    with pytest.raises(ValueError, match="one knot more"):
        LutMaps(torch.rand(1, 3, 2, 2, 8), torch.rand(1, 3, 2, 2, 8))
    with pytest.raises(ValueError, match="batch"):
        apply_luts(torch.rand(2, 3, 5, 5), random_maps())


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_torch_backend_dtypes_and_mask_zero(dtype: type) -> None:
    image = random_image(23, 41, dtype)
    mask = blob_mask(23, 41)
    maps = random_maps()
    out = TorchBackend().apply(image, mask, maps, 1.0)
    assert out.dtype == image.dtype and out.shape == image.shape
    assert np.array_equal(out[mask == 0], image[mask == 0])
    want = (
        apply_luts(
            torch.from_numpy(
                image.astype(np.float32)
                / (255 if dtype == np.uint8 else 65535 if dtype == np.uint16 else 1)
            ).permute(2, 0, 1)[None],
            maps,
            torch.from_numpy(mask)[None, None],
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    scale = {np.uint8: 255, np.uint16: 65535, np.float32: 1}[dtype]
    assert np.abs(out.astype(np.float64) - want * scale).max() <= (
        0.5 + 1e-3 if scale > 1 else 1e-6
    )


def test_unknown_backend_lists_choices() -> None:
    with pytest.raises(HarmonizeError, match="torch"):
        get_backend("no-such-backend")

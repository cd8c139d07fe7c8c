"""AICT parameter network (Meng et al., "High-Resolution Image Harmonization with
Adaptive-Interval Color Transformation", NeurIPS 2024).

The network looks at a low-resolution composite plus its mask and predicts, for every colour
channel and every position of a coarse spatial grid, two look-up tables:

* an *interval* LUT with ``knots + 1`` monotone values in [0, 1] (softmax over ``knots`` logits,
  cumulative sum, a leading zero), which redistributes the input value;
* a *colour* LUT with ``knots`` output values, ``F = R * w``: per-position values ``R`` scaled by
  image-level weights ``w`` from a small convolutional head.

With the default arguments the module is the published architecture exactly: 4x4 patches,
no positional encoding, a 9-layer post-norm transformer (width 256, 2 heads, MLP 512, GELU),
a stride-4 transposed convolution back to 256x256 maps, and the state_dict keys of the official
code, so official checkpoints load with ``strict=True``. Smaller variants change the patch size,
width and depth, and may start the colour LUT from a classical colour-statistics prior
(``color_prior=True``, see :class:`AICTConfig`); the heads and the LUT semantics stay the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from layer_harmonizer.color_stats import (
    classical_transfer,
    region_stats,
    reinhard_affine,
    reinhard_knots,
)
from layer_harmonizer.lut import LutMaps

STATS_FEATURES = 12
"""Mean and std of foreground and background per RGB channel, fed to prior variants' head."""


class PatchFlatten(nn.Module):
    """``(B, C, H, W) -> (B, H/p * W/p, p * p * C)``; a pixel's channels stay contiguous.

    Matches einops ``b c (h p1) (w p2) -> b (h w) (p1 p2 c)`` of the official code.
    """

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


FAST_PATH_MAX_TOKENS = 256
"""Sequences up to this length run batch-first, which lets torch use its fused transformer
inference path in eval: ~20 % faster on the CPU at 256 tokens (``aict-light``). At 1024 and 4096
tokens that path was slower than the standard attention path on the CPU (docs/benchmarks.md),
so longer sequences stay sequence-first, as in the official code. Weights are the same."""


class Encoder(nn.Module):
    """Patch embedding + transformer; returns the token grid ``(B, dim, H/p, W/p)``."""

    def __init__(
        self,
        in_chans: int,
        patch_size: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float,
        tokens: int = FAST_PATH_MAX_TOKENS,
    ) -> None:
        super().__init__()
        self.batch_first = tokens <= FAST_PATH_MAX_TOKENS
        self.patch_to_embedding = nn.Sequential(
            PatchFlatten(patch_size), nn.Linear(patch_size * patch_size * in_chans, dim)
        )
        layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=num_heads,
            dim_feedforward=mlp_dim,
            dropout=dropout,
            activation="gelu",
            batch_first=self.batch_first,
        )
        self.transformer_enc = nn.TransformerEncoder(
            layer, num_layers=depth, enable_nested_tensor=False
        )
        self.patch_size = patch_size

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        tokens = self.patch_to_embedding(x)  # (B, L, dim)
        if self.batch_first:
            tokens = self.transformer_enc(tokens)
        else:
            tokens = self.transformer_enc(tokens.transpose(0, 1)).transpose(0, 1)
        gh, gw = h // self.patch_size, w // self.patch_size
        return tokens.transpose(1, 2).reshape(b, -1, gh, gw)


class Decoder(nn.Module):
    """Stride-4 transposed convolution: token grid -> 12-channel parameter maps (no activation)."""

    def __init__(self, dim: int, out_chans: int = 12, stride: int = 4) -> None:
        super().__init__()
        self.dec = nn.ConvTranspose2d(dim, out_chans, kernel_size=stride, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.dec(x)


@dataclass(frozen=True)
class AICTConfig:
    """Hyper-parameters of one network variant (stored in weight files' metadata).

    Args:
        input_size: side of the square low-resolution input the network sees.
        patch_size: side of the square patches that become tokens.
        dim: token width.
        depth: number of transformer layers.
        num_heads: attention heads.
        mlp_dim: hidden width of the transformer MLP.
        knots: colour-LUT knots K (the interval LUT has K + 1).
        head_width: channels of the first conv of the image-level weight head (second is half).
        dropout: transformer dropout (training only).
        color_prior: give the image-level head the foreground and background colour
            statistics of the input, and add to the colour LUT a per-channel gated mix of the
            identity and the classical mean/std match (Reinhard): ``F = R * w + t + g (p - t)``
            with ``t`` the identity knots, ``p`` the matched knots and ``g`` in (0, 1) predicted
            per image and channel. Training starts at ``g`` near 0 (identity) and learns both
            when to trust the classical match and the correction on top of it.
        prior_input: also feed the network the statistics-matched composite (the classical
            mean/std match applied to the foreground) as three more input channels, so the
            transformer sees "what the classical transfer would do" next to the composite.
        damping: (inference only; 0 = off) a prediction whose change to the object is small
            against this foreground MSE (0..255 scale) is applied only in part: the share
            ``m² / (m² + damping²)`` of it, ``m`` being the change measured on the network input
            (:func:`layer_harmonizer.lut.damping.damping_gain`). A network's changes of the
            size of its own error carry little signal, and a paste that already fits should
            stay as it is; strong corrections (``m`` far above ``damping``) pass nearly whole.
    """

    input_size: int = 256
    patch_size: int = 4
    dim: int = 256
    depth: int = 9
    num_heads: int = 2
    mlp_dim: int = 512
    knots: int = 8
    head_width: int = 128
    dropout: float = 0.1
    color_prior: bool = False
    prior_input: bool = False
    damping: float = 0.0

    @property
    def in_chans(self) -> int:
        """Channels the encoder sees: RGB + mask, plus the matched RGB with ``prior_input``."""
        return 7 if self.prior_input else 4

    @property
    def map_size(self) -> int:
        """Side of the predicted LUT maps (token grid x 4)."""
        return self.input_size // self.patch_size * 4


class AICTNet(nn.Module):
    """Predicts AICT LUT maps from a low-resolution composite and mask.

    Input: ``x`` of shape ``(B, 4, S, S)`` with S = ``config.input_size``; channels R, G, B in
    [0, 1] and the soft mask in [0, 1]. Output: :class:`layer_harmonizer.lut.LutMaps` with
    ``intervals`` ``(B, 3, M, M, K + 1)`` and ``colors`` ``(B, 3, M, M, K)``, M = ``map_size``.
    """

    def __init__(self, config: AICTConfig | None = None) -> None:
        super().__init__()
        cfg = config or AICTConfig()
        if cfg.input_size % cfg.patch_size:
            raise ValueError(
                f"input_size {cfg.input_size} is not a multiple of patch_size {cfg.patch_size}"
            )
        self.config = cfg
        self.metadata: dict[str, object] = {}  # filled by the weights loader
        k = cfg.knots
        tokens = (cfg.input_size // cfg.patch_size) ** 2
        self.encoder = Encoder(
            cfg.in_chans,
            cfg.patch_size,
            cfg.dim,
            cfg.depth,
            cfg.num_heads,
            cfg.mlp_dim,
            cfg.dropout,
            tokens,
        )
        self.decoder = Decoder(cfg.dim, 12)
        hw = cfg.head_width
        self.bottom_convs = nn.Sequential(
            nn.Conv2d(cfg.dim, hw, 3, padding=1),
            nn.BatchNorm2d(hw),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(hw, hw // 2, 3, padding=1),
            nn.BatchNorm2d(hw // 2),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
        )
        head_in = hw // 2 + (STATS_FEATURES if cfg.color_prior else 0)
        self.class_layer = nn.Linear(head_in, 3 * k)
        if cfg.color_prior:
            self.prior_gate = nn.Linear(head_in, 3)
        self.colors_layer = nn.Conv2d(12, 3 * k, 1)  # interval logits
        self.params_layer = nn.Conv2d(12, 3 * k, 1)  # colour-LUT values R

    def forward(self, x: Tensor) -> LutMaps:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != 4 or x.shape[2:] != (cfg.input_size, cfg.input_size):
            raise ValueError(
                f"expected input of shape (B, 4, {cfg.input_size}, {cfg.input_size}), "
                f"got {tuple(x.shape)}"
            )
        b, k = x.shape[0], cfg.knots
        rgb, mask = x[:, :3], x[:, 3:]
        # The colour statistics, once, for every prior that uses them.
        stats = region_stats(rgb, mask) if cfg.color_prior or cfg.prior_input else None
        affine = reinhard_affine(rgb, mask, stats) if stats is not None else None
        t1 = self.encoder(with_matched(x, affine) if cfg.prior_input else x)
        t2 = self.decoder(t1)
        m = t2.shape[-1]
        logits = self.colors_layer(t2).view(b, 3, k, m, m)
        values = self.params_layer(t2).view(b, 3, k, m, m)
        features = self.bottom_convs(t1).flatten(1)
        if cfg.color_prior:
            features = torch.cat([features, *stats], dim=1)  # + (B, 12)
        weights = self.class_layer(features).view(b, 3, k, 1, 1)

        steps = torch.softmax(logits, dim=2).cumsum(dim=2)
        intervals = torch.cat([torch.zeros_like(steps[:, :, :1]), steps], dim=2)
        colors = values * weights
        if cfg.color_prior:
            identity = torch.linspace(0, 1, k, device=x.device, dtype=x.dtype)
            matched = reinhard_knots(rgb, mask, k, affine)  # (B, 3, K)
            gate = torch.sigmoid(self.prior_gate(features))[..., None]  # (B, 3, 1)
            base = identity + gate * (matched - identity)
            colors = colors + base[..., None, None]
        # Knot axis last: (B, 3, M, M, knots), the layout the LUT kernels read.
        return LutMaps(
            intervals=intervals.permute(0, 1, 3, 4, 2).contiguous(),
            colors=colors.permute(0, 1, 3, 4, 2).contiguous(),
        )


def with_matched(x: Tensor, affine: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """``(B, 4, S, S)`` composite + mask -> ``(B, 7, S, S)``: the statistics-matched composite
    (foreground moved onto the background's per-channel mean/std, blended by the mask)
    appended as channels 4-6, in [0, 1] (``affine``: that match, when already computed)."""
    matched = classical_transfer(x[:, :3], x[:, 3:], affine)
    return torch.cat([x, matched], dim=1)


def expand_input_weights(state: dict[str, Tensor], model: AICTNet) -> dict[str, Tensor]:
    """Fit a 4-channel state_dict to a ``prior_input`` model: the patch embedding's new input
    columns start at zero, so the expanded network computes exactly what the old one did.
    Other tensors are returned unchanged; a state that already fits is returned as is."""
    key = "encoder.patch_to_embedding.1.weight"
    want = model.state_dict()[key].shape
    have = state[key]
    if have.shape == want:
        return state
    p2 = model.config.patch_size**2
    old_c, new_c = have.shape[1] // p2, want[1] // p2
    if have.shape[0] != want[0] or have.shape[1] % p2 or old_c > new_c:
        raise ValueError(f"cannot fit {key} of shape {tuple(have.shape)} to {tuple(want)}")
    grown = have.new_zeros(want[0], p2, new_c)
    grown[:, :, :old_c] = have.view(want[0], p2, old_c)
    return {**state, key: grown.view(want)}


PRIOR_GATE_INIT = -3.0
"""Initial prior-gate logit: sigmoid(-3) = 0.05, so training starts next to the identity."""


def init_weights(model: AICTNet, *, identity: bool = True) -> AICTNet:
    """Initialise for training.

    The official init (``identity=False``): conv/linear weights ~ N(0, 0.02), biases 0, BatchNorm
    gamma ~ N(1, 0.02); the first output is then nearly black. With ``identity=True`` (our
    default) the heads are additionally set so the first prediction is the identity mapping
    (uniform intervals, colour knots k/(K-1), image weights 1; for prior variants the prior
    gate starts almost closed): training then starts from "no change" instead of from black.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)
    if identity:
        k = model.config.knots
        with torch.no_grad():
            for layer in (model.colors_layer, model.params_layer, model.class_layer):
                layer.weight.mul_(0.01)
            model.colors_layer.bias.zero_()
            model.class_layer.bias.fill_(1.0)
            if model.config.color_prior:
                model.params_layer.bias.zero_()
                model.prior_gate.weight.mul_(0.01)
                model.prior_gate.bias.fill_(PRIOR_GATE_INIT)
            else:
                model.params_layer.bias.copy_(torch.linspace(0, 1, k).repeat(3))
    return model

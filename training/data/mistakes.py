"""Which compositing mistakes the synthetic data makes, and how often.

Real composites (iHarmony4 and what artists paste) go wrong in three ways, and each family here
mirrors one of them; :data:`FAMILY_MIX` records the mix:

* ``transfer`` (HCOCO kind): the object carries the colours of another photo's object, moved
  there by one of four classical transfers: Reinhard mean/std in CIE Lab, mean/std per RGB
  channel, per-channel histogram matching, or a linear (covariance-matching) colour transfer;
* ``look`` (HFlickr / HAdobe5k kind): the object went through a photographic look: a smooth
  random 3D LUT, split toning, tone curves, white balance, saturation, a channel mix or a fade,
  as editing presets do;
* ``light`` (HDay2Night kind): the object was lit differently: exposure of up to 3 stops, colour
  temperature, flattened or raised contrast, haze.

A share :data:`STRONG_PROBABILITY` of composites draws every magnitude from a wider
distribution (the heavy tail of strong mismatches real users bring: a bright paste in a dim
scene, a warm object in cool light). :func:`draw_jitter` is the separate global change applied
to the *whole* photo before a composite is made, so the ground truth's colours vary from one view
of a photo to the next and a network cannot memorise them.

Every drawing function returns a JSON-serialisable recipe (:mod:`training.data.colour_edits`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from training.data.colour_edits import LUMA, Recipe, region_lab_stats

FAMILY_MIX: dict[str, float] = {"transfer": 0.35, "look": 0.35, "light": 0.30}
"""Share of each recipe family in the synthetic stream (and in the validation set)."""
STRONG_PROBABILITY = 0.3
"""Default share of composites whose magnitudes come from the wide ("strong") distributions."""
JITTER_PROBABILITY = 0.8
"""Share of training views whose whole photo is first given a random global colour change."""
TRANSFER_METHODS = ("lab_meanstd", "rgb_meanstd", "histogram", "linear")
LINEAR_GAIN_RANGE = (0.4, 2.5)
"""Bounds on the eigenvalues of a linear colour transfer (no collapse, no noise blow-up)."""
QUANTILES = np.linspace(0.0, 1.0, 17)


def _normal(rng: np.random.Generator, sd: float, limit: float) -> float:
    return float(np.clip(rng.normal(0.0, sd), -limit, limit))


# -- transfers (HCOCO kind) -------------------------------------------------------------------
def _pixel_stats(pix: np.ndarray) -> tuple[list[float], list[float]]:
    return pix.mean(0).tolist(), pix.std(0).tolist()


def _linear_transfer(src: np.ndarray, dst: np.ndarray, amount: float) -> dict:
    """Monge-Kantorovich linear map taking ``src``'s colour covariance onto ``dst``'s."""
    eye = np.eye(3) * 1e-4
    cs, cd = np.cov(src.T) + eye, np.cov(dst.T) + eye

    def sqrtm(c: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(c)
        return (v * np.sqrt(np.maximum(w, 1e-8))) @ v.T

    rs = sqrtm(cs)
    rs_inv = np.linalg.inv(rs)
    a = rs_inv @ sqrtm(rs @ cd @ rs) @ rs_inv
    w, v = np.linalg.eigh((a + a.T) / 2)
    a = (v * np.clip(w, *LINEAR_GAIN_RANGE)) @ v.T
    a = np.eye(3) + amount * (a - np.eye(3))
    # y = a x + t with t chosen so that the source mean lands on the (blended) target mean.
    target = src.mean(0) + amount * (dst.mean(0) - src.mean(0))
    t = target - a @ src.mean(0)
    return {"op": "affine", "matrix": a.tolist(), "offset": t.tolist()}


def draw_transfer(
    rng: np.random.Generator, src: np.ndarray, dst: np.ndarray, strong: bool
) -> Recipe:
    """The object takes (partly) the colours of another region.

    Args:
        src: ``(N, 3)`` float32 pixels of the object, [0, 1].
        dst: ``(N, 3)`` float32 pixels of another photo's object (or whole frame), [0, 1].
        strong: a full transfer, plus an exposure change more often.
    """
    method = TRANSFER_METHODS[int(rng.integers(len(TRANSFER_METHODS)))]
    amount = float(rng.uniform(0.85, 1.0) if strong else rng.uniform(0.55, 1.0))
    if method == "lab_meanstd":
        s = region_lab_stats(src[None], np.ones((1, len(src)), np.float32))
        d = region_lab_stats(dst[None], np.ones((1, len(dst)), np.float32))
        step = {"op": "transfer", "src_mean": s[0], "src_std": s[1], "dst_mean": d[0]}
        step |= {"dst_std": d[1], "amount": amount}
    elif method == "rgb_meanstd":
        (sm, ss), (dm, ds) = _pixel_stats(src), _pixel_stats(dst)
        step = {"op": "rgb_transfer", "src_mean": sm, "src_std": ss, "dst_mean": dm}
        step |= {"dst_std": ds, "amount": amount}
    elif method == "histogram":
        sq = np.quantile(src, QUANTILES, axis=0).T.tolist()
        dq = np.quantile(dst, QUANTILES, axis=0).T.tolist()
        step = {"op": "quantile_map", "src_q": sq, "dst_q": dq, "amount": amount}
    else:
        step = _linear_transfer(src.astype(np.float64), dst.astype(np.float64), amount)
    recipe: Recipe = [step]
    if rng.random() < (0.5 if strong else 0.25):
        stops = _normal(rng, 1.0 if strong else 0.4, 2.5 if strong else 1.0)
        recipe.append({"op": "exposure", "stops": stops})
    return recipe


# -- looks (HFlickr / HAdobe5k kind) ----------------------------------------------------------
def _random_curve(rng: np.random.Generator, per_channel: bool, sd: float) -> list[list[float]]:
    xs = np.linspace(0.0, 1.0, 5)

    def one() -> list[float]:
        ys = xs + rng.normal(0.0, sd, 5) * np.array([0.3, 1, 1, 1, 0.3])
        return np.maximum.accumulate(np.clip(ys, 0.0, 1.0)).tolist()

    base = one()
    return [one() for _ in range(3)] if per_channel else [base, base, base]


def _random_lut(rng: np.random.Generator, scale: float, size: int = 5) -> list:
    """A smooth random 3D LUT ``(size, size, size, 3)``: a near-identity channel mix plus a few
    low-frequency waves, like a colour-grading preset."""
    axis = np.linspace(0.0, 1.0, size)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)  # (n, n, n, 3)
    mix = np.eye(3) + rng.normal(0.0, 0.07 * scale, (3, 3))
    out = grid @ mix.T + rng.normal(0.0, 0.03 * scale, 3)
    for _ in range(3):
        freq = rng.normal(0.0, 1.2, 3)
        phase = rng.uniform(0, 2 * math.pi)
        amp = rng.normal(0.0, 0.04 * scale, 3)
        out += np.sin(math.pi * grid @ freq + phase)[..., None] * amp
    return np.clip(out, 0.0, 1.0).round(4).tolist()


def _tint(rng: np.random.Generator, size: float) -> list[float]:
    v = rng.normal(0.0, 1.0, 3)
    v -= v @ LUMA  # a hue, not a brightness change
    return (v / max(float(np.linalg.norm(v)), 1e-6) * size).tolist()


def draw_look(rng: np.random.Generator, fg_mean: float, strong: bool, scale: float = 1.0) -> Recipe:
    """A photographic look: 1-3 edits of an editing preset, in random order; ``scale``
    multiplies every edit's magnitude (limits stay)."""
    s = (1.8 if strong else 1.0) * scale
    names = ["lut3d", "split_tone", "curve", "white_balance", "saturation", "mix", "fade"]
    names += ["contrast", "hue"]
    p = np.array([3, 2, 2, 2, 2, 1, 1, 1, 1], float)
    count = int(rng.integers(1, 4))
    recipe: Recipe = []
    for name in rng.choice(names, size=count, replace=False, p=p / p.sum()):
        if name == "lut3d":
            recipe.append({"op": "lut3d", "table": _random_lut(rng, s)})
        elif name == "split_tone":
            recipe.append(
                {
                    "op": "split_tone",
                    "shadows": _tint(rng, rng.uniform(0.03, 0.12) * s),
                    "highlights": _tint(rng, rng.uniform(0.03, 0.12) * s),
                }
            )
        elif name == "curve":
            recipe.append(
                {"op": "curve", "knots": _random_curve(rng, rng.random() < 0.5, 0.06 * s)}
            )
        elif name == "white_balance":
            temp, tint = _normal(rng, 0.2 * s, 0.8), _normal(rng, 0.07 * s, 0.3)
            recipe.append({"op": "white_balance", "temperature": temp, "tint": tint})
        elif name == "saturation":
            factor = math.exp(_normal(rng, 0.35 * s, 1.5))
            recipe.append({"op": "saturation", "factor": factor})
        elif name == "mix":
            m = np.eye(3) + rng.normal(0.0, 0.06 * s, (3, 3))
            m /= m.sum(1, keepdims=True)  # grey stays grey
            recipe.append({"op": "affine", "matrix": m.tolist(), "offset": [0.0, 0.0, 0.0]})
        elif name == "fade":
            colour = (0.5 + np.asarray(_tint(rng, 0.08))).clip(0, 1).tolist()
            recipe.append(
                {"op": "fade", "amount": float(rng.uniform(0.05, 0.2) * s), "colour": colour}
            )
        elif name == "contrast":
            factor = math.exp(_normal(rng, 0.2 * s, 0.8))
            recipe.append({"op": "contrast", "factor": factor, "pivot": float(fg_mean)})
        else:
            recipe.append({"op": "hue", "degrees": _normal(rng, 10 * s, 40)})
    return recipe


# -- light (HDay2Night kind) ------------------------------------------------------------------
def draw_light(rng: np.random.Generator, fg_mean: float, strong: bool) -> Recipe:
    """Another light: exposure (up to 3 stops), colour temperature, contrast, haze."""
    recipe: Recipe = []
    if rng.random() < 0.9:
        stops = _normal(rng, 1.5 if strong else 0.8, 3.0 if strong else 2.0)
        recipe.append({"op": "exposure", "stops": stops})
    if rng.random() < 0.75:
        temp = _normal(rng, 0.4 if strong else 0.2, 0.9)
        recipe.append(
            {"op": "white_balance", "temperature": temp, "tint": _normal(rng, 0.06, 0.25)}
        )
    if rng.random() < 0.4:
        factor = math.exp(_normal(rng, 0.35 if strong else 0.2, 0.9))
        recipe.append({"op": "contrast", "factor": factor, "pivot": float(fg_mean)})
    if rng.random() < 0.15:
        colour = (0.6 + np.asarray(_tint(rng, 0.05))).clip(0, 1).tolist()
        recipe.append({"op": "fade", "amount": float(rng.uniform(0.05, 0.25)), "colour": colour})
    rng.shuffle(recipe)
    return recipe


def draw_family(
    rng: np.random.Generator,
    strong_probability: float = STRONG_PROBABILITY,
    mix: Mapping[str, float] = FAMILY_MIX,
) -> tuple[str, bool]:
    """``(family, strong)``: the family drawn with the shares ``mix`` (by default
    :data:`FAMILY_MIX`; normalised, so any non-negative weights of positive sum), strong with
    ``strong_probability``. One uniform draw each, whatever the mix."""
    names = list(mix)
    p = np.array([mix[n] for n in names], dtype=np.float64)
    family = names[int(rng.choice(len(names), p=p / p.sum()))]
    return family, bool(rng.random() < strong_probability)


def draw_jitter(rng: np.random.Generator) -> Recipe:
    """A mild global colour/tone change for a whole photo (against memorising its colours)."""
    return [
        {"op": "exposure", "stops": _normal(rng, 0.3, 0.8)},
        {
            "op": "white_balance",
            "temperature": _normal(rng, 0.08, 0.25),
            "tint": _normal(rng, 0.03, 0.1),
        },
        {"op": "saturation", "factor": math.exp(_normal(rng, 0.15, 0.4))},
        {"op": "contrast", "factor": math.exp(_normal(rng, 0.1, 0.3)), "pivot": 0.5},
    ]

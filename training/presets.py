"""Named hyper-parameter recipes: ``python -m training train --preset NAME``.

A preset is a set of option values over the defaults of :mod:`training.config`, keyed by field
name (``TrainConfig`` and ``DataSpec`` fields side by side, as on the command line). Options
given with it win (``--override`` entries are merged into the preset's network overrides).
``python -m training presets`` (or ``train --preset list``) prints every preset as the options
it stands for.

Paths may hold ``{runs}``, the runs folder: ``$HARMONIZE_RUNS_DIR``, else ``harmonize-runs`` in
the user data folder (``~/.local/share/harmonize-runs`` on Linux), where the runs behind the
shipped weights were kept. A fine-tune preset starts from ``{runs}/<base preset>/last.pt``: train
the base preset with ``--out {runs}/<base preset>`` first, or give ``--init-weights PATH``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

RUNS_ENV = "HARMONIZE_RUNS_DIR"


@dataclass(frozen=True)
class Preset:
    """A named recipe: what it is for, and its option values (field name -> value)."""

    description: str
    values: Mapping[str, Any]


LIGHT_2026_12: dict[str, Any] = {
    "variant": "aict-light",
    "max_side": 256,
    "val_count": 400,
    "val_max_side": 384,
    "lr_weight": 0.0,
    "batch_size": 8,
    "lr": 2.5e-4,
    "const_fraction": 0.3,
    "max_steps": 15_000,
    "time_budget": 150 * 60.0,
    "eval_every": 2500,
    "ckpt_minutes": 5.0,
    "threads": 2,
    "identity_fraction": 0.1,
    "relative_tau": 0.0015,
}
"""The run that made ``backend/layer_harmonizer/weights/default.pt`` (docs/weights.md)."""

FINE_TUNE: dict[str, Any] = {
    **LIGHT_2026_12,
    "lr": 1e-4,
    "const_fraction": 0.3,
    "max_steps": 100_000,
    "time_budget": 100 * 60.0,
    "eval_every": 1250,
    "threads": 1,
    "init_weights": "{runs}/light-2026-12/last.pt",
}
"""A second stage from the light-2026-12 run's final state, at a lower LR."""

OBJECTS: dict[str, Any] = {
    **FINE_TUNE,
    "model_overrides": {"prior_input": True},
    "init_weights": "{runs}/light-2026-12-ft-prior-input/best.pt",
    "time_budget": 120 * 60.0,
    "max_object_area": 0.45,
    "max_object_sides": 2,
    "look_scale": 2.0,
}
"""A third stage from the shipped prior-input weights on object-like masks (no sky or ground
segments, at most 45 % of the frame) and looks twice as strong (as strong as iHarmony4's
HFlickr/HAdobe5k composites)."""
BOLD: dict[str, Any] = {**OBJECTS, "strong_probability": 0.5, "relative_tau": 0.006}
"""The third stage's chosen arm (the default until stage 4): object-like masks, half the
composites strong."""
SCENE: dict[str, Any] = {
    **BOLD,
    "init_weights": "{runs}/light-2026-12-objects-bold/best.pt",
    "time_budget": 90 * 60.0,
    "max_scene_mismatch": 1500.0,
}
"""A fourth stage on objects their scene explains: on real iHarmony4-style composites the
classical statistics match leaves an error of about 600 (training notes), on the data before
about 1,700-2,200 on average; views above 1,500 are redrawn (the stream's average becomes ~500)."""
POLISH: dict[str, Any] = {
    **SCENE,
    "init_weights": "{runs}/light-2026-12-scene-loose/best.pt",
    "time_budget": 80 * 60.0,
    "max_scene_mismatch": 3000.0,
    "first_sample": 100_000,
}
"""A fifth stage: the stage-4 recipe again from its weights, with a fresh LR cycle, on composites
past the 66,472 that stage 4 saw."""
SIXTH: dict[str, Any] = {
    **POLISH,
    "init_weights": "{runs}/light-2026-12-polish/best.pt",
    "time_budget": 150 * 60.0,
    "first_sample": 200_000,
}
"""A sixth stage from the stage-5 weights, on composites past those stage 5 saw."""
SEVENTH: dict[str, Any] = {
    **SIXTH,
    "init_weights": "{runs}/default-stage6.pt",
    "time_budget": 85 * 60.0,
    "first_sample": 400_000,
}
"""A seventh stage from the stage-6 default (a copy of its ``default.pt`` in the runs folder), on
composites past those stages 6 and 7 drew."""
EIGHTH: dict[str, Any] = {
    **SIXTH,
    "init_weights": "{runs}/default-stage7.pt",
    "time_budget": 75 * 60.0,
    "first_sample": 500_000,
    "foreign_fraction": 0.25,
}
"""An eighth stage from the stage-7 default (a copy of its ``default.pt``), a quarter of the
composites objects cut from other photos and pasted as they are (their own colours the truth)."""
NINTH: dict[str, Any] = {
    **SIXTH,
    "init_weights": "{runs}/default-stage7.pt",
    "time_budget": 100 * 60.0,
    "first_sample": 700_000,
}
"""A ninth stage from the stage-7 default (a copy of its ``default.pt``), on composites past those
stages 6-8 drew."""
TENTH: dict[str, Any] = {
    **NINTH,
    "time_budget": 80 * 60.0,
    "first_sample": 900_000,
    "foreign_fraction": 0.15,
    "donor_light": "grey-edge",
}
"""A tenth stage from the stage-7 default: the recipe of stages 5-7 with some objects pasted from
other photos whose light (grey-edge, not the scene's mean colour) matches the scene's."""
ELEVENTH: dict[str, Any] = {
    **TENTH,
    "time_budget": 100 * 60.0,
    "first_sample": 1_100_000,
    "foreign_fraction": 0.08,
}
"""An eleventh stage from the stage-7 default: the tenth's grey-edge pastes at about half its share,
for 100 minutes."""
TWELFTH: dict[str, Any] = {
    **ELEVENTH,
    "init_weights": "{runs}/light-2026-12-eleventh-edge8/best.pt",
    "time_budget": 90 * 60.0,
    "first_sample": 1_200_000,
}
"""A twelfth stage: the eleventh's recipe again from its ``best.pt``, a fresh LR cycle on new
composites (more training on the same mix: v4 673 -> 650, docs/weights.md)."""
THIRTEENTH: dict[str, Any] = {
    **TWELFTH,
    "init_weights": "{runs}/light-2026-12-twelfth-edge/best.pt",
    "time_budget": 95 * 60.0,
    "first_sample": 1_300_000,
}
"""A thirteenth stage: the same recipe again from the twelfth's ``best.pt``, a third LR cycle on
new composites (v4 650 -> 608, but the pasted objects drift back towards stage 7's colours:
docs/weights.md)."""
FOURTEENTH: dict[str, Any] = {
    **TWELFTH,
    "init_weights": "{runs}/light-2026-12-twelfth-edge/best.pt",
    "time_budget": 80 * 60.0,
    "first_sample": 1_400_000,
    "horizon_fraction": 0.05,
}
"""A fourteenth stage: the twelfth's recipe from its ``best.pt`` with a twentieth of the
composites sky replacements (another photo's land, lit alike, under the scene's top)."""
FIFTEENTH: dict[str, Any] = {
    **FOURTEENTH,
    "init_weights": "{runs}/light-2026-12-fourteenth-horizon/best.pt",
    "time_budget": 70 * 60.0,
    "first_sample": 1_500_000,
    "foreign_fraction": 0.12,
    "vivid_fraction": 0.7,
}
"""A fifteenth stage: the fourteenth's recipe from its ``best.pt`` with 12 % of the objects
pasted from other photos, 70 % of the coloured ones among them made vivid first (saturated
objects pasted as they are: their vivid colours are the truth)."""
SIXTEENTH: dict[str, Any] = {
    **FIFTEENTH,
    "init_weights": "{runs}/default-stage15.pt",
    "time_budget": 60 * 60.0,
    "first_sample": 1_600_000,
    "family_mix": (0.55, 0.25, 0.20),
}
"""A sixteenth stage from the stage-15 default (a copy of its ``default.pt``): the fifteenth's
recipe with the transfer family drawn 55 % of the time instead of 35 % (the look and light
families 25 % and 20 %), for the objects recoloured with another photo's statistics that
stage 15 corrected less well."""

PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "light-2026-12": Preset(
            "aict-light on ../shared/data, 150 CPU-minutes on 2 threads: stage 1 of the default",
            MappingProxyType(LIGHT_2026_12),
        ),
        "light-2026-12-ft": Preset(
            "light-2026-12 fine-tuned for 100 more minutes at LR 1e-4 (1 thread)",
            MappingProxyType(FINE_TUNE),
        ),
        "light-2026-12-ft-prior-input": Preset(
            "light-2026-12-ft with the statistics-matched composite as 3 more input channels",
            MappingProxyType({**FINE_TUNE, "model_overrides": {"prior_input": True}}),
        ),
        "light-2026-12-objects": Preset(
            "light-2026-12-ft-prior-input trained on object-like masks and stronger looks",
            MappingProxyType(OBJECTS),
        ),
        "light-2026-12-objects-bold": Preset(
            "light-2026-12-objects with half the composites strong and a flatter loss weighting "
            "(relative tau 0.006): strong mismatches count more",
            MappingProxyType(BOLD),
        ),
        "light-2026-12-scene": Preset(
            "a fourth stage from light-2026-12-objects-bold on views whose object the scene "
            "explains (classical-match error <= 1,500)",
            MappingProxyType(SCENE),
        ),
        "light-2026-12-scene-loose": Preset(
            "light-2026-12-scene with the limit at 3,000 (only the objects the scene explains "
            "least are redrawn): stage 4 of the default",
            MappingProxyType({**SCENE, "max_scene_mismatch": 3000.0}),
        ),
        "light-2026-12-polish": Preset(
            "a fifth stage: light-2026-12-scene-loose's recipe for 80 more minutes from its "
            "weights (a new LR cycle): the default until stage 6",
            MappingProxyType(POLISH),
        ),
        "light-2026-12-polish-gentle": Preset(
            "light-2026-12-polish with twice the pastes left as they are (identity 0.2) and "
            "good pastes weighted up again (relative tau 0.0015)",
            MappingProxyType({**POLISH, "identity_fraction": 0.2, "relative_tau": 0.0015}),
        ),
        "light-2026-12-polish-2": Preset(
            "a sixth stage: the polish recipe for 150 more minutes from its weights (the "
            "stage-6 default: 0.85 of it, 90 minutes, averaged with -own)",
            MappingProxyType(SIXTH),
        ),
        "light-2026-12-polish-2-wide": Preset(
            "light-2026-12-polish-2 redrawing only the objects the scene explains least of all "
            "(limit 6,000): more objects of their own colours, against pulling them to the scene",
            MappingProxyType({**SIXTH, "max_scene_mismatch": 6000.0}),
        ),
        "light-2026-12-polish-2-own": Preset(
            "light-2026-12-polish-2 with the pastes left as they are drawn from every view "
            "(identity_any_scene): objects of their own colours, shown unchanged",
            MappingProxyType({**SIXTH, "identity_any_scene": True}),
        ),
        "light-2026-12-seventh": Preset(
            "a seventh stage: the polish recipe for 85 more minutes from the stage-6 default",
            MappingProxyType(SEVENTH),
        ),
        "light-2026-12-seventh-own-wide": Preset(
            "light-2026-12-seventh with objects of their own colours both left as they are "
            "(identity_any_scene) and recoloured (scene limit 6,000), on composites of their own",
            MappingProxyType(
                {
                    **SEVENTH,
                    "identity_any_scene": True,
                    "max_scene_mismatch": 6000.0,
                    "first_sample": 300_000,
                }
            ),
        ),
        "light-2026-12-eighth-foreign": Preset(
            "an eighth stage from the stage-7 default: a quarter of the objects pasted from "
            "other photos lit alike, left so or given a look or another light (foreign 0.25)",
            MappingProxyType(EIGHTH),
        ),
        "light-2026-12-eighth-foreign-half": Preset(
            "light-2026-12-eighth-foreign with half the objects pasted from other photos",
            MappingProxyType({**EIGHTH, "foreign_fraction": 0.5, "first_sample": 600_000}),
        ),
        "light-2026-12-ninth": Preset(
            "a ninth stage: the polish recipe for 100 more minutes from the stage-7 default",
            MappingProxyType(NINTH),
        ),
        "light-2026-12-ninth-own-foreign": Preset(
            "light-2026-12-ninth with objects of their own colours left as they are "
            "(identity_any_scene), recoloured (scene limit 6,000) and pasted from other photos "
            "(foreign 0.1), on composites of their own",
            MappingProxyType(
                {
                    **NINTH,
                    "identity_any_scene": True,
                    "max_scene_mismatch": 6000.0,
                    "foreign_fraction": 0.1,
                    "first_sample": 800_000,
                }
            ),
        ),
        "light-2026-12-tenth-edge": Preset(
            "a tenth stage from the stage-7 default: 15 % of the objects pasted from other "
            "photos lit alike by grey-edge (so a blue beach also takes donors in neutral light)",
            MappingProxyType(TENTH),
        ),
        "light-2026-12-tenth-edge-third": Preset(
            "light-2026-12-tenth-edge with 30 % of the objects pasted, on composites of their own",
            MappingProxyType({**TENTH, "foreign_fraction": 0.3, "first_sample": 1_000_000}),
        ),
        "light-2026-12-eleventh-edge": Preset(
            "an eleventh stage from the stage-7 default: 8 % of the objects pasted from other "
            "photos lit alike by grey-edge, for 100 minutes",
            MappingProxyType(ELEVENTH),
        ),
        "light-2026-12-twelfth-edge": Preset(
            "a twelfth stage: the eleventh's recipe again from its best.pt, 90 minutes on new "
            "composites",
            MappingProxyType(TWELFTH),
        ),
        "light-2026-12-thirteenth-edge": Preset(
            "a thirteenth stage: the same recipe again from the twelfth's best.pt, 95 minutes on "
            "new composites",
            MappingProxyType(THIRTEENTH),
        ),
        "light-2026-12-fourteenth-horizon": Preset(
            "a fourteenth stage: the twelfth's recipe from its best.pt with 5 % sky "
            "replacements, 80 minutes on new composites",
            MappingProxyType(FOURTEENTH),
        ),
        "light-2026-12-fifteenth-vivid": Preset(
            "a fifteenth stage: the fourteenth's recipe from its best.pt with 12 % pasted "
            "objects, most coloured ones made vivid first, 70 minutes on new composites",
            MappingProxyType(FIFTEENTH),
        ),
        "light-2026-12-sixteenth-transfer": Preset(
            "a sixteenth stage: the fifteenth's recipe from the stage-15 default with the "
            "transfer family drawn 55 % of the time, 60 minutes on new composites",
            MappingProxyType(SIXTEENTH),
        ),
        "light-2026-12-objects-smooth": Preset(
            "light-2026-12-objects with PCT-Net's smoothness penalty (0.1)",
            MappingProxyType({**OBJECTS, "smooth_weight": 0.1}),
        ),
    }
)


def runs_dir() -> Path:
    """The runs folder that ``{runs}`` stands for."""
    env = os.environ.get(RUNS_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir()) / "harmonize-runs"


def expand_path(text: str) -> str:
    """``text`` with ``{runs}`` replaced by the runs folder and ``~`` expanded."""
    return str(Path(text.replace("{runs}", str(runs_dir()))).expanduser())

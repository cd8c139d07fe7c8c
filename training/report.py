"""Markdown for ``docs/weights.md`` from a checkpoint and an evaluation summary.

``python -m training report CHECKPOINT --summary eval/summary.json --fill docs/weights.md``
rewrites the text between ``<!-- report:start -->`` and ``<!-- report:end -->`` in that file, so
the documented numbers always come from the files they describe. ``--summary`` may be given
several times as ``LABEL=PATH`` (one validation section per set, titled with its label).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

from training.checkpoint import load_checkpoint
from training.evaluate import format_table

START, END = "<!-- report:start -->", "<!-- report:end -->"


def _eval_events(log: Path) -> list[dict[str, Any]]:
    if not log.is_file():
        return []
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e for e in events if e.get("event") == "eval"]


def labelled(text: str) -> tuple[str | None, Path]:
    """``LABEL=PATH`` -> ``(LABEL, PATH)``; a plain path has no label."""
    label, sep, path = text.partition("=")
    return (label, Path(path)) if sep and label else (None, Path(text))


def report(
    checkpoint: str | Path,
    summaries: list[tuple[str | None, Path]],
    *,
    contact_sheets: list[str] | None = None,
    note: str | None = None,
) -> str:
    """The "Training run" section and one "Validation" section per ``(label, summary.json)``
    (the contact sheets are named under the last), as Markdown."""
    if not summaries:
        raise ValueError("report needs at least one evaluation summary")
    ck = load_checkpoint(checkpoint)
    cfg = ck["config"]
    arms = ck.get("soup", [])
    where = ", a weight soup of the runs below" if arms else f" of `{cfg['out']}`"
    samples, elapsed = ck["samples"], float(ck["elapsed"])
    lines = [
        "### Training run",
        "",
        f"- checkpoint: `{Path(checkpoint).name}`{where}, EMA weights, "
        f"report written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- variant `{ck['variant']}`"
        + (f" with overrides {cfg['model_overrides']}" if cfg.get("model_overrides") else ""),
        f"- {ck['step']} steps x batch {cfg['batch_size']} x accumulation {cfg['accum']} = "
        f"{samples} samples, {elapsed / 60:.0f} min of training on a shared 2-core CPU "
        f"({samples / max(elapsed, 1e-9):.1f} samples/s on average)",
        f"- Adam, LR {cfg['lr']:g} constant for {cfg['const_fraction']:.0%} of the time budget "
        f"({(cfg.get('time_budget') or 0) / 60:.0f} min) then linear to "
        f"{cfg['final_lr_fraction']:g}; EMA {cfg['ema_decay']}; losses fMSE A_min "
        f"{cfg['hr_min_area']:g} (crops of <= {cfg['data']['max_side']} px) + "
        f"{cfg['lr_weight']:g} x fMSE A_min {cfg['lr_min_area']:g} (256 x 256); seed {cfg['seed']}",
    ]
    if note:
        lines.append(f"- **{note}**")
    if arms:  # steps, samples and time above are the sums over the arms; LR: the first's
        lines.append(
            "- weight soup (`python -m training soup`) of "
            + " + ".join(
                f"{a['weight']:g} x `{a['file']}` of `{a['run']}` ({a['steps']} steps, "
                f"{a['samples']} samples, {a['training_seconds'] / 60:.0f} min)"
                for a in arms
            )
        )
    # Evaluations up to this checkpoint; a resumed run may repeat a step (keep the last one).
    # A soup's curve is none of its arms'.
    log = Path(cfg["out"]) / "train.jsonl"
    by_step = {} if arms else {e["step"]: e for e in _eval_events(log)}
    evals = [by_step[s] for s in sorted(by_step) if s <= ck["step"]]
    if evals:
        curve = ", ".join(f"{e['step']}: {e['ema']['fmse']:.0f}" for e in evals)
        base = evals[-1]
        lines.append(
            f"- EMA fMSE on the {base['ema']['n']} in-training validation composites by step: "
            f"{curve} (composite {base['composite']['fmse']:.0f}, classical "
            f"{base['classical']['fmse']:.0f})"
        )
    for k, (label, path) in enumerate(summaries, start=1):
        obj = json.loads(Path(path).read_text())
        sheets = contact_sheets if k == len(summaries) else None
        lines += ["", *_validation(obj, sheets, label)]
    return "\n".join(lines) + "\n"


def _validation(
    obj: dict[str, Any], contact_sheets: list[str] | None, label: str | None = None
) -> list[str]:
    """A "Validation" section: the evaluation summary's tables and the targets."""
    lines = [
        f"### Validation: {label}" if label else "### Validation",
        "",
        f"{obj.get('n', '?')} synthetic composites from the **held-out photos** (never trained "
        f"on), full resolution (longer side <= {obj.get('max_side') or 'as is'}), metrics of "
        "the official evaluation (0..255, unrounded prediction) plus the error of the object's "
        "mean colour. `composite` = doing nothing, `classical` = "
        "`layer_harmonizer.color_stats.classical_transfer` (per-channel mean/std match to the "
        "background), `hindsight` = the per-channel gain + offset fitted on the object against "
        "the truth (a ceiling for global corrections, not a method). Regenerate with "
        "`python -m training evaluate` (see `docs/training.md`)."
        + (
            f" `model` applies the damping the weights ship with (K = {obj['damping']:g}: "
            "only m² / (m² + K²) of a change of foreground MSE m is applied)."
            if obj.get("damping")
            else ""
        ),
        "",
        *targets(obj),
        "",
        format_table(obj["by_kind"], "recipe family"),
    ]
    for key, title in (("by_recipe", "recipe strength"), ("by_severity", "composite error")):
        if key in obj:
            rest = {k: v for k, v in obj[key].items() if k != "All"}
            lines += ["", format_table(rest, title)]
    lines += ["", format_table(dict(obj["by_subset"].items()), "photo source")]
    if contact_sheets:
        lines += [
            "",
            "Contact sheets (composite / classical / ours / ground truth): "
            + ", ".join(f"`{s}`" for s in contact_sheets),
        ]
    return lines


def targets(obj: dict[str, Any]) -> list[str]:
    """Bullet lines: the model's fMSE against the targets of the default weights (overall at
    most half the composite's; below both baselines in every family; within 15 % of the
    composite on the mildest tenth)."""

    def fmse(table: dict[str, Any], group: str, method: str) -> float:
        return float(table[group][method]["fmse"])

    if "model" not in obj["by_kind"]["All"]:
        return []
    kinds, out = obj["by_kind"], []
    ratio = fmse(kinds, "All", "model") / fmse(kinds, "All", "composite")
    out.append(f"- overall: model fMSE = {ratio:.0%} of the composite's (target <= 50 %)")
    for kind in (k for k in kinds if k != "All"):
        m, c, r = (fmse(kinds, kind, x) for x in ("model", "composite", "classical"))
        ok = "meets" if m < min(c, r) else "**misses**"
        out.append(
            f"- {kind}: model {m:.0f} vs composite {c:.0f} and classical {r:.0f} ({ok} "
            '"below both")'
        )
    if "by_severity" in obj and "mildest tenth" in obj["by_severity"]:
        sev = obj["by_severity"]
        m, c = fmse(sev, "mildest tenth", "model"), fmse(sev, "mildest tenth", "composite")
        out.append(
            f"- mildest tenth: model {m:.1f} vs composite {c:.1f} ({m / c - 1:+.0%}; target "
            "within +15 %)"
        )
    return out


def fill(doc: str | Path, markdown: str) -> None:
    """Replace the text between the report markers of ``doc`` with ``markdown``."""
    path = Path(doc)
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path} has no {START} ... {END} markers")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    path.write_text(pattern.sub(lambda _m: f"{START}\n{markdown}{END}", text))

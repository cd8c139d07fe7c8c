"""Command line: ``python -m training COMMAND``: train, presets, evaluate, export, soup,
make-synthetic, report or resize.

Run ``python -m training <command> --help`` for the options; docs/training.md has recipes. The
options of ``train`` (and the data options of ``make-synthetic``) are built from the config
dataclasses (:mod:`training.options`); ``--preset NAME`` starts from a named recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from training import options
from training.config import parse_side

DAMPING_HELP = (
    "apply only m^2 / (m^2 + K^2) of a prediction whose change to the object, measured on the "
    "network input, has foreground MSE m (0..255 scale); 0 = off"
)


def parse_damping(text: str) -> float:
    """``--damping K``: 0 (off) or a positive foreground MSE."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"not a damping: {text!r} (0 = off, or e.g. 200)")
    return value


def cmd_train(a: argparse.Namespace) -> int:
    from training.train import train

    cfg = options.train_config(a)
    options.check_init_weights(cfg)
    print(json.dumps(train(cfg)))
    return 0


def cmd_presets(_a: argparse.Namespace) -> int:
    print(options.describe_presets())
    return 0


def _evaluation_set(a: argparse.Namespace) -> list[Any]:
    """The composites of ``--folder`` and ``--iharmony4``, downscaled to ``--max-side``."""
    from training.data import folder_triplets, iharmony4
    from training.data.augment import limit_size

    triplets = []
    for root in a.folders:
        triplets += folder_triplets(root)
    if a.iharmony4:
        entries = iharmony4.list_entries(a.iharmony4, a.split, a.subsets or None)
        if a.limit:
            entries = entries[: a.limit]
        loaded = [iharmony4.load_entry(e) for e in entries]
        triplets += iharmony4.attach_recipes(a.iharmony4, loaded)
    if not triplets:
        raise SystemExit("nothing to evaluate: give --iharmony4 ROOT and/or --folder DIR")
    return [limit_size(t, a.max_side) for t in triplets]


def _evaluated_model(a: argparse.Namespace, device: str) -> Any:
    """The network of ``--checkpoint`` (EMA unless ``--raw``) or ``--weights``; None: neither."""
    if a.checkpoint:
        from training.checkpoint import load_checkpoint, model_from_checkpoint

        return model_from_checkpoint(load_checkpoint(a.checkpoint), ema=not a.raw).to(device)
    if a.weights:
        from layer_harmonizer.pipeline import load_model

        return load_model(a.weights, device=device)
    return None


def cmd_evaluate(a: argparse.Namespace) -> int:
    import torch

    from layer_harmonizer.pipeline import resolve_device
    from training import evaluate as E

    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    triplets = _evaluation_set(a)
    model = _evaluated_model(a, device)
    if model is not None and a.damping is not None:
        model.config = dataclasses.replace(model.config, damping=a.damping)
    methods = ["composite", "classical", *(["model"] if model is not None else [])]
    if all(t.real is not None for t in triplets):
        methods.append("hindsight")  # the ceiling of a global per-channel correction
    sheet = E.ContactSheet(rows_per_sheet=a.sheet_rows, max_rows=a.sheet_max)
    picked = a.figure.split(",") if a.figure else []
    figure = E.ContactSheet(
        tile_height=320, rows_per_sheet=len(picked) or 1, methods=("model",), only=set(picked)
    )

    def keep(t: Any, outs: dict[str, Any]) -> None:
        sheet.add(t, outs)
        figure.add(t, outs)

    rows = E.evaluate(
        triplets,
        model,
        methods=methods,
        device=device,
        with_ssim=not a.no_ssim,
        keep=keep,
        progress=True,
    )
    out = Path(a.out)
    files = sheet.save(out / "contact_sheet.png")
    if figure.rows:
        files += figure.save(out / "before_after.png")
    meta = {
        "data": [*a.folders, *([a.iharmony4] if a.iharmony4 else [])],
        "weights": a.weights or a.checkpoint,
        "max_side": a.max_side,
        "n": len(triplets),
        "damping": model.config.damping if model is not None else None,
    }
    if rows:
        print(E.write_summary(rows, out, meta))
    else:
        print(f"no ground truth: wrote contact sheets only ({len(triplets)} composites)")
    print("contact sheets:", ", ".join(map(str, files)))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from training.export import export

    meta = export(
        a.checkpoint,
        a.out,
        use_ema=not a.raw,
        half=not a.fp32,
        summary=a.summary,
        damping=a.damping,
    )
    print(json.dumps({k: meta[k] for k in ("variant", "steps", "sha256", "dtype")}))
    return 0


def cmd_soup(a: argparse.Namespace) -> int:
    from training.soup import soup

    try:
        weights = [float(w) for w in a.weights.split(",")] if a.weights else None
        record = soup(a.checkpoints, a.out, weights)
    except ValueError as exc:
        raise SystemExit(f"soup: {exc}") from None
    print(json.dumps(record))
    return 0


def cmd_make_synthetic(a: argparse.Namespace) -> int:
    from training.data import synthetic_split
    from training.data.synthetic import CompositeGenerator, write_triplets

    spec = options.data_spec(a)
    train_p, val_p, train_b, val_b, split = synthetic_split(spec)
    photos, bank = (val_p, val_b) if a.split == "val" else (train_p, train_b)
    val = a.split == "val"
    gen = CompositeGenerator.from_spec(photos, bank, spec, val=val)
    root = write_triplets(
        [gen.triplet(i) for i in range(a.count)],
        a.out,
        f"SYN_{'test' if a.split == 'val' else 'train'}.txt",
    )
    split.save(root / "split.json")
    print(f"wrote {a.count} composites to {root}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from training.report import fill, labelled, report

    md = report(a.checkpoint, [labelled(s) for s in a.summary], contact_sheets=a.sheet, note=a.note)
    if a.fill:
        fill(a.fill, md)
        print(f"updated {a.fill}")
    else:
        print(md)
    return 0


def cmd_resize(a: argparse.Namespace) -> int:
    from training.data.iharmony4 import resize_tree

    print(f"wrote {resize_tree(a.src, a.dst, a.max_side, a.quality)} images to {a.dst}")
    return 0


def _add_train(sub: Any) -> None:
    t = sub.add_parser("train", help="train (or resume) a network")
    options.add_train_options(t)
    t.set_defaults(func=cmd_train)


def _add_presets(sub: Any) -> None:
    ps = sub.add_parser("presets", help="list the named training recipes (train --preset NAME)")
    ps.set_defaults(func=cmd_presets)


def _add_evaluate(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="metrics + baselines + contact sheet")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--weights", help="a weights file (harmonize format or official)")
    src.add_argument("--checkpoint", help="a training checkpoint (EMA weights unless --raw)")
    e.add_argument("--raw", action="store_true")
    e.add_argument(
        "--iharmony4", help="iHarmony4 root (or one subset folder, or a make-synthetic output)"
    )
    e.add_argument("--split", default="test")
    e.add_argument("--subsets", nargs="*", default=[])
    e.add_argument("--limit", type=int, default=0, help="first N entries only")
    e.add_argument(
        "--folder",
        dest="folders",
        action="append",
        default=[],
        help="composite/ + mask/ [+ real/] folder (repeatable)",
    )
    e.add_argument(
        "--max-side",
        type=parse_side,
        default=None,
        help="downscale inputs first (default: full resolution)",
    )
    e.add_argument("--out", required=True)
    e.add_argument("--damping", type=parse_damping, help=DAMPING_HELP + " (default: the network's)")
    e.add_argument("--device", default="auto")
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--no-ssim", action="store_true")
    e.add_argument("--sheet-rows", type=int, default=16)
    e.add_argument("--sheet-max", type=int, default=48)
    e.add_argument(
        "--figure",
        default="",
        metavar="NAME,NAME",
        help="also write before_after.png: these composites (file stems) and the model's output",
    )
    e.set_defaults(func=cmd_evaluate)


def _add_export(sub: Any) -> None:
    x = sub.add_parser("export", help="checkpoint -> release weights file")
    x.add_argument("checkpoint")
    x.add_argument("out", help="e.g. backend/layer_harmonizer/weights/default.pt")
    x.add_argument("--summary", help="summary.json of an evaluate run, stored as metrics")
    x.add_argument("--raw", action="store_true", help="export raw weights, not the EMA")
    x.add_argument("--fp32", action="store_true", help="keep float32 (default fp16)")
    x.add_argument(
        "--damping", type=parse_damping, help=DAMPING_HELP + " (default: the checkpoint's)"
    )
    x.set_defaults(func=cmd_export)


def _add_soup(sub: Any) -> None:
    sp = sub.add_parser("soup", help="average the EMA weights of arms from the same start")
    sp.add_argument(
        "checkpoints",
        nargs="+",
        help="two or more training checkpoints (their starting weights may be one more arm, "
        "also as a weights file)",
    )
    sp.add_argument("--out", required=True, help="the soup's checkpoint (for evaluate/export)")
    sp.add_argument("--weights", help="comma-separated, one per checkpoint (default: equal)")
    sp.set_defaults(func=cmd_soup)


def _add_make_synthetic(sub: Any) -> None:
    s = sub.add_parser("make-synthetic", help="write synthetic composites (iHarmony4 layout)")
    options.add_preset(s)
    options.add_data_options(s, set())
    s.add_argument("--split", choices=("train", "val"), default="val")
    s.add_argument("--count", type=int, default=400)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_make_synthetic)


def _add_report(sub: Any) -> None:
    rp = sub.add_parser("report", help="Markdown run + validation report (docs/weights.md)")
    rp.add_argument("checkpoint")
    rp.add_argument(
        "--summary",
        action="append",
        required=True,
        metavar="[LABEL=]PATH",
        help="summary.json of an evaluate run (repeatable; LABEL titles its section)",
    )
    rp.add_argument("--sheet", action="append", default=[], help="contact sheet to mention")
    rp.add_argument("--fill", help="rewrite the report markers of this Markdown file")
    rp.add_argument("--note", help="a bold remark added to the run description")
    rp.set_defaults(func=cmd_report)


def _add_resize(sub: Any) -> None:
    r = sub.add_parser("resize", help="pre-resize an iHarmony4 subset (HAdobe5k) to <= 2048")
    r.add_argument("src")
    r.add_argument("dst")
    r.add_argument("--max-side", type=int, default=2048)
    r.add_argument("--quality", type=int, default=90)
    r.set_defaults(func=cmd_resize)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (
        _add_train,
        _add_presets,
        _add_evaluate,
        _add_export,
        _add_soup,
        _add_make_synthetic,
        _add_report,
        _add_resize,
    ):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m training train|evaluate|export|make-synthetic|report|resize``.

Run ``python -m training <command> --help`` for the options; docs/training.md has recipes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from training.data import DataSpec, default_shared_data


def _duration(text: str) -> float:
    """``90``, ``90s``, ``80m``, ``2.5h`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip().lower()
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 45m, 2h)") from None


def _side(text: str) -> int | None:
    return None if text.lower() in ("none", "0", "full") else int(text)


def _add_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=("synthetic", "iharmony4"), default="synthetic")
    g.add_argument(
        "--shared-data",
        default=None,
        help="the ../shared/data folder (default: beside the repo, if present)",
    )
    g.add_argument("--no-shared-data", action="store_true", help="do not use ../shared/data")
    g.add_argument(
        "--photos",
        action="append",
        default=[],
        metavar="DIR[:MASKDIR]",
        help="extra photo folder, optionally with object masks named <stem>*.png",
    )
    g.add_argument(
        "--mask-bank",
        action="append",
        default=[],
        metavar="DIR",
        help="folder of object-shaped masks to place on photos",
    )
    g.add_argument("--iharmony4", default=None, metavar="ROOT", help="iHarmony4 root")
    g.add_argument("--subsets", nargs="*", default=[], help="iHarmony4 subsets (default all)")
    g.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of whole photos held out (synthetic)"
    )
    g.add_argument("--val-count", type=int, default=400, help="validation composites")
    g.add_argument(
        "--max-side",
        type=_side,
        default=352,
        help="longer side of training crops (none = full resolution)",
    )
    g.add_argument("--val-max-side", type=_side, default=512)
    g.add_argument(
        "--max-bank-fill",
        type=float,
        default=1.0,
        help="skip mask-bank shapes filling more of their bounding box (0.9 drops boxes)",
    )
    g.add_argument(
        "--identity-fraction",
        type=float,
        default=0.0,
        help="share of training composites left unchanged (a paste that already fits)",
    )
    g.add_argument("--seed", type=int, default=0)


def _spec(a: argparse.Namespace) -> DataSpec:
    shared = None
    if not a.no_shared_data and a.data == "synthetic":
        shared = a.shared_data or (
            str(default_shared_data()) if default_shared_data().is_dir() else None
        )
    return DataSpec(
        kind=a.data,
        shared_data=shared,
        photos=tuple(a.photos),
        mask_banks=tuple(a.mask_bank),
        iharmony4=a.iharmony4,
        subsets=tuple(a.subsets),
        val_fraction=a.val_fraction,
        val_count=a.val_count,
        max_side=a.max_side,
        val_max_side=a.val_max_side,
        seed=a.seed,
        max_bank_fill=a.max_bank_fill,
        identity_fraction=a.identity_fraction,
    )


def cmd_train(a: argparse.Namespace) -> int:
    from training.train import TrainConfig, train

    overrides = {}
    for item in a.override:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    cfg = TrainConfig(
        out=a.out,
        variant=a.variant,
        model_overrides=overrides,
        data=_spec(a),
        batch_size=a.batch_size,
        accum=a.accum,
        lr=a.lr,
        const_fraction=a.const_fraction,
        final_lr_fraction=a.final_lr_fraction,
        ema_decay=a.ema_decay,
        max_steps=a.max_steps,
        time_budget=a.time_budget,
        seed=a.seed,
        device=a.device,
        workers=a.workers,
        threads=a.threads,
        identity_init=not a.official_init,
        init_weights=a.init_weights,
        lr_weight=a.lr_weight,
        relative_tau=a.relative_tau,
        precision=a.precision,
        log_every=a.log_every,
        eval_every=a.eval_every,
        ckpt_minutes=a.ckpt_minutes,
        resume=not a.no_resume,
        progress=not a.no_progress,
    )
    print(json.dumps(train(cfg)))
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    import torch

    from backend.pipeline import load_model, resolve_device
    from training import evaluate as E
    from training import iharmony4
    from training.augment import limit_size
    from training.data import folder_triplets

    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
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
    triplets = [limit_size(t, a.max_side) for t in triplets]
    model = None
    methods = ["composite", "classical"]
    if a.weights or a.checkpoint:
        methods.append("model")
        if a.checkpoint:
            from training.train import load_checkpoint, model_from_checkpoint

            ck = load_checkpoint(a.checkpoint)
            model = model_from_checkpoint(ck, ema=not a.raw).to(device)
        else:
            model = load_model(a.weights, device=device)
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
    }
    if rows:
        print(E.write_summary(rows, out, meta))
    else:
        print(f"no ground truth: wrote contact sheets only ({len(triplets)} composites)")
    print("contact sheets:", ", ".join(map(str, files)))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from training.export import export

    meta = export(a.checkpoint, a.out, use_ema=not a.raw, half=not a.fp32, summary=a.summary)
    print(json.dumps({k: meta[k] for k in ("variant", "steps", "sha256", "dtype")}))
    return 0


def cmd_make_synthetic(a: argparse.Namespace) -> int:
    from training.data import VAL_SEED_OFFSET, synthetic_split
    from training.synthetic import CompositeGenerator, write_triplets

    spec = _spec(a)
    train_p, val_p, train_b, val_b, split = synthetic_split(spec)
    photos, bank = (val_p, val_b) if a.split == "val" else (train_p, train_b)
    val = a.split == "val"
    gen = CompositeGenerator(
        photos,
        bank,
        max_bank_fill=a.max_bank_fill,
        seed=spec.seed + (VAL_SEED_OFFSET if val else 0),
        max_side=a.val_max_side if val else a.max_side,
        augment=not val,
    )
    root = write_triplets(
        [gen.triplet(i) for i in range(a.count)],
        a.out,
        f"SYN_{'test' if a.split == 'val' else 'train'}.txt",
    )
    split.save(root / "split.json")
    print(f"wrote {a.count} composites to {root}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from training.report import fill, report

    md = report(a.checkpoint, a.summary, contact_sheets=a.sheet, note=a.note)
    if a.fill:
        fill(a.fill, md)
        print(f"updated {a.fill}")
    else:
        print(md)
    return 0


def cmd_resize(a: argparse.Namespace) -> int:
    from training.iharmony4 import resize_tree

    print(f"wrote {resize_tree(a.src, a.dst, a.max_side, a.quality)} images to {a.dst}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or resume) a network")
    t.add_argument("--out", required=True, help="checkpoint/log folder (resumes from last.pt)")
    t.add_argument("--variant", default="aict-light")
    t.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="change a field of the variant's AICTConfig, e.g. color_prior=false",
    )
    _add_data(t)
    t.add_argument(
        "--init-weights",
        metavar="PATH",
        help="start a new run from these weights (a weights file or a checkpoint's EMA)",
    )
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--accum", type=int, default=1, help="gradient accumulation steps")
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument(
        "--const-fraction",
        type=float,
        default=0.5,
        help="share of progress at constant LR before the linear decay",
    )
    t.add_argument("--final-lr-fraction", type=float, default=0.0)
    t.add_argument("--ema-decay", type=float, default=0.999)
    t.add_argument("--max-steps", type=int, default=100_000)
    t.add_argument(
        "--time-budget",
        type=_duration,
        default=None,
        help="total training time over all resumed runs, e.g. 80m, 3h",
    )
    t.add_argument("--device", default="auto")
    t.add_argument("--workers", type=int, default=1, help="data-loading processes")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument(
        "--official-init",
        action="store_true",
        help="the official N(0, 0.02) init instead of identity/prior init",
    )
    t.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="network forward in bf16 autocast where a start-up measurement shows it faster",
    )
    t.add_argument(
        "--lr-weight",
        type=float,
        default=0.01,
        help="weight of the 256 x 256 loss term (official 0.01; 0 skips that branch)",
    )
    t.add_argument(
        "--relative-tau",
        type=float,
        default=0.0,
        help="weight each image's loss by sqrt(REF / (composite fMSE + TAU)), [0, 1] units "
        "(0: the official unweighted loss); protects pastes that are already good",
    )
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--ckpt-minutes", type=float, default=5.0)
    t.add_argument("--no-resume", action="store_true")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

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
        type=_side,
        default=None,
        help="downscale inputs first (default: full resolution)",
    )
    e.add_argument("--out", required=True)
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

    x = sub.add_parser("export", help="checkpoint -> release weights file")
    x.add_argument("checkpoint")
    x.add_argument("out", help="e.g. backend/weights/default.pt")
    x.add_argument("--summary", help="summary.json of an evaluate run, stored as metrics")
    x.add_argument("--raw", action="store_true", help="export raw weights, not the EMA")
    x.add_argument("--fp32", action="store_true", help="keep float32 (default fp16)")
    x.set_defaults(func=cmd_export)

    s = sub.add_parser("make-synthetic", help="write synthetic composites (iHarmony4 layout)")
    _add_data(s)
    s.add_argument("--split", choices=("train", "val"), default="val")
    s.add_argument("--count", type=int, default=400)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_make_synthetic)

    rp = sub.add_parser("report", help="Markdown run + validation report (docs/weights.md)")
    rp.add_argument("checkpoint")
    rp.add_argument("--summary", required=True, help="summary.json of an evaluate run")
    rp.add_argument("--sheet", action="append", default=[], help="contact sheet to mention")
    rp.add_argument("--fill", help="rewrite the report markers of this Markdown file")
    rp.add_argument("--note", help="a bold remark added to the run description")
    rp.set_defaults(func=cmd_report)

    r = sub.add_parser("resize", help="pre-resize an iHarmony4 subset (HAdobe5k) to <= 2048")
    r.add_argument("src")
    r.add_argument("dst")
    r.add_argument("--max-side", type=int, default=2048)
    r.add_argument("--quality", type=int, default=90)
    r.set_defaults(func=cmd_resize)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

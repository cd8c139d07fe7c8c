"""``harmonize run`` (one composite, or every pair in a folder, in-process or through the
daemon) and ``harmonize info``.

What a user waits for is kept short: torch is imported only to load a model in this process
(never for ``--daemon``, whose work the daemon does, nor for a refused argument or file); the
garbage collector is frozen once the model is loaded; and a successful run ends its process as
soon as the output is written and fsynced, without the interpreter's clean-up
(:func:`layer_harmonizer.cli.end_process`). At most the image, its mask and the result are
held at once (the result is written reordered in place).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import os
import time
from pathlib import Path
from typing import Any

from layer_harmonizer._version import __version__
from layer_harmonizer.cli import add_model_options, end_process

log = logging.getLogger("harmonize")


def add_commands(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="harmonize one composite, or every pair in a folder",
        description=(
            "Harmonize COMPOSITE using MASK and write OUT. With a folder instead of a file, "
            "harmonize every pair in it (iHarmony4 layout, or PCT-Net naming x.jpg + "
            "x_mask.png) into the folder OUT as <name>_harm.<ext>."
        ),
    )
    run.add_argument("composite", type=Path, help="composite image, or a folder of pairs")
    run.add_argument("mask", type=Path, nargs="?", help="mask image (omit for a folder)")
    run.add_argument("-o", "--output", type=Path, required=True, help="output file or folder")
    run.add_argument("--strength", type=float, default=1.0, help="0 = unchanged .. 1 = full")
    run.add_argument("--ext", help="output format for folders, e.g. png (default: the input's)")
    run.add_argument("--max-pixels", type=int, help="largest image accepted (pixels)")
    run.add_argument(
        "--daemon",
        action="store_true",
        help="send the work to the running daemon instead of loading a model (a daemon is "
        "started with --weights/--device if none is running)",
    )
    add_model_options(run)
    run.set_defaults(func=cmd_run)

    info = sub.add_parser("info", help="show devices, variants, weights and file locations")
    add_model_options(info)
    info.set_defaults(func=cmd_info)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and a.samefile(b))
    except OSError:
        return False


def _load(args: argparse.Namespace) -> Any:
    """The model (in-process) or a daemon client (``--daemon``). Everything imported by then
    stays loaded, so a process of its own freezes the garbage collector here: its passes over
    torch's ~170,000 objects cost ~65 ms each, several times per image."""
    model = _connect(args) if args.daemon else _load_model(args)
    if args.own_process:
        gc.freeze()
    return model


def _connect(args: argparse.Namespace) -> Any:
    """A client of the running daemon, which is started if none runs."""
    from layer_harmonizer.wire.client import ensure_daemon

    extra = [] if args.weights is None else ["--weights", str(args.weights)]
    extra += [] if args.variant is None else ["--variant", args.variant]
    extra += ["--device", args.device, "--precision", args.precision]
    client = ensure_daemon(args=extra)
    atexit.register(client.close)
    info = client.hello()  # --weights/--device/--precision apply to a daemon started here
    log.info("daemon pid %s: %s on %s", info["pid"], info["variant"], info["device"])
    return client


def _load_model(args: argparse.Namespace) -> Any:
    """The network, loaded in this process (this is where torch is imported)."""
    from layer_harmonizer.pipeline import load_model

    model = load_model(
        args.weights, variant=args.variant, device=args.device, precision=args.precision
    )
    meta = model.metadata
    log.info("weights %s (%s)", meta.get("path"), meta.get("variant"))
    log.info("network precision %s: %s", meta.get("precision"), meta.get("precision_reason"))
    return model


def _run_one(args: argparse.Namespace, model: Any, composite: Path, mask: Path, out: Path) -> None:
    from layer_harmonizer.errors import InputError
    from layer_harmonizer.image_files import read_image, read_mask, write_image

    for source in (composite, mask):
        if _same_file(out, source):
            raise InputError(f"output {out} would overwrite the input {source}")
    rgb, alpha = read_image(composite, max_pixels=args.max_pixels)
    selection = read_mask(mask, max_pixels=args.max_pixels)
    if args.daemon:
        result = _harmonize_remote(model, rgb, selection, args)
    else:
        from layer_harmonizer.pipeline import harmonize

        result = harmonize(
            rgb,
            selection,
            model=model,
            strength=args.strength,
            lut_backend=args.lut_backend,
            max_pixels=args.max_pixels,
        )
    del rgb, selection  # before the writer's buffers: image + mask + result at most
    write_image(out, result, alpha, in_place=True)


def _harmonize_remote(client: Any, rgb: Any, mask: Any, args: argparse.Namespace) -> Any:
    """The whole composite through the daemon, as one opaque layer (the composite) with the
    mask as its selection over a backdrop that is the composite too, and no crop: the result
    equals in-process :func:`layer_harmonizer.pipeline.harmonize`. Frames keep the files'
    dtypes (a uint8 mask travels as uint8). Returns ``(H, W, 3)``, possibly read-only."""
    import numpy as np

    from layer_harmonizer.arrays import check_image, check_strength, validate_mask
    from layer_harmonizer.errors import InputError
    from layer_harmonizer.wire.client import DaemonError
    from layer_harmonizer.wire.protocol import ErrorCode, Pixels

    image = check_image(rgb, max_pixels=args.max_pixels, what="composite")
    selection = validate_mask(mask, image.shape[:2])
    if check_strength(args.strength) == 0 or not selection.any():
        return image
    pixels = Pixels.of(image)
    options = {"strength": args.strength, "crop_margin": None, "output": "rgb"}
    try:
        try:
            reply = client.harmonize_layer(pixels, Pixels.of(selection), pixels, **options)
        except DaemonError as exc:  # a 2.0 daemon: for an opaque layer, mask = selection
            if exc.code != ErrorCode.UNSUPPORTED_VERSION:
                raise
            reply = client.harmonize(pixels, Pixels.of(selection), pixels, **options)
    except DaemonError as exc:
        raise InputError(f"daemon: {exc.message}") from None
    result = reply.pixels
    return np.frombuffer(result.data, dtype=result.dtype).reshape(result.shape)


def cmd_run(args: argparse.Namespace) -> int:
    """``harmonize run``: one pair, or a folder of pairs. Any file system error (permissions, a
    full disk) that the readers and writers did not already name becomes a one-line error."""
    try:
        code = _run(args)
    except OSError as exc:
        raise _file_error(exc, args.composite) from None
    if code == 0 and args.own_process:
        end_process()  # every output is written, fsynced and renamed into place
    return code


def _file_error(exc: OSError, fallback: Path) -> Exception:
    """``exc`` as a one-line :class:`FileError` naming its file (``fallback`` if it has none)."""
    from layer_harmonizer.errors import FileError

    where = fallback if exc.filename is None else Path(os.fsdecode(exc.filename))
    return FileError.from_os_error(exc, where, "access")


def _run(args: argparse.Namespace) -> int:
    from layer_harmonizer.arrays import check_strength
    from layer_harmonizer.errors import InputError

    check_strength(args.strength)  # refused before anything is read or loaded
    if args.composite.is_dir():
        return _run_folder(args)
    if args.mask is None:
        raise InputError("MASK is required when COMPOSITE is a file")
    from layer_harmonizer.image_files import probe_image

    for path in (args.composite, args.mask):  # refuse a bad file before loading the model
        probe_image(path, max_pixels=args.max_pixels)
    model = _load(args)
    try:
        start = time.perf_counter()
        _run_one(args, model, args.composite, args.mask, args.output)
    finally:
        _release(args, model)
    print(f"wrote {args.output} ({time.perf_counter() - start:.2f} s)")
    return 0


def _release(args: argparse.Namespace, model: Any) -> None:
    """Close the daemon client (at once: a successful run ends without atexit handlers)."""
    if args.daemon:
        model.close()


def _run_folder(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from layer_harmonizer.errors import FileError, HarmonizeError, InputError
    from layer_harmonizer.pairs import find_pairs, output_paths

    if args.mask is not None:
        raise InputError("give no MASK with a folder: masks are found by name")
    if _same_file(args.output, args.composite):
        raise InputError("the output folder must differ from the input folder")
    pairs, orphans = find_pairs(args.composite)
    for path in orphans:
        log.warning("no mask for %s; skipped", path)
    if not pairs:
        raise InputError(
            f"{args.composite}: no (composite, mask) pairs found (expected composite_images/ + "
            "masks/, or x.jpg beside x_mask.png)"
        )
    outputs = output_paths(pairs, args.output, f".{args.ext.lstrip('.')}" if args.ext else None)
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FileError.from_os_error(exc, args.output, "create the output folder") from None
    model = _load(args)
    failed, start = 0, time.perf_counter()
    jobs = list(zip(pairs, outputs, strict=True))
    try:
        for pair, out in tqdm(jobs, desc="harmonize", unit="img", disable=None):
            try:
                _run_one(args, model, pair.composite, pair.mask, out)
            except HarmonizeError as exc:  # this pair failed; the others still run
                failed += 1
                log.error("%s: %s", pair.composite, exc)
            except OSError as exc:
                failed += 1
                log.error("%s: %s", pair.composite, _file_error(exc, out))
    finally:
        _release(args, model)
    elapsed = time.perf_counter() - start
    print(
        f"harmonized {len(pairs) - failed} of {len(pairs)} images in {elapsed:.1f} s "
        f"({len(orphans)} without mask, {failed} failed) -> {args.output}"
    )
    return 1 if failed else 0


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from layer_harmonizer import paths
    from layer_harmonizer.diagnostics import weights_licence
    from layer_harmonizer.errors import WeightsError
    from layer_harmonizer.lut.backends import auto_backend, backend_choices
    from layer_harmonizer.model import VARIANTS, AICTNet
    from layer_harmonizer.model.weights import find_default_weights, load_weights
    from layer_harmonizer.pipeline import resolve_device
    from layer_harmonizer.precision import choose as choose_precision
    from layer_harmonizer.wire import about

    print(f"harmonize {__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"CUDA device: {cuda}")
    print(f"LUT backends: {', '.join(backend_choices())}")
    lut_device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    picked, why = auto_backend(lut_device)
    print(f"  auto picks {picked.name} for maps on the {lut_device} ({why})")
    print("variants:")
    for name, cfg in VARIANTS.items():
        count = sum(p.numel() for p in AICTNet(cfg).parameters())
        print(
            f"  {name:<11} {count / 1e6:5.2f} M params, {cfg.patch_size}px patches, "
            f"{(cfg.input_size // cfg.patch_size) ** 2} tokens, depth {cfg.depth}, "
            f"LUT grid {cfg.map_size}^2{', colour prior' if cfg.color_prior else ''}"
        )
    try:
        path = args.weights or find_default_weights()
        model, meta = load_weights(path, args.variant)
        digest = str(meta.get("sha256", "?"))[:12]
        print(f"weights: {path} (variant {meta.get('variant')}, sha256 {digest})")
        if meta.get("trained_on"):
            print(f"  trained on: {meta['trained_on']}")
        print(f"  licence: {weights_licence(Path(path), meta)}")
        if model.config.damping:
            print(
                f"  damping: {model.config.damping:g} (a change of foreground MSE m is applied "
                f"m² / (m² + {model.config.damping:g}²): pastes that fit are left nearly alone)"
            )
        model.metadata = meta
        choice = choose_precision(model, resolve_device(args.device), args.precision)
        print(f"  network precision: {choice.precision} ({choice.reason})")
    except WeightsError as exc:
        print(f"weights: none usable ({exc})")
    print(f"licence: {about.LICENCE}")
    for label, fn in (
        ("weights dir", paths.weights_dir),
        ("cache dir", paths.cache_dir),
        ("log dir", paths.log_dir),
        ("config dir", paths.config_dir),
        ("runtime dir", paths.runtime_dir),
    ):
        print(f"{label + ':':<13}{fn()}")
    return 0

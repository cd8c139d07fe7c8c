"""``harmonize`` command line: a thin adapter over :func:`layer_harmonizer.pipeline.harmonize`.

Only the standard library is imported at module level, so ``harmonize --version`` and
``--help`` answer at once; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from layer_harmonizer._version import __version__

log = logging.getLogger("harmonize")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", type=Path, help="weights file (default: the installed default)")
    p.add_argument("--variant", help="network variant the weights are for (checked)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (network and LUTs)")
    p.add_argument(
        "--lut-backend",
        default="auto",
        help="auto | cuda | cpu-kernel | torch (`harmonize info` says what auto picks)",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harmonize",
        description="Recolour a pasted object so it fits the photo (AICT harmonization).",
    )
    parser.add_argument("--version", action="version", version=f"harmonize {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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
    _add_model_options(run)
    run.set_defaults(func=cmd_run)

    info = sub.add_parser("info", help="show devices, variants, weights and file locations")
    _add_model_options(info)
    info.set_defaults(func=cmd_info)
    _add_daemon_commands(sub)
    _add_plugin_commands(sub)
    return parser


def _add_daemon_commands(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the daemon the plugins talk to (foreground)",
        description="Load the model once and answer plugin requests over ZeroMQ "
        "(protocol: docs/protocol.md). Stops on SIGTERM/SIGINT.",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="listen on TCP (always CURVE-encrypted) at this address instead of the local socket",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=0,
        help="listen on this TCP port (CURVE) instead of the local socket",
    )
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="listen on TCP (CURVE) and allow a --host that is not loopback",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        help="exit after this many idle seconds (0 = never)",
    )
    serve.add_argument("--log-level", default="INFO", help="DEBUG | INFO | WARNING | ERROR")
    serve.add_argument(
        "--log-file", type=Path, help="log file (default: daemon.log in the log dir)"
    )
    serve.add_argument(
        "--quiet", action="store_true", help="once serving, log to the file only (for detached use)"
    )
    _add_model_options(serve)
    serve.set_defaults(func=cmd_serve)

    for name, func, text in (
        ("ping", cmd_ping, "show the running daemon's versions, device and weights"),
        ("stop", cmd_stop, "ask the running daemon to shut down"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
        p.set_defaults(func=func)

    service = sub.add_parser(
        "install-service",
        help="write a systemd user unit that runs the daemon (Linux)",
        description="Write ~/.config/systemd/user/harmonize.service. Arguments after -- go to "
        "`harmonize serve`, e.g. `harmonize install-service -- --device cuda`.",
    )
    service.add_argument("--print", action="store_true", help="print the unit, write nothing")
    service.add_argument("--enable", action="store_true", help="systemctl --user enable --now")
    service.add_argument("serve_args", nargs="*", help="extra `harmonize serve` arguments")
    service.set_defaults(func=cmd_install_service)


def _add_plugin_commands(sub: Any) -> None:
    install = sub.add_parser(
        "install-plugin",
        help="install the plugin for a host application (gimp, krita)",
        description="Copy the plugin and the daemon client into the host's plug-in folder and "
        "make pyzmq + msgpack importable by the host's own Python (its packages when present, "
        "else wheels for its Python version and platform, unpacked into the plugin folder).",
    )
    install.add_argument("host", help="gimp | krita")
    install.add_argument("--gimp-dir", type=Path, help="GIMP profile folder (.../GIMP/3.0)")
    install.add_argument("--krita-dir", type=Path, help="Krita resource folder (holds pykrita)")
    install.add_argument("--kritarc", type=Path, help="Krita's settings file (to enable it)")
    install.add_argument("--plugin-dir", type=Path, help="exact folder to install into")
    install.add_argument(
        "--deps",
        default="auto",
        help="auto (vendor pyzmq/msgpack only if the host lacks them) | host | vendor",
    )
    install.add_argument("--host-python", help="the host's Python interpreter (to probe)")
    install.add_argument("--python-version", help="vendor wheels for this Python (X.Y)")
    install.add_argument("--platform", help="...and this platform (e.g. win-amd64)")
    install.add_argument("--wheel-dir", type=Path, help="use these wheels instead of PyPI")
    install.add_argument(
        "serve_args",
        nargs="*",
        help="arguments after -- go to `harmonize serve` when the "
        "plugin starts the daemon, e.g. -- --weights my.pt",
    )
    install.set_defaults(func=cmd_install_plugin)
    uninstall = sub.add_parser("uninstall-plugin", help="remove an installed plugin")
    uninstall.add_argument("host", help="gimp | krita")
    uninstall.add_argument("--gimp-dir", type=Path, help="GIMP profile folder (.../GIMP/3.0)")
    uninstall.add_argument("--krita-dir", type=Path, help="Krita resource folder")
    uninstall.add_argument("--kritarc", type=Path, help="Krita's settings file")
    uninstall.add_argument("--plugin-dir", type=Path, help="exact folder to remove")
    uninstall.set_defaults(func=cmd_uninstall_plugin)
    package = sub.add_parser(
        "package-plugin",
        help="build the Krita plugin zip (Tools > Scripts > Import Python Plugin from File)",
        description="Zip the Krita plugin with the daemon client and pyzmq + msgpack wheels "
        "for Krita's bundled Python 3.10 (Windows, macOS, AppImage) and Linux distributions' "
        "Pythons 3.11-3.13 (downloaded from PyPI unless --wheels-from has them).",
    )
    package.add_argument("host", help="krita")
    package.add_argument("-o", "--output", type=Path, default=Path("harmonize-krita.zip"))
    package.add_argument(
        "--wheels-from", type=Path, help="folder with one subfolder of .whl files per tag"
    )
    package.set_defaults(func=cmd_package_plugin)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and a.samefile(b))
    except OSError:
        return False


def _load(args: argparse.Namespace) -> Any:
    if getattr(args, "daemon", False):
        from layer_harmonizer.wire.client import ensure_daemon

        extra = [] if args.weights is None else ["--weights", str(args.weights)]
        extra += [] if args.variant is None else ["--variant", args.variant]
        client = ensure_daemon(args=[*extra, "--device", args.device])
        atexit.register(client.close)
        info = client.hello()  # --weights/--device only apply to a daemon started here
        log.info("daemon pid %s: %s on %s", info["pid"], info["variant"], info["device"])
        return client
    from layer_harmonizer.pipeline import load_model

    model = load_model(args.weights, variant=args.variant, device=args.device)
    log.info("weights %s (%s)", model.metadata.get("path"), model.metadata.get("variant"))
    return model


def _run_one(args: argparse.Namespace, model: Any, composite: Path, mask: Path, out: Path) -> None:
    from layer_harmonizer.errors import InputError
    from layer_harmonizer.image_files import read_image, read_mask, write_image
    from layer_harmonizer.pipeline import harmonize

    for source in (composite, mask):
        if _same_file(out, source):
            raise InputError(f"output {out} would overwrite the input {source}")
    rgb, alpha = read_image(composite, max_pixels=args.max_pixels)
    if getattr(args, "daemon", False):
        result = _harmonize_remote(model, rgb, read_mask(mask, max_pixels=args.max_pixels), args)
    else:
        result = harmonize(
            rgb,
            read_mask(mask, max_pixels=args.max_pixels),
            model=model,
            strength=args.strength,
            lut_backend=args.lut_backend,
            max_pixels=args.max_pixels,
        )
    write_image(out, result, alpha)


def _harmonize_remote(client: Any, rgb: Any, mask: Any, args: argparse.Namespace) -> Any:
    """The whole composite through the daemon: layer = backdrop = composite and no crop, so
    the result equals in-process :func:`layer_harmonizer.pipeline.harmonize`."""
    import numpy as np

    from layer_harmonizer.arrays import check_image, check_mask
    from layer_harmonizer.errors import InputError
    from layer_harmonizer.wire.client import DaemonError
    from layer_harmonizer.wire.protocol import Pixels

    image = check_image(rgb, max_pixels=args.max_pixels, what="composite")
    alpha = check_mask(mask, image.shape[:2])
    if args.strength == 0 or not alpha.any():
        return image.copy()
    pixels = Pixels.of(image)
    try:
        reply = client.harmonize(
            pixels, Pixels.of(alpha), pixels, strength=args.strength, crop_margin=None, output="rgb"
        )
    except DaemonError as exc:
        raise InputError(f"daemon: {exc.message}") from None
    result = reply.pixels
    return np.frombuffer(result.data, dtype=result.dtype).reshape(result.shape).copy()


def cmd_run(args: argparse.Namespace) -> int:
    """``harmonize run``: one pair, or a folder of pairs. Any file system error (permissions, a
    full disk) that the readers and writers did not already name becomes a one-line error."""
    try:
        return _run(args)
    except OSError as exc:
        raise _file_error(exc, args.composite) from None


def _file_error(exc: OSError, fallback: Path) -> Exception:
    """``exc`` as a one-line :class:`FileError` naming its file (``fallback`` if it has none)."""
    from layer_harmonizer.errors import FileError

    where = fallback if exc.filename is None else Path(os.fsdecode(exc.filename))
    return FileError.from_os_error(exc, where, "access")


def _run(args: argparse.Namespace) -> int:
    from layer_harmonizer.errors import InputError

    if args.composite.is_dir():
        return _run_folder(args)
    if args.mask is None:
        raise InputError("MASK is required when COMPOSITE is a file")
    from layer_harmonizer.image_files import probe_image

    for path in (args.composite, args.mask):  # refuse a bad file before loading the model
        probe_image(path, max_pixels=args.max_pixels)
    model = _load(args)
    start = time.perf_counter()
    _run_one(args, model, args.composite, args.mask, args.output)
    print(f"wrote {args.output} ({time.perf_counter() - start:.2f} s)")
    return 0


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
    for pair, out in tqdm(jobs, desc="harmonize", unit="img", disable=None):
        try:
            _run_one(args, model, pair.composite, pair.mask, out)
        except HarmonizeError as exc:  # this pair failed; the others still run
            failed += 1
            log.error("%s: %s", pair.composite, exc)
        except OSError as exc:
            failed += 1
            log.error("%s: %s", pair.composite, _file_error(exc, out))
    elapsed = time.perf_counter() - start
    print(
        f"harmonized {len(pairs) - failed} of {len(pairs)} images in {elapsed:.1f} s "
        f"({len(orphans)} without mask, {failed} failed) -> {args.output}"
    )
    return 1 if failed else 0


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from layer_harmonizer import paths
    from layer_harmonizer.errors import WeightsError
    from layer_harmonizer.lut.backends import auto_backend, backend_choices
    from layer_harmonizer.model import VARIANTS, AICTNet
    from layer_harmonizer.model.weights import find_default_weights, load_weights

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
        _, meta = load_weights(path, args.variant)
        digest = str(meta.get("sha256", "?"))[:12]
        print(f"weights: {path} (variant {meta.get('variant')}, sha256 {digest})")
        if meta.get("trained_on"):
            print(f"  trained on: {meta['trained_on']}")
    except WeightsError as exc:
        print(f"weights: none usable ({exc})")
    for label, fn in (
        ("weights dir", paths.weights_dir),
        ("cache dir", paths.cache_dir),
        ("log dir", paths.log_dir),
        ("config dir", paths.config_dir),
        ("runtime dir", paths.runtime_dir),
    ):
        print(f"{label + ':':<13}{fn()}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from layer_harmonizer.arrays import max_pixels_default
    from layer_harmonizer.daemon.process import serve
    from layer_harmonizer.daemon.server import ServerConfig
    from layer_harmonizer.wire.protocol import Limits

    config = ServerConfig(
        limits=Limits(max_pixels=max_pixels_default()),
        host=args.host,
        port=args.port,
        allow_remote=args.allow_remote,
        idle_timeout=args.idle_timeout,
        lut_backend=args.lut_backend,
    )
    return serve(
        config,
        weights=None if args.weights is None else str(args.weights),
        variant=args.variant,
        device=args.device,
        log_level=args.log_level,
        log_file=args.log_file,
        quiet=args.quiet,
    )


def _daemon_client(args: argparse.Namespace) -> Any:
    from layer_harmonizer.wire.client import Client

    return Client.from_endpoint_file(timeout=args.timeout, retries=0)


def cmd_ping(args: argparse.Namespace) -> int:
    from layer_harmonizer.wire.client import DaemonError

    try:
        with _daemon_client(args) as client:
            info = client.hello()
    except DaemonError as exc:
        print(f"harmonize: {exc.message}", file=sys.stderr)
        return 1
    memory = info.get("free_memory")
    print(
        f"daemon {info.get('server_version')} (protocol "
        f"{'.'.join(map(str, info.get('protocol_version', ())))}) at {client.endpoint}, "
        f"pid {info.get('pid')}\n"
        f"device {info.get('device')}, variant {info.get('variant')}, weights "
        f"{info.get('weights_id')}, free memory "
        f"{'?' if memory is None else f'{memory / 2**30:.1f} GiB'}, {info.get('queued')} queued\n"
        f"pixels travel by {' or '.join(info.get('transports', ['frames']))}"
    )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from layer_harmonizer.wire.client import DaemonError

    try:
        with _daemon_client(args) as client:
            pid = client.ping().get("pid")
            client.shutdown()
    except DaemonError as exc:
        print(f"harmonize: {exc.message}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + max(args.timeout, 40.0)
    while time.monotonic() < deadline and client.endpoint_file and client.endpoint_file.exists():
        time.sleep(0.1)
    print(f"stopped the daemon (pid {pid})")
    return 0


def cmd_install_service(args: argparse.Namespace) -> int:
    from layer_harmonizer.daemon import systemd

    if args.print:
        print(systemd.unit_text(args.serve_args), end="")
        return 0
    path = systemd.install(args.serve_args, enable=args.enable)
    print(f"wrote {path}")
    if not args.enable:
        print(
            f"start it with: systemctl --user daemon-reload && systemctl --user enable --now "
            f"{systemd.UNIT_NAME}"
        )
    return 0


def cmd_install_plugin(args: argparse.Namespace) -> int:
    import shlex

    from layer_harmonizer import install

    report = install.install_plugin(
        args.host,
        plugin_dir=args.plugin_dir,
        host_dir=args.krita_dir if args.host == "krita" else args.gimp_dir,
        kritarc=args.kritarc,
        deps=args.deps,
        host_python=shlex.split(args.host_python) if args.host_python else None,
        python_version=args.python_version,
        platform=args.platform,
        serve_args=args.serve_args,
        wheel_dir=args.wheel_dir,
    )
    print(f"installed the {args.host} plugin in {report.plugin_dir}")
    if report.host_python is not None:
        hp = report.host_python
        print(f"host Python: {hp.version} ({hp.platform})")
    if report.wheels:
        print(f"vendored: {', '.join(report.wheels)}")
    elif report.deps == "host":
        print("pyzmq and msgpack: the host's own")
    for note in report.notes:
        print(f"note: {note}")
    if args.host == "krita":
        print("restart Krita, then use Filter > Harmonize Layer (Ctrl+Alt+Shift+H)")
    else:
        print("restart the host application, then use Filters > Harmonize Layer...")
    return 0


def cmd_uninstall_plugin(args: argparse.Namespace) -> int:
    from layer_harmonizer import install

    path = install.uninstall_plugin(
        args.host,
        plugin_dir=args.plugin_dir,
        host_dir=args.krita_dir if args.host == "krita" else args.gimp_dir,
        kritarc=args.kritarc,
    )
    print(f"removed {path}" if path else f"no {args.host} plugin installed")
    return 0


def cmd_package_plugin(args: argparse.Namespace) -> int:
    from layer_harmonizer import install
    from layer_harmonizer.errors import InputError

    if args.host != "krita":
        raise InputError(f"package-plugin builds the Krita zip only; got {args.host!r}")
    folders = None
    if args.wheels_from is not None:
        folders = {p.name: p for p in Path(args.wheels_from).iterdir() if p.is_dir()}
    out = install.package_krita(args.output, wheel_dirs=folders)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    from layer_harmonizer.errors import HarmonizeError

    try:
        return int(args.func(args))
    except HarmonizeError as exc:
        print(f"harmonize: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harmonize: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

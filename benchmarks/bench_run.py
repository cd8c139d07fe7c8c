"""``harmonize run`` as a user waits for it: start-up, work, exit and peak memory, per process.

    nice -n 10 python benchmarks/bench_run.py                        # this checkout only
    git archive <commit> backend | tar -x -C /tmp/before             # an older version ...
    nice -n 10 python benchmarks/bench_run.py --code before=/tmp/before/backend \\
        --code after=backend --sizes 1024,2048,4096 --repeat 3 --daemon

Every measurement is a fresh ``python -m layer_harmonizer`` process with ``PYTHONPATH`` set to
the code under test, so several versions run side by side in one run, interleaved round by
round (the load of a shared machine hits them alike). Inputs are a photo-like 8-bit RGB PNG
(smooth colour field plus noise; it compresses to about 1.5 bytes per pixel) and an 8-bit
mask with a soft-edged ellipse over ~20 % of it.

- ``--help`` and ``error``: a command that needs no model (``--strength 2`` is refused);
- ``run``: in-process ``harmonize run`` (``--weights``, default weights if not given);
- ``run --daemon`` (``--daemon``): the same through a daemon this script starts once (from
  the first ``--code``) and keeps warm, so only the client process is timed;
- ``--phases``: one in-process run at the largest size split into import torch, the other
  imports and loading the model, reading, the network, the LUTs, writing, and the exit.

Per process: ``wall`` (start to exit), ``CPU`` (user + system seconds of that child, from
``wait4``: what a shared machine's load does not inflate), ``exit`` (wall from the ``wrote ...``
line to the end of the process: the interpreter's clean-up), peak RSS (``ru_maxrss``).
Peak RSS at the two largest sizes gives ``base + bytes per pixel``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = "/usr/bin/time"
"""Started in between when present, and its peak RSS report used: a child forked from this
(large) process reports this process's memory as its own peak (Linux keeps the pre-exec
high-water mark), a child of the small ``time`` process does not."""
RSS_TAG = "bench-run-peak-rss-kib "


def make_inputs(size: int, folder: Path) -> tuple[Path, Path]:
    """A ``size`` x ``size`` photo-like RGB PNG and its soft ellipse mask, written once."""
    comp, mask = folder / f"c{size}.png", folder / f"m{size}.png"
    if comp.exists() and mask.exists():
        return comp, mask
    rng = np.random.default_rng(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    field = np.stack([xx, yy, 1 - xx * yy], axis=2) * 200 + 20
    field += rng.normal(0, 3, (size, size, 3)).astype(np.float32)
    rgb = np.clip(field, 0, 255).astype(np.uint8)
    radius = ((xx - 0.45) / 0.3) ** 2 + ((yy - 0.55) / 0.22) ** 2
    alpha = (np.clip((1.0 - radius) * 6, 0, 1) * 255).astype(np.uint8)
    cv2.imwrite(str(comp), rgb[..., ::-1])
    cv2.imwrite(str(mask), alpha)
    return comp, mask


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd``; wall and CPU (user + system) seconds, wall seconds after its ``wrote``
    line, peak RSS in MiB."""
    if Path(LAUNCHER).exists():
        cmd = [LAUNCHER, "-f", f"{RSS_TAG}%M", *cmd]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wrote, last = None, b""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(b"wrote "):
            wrote, last = time.perf_counter(), line
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    end = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak_kib = usage.ru_maxrss
    for line in err.decode(errors="replace").splitlines():
        if line.startswith(RSS_TAG):
            peak_kib = int(line[len(RSS_TAG) :])
        elif line.startswith("Command exited with non-zero status"):
            proc.returncode = int(line.rsplit(" ", 1)[1])
    result = {"wall": end - start, "rss": peak_kib / 1024, "rc": proc.returncode}
    result["cpu"] = usage.ru_utime + usage.ru_stime
    if wrote is not None:
        result["exit"], result["out"] = end - wrote, last
    result["err"] = err.decode(errors="replace").strip()[-300:]
    return result


def code_env(root: Path, tmp: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(root.resolve())}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # warm-up round writes .pyc, as an install has
    env["HARMONIZE_RUNTIME_DIR"] = str(tmp / "runtime")
    env["HARMONIZE_LOG_DIR"] = str(tmp / "log")
    return env


def start_daemon(env: dict[str, str], weights: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "layer_harmonizer", "serve", *weights, "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = Path(env["HARMONIZE_RUNTIME_DIR"]) / "daemon.json"
    deadline = time.monotonic() + 120
    while not endpoint.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the daemon did not start")
        time.sleep(0.2)
    return proc


def cases(args: argparse.Namespace, tmp: Path) -> list[tuple[str, list[str]]]:
    """``(name, harmonize arguments)`` of every measurement."""
    weights = ["--weights", str(args.weights)] if args.weights else []
    comp, mask = make_inputs(args.sizes[0], tmp)
    out = [("--help", ["--help"])]
    bad = ["run", str(comp), str(mask), "-o", str(tmp / "o.png"), "--strength", "2"]
    out.append(("error", bad))
    for size in args.sizes:
        comp, mask = make_inputs(size, tmp)
        run = ["run", str(comp), str(mask), "-o", str(tmp / f"out{size}.png")]
        out.append((f"run {size}²", [*run, *weights, *shlex.split(args.extra)]))
        if args.daemon:
            out.append((f"run --daemon {size}²", [*run, "--daemon"]))
    return out


def report(results: dict[tuple[str, str], list[dict[str, float]]], labels: list[str]) -> None:
    print("\n| command | code | wall s: median (min) | CPU s: median (min) | exit s | peak MiB |")
    print("|---|---|---|---|---|---|")
    names = list(dict.fromkeys(name for name, _ in results))
    for name in names:
        for label in labels:
            runs = results[(name, label)]
            wall, cpu = [r["wall"] for r in runs], [r["cpu"] for r in runs]
            exits = [r["exit"] for r in runs if "exit" in r]
            exit_s = f"{statistics.median(exits):.3f}" if exits else "—"
            rss = statistics.median(r["rss"] for r in runs)
            print(
                f"| {name} | {label} | {statistics.median(wall):.3f} ({min(wall):.3f}) | "
                f"{statistics.median(cpu):.3f} ({min(cpu):.3f}) | {exit_s} | {rss:.0f} |"
            )


def fit_memory(results: dict, labels: list[str], sizes: list[int], daemon: bool) -> None:
    """``base + slope * pixels`` through the two largest sizes' peak RSS."""
    if len(sizes) < 2:
        return
    small, large = sorted(sizes)[-2:]
    for prefix in ("run", "run --daemon") if daemon else ("run",):
        for label in labels:
            a = statistics.median(r["rss"] for r in results[(f"{prefix} {small}²", label)])
            b = statistics.median(r["rss"] for r in results[(f"{prefix} {large}²", label)])
            slope = (b - a) * 2**20 / (large**2 - small**2)
            base = a - slope * small**2 / 2**20
            print(f"{prefix} [{label}]: peak RSS = {base:.0f} MiB + {slope:.2f} bytes/pixel")


PHASES = """
import json, sys, time
t = [time.perf_counter()]
import torch
t.append(time.perf_counter())
from layer_harmonizer.image_files import read_image, read_mask, write_image
from layer_harmonizer.pipeline import apply_prediction, load_model, predict
model = load_model(*sys.argv[4:5])
t.append(time.perf_counter())
rgb, alpha = read_image(sys.argv[1])
mask = read_mask(sys.argv[2])
t.append(time.perf_counter())
maps = predict(rgb, mask, model=model)
t.append(time.perf_counter())
out = apply_prediction(rgb, mask, maps)
t.append(time.perf_counter())
write_image(sys.argv[3], out, alpha)
t.append(time.perf_counter())
names = ["import torch", "other imports + model", "read PNGs", "network", "LUTs", "write PNG"]
print("wrote", json.dumps(dict(zip(names, (b - a for a, b in zip(t, t[1:]))))), flush=True)
"""
"""Where one in-process run's time goes, phase by phase (the library calls ``harmonize run``
makes; ``exit`` is measured from outside, after the last line)."""


def phases(args: argparse.Namespace, envs: dict[str, dict[str, str]], tmp: Path) -> None:
    """Median per phase over ``--repeat`` runs of each code at the largest size."""
    size = max(args.sizes)
    comp, mask = make_inputs(size, tmp)
    weights = [str(args.weights)] if args.weights else []
    print(f"\nphases at {size}² (median of {args.repeat}, seconds):")
    for label, env in envs.items():
        runs = []
        for _ in range(args.repeat):
            cmd = [sys.executable, "-c", PHASES, str(comp), str(mask), str(tmp / "p.png")]
            res = timed([*cmd, *weights], env)
            line = res["out"].rsplit(b"wrote ", 1)[1]
            runs.append({**json.loads(line), "exit": res["exit"], "total": res["wall"]})
        print(f"  {label}: " + ", ".join(
            f"{k} {statistics.median(r[k] for r in runs):.3f}" for k in runs[0]
        ))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--code",
        action="append",
        metavar="LABEL=DIR",
        help="a folder holding layer_harmonizer/ (repeatable; default: this checkout)",
    )
    ap.add_argument("--sizes", default="1024,2048,4096", help="square image sizes")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (each runs every case once)")
    ap.add_argument("--weights", type=Path, help="weights file (default: the installed default)")
    ap.add_argument("--daemon", action="store_true", help="also time `run --daemon`")
    ap.add_argument("--phases", action="store_true", help="also split a run into its phases")
    ap.add_argument(
        "--extra", default="", help='more `harmonize run` arguments, e.g. "--precision bf16"'
    )
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    codes = dict(c.split("=", 1) for c in (args.code or [f"now={ROOT / 'backend'}"]))
    labels = list(codes)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-run-") as name:
        tmp = Path(name)
        envs = {label: code_env(Path(root), tmp) for label, root in codes.items()}
        todo = cases(args, tmp)
        weights = ["--weights", str(args.weights)] if args.weights else []
        daemon = start_daemon(envs[labels[0]], weights) if args.daemon else None
        try:
            for round_ in range(args.repeat + 1):  # round 0 warms caches and is dropped
                for case, argv in todo:
                    for label in labels:
                        cmd = [sys.executable, "-m", "layer_harmonizer", *argv]
                        res = timed(cmd, envs[label])
                        ok = res["rc"] == (2 if case == "error" else 0)
                        if not ok:
                            raise SystemExit(f"{case} [{label}] failed: {res['err']}")
                        if round_:
                            results.setdefault((case, label), []).append(res)
                print(f"round {round_} done", file=sys.stderr)
        finally:
            if daemon is not None:
                daemon.terminate()
                daemon.wait(60)
        if args.phases:
            phases(args, envs, tmp)
    report(results, labels)
    fit_memory(results, labels, args.sizes, args.daemon)


if __name__ == "__main__":
    main()

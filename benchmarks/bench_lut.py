"""LUT-apply and end-to-end benchmark: torch reference vs the CPU kernel (vs CuPy when present).

Every (size, method) and (variant, size, method) measurement runs in its own subprocess, so the
peak RSS reported is that method's alone. Outputs of the LUT runs are saved to a temporary folder
and compared with the torch reference's (max abs difference, in [0, 1] units).

End-to-end runs use randomly initialised networks (``create_model``): the time does not depend
on the weights' values, only on the architecture.

Usage (documented in docs/benchmarks.md)::

    nice -n 10 python benchmarks/bench_lut.py --threads 2
    python benchmarks/bench_lut.py --sizes 1024x1024 --variants aict-light --repeats 3  # quick
    python benchmarks/bench_lut.py --network           # network only: inference-mode/threads table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SIZES = "1024x1024,2048x2048,4096x4096,6000x4000"
DEFAULT_E2E_SIZES = "2048x2048,6000x4000"
DEFAULT_VARIANTS = "aict-light,aict-small,aict"


def _size(text: str) -> tuple[int, int]:
    """``WxH`` -> ``(H, W)``."""
    w, h = (int(v) for v in text.lower().split("x"))
    return h, w


def _peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this program's own memory.
    (``ru_maxrss`` is not used there: a child started with vfork/posix_spawn inherits the
    parent's peak in it.) Elsewhere: ``ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _inputs(h: int, w: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    if dtype == "float32":
        image = rng.random((h, w, 3), dtype=np.float32)
    else:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    mask = np.clip((0.8 - np.sqrt(yy * yy + xx * xx)) * 4, 0, 1).astype(np.float32)  # soft disc
    return image, mask


def _random_maps(device: str) -> Any:
    import torch

    from layer_harmonizer.lut import LutMaps

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 256, 256, 8, generator=g) * 2
    steps = torch.softmax(logits, dim=-1).cumsum(-1)
    intervals = torch.cat([torch.zeros_like(steps[..., :1]), steps], dim=-1)
    colors = torch.rand(1, 3, 256, 256, 8, generator=g) * 1.2 - 0.1
    return LutMaps(intervals.contiguous(), colors.contiguous()).to(device)


def _timed(fn: Any, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _device_memory_mb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    used = torch.cuda.max_memory_allocated()
    try:
        import cupy

        used += cupy.get_default_memory_pool().total_bytes()
    except ImportError:
        pass
    return used / 2**20


def worker_lut(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from layer_harmonizer.lut.backends import get_backend

    h, w = _size(args.size)
    device = "cuda" if args.method == "cuda" else "cpu"
    image, mask = _inputs(h, w, args.dtype)
    maps = _random_maps(device)
    backend = get_backend(args.method, device)
    base = _peak_rss_mb()
    out = backend.apply(image, mask, maps, 1.0)  # warm-up (builds / compiles on first use)
    if args.save:
        np.save(args.save, out)
    del out  # so the peak is one output, as in real use
    if device == "cuda":
        torch.cuda.synchronize()
    times = _timed(lambda: backend.apply(image, mask, maps, 1.0), args.repeats)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "peak_rss_mb": _peak_rss_mb(),
        "rss_before_mb": base,
        "device_mb": _device_memory_mb(),
    }


def worker_e2e(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from layer_harmonizer.model import create_model
    from layer_harmonizer.pipeline import apply_prediction, predict

    h, w = _size(args.size)
    device = "cuda" if args.method == "cuda" else "cpu"
    image, mask = _inputs(h, w, "uint8")
    model = create_model(args.variant).eval().to(device)
    base = _peak_rss_mb()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def run() -> tuple[float, float]:
        start = time.perf_counter()
        maps = predict(image, mask, model=model)
        sync()
        mid = time.perf_counter()
        apply_prediction(image, mask, maps, lut_backend=args.method)
        sync()
        return (mid - start) * 1e3, (time.perf_counter() - mid) * 1e3

    run()  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    parts = [run() for _ in range(args.repeats)]
    return {
        "median_ms": statistics.median(a + b for a, b in parts),
        "network_ms": statistics.median(a for a, _ in parts),
        "lut_ms": statistics.median(b for _, b in parts),
        "peak_rss_mb": _peak_rss_mb(),
        "rss_before_mb": base,
        "device_mb": _device_memory_mb(),
    }


NETWORK_MODES = ("grad", "no_grad", "inference_mode", "inference_mode+fastpath")
"""Forward settings compared by ``--network``: autograd on (plain eval), ``no_grad`` and
``inference_mode`` with torch's fused transformer fast path disabled, and the pipeline's
setting (inference mode, fast path on)."""


def worker_network(args: argparse.Namespace) -> dict[str, Any]:
    """Network forward at its input size: the modes of :data:`NETWORK_MODES`, interleaved in
    rounds so load changes on a shared machine hit every mode alike. Returns medians in ms."""
    import contextlib

    import torch

    from layer_harmonizer.model import create_model

    model = create_model(args.variant).eval()
    x = torch.rand(1, 4, model.config.input_size, model.config.input_size)

    def forward(mode: str) -> float:
        ctx = {"grad": contextlib.nullcontext, "no_grad": torch.no_grad}.get(
            mode, torch.inference_mode
        )
        torch.backends.mha.set_fastpath_enabled(mode.endswith("fastpath"))
        with ctx():
            start = time.perf_counter()
            model(x)
            return (time.perf_counter() - start) * 1e3

    times: dict[str, list[float]] = {mode: [] for mode in NETWORK_MODES}
    for mode in NETWORK_MODES:
        forward(mode)  # warm-up
    for _ in range(args.repeats):
        for mode in NETWORK_MODES:
            times[mode].append(forward(mode))
    result = {f"{mode}_ms": statistics.median(t) for mode, t in times.items()}
    result.update({f"{mode}_min_ms": min(t) for mode, t in times.items()})
    return result


def _run_worker(kind: str, extra: list[str], args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env["HARMONIZE_LUT_THREADS"] = str(args.threads)
    command = [sys.executable, __file__, "--worker", kind, "--repeats", str(args.repeats), *extra]
    command += ["--threads", str(args.threads), "--dtype", args.dtype]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _max_diff(a: Path, b: Path, scale: float) -> float:
    x, y = np.load(a, mmap_mode="r"), np.load(b, mmap_mode="r")
    worst = 0.0
    for top in range(0, x.shape[0], 256):
        d = np.abs(x[top : top + 256].astype(np.float64) - y[top : top + 256].astype(np.float64))
        worst = max(worst, float(d.max()))
    return worst / scale


def _methods(args: argparse.Namespace) -> list[str]:
    methods = args.methods.split(",")
    if "cuda" in methods:
        try:
            from layer_harmonizer.lut.cuda_kernel import import_cupy

            import_cupy()
        except Exception as exc:
            print(f"# cuda skipped: {exc}", file=sys.stderr)
            methods.remove("cuda")
    return methods


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {cores} cores visible, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"{gpu}; load average at start {os.getloadavg()[0]:.1f}"
    )


def main_parent(args: argparse.Namespace) -> None:
    methods = _methods(args)
    print(f"# {_machine()}")
    print(f"# threads {args.threads}, repeats {args.repeats} (median), LUT dtype {args.dtype}\n")
    scale = 255.0 if args.dtype == "uint8" else 1.0
    if args.network:
        print("median (min) ms of a forward pass at the network's input size\n")
        print("| variant | threads | " + " | ".join(NETWORK_MODES) + " |")
        print("|---|---|" + "---|" * len(NETWORK_MODES))
        for variant in args.variants.split(","):
            r = _run_worker("network", ["--variant", variant], args)
            cells = " | ".join(
                f"{r.get(f'{m}_ms', float('nan')):.0f} ({r.get(f'{m}_min_ms', float('nan')):.0f})"
                for m in NETWORK_MODES
            )
            print(f"| {variant} | {args.threads} | {cells} |", flush=True)
        return
    if args.sizes:
        print("| size | method | median ms | vs torch | peak RSS MB (before) | max abs diff |")
        print("|---|---|---|---|---|---|")
        with tempfile.TemporaryDirectory(prefix="bench-lut-") as tmp:
            for size in args.sizes.split(","):
                ref_ms, ref_out = None, None
                for method in methods:
                    out = Path(tmp) / f"{size}-{method}.npy"
                    r = _run_worker(
                        "lut", ["--size", size, "--method", method, "--save", str(out)], args
                    )
                    if "error" in r:
                        print(f"| {size} | {method} | error: {r['error']} | | | |", flush=True)
                        continue
                    if method == "torch":
                        ref_ms, ref_out = r["median_ms"], out
                    diff = _max_diff(out, ref_out, scale) if ref_out and method != "torch" else 0.0
                    speed = f"{ref_ms / r['median_ms']:.1f}x" if ref_ms else "-"
                    dev = f", GPU {r['device_mb']:.0f} MB" if r.get("device_mb") else ""
                    print(
                        f"| {size} | {method} | {r['median_ms']:.0f} ({r['min_ms']:.0f}) | "
                        f"{speed} | "
                        f"{r['peak_rss_mb']:.0f} ({r['rss_before_mb']:.0f}){dev} | {diff:.2e} |",
                        flush=True,
                    )
                    if method != "torch":
                        out.unlink(missing_ok=True)
                if ref_out:
                    ref_out.unlink(missing_ok=True)
    if args.e2e_sizes:
        print(
            "\n| variant | size | LUT method | end-to-end ms | network ms | LUT ms | peak RSS MB |"
        )
        print("|---|---|---|---|---|---|---|")
        for variant in args.variants.split(","):
            for size in args.e2e_sizes.split(","):
                for method in methods:
                    extra = ["--size", size, "--method", method, "--variant", variant]
                    r = _run_worker("e2e", extra, args)
                    if "error" in r:
                        print(
                            f"| {variant} | {size} | {method} | error: {r['error']} |||", flush=True
                        )
                        continue
                    dev = f", GPU {r['device_mb']:.0f} MB" if r.get("device_mb") else ""
                    rss = f"{r['peak_rss_mb']:.0f}{dev}"
                    print(
                        f"| {variant} | {size} | {method} | {r['median_ms']:.0f} | "
                        f"{r['network_ms']:.0f} | {r['lut_ms']:.0f} | {rss} |",
                        flush=True,
                    )
    print(f"\n# load average at end {os.getloadavg()[0]:.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="LUT-only sizes WxH ('' to skip)")
    p.add_argument("--e2e-sizes", default=DEFAULT_E2E_SIZES, help="end-to-end sizes ('' to skip)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="network variants for end to end")
    p.add_argument("--methods", default="torch,cpu-kernel,cuda", help="LUT backends to compare")
    p.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    p.add_argument("--dtype", default="float32", choices=["float32", "uint8"], help="LUT-only")
    p.add_argument("--network", action="store_true", help="only the network-forward table")
    p.add_argument("--worker", choices=["lut", "e2e", "network"], help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is None:
        main_parent(args)
        return
    import torch

    torch.set_num_threads(args.threads)
    worker = {"lut": worker_lut, "e2e": worker_e2e, "network": worker_network}[args.worker]
    print(json.dumps(worker(args)))


if __name__ == "__main__":
    main()

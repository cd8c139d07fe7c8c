"""The Krita plugin's host side on a large document, inside real Krita (kritarunner).

    nice -n 10 python benchmarks/bench_krita.py               # 3840 x 2160, 1500 x 1500 layer
    python benchmarks/bench_krita.py --width 1920 --height 1080 --layer 800 --repeat 3

Needs Debian's ``krita`` (``kritarunner``) and a daemon-capable environment. Starts
``harmonize serve`` with seeded untrained ``aict-light`` weights (private runtime/log dirs),
then runs ``tests/hosts/krita_runner.py`` ``--repeat`` times on an 8-bit RGBA document with an
opaque pasted layer, and prints per run (seconds):

- ``read``: ``host.read_inputs`` (layer, selection, backdrop from a document clone);
- ``daemon``: the round trip (first run: network + LUT; later runs: cached prediction);
- ``write``: building the new layer and inserting it;
- ``total`` for the three, and the wall time of the whole kritarunner process;
- ``strength``: the docker's strength change to ``--restrength`` (a reapply through the same
  daemon session) and rewriting the layer with it (``update_layer``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--layer", type=int, default=1500, help="side of the pasted square")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--restrength", type=float, default=0.5, help="then this strength")
    args = parser.parse_args()
    if shutil.which("kritarunner") is None:
        print("kritarunner not found: apt-get install krita python3-pyqt5 python3-zmq")
        return 1
    import torch

    from layer_harmonizer.model import create_model
    from layer_harmonizer.model.weights import save_weights

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        torch.manual_seed(0)
        save_weights(tmp / "w.pt", create_model("aict-light").eval(), "aict-light")
        w, h, side = args.width, args.height, args.layer
        yy, xx = np.mgrid[0:h, 0:w]
        bg = np.dstack([xx * 255 // w, yy * 255 // h, np.full((h, w), 128), np.full((h, w), 255)])
        bg.astype(np.uint8).tofile(tmp / "bg.raw")
        layer = np.zeros((h, w, 4), np.uint8)
        y0, x0 = (h - side) // 2, (w - side) // 2
        rng = np.random.default_rng(0)
        layer[y0 : y0 + side, x0 : x0 + side, :3] = rng.integers(0, 256, (side, side, 3))
        layer[y0 : y0 + side, x0 : x0 + side, 3] = 255
        layer.tofile(tmp / "layer.raw")
        case = {"name": "bench", "depth": "U8", "profile": "sRGB-elle-V2-srgbtrc.icc",
                "width": w, "height": h, "background": str(tmp / "bg.raw"),
                "layer": str(tmp / "layer.raw"), "selection": None, "strength": 1.0,
                "restrength": args.restrength, "out": str(tmp / "out")}  # fmt: skip
        (tmp / "spec.json").write_text(json.dumps({"cases": [case]}))
        env = {**os.environ, "HARMONIZE_RUNTIME_DIR": str(tmp / "run"),
               "HARMONIZE_LOG_DIR": str(tmp / "log")}  # fmt: skip
        daemon = subprocess.Popen(
            [sys.executable, "-m", "layer_harmonizer", "serve", "--weights", str(tmp / "w.pt"),
             "--device", "cpu", "--port", "0"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while not (tmp / "run" / "daemon.json").exists():
                if daemon.poll() is not None:
                    print("harmonize serve exited")
                    return 1
                time.sleep(0.2)
            (tmp / "home").mkdir()
            krita_env = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
            krita_env.update(HOME=str(tmp / "home"), PATH="/usr/bin:/bin",
                             QT_QPA_PLATFORM="offscreen", HARMONIZE_KRITA_NO_REGISTER="1",
                             PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "hosts"),
                                                         str(ROOT / "plugins" / "krita"),
                                                         str(ROOT / "backend"),
                                                         str(ROOT)]))  # fmt: skip
            print(f"{w} x {h} document, {side} x {side} pasted layer (8-bit RGBA), CPU daemon")
            for run in range(args.repeat):
                start = time.perf_counter()
                subprocess.run(
                    ["timeout", "600", "kritarunner", "-s", "krita_runner", "-f", "main",
                     str(tmp / "spec.json")],
                    env=krita_env, check=True, capture_output=True,
                )  # fmt: skip
                wall = time.perf_counter() - start
                info = json.loads((tmp / "out" / "case.json").read_text())
                sec = info["seconds"]
                total = sec["read"] + sec["daemon"] + sec["write"]
                print(f"run {run + 1}: read {sec['read']:.2f}  daemon {sec['daemon']:.2f}  "
                      f"write {sec['write']:.2f}  total {total:.2f}  strength: daemon "
                      f"{sec.get('restrength_daemon', 0):.2f} write "
                      f"{sec.get('restrength_write', 0):.2f}  "
                      f"(region {info['region'][2]} x {info['region'][3]}, "
                      f"kritarunner wall {wall:.1f})")  # fmt: skip
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

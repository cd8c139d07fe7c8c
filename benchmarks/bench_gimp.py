"""The GIMP plug-in on a large image, inside real GIMP 3 (the Debian 13 chroot of the tests).

    sudo nice -n 10 python benchmarks/bench_gimp.py           # 3840 x 2160, 1500 x 1500 layer
    python benchmarks/bench_gimp.py --width 1920 --height 1080 --layer 800 --repeat 3

Needs root (chroot) and ``tests/hosts/gimp3-trixie.sh provision`` (built on first use).
Starts ``harmonize serve`` on the host with seeded untrained ``aict-light`` weights, installs
the plug-in with ``harmonize install-plugin gimp --deps host``, and runs gimp-console once: it
builds an 8-bit image with a background and an opaque pasted layer, then calls the procedure
``--repeat`` times (each run inserts a new layer). Per run (seconds), from the plug-in's
``HARMONIZE_PLUGIN_TIMINGS`` line:

- ``read_layer``: the layer over its bounds plus the context margin (Gegl, ``R'G'B'A u8``);
- ``mask_backdrop``: duplicate the image, read the selection (a layer mask: apply it and the
  selection to the alpha, the 2.0 mask), hide the layer and what is above it, merge visible,
  read the backdrop;
- ``daemon``: the round trip (first run: network + LUT; later: cached prediction);
- ``write``: copy the layer, write the result, insert it;
- ``pdb``: the whole procedure call as the batch script sees it (plug-in start included).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "hosts" / "gimp3-trixie.sh"

BATCH = r"""
import json, time
import gi
gi.require_version("Gimp", "3.0"); gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp
cfg_in = json.load(open("/job/bench.json"))
W, H, L = cfg_in["width"], cfg_in["height"], cfg_in["layer"]
image = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
bg = Gimp.Layer.new(image, "bg", W, H, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(bg, None, 0)
row = bytes((x * 7 + 40) % 256 for x in range(W * 3))
bg.get_buffer().set(Gegl.Rectangle.new(0, 0, W, H), "R'G'B' u8", row * H)
obj = Gimp.Layer.new(image, "obj", L, L, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(obj, None, 0)
obj.set_offsets((W - L) // 2, (H - L) // 2)
px = bytes((200, 120, 40, 255)) * L
obj.get_buffer().set(Gegl.Rectangle.new(0, 0, L, L), "R'G'B'A u8", px * L)
image.undo_enable()
proc = Gimp.get_pdb().lookup_procedure("plug-in-harmonize-layer")
runs = []
for _ in range(cfg_in["repeat"]):
    cfg = proc.create_config()
    cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", [obj])
    start = time.perf_counter()
    result = proc.run(cfg)
    runs.append(time.perf_counter() - start)
    assert result.index(0) == Gimp.PDBStatusType.SUCCESS, result.index(1)
json.dump(runs, open("/job/pdb.json", "w"))
image.undo_disable()
image.delete()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--layer", type=int, default=1500, help="side of the pasted layer")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    subprocess.run(["bash", str(SCRIPT), "provision"], check=True, stdout=subprocess.DEVNULL)
    import torch

    from layer_harmonizer.model import create_model
    from layer_harmonizer.model.weights import save_weights

    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp)
        torch.manual_seed(0)
        save_weights(job / "w.pt", create_model("aict-light"), "aict-light", {"note": "bench"})
        env = {**os.environ, "HARMONIZE_RUNTIME_DIR": str(job / "runtime"),
               "HARMONIZE_LOG_DIR": str(job / "log")}  # fmt: skip
        daemon = subprocess.Popen(
            [sys.executable, "-m", "layer_harmonizer", "serve", "--weights", str(job / "w.pt")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while not (job / "runtime" / "daemon.json").exists():
                if daemon.poll() is not None:
                    raise SystemExit("the daemon did not start")
                time.sleep(0.2)
            subprocess.run(
                [sys.executable, "-m", "layer_harmonizer", "install-plugin", "gimp",
                 "--deps", "host",
                 "--gimp-dir", str(job / "home" / ".config" / "GIMP" / "3.0")],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            (job / "bench.py").write_text(BATCH)
            (job / "bench.json").write_text(json.dumps(vars(args)))
            start = time.perf_counter()
            gimp = subprocess.run(
                ["bash", str(SCRIPT), "run", str(job), "bench.py",
                 "HARMONIZE_RUNTIME_DIR=/job/runtime", "HARMONIZE_PLUGIN_TIMINGS=1"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            wall = time.perf_counter() - start
            if gimp.returncode != 0:
                print(gimp.stdout[-3000:], gimp.stderr[-3000:])
                return 1
            pdb = json.loads((job / "pdb.json").read_text())
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
    lines = [ln for ln in gimp.stderr.splitlines() if ln.startswith("harmonize-timings ")]
    runs = [json.loads(ln.split(" ", 1)[1]) for ln in lines]
    print(f"{args.width} x {args.height} image, {args.layer} x {args.layer} layer, "
          f"region {runs[0]['region']}, daemon crop {runs[0]['crop']}")  # fmt: skip
    print("| run | read layer | mask + backdrop | daemon | write | plug-in total | PDB call |")
    print("|---|---|---|---|---|---|---|")
    for i, (run, call) in enumerate(zip(runs, pdb, strict=True), 1):
        total = sum(run[k] for k in ("read_layer", "mask_backdrop", "daemon", "write"))
        print(f"| {i} | {run['read_layer']:.2f} | {run['mask_backdrop']:.2f} | "
              f"{run['daemon']:.2f} | {run['write']:.2f} | {total:.2f} | {call:.2f} |")  # fmt: skip
    print(f"gimp-console wall time (start-up included): {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""kritarunner script for tests/test_krita_host.py: builds documents inside real Krita and runs
the plugin's host-facing code (``harmonize.host``) against a real daemon.

    HOME=$TMP PATH=/usr/bin:/bin QT_QPA_PLATFORM=offscreen HARMONIZE_KRITA_NO_REGISTER=1 \\
      PYTHONPATH=tests/hosts:plugins/krita:backend:. \\
      timeout 300 kritarunner -s krita_runner -f main SPEC.json

SPEC (JSON): ``{"cases": [{"name", "depth", "profile", "width", "height", "background",
"layer", "selection", "convert_to", "strength", "restrength", "out"}]}`` with raw
little-endian RGBA files (``depth``'s item type; selection: 8-bit, one byte a pixel, or null;
restrength: optional). A case with
``"bottom": true`` harmonizes the bottom layer instead, which must be refused: its
``case.json`` holds the ``error`` and the ``layers`` afterwards. For each other case the
script writes into ``out``: ``result.raw`` (the new layer, BGRA over the canvas),
``source_before.raw``, ``source_after.raw``, ``backdrop.raw`` (the BGRA read below the
layer, as sent), ``selection.raw`` (as sent; absent when none is sent) and ``case.json``
(layer names, colour spaces, timings, the versions of Krita and its Python). With a
``restrength`` the new layer is then updated to that strength through the same daemon session
(a reapply, as the docker's slider does) and timed too. kritarunner exits 0 even when a
script raises, so this one ends with ``os._exit`` (0 = every case ran).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _build(case: dict[str, Any]) -> tuple[Any, Any]:
    from harmonize import pixels
    from harmonize.qt import to_qbytes
    from krita import Krita, Selection

    w, h, depth = case["width"], case["height"], case["depth"]
    dtype = {"U8": "uint8", "U16": "uint16", "F16": "uint16", "F32": "float32"}[depth]
    doc = Krita.instance().createDocument(w, h, case["name"], "RGBA", depth, case["profile"], 72.0)
    root = doc.rootNode()
    background = root.childNodes()[0]
    background.setPixelData(
        to_qbytes(pixels.rgba_to_bgra(Path(case["background"]).read_bytes(), dtype)), 0, 0, w, h
    )
    layer = doc.createNode("pasted", "paintlayer")
    layer.setPixelData(
        to_qbytes(pixels.rgba_to_bgra(Path(case["layer"]).read_bytes(), dtype)), 0, 0, w, h
    )
    root.addChildNode(layer, background)
    if case.get("convert_to"):  # e.g. ["RGBA", "F16", "sRGB-elle-V2-g10.icc"]: Krita converts
        doc.setColorSpace(*case["convert_to"])
        doc.waitForDone()
        layer = doc.rootNode().childNodes()[1]
    if case.get("selection"):
        selection = Selection()
        selection.resize(w, h)
        selection.setPixelData(to_qbytes(Path(case["selection"]).read_bytes()), 0, 0, w, h)
        doc.setSelection(selection)
    doc.refreshProjection()
    doc.waitForDone()
    return doc, layer


def run_case(case: dict[str, Any]) -> None:
    import platform

    from harmonize import host
    from harmonize.deps import host_side
    from krita import Krita

    out = Path(case["out"])
    out.mkdir(parents=True, exist_ok=True)
    doc, source = _build(case)
    if case.get("bottom"):
        _refusal(doc, out)
        return
    w, h = case["width"], case["height"]
    before = bytes(source.pixelData(0, 0, w, h))
    start = time.perf_counter()
    inputs = host.read_inputs(doc, source)
    read_s = time.perf_counter() - start
    (out / "backdrop.raw").write_bytes(inputs.backdrop)
    if inputs.selection is not None:
        (out / "selection.raw").write_bytes(inputs.selection)
    with host_side().open_session() as session:  # the docker's one client
        start = time.perf_counter()
        result = host.send(inputs, strength=case["strength"], session=session)
        call_s = time.perf_counter() - start
        start = time.perf_counter()
        layer = host.build_layer(doc, source, inputs, result.pixels, result.box)
        host.insert_above(doc, source, layer)
        doc.waitForDone()
        write_s = time.perf_counter() - start
        timings, box = result.timings, result.box
        del result  # as the docker does: its memory is the session's again
        again = _restrength(doc, layer, inputs, session, case.get("restrength"))
    names = [n.name() for n in doc.rootNode().childNodes()]
    (out / "result.raw").write_bytes(bytes(layer.pixelData(0, 0, w, h)))
    (out / "source_before.raw").write_bytes(before)
    (out / "source_after.raw").write_bytes(bytes(source.pixelData(0, 0, w, h)))
    info = {
        "layers": names,
        "result_space": [layer.colorModel(), layer.colorDepth(), layer.colorProfile()],
        "doc_space": [doc.colorModel(), doc.colorDepth(), doc.colorProfile()],
        "wire_dtype": inputs.fmt.dtype,
        "region": [inputs.region.x, inputs.region.y, inputs.region.w, inputs.region.h],
        "box": [box.x, box.y, box.w, box.h],
        "seconds": {"read": read_s, "daemon": call_s, "write": write_s, **again, **inputs.timings},
        "daemon_timings": timings,
        "krita": Krita.instance().version(),
        "python": platform.python_version(),
    }
    (out / "case.json").write_text(json.dumps(info, indent=1))
    doc.close()
    print(f"case {case['name']}: ok {info['seconds']}", flush=True)


def _restrength(doc: Any, layer: Any, inputs: Any, session: Any, strength: Any) -> dict:
    """The docker's strength change: the same inputs at ``strength`` through ``session`` (a
    reapply, no pixels sent), written into ``layer``; seconds of each (none without one)."""
    from harmonize import host

    if strength is None:
        return {}
    start = time.perf_counter()
    result = host.send(inputs, strength=strength, session=session)
    call_s = time.perf_counter() - start
    start = time.perf_counter()
    host.update_layer(doc, layer, inputs, result.pixels, result.box)
    doc.waitForDone()
    return {"restrength_daemon": call_s, "restrength_write": time.perf_counter() - start}


def _refusal(doc: Any, out: Path) -> None:
    """Harmonize the bottom layer (nothing below it); report the error and the layers."""
    from harmonize import host

    bottom = doc.rootNode().childNodes()[0]
    try:
        host.read_inputs(doc, bottom)
        error = None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    names = [n.name() for n in doc.rootNode().childNodes()]
    (out / "case.json").write_text(json.dumps({"error": error, "layers": names}, indent=1))
    doc.close()
    print(f"case bottom: {error}", flush=True)


def main(args: list[str]) -> None:
    rc = 0
    try:
        from krita import Krita

        Krita.instance().setBatchmode(True)
        spec = json.loads(Path(args[0]).read_text())
        for case in spec["cases"]:
            try:
                run_case(case)
            except Exception:
                traceback.print_exc()
                rc = 1
    except Exception:
        traceback.print_exc()
        rc = 2
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)

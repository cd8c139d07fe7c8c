"""kritarunner script: the plugin as Krita's importer unpacked it from the release zip loads its
vendored backend and the pyzmq/msgpack wheels for this Python, not the system's copies.

    kritarunner -s krita_zipcheck -f main PYKRITA_DIR OUT.json

Ends with ``os._exit`` (0 = it ran; the pytest side checks ``OUT.json``).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path


def main(args: list[str]) -> None:
    rc = 0
    report: dict[str, object] = {}
    try:
        sys.path.insert(0, args[0])
        for name in [m for m in sys.modules if m.split(".")[0] in ("zmq", "msgpack")]:
            del sys.modules[name]
        from harmonize import deps

        added = deps.add_wheels_to_path()
        wheels = [p for p in added if "wheels" in p]
        for folder in wheels:  # prefer the vendored copies over Debian's for this check
            sys.path.remove(folder)
            sys.path.insert(1, folder)
        import msgpack
        import zmq

        support = deps.host_side()
        report = {
            "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
            "added": added,
            "zmq": zmq.__file__,
            "libzmq": zmq.zmq_version(),
            "msgpack": msgpack.__file__,
            "host_side": support.__file__,
        }
    except Exception:
        traceback.print_exc()
        rc = 1
    Path(args[1]).write_text(json.dumps(report, indent=1))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)

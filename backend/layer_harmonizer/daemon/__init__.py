"""The ``harmonize serve`` process: the daemon both plug-ins talk to.

- :mod:`.process`: ``serve()``, the process's life (instance lock, endpoint file, signals,
  systemd readiness, the guardian that cleans up after a crash); :mod:`.endpoint`: the files
  in the runtime dir; :mod:`.logs`: the private log;
- :mod:`.server`: the ROUTER loop and dispatch; :mod:`.listen`: ipc or TCP with CURVE;
  :mod:`.jobs`: the worker thread;
- :mod:`.engine`: the warm model and the prediction cache;
- :mod:`.systemd`: the user unit (``harmonize install-service``).

It speaks :mod:`layer_harmonizer.wire` and computes with the core (pipeline, compose, arrays).
"""

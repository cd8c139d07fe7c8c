"""The wire side: everything a process needs to talk to the ``harmonize serve`` daemon, in
standard library + pyzmq + msgpack only (no numpy, no torch; a test enforces it).

``harmonize install-plugin`` copies this folder whole into each plug-in (GIMP's and Krita's
own Python runs it), so the daemon and the hosts share one implementation:

- :mod:`.discovery`: the names, runtime folder, endpoint file and pixel limit both sides
  agree on;
- :mod:`.protocol`: the message format (envelope, body, frames, limits, error codes);
  :mod:`.messages`: the bodies of each request type;
- :mod:`.shm`: pixels through shared memory (client side), :mod:`.shm_mapping` (daemon side);
- :mod:`.connection` and :mod:`.client`: the daemon client; :mod:`.startup`: finding the
  running daemon or starting one;
- :mod:`.host_side` (with :mod:`.host_settings`, :mod:`.host_session`: one daemon client per
  dialog or docker, :mod:`.host_pixels`, :mod:`.host_messages`): what the plug-ins call;
- :mod:`.host_report`: the plug-ins' Copy diagnostics and Open log, with :mod:`.redact`
  (secrets and personal details out of a bug report, shared with ``harmonize diagnose``);
- :mod:`.about`: the licence statement and the plug-ins' about text.

Modules here import each other relatively and nothing else of ``layer_harmonizer`` except
``_version`` (vendored beside this folder).
"""

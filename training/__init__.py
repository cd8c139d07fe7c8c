"""Training package: data (iHarmony4, synthetic composites), losses, train/evaluate/export.

``config`` holds the options of a run (the only home of their defaults), ``presets`` named sets
of them, ``options`` the command-line options built from both, ``train`` the loop (with
``checkpoint``, ``schedule``, ``precision``, ``losses``), ``data/`` the training data.
Command line: ``python -m training train|presets|evaluate|export|make-synthetic|report|resize``
(see ``docs/training.md``). Importing this package imports nothing heavy.
"""

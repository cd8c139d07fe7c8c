"""Training package: data (iHarmony4, synthetic composites), losses, train/evaluate/export.

Command line: ``python -m training train|evaluate|export|make-synthetic|resize`` (see
``docs/training.md``). Importing this package imports nothing heavy.
"""

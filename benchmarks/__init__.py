"""Benchmarks of processhub: speed and memory, each figure next to a yardstick from the same run.

Run ``python -m benchmarks`` (``--quick`` for a small smoke run, ``--json`` for
machines). See ``benchmarks/run.py`` for what is measured and how.
"""

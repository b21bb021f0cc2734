"""Benchmarks of the bundle (LA-lite, speed, sliding-window study, metrics timing); not part of the installed package.

Run from a checkout as modules, e.g. ``python -m scripts.la_lite all`` or ``python -m benchmarks.metrics``.
"""

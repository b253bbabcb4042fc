"""Benchmarks: trial timing (``autoprune bench``), the method comparison (``autoprune compare``)
and the scripts run as ``python -m autoprune.bench.timing.NAME``."""

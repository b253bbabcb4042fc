"""Benchmarks: trial timing (``autoprune bench``), the method comparison (``autoprune compare``)
and the scripts run as ``python -m autoprune.bench.NAME``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def print_report(lines: Sequence[str], out: str | None) -> None:
    """Print a benchmark's Markdown report and, with ``out``, write it there too (folders made as needed)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")

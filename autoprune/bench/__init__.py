"""Benchmarks: trial timing (``autoprune bench``), the method comparison (``autoprune compare``)
and the scripts run as ``python -m autoprune.bench.NAME``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from autoprune._code import commit
from autoprune.errors import AutopruneError


def print_report(lines: Sequence[str], out: str | None) -> None:
    """Print a benchmark's Markdown report and, with ``out``, write it there too (folders made as needed)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")


def run_main(main: Callable[[], int], command: str) -> None:
    """Run a benchmark's ``main`` as a script: its exit status, and bad input (an AutopruneError)
    told in one line on standard error with exit status 2, no traceback."""
    try:
        status = main()
    except AutopruneError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(status)


__all__ = ["commit", "print_report", "run_main"]

"""Benchmark: how long ``autoprune --help`` and ``autoprune pick --help`` take to answer.

Each command runs ``--runs`` times in a fresh interpreter (``python -m autoprune ...``, so the
``autoprune`` script's own launcher is not counted); the report gives the minimum and the median
wall time. ``--checkout DIR`` times the package in another checkout (e.g. a ``git worktree`` of an
older commit) beside this one::

    python -m autoprune.bench.cli_startup [--runs 10] [--checkout DIR ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from autoprune.bench import commit, print_report

COMMANDS = (("--help",), ("pick", "--help"))


def wall_times(checkout: Path, args: tuple[str, ...], runs: int) -> list[float]:
    """Seconds of ``runs`` runs of ``python -m autoprune ARGS`` with ``checkout`` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "autoprune", *args], cwd=checkout, env=env, check=True, capture_output=True
        )
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each command (default 10)")
    parser.add_argument("--checkout", action="append", default=[], help="another checkout to time (repeatable)")
    parser.add_argument("--out", help="also write the report to this Markdown file")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[2]
    checkouts = [here, *(Path(c).resolve() for c in args.checkout)]
    lines = [
        "# `autoprune --help` wall time",
        "",
        f"Command: `python -m autoprune.bench.cli_startup {shlex.join(sys.argv[1:])}`",
        "",
        f"{args.runs} runs per command, each a fresh `{Path(sys.executable).name} -m autoprune ...`; Python "
        f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs.",
        "",
        "| checkout | commit | command | min s | median s |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for checkout in checkouts:
        for command in COMMANDS:
            times = wall_times(checkout, command, args.runs)
            lines.append(
                f"| {checkout.name} | {commit(checkout)} | `autoprune {' '.join(command)}` "
                f"| {min(times):.3f} | {statistics.median(times):.3f} |"
            )
    print_report(lines, args.out)


if __name__ == "__main__":
    main()

"""Benchmark: the wall time of the default test run (``python3 -m pytest``, as README.md gives it).

The suite runs ``--runs`` times in each checkout (this one and any ``--checkout DIR``, e.g. a clone of
an older commit), each run in a fresh interpreter with that checkout first on the path; the report
gives every run's wall time, their median, the tests counted and the ten slowest tests of the last
run. Run it with nothing else on the machine::

    python -m autoprune.bench.suite_time [--runs 2] [--checkout DIR ...] [--checkout-runs N] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from autoprune.bench import commit, print_report
from autoprune.bench.timing import device_name

SLOWEST = 10


@dataclass(frozen=True)
class SuiteRun:
    seconds: float
    summary: str
    """pytest's last line: how many passed, failed, were deselected."""
    slowest: list[tuple[float, str]]
    """The slowest phases (setup, call, teardown) of tests: seconds and pytest's label."""


def run_suite(checkout: Path) -> SuiteRun:
    """One default test run in ``checkout`` (its tests, its package first on the path)."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--durations={SLOWEST}"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    lines = done.stdout.splitlines()
    summary = next((line.strip("= ") for line in reversed(lines) if " in " in line and "passed" in line), "")
    slowest = [
        (float(m.group(1)), m.group(2)) for line in lines if (m := re.match(r"^(\d+\.\d+)s (\w+ +\S+)$", line.strip()))
    ]
    if done.returncode != 0:
        summary += f" (exit status {done.returncode})"
    return SuiteRun(seconds, summary, slowest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoprune.bench.suite_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="runs per checkout (default 2)")
    parser.add_argument("--checkout", action="append", default=[], help="another checkout to time (repeatable)")
    parser.add_argument("--checkout-runs", type=int, help="runs in each --checkout (default: --runs)")
    parser.add_argument("--out", help="also write the report to this Markdown file")
    args = parser.parse_args(argv)
    here = Path(__file__).resolve().parents[2]
    lines = [
        "# Wall time of the default test run",
        "",
        f"Command: `python -m autoprune.bench.suite_time {shlex.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        f"- machine: {device_name(torch.device('cpu'))}, {os.cpu_count()} CPUs; nothing else running",
        f"- each run: `python3 -m pytest -q -p no:cacheprovider --durations={SLOWEST}` in the checkout",
    ]
    checkouts = {here: args.runs} | {Path(c).resolve(): args.checkout_runs or args.runs for c in args.checkout}
    for checkout, count in checkouts.items():
        runs = [run_suite(checkout) for _ in range(count)]
        times = ", ".join(f"{r.seconds:.0f} s" for r in runs)
        lines += [
            "",
            f"## Commit {commit(checkout)}",
            "",
            f"- runs: {times}; **median {statistics.median(r.seconds for r in runs) / 60:.1f} min**",
            f"- pytest: {runs[-1].summary}",
            "",
            "| seconds | slowest test phases (last run) |",
            "| ---: | --- |",
            *(f"| {s:.1f} | `{label}` |" for s, label in runs[-1].slowest),
        ]
    print_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

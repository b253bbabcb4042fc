"""Benchmark: trials per hour of one study run by 1, 2, ... worker processes on this machine.

Every run evaluates exactly the same policies: uniform granularity with every trial enqueued (the
``study.baselines`` grid), so the figures compare parallelism, not luck in the sampled trial costs.
The base model is trained once, before either run is timed::

    python -m autoprune.bench.workers [--study studies/digits.toml] [--trials 20] [--workers 1 2]
    python -m autoprune.bench.workers --device cuda --workers 1 2 4   # workers sharing one GPU

Each run is a real ``autoprune search --workers N`` process. Throughput is counted over the span
from the first trial's start to the last trial's end (process start-up is reported apart).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from autoprune.search.front import measured
from autoprune.search.paths import default_storage


def _grid(trials: int) -> str:
    return "[" + ", ".join(f"{0.8 * (i + 1) / trials:.4f}" for i in range(trials)) + "]"


def run(study_file: str, runs_dir: Path, name: str, trials: int, workers: int, device: str) -> dict[str, float]:
    """Run one search and return its wall time, trial span, trials per hour and mean trial seconds."""
    sets = {
        "study.runs_dir": repr(runs_dir.as_posix()),
        "study.name": repr(name),
        "space.granularity": "'uniform'",
        "study.baselines": _grid(trials),
    }
    command = [sys.executable, "-m", "autoprune", "search", study_file, "--trials", str(trials)]
    command += ["--workers", str(workers), "--device", device]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name=name, storage=default_storage(name, runs_dir))
    done = [t for t in study.get_trials(deepcopy=False) if measured(t)]
    first = min(t.datetime_start for t in done if t.datetime_start)
    last = max(t.datetime_complete for t in done if t.datetime_complete)
    span = (last - first).total_seconds()
    busy = sum(t.duration.total_seconds() for t in done if t.duration)
    return {
        "completed": len(done),
        "evaluated": len(study.trials),
        "wall": wall,
        "span": span,
        "per_hour": 3600 * len(done) / span,
        "trial_seconds": busy / len(done),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="studies/digits.toml")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    runs_dir = Path(tempfile.mkdtemp(prefix="autoprune-workers-")) / "runs"
    run(args.study, runs_dir, "warmup", 1, 1, args.device)  # trains and caches the base model
    print(
        f"{os.cpu_count()} CPUs, device {args.device}; {args.trials} trials, the same enqueued policies in "
        f"every run; {args.study}"
    )
    print("| workers | completed | evaluated | wall s (with start-up) | trial span s | trials/hour | mean trial s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for workers in args.workers:
        r = run(args.study, runs_dir, f"w{workers}", args.trials, workers, args.device)
        print(
            f"| {workers} | {r['completed']} | {r['evaluated']} | {r['wall']:.1f} | {r['span']:.1f} | "
            f"{r['per_hour']:.0f} | {r['trial_seconds']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

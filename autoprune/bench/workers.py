"""Benchmark: trials per hour of one study run by 1, 2, ... worker processes on this machine, with
its artifacts in the local folder or in the stores given by ``--artifacts``.

Every run evaluates exactly the same policies: uniform granularity with every trial enqueued (the
``study.baselines`` grid), so the figures compare parallelism and stores, not luck in the sampled
trial costs. The base model is trained once, before any run is timed::

    python -m autoprune.bench.workers [--study studies/digits.toml] [--trials 20] [--workers 1 2]
    python -m autoprune.bench.workers --device cuda --workers 1 2 4   # workers sharing one GPU
    python -m autoprune.bench.workers --artifacts s3://bucket/bench --out reports/bench/artifact-store.md

Each run is a real ``autoprune search --workers N`` process. Throughput is counted over the span
from the first trial's start to the last trial's end (process start-up is reported apart). With
``--artifacts`` each store also gets the bytes it holds at the end against the front, and the time
of its single calls (write, read, list, remove of one trial's weights).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna

from autoprune.bench import commit
from autoprune.search.artifacts import Artifacts
from autoprune.search.front import front_numbers, measured
from autoprune.search.paths import default_storage, study_artifacts

CALLS = 20
"""Repeats of each single store call timed."""


def _grid(trials: int) -> str:
    return "[" + ", ".join(f"{0.8 * (i + 1) / trials:.4f}" for i in range(trials)) + "]"


def run(
    study_file: str, runs_dir: Path, name: str, trials: int, workers: int, device: str, artifacts: str = ""
) -> dict[str, float]:
    """Run one search and return its wall time, trial span, trials per hour, mean trial seconds, the
    front's size and the bytes of weights its store holds."""
    sets = {
        "study.runs_dir": repr(runs_dir.as_posix()),
        "study.name": repr(name),
        "space.granularity": "'uniform'",
        "study.baselines": _grid(trials),
    }
    command = [sys.executable, "-m", "autoprune", "search", study_file, "--trials", str(trials)]
    command += ["--workers", str(workers), "--device", device]
    if artifacts:
        command += ["--artifacts", artifacts]
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
    store = study_artifacts(study)
    held = [store.weights(n) for n in store.weight_numbers()]
    return {
        "front": len(front_numbers(study)),
        "stored": len(held),
        "stored_bytes": sum(len(w) for w in held if w is not None),
        "completed": len(done),
        "evaluated": len(study.trials),
        "wall": wall,
        "span": span,
        "per_hour": 3600 * len(done) / span,
        "trial_seconds": busy / len(done),
    }


def store_calls(url: str, data: bytes, repeats: int = CALLS) -> dict[str, float]:
    """Median seconds of one write, read, listing and removal of ``data`` as a trial's weights in ``url``."""
    store = Artifacts(url)
    times: dict[str, list[float]] = {"write": [], "read": [], "list": [], "remove": []}
    calls: dict[str, Callable[[int], object]] = {
        "write": lambda n: store.put_weights(n, data),
        "read": store.weights,
        "list": lambda _n: store.weight_numbers(),
        "remove": store.remove_weights,
    }
    for number in range(repeats):
        for call, fn in calls.items():
            start = time.perf_counter()
            fn(number)
            times[call].append(time.perf_counter() - start)
    return {call: statistics.median(t) for call, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="studies/digits.toml")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument(
        "--artifacts", nargs="+", default=[], metavar="URL", help="stores to run with, beside the local folder"
    )
    parser.add_argument("--out", help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    runs_dir = Path(tempfile.mkdtemp(prefix="autoprune-workers-")) / "runs"
    run(args.study, runs_dir, "warmup", 1, 1, args.device)  # trains and caches the base model
    stores = ["", *args.artifacts]
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
    lines = [
        "# Trials per hour by workers and artifact store",
        "",
        f"Made by `python -m autoprune.bench.workers {' '.join(argv if argv is not None else sys.argv[1:])}` "
        f"at commit {commit()}; S3 endpoint: {endpoint if args.artifacts else 'none'}.",
        "",
        f"{os.cpu_count()} CPUs, device {args.device}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
        f"{args.trials} trials, the same enqueued policies in every run; {args.study}.",
        "",
        "| store | workers | completed | evaluated | wall s (with start-up) | trial span s | trials/hour | "
        "mean trial s | front | weights held | bytes held |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines))
    sample = b""
    for s, url in enumerate(stores):
        for workers in args.workers:
            r = run(args.study, runs_dir, f"s{s}w{workers}", args.trials, workers, args.device, url)
            held = Artifacts(url or str(runs_dir)).url if url else "local folder"
            lines.append(
                f"| {held} | {workers} | {r['completed']} | {r['evaluated']} | {r['wall']:.1f} | {r['span']:.1f} | "
                f"{r['per_hour']:.0f} | {r['trial_seconds']:.2f} | {r['front']} | {r['stored']} | "
                f"{r['stored_bytes']:,} |"
            )
            print(lines[-1])
            sample = sample or _one_weights_file(runs_dir, f"s{s}w{workers}")
    if args.artifacts:
        lines += [
            "",
            f"Single calls on one trial's weights ({len(sample):,} bytes), median of {CALLS}, ms:",
            "",
            "| store | write | read | list | remove |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for url in [str(runs_dir / "calls"), *args.artifacts]:
            t = store_calls(url, sample)
            name = url if url in args.artifacts else "local folder"
            lines.append(
                f"| {name} | {1000 * t['write']:.1f} | {1000 * t['read']:.1f} | {1000 * t['list']:.1f} | "
                f"{1000 * t['remove']:.1f} |"
            )
            print(lines[-1])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


def _one_weights_file(runs_dir: Path, name: str) -> bytes:
    study = optuna.load_study(study_name=name, storage=default_storage(name, runs_dir))
    store = study_artifacts(study)
    numbers = sorted(store.weight_numbers())
    return (store.weights(numbers[0]) or b"") if numbers else b""


if __name__ == "__main__":
    raise SystemExit(main())

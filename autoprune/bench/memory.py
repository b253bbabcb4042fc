"""Benchmark: resident memory after every trial of one fresh study.

The study runs in a scratch storage (as ``autoprune bench`` does; the base model comes from the
usual cache under ``study.runs_dir``) through :func:`autoprune.search.run.run_study` with one worker,
as ``autoprune search`` runs it, with one more Optuna callback after the study's own that records

- ``VmRSS`` (resident memory now) and ``VmHWM`` (its peak so far) from ``/proc/self/status``;
- how many ``nn.Module`` and tensor objects the garbage collector holds, and the bytes of their
  distinct storages (without collecting first: what is alive, reachable or not, is what counts).

Counts that climb are objects kept from one trial to the next (a leak, or garbage that waits for a
full collection); memory that climbs while they stay flat is native: freed memory the allocator has
not handed back to the system, or a library's cache (oneDNN keeps compiled kernels per shape)::

    python -m autoprune.bench.memory STUDY.toml [--trials N] [--out FILE] [--set SECTION.KEY=VALUE ...]

It writes ``reports/bench/memory-<study>.md`` (the command, the setting, the table) and the same
table as ``memory-<study>.csv`` next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from autoprune._logging import configure_cli_logging
from autoprune.bench import commit
from autoprune.config import StudyConfig, load_config
from autoprune.search import run
from autoprune.search.opening import resolve_device
from autoprune.search.paths import default_storage
from autoprune.search.run import run_study

Callback = Callable[[optuna.Study, FrozenTrial], None]
ENVIRONMENT = ("MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD")
"""Environment variables that change how freed memory returns to the system: named in the report."""


def proc_status_mb(field: str) -> float:
    """A ``kB`` line of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {field} line")


@dataclass(frozen=True)
class Sample:
    """Memory after one trial (``trial`` -1: before the first)."""

    trial: int
    state: str
    seconds: float
    """The trial's duration as Optuna recorded it."""
    rss_mb: float
    peak_mb: float
    modules: int
    """``nn.Module`` objects the garbage collector holds."""
    tensors: int
    """Tensor objects (parameters included) the garbage collector holds."""
    tensor_mb: float
    """Bytes of the distinct storages of those tensors."""


def _tracked() -> list[object]:
    """Every object the garbage collector tracks, those frozen by ``gc.freeze`` too (which
    ``gc.get_objects`` leaves out): frozen objects are thawed for the count and frozen again."""
    frozen = gc.get_freeze_count() > 0
    if frozen:
        gc.unfreeze()
    try:
        return gc.get_objects()
    finally:
        if frozen:
            gc.freeze()


def sample(trial: int, state: str, seconds: float) -> Sample:
    """Measure now."""
    modules = tensors = 0
    storages: dict[int, int] = {}
    for obj in _tracked():
        kind = type(obj)  # not isinstance: that reads __class__, which some module proxies warn about
        if issubclass(kind, nn.Module):
            modules += 1
        elif issubclass(kind, torch.Tensor):
            tensors += 1
            tensor = cast(torch.Tensor, obj)
            if tensor.layout != torch.strided or tensor.device.type == "meta":
                continue
            with contextlib.suppress(RuntimeError):  # no data of its own (the fake tensors torch.export leaves)
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return Sample(
        trial,
        state,
        seconds,
        proc_status_mb("VmRSS"),
        proc_status_mb("VmHWM"),
        modules,
        tensors,
        sum(storages.values()) / 2**20,
    )


class MemoryProbe:
    """An Optuna callback: a :class:`Sample` after every trial."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        seconds = trial.duration.total_seconds() if trial.duration is not None else 0.0
        self.samples.append(sample(trial.number, trial.state.name, seconds))


@contextlib.contextmanager
def probing(probe: MemoryProbe) -> Iterator[None]:
    """Within the block, every trial loop (:func:`autoprune.search.loop.work`) that :func:`run_study`
    starts samples memory before its first trial (base model and data loaded) and calls ``probe``
    after its own callbacks. The benchmark wraps the loop as :mod:`autoprune.search.run` calls it:
    no callback of :func:`run_study` runs before the first trial."""
    plain = run.work

    def work(*args: Any, callbacks: Sequence[Callback] = (), **kwargs: Any) -> None:
        probe.samples.append(sample(-1, "start", 0.0))
        plain(*args, callbacks=[*callbacks, probe], **kwargs)

    run.work = work
    try:
        yield
    finally:
        run.work = plain


def run_memory(config: StudyConfig, storage: str) -> list[Sample]:
    """Run ``config``'s study in ``storage`` (give a fresh one) with one worker, in this process, and
    sample memory before the first trial (base model and data loaded) and after every trial."""
    probe = MemoryProbe()
    with probing(probe):
        run_study(config, storage=storage, device=resolve_device(config.study.device))
    return probe.samples


def growth_per_trial(samples: list[Sample]) -> float:
    """MB of resident memory gained per trial over the second half of the trials (least squares)."""
    trials = [s for s in samples if s.trial >= 0]
    half = trials[len(trials) // 2 :]
    if len(half) < 2:
        return 0.0
    return statistics.linear_regression([s.trial for s in half], [s.rss_mb for s in half]).slope


def markdown(samples: list[Sample], config: StudyConfig, command: str, wall: float) -> str:
    """The report: the command, the setting, a summary and one row per sample."""
    trials = [s for s in samples if s.trial >= 0]
    start, last = samples[0], samples[-1]
    env = ", ".join(f"{k}={os.environ[k]}" for k in ENVIRONMENT if k in os.environ) or "none of " + ", ".join(
        ENVIRONMENT
    )
    lines = [
        f"# Resident memory per trial: {config.study.name}",
        "",
        f"Command: `{command}`, at commit {commit()}",
        "",
        f"- {len(trials)} trials in {wall:.0f} s wall; model {config.model.name}, data {config.data.name}, "
        f"sampler {config.sampler}, device {config.study.device}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, Python {sys.version.split()[0]}",
        f"- allocator environment: {env}",
        f"- resident memory: {start.rss_mb:.0f} MB before the first trial, "
        + (f"{trials[0].rss_mb:.0f} MB after the first, " if trials else "")
        + f"{last.rss_mb:.0f} MB after the last; peak {last.peak_mb:.0f} MB",
        f"- growth over the second half of the trials: {growth_per_trial(samples):+.2f} MB per trial (least squares)",
        f"- live nn.Modules {start.modules} → {last.modules}, tensors {start.tensors} → {last.tensors} "
        f"({start.tensor_mb:.1f} → {last.tensor_mb:.1f} MB): counted without a garbage collection first",
        "",
        "| trial | state | trial s | RSS MB | peak MB | nn.Modules | tensors | tensor MB |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {'–' if s.trial < 0 else s.trial} | {s.state} | {s.seconds:.2f} | {s.rss_mb:.0f} | {s.peak_mb:.0f} | "
            f"{s.modules} | {s.tensors} | {s.tensor_mb:.1f} |"
            for s in samples
        ),
        "",
    ]
    return "\n".join(lines)


def write_csv(samples: list[Sample], path: Path) -> Path:
    """The samples as CSV, one row each, columns as :class:`Sample`'s fields."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(Sample.__dataclass_fields__))
        writer.writeheader()
        for s in samples:
            writer.writerow({k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(s).items()})
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study")
    parser.add_argument("--trials", type=int, help="trials to run (default: the study file's study.trials)")
    parser.add_argument("--out", help="report file (default: reports/bench/memory-<study name>.md)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = [*args.set, *([f"study.trials={args.trials}"] if args.trials is not None else [])]
    config = load_config(args.study, overrides)
    configure_cli_logging()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="autoprune-memory-") as scratch:
        samples = run_memory(config, default_storage("memory", scratch))
    shown = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m autoprune.bench.memory", *shown])
    out = Path(args.out or f"reports/bench/memory-{config.study.name}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(samples, config, command, time.perf_counter() - start), encoding="utf-8")
    write_csv(samples, out.with_suffix(".csv"))
    print(out.read_text(encoding="utf-8"))
    print(f"written to {out} and {out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

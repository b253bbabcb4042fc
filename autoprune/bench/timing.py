"""``autoprune bench``: run a study and write where each trial's time goes.

The report (``reports/bench/<name>.md``) names the device, the torch and thread settings, the
per-trial time split by phase, trials per hour, peak memory, and the share of trial time that is
neither fine-tuning nor evaluation: everything needed to compare a CPU run with a GPU run of the
same command.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from autoprune.config import StudyConfig
from autoprune.data import load_data
from autoprune.search.basemodel import base_model
from autoprune.search.front import measured
from autoprune.search.opening import resolve_device
from autoprune.search.run import run_study
from autoprune.trial.evaluate import PHASES
from autoprune.trial.metrics import accuracy


@dataclass(frozen=True)
class BenchResult:
    name: str
    device: str
    trials: int
    wall_seconds: float
    """The whole run: data, base model (trained or loaded), study."""
    study_seconds: float
    """Sum of the trials' own durations as Optuna recorded them (storage work included)."""
    phase_seconds: dict[str, float]
    """Mean seconds per completed trial, by phase."""
    trial_seconds: float
    peak_rss_mb: float
    peak_cuda_mb: float | None
    first_look_spearman: float | None
    """Rank correlation of the cheap first look with fine-tuned validation accuracy, over the trials."""
    base_accuracy: tuple[float, float]
    """The unpruned base model's validation and test accuracy."""

    @property
    def trials_per_hour(self) -> float:
        return 3600.0 * self.trials / self.study_seconds if self.study_seconds else 0.0

    @property
    def overhead_share(self) -> float:
        """Share of trial time that is neither fine-tuning nor evaluation."""
        other = sum(v for k, v in self.phase_seconds.items() if k not in ("finetune", "evaluate"))
        return other / self.trial_seconds if self.trial_seconds else 0.0


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None for fewer than 3 pairs or a constant side."""
    if len(a) < 3:
        return None
    ranks = pd.DataFrame({"a": a, "b": b}).rank()
    value = ranks["a"].corr(ranks["b"])
    return None if pd.isna(value) else float(value)


def device_name(device: torch.device) -> str:
    """The device a benchmark ran on, in words: the GPU's name, or the CPU with its cores and torch threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    return f"CPU: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def run_bench(config: StudyConfig, storage: str) -> BenchResult:
    """Run ``config``'s study in ``storage`` (give a fresh one) and summarize its trials' timings."""
    device = resolve_device(config.study.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    study = run_study(config, storage=storage, device=device)
    wall = time.perf_counter() - start
    data = load_data(config.data).to(device)
    base, _path = base_model(config, data, device)  # the cached model the study pruned
    done = [t for t in study.get_trials(deepcopy=False) if measured(t)]
    looked = [t for t in done if t.user_attrs.get("first_look_accuracy") is not None]
    phases = {p: statistics.fmean(t.user_attrs["seconds"].get(p, 0.0) for t in done) if done else 0.0 for p in PHASES}
    return BenchResult(
        name=config.study.name,
        device=device_name(device),
        trials=len(done),
        wall_seconds=wall,
        study_seconds=sum((t.duration.total_seconds() for t in done if t.duration is not None), 0.0),
        phase_seconds=phases,
        trial_seconds=sum(phases.values()),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        peak_cuda_mb=torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        first_look_spearman=spearman(
            [t.user_attrs["first_look_accuracy"] for t in looked], [t.user_attrs["accuracy"] for t in looked]
        ),
        base_accuracy=(
            accuracy(base, data.val, config.data.batch_size),
            accuracy(base, data.test, config.data.batch_size),
        ),
    )


def write_report(result: BenchResult, path: Path, command: str) -> Path:
    """Write the Markdown report and return its path."""
    lines = [
        f"# Benchmark: {result.name}",
        "",
        f"Command: `{command}`",
        "",
        f"- device: {result.device}",
        f"- base model: validation accuracy {result.base_accuracy[0]:.4f}, test accuracy {result.base_accuracy[1]:.4f} "
        "(the test split only reports; the trials never see it)",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- completed trials: {result.trials} in {result.wall_seconds:.1f} s wall "
        "(the whole run: data, base model, study)",
        f"- trials per hour: {result.trials_per_hour:.0f} (from the trials' own durations, "
        f"{result.study_seconds:.1f} s in all)",
        f"- mean trial time: {result.trial_seconds:.3f} s in the phases below, "
        f"{result.study_seconds / max(result.trials, 1):.3f} s as Optuna recorded it",
        f"- share of trial time that is not fine-tune or evaluation: {100 * result.overhead_share:.1f}%",
        f"- peak resident memory: {result.peak_rss_mb:.0f} MB"
        + (f"; peak CUDA memory: {result.peak_cuda_mb:.0f} MB" if result.peak_cuda_mb is not None else ""),
        "- cheap first look (adaptive BN, no fine-tuning) vs fine-tuned validation accuracy, Spearman rank "
        "correlation over the trials: "
        + ("not measured" if result.first_look_spearman is None else f"{result.first_look_spearman:.3f}"),
        "",
        "| phase | mean seconds per trial | share |",
        "| --- | ---: | ---: |",
        *(
            f"| {phase} | {sec:.4f} | {100 * sec / result.trial_seconds if result.trial_seconds else 0:.1f}% |"
            for phase, sec in result.phase_seconds.items()
        ),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path

"""Benchmark: the anytime curve of a comparison: what each method holds after 16, 64 and 256 trials.

For autoprune (and random search), the first N trials of one run of the largest count: what a user
who stops the search after N trials holds. For uniform pruning, global pruning and the one-shot
allocation, a run of N trials each, their grid N points dense: the same number of fine-tunes. At each
count: the hypervolume of validation accuracy against MACs (or parameters, as ``autoprune compare``
scores it), and each level's pick (the most accurate on validation at or under 50, 25 and 12.5 % of
the base figure) with its validation accuracy and, where its weights are kept, its test accuracy (an
early pick that a later trial dominated has none: the search keeps its front's weights only)::

    python -m autoprune.bench.anytime STUDY.toml [--trials 16 64 256] [--seeds 1]
        [--methods uniform one_shot autoprune] [--runs DIR] [--out DIR] [--device D] [--set S.K=V ...]

Writes ``anytime.md``, ``anytime.csv`` and ``anytime.png`` to ``--out`` (default
``reports/bench/anytime-<study>``). The runs are stored under ``--runs`` (default
``runs/anytime-<study>``) and reused by a rerun, as ``autoprune compare``'s are.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import optuna
import torch

from autoprune._logging import get_logger
from autoprune.bench import commit, run_main
from autoprune.bench.compare import (
    LEVELS,
    METHODS,
    RunResult,
    Stat,
    _done,
    _test_accuracy,
    axis_of,
    method_color,
    method_config,
    shared_base,
    stored_run,
    trials_hypervolume,
)
from autoprune.bench.timing import device_name
from autoprune.config import StudyConfig, load_config
from autoprune.data import DataSplits, load_data
from autoprune.errors import AutopruneError, ConfigError
from autoprune.search.front import counts_toward_total, finished
from autoprune.search.loop import StopRequest
from autoprune.search.opening import resolve_device
from autoprune.search.paths import study_artifacts
from autoprune.search.record import StudyRecord
from autoprune.search.run import run_study

log = get_logger(__name__)

COMMAND = "python -m autoprune.bench.anytime"
GRIDS = ("uniform", "global", "one_shot")
"""Methods whose trials are a grid fixed in advance: N trials are a grid of N points, run apart."""


def first_trials(study: optuna.Study, count: int) -> list[optuna.trial.FrozenTrial]:
    """The completed, feasible trials among the first ``count`` the study ran to the end."""
    ran = sorted(t.number for t in study.get_trials(deepcopy=False) if counts_toward_total(t))[:count]
    kept = set(ran)
    return [t for t in _done(study) if t.number in kept]


def point(study: optuna.Study, method: str, seed: int, count: int, data: DataSplits) -> RunResult:
    """The hypervolume and level picks of ``study``'s first ``count`` trials: each pick's validation
    accuracy, and its test accuracy where its weights are kept (None otherwise, or with no pick)."""
    record = StudyRecord.from_study(study)
    axis = axis_of(record.config.study.objectives)
    base = record.base.to_dict()
    done = first_trials(study, count)
    kept = study_artifacts(study).weight_numbers()
    val: dict[float, float | None] = {}
    test: dict[float, float | None] = {}
    for level in LEVELS:
        under = [t for t in done if 100 * float(t.user_attrs[axis]) / base[axis] <= level + 1e-9]
        pick = max(under, key=lambda t: (float(t.user_attrs["accuracy"]), -float(t.user_attrs[axis])), default=None)
        val[level] = None if pick is None else float(pick.user_attrs["accuracy"])
        test[level] = (
            _test_accuracy(study, pick.number, data, record.config.data.batch_size)
            if pick is not None and pick.number in kept
            else None
        )
    return RunResult(method, seed, count, trials_hypervolume(done, base, axis), best_test=test, best_val=val)


def run_anytime(
    config: StudyConfig,
    *,
    counts: Sequence[int],
    seeds: int,
    methods: Sequence[str],
    runs_dir: Path,
    device: torch.device,
) -> list[RunResult]:
    """Every method's figures (:func:`point`) at each of ``counts`` for each seed, running what is not stored."""
    counts = sorted(set(counts))
    if not counts or counts[0] < 1:
        raise ConfigError(f"--trials {' '.join(map(str, counts))}: each must be at least 1")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ConfigError(f"--methods {' '.join(unknown)}: each must be one of {', '.join(METHODS)}")
    if config.fidelity.rungs > 1:
        raise ConfigError("fidelity.rungs > 1: promoted runs have no place in a run's order of trials; use 1")
    checkpoint = shared_base(config, device)
    data = load_data(config.data)
    points = []
    runs = [(k, m, n) for k in range(seeds) for m in methods for n in (counts if m in GRIDS else counts[-1:])]
    with StopRequest() as stop:
        for k, method, n in runs:
            seed = config.study.seed + k
            cfg = method_config(
                config,
                method,
                seed=seed,
                trials=n,
                checkpoint=checkpoint,
                runs_dir=runs_dir / f"{n}-trials",
            )
            log.info("anytime: %s, seed %d, %d trials (study %s)", method, seed, n, cfg.study.name)
            study = stored_run(cfg, n) or run_study(cfg, device=device)
            held = len(finished(study))
            if stop.requested or held < n:
                raise AutopruneError(
                    f"stopped in {cfg.study.name} ({held} of {n} trials); nothing reported; the same command resumes"
                )
            shown = counts if method not in GRIDS else [n]
            points += [point(study, method, seed, c, data) for c in shown]
    return points


CSV_COLUMNS = (
    "method",
    "seed",
    "trials",
    "hypervolume",
    *(f"val_acc_{level:g}" for level in LEVELS),
    *(f"test_acc_{level:g}" for level in LEVELS),
)


def write_csv(points: Sequence[RunResult], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for p in points:
            values = [p.best_val[level] for level in LEVELS] + [p.best_test[level] for level in LEVELS]
            figures = ["" if v is None else round(v, 6) for v in values]
            writer.writerow([p.method, p.seed, p.trials, round(p.hypervolume, 6), *figures])
    return path


def _stats(points: Sequence[RunResult]) -> dict[tuple[str, int], list[RunResult]]:
    grouped: dict[tuple[str, int], list[RunResult]] = {}
    for p in points:
        grouped.setdefault((p.method, p.trials), []).append(p)
    return grouped


def markdown(config: StudyConfig, points: Sequence[RunResult], command: str, device: torch.device) -> list[str]:
    seeds = sorted({p.seed for p in points})
    axis = "parameters" if axis_of(config.study.objectives) == "params" else "MACs"
    levels = " | ".join(f"≤ {level:g} %" for level in LEVELS)
    lines = [
        f"# Anytime: {config.study.name}",
        "",
        f"Command: `{command}` at commit {commit()}",
        "",
        f"- {device_name(device)}; seeds {seeds}; the study file's settings, as `autoprune compare` runs each method",
        "- autoprune and random: the first N trials of one run of the largest count; uniform, global and the "
        "one-shot allocation: a run of N trials each (their grid N points dense)",
        f"- hypervolume of validation accuracy against {axis} as shares of the base model's, reference (1, 0); "
        f"picks: the most accurate on validation at or under each level of {axis}; test: the pick's test accuracy "
        "where its weights are kept (an early autoprune pick dominated later has none: –)",
        "- ± sample standard deviation over the seeds (0 with one seed)",
        "",
        f"| method | trials | hypervolume | val {levels} | test {levels} |",
        "| --- | ---: | ---: | " + " | ".join(["---:"] * (2 * len(LEVELS))) + " |",
    ]
    for (method, trials), group in _stats(points).items():
        hv = Stat.of_values([p.hypervolume for p in group]).text()
        vals = [Stat.of_values([p.best_val[level] for p in group]).text(100, 2) for level in LEVELS]
        tests = [Stat.of_values([p.best_test[level] for p in group]).text(100, 2) for level in LEVELS]
        lines.append(f"| {method} | {trials} | {hv} | " + " | ".join(vals + tests) + " |")
    lines += ["", "Accuracies in %; `anytime.csv` holds every seed, `anytime.png` the curves."]
    return lines


def write_plot(points: Sequence[RunResult], path: Path, title: str) -> Path:
    """Hypervolume and the ≤ 12.5 % pick's validation accuracy against trials, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = _stats(points)
    methods = list(dict.fromkeys(p.method for p in points))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=110)
    for ax, figure, label in (
        (axes[0], lambda p: p.hypervolume, "hypervolume"),
        (axes[1], lambda p: p.best_val[LEVELS[-1]], f"validation accuracy of the pick at ≤ {LEVELS[-1]:g} %"),
    ):
        for method in methods:
            xs, ys = [], []
            for (m, trials), group in sorted(grouped.items(), key=lambda item: item[0][1]):
                mean = Stat.of_values([figure(p) for p in group]).mean if m == method else None
                if mean is not None:
                    xs.append(trials)
                    ys.append(mean)
            ax.plot(xs, ys, marker="o", color=method_color(method, methods), label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("trials (fine-tunes)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("study")
    parser.add_argument("--trials", type=int, nargs="+", default=[16, 64, 256], help="counts (default 16 64 256)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per method (default 1)")
    parser.add_argument("--methods", nargs="+", default=["uniform", "one_shot", "autoprune"])
    parser.add_argument("--runs", help="folder of the runs (default runs/anytime-<study>)")
    parser.add_argument("--out", help="output folder (default reports/bench/anytime-<study>)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    config = load_config(args.study, args.set)
    device = resolve_device(args.device)
    name = config.study.name
    points = run_anytime(
        config,
        counts=args.trials,
        seeds=args.seeds,
        methods=args.methods,
        runs_dir=Path(args.runs or f"runs/anytime-{name}"),
        device=device,
    )
    out = Path(args.out or f"reports/bench/anytime-{name}")
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)])
    text = "\n".join(markdown(config, points, command, device)) + "\n"
    (out / "anytime.md").write_text(text, encoding="utf-8")
    write_csv(points, out / "anytime.csv")
    write_plot(points, out / "anytime.png", f"anytime-{name}: {args.seeds} seed(s)")
    print(text, end="")
    return 0


if __name__ == "__main__":
    run_main(main, COMMAND)

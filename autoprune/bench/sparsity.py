"""Benchmark: weight-level sparsity, searched per layer, against uniform, global and LAMP sparsity.

For one study file of ``space.kind = "weights"`` (its model, data, fine-tune length and learning
rate), at each sparsity level and on each seed:

- ``uniform``: every layer at the level (magnitude, the study's prune steps on the cubic schedule);
- ``global``: the level of all weights, magnitudes ranked across layers;
- ``lamp``: the same ranked by LAMP scores;
- ``autoprune``: ``--trials`` trials of the ``layer`` granularity with the target fixed at the level,
  so only the reference and the per-layer offsets are searched (the study's sampler; uniform and the
  LAMP reference enqueued first, as a study enqueues its baselines); the model picked is the most
  accurate on *validation*.

Every policy gets the same fine-tune steps, learning rate (the geometric middle of the study's
range), prune steps (``space.prune_steps_max``) and scorer (the first of ``space.weight_scorers``);
the seed varies the fine-tune batches and the sampler. Reported: test accuracy (mean ± sample
standard deviation over seeds) and the packed weights file against the dense ``state_dict``.

Then, unless ``--no-fronts``, one study each of ``space.kind = "channels"`` and ``"channels+n:m"``
(``--front-trials`` trials, ``space.channel_multiple`` = M, objectives accuracy and nonzero MACs) and
their fronts of validation accuracy against the MACs of non-zero weights on one chart::

    python -m autoprune.bench.sparsity STUDY.toml [--levels 0.9 0.95 0.98] [--seeds 3] [--trials 10]
                                           [--out DIR] [--set SECTION.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna

from autoprune.config import StudyConfig, load_config
from autoprune.results.pareto import front_2d
from autoprune.search.front import measured
from autoprune.search.opening import make_sampler, resolve_device
from autoprune.search.prepare import prepare
from autoprune.search.record import StudyRecord
from autoprune.search.run import run_study
from autoprune.trial.evaluate import TrialEvaluator
from autoprune.trial.metrics import accuracy
from autoprune.trial.space import SearchSpace

METHODS = ("uniform", "global", "lamp", "autoprune")


@dataclass(frozen=True)
class Run:
    """One fine-tuned sparse model."""

    method: str
    level: float
    seed: int
    val: float
    test: float
    size: int
    nonzero_macs_pct: float
    trials: int = 1


class Levels:
    """Evaluates the four methods at fixed sparsity levels with one evaluator."""

    def __init__(self, evaluator: TrialEvaluator, layers: dict[str, int]) -> None:
        self.evaluator = evaluator
        self.layers = layers
        cfg = evaluator.config.space
        self.fixed = {
            "lr": math.sqrt(cfg.lr_min * cfg.lr_max),
            "prune_steps": cfg.prune_steps_max,
            "weight_scorer": cfg.weight_scorers[0],
        }

    def space(self, granularity: str, level: float) -> SearchSpace:
        cfg = dataclasses.replace(
            self.evaluator.config.space, sparsity_granularity=granularity, sparsity_min=level, sparsity_max=level
        )
        return SearchSpace(cfg, [], search_finetune_steps=False, layers=self.layers, lamp=self.evaluator.space.lamp)

    def _run(self, method: str, level: float, seed: int, params: dict[str, object], space: SearchSpace) -> Run:
        ev = self.evaluator
        result = ev.evaluate(space.from_params(params, seed))
        assert result.model is not None
        test = accuracy(result.model, ev.data.test, ev.config.data.batch_size, amp=ev.amp)
        m = result.measurement
        return Run(method, level, seed, m.accuracy, test, m.size, 100 * m.nonzero_macs / ev.base_measurement.macs)

    def fixed_method(self, method: str, level: float, seed: int) -> Run:
        space = self.space("uniform" if method == "uniform" else method, level)
        (params,) = space.baselines(level)
        return self._run(method, level, seed, {**params, **self.fixed}, space)

    def search(self, level: float, seed: int, trials: int) -> Run:
        """The per-layer search at ``level``: best of ``trials`` on validation."""
        space = self.space("layer", level)
        fixed = {**self.fixed, "density": 1.0 - level}
        with warnings.catch_warnings():  # experimental in Optuna since 2.4, and what this needs
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.PartialFixedSampler(fixed, make_sampler(self.evaluator.config, seed))
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for params in space.baselines(level):
            study.enqueue_trial({**params, **fixed})
        runs: dict[int, Run] = {}

        def objective(trial: optuna.Trial) -> float:
            space.suggest(trial, seed)
            runs[trial.number] = self._run("autoprune", level, seed, trial.params, space)
            return runs[trial.number].val

        study.optimize(objective, n_trials=trials)
        return dataclasses.replace(runs[study.best_trial.number], trials=trials)


def _stat(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def levels_table(runs: Sequence[Run], levels: Sequence[float], dense_size: int) -> list[str]:
    lines = [
        "| sparsity | method | test acc % (mean ± std) | val acc % | packed weights | of dense | non-zero MACs % |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    verdicts = []
    for level in levels:
        stats = {}
        for method in METHODS:
            chosen = [r for r in runs if r.level == level and r.method == method]
            if not chosen:
                continue
            test, spread = _stat([100 * r.test for r in chosen])
            val, _ = _stat([100 * r.val for r in chosen])
            size = statistics.mean(r.size for r in chosen)
            macs = statistics.mean(r.nonzero_macs_pct for r in chosen)
            stats[method] = (test, spread)
            lines.append(
                f"| {100 * level:g} % | {method} | {test:.2f} ± {spread:.2f} | {val:.2f} | {size / 1000:.1f} kB | "
                f"{100 * size / dense_size:.1f} % | {macs:.1f} |"
            )
        if "autoprune" in stats and "uniform" in stats:
            (a, sa), (u, su) = stats["autoprune"], stats["uniform"]
            diff, spread = a - u, max(sa, su)
            word = "above" if diff > spread else "below" if diff < -spread else "tie with"
            verdicts.append(
                f"- at {100 * level:g} %: autoprune {diff:+.2f} points against uniform "
                f"(spread {spread:.2f}): {word} uniform"
            )
    return [*lines, "", *verdicts]


def front_points(study: optuna.Study, base_macs: float) -> list[tuple[float, float, int]]:
    """(non-zero MACs % of base, validation accuracy, trial) of the study's 2-D front."""
    points = [
        (100 * float(t.user_attrs["nonzero_macs"]) / base_macs, float(t.user_attrs["accuracy"]), t.number)
        for t in study.get_trials(deepcopy=False)
        if measured(t)
    ]
    points.sort()
    keep = front_2d([p[0] for p in points], [p[1] for p in points])
    return [points[i] for i in keep]


def run_fronts(config: StudyConfig, trials: int) -> dict[str, list[tuple[float, float, int]]]:
    """One study each of channels and channels+n:m (in the study file's runs folder, resumed when
    there); their fronts against non-zero MACs."""
    m = config.space.nm_pair[1]
    fronts = {}
    for kind in ("channels", "channels+n:m"):
        cfg = dataclasses.replace(
            config,
            study=dataclasses.replace(
                config.study,
                name=f"{config.study.name}-{kind.replace('+', '-').replace(':', '')}",
                trials=trials,
                objectives=("accuracy", "nonzero_macs"),
                baselines=(0.25, 0.5, 0.75),
            ),
            space=dataclasses.replace(config.space, kind=kind, channel_multiple=m, granularity="offset"),
        )
        study = run_study(cfg)
        fronts[kind] = front_points(study, float(StudyRecord.from_study(study).base.macs))
    return fronts


def write_fronts_png(fronts: dict[str, list[tuple[float, float, int]]], path: Path, title: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (kind, points), color in zip(fronts.items(), ("#1f77b4", "#d62728"), strict=False):
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=color, label=kind)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([1, 2, 3, 5, 7, 10, 20, 30, 50, 70, 100]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("MACs of non-zero weights, % of the base model's (log)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.9, 0.95, 0.98], help="sparsity levels")
    parser.add_argument("--seeds", type=int, default=3, help="seeds (default 3)")
    parser.add_argument("--trials", type=int, default=10, help="search trials per level and seed (default 10)")
    parser.add_argument("--no-fronts", action="store_true", help="skip the channels against channels+n:m fronts")
    parser.add_argument("--front-trials", type=int, default=16, help="trials of each front study (default 16)")
    parser.add_argument("--out", default="", help="folder for results.md and fronts.png (default: print only)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    config = load_config(args.study, args.set)
    device = resolve_device(config.study.device)
    prepared = prepare(config, device)
    ev = prepared.evaluator
    levels = Levels(ev, dict(ev.space.layers))
    runs: list[Run] = []
    for seed in range(args.seeds):
        for level in args.levels:
            for method in METHODS:
                run = (
                    levels.search(level, seed, args.trials)
                    if method == "autoprune"
                    else levels.fixed_method(method, level, seed)
                )
                runs.append(run)
                print(
                    f"seed {seed} sparsity {level:g} {method}: val {run.val:.4f} test {run.test:.4f} "
                    f"({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
    level_seconds = time.perf_counter() - start
    base_test = accuracy(ev.base, ev.data.test, config.data.batch_size, amp=ev.amp)
    shown = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m autoprune.bench.sparsity", *shown])
    lines = [
        f"# Weight-level sparsity: {config.study.name}",
        "",
        f"Command: `{command}`",
        "",
        f"- model {config.model.name}: base validation {100 * ev.base_measurement.accuracy:.2f} %, test "
        f"{100 * base_test:.2f} %, dense state_dict {ev.base_measurement.size / 1000:.1f} kB; device {device}",
        f"- every policy: {config.space.finetune_steps_max} fine-tune steps, lr {levels.fixed['lr']:.3g}, "
        f"{config.space.prune_steps_max} prune step(s) on the cubic schedule, scorer {levels.fixed['weight_scorer']}; "
        f"{args.seeds} seeds; autoprune: {args.trials} trials per level and seed ({config.sampler} sampler, "
        f"uniform and LAMP enqueued first), picked on validation",
        f"- {level_seconds / 60:.1f} min for the levels",
        "",
        *levels_table(runs, args.levels, ev.base_measurement.size),
    ]
    if not args.no_fronts:
        fronts = run_fronts(config, args.front_trials)
        lines += [
            "",
            f"## Channels against channels+{config.space.nm} ({args.front_trials} trials each)",
            "",
            f"Fronts of validation accuracy against the MACs of non-zero weights (`fronts.png`); "
            f"channel_multiple {config.space.nm_pair[1]} in both.",
            "",
            "| kind | front (non-zero MACs % → val acc) |",
            "| --- | --- |",
            *(
                f"| {kind} | " + ", ".join(f"{x:.1f} % → {y:.4f}" for x, y, _n in points) + " |"
                for kind, points in fronts.items()
            ),
        ]
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            title = f"{config.study.name}: channels against channels+n:m"
            write_fronts_png(fronts, Path(args.out) / "fronts.png", title)
    lines += ["", f"Total {(time.perf_counter() - start) / 60:.1f} min."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

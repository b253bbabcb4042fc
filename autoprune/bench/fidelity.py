"""Benchmark: does a trial's brief fine-tune rank policies as a longer one would?

Promotion (``[fidelity]``, :mod:`autoprune.search.promotion`) spends the longer fine-tunes on the
policies the first budget ranks best within each band of MACs. This measures how far that ranking
holds. The study file's sampler proposes ``--trials`` policies (baselines first, as in a search); each
is evaluated as a trial is, then fine-tuned further to every rung's budget (``eta^r`` times its first
steps in all), continuing from its weights exactly as a promoted run does, and its validation
accuracy is measured at each budget (trials stopped by their first look are left out, as promotion
leaves them). It reports, overall and within each band (octaves of the base MACs, or of the figure
promotion bands on), the Spearman rank correlation of each rung's accuracy with the last rung's, and whether the
runs promotion would have moved on from the first rung (the best ``ceil(n / eta)`` of the band)
hold the band's best at the last::

    python -m autoprune.bench.fidelity STUDY.toml [--trials 24] [--rungs 3] [--eta 3] [--seed 0]
        [--device DEVICE] [--out FILE] [--set SECTION.KEY=VALUE ...]

Nothing is stored: the trials run in memory, and ``--out`` (default
``reports/bench/fidelity-<study name>.md``) gets the table and the command.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from autoprune.bench.timing import device_name, spearman
from autoprune.config import load_config
from autoprune.search.opening import make_sampler, resolve_device
from autoprune.search.prepare import prepare
from autoprune.search.promotion import band, band_key
from autoprune.trial.evaluate import Continuation
from autoprune.trial.objective import objective_values

COMMAND = "python -m autoprune.bench.fidelity"


@dataclass(frozen=True)
class Run:
    """One policy: its MACs share of the base and its validation accuracy at each rung."""

    number: int
    share: float
    accuracy: tuple[float, ...]


def measure(args: argparse.Namespace) -> tuple[list[Run], str, str]:
    """Evaluate ``args.trials`` policies at every rung's budget; the runs, the study's name and the device."""
    config = load_config(args.study_file, args.overrides)
    device = resolve_device(args.device or config.study.device)
    prepared = prepare(config, device)
    evaluator = prepared.evaluator
    study = optuna.create_study(
        directions=["maximize" if o == "accuracy" else "minimize" for o in config.study.objectives],
        sampler=make_sampler(config, args.seed),
    )
    for baseline in config.study.baselines:
        for params in evaluator.space.baselines(baseline):
            study.enqueue_trial(params, skip_if_exists=True)
    key = band_key(config.study.objectives)
    base = float(getattr(evaluator.base_measurement, key) or evaluator.base_measurement.macs)
    runs = []
    start = time.perf_counter()
    for number in range(args.trials):
        trial = study.ask()
        policy = evaluator.space.suggest(trial, seed=args.seed + number)
        result = evaluator.evaluate(policy)
        study.tell(trial, objective_values(result, config.study.objectives))
        if result.early_stopped:  # promotion never moves on a trial its first look stopped
            continue
        accuracies = [result.measurement.accuracy]
        first, model, samples = policy.finetune_steps, result.model, result.finetune_cost
        for rung in range(1, args.rungs):
            assert model is not None
            steps = first * (args.eta**rung - args.eta ** (rung - 1))
            longer = evaluator.continued(
                policy, Continuation(model, steps, args.seed + 1000 * rung + number, samples, result.kept, [])
            )
            accuracies.append(longer.measurement.accuracy)
            model, samples = longer.model, longer.finetune_cost
        runs.append(Run(number, result.objective(key) / base, tuple(accuracies)))
        print(
            f"policy {number + 1}/{args.trials}: MACs {100 * runs[-1].share:5.1f}%  val acc by rung "
            + " → ".join(f"{a:.4f}" for a in accuracies)
            + f"  ({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    return runs, config.study.name, device_name(device)


def _rho(first: Sequence[float], last: Sequence[float]) -> str:
    rho = spearman(list(first), list(last))
    return "–" if rho is None else f"{rho:+.2f}"


def table(runs: Sequence[Run], eta: int) -> str:
    """Per band and overall: runs, Spearman of each rung with the last, and whether the runs promoted
    from the first rung hold the last rung's best."""
    rungs = len(runs[0].accuracy)
    bands: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        bands[band(run.share)].append(run)
    header = [
        "MACs band",
        "runs",
        *(f"ρ rung {r} vs {rungs - 1}" for r in range(rungs - 1)),
        "promoted from rung 0 hold the best",
        "the band's best at the last rung: first → last",
    ]
    rows = []
    for key in sorted(bands):
        members = bands[key]
        last = [r.accuracy[-1] for r in members]
        kept = sorted(members, key=lambda r: -r.accuracy[0])[: math.ceil(len(members) / eta)]
        best = max(members, key=lambda r: r.accuracy[-1])
        rows.append(
            [
                f"({100 / 2 ** (key + 1):g}%, {100 / 2**key:g}%]",
                str(len(members)),
                *(_rho([r.accuracy[i] for r in members], last) for i in range(rungs - 1)),
                "yes"
                if best in kept
                else f"no (best {best.accuracy[-1]:.4f}, kept ≤ {max(r.accuracy[-1] for r in kept):.4f})",
                f"{best.accuracy[0]:.4f} → {best.accuracy[-1]:.4f}",
            ]
        )
    last = [r.accuracy[-1] for r in runs]
    rows.append(["all", str(len(runs)), *(_rho([r.accuracy[i] for r in runs], last) for i in range(rungs - 1)), "", ""])
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("study_file", metavar="STUDY.toml")
    parser.add_argument("--trials", type=int, default=24, help="policies to evaluate (default: 24)")
    parser.add_argument("--rungs", type=int, default=3, help="budgets per policy (default: 3)")
    parser.add_argument("--eta", type=int, default=3, help="each budget this many times the one before (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler and the fine-tunes (default: 0)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the study's)")
    parser.add_argument("--out", help="report file (default: reports/bench/fidelity-<study name>.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    return parser.parse_args(argv)


def bench(argv: list[str]) -> int:
    args = parse(argv)
    runs, name, machine = measure(args)
    out = Path(args.out) if args.out else Path("reports") / "bench" / f"fidelity-{name}.md"
    text = "\n".join(
        [
            f"# Ranking fidelity of the first fine-tune: study `{name}`",
            "",
            f"Command: `{COMMAND} {shlex.join(argv)}`",
            "",
            f"Machine: {machine}, torch {torch.__version__}",
            "",
            f"{len(runs)} policies from the study's sampler (its baselines first); each evaluated as a trial, then "
            f"fine-tuned on to {', '.join(f'{args.eta**r}×' for r in range(1, args.rungs))} its first steps in all, "
            "continuing from its weights as a promoted run does. ρ: Spearman rank correlation of validation "
            "accuracy at a rung with the last rung's, within each band of MACs (octaves of the base model's). "
            f"'Promoted from rung 0': the best ceil(n / {args.eta}) of the band by its first accuracy, what "
            "promotion moves on.",
            "",
            table(runs, args.eta),
            "",
            "Validation accuracy by rung, per policy: "
            + "; ".join(
                f"{100 * r.share:.1f}% " + "→".join(f"{a:.3f}" for a in r.accuracy)
                for r in sorted(runs, key=lambda r: -r.share)
            ),
            "",
        ]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(bench(sys.argv[1:]))

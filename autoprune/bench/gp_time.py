"""Benchmark: how long a sampler takes to propose one trial of a study's space, by trials held.

Optuna's ``GPSampler`` refits its Gaussian process on every completed trial before each proposal, so
its cost grows with the study. This fills an in-memory study with ``N`` completed trials of the study
file's own search space (parameters drawn at random; accuracy a smooth function of the target with
noise, the figure the target's share of the base model's), then times ``--repeats`` proposals
(``ask`` and the space's suggest) of each of ``--samplers`` for each ``N`` of ``--trials``, and
reports the median beside ``--trial-seconds`` (a trial's wall time on the same machine), whose tenth
is the goal::

    python -m autoprune.bench.gp_time STUDY.toml [--samplers gp gaps switch] [--trials 16 64 256]
        [--repeats 5] [--trial-seconds 7.5] [--out FILE] [--set SECTION.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
import time
from pathlib import Path

import optuna
import torch

from autoprune.bench import commit, print_report
from autoprune.bench.timing import device_name
from autoprune.config import StudyConfig, load_config
from autoprune.search.opening import PRELIMINARY_SAMPLES, make_sampler, resolve_device
from autoprune.search.prepare import prepare
from autoprune.search.record import DataShape, StudyRecord
from autoprune.trial.metrics import Measurement
from autoprune.trial.space import SearchSpace

COMMAND = "python -m autoprune.bench.gp_time"


BASE = Measurement(accuracy=0.9, macs=1_000_000, params=100_000, size=400_000)
"""The base model's figures the synthetic trials are shares of."""


def filled(space: SearchSpace, count: int, seed: int) -> list[optuna.trial.FrozenTrial]:
    """``count`` completed trials of ``space`` with random parameters and a smooth objective."""
    rng = random.Random(seed)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed))
    for _ in range(count):
        trial = study.ask()
        policy = space.suggest(trial, seed=0)
        share = float(trial.params.get("target", 1.0 - sum(policy.ratios.values()) / max(len(policy.ratios), 1)))
        accuracy = 0.9 - 0.4 * (1.0 - share) ** 3 + rng.gauss(0.0, 0.01)
        for figure in ("macs", "params"):
            trial.set_user_attr(figure, share * getattr(BASE, figure))
        trial.set_user_attr("accuracy", accuracy)
        study.tell(trial, [accuracy, share])
    return study.trials


def proposal_seconds(
    config: StudyConfig, space: SearchSpace, trials: list[optuna.trial.FrozenTrial], repeats: int
) -> float:
    """Median seconds of one proposal (ask and suggest) of ``config``'s sampler after ``trials``."""
    sampler = make_sampler(config, config.study.seed)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    shape = DataShape(num_classes=10, in_channels=1, image_size=8, example_input=(1, 1, 8, 8))
    StudyRecord(config, BASE, base_checkpoint=Path(), groups=dict.fromkeys(space.groups, 1), data_shape=shape).save(
        study
    )
    study.add_trials(trials)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        trial = study.ask()
        space.suggest(trial, seed=0)
        times.append(time.perf_counter() - start)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # not a data point for the next proposal
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("study")
    parser.add_argument("--samplers", nargs="+", default=["gp", "gaps", "switch"], help="default: gp gaps switch")
    parser.add_argument("--trials", type=int, nargs="+", default=[16, 64, 256], help="trials held (default 16 64 256)")
    parser.add_argument("--repeats", type=int, default=5, help="proposals timed at each count (default 5)")
    parser.add_argument("--trial-seconds", type=float, default=7.5, help="a trial's wall time here (default 7.5)")
    parser.add_argument("--out", help="also write the report to this Markdown file")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = load_config(args.study, args.set)
    device = resolve_device(config.study.device)
    space = prepare(config, device).evaluator.space
    greenlet = "present" if importlib.util.find_spec("greenlet") else "absent"
    rows = []
    for count in args.trials:
        trials = filled(space, count, config.study.seed)
        for name in args.samplers:
            sampler_config = load_config(args.study, [*args.set, f"study.sampler={name}", "study.startup_trials=8"])
            seconds = proposal_seconds(sampler_config, space, trials, args.repeats)
            rows.append(
                f"| {name} | {count} | {seconds:.3f} | {seconds / args.trial_seconds:.3f} | "
                f"{'yes' if seconds < args.trial_seconds / 10 else 'no'} |"
            )
    shown = sys.argv[1:] if argv is None else argv
    dims = len(filled(space, 1, 0)[0].params)
    lines = [
        f"# GP proposal time by trials held: {config.study.name}",
        "",
        f"Command: `{' '.join([COMMAND, *shown])}` at commit {commit()}",
        "",
        f"- {device_name(torch.device('cpu'))}; optuna {optuna.__version__}; the space of "
        f"`{config.space.granularity}` granularity over {len(space.groups)} groups: {dims} parameters per trial",
        f"- median of {args.repeats} proposals (ask and the space's suggest) after N completed trials (GP start-up: 8 "
        "trials); gaps proposes fills while the front has gaps worth one (on these noisy synthetic trials, always) "
        "and hands over to its GP after; switch proposes level switches once a band holds a trial; a trial "
        f"takes {args.trial_seconds:g} s here (`--trial-seconds`): the goal is under a tenth of that, "
        f"{args.trial_seconds / 10:.2g} s",
        f"- the GP scores {PRELIMINARY_SAMPLES:,} random points per proposal before its local searches "
        f"(`PRELIMINARY_SAMPLES`; Optuna's default 2,048); greenlet {greenlet} "
        "(Optuna batches the local searches on it)",
        "",
        "| sampler | trials held | seconds per proposal | share of a trial | under a tenth |",
        "| --- | ---: | ---: | ---: | --- |",
        *rows,
    ]
    print_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

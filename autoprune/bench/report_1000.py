"""Benchmark: time ``autoprune report`` on a synthetic study of 1,000 stored trials.

The study is built through Optuna's API (``optuna.create_trial`` and ``Study.add_trials``) with
plausible user attributes; no model is trained. It has no fine-tuned weights, so the report skips
the test-split accuracy (and says so on the page)::

    python -m autoprune.bench.report_1000 [--trials 1000] [--out /tmp/report-1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import tempfile
import time
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from autoprune.config import StudyConfig
from autoprune.results.report import write_report
from autoprune.search.record import DataShape, StudyRecord
from autoprune.trial.metrics import Measurement

GROUPS = {"stem.0": 32, "block1.conv1.0": 32, "block2.conv1.0": 64, "block2.conv2.0": 64, "hidden": 128}
BASE = Measurement(accuracy=0.98, macs=2_695_882, params=116_266, size=479_915)
SCORERS = ["l1", "l2", "taylor", "gradient_norm", "fpgm", "bn_scale", "random"]


def synthetic_study(n_trials: int, storage: str | None, seed: int = 0) -> optuna.Study:
    """A study shaped like one ``autoprune search`` writes, with ``n_trials`` made-up trials."""
    rng = random.Random(seed)
    defaults = StudyConfig()
    config = dataclasses.replace(defaults, study=dataclasses.replace(defaults.study, name="synthetic", trials=n_trials))
    study = optuna.create_study(
        storage=storage, study_name="synthetic", directions=["maximize", "minimize", "minimize", "minimize"]
    )
    study.set_metric_names(["accuracy", "macs", "size", "finetune_cost"])
    shape = DataShape(num_classes=10, in_channels=1, image_size=8, example_input=(1, 1, 8, 8))
    StudyRecord(config, BASE, base_checkpoint=Path(), groups=GROUPS, data_shape=shape).save(study)
    dists: dict[str, optuna.distributions.BaseDistribution] = {
        f"ratio.{g}": FloatDistribution(0.0, 0.8) for g in GROUPS
    }
    dists |= {
        "scorer": CategoricalDistribution(SCORERS),
        "finetune_steps": IntDistribution(20, 200, log=True),
        "lr": FloatDistribution(1e-3, 0.1, log=True),
        "prune_steps": IntDistribution(1, 3),
    }
    trials = []
    for number in range(n_trials):
        baseline = [0.25, 0.5, 0.75][number] if number < 3 else None
        ratios = {g: baseline if baseline is not None else rng.uniform(0, 0.8) for g in GROUPS}
        steps = 200 if baseline is not None else int(round(20 * 10 ** rng.uniform(0, 1)))
        scorer = "l1" if baseline is not None else rng.choice(SCORERS)
        kept = {g: max(1, round(c * (1 - ratios[g]))) for g, c in GROUPS.items()}
        keep = sum(kept.values()) / sum(GROUPS.values())
        macs = int(BASE.macs * keep**1.7)
        params = int(BASE.params * keep**1.8)
        size = int(BASE.size * keep**1.8) + 4000
        acc = max(0.1, min(1.0, 0.985 - 0.25 * (1 - keep) ** 3 - 0.02 / (steps / 20) + rng.gauss(0, 0.008)))
        cost = steps * 64
        policy = {
            "ratios": ratios,
            "scorer": scorer,
            "finetune_steps": steps,
            "lr": 0.01 if baseline is not None else 10 ** rng.uniform(-3, -1),
            "prune_steps": 1 if baseline is not None else rng.randint(1, 3),
            "global_ranking": False,
            "channel_multiple": 1,
            "seed": number,
        }
        params_ = {f"ratio.{g}": r for g, r in ratios.items()} | {
            "scorer": scorer,
            "finetune_steps": steps,
            "lr": policy["lr"],
            "prune_steps": policy["prune_steps"],
        }
        attrs = {
            "policy": policy,
            "accuracy": acc,
            "macs": macs,
            "params": params,
            "size": size,
            "finetune_cost": cost,
            "kept": kept,
            "seconds": {"surgery": 0.1, "finetune": steps / 100},
        }
        if baseline is not None:
            attrs["baseline"] = baseline
        trials.append(
            optuna.create_trial(params=params_, distributions=dists, values=[acc, macs, size, cost], user_attrs=attrs)
        )
    study.add_trials(trials)
    return study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--out", default="")
    parser.add_argument("--storage", default="", help="Optuna storage URL (default: in memory)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        study = synthetic_study(args.trials, args.storage or None)
        built = time.perf_counter() - start
        out = Path(args.out) if args.out else Path(tmp) / "report"
        start = time.perf_counter()
        report = write_report(study, out, command="python -m autoprune.bench.report_1000")
        seconds = time.perf_counter() - start
    print(
        f"synthetic study of {args.trials} trials built in {built:.1f}s; report (front of {len(report.front)}) "
        f"written in {seconds:.2f}s"
    )


if __name__ == "__main__":
    main()

"""Benchmark: a trial's copy and surgery, tracing its own copy against copying the study's trace.

For each model (random weights at 28×28 grey: surgery time does not depend on what the weights
learnt), the same seeded random policies (ratios per group from 0 to 0.8, l1 scorer, one or two
prune steps) are applied both ways, alternately, and each way is timed from the copy of the base
model to the last prune step; the two must remove the same channels::

    python -m autoprune.bench.surgery [--models fmnist_cnn resnet20 mobilenet_small] [--trials 20]
        [--out reports/bench/surgery.md]
"""

from __future__ import annotations

import argparse
import copy
import random
import shlex
import statistics
import sys
import time

import torch

from autoprune.bench import print_report
from autoprune.bench.timing import device_name
from autoprune.models import build_model
from autoprune.policy import Policy
from autoprune.scorers import make_scorer
from autoprune.trial.surgery import Surgery, TracedModel

MODELS = ("fmnist_cnn", "resnet20", "mobilenet_small")


def _policies(names: list[str], trials: int) -> list[Policy]:
    rng = random.Random(0)
    return [
        Policy({g: rng.uniform(0.0, 0.8) for g in names}, "l1", 1, 0.01, prune_steps=1 + i % 2) for i in range(trials)
    ]


def _prune(model: torch.nn.Module, example: torch.Tensor, policy: Policy, names: list[str], graph: object) -> Surgery:
    surgery = Surgery(model, example, policy, make_scorer("l1"), groups=names, graph=graph)
    for _ in range(surgery.steps):
        surgery.step()
    return surgery


def measure(name: str, trials: int) -> dict[str, float]:
    """Seconds per trial each way (mean and median), and the one trace of the study."""
    torch.manual_seed(0)
    base = build_model(name, num_classes=10, in_channels=1, image_size=28).eval()
    example = torch.randn(1, 1, 28, 28)
    start = time.perf_counter()
    traced = TracedModel(base, example)
    trace_s = time.perf_counter() - start
    per_trial: list[float] = []
    once: list[float] = []
    for policy in _policies(traced.names, trials):
        start = time.perf_counter()
        fresh = _prune(copy.deepcopy(base), example, policy, traced.names, None)
        per_trial.append(time.perf_counter() - start)
        start = time.perf_counter()
        model, graph = traced.copy()
        reused = _prune(model, example, policy, traced.names, graph)
        once.append(time.perf_counter() - start)
        if reused.removed() != fresh.removed():
            raise AssertionError(f"{name}: the two ways removed different channels for {policy}")
    return {
        "groups": len(traced.names),
        "trace": trace_s,
        "per_trial_mean": statistics.mean(per_trial),
        "per_trial_median": statistics.median(per_trial),
        "once_mean": statistics.mean(once),
        "once_median": statistics.median(once),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="built-in models (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=20, help="policies per model (default 20)")
    parser.add_argument("--out", help="also write the report to this Markdown file")
    args = parser.parse_args(argv)
    shown = sys.argv[1:] if argv is None else argv
    lines = [
        "# Surgery per trial: tracing each copy against copying the study's trace",
        "",
        f"Command: `python -m autoprune.bench.surgery {shlex.join(shown)}`",
        "",
        f"- device: {device_name(torch.device('cpu'))}; torch {torch.__version__}",
        f"- {args.trials} seeded random policies per model (l1, ratios 0–0.8 per group, one or two prune "
        "steps), each applied both ways to a copy of the same randomly initialised model at 28×28 grey; "
        "both ways removed the same channels every time",
        "- a trial's time runs from copying the base model to its last prune step",
        "",
        "| model | groups | trace once (s) | traced per trial: mean / median (s) "
        "| copy of the trace: mean / median (s) | saved |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in args.models:
        m = measure(name, args.trials)
        saved = 1 - m["once_mean"] / m["per_trial_mean"]
        lines.append(
            f"| {name} | {m['groups']:.0f} | {m['trace']:.3f} | {m['per_trial_mean']:.3f} / "
            f"{m['per_trial_median']:.3f} | {m['once_mean']:.3f} / {m['once_median']:.3f} | {100 * saved:.0f}% |"
        )
        print(lines[-1], flush=True)
    print_report(lines, args.out)


if __name__ == "__main__":
    main()

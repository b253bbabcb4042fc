"""Benchmark: how near the latency model's predictions come to measured latency.

For each study file and runtime, the study's latency model is fitted (its tables and calibration, as a
study fits it; the fit's seconds reported), then random allocations it never saw (every group at its
own ratio, uniform in ``[0, space.ratio_max]``, kept channels at the study's channel multiple) are
pruned, timed together on the runtime, timed again (how far the two timings differ is the noise no
prediction can beat) and predicted. Errors are ``predicted / measured - 1``::

    python -m autoprune.bench.latency_model studies/compare_fashion_mnist.toml \\
        studies/compare_fashion_mnist_resnet20.toml studies/compare_fashion_mnist_mobilenet.toml \\
        --out reports/bench/latency-model.md

Run it with nothing else on the machine: it reports timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from autoprune.bench import commit, print_report
from autoprune.bench.timing import device_name
from autoprune.config import StudyConfig, load_config
from autoprune.search.prepare import prepare
from autoprune.trial.cost import pruned_copy
from autoprune.trial.evaluate import TrialEvaluator
from autoprune.trial.latency import ROUNDS, measure_latencies
from autoprune.trial.latency_model import LatencyModel
from autoprune.trial.metrics import count_macs_params

COMMAND = "python -m autoprune.bench.latency_model"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", metavar="STUDY.toml")
    parser.add_argument("--runtimes", nargs="+", default=["onnxruntime", "torch"], choices=["onnxruntime", "torch"])
    parser.add_argument("--trials", type=int, default=20, help="random allocations per model and runtime")
    parser.add_argument("--threads", type=int, default=1, help="trial.latency_threads")
    parser.add_argument("--batch", type=int, default=1, help="trial.latency_batch_size")
    parser.add_argument("--repeats", type=int, default=100, help="timed passes of each allocation")
    parser.add_argument("--seed", type=int, default=1000, help="seeds the allocations (the fit's calibration: 0)")
    parser.add_argument("--out", help="write the Markdown report here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    argv_text = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    summary = [
        "| model | runtime | layers | block | fit s | calibration error | repeat: median | worst "
        "| error: median | worst | within 15 % | error vs base: median | worst | within 15 % |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = [
        "| model | runtime | allocation | MACs % | measured ms | repeat ms | predicted ms | error | error vs base |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for study in args.studies:
        name = Path(study).stem
        for runtime in args.runtimes:
            fit = Fit.of(study, runtime, threads=args.threads, batch=args.batch, repeats=args.repeats)
            config, evaluator, batch, model = fit.config, fit.evaluator, fit.batch, fit.model
            pruned, kept = fit.random_allocations(args.trials, random.Random(args.seed))
            example = evaluator.traced.example_input[:1].cpu()
            base = evaluator.traced.model.eval()
            base_ms, *measured = [t.ms for t in measure_latencies([base, *pruned], batch, config.trial)]
            repeated = [t.ms for t in measure_latencies(pruned, batch, config.trial)]
            base_predicted = model.predict({})
            errors, relative, repeats = [], [], []
            for i, (copy, counts, ms, again) in enumerate(zip(pruned, kept, measured, repeated, strict=True)):
                predicted = model.predict(counts)
                errors.append(predicted / ms - 1.0)
                relative.append((predicted / base_predicted) / (ms / base_ms) - 1.0)
                repeats.append(again / ms - 1.0)
                macs = 100 * count_macs_params(copy, example)[0] / evaluator.base_measurement.macs
                rows.append(
                    f"| {name} | {runtime} | {i} | {macs:.1f} | {ms:.4f} | {again:.4f} | {predicted:.4f} | "
                    f"{100 * errors[-1]:+.1f} % | {100 * relative[-1]:+.1f} % |"
                )
                print(rows[-1], flush=True)
            summary.append(
                f"| {name} | {runtime} | {len(model.layers)} | {model.block} | {fit.seconds:.0f} | "
                f"{100 * model.error:.1f} % | {_spread(repeats)} | {_spread(errors)} | "
                f"{_within(errors)} | {_spread(relative)} | {_within(relative)} |"
            )
            print(summary[-1], flush=True)
    lines = [
        "# The latency model against measured latency",
        "",
        f"Command: `{COMMAND} {argv_text}` at commit {commit()}",
        "",
        f"- {device_name(torch.device('cpu'))}; batch {args.batch}, {args.threads} thread(s); nothing else running",
        f"- measured: the allocations timed together, {ROUNDS} rounds of {args.repeats // ROUNDS} passes each in "
        "turn, the median of each one's round medians (as the report times a front); repeat: the same "
        "measurement again, whose difference from the first is the measurement's own noise",
        f"- {args.trials} random allocations per model and runtime (seed {args.seed}): each group at its own ratio "
        "in [0, space.ratio_max], kept channels at the study's channel multiple; none of them among the fit's "
        "calibration points",
        "- error: predicted / measured − 1; repeat: repeat / measured − 1 (how much the machine's own speed "
        "moved between the two); error vs base: the latency relative to the base model's, predicted against "
        "measured (the base timed in the same rounds: what a speedup's error is, free of the machine's drift)",
        "- calibration error: the largest on the fit's own points; block: the channel block the fit pads "
        "convolutions' widths to (1: none)",
        "",
        *summary,
        "",
        "Every allocation:",
        "",
        *rows,
    ]
    print_report(lines, args.out)
    return 0


@dataclasses.dataclass(frozen=True)
class Fit:
    """A study file's latency model, fitted as a study fits it, and what it was fitted on."""

    config: StudyConfig
    evaluator: TrialEvaluator
    batch: torch.Tensor
    model: LatencyModel
    seconds: float

    @staticmethod
    def settings(study: str, runtime: str, *, threads: int, batch: int, repeats: int) -> StudyConfig:
        """The study file's settings with latency timed on ``runtime`` as a benchmark asks."""
        return load_config(
            study,
            [
                f"trial.latency_runtime='{runtime}'",
                f"trial.latency_threads={threads}",
                f"trial.latency_batch_size={batch}",
                f"trial.latency_repeats={repeats}",
            ],
        )

    @classmethod
    def of(cls, study: str, runtime: str, *, threads: int, batch: int, repeats: int) -> Fit:
        """The study file's latency model with latency timed on ``runtime`` as a benchmark asks."""
        config = cls.settings(study, runtime, threads=threads, batch=batch, repeats=repeats)
        evaluator = prepare(config, torch.device("cpu")).evaluator
        rows = evaluator.data.val.x[:batch].cpu()
        start = time.perf_counter()
        space = config.space
        model = LatencyModel.fit(
            evaluator.traced, config.trial, batch=rows, ratio_max=space.ratio_max, multiple=space.multiple
        )
        return cls(config, evaluator, rows, model, time.perf_counter() - start)

    def random_allocations(self, count: int, rng: random.Random) -> tuple[list[nn.Module], list[dict[str, int]]]:
        """``count`` pruned copies of the base model, every group at its own ratio drawn from ``[0,
        space.ratio_max]``, kept channels at the study's channel multiple; and their kept counts."""
        traced, space = self.evaluator.traced, self.config.space
        example = traced.example_input[:1].cpu()
        models, kept = [], []
        for _ in range(count):
            ratios = {g: rng.uniform(0.0, space.ratio_max) for g in self.model.groups}
            model, counts = pruned_copy(traced, example, ratios, multiple=space.multiple)
            models.append(model)
            kept.append(counts)
        return models, kept


def _spread(errors: Sequence[float]) -> str:
    """The median and the largest absolute error, as two cells."""
    absolute = [abs(e) for e in errors]
    return f"{100 * statistics.median(absolute):.1f} % | {100 * max(absolute):.1f} %"


def _within(errors: Sequence[float]) -> str:
    """How many of the errors are within 15 %, as one cell."""
    return f"{sum(abs(e) <= 0.15 for e in errors)} of {len(errors)}"


__all__ = ["Fit", "main"]

if __name__ == "__main__":
    raise SystemExit(main())

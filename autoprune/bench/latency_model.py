"""Benchmark: how near the latency model's predictions come to measured latency.

For each study file and runtime, the study's latency model is fitted (its tables and calibration, as a
study fits it; the fit's seconds reported), then random allocations it never saw (every group at its
own ratio, uniform in ``[0, space.ratio_max]``, kept channels at the study's channel multiple) are
pruned, timed on the runtime and predicted. Errors are ``predicted / measured - 1``::

    python -m autoprune.bench.latency_model studies/compare_fashion_mnist.toml \\
        studies/compare_fashion_mnist_resnet20.toml studies/compare_fashion_mnist_mobilenet.toml \\
        --out reports/bench/latency-model.md

Run it with nothing else on the machine: it reports timings.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from autoprune.bench import commit, print_report
from autoprune.bench.timing import device_name
from autoprune.config import load_config
from autoprune.search.prepare import prepare
from autoprune.trial.cost import pruned_copy
from autoprune.trial.latency import measure_latency
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
        "| model | runtime | layers | fit s | calibration error | median error | worst error | within 15 % |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = [
        "| model | runtime | allocation | MACs % | measured ms | predicted ms | error |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for study in args.studies:
        name = Path(study).stem
        for runtime in args.runtimes:
            config = load_config(
                study,
                [
                    f"trial.latency_runtime='{runtime}'",
                    f"trial.latency_threads={args.threads}",
                    f"trial.latency_batch_size={args.batch}",
                    f"trial.latency_repeats={args.repeats}",
                ],
            )
            evaluator = prepare(config, torch.device("cpu")).evaluator
            traced = evaluator.traced
            batch = evaluator.data.val.x[: args.batch].cpu()
            start = time.perf_counter()
            model = LatencyModel.fit(
                traced, config.trial, batch=batch, ratio_max=config.space.ratio_max, multiple=config.space.multiple
            )
            seconds = time.perf_counter() - start
            rng = random.Random(args.seed)
            example = traced.example_input[:1].cpu()
            errors = []
            for i in range(args.trials):
                ratios = {g: rng.uniform(0.0, config.space.ratio_max) for g in model.groups}
                pruned, kept = pruned_copy(traced, example, ratios, multiple=config.space.multiple)
                measured = measure_latency(pruned, batch, config.trial).ms
                predicted = model.predict(kept)
                errors.append(predicted / measured - 1.0)
                macs = 100 * count_macs_params(pruned, example)[0] / evaluator.base_measurement.macs
                rows.append(
                    f"| {name} | {runtime} | {i} | {macs:.1f} | {measured:.4f} | {predicted:.4f} | "
                    f"{100 * errors[-1]:+.1f} % |"
                )
                print(rows[-1], flush=True)
            absolute = [abs(e) for e in errors]
            summary.append(
                f"| {name} | {runtime} | {len(model.layers)} | {seconds:.0f} | {100 * model.error:.1f} % | "
                f"{100 * statistics.median(absolute):.1f} % | {100 * max(absolute):.1f} % | "
                f"{sum(a <= 0.15 for a in absolute)} of {len(absolute)} |"
            )
            print(summary[-1], flush=True)
    lines = [
        "# The latency model against measured latency",
        "",
        f"Command: `{COMMAND} {argv_text}` at commit {commit()}",
        "",
        f"- {device_name(torch.device('cpu'))}; batch {args.batch}, {args.threads} thread(s), median of "
        f"{args.repeats} timed passes per allocation; nothing else running",
        f"- {args.trials} random allocations per model and runtime (seed {args.seed}): each group at its own ratio "
        "in [0, space.ratio_max], kept channels at the study's channel multiple; none of them among the fit's "
        "calibration points",
        "- error: predicted / measured − 1; calibration error: the largest on the fit's own points",
        "",
        *summary,
        "",
        "Every allocation:",
        "",
        *rows,
    ]
    print_report(lines, args.out)
    return 0


__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())

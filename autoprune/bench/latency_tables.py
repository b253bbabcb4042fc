"""Benchmark: how well the latency model's tables predict, free of the machine's drift.

Latency measured at one moment and predicted from tables timed at another differ by the model's error
and by how much the machine's own speed moved in between (on a shared 2-core VM, up to a fifth within
minutes: the repeat columns of ``reports/bench/latency-model.md``). This benchmark takes the second
out. For each study file, the study's latency model is fitted on ONNX Runtime as a study fits it; then
``--allocations`` random allocations and the base model are timed together, in rounds, once. The
calibration is refitted to ``--fits`` random subsets of as many of them as a study calibrates on and
tested on the rest, every subset with each channel block, so that every figure compares predictions
with timings of the same moment::

    python -m autoprune.bench.latency_tables studies/compare_fashion_mnist.toml \\
        studies/compare_fashion_mnist_resnet20.toml studies/compare_fashion_mnist_mobilenet.toml \\
        --out reports/bench/latency-tables.md

Run it with nothing else on the machine: it reports timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from autoprune.bench import commit, print_report
from autoprune.bench.latency_model import Fit
from autoprune.bench.timing import device_name
from autoprune.trial.latency import ROUNDS, measure_latencies
from autoprune.trial.latency_model import BLOCKS, CALIBRATION

COMMAND = "python -m autoprune.bench.latency_tables"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", metavar="STUDY.toml")
    parser.add_argument("--allocations", type=int, default=60, help="random allocations timed per model")
    parser.add_argument("--fits", type=int, default=20, help="calibration subsets per model and block")
    parser.add_argument("--repeats", type=int, default=100, help="timed passes of each allocation")
    parser.add_argument("--seed", type=int, default=2000, help="seeds the allocations and the subsets")
    parser.add_argument("--out", help="write the Markdown report here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    argv_text = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    size = sum(CALIBRATION)
    rows = [
        "| model | block | calibrated on | tested on | median error | worst error | largest worst | within 15 % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for study in args.studies:
        name = Path(study).stem
        fit = Fit.of(study, "onnxruntime", threads=1, batch=1, repeats=args.repeats)
        config, fitted = fit.config, fit.model
        rng = random.Random(args.seed)
        pruned, kept = fit.random_allocations(args.allocations, rng)
        models = [fit.evaluator.traced.model.eval(), *pruned]
        kept_counts = np.array([list(fitted.channels.values())] + [[k[g] for g in fitted.groups] for k in kept], float)
        times = np.array([t.ms for t in measure_latencies(models, fit.batch, config.trial)])
        subsets = [rng.sample(range(len(times)), size) for _ in range(args.fits)]
        for block in BLOCKS:
            if block > 1 and config.space.multiple % block == 0:
                continue  # kept channels are multiples of it already: the same as no block
            tables = dataclasses.replace(fitted, block=block)
            medians, worsts, within = [], [], []
            for subset in subsets:
                rest = np.setdiff1d(np.arange(len(times)), subset)
                model = tables.fitted_to(kept_counts[subset], times[subset])
                errors = model.predict_many(kept_counts[rest]) / times[rest] - 1.0
                medians.append(float(np.median(np.abs(errors))))
                worsts.append(float(np.abs(errors).max()))
                within.append(float(np.mean(np.abs(errors) <= 0.15)))
            label = f"{block} (the runtime's)" if block == fitted.block else str(block)
            rows.append(
                f"| {name} | {label} | {size} | {len(times) - size} | {100 * statistics.mean(medians):.1f} % | "
                f"{100 * statistics.mean(worsts):.1f} % | {100 * max(worsts):.1f} % | "
                f"{100 * statistics.mean(within):.0f} % |"
            )
            print(rows[-1], flush=True)
    lines = [
        "# The latency model's tables, free of the machine's drift",
        "",
        f"Command: `{COMMAND} {argv_text}` at commit {commit()}",
        "",
        f"- {device_name(torch.device('cpu'))}; ONNX Runtime's CPU provider, 1 thread, batch 1; nothing else running",
        f"- per model: the study's latency model fitted as a study fits it; {args.allocations} random allocations "
        f"(seed {args.seed}; each group at its own ratio in [0, space.ratio_max], kept channels at the study's "
        f"channel multiple) and the base model timed together once, {ROUNDS} rounds of {args.repeats // ROUNDS} "
        "passes each in turn",
        f"- per block: the calibration refitted to {args.fits} random subsets of {size} of those timings (as many "
        "as a study calibrates on) and tested on the others; median and worst error: their means over the "
        "subsets; largest worst: the worst subset's; within 15 %: the mean share of tested allocations",
        "- error: predicted / measured − 1; block: the channel block convolutions' widths are padded to (1: none)",
        "",
        *rows,
    ]
    print_report(lines, args.out)
    return 0


__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: where a runtime's kernels step, layer by layer.

For each study file, every convolution and linear layer of the base model is timed alone on ONNX
Runtime (as the latency model tables it: a one-operator program, less a call doing nothing) with all
its inputs and each multiple of ``--step`` outputs. A time that stays flat across several widths and
then jumps is a kernel working on channels in blocks: what the latency model's channel block
(``trial/latency_model.py``: ``BLOCKS``) and its linear layers' dense output grid follow::

    python -m autoprune.bench.layer_steps studies/compare_fashion_mnist.toml \\
        --out reports/bench/layer-steps.md

Run it with nothing else on the machine: it reports timings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from autoprune.bench import commit, print_report
from autoprune.bench.latency_model import Fit
from autoprune.bench.timing import device_name
from autoprune.search.prepare import prepare
from autoprune.trial.latency_model import _layer_shapes, _LayerTimer

COMMAND = "python -m autoprune.bench.layer_steps"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", metavar="STUDY.toml")
    parser.add_argument("--step", type=int, default=8, help="output widths: every multiple of this")
    parser.add_argument("--out", help="write the Markdown report here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    argv_text = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    rows = ["| model | layer | inputs | outputs | µs at each output width |", "| --- | --- | ---: | ---: | --- |"]
    for study in args.studies:
        config = Fit.settings(study, "onnxruntime", threads=1, batch=1, repeats=100)
        traced = prepare(config, torch.device("cpu")).evaluator.traced
        timer = _LayerTimer(config.trial, 1, torch.device("cpu"))
        for name, shape in _layer_shapes(traced.model, traced.example_input[:1].cpu()).items():
            widths = range(args.step, shape.width_out + 1, args.step)
            if shape.depthwise or len(widths) < 2:
                continue
            cells = ", ".join(f"{w}: {1000 * timer.layer(shape, shape.width_in, w):.1f}" for w in widths)
            rows.append(f"| {Path(study).stem} | {name} | {shape.width_in} | {shape.width_out} | {cells} |")
            print(rows[-1], flush=True)
    lines = [
        "# Where a runtime's kernels step, layer by layer",
        "",
        f"Command: `{COMMAND} {argv_text}` at commit {commit()}",
        "",
        f"- {device_name(torch.device('cpu'))}; ONNX Runtime's CPU provider, 1 thread, batch 1; nothing else running",
        "- each layer alone (a one-operator program, less the same call doing nothing), all its inputs, at every "
        f"multiple of {args.step} outputs; µs: the median of the latency model's passes per width",
        "",
        *rows,
    ]
    print_report(lines, args.out)
    return 0


__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())

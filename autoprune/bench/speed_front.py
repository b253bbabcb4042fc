"""Benchmark: the speed of a front searched against latency on ONNX Runtime.

For each study file, a study of accuracy against latency (``trial.latency_runtime = "onnxruntime"``,
one thread, trials' latency predicted by the study's latency model) runs ``--trials`` trials; then its
report times every front member and the base model on the runtime. This gathers, per model, each
front member's measured latency, its speedup over the base model beside its MACs reduction, and
how far the search's prediction was from the timing::

    python -m autoprune.bench.speed_front studies/compare_fashion_mnist.toml \\
        studies/compare_fashion_mnist_resnet20.toml studies/compare_fashion_mnist_mobilenet.toml \\
        --out reports/bench/speed-front.md

Run it with nothing else on the machine: it reports timings.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from autoprune.bench import commit, print_report
from autoprune.bench.timing import device_name
from autoprune.config import load_config
from autoprune.results.report import write_report
from autoprune.search.record import StudyRecord
from autoprune.search.run import run_study

COMMAND = "python -m autoprune.bench.speed_front"


def _rows(name: str, front: pd.DataFrame, base_macs: float) -> list[str]:
    rows = []
    for r in front.dropna(subset=["speedup"]).itertuples(index=False):
        rows.append(
            f"| {name} | {r.trial} | {100 * r.macs / base_macs:.1f} | {base_macs / r.macs:.2f}× | "
            f"{r.latency_measured_ms:.4f} | {r.latency_ms:.4f} | {100 * r.latency_error:+.1f} % | {r.speedup:.2f}× | "
            f"{100 * r.speedup_error:+.1f} % |"
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", metavar="STUDY.toml")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="trial.latency_threads")
    parser.add_argument("--out", help="write the Markdown report here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    argv_text = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    summary = [
        "| model | base ms | front | median error | worst error | speedup error: median | worst "
        "| largest speedup | at MACs reduction |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = [
        "| model | trial | MACs % | MACs reduction | measured ms | predicted ms | error | speedup | speedup error |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for study_file in args.studies:
            name = Path(study_file).stem
            config = load_config(
                study_file,
                [
                    f"study.name='speed-{name}'",
                    "study.objectives=['accuracy', 'latency_ms']",
                    f"study.trials={args.trials}",
                    "trial.latency_runtime='onnxruntime'",
                    f"trial.latency_threads={args.threads}",
                ],
            )
            storage = f"sqlite:///{Path(folder) / name}.db"
            study = run_study(config, storage=storage)
            report = write_report(study, Path(folder) / name, storage=storage)
            front = pd.read_csv(report.folder / "front.csv")
            base_macs = float(StudyRecord.from_study(study).base.macs)
            timed = front.dropna(subset=["speedup"])
            errors, speedups = timed["latency_error"].abs(), timed["speedup_error"].abs()
            fastest = timed.loc[timed["speedup"].idxmax()]
            base_ms = float(fastest["latency_measured_ms"] * fastest["speedup"])  # the report's timing of the base
            summary.append(
                f"| {name} | {base_ms:.4f} | {len(timed)} | {100 * errors.median():.1f} % | "
                f"{100 * errors.max():.1f} % | {100 * speedups.median():.1f} % | {100 * speedups.max():.1f} % | "
                f"{fastest['speedup']:.2f}× | {base_macs / fastest['macs']:.2f}× |"
            )
            rows += _rows(name, front, base_macs)
    lines = [
        "# The speed of a front searched against latency on ONNX Runtime",
        "",
        f"Command: `{COMMAND} {argv_text}` at commit {commit()}",
        "",
        f"- {device_name(torch.device('cpu'))}; ONNX Runtime's CPU provider, {args.threads} thread(s), batch 1; "
        "nothing else running",
        f"- per model: a study of accuracy against latency, {args.trials} trials, the study file's other settings; "
        "trials' latency predicted by the study's latency model; then `autoprune report`, which times every "
        "front member and the base model on the runtime",
        "- error: predicted / measured − 1; speedup: the base model's latency over the member's, both timed by "
        "the report; speedup error: the predicted speedup (the latency model's base over its member) over the "
        "measured − 1, free of a change of the machine's speed between the search and the report",
        "",
        *summary,
        "",
        "Every front member:",
        "",
        *rows,
    ]
    print_report(lines, args.out)
    return 0


__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())

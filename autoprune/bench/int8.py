"""Benchmark: INT8 on top of pruning, against the FP32 pruned model, on ONNX Runtime's CPU provider.

For each study file (an ``allocation`` study) and level, the one-shot allocation and uniform pruning
at the level's share of the base model's MACs are fine-tuned by the study's baseline recipe (the
trial the search enqueues there, and the pick at that level in every comparison measured so far),
exported to ONNX as ``autoprune export`` writes it (normalization inside, raw pixels in), quantized
as ``autoprune export --int8`` quantizes it, and both programs measured: test accuracy on the whole
test split, latency at batch 1 and 32 with one thread (three rounds in turn, median of medians)::

    python -m autoprune.bench.int8 studies/compare_fashion_mnist.toml \\
        studies/compare_fashion_mnist_resnet20.toml studies/compare_fashion_mnist_mobilenet.toml \\
        --out reports/bench/int8.md

Run it with nothing else on the machine: it reports timings.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from autoprune.bench import commit
from autoprune.bench.channel_multiple import ROUNDS, median_of_rounds, pruned_at
from autoprune.bench.timing import device_name
from autoprune.config import load_config
from autoprune.results.export import Preprocessed, exported_program, write_onnx
from autoprune.results.quantize import CALIBRATION_IMAGES, INT8, onnx_accuracy, quantize_static
from autoprune.search.prepare import prepare
from autoprune.trial.latency import time_onnx
from autoprune.trial.metrics import count_macs_params

COMMAND = "python -m autoprune.bench.int8"


def _ms(program: bytes, batch: torch.Tensor, repeats: int) -> float:
    return time_onnx(program, batch, repeats=repeats, threads=1).ms


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", help="allocation study files")
    parser.add_argument("--levels", type=float, nargs="+", default=[25.0], help="MACs shares, %% of base")
    parser.add_argument("--repeats", type=int, default=100, help="timed passes per round")
    parser.add_argument("--out", help="also write the report to this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = [
        "# INT8 on top of pruning (ONNX Runtime, CPU)",
        "",
        f"Made by `{COMMAND} {' '.join(argv if argv is not None else sys.argv[1:])}` at commit {commit()}.",
        "",
        f"{device_name(torch.device('cpu'))}; ONNX Runtime's CPU provider with one thread; static quantization "
        f"(QDQ, per-channel INT8 weights, INT8 activations calibrated on {CALIBRATION_IMAGES} training images); "
        "each model fine-tuned by its study's baseline recipe first. Test accuracy on the whole test split, both "
        f"programs run by ONNX Runtime; latency the median of {ROUNDS} rounds of {args.repeats} passes.",
        "",
        "| model | level | method | MACs % | FP32 test | INT8 test | Δ points | FP32 b1 ms | INT8 b1 ms | "
        "INT8/FP32 b1 | FP32 b32 ms | INT8 b32 ms | INT8/FP32 b32 | INT8 bytes / FP32 |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines))
    for study in args.studies:
        config = load_config(study, ["space.granularity='allocation'"])
        evaluator = prepare(config, torch.device("cpu")).evaluator
        data = evaluator.data
        shuffled = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
        for level in args.levels:
            for method, mix in (("one-shot", 1.0), ("uniform", 0.0)):
                model = pruned_at(evaluator, level, mix, finetune=True)
                share = 100 * count_macs_params(model, evaluator.example_input)[0] / evaluator.base_measurement.macs
                program = Preprocessed(model, data.mean, data.std).eval()
                pixels = program.pixels(data.test.x.cpu()).detach()
                with tempfile.TemporaryDirectory() as tmp:
                    fp32_path, int8_path = Path(tmp) / "model.onnx", Path(tmp) / INT8
                    write_onnx(exported_program(program, pixels[:2]), fp32_path)
                    calibration = program.pixels(data.train.x[shuffled[:CALIBRATION_IMAGES]].cpu()).detach()
                    quantize_static(fp32_path, int8_path, calibration)
                    fp32, int8 = fp32_path.read_bytes(), int8_path.read_bytes()
                accs = [onnx_accuracy(p, pixels, data.test.y.cpu(), config.data.batch_size) for p in (fp32, int8)]
                timers: dict[str, Callable[[], float]] = {
                    f"{name} {b}": functools.partial(_ms, p, pixels[:b], args.repeats)
                    for name, p in (("fp32", fp32), ("int8", int8))
                    for b in (1, 32)
                }
                found = median_of_rounds(timers)
                lines.append(
                    f"| {Path(study).stem} | {level:g} % | {method} | {share:.2f} | {100 * accs[0]:.2f} | "
                    f"{100 * accs[1]:.2f} | {100 * (accs[1] - accs[0]):+.2f} | {found['fp32 1']:.3f} | "
                    f"{found['int8 1']:.3f} | {found['int8 1'] / found['fp32 1']:.2f} | {found['fp32 32']:.3f} | "
                    f"{found['int8 32']:.3f} | {found['int8 32'] / found['fp32 32']:.2f} | "
                    f"{len(int8) / len(fp32):.2f} |"
                )
                print(lines[-1])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

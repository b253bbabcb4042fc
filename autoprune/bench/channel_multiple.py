"""Benchmark: do channel counts rounded to multiples of 8 or 16 run faster at equal MACs?

For each study file (an ``allocation`` study: its base model, data and sensitivity), each level
(a share of the base model's MACs) and each channel multiple, uniform pruning and the one-shot
allocation are built at the level's target (the allocation space lands every multiple within 1 % of
it), and timed on eager PyTorch and on ONNX Runtime at batch 1 and 32 with one thread. The variants
of one model and level are timed in turn, three rounds, so that drift of the machine falls on all of
them alike; each figure is the median of the rounds' medians::

    python -m autoprune.bench.channel_multiple studies/compare_fashion_mnist.toml \\
        studies/compare_fashion_mnist_resnet20.toml studies/compare_fashion_mnist_mobilenet.toml \\
        --out reports/bench/channel-multiple.md

Run it with nothing else on the machine: it reports timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from autoprune.bench import commit
from autoprune.bench.timing import device_name
from autoprune.config import load_config
from autoprune.search.prepare import prepare
from autoprune.trial.evaluate import TrialEvaluator
from autoprune.trial.latency import Timing, onnx_model, time_onnx, time_torch
from autoprune.trial.metrics import count_macs_params

COMMAND = "python -m autoprune.bench.channel_multiple"
ROUNDS = 3


def pruned_at(evaluator: TrialEvaluator, level: float, mix: float, *, finetune: bool = False) -> nn.Module:
    """The model of the allocation space's policy at ``level`` % of the base model's MACs with ``mix``
    (0: uniform pruning, 1: the one-shot allocation), no offsets; fine-tuned by the study's baseline
    recipe with ``finetune``, else straight after surgery."""
    space = evaluator.space
    params = {**space.baselines(f"{level:g}%")[0], "mix": mix, **{f"offset.{g}": 0.0 for g in space.groups}}
    policy = space.from_params(params, evaluator.config.study.seed)
    if not finetune:
        policy = dataclasses.replace(policy, finetune_steps=0)
    result = evaluator.evaluate(policy)
    assert result.model is not None
    return result.model.cpu().eval()


def median_of_rounds(timers: dict[str, Callable[[], float]], rounds: int = ROUNDS) -> dict[str, float]:
    """Each timer run ``rounds`` times, all of them in turn each round; the median of each one's results."""
    seen: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, run in timers.items():
            seen[name].append(run())
    return {name: statistics.median(values) for name, values in seen.items()}


def _ms(time_it: Callable[..., Timing], program: object, batch: torch.Tensor, repeats: int) -> float:
    return time_it(program, batch, repeats=repeats, threads=1).ms


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", help="allocation study files")
    parser.add_argument("--levels", type=float, nargs="+", default=[50.0, 25.0], help="MACs shares, %% of base")
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=100, help="timed passes per round")
    parser.add_argument("--out", help="also write the report to this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = [
        "# Channel multiples: latency at equal MACs",
        "",
        f"Made by `{COMMAND} {' '.join(argv if argv is not None else sys.argv[1:])}` at commit {commit()}.",
        "",
        f"{device_name(torch.device('cpu'))}; one thread for PyTorch and for ONNX Runtime; each figure the median "
        f"of {ROUNDS} rounds of {args.repeats} timed passes (after warm-up), the variants of one model and level "
        "timed in turn each round. Latency in ms; `vs ×1`: the multiple's latency over multiple 1's, same "
        "model, level, method, runtime and batch.",
        "",
        "| model | level | method | multiple | MACs % | "
        + " | ".join(f"{rt} b{b} ms | vs ×1" for rt in ("torch", "onnxruntime") for b in args.batches)
        + " |",
        "| --- | ---: | --- | ---: | ---: | " + " | ".join("---: | ---:" for _ in range(2 * len(args.batches))) + " |",
    ]
    print("\n".join(lines))
    for study in args.studies:
        models: dict[tuple[float, str, int], nn.Module] = {}
        macs: dict[tuple[float, str, int], float] = {}
        name = Path(study).stem
        for multiple in args.multiples:
            config = load_config(study, ["space.granularity='allocation'", f"space.channel_multiple={multiple}"])
            evaluator = prepare(config, torch.device("cpu")).evaluator
            base_macs = evaluator.base_measurement.macs
            for level in args.levels:
                for method, mix in (("uniform", 0.0), ("one-shot", 1.0)):
                    model = pruned_at(evaluator, level, mix)
                    models[(level, method, multiple)] = model
                    share = count_macs_params(model, evaluator.example_input)[0] / base_macs
                    macs[(level, method, multiple)] = 100 * share
            example = evaluator.data.val.x
        for level in args.levels:
            for method in ("uniform", "one-shot"):
                timers: dict[str, Callable[[], float]] = {}
                for multiple in args.multiples:
                    model = models[(level, method, multiple)]
                    for batch_size in args.batches:
                        batch = example[:batch_size].cpu()
                        onnx = onnx_model(model, batch)
                        timers[f"torch {multiple} {batch_size}"] = functools.partial(
                            _ms, time_torch, model, batch, args.repeats
                        )
                        timers[f"onnxruntime {multiple} {batch_size}"] = functools.partial(
                            _ms, time_onnx, onnx, batch, args.repeats
                        )
                found = median_of_rounds(timers)
                for multiple in args.multiples:
                    cells = []
                    for runtime in ("torch", "onnxruntime"):
                        for batch_size in args.batches:
                            ms = found[f"{runtime} {multiple} {batch_size}"]
                            ref = found[f"{runtime} {args.multiples[0]} {batch_size}"]
                            cells += [f"{ms:.3f}", f"{ms / ref:.2f}"]
                    lines.append(
                        f"| {name} | {level:g} % | {method} | {multiple} | {macs[(level, method, multiple)]:.2f} | "
                        + " | ".join(cells)
                        + " |"
                    )
                    print(lines[-1])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


__all__ = ["median_of_rounds", "pruned_at"]

if __name__ == "__main__":
    raise SystemExit(main())

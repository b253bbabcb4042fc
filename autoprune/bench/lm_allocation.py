"""Benchmark: the one-shot allocation against uniform pruning on a causal language model, by perplexity.

For each seed, calibration blocks are drawn from the training documents, every head and channel is
scored on them (``--scorer``), each group is pruned alone at ``--ratios`` and measured on them (the
sensitivity analysis), and the decoder's cost model is fitted. At each ``--levels`` share of the base
model's parameters, the allocator gives two prunings that land on it: uniform (every group keeps the
same share of its units) and the one-shot allocation (the sensitivity allocation); and a search
(``search``): ``--search-trials`` trials of Optuna's TPE sampler over the allocation space
(``mix`` in [0, 1] and an offset per group in [-0.7, 0.7], the defaults of ``space.offset_max``)
at the same share, each scored by its KL divergence to the base model's next-token distribution on
the calibration blocks (EvoPress's fitness; its first trial is the one-shot allocation), the
lowest picked; and EvoPress's own search (``switch``, :func:`evolve`): an evolution of level
switches from the one-shot allocation at the same share, on the same fitness, measuring at most as
many calibration blocks as the TPE trials do. Each is measured without fine-tuning and after each
``--recovery`` length of full fine-tuning on the training blocks (AdamW, constant learning rate):
perplexity on the validation and test documents, and the KL
divergence to the base model's next-token distribution on validation::

    python -m autoprune.bench.lm_allocation --model hf:FOLDER --text 'DIR/**/*.py' [--exclude ...]
        [--levels 50 25] [--seeds 0 1 2] [--recovery 0 100] [--methods uniform one-shot search switch]
        [--search-trials 128] [--search-share at-most|near] [--calibration 32] [--scorer activation]
        [--ratios 0.25 0.5 0.75] [--ratio-max 0.8] [--eval-blocks 256] [--block 128] [--batch 16] [--lr 5e-4]
        [--threads 2] [--device cuda|cpu] [--out FILE] [--export FOLDER]

``--text``, ``--exclude`` and ``--block`` must be those the model was trained with, so that its
validation and test documents are the ones it never saw (the split is by document, seed 0).
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.bench import commit, print_report, run_main
from autoprune.models._hf import build_hf, load_tokenizer
from autoprune.results.export import export_decoder
from autoprune.search.switch import OFFSET, switched
from autoprune.text import load_text
from autoprune.trial import decoder
from autoprune.trial.allocation import LANDING, Allocator
from autoprune.trial.language import (
    activation_scores,
    analyse_decoder,
    calibration_kl,
    kl_to_base,
    perplexity,
    recover,
    reference_log_probs,
    spaced,
)

COMMAND = "python -m autoprune.bench.lm_allocation"
METHODS = {"uniform": 0.0, "one-shot": 1.0, "search": None, "switch": None}
"""Each method's ``mix`` in :meth:`Allocator.solve`: 0 uniform, 1 the sensitivity allocation; the
searches' is searched (``search``) or the one-shot's (``switch``)."""
OFFSET_MAX = 0.7
OFFSPRING = 8
"""Offspring per generation of the ``switch`` evolution, each screened on :data:`SCREEN_BLOCKS` blocks."""
SCREEN_BLOCKS = 8
SURVIVORS = 2
"""The best screened offspring of a generation, measured on every calibration block against the parent."""


def kept_kl(
    kept: dict[str, int],
    *,
    base: Any,
    scores: dict[str, torch.Tensor],
    calibration: torch.Tensor,
    reference: torch.Tensor | None,
) -> float:
    """The KL divergence to the base model (its ``reference`` log-probabilities, where kept) on the
    calibration blocks of the base model cut to ``kept``."""
    pruned = decoder.cut(copy.deepcopy(base), decoder.choose(base, kept, scores))
    return calibration_kl(pruned, base=base, blocks=calibration, reference=reference)


def search(
    allocator: Allocator,
    target: float,
    trial_kl: Callable[[dict[str, int]], float],
    *,
    trials: int,
    seed: int,
    ceiling: float | None = None,
) -> tuple[dict[str, int], float]:
    """The allocation at ``target`` with the lowest ``trial_kl`` of ``trials`` TPE trials over ``mix``
    and per-group offsets (the first: the one-shot allocation), and that KL. A trial that lands
    farther than :data:`LANDING` from the target (with a ``ceiling``: above it) scores infinite."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    groups = allocator.groups
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True))
    study.enqueue_trial({"mix": 1.0, **{f"offset.{g}": 0.0 for g in groups}})

    def objective(trial: optuna.Trial) -> float:
        mix = trial.suggest_float("mix", 0.0, 1.0)
        offsets = {g: trial.suggest_float(f"offset.{g}", -OFFSET_MAX, OFFSET_MAX) for g in groups}
        kept = allocator.solve(target, mix, offsets)
        trial.set_user_attr("kept", kept)
        return trial_kl(kept) if _lands(allocator, kept, target, ceiling) else math.inf

    study.optimize(objective, n_trials=trials)
    return dict(study.best_trial.user_attrs["kept"]), float(study.best_value)


def evolve(
    allocator: Allocator,
    target: float,
    trial_kl: Callable[[dict[str, int]], float],
    screen_kl: Callable[[dict[str, int]], float],
    *,
    generations: int,
    seed: int,
    ceiling: float | None = None,
) -> tuple[dict[str, int], float]:
    """EvoPress's search (Sieberling et al. 2025) in the allocation space at ``target``: a (1 + λ)
    evolution from the one-shot allocation whose offspring each make one to three *level switches*
    (one group's offset up by a step, another's down by as much: the common factor of
    :meth:`Allocator.solve` keeps the cost), screened by ``screen_kl`` (a few calibration blocks); the
    :data:`SURVIVORS` best are measured by ``trial_kl`` (every block) and the best replaces the parent
    when it is lower. Returns the last parent and its ``trial_kl``. An offspring that lands farther than
    :data:`LANDING` from the target (with a ``ceiling``: above it) is not kept."""
    groups = [f"{OFFSET}{g}" for g in allocator.groups]
    rng = np.random.default_rng(seed)

    def kept_of(offsets: dict[str, float]) -> dict[str, int] | None:
        kept = allocator.solve(target, 1.0, {name.removeprefix(OFFSET): v for name, v in offsets.items()})
        return kept if _lands(allocator, kept, target, ceiling) else None

    parent, parent_kept = dict.fromkeys(groups, 0.0), allocator.solve(target, 1.0, {})
    parent_kl = trial_kl(parent_kept)
    for _ in range(generations):
        screened = []
        for _ in range(OFFSPRING):
            child = parent
            for _ in range(int(min(rng.integers(1, 4, size=2)))):  # one switch most often, three rarely
                up, down = rng.choice(groups, size=2, replace=False)
                child = switched(child, str(up), str(down), float(rng.uniform(0.1, 0.5)) * OFFSET_MAX, OFFSET_MAX)
            kept = kept_of(child)
            if kept is not None and kept != parent_kept:
                screened.append((screen_kl(kept), child, kept))
        for _, child, kept in sorted(screened, key=lambda entry: entry[0])[:SURVIVORS]:
            kl = trial_kl(kept)
            if kl < parent_kl:
                parent, parent_kept, parent_kl = child, kept, kl
    return parent_kept, parent_kl


def _lands(allocator: Allocator, kept: dict[str, int], target: float, ceiling: float | None) -> bool:
    """Whether ``kept`` lands within :data:`LANDING` of ``target`` (with a ``ceiling``: at or under it)."""
    share = float(allocator.fraction(np.array([kept[g] for g in allocator.groups], dtype=float)))
    return share <= ceiling if ceiling is not None else abs(share - target) <= LANDING * target


def _generations(trials: int, blocks: int) -> int:
    """The evolution's generations whose offspring and survivors measure at most as many calibration blocks
    as ``trials`` TPE trials do (fewer where an offspring does not land or repeats its parent)."""
    return trials * blocks // (OFFSPRING * min(SCREEN_BLOCKS, blocks) + SURVIVORS * blocks)


def _spread(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="hf:FOLDER, a checkpoint with its tokenizer")
    parser.add_argument("--text", nargs="+", required=True)
    parser.add_argument("--exclude", nargs="*", default=[])
    parser.add_argument("--levels", nargs="+", type=float, default=[50.0, 25.0], help="%% of the base parameters")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--recovery", nargs="+", type=int, default=[0, 100], help="fine-tune steps after pruning")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--search-trials", type=int, default=128)
    parser.add_argument(
        "--search-share",
        choices=["near", "at-most"],
        default="at-most",
        help="every method lands at or under the level (default), or within 1%% of it (near)",
    )
    parser.add_argument("--calibration", type=int, default=32, help="training blocks the analysis looks at")
    parser.add_argument("--scorer", choices=["activation", "magnitude"], default="activation")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--ratio-max", type=float, default=0.8)
    parser.add_argument(
        "--eval-blocks", type=int, default=256, help="validation and test blocks measured, evenly spaced (0: all)"
    )
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="the report (Markdown); its rows go beside it as .csv")
    parser.add_argument(
        "--export",
        default=None,
        help="a folder: each method's pruning of the first seed, after the longest recovery, exported to "
        "EXPORT/METHOD-LEVEL (a checkpoint autoprune.load reloads, model.pt2, model.onnx)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    base = build_hf(args.model).to(args.device)
    tokenizer = load_tokenizer(args.model)
    data = load_text(args.text, tokenizer, block=args.block, exclude=args.exclude)
    val, test = spaced(data.val, args.eval_blocks), spaced(data.test, args.eval_blocks)
    cost = decoder.decoder_cost(base)
    base_params = sum(p.numel() for p in base.parameters())
    base_val, base_test = perplexity(base, val), perplexity(base, test)
    print(f"base model: {base_params:,} parameters, perplexity {base_val:.2f} validation, {base_test:.2f} test")
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        picked = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[: args.calibration]
        calibration = data.train[picked]
        scores = activation_scores(base, calibration) if args.scorer == "activation" else decoder.magnitude_scores(base)
        sensitivity = analyse_decoder(base, calibration, scores, scorer=args.scorer, ratios=args.ratios)
        allocator = Allocator(sensitivity, cost, figure="params", ratio_max=args.ratio_max)
        reference = reference_log_probs(base, calibration)
        trial_kl = functools.partial(kept_kl, base=base, scores=scores, calibration=calibration, reference=reference)
        screen = min(SCREEN_BLOCKS, len(calibration))
        screen_kl = functools.partial(
            kept_kl,
            base=base,
            scores=scores,
            calibration=calibration[:screen],
            reference=None if reference is None else reference[:screen],
        )
        generations = _generations(args.search_trials, len(calibration))
        if "switch" in args.methods and generations == 0:
            print(f"switch: {args.search_trials} trials' blocks make no generation; it is the one-shot", flush=True)

        for level in args.levels:
            ceiling = level / 100 if args.search_share == "at-most" else None
            # at or under the level: every method aims where uniform and the one-shot both land under it
            target = allocator.target_at_most(level / 100, (0.0, 1.0)) if ceiling else level / 100
            for method in args.methods:
                mix = METHODS[method]
                searching = time.perf_counter()
                if method == "search":
                    kept, best = search(
                        allocator, target, trial_kl, trials=args.search_trials, seed=seed, ceiling=ceiling
                    )
                elif method == "switch":
                    kept, best = evolve(
                        allocator, target, trial_kl, screen_kl, generations=generations, seed=seed, ceiling=ceiling
                    )
                else:
                    assert mix is not None
                    kept = allocator.solve(target, mix, {})
                searched = time.perf_counter() - searching
                if mix is None:
                    print(
                        f"seed {seed}, {level:g} %: {method}'s pick: KL {best:.4f} on calibration ({searched:.0f}s)",
                        flush=True,
                    )
                pruned = decoder.cut(copy.deepcopy(base), decoder.choose(base, kept, scores))
                share = sum(p.numel() for p in pruned.parameters()) / base_params
                done = 0
                for steps in sorted(args.recovery):
                    recover(pruned, data.train, steps - done, batch=args.batch, lr=args.lr, seed=seed)
                    done = steps
                    row = {
                        "seed": seed,
                        "level": level,
                        "method": method,
                        "recovery_steps": steps,
                        "params_share": round(share, 4),
                        "val_ppl": round(perplexity(pruned, val), 3),
                        "test_ppl": round(perplexity(pruned, test), 3),
                        "val_kl": round(kl_to_base(base, pruned, val), 4),
                        "calibration_kl": round(trial_kl(kept), 4),
                        "search_s": round(searched, 1),
                        "widths": decoder.widths(pruned),
                    }
                    rows.append(row)
                    print(
                        f"seed {seed}, {level:g} % parameters, {method}, {steps} steps: "
                        f"{share:.1%} parameters, perplexity {row['val_ppl']} validation, {row['test_ppl']} test, "
                        f"KL {row['val_kl']}; {time.perf_counter() - started:.0f}s",
                        flush=True,
                    )
                if args.export and seed == args.seeds[0]:
                    folder = Path(args.export) / f"{method}-{level:g}"
                    export_decoder(pruned, folder, tokenizer)
                    print(f"exported {method} at {level:g} % (after {done} recovery steps) to {folder}", flush=True)
    print_report(_report(args, argv, rows, base_params, base_val, base_test, started), args.out)
    if args.out:
        with Path(args.out).with_suffix(".csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=[k for k in rows[0] if k != "widths"])
            writer.writeheader()
            writer.writerows({k: v for k, v in row.items() if k != "widths"} for row in rows)
    return 0


def _blocks(args: argparse.Namespace) -> str:
    if args.eval_blocks <= 0:
        return "every validation and test block"
    return f"on {args.eval_blocks} validation and {args.eval_blocks} test blocks, evenly spaced over their documents"


def _landing(args: argparse.Namespace) -> str:
    if args.search_share == "at-most":
        return "Every method lands at or under the level (its target lowered until uniform and the one-shot do)."
    return "Every method lands within 1 % of the level."


def _device(args: argparse.Namespace) -> str:
    if args.device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(args.device))
    return f"{args.threads} torch threads on the CPU"


def _report(
    args: argparse.Namespace,
    argv: list[str] | None,
    rows: list[dict[str, Any]],
    base_params: int,
    base_val: float,
    base_test: float,
    started: float,
) -> list[str]:
    lines = [
        "# The one-shot allocation against uniform pruning on a language model",
        "",
        f"Command: `{COMMAND} {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"Commit: {commit()}; {_device(args)}; {(time.perf_counter() - started) / 60:.0f} min.",
        "",
        f"Base model: {base_params:,} parameters; perplexity {base_val:.2f} validation, {base_test:.2f} test "
        f"({_blocks(args)}). "
        f"Scorer {args.scorer}; sensitivity at ratios {args.ratios} on {args.calibration} calibration blocks of "
        f"{args.block} tokens drawn per seed from the training documents; ratio_max {args.ratio_max}; recovery: "
        f"full fine-tuning, AdamW lr {args.lr}, batch {args.batch}. Seeds {args.seeds} (calibration draw and "
        "fine-tune batches); mean ± standard deviation over them. `search`: "
        f"{args.search_trials} TPE trials per seed and level, scored by KL on the calibration blocks. `switch`: "
        f"{_generations(args.search_trials, args.calibration)} generations of EvoPress's evolution from the one-shot "
        f"allocation, {OFFSPRING} offspring of one to three level switches each, screened on "
        f"{min(SCREEN_BLOCKS, args.calibration)} calibration blocks, the best {SURVIVORS} measured on all of them "
        "(at most as many blocks as the TPE trials measure). " + _landing(args),
        "",
        "| parameters | recovery steps | method | parameters kept | validation perplexity | test perplexity "
        "| KL to base (validation) | KL to base (calibration) | search s |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in args.levels:
        for steps in sorted(args.recovery):
            for method in args.methods:
                chosen = [
                    r for r in rows if r["level"] == level and r["recovery_steps"] == steps and r["method"] == method
                ]
                lines.append(
                    f"| {level:g} % | {steps} | {method} | {_spread([100 * r['params_share'] for r in chosen])} % "
                    f"| {_spread([r['val_ppl'] for r in chosen])} | {_spread([r['test_ppl'] for r in chosen])} "
                    f"| {_spread([r['val_kl'] for r in chosen], 4)} "
                    f"| {_spread([r['calibration_kl'] for r in chosen], 4)} "
                    f"| {_spread([r['search_s'] for r in chosen], 0)} |"
                )
    lines += ["", "Widths of each pruning (seed, level, method, recovery 0): hidden; query heads; MLP per layer.", ""]
    for r in rows:
        if r["recovery_steps"] == min(args.recovery):
            w = r["widths"]
            lines.append(
                f"- seed {r['seed']}, {r['level']:g} %, {r['method']}: hidden {w.hidden}; heads "
                f"{list(w.heads)}; MLP {list(w.intermediate)}"
            )
    return lines


if __name__ == "__main__":
    run_main(main, COMMAND)

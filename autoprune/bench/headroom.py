"""Benchmark: how much room the search has above uniform pruning at one MACs level.

Before an overnight search, a user can ask whether allocating channels per group can pay at all on
their model and fine-tune budget. This fine-tunes, with the study's baseline settings (default
scorer, ``finetune_steps_max``, one prune step, the middle learning rate):

- uniform pruning at every ratio (on a 0.02 grid) whose model lands in the MACs band
  ``(0.75 × level, level]`` % of the base model, on ``--seeds`` seeds;
- ``--samples`` random allocations: each group keeps ``e^d`` times the channels of a uniform target
  (``offset`` granularity, ``d ~ N(0, --spread)``), the target bisected so the model lands in the band;
- the ``--top`` allocations with the best validation accuracy again on the other seeds;
- the sensitivity allocation (:mod:`autoprune.trial.allocation`) for the band's top, on every seed.

It reports test accuracy of the best-on-validation uniform ratio, of the best-on-validation random
allocation and of the sensitivity allocation (mean ± sample std over seeds), and the best test
accuracy of any random allocation (an upper bound that peeks at the test split, printed only as
such)::

    python -m autoprune.bench.headroom STUDY.toml [--level 12.5] [--samples 30] [--seeds 3] [--top 5]
                                            [--spread 0.6] [--out FILE] [--set SECTION.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autoprune.bench import commit, print_report
from autoprune.config import load_config
from autoprune.policy import Policy
from autoprune.scorers import make_scorer
from autoprune.search.opening import resolve_device
from autoprune.search.prepare import prepare, study_allocator
from autoprune.trial.allocation import Allocator
from autoprune.trial.evaluate import TrialEvaluator
from autoprune.trial.metrics import accuracy, count_macs_params
from autoprune.trial.space import SearchSpace
from autoprune.trial.surgery import Surgery


@dataclass(frozen=True)
class Run:
    """One fine-tuned policy."""

    kind: str
    """``uniform <ratio>`` or ``allocation <n>``."""
    seed: int
    macs_pct: float
    val: float
    test: float


class Headroom:
    """Evaluates baseline-settings policies of the ``offset`` space at one MACs band.

    ``allocator``: the base model's sensitivity allocations, for the ``sensitivity`` candidate.
    """

    def __init__(
        self, evaluator: TrialEvaluator, groups: Sequence[str], level: float, allocator: Allocator | None = None
    ) -> None:
        self.evaluator = evaluator
        self.allocator = allocator
        cfg = dataclasses.replace(evaluator.config.space, granularity="offset")
        self.space = SearchSpace(cfg, groups, search_finetune_steps=False)
        self.groups = list(groups)
        self.high = level / 100
        self.low = 0.75 * self.high
        self._example = evaluator.example_input.cpu()

    def policy(self, ratio: float, offsets: dict[str, float], seed: int) -> Policy:
        params = {**self.space.baseline_params(ratio), **{f"offset.{g}": d for g, d in offsets.items()}}
        return self.space.from_params(params, seed)

    def allocated(self, seed: int) -> Policy | None:
        """The sensitivity allocation for the band's top, at or under it (None without an allocator)."""
        if self.allocator is None:
            return None
        ratios = self.allocator.ratios(self.allocator.allocate(self.high, at_most=True))
        return dataclasses.replace(self.policy(0.0, dict.fromkeys(self.groups, 0.0), seed), ratios=ratios)

    def macs_share(self, policy: Policy) -> float:
        """MACs of the pruned model / base MACs: they depend on the channel counts alone, so the
        surgery ranks by l1 whatever the policy's scorer, and nothing is fine-tuned."""
        model, graph = self.evaluator.traced.copy("cpu")
        ranked = dataclasses.replace(policy, scorer="l1")
        surgery = Surgery(model.eval(), self._example, ranked, make_scorer("l1"), self.groups, graph=graph)
        for _ in range(surgery.steps):
            surgery.step()
        return count_macs_params(model, self._example)[0] / self.evaluator.base_measurement.macs

    def in_band(self, share: float) -> bool:
        return self.low < share <= self.high

    def targeted(self, offsets: dict[str, float], steps: int = 7) -> float | None:
        """The target ratio (bisected) at which these offsets land in the band, nearest its middle."""
        low, high = self.space.cfg.ratio_min, self.space.cfg.ratio_max
        middle = (self.low + self.high) / 2
        found = None
        for _ in range(steps):
            ratio = (low + high) / 2
            share = self.macs_share(self.policy(ratio, offsets, 0))
            if self.in_band(share):
                found = ratio
            if share > middle:
                low = ratio
            else:
                high = ratio
        return found

    def run(self, kind: str, policy: Policy) -> Run:
        ev = self.evaluator
        result = ev.evaluate(policy)
        assert result.model is not None
        test = accuracy(result.model, ev.data.test, ev.config.data.batch_size, amp=ev.amp)
        macs_pct = 100 * result.measurement.macs / ev.base_measurement.macs
        return Run(kind, policy.seed, macs_pct, result.measurement.accuracy, test)


def _mean_std(values: Sequence[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def measure(
    headroom: Headroom,
    *,
    samples: int,
    seeds: int,
    top: int,
    spread: float,
    log: Callable[[str], None] = print,
) -> tuple[list[Run], list[str]]:
    """Run the uniform ratios and allocations; return every run and the report's lines."""
    base_seed = headroom.evaluator.config.study.seed
    seed_list = [base_seed + i for i in range(seeds)]
    runs: list[Run] = []

    def record(kind: str, policy: Policy) -> Run:
        run = headroom.run(kind, policy)
        runs.append(run)
        log(f"{kind:<16} seed {run.seed}  MACs {run.macs_pct:5.1f}%  val {run.val:.4f}  test {run.test:.4f}")
        return run

    ratios = [
        r / 100 for r in range(0, 100, 2) if headroom.space.cfg.ratio_min <= r / 100 <= headroom.space.cfg.ratio_max
    ]
    zero = dict.fromkeys(headroom.groups, 0.0)
    uniform = [r for r in ratios if headroom.in_band(headroom.macs_share(headroom.policy(r, zero, 0)))]
    for ratio in uniform:
        for seed in seed_list:
            record(f"uniform {ratio:.2f}", headroom.policy(ratio, zero, seed))
    for seed in seed_list:
        allocated = headroom.allocated(seed)
        if allocated is not None and headroom.in_band(headroom.macs_share(allocated)):
            record("sensitivity", allocated)
    rng = random.Random(base_seed)
    drawn: dict[str, Policy] = {}
    for n in range(samples):
        offsets = {g: rng.gauss(0.0, spread) for g in headroom.groups}
        target = headroom.targeted(offsets)
        if target is not None:
            kind = f"allocation {n}"
            drawn[kind] = headroom.policy(target, offsets, seed_list[0])
            record(kind, drawn[kind])
    first = [r for r in runs if r.kind in drawn]
    for run in sorted(first, key=lambda r: -r.val)[:top]:
        for seed in seed_list[1:]:
            record(run.kind, dataclasses.replace(drawn[run.kind], seed=seed))

    def by_kind(kinds: Sequence[str]) -> dict[str, list[Run]]:
        return {k: [r for r in runs if r.kind == k] for k in kinds}

    def best(groups: dict[str, list[Run]]) -> tuple[str, list[Run]] | None:
        full = {k: v for k, v in groups.items() if len(v) == seeds}
        if not full:
            return None
        return max(full.items(), key=lambda kv: statistics.mean(r.val for r in kv[1]))

    lines = [
        f"MACs band: ({100 * headroom.low:.2f}, {100 * headroom.high:.2f}] % of base; seeds {seed_list}; "
        f"{len(first)} of {samples} allocations landed in the band",
        "",
        "| policies | MACs % | validation | test (mean ± std over seeds) |",
        "| --- | ---: | ---: | ---: |",
    ]
    best_uniform = best(by_kind([f"uniform {r:.2f}" for r in uniform]))
    best_allocation = best(by_kind(list(drawn)))
    sensitivity = best(by_kind(["sensitivity"]))
    for label, picked in (
        ("uniform, best ratio on validation", best_uniform),
        ("random allocation, best on validation", best_allocation),
        ("sensitivity allocation", sensitivity),
    ):
        if picked is None:
            lines.append(f"| {label} | – | – | none in the band |")
            continue
        kind, group = picked
        lines.append(
            f"| {label} ({kind}) | {group[0].macs_pct:.1f} | {_mean_std([r.val for r in group])} | "
            f"{_mean_std([r.test for r in group])} |"
        )
    if first:
        lines.append(
            f"| all {len(first)} allocations, seed {seed_list[0]} | "
            f"{min(r.macs_pct for r in first):.1f}–{max(r.macs_pct for r in first):.1f} | "
            f"{100 * statistics.mean(r.val for r in first):.2f} (mean), {100 * max(r.val for r in first):.2f} (max) | "
            f"{100 * max(r.test for r in first):.2f} (max: an upper bound that peeks at the test split) |"
        )
    lines.append("")
    for label, picked in (("random allocation", best_allocation), ("sensitivity allocation", sensitivity)):
        if best_uniform and picked:
            gain = statistics.mean(r.test for r in picked[1]) - statistics.mean(r.test for r in best_uniform[1])
            lines.append(f"Headroom ({label} − uniform, test, picked on validation): **{100 * gain:+.2f} points**")
    return runs, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study")
    parser.add_argument("--level", type=float, default=12.5, help="MACs level, %% of base (default 12.5)")
    parser.add_argument("--samples", type=int, default=30, help="random allocations (default 30)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for uniform and the top allocations (default 3)")
    parser.add_argument("--top", type=int, default=5, help="allocations rerun on every seed (default 5)")
    parser.add_argument("--spread", type=float, default=0.6, help="std of the log kept-channel factors (default 0.6)")
    parser.add_argument("--out", help="also write the report to this Markdown file")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    config = load_config(args.study, args.set)
    device = resolve_device(config.study.device)
    prepared = prepare(config, device)
    ev = prepared.evaluator
    _sensitivity, allocator = study_allocator(config, ev.data, ev.traced, prepared.base_path, device, figure="macs")
    headroom = Headroom(ev, [g.name for g in prepared.groups], args.level, allocator)
    _runs, lines = measure(headroom, samples=args.samples, seeds=args.seeds, top=args.top, spread=args.spread)
    base_test = accuracy(ev.base, ev.data.test, config.data.batch_size, amp=ev.amp)
    shown = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m autoprune.bench.headroom", *shown])
    header = [
        f"# Headroom above uniform pruning at ≤ {args.level:g} % MACs: {config.study.name}",
        "",
        f"Command: `{command}`, at commit {commit()}",
        "",
        f"- model {config.model.name}, base validation {100 * ev.base_measurement.accuracy:.2f} %, "
        f"test {100 * base_test:.2f} %; device {device}; {time.perf_counter() - start:.0f} s wall",
        f"- every policy: scorer {ev.config.space.default_scorer}, {ev.config.space.finetune_steps_max} fine-tune "
        f"steps, lr {math.sqrt(ev.config.space.lr_min * ev.config.space.lr_max):.3g}, one prune step; "
        f"allocations: each group keeps e^d × the target's channels, d ~ N(0, {args.spread})",
        "",
    ]
    print_report(header + lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

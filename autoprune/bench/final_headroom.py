"""Benchmark: is there room above uniform pruning *after the final fine-tune*, and which cheap trial
score predicts it?

A search judges each trial after a brief fine-tune; the user ships the pick after a long one. At
one MACs share (``--level``, % of the base model) this builds, all at the same target through the
study's allocator (so every candidate lands within :data:`~autoprune.trial.allocation.LANDING` of
the others):

- ``uniform``: the same ratio in every group (what the study enqueues as its uniform baseline);
- ``one-shot``: the sensitivity allocation, no search (the study's other baseline);
- ``--perturbed`` perturbations of the one-shot (mix 1, every group's offset ~ N(0, ``--spread``));
- ``--random`` random allocations (mix ~ U(0, 1), offsets ~ N(0, ``--spread``)).

Every candidate gets the study's baseline trial (default scorer, ``finetune_steps_max`` steps, the
middle learning rate) and these cheap scores, the candidates to be ranked by each:

- ``acc``: validation accuracy after the trial, its batches seeded per candidate, as a study does;
- ``acc_crn``: the same with common random numbers (every candidate on the same batches);
- ``loss_crn``: validation loss of that model;
- ``kl_bn``: KL divergence of its outputs from the base model's (``KL(base ‖ pruned)``, T = 1) on the
  first ``--calibration`` validation images, right after surgery and BatchNorm re-estimation, no
  fine-tune (EvoPress's score);
- ``kl_distill``: the same KL after the trial's fine-tune distilled from the base model (α 1, T 4),
  on the common batches.

Then the final fine-tune: from the trial's model, ``--epochs`` each as its own run of one cosine
schedule (SGD, the trial's learning rate, the study's batch size and weight decay, one seed), test
accuracy and validation accuracy after each. ``uniform`` and ``one-shot`` are final-fine-tuned on
``--seeds`` seeds (their spread is the noise a lead must beat); the ``--long-top`` candidates other
than those two with the best validation accuracy after the longest of ``--epochs`` are also run for
``--long-epochs``, as are uniform and one-shot. Spearman's ρ of each score against the validation
and the test accuracy after each length says which score ranks what the user takes home. Every candidate's row
goes to ``<out>.csv``; a rerun with the same settings reads the rows already there and runs the rest::

    python -m autoprune.bench.final_headroom STUDY.toml [--level 12.5] [--perturbed 8] [--random 8]
        [--spread 0.3] [--epochs 1 3] [--long-epochs 10] [--long-top 2] [--seeds 3] [--calibration 1000]
        [--out reports/bench/final-headroom-<study>-<level>] [--set SECTION.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.bench import commit, print_report
from autoprune.bench.timing import device_name, spearman
from autoprune.config import load_config
from autoprune.data import Split
from autoprune.policy import Policy
from autoprune.search.opening import resolve_device
from autoprune.search.prepare import prepare
from autoprune.trial.evaluate import TrialEvaluator
from autoprune.trial.finetune import Distillation, recalibrate_batchnorm, train_steps
from autoprune.trial.metrics import accuracy, loss_and_accuracy

COMMAND = "python -m autoprune.bench.final_headroom"
SCORES = ("acc", "acc_crn", "loss_crn", "kl_bn", "kl_distill")
"""The cheap scores, in table order; accuracies rank high-is-better, losses and KLs low-is-better."""
HIGHER_IS_BETTER = {"acc": True, "acc_crn": True, "loss_crn": False, "kl_bn": False, "kl_distill": False}


@torch.no_grad()
def kl_to_base(model: nn.Module, base: nn.Module, split: Split, batch_size: int) -> float:
    """Mean ``KL(softmax(base(x)) ‖ softmax(model(x)))`` over ``split`` (T = 1), both in eval mode."""
    model.eval()
    base.eval()
    total = 0.0
    for x, _y in split.batches(batch_size):
        p = nn.functional.log_softmax(base(x).float(), dim=1)
        q = nn.functional.log_softmax(model(x).float(), dim=1)
        total += float(nn.functional.kl_div(q, p, reduction="sum", log_target=True))
    return total / max(len(split), 1)


@dataclasses.dataclass
class Candidate:
    name: str
    policy: Policy


def candidates(
    evaluator: TrialEvaluator, level: float, *, perturbed: int, drawn: int, spread: float, seed: int
) -> list[Candidate]:
    """uniform, one-shot, ``perturbed`` perturbations of the one-shot and ``drawn`` random allocations,
    all at the target the study's baselines take for ``level`` % (every one with the baseline's fine-tune)."""
    space = evaluator.space
    if space.allocator is None:
        raise SystemExit(f"{COMMAND}: the study needs space.granularity = 'allocation'")
    base_params = space.baselines(f"{level:g}%")[0]
    groups = space.groups
    rng = random.Random(seed)

    def policy(mix: float, offsets: dict[str, float]) -> Policy:
        params = {**base_params, "mix": mix, **{f"offset.{g}": d for g, d in offsets.items()}}
        return space.from_params(params, seed)

    zero = dict.fromkeys(groups, 0.0)
    out = [Candidate("uniform", policy(0.0, zero)), Candidate("one-shot", policy(1.0, zero))]
    for i in range(perturbed):
        out.append(Candidate(f"perturbed-{i}", policy(1.0, {g: rng.gauss(0.0, spread) for g in groups})))
    for i in range(drawn):
        out.append(Candidate(f"random-{i}", policy(rng.random(), {g: rng.gauss(0.0, spread) for g in groups})))
    return out


class Bench:
    """Scores and final fine-tunes of candidates against one prepared study."""

    def __init__(self, evaluator: TrialEvaluator, calibration: int) -> None:
        self.ev = evaluator
        self.batch_size = evaluator.config.data.batch_size
        self.calibration = evaluator.data.val.head(calibration)
        cfg = evaluator.config
        self.steps_per_epoch = max(1, len(evaluator.data.train) // min(self.batch_size, len(evaluator.data.train)))
        self.weight_decay = cfg.train.weight_decay

    def _batches(self, seed: int) -> Any:
        return self.ev.data.train.shuffled_batches(self.batch_size, torch.Generator().manual_seed(seed))

    def scores(self, policy: Policy, index: int, seed: int) -> tuple[dict[str, float], nn.Module, float]:
        """The cheap scores of one candidate, its trial-fine-tuned model (batches seeded per candidate,
        as a study seeds a trial) and its MACs share."""
        ev = self.ev
        trial = ev.evaluate(dataclasses.replace(policy, seed=seed + index))
        crn = ev.evaluate(dataclasses.replace(policy, seed=seed))
        assert trial.model is not None and crn.model is not None
        loss, _acc = loss_and_accuracy(crn.model, ev.data.val, self.batch_size)
        pruned = ev.evaluate(dataclasses.replace(policy, finetune_steps=0, seed=seed))
        assert pruned.model is not None
        recalibrate_batchnorm(pruned.model, self._batches(seed), max(1, ev.config.sensitivity.batches))
        distilled = ev.evaluate(dataclasses.replace(policy, finetune_steps=0, seed=seed)).model
        assert distilled is not None
        train_steps(
            distilled,
            self._batches(seed),
            steps=policy.finetune_steps,
            lr=policy.lr,
            weight_decay=self.weight_decay,
            distillation=Distillation(ev.base, 1.0, 4.0),
        )
        figures = {
            "acc": trial.measurement.accuracy,
            "acc_crn": crn.measurement.accuracy,
            "loss_crn": loss,
            "kl_bn": kl_to_base(pruned.model, ev.base, self.calibration, self.batch_size),
            "kl_distill": kl_to_base(distilled, ev.base, self.calibration, self.batch_size),
        }
        return figures, trial.model, trial.measurement.macs / ev.base_measurement.macs

    def final(self, model: nn.Module, lr: float, epochs: int, seed: int) -> tuple[float, float]:
        """Validation and test accuracy of a copy of ``model`` after ``epochs`` epochs on one cosine schedule."""
        tuned = copy.deepcopy(model)
        torch.manual_seed(seed)
        train_steps(
            tuned,
            self._batches(seed),
            steps=epochs * self.steps_per_epoch,
            lr=lr,
            weight_decay=self.weight_decay,
        )
        val = accuracy(tuned, self.ev.data.val, self.batch_size)
        test = accuracy(tuned, self.ev.data.test, self.batch_size)
        return val, test


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class Rows:
    """The CSV of results, one row per (candidate, what, epochs, seed), appended as they come."""

    COLUMNS = ("candidate", "what", "epochs", "seed", "macs_share", "value", "test", "seconds")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = _read(path)

    def find(self, candidate: str, what: str, epochs: int, seed: int) -> dict[str, str] | None:
        for row in self.rows:
            key = (row["candidate"], row["what"], int(row["epochs"]), int(row["seed"]))
            if key == (candidate, what, epochs, seed):
                return row
        return None

    def add(self, **values: Any) -> None:
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        row = {c: values.get(c, "") for c in self.COLUMNS}
        with self.path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        self.rows.append({k: str(v) for k, v in row.items()})


def run(
    bench: Bench,
    cands: Sequence[Candidate],
    rows: Rows,
    *,
    epochs: Sequence[int],
    long_epochs: int,
    long_top: int,
    seeds: int,
    seed: int,
    log: Callable[[str], None] = print,
) -> None:
    """Fill ``rows`` with every score and final fine-tune the settings ask for (those already there are kept)."""
    models: dict[str, nn.Module] = {}

    def model_of(i: int, cand: Candidate) -> nn.Module:
        if cand.name not in models:
            _figures, models[cand.name], _share = bench.scores(cand.policy, i, seed)
        return models[cand.name]

    for i, cand in enumerate(cands):
        if all(rows.find(cand.name, s, 0, seed) for s in SCORES):
            continue
        start = time.perf_counter()
        figures, models[cand.name], share = bench.scores(cand.policy, i, seed)
        seconds = time.perf_counter() - start
        for name, value in figures.items():
            rows.add(
                candidate=cand.name, what=name, epochs=0, seed=seed, macs_share=share, value=value, seconds=seconds
            )
        log(f"{cand.name:<14} MACs {100 * share:5.2f}%  " + "  ".join(f"{k} {v:.4f}" for k, v in figures.items()))

    def final(i: int, cand: Candidate, e: int, s: int) -> None:
        if rows.find(cand.name, "final", e, s):
            return
        start = time.perf_counter()
        val, test = bench.final(model_of(i, cand), cand.policy.lr, e, s)
        rows.add(
            candidate=cand.name,
            what="final",
            epochs=e,
            seed=s,
            value=val,
            test=test,
            seconds=time.perf_counter() - start,
        )
        log(f"{cand.name:<14} final {e:>2} epoch(s) seed {s}  val {val:.4f}  test {test:.4f}")

    for e in epochs:
        for i, cand in enumerate(cands):
            final(i, cand, e, seed)
    for e in epochs:
        for i, cand in enumerate(cands[:2]):
            for s in range(seed + 1, seed + seeds):
                final(i, cand, e, s)
    if long_epochs:
        longest = max(epochs)
        others = sorted(
            range(2, len(cands)),
            key=lambda i: -float(rows.find(cands[i].name, "final", longest, seed)["value"]),  # type: ignore[index]
        )[:long_top]
        for i in [0, 1, *others]:
            final(i, cands[i], long_epochs, seed)


def _mean_std(values: Sequence[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def report(rows: Rows, cands: Sequence[Candidate], seed: int) -> list[str]:
    """The Markdown tables: every candidate's scores and final accuracies, the leads over uniform and the
    one-shot, and each score's Spearman against the final test accuracy."""
    names = [c.name for c in cands]
    lengths = sorted({int(r["epochs"]) for r in rows.rows if r["what"] == "final"})

    def figure(name: str, what: str, epochs: int = 0, key: str = "value", s: int = seed) -> float | None:
        row = rows.find(name, what, epochs, s)
        return None if row is None or row[key] == "" else float(row[key])

    def column(what: str, epochs: int = 0, key: str = "value") -> dict[str, float]:
        """Each candidate's figure, those that have it."""
        got = {n: figure(n, what, epochs, key) for n in names}
        return {n: v for n, v in got.items() if v is not None}

    def cell(value: float | None, scale: float = 1.0, digits: int = 4) -> str:
        return "–" if value is None else f"{scale * value:.{digits}f}"

    tests = {e: column("final", e, "test") for e in lengths}
    lines = [
        "| candidate | MACs % | "
        + " | ".join(SCORES)
        + " | "
        + " | ".join(f"test after {e} ep" for e in lengths)
        + " |",
        "| --- | ---: |" + " ---: |" * (len(SCORES) + len(lengths)),
    ]
    for name in names:
        cells = [cell(figure(name, "acc", key="macs_share"), 100.0, 2)]
        cells += [cell(figure(name, s)) for s in SCORES]
        cells += [cell(tests[e].get(name), 100.0, 2) for e in lengths]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    lines += [
        "",
        "Test accuracy (%) over the final fine-tune's seeds (mean ± std), and the best other candidate picked "
        f"on validation (seed {seed}):",
        "",
        "| fine-tune | uniform | one-shot | best other candidate on validation |",
        "| --- | ---: | ---: | ---: |",
    ]
    for e in lengths:
        cells = []
        for name in names[:2]:
            seeds = [
                float(r["test"])
                for r in rows.rows
                if (r["candidate"], r["what"]) == (name, "final") and int(r["epochs"]) == e
            ]
            cells.append(_mean_std(seeds) if seeds else "–")
        vals = {n: v for n, v in column("final", e).items() if n in names[2:]}
        best = max(vals, key=lambda n: vals[n]) if vals else None
        cells.append(f"{cell(tests[e].get(best), 100.0, 2)} ({best})" if best else "–")
        lines.append(f"| {e} epoch(s) | " + " | ".join(cells) + " |")

    lines += [
        "",
        f"Lead over uniform in points (seed {seed}) by the final fine-tune's length; at 0 epochs (after the "
        "trial's own fine-tune) validation accuracy, after it test accuracy:",
        "",
        "| fine-tune | one-shot − uniform | best candidate − uniform | ≥ 1 point above uniform "
        "| ≥ 1 point above the one-shot |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for e, got in [(0, column("acc")), *tests.items()]:
        if "uniform" not in got or "one-shot" not in got:
            continue
        u, o = got["uniform"], got["one-shot"]
        above_u = sum(v >= u + 0.01 for v in got.values())
        above_o = sum(v >= o + 0.01 for v in got.values())
        lines.append(
            f"| {e} epoch(s) | {100 * (o - u):+.2f} | {100 * (max(got.values()) - u):+.2f} "
            f"| {above_u} of {len(got)} | {above_o} of {len(got)} |"
        )

    lines += [
        "",
        f"Spearman's ρ of each score against the accuracy after the final fine-tune (seed {seed}): validation "
        "(what a product may choose a score by) / test; a loss or KL counts negated, so +1 means the score ranks "
        "the candidates as the final accuracy does:",
        "",
        "| score | " + " | ".join(f"{e} ep (val / test)" for e in lengths) + " |",
        "| --- |" + " ---: |" * len(lengths),
    ]
    validations = {e: column("final", e) for e in lengths}
    for score in SCORES:
        got = column(score)
        sign = 1.0 if HIGHER_IS_BETTER[score] else -1.0
        cells = []
        for e in lengths:
            rhos = []
            for final in (validations[e], tests[e]):
                both = [n for n in names if n in got and n in final]
                rhos.append(spearman([sign * got[n] for n in both], [final[n] for n in both]))
            count = sum(1 for n in names if n in got and n in tests[e])
            cells.append(" / ".join("–" if r is None else f"{r:+.2f}" for r in rhos) + f" (n {count})")
        lines.append(f"| {score} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("study")
    parser.add_argument("--level", type=float, default=12.5, help="MACs share, %% of base (default 12.5)")
    parser.add_argument("--perturbed", type=int, default=8, help="perturbations of the one-shot (default 8)")
    parser.add_argument("--random", type=int, default=8, help="random allocations (default 8)")
    parser.add_argument("--spread", type=float, default=0.3, help="std of every group's offset (default 0.3)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3], help="final fine-tune lengths (default 1 3)")
    parser.add_argument("--long-epochs", type=int, default=10, help="the long final fine-tune (0: none; default 10)")
    parser.add_argument("--long-top", type=int, default=2, help="other candidates given the long one (default 2)")
    parser.add_argument("--seeds", type=int, default=3, help="final fine-tune seeds of uniform and one-shot")
    parser.add_argument("--calibration", type=int, default=1000, help="validation images the KL scores use")
    parser.add_argument("--out", help="report stem: <out>.md and <out>.csv")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    config = load_config(args.study, args.set)
    out = Path(args.out or f"reports/bench/final-headroom-{config.study.name}-{args.level:g}")
    device = resolve_device(config.study.device)
    prepared = prepare(config, device)
    ev = prepared.evaluator
    seed = config.study.seed
    cands = candidates(ev, args.level, perturbed=args.perturbed, drawn=args.random, spread=args.spread, seed=seed)
    rows = Rows(out.parent / f"{out.name}.csv")
    bench = Bench(ev, args.calibration)
    run(
        bench,
        cands,
        rows,
        epochs=args.epochs,
        long_epochs=args.long_epochs,
        long_top=args.long_top,
        seeds=args.seeds,
        seed=seed,
    )
    base_test = accuracy(ev.base, ev.data.test, config.data.batch_size)
    compute = sum(float(r["seconds"]) for r in rows.rows if r["what"] in ("acc", "final"))
    shown = sys.argv[1:] if argv is None else argv
    policy = cands[0].policy
    header = [
        f"# Room above uniform pruning after the final fine-tune, at ≤ {args.level:g} % MACs: {config.study.name}",
        "",
        f"Command: `{' '.join([COMMAND, *shown])}` at commit {commit()}",
        "",
        f"- model {config.model.name}, base validation {100 * ev.base_measurement.accuracy:.2f} %, test "
        f"{100 * base_test:.2f} %; {device_name(device)}; "
        f"{compute / 60:.0f} min of compute in all (the rows' `seconds`, over every invocation that added to "
        f"the CSV), {time.perf_counter() - start:.0f} s in this one",
        f"- every candidate at the target the study's baselines take for {args.level:g} %; trial: scorer "
        f"{policy.scorer}, {policy.finetune_steps} fine-tune steps at lr {policy.lr:.3g}, one prune step; "
        f"{args.perturbed} perturbations of the one-shot and {args.random} random allocations, offsets ~ N(0, "
        f"{args.spread:g}), seed {seed}",
        f"- final fine-tune: SGD (Nesterov 0.9), lr {policy.lr:.3g} on one cosine schedule, batch "
        f"{config.data.batch_size}, weight decay {config.train.weight_decay:g}, no distillation, "
        f"{bench.steps_per_epoch} steps per epoch; from the trial's model",
        "",
    ]
    print_report(header + report(rows, cands, seed), str(out.parent / f"{out.name}.md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``autoprune compare``: does the search beat pruning without search, at the same compute?

For one base model and data, five methods run with the same trial count and the same fine-tune
bounds, each as an ordinary autoprune study (its own storage and study name per method and seed):

- ``uniform``: the same ratio in every group, swept over a grid of ratios (every trial enqueued:
  the default scorer, the full fine-tune budget, one prune step, the middle learning rate);
- ``global``: one ratio with channels ranked across all groups (torch-pruning's global pruning),
  over the same grid and with the same fixed settings, no group cut beyond ``space.ratio_max`` (the
  bound of every other method's per-group ratios);
- ``one_shot``: the one-shot allocation (:mod:`autoprune.trial.allocation`), with the same fixed
  settings and no search: at each share of base MACs the study's baselines name (``"25%"``, where
  autoprune enqueues its own one-shot trials), then at the MACs of each uniform ratio of a grid of
  the trials left (:func:`one_shot_grid`);
- ``random``: autoprune's search space with Optuna's random sampler;
- ``autoprune``: the study file's sampler and search space.

Extra *variants* (the autoprune method with more overrides, e.g. ``study.sampler=tpe``) can be
added to test changes of the search. Every method and seed starts from ONE base model: the study
file's checkpoint, or the model cached for the study file's own seed (trained first when missing);
the seeds vary the sampler, the fine-tune batches and the random scorer only.

Per method and seed: the 2-D front of validation accuracy against MACs, the hypervolume of it
(reference point :data:`autoprune.results.pareto.HV_REFERENCE`: the base model's MACs at accuracy 0, the
same for every method), and, at ≤ 50 %, ≤ 25 % and ≤ 12.5 % of base MACs, the test accuracy of the
model a user would pick there: the most accurate on *validation* (the test split never selects).
A study file whose objectives name ``params`` and not ``macs`` is compared on parameters instead
(:func:`axis_of`), every figure and table the same with parameters in place of MACs.
Written to the output folder: ``results.csv`` (one row per method and seed), ``fronts.csv`` (every
front member, with test accuracy), ``results.md`` (mean ± sample standard deviation over seeds, and
autoprune against each baseline: a difference within the larger of the two standard deviations is a
tie) and ``fronts.png`` (all fronts on the same axes).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import math
import shutil
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from autoprune._logging import get_logger
from autoprune.bench import commit
from autoprune.config import PICK_SHARES, StudyConfig, apply_overrides, baseline_share, config_from_dict
from autoprune.data import DataSplits, load_data
from autoprune.errors import AutopruneError, ConfigError
from autoprune.results.export import base_test_accuracy
from autoprune.results.pareto import HV_REFERENCE, front_2d, hypervolume_2d
from autoprune.results.rows import TrialRow
from autoprune.search.basemodel import base_model, cache_path
from autoprune.search.front import (
    PARENT,
    counts_toward_total,
    feasible,
    finished,
    measured,
    stored_constraints,
    superseded,
)
from autoprune.search.loop import StopRequest
from autoprune.search.paths import default_storage, study_artifacts
from autoprune.search.record import StudyRecord, code_sha256
from autoprune.search.run import run_study
from autoprune.search.storage import sqlite_file
from autoprune.trial.metrics import accuracy

log = get_logger(__name__)

METHODS = ("uniform", "global", "one_shot", "random", "autoprune")
"""The methods every comparison runs, in table order."""
BASELINES = ("uniform", "global", "one_shot", "random")
"""What autoprune (and each variant) is judged against."""
RENAMED = {"sensitivity": "one_shot"}
"""Methods' earlier names, accepted by ``--methods`` with a warning until the next release (reports made
before the rename name the one-shot allocation ``sensitivity``)."""
LEVELS = tuple(100 * share for share in PICK_SHARES)
"""MACs levels, in % of the base model's, at which the best test accuracy is reported: the shares the
search's progress line shows."""
_LEVEL_SUFFIX = ("50", "25", "12")
CSV_COLUMNS = (
    "method",
    "seed",
    "hypervolume",
    *(f"best_test_acc_{x}" for x in _LEVEL_SUFFIX),
    *(f"final_test_acc_{x}" for x in _LEVEL_SUFFIX),
    *(f"final_more_test_acc_{x}" for x in _LEVEL_SUFFIX),
)
"""``final_*``: after ``--final-epochs`` (empty without); ``final_more_*``: uniform's and one_shot's picks
fine-tuned longer by the samples autoprune's search spent."""
MORE = {"uniform": "uniform + the search's compute", "one_shot": "one_shot + the search's compute"}
"""The methods whose picks are also fine-tuned longer by the search's samples, and how the tables name that."""
FILES = ("results.csv", "fronts.csv", "results.md", "fronts.png")

_COLORS = {
    "uniform": "#e07b00",
    "global": "#2e8b57",
    "one_shot": "#c71585",
    "random": "#7f7f7f",
    "autoprune": "#1f5fbf",
}
_EXTRA_COLORS = ("#8e44ad", "#c0392b", "#17becf", "#bcbd22")
_STYLES = {
    "uniform": ("D", "-"),
    "global": ("s", "-"),
    "one_shot": ("v", "-"),
    "random": ("x", "--"),
    "autoprune": ("o", "-"),
}


def ratio_grid(count: int, ratio_min: float, ratio_max: float) -> tuple[float, ...]:
    """``count`` ratios evenly spaced over ``(ratio_min, ratio_max]``: the uniform and global sweeps.

    With the default bounds (0, 0.8) and 8 trials: 0.1, 0.2, ..., 0.8 (about 81 % down to 4 % of
    the base MACs for a plain conv chain, where MACs fall with the square of the kept share).
    """
    if count < 1:
        raise ConfigError(f"compare: the ratio grid needs at least 1 trial, got {count}")
    return tuple(round(ratio_min + (ratio_max - ratio_min) * (i + 1) / count, 6) for i in range(count))


def one_shot_grid(config: StudyConfig, trials: int) -> tuple[float | str, ...]:
    """The one-shot allocation's ``trials`` trials: at each share of the study's own baselines (``"25%"``),
    where the search enqueues its one-shot trials too, so that a level's pick is not decided by where a
    grid happens to land; then the ratio grid of the trials left (:func:`ratio_grid`)."""
    shares = [b for b in config.study.baselines if baseline_share(b) is not None][:trials]
    left = trials - len(shares)
    return (*shares, *(ratio_grid(left, config.space.ratio_min, config.space.ratio_max) if left else ()))


def parse_variant(spec: str) -> tuple[str, tuple[str, ...]]:
    """``NAME:SECTION.KEY=VALUE;SECTION.KEY=VALUE`` → the variant's name and its ``--set`` overrides."""
    name, sep, rest = spec.partition(":")
    name = name.strip()
    overrides = tuple(item.strip() for item in rest.split(";") if item.strip())
    if not sep or not name or not overrides:
        raise ConfigError(f"--variant {spec!r}: must look like NAME:section.key=value[;section.key=value...]")
    if name in METHODS:
        raise ConfigError(f"--variant {spec!r}: {name!r} is a built-in method; choose another name")
    return name, overrides


def method_config(
    config: StudyConfig,
    method: str,
    *,
    seed: int,
    trials: int,
    checkpoint: Path,
    runs_dir: Path,
    overrides: Sequence[str] = (),
) -> StudyConfig:
    """The study settings of one method and seed: ``config`` with the method's overrides.

    Args:
        config: The study file's settings (the autoprune method runs them as they are).
        method: One of :data:`METHODS`, or a variant's name (``overrides`` then say what differs).
        seed: Seeds the sampler, fine-tuning and the random scorer (``study.seed``).
        trials: Completed trials each method gets.
        checkpoint: The shared base model's weights.
        runs_dir: Where the method's SQLite storage and front weights go.
        overrides: ``section.key=value`` settings of a variant, on top of everything else.
    """
    data = config.to_dict()
    data["study"].update(
        name=f"{config.study.name}-{method}-s{seed}",
        seed=seed,
        trials=trials,
        timeout=0.0,  # the same trial count for every method, however long each takes
        storage="",
        runs_dir=runs_dir.as_posix(),
    )
    data["model"]["checkpoint"] = str(checkpoint)
    if method in ("uniform", "global", "one_shot"):
        data["space"]["granularity"] = "allocation" if method == "one_shot" else method
        grid: tuple[float | str, ...] = ratio_grid(trials, config.space.ratio_min, config.space.ratio_max)
        if method == "one_shot":
            data["space"]["references"] = ["allocation"]
            grid = one_shot_grid(config, trials)
        data["study"]["baselines"] = list(grid)
        data["study"]["sampler"] = "random"  # never consulted: every trial is enqueued
    elif method == "random":
        data["study"]["sampler"] = "random"
    return config_from_dict(apply_overrides(data, overrides))


def shared_base(config: StudyConfig, device: torch.device) -> Path:
    """The one base model every method and seed prunes: the study file's checkpoint, else the model
    cached for the study file's settings and seed, trained now when it is not cached yet."""
    if config.model.checkpoint:
        return Path(config.model.checkpoint)
    path = cache_path(config)
    if not path.is_file():
        base_model(config, load_data(config.data).to(device), device)
    return path


@dataclass(frozen=True)
class RunResult:
    """One method and seed."""

    method: str
    seed: int
    trials: int
    hypervolume: float
    best_test: dict[float, float | None]
    """Test accuracy of the best-on-validation model at ≤ each of :data:`LEVELS` % MACs (None: none there)."""
    best_val: dict[float, float | None]
    front: list[TrialRow] = field(default_factory=list)
    """The 2-D front (validation accuracy against MACs), by MACs, with test accuracies."""
    seconds: float = 0.0
    samples: int = 0
    """Training samples the run's fine-tunes took (:func:`finetune_samples`)."""
    picks: dict[float, int | None] = field(default_factory=dict)
    """The trial picked at ≤ each of :data:`LEVELS` (most accurate on validation; None: none there)."""
    final_test: dict[float, float | None] = field(default_factory=dict)
    """Test accuracy of each level's pick after the comparison's final fine-tune (empty: none ran)."""
    final_test_more: dict[float, float | None] = field(default_factory=dict)
    """The same after a final fine-tune longer by the samples autoprune's search spent (uniform and
    one_shot only: what their user gets by spending the search's compute on the fine-tune)."""

    def csv_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"method": self.method, "seed": self.seed, "hypervolume": round(self.hypervolume, 6)}
        columns = iter(CSV_COLUMNS[3:])
        for values in (self.best_test, self.final_test, self.final_test_more):
            for level in LEVELS:
                value = values.get(level)
                row[next(columns)] = "" if value is None else round(value, 6)
        return row


def _done(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed trials that met the study's budget at search time (all of them without one), each
    policy at the highest rung it reached (:func:`~autoprune.search.front.superseded`)."""
    trials = study.get_trials(deepcopy=False)
    gone = superseded(trials)
    return [t for t in trials if measured(t) and feasible(stored_constraints(t)) and t.number not in gone]


def _ran(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The runs a study paid for: its finished trials and its completed promoted runs."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if counts_toward_total(t) or (PARENT in t.user_attrs and t.state == optuna.trial.TrialState.COMPLETE)
    ]


def _test_accuracy(study: optuna.Study, number: int, data: DataSplits, batch_size: int) -> float | None:
    """Test accuracy of a trial's kept fine-tuned weights, as ``autoprune report`` measures it."""
    from autoprune.results.export import trial_model

    try:
        return accuracy(trial_model(study, number), data.test, batch_size)
    except AutopruneError as exc:
        log.warning("compare: no test accuracy for trial %d of %s: %s", number, study.study_name, exc)
        return None


RESULT_ATTR = "compare_rows"
"""The study user attribute caching a run's evaluation (test accuracies included), by trial count."""
_COMPARED_SECTIONS = ("model", "data", "train", "space", "sensitivity", "budget", "fidelity")
_COMPARED_STUDY_KEYS = ("sampler", "population_size", "startup_trials", "objectives", "baselines")
"""What else decides a run's trials: a stored run made with other values is rerun, not reused."""


def trial_seconds(study: optuna.Study) -> float:
    """The sum of the study's finished trials' durations: what the run cost, however often it was resumed."""
    return sum((t.duration.total_seconds() for t in _ran(study) if t.duration is not None), 0.0)


def finetune_samples(study: optuna.Study) -> int:
    """Training samples the study's fine-tunes took: every run's ``finetune_cost``, less, for a promoted
    run, the samples its parent's share of it had already taken."""
    ran = _ran(study)
    cost = {t.number: int(t.user_attrs.get("finetune_cost") or 0) for t in study.get_trials(deepcopy=False)}
    return sum(cost[t.number] - (cost.get(int(t.user_attrs[PARENT]), 0) if PARENT in t.user_attrs else 0) for t in ran)


def stored_run(config: StudyConfig, trials: int) -> optuna.Study | None:
    """The stored study of one method and seed when it already holds ``trials`` trials (it is then
    neither reopened nor rerun). A stored study made with other model, data, training, space or budget
    settings, sampler, objectives or baselines, or by other autoprune code (its source files' sha256
    differs, or it recorded none), is deleted, weights included, so the run starts over: its trials
    say nothing about the settings and code asked for now."""
    storage = default_storage(config.study.name, config.study.runs_dir)
    path = sqlite_file(storage)
    if config.study.storage or path is None or not path.is_file():
        return None
    try:
        study = optuna.load_study(study_name=config.study.name, storage=storage)
    except KeyError:
        return None
    record = StudyRecord.find(study)
    stale = (
        "other settings"
        if record is None or not _same_settings(record.config, record.base_sha256, config)
        else "other autoprune code"
        if record.code_sha256 != code_sha256()
        else None
    )
    if stale:
        log.warning("compare: %s was made with %s; running it again", config.study.name, stale)
        path.unlink()
        shutil.rmtree(path.parent / config.study.name, ignore_errors=True)
        return None
    # a study with promotion goes through run_study, which runs what is left of its rungs (or nothing)
    return study if len(finished(study)) >= trials and config.fidelity.rungs == 1 else None


def _comparable(settings: StudyConfig, checkpoint_sha256: str | None) -> dict[str, Any]:
    """What decides a run's trials: the compared sections and study keys, the base checkpoint by content."""
    data = settings.to_dict()
    out: dict[str, Any] = {k: data[k] for k in _COMPARED_SECTIONS}
    out["study"] = {k: data["study"][k] for k in _COMPARED_STUDY_KEYS}
    if checkpoint_sha256 is not None:
        out["model"]["checkpoint"] = checkpoint_sha256
    return out


def _same_settings(stored: StudyConfig, base_sha256: str | None, new: StudyConfig) -> bool:
    """Whether a stored run (its record's settings and base checkpoint digest) was made with the
    settings ``new`` and from the same base checkpoint: the one whose sha256 the study recorded (a
    study stored before it recorded one: the file at its path now)."""
    stored_path = Path(stored.model.checkpoint or "")
    stored_digest = base_sha256 or (file_digest(stored_path) if stored_path.is_file() else None)
    new_path = Path(new.model.checkpoint or "")
    new_digest = file_digest(new_path) if new_path.is_file() else None
    return _comparable(stored, stored_digest) == _comparable(new, new_digest)


def file_digest(path: Path) -> str:
    """sha256 of a file, in hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _result_to_attr(result: RunResult) -> dict[str, Any]:
    return {
        "trials": result.trials,
        "hypervolume": result.hypervolume,
        "best_test": [result.best_test[level] for level in LEVELS],
        "best_val": [result.best_val[level] for level in LEVELS],
        "front": [row.to_dict() for row in result.front],
        "seconds": result.seconds,
        "picks": [result.picks.get(level) for level in LEVELS],
    }


def _result_from_attr(attr: dict[str, Any], method: str, seed: int) -> RunResult:
    return RunResult(
        method,
        seed,
        int(attr["trials"]),
        float(attr["hypervolume"]),
        dict(zip(LEVELS, attr["best_test"], strict=True)),
        dict(zip(LEVELS, attr["best_val"], strict=True)),
        [TrialRow(**row) for row in attr["front"]],
        float(attr["seconds"]),
        picks=dict(zip(LEVELS, attr.get("picks") or [None] * len(LEVELS), strict=True)),
    )


def axis_of(objectives: Sequence[str]) -> str:
    """The figure a comparison sets accuracy against: ``params`` when the objectives name it and not
    ``macs``, else ``macs``."""
    return "params" if "params" in objectives and "macs" not in objectives else "macs"


_AXIS_LABEL = {"macs": "MACs", "params": "parameters"}


def trials_hypervolume(trials: Sequence[optuna.trial.FrozenTrial], base: Mapping[str, Any], axis: str) -> float:
    """The hypervolume of ``trials``' validation accuracy against ``axis`` as shares of ``base``'s figure,
    from :data:`~autoprune.results.pareto.HV_REFERENCE`."""
    reference = (HV_REFERENCE[0], -HV_REFERENCE[1])
    points = [(float(t.user_attrs[axis]) / base[axis], -float(t.user_attrs["accuracy"])) for t in trials]
    return hypervolume_2d(points, reference)


def evaluate_run(study: optuna.Study, method: str, seed: int, data: DataSplits, seconds: float = 0.0) -> RunResult:
    """Hypervolume, 2-D front and best test accuracy per level of one finished study, on its
    :func:`axis_of` (MACs, or parameters)."""
    record = StudyRecord.from_study(study)
    axis = axis_of(record.config.study.objectives)
    base = record.base.to_dict()
    batch_size = record.config.data.batch_size
    done = _done(study)
    accs = [float(t.user_attrs["accuracy"]) for t in done]
    macs = [float(t.user_attrs[axis]) for t in done]
    hv = trials_hypervolume(done, base, axis)
    kept = study_artifacts(study).weight_numbers()
    front = []
    for i in front_2d(macs, accs):
        t = done[i]
        test = _test_accuracy(study, t.number, data, batch_size) if t.number in kept else None
        front.append(dataclasses.replace(TrialRow.of(t, base), test_accuracy=test))
    best_test: dict[float, float | None] = {}
    best_val: dict[float, float | None] = {}
    picks: dict[float, int | None] = {}
    for level in LEVELS:
        # the front is sorted by the axis with accuracy rising: the last member under the level is the pick
        pct = [getattr(p, f"{axis}_pct") for p in front]
        under = [p for p, x in zip(front, pct, strict=True) if x is not None and x <= level + 1e-9]
        best_val[level] = under[-1].accuracy if under else None
        best_test[level] = under[-1].test_accuracy if under else None
        picks[level] = under[-1].trial if under else None
    return RunResult(method, seed, len(done), hv, best_test, best_val, front, seconds, picks=picks)


def _evaluated(study: optuna.Study, method: str, seed: int, data: DataSplits) -> RunResult:
    """The run's evaluation: the one stored in its study for the same trials, else :func:`evaluate_run`,
    then stored; ``seconds`` is the sum of the trials' durations (:func:`trial_seconds`)."""
    held = len(_ran(study))
    cached = study.user_attrs.get(RESULT_ATTR)
    if cached and cached.get("held") == held:
        result = _result_from_attr(cached["result"], method, seed)
    else:
        result = evaluate_run(study, method, seed, data)
        study.set_user_attr(RESULT_ATTR, {"held": held, "result": _result_to_attr(result)})
    return dataclasses.replace(result, seconds=trial_seconds(study), samples=finetune_samples(study))


FINAL_ATTR = "compare_final"
"""The study user attribute caching test accuracies after final fine-tunes, by recipe and trial."""


def final_test(
    study: optuna.Study,
    number: int,
    data: DataSplits,
    *,
    epochs: int,
    extra_samples: int,
    lr: float,
    device: torch.device,
) -> float:
    """Test accuracy of trial ``number``'s kept model after the final fine-tune of ``autoprune finetune``:
    ``epochs`` epochs plus ``extra_samples`` training samples on one cosine schedule from ``lr`` (the
    study's batch size, weight decay and distillation), continued from its checkpoint where a run stopped."""
    from autoprune.results.export import trial_model
    from autoprune.results.finetune import FinetuneSettings, final_finetune, recipe_for

    recipe = recipe_for(study, number, data, FinetuneSettings(epochs=epochs, lr=lr))
    recipe = dataclasses.replace(recipe, steps=recipe.steps + extra_samples // recipe.batch_size)
    tuned = final_finetune(study, number, trial_model(study, number), data, recipe, device=device)
    return accuracy(tuned.model, data.test, recipe.batch_size)


def _finals(
    study: optuna.Study,
    picks: dict[float, int | None],
    data: DataSplits,
    *,
    epochs: int,
    extra_samples: int,
    lr: float,
    device: torch.device,
) -> dict[float, float | None]:
    """:func:`final_test` of each level's pick, each trial once, cached in the study as it finishes so
    that a rerun fine-tunes none again."""
    key = f"{epochs} epochs + {extra_samples} samples at lr {lr:g}"
    cached = dict(study.user_attrs.get(FINAL_ATTR) or {})
    done = dict(cached.get(key) or {})
    for number in sorted({n for n in picks.values() if n is not None}):
        if str(number) not in done:
            log.info("compare: final fine-tune of trial %d of %s (%s)", number, study.study_name, key)
            done[str(number)] = final_test(
                study, number, data, epochs=epochs, extra_samples=extra_samples, lr=lr, device=device
            )
            study.set_user_attr(FINAL_ATTR, {**cached, key: done})
    return {level: None if n is None else done[str(n)] for level, n in picks.items()}


@dataclass(frozen=True)
class Stat:
    """Mean and spread (sample standard deviation; 0 for one seed) over the seeds that have a value."""

    mean: float | None
    std: float
    count: int
    of: int

    @classmethod
    def of_values(cls, values: Sequence[float | None]) -> Stat:
        present = [v for v in values if v is not None and not math.isnan(v)]
        if not present:
            return cls(None, 0.0, 0, len(values))
        std = statistics.stdev(present) if len(present) > 1 else 0.0
        return cls(statistics.fmean(present), std, len(present), len(values))

    def text(self, scale: float = 1.0, digits: int = 4) -> str:
        if self.mean is None:
            return "–"
        out = f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"
        return out + (f" ({self.count}/{self.of} seeds)" if self.count < self.of else "")


def verdict(a: Stat, b: Stat) -> tuple[float | None, str]:
    """``a`` against ``b``: the difference of means and better / worse / tie (within the larger spread)."""
    if a.mean is None or b.mean is None:
        return None, "n/a"
    diff = a.mean - b.mean
    if abs(diff) <= max(a.std, b.std):
        return diff, "tie"
    return diff, "better" if diff > 0 else "worse"


@dataclass
class Comparison:
    """All runs of one comparison and what they add up to."""

    name: str
    runs: list[RunResult]
    methods: list[str]
    base: dict[str, Any]
    base_test_accuracy: float | None
    settings: dict[str, Any]
    seconds: float = 0.0

    @property
    def axis(self) -> str:
        """``macs`` or ``params`` (:func:`axis_of`)."""
        config = self.settings.get("config", {})
        return axis_of(config.get("study", {}).get("objectives", ["accuracy", "macs"]))

    def of(self, method: str) -> list[RunResult]:
        return [r for r in self.runs if r.method == method]

    def stat(self, method: str, what: str | float) -> Stat:
        runs = self.of(method)
        if what == "hypervolume":
            return Stat.of_values([r.hypervolume for r in runs])
        return Stat.of_values([r.best_test[float(what)] for r in runs])

    def goals(self, method: str = "autoprune") -> dict[str, bool]:
        """The goals the search is held to: hypervolume above every baseline by more than the spread;
        at ≤ 12.5 % MACs at least one point (0.01) of test accuracy above uniform; at no MACs level
        below uniform by more than the spread."""
        hv = self.stat(method, "hypervolume")
        beats = []
        for other in BASELINES:
            diff, word = verdict(hv, self.stat(other, "hypervolume"))
            beats.append(word == "better")
        low = self.stat(method, LEVELS[-1])
        uni = self.stat("uniform", LEVELS[-1])
        point = low.mean is not None and uni.mean is not None and low.mean - uni.mean >= 0.01
        below = [verdict(self.stat(method, level), self.stat("uniform", level))[1] == "worse" for level in LEVELS]
        return {
            "hypervolume_beats_every_baseline": all(beats),
            "one_point_above_uniform_at_12_5": point,
            "never_below_uniform": not any(below),
        }


def run_compare(
    config: StudyConfig,
    *,
    seeds: int = 3,
    trials: int | None = None,
    runs_dir: Path,
    device: torch.device,
    variants: Sequence[tuple[str, Sequence[str]]] = (),
    fresh: bool = False,
    only: Sequence[str] = (),
    final_epochs: int = 0,
) -> Comparison:
    """Run every method (or those in ``only``, and the variants) for every seed (seed by seed, so an
    interrupted run leaves whole seeds) and evaluate each. A rerun resumes the stored studies;
    ``fresh`` deletes them first.

    ``final_epochs`` > 0: every run's pick at each level is then given the final fine-tune of
    :func:`final_test` for that many epochs, all at the study's baseline learning rate (the geometric
    middle of ``space.lr_min`` and ``lr_max``); and once autoprune's run of a seed is done, uniform's and
    one_shot's picks of that seed again, longer by the samples autoprune's search spent.

    Signals, as in a search (:class:`autoprune.search.loop.StopRequest`): the first SIGINT or SIGTERM
    lets the current trial, or the evaluation under way, finish; no other run starts, and the
    comparison of the runs finished so far is returned. A second one raises
    :class:`KeyboardInterrupt` at once, in an evaluation too: nothing is returned (``autoprune
    compare`` writes nothing and exits with status 130). Each run's evaluation is stored in its
    study as soon as it is done, so the same command resumes without evaluating those runs again.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: must be at least 1")
    if final_epochs < 0:
        raise ConfigError(f"--final-epochs {final_epochs}: must be 0 (none) or more")
    if config.space.kind != "channels":
        raise ConfigError(
            f"space.kind = {config.space.kind!r}: autoprune compare sets channel pruning methods against each "
            "other; for weight-level sparsity run python -m autoprune.bench.sparsity STUDY.toml"
        )
    for old in set(only) & set(RENAMED):
        log.warning(
            "compare: method %r is now called %r; the old name is accepted until the next release", old, RENAMED[old]
        )
    only = [RENAMED.get(m, m) for m in only]
    unknown = sorted(set(only) - set(METHODS))
    if unknown:
        raise ConfigError(f"--methods {' '.join(unknown)}: each must be one of {', '.join(METHODS)}")
    trials = trials or config.study.trials
    if fresh and runs_dir.exists():
        shutil.rmtree(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    start, code = time.perf_counter(), commit()  # the code that runs, whatever is committed while it does
    checkpoint = shared_base(config, device)
    log.info("compare: base model %s; %d seed(s) x %d trials per method", checkpoint, seeds, trials)
    data = load_data(config.data)  # CPU copy for the test split
    methods: list[tuple[str, Sequence[str]]] = [(m, ()) for m in METHODS if not only or m in only]
    methods += [(n, o) for n, o in variants]
    runs: list[RunResult] = []
    studies: dict[tuple[str, int], optuna.Study] = {}
    base: dict[str, Any] = {}
    lr = math.sqrt(config.space.lr_min * config.space.lr_max)

    def finals(study: optuna.Study, result: RunResult, extra_samples: int) -> dict[float, float | None]:
        return _finals(
            study, result.picks, data, epochs=final_epochs, extra_samples=extra_samples, lr=lr, device=device
        )

    try:
        with StopRequest() as stop:
            for k, (method, overrides) in itertools.product(range(seeds), methods):
                if stop.requested:
                    break
                seed = config.study.seed + k
                cfg = method_config(
                    config,
                    method,
                    seed=seed,
                    trials=trials,
                    checkpoint=checkpoint,
                    runs_dir=runs_dir,
                    overrides=overrides,
                )
                log.info("compare: %s, seed %d (study %s)", method, seed, cfg.study.name)
                study = stored_run(cfg, trials) or run_study(cfg, device=device)
                held = len(finished(study))
                if held < trials:  # stopped after its current trial
                    log.warning("compare: stopped in %s (%d of %d trials)", cfg.study.name, held, trials)
                    break
                result = _evaluated(study, method, seed, data)
                if final_epochs:
                    result = dataclasses.replace(result, final_test=finals(study, result, 0))
                studies[method, seed] = study
                base = StudyRecord.from_study(study).base.to_dict()
                log.info(
                    "compare: %s seed %d: hypervolume %.4f, best test acc at <=50/25/12.5%% %s %s",
                    method,
                    seed,
                    result.hypervolume,
                    _AXIS_LABEL[axis_of(config.study.objectives)],
                    " / ".join("–" if v is None else f"{v:.4f}" for v in result.best_test.values()),
                )
                runs.append(result)
            searched = {r.seed: r.samples for r in runs if r.method == "autoprune"}
            for i, run in enumerate(runs):
                if final_epochs and run.method in MORE and run.seed in searched and not stop.requested:
                    more = finals(studies[run.method, run.seed], run, searched[run.seed])
                    runs[i] = dataclasses.replace(run, final_test_more=more)
            stopped = len(runs) < seeds * len(methods)
            if stopped:
                log.warning(
                    "compare: stopped; reporting the %d whole run(s) so far; rerun the same command to resume",
                    len(runs),
                )
            if not runs:
                raise AutopruneError("compare: stopped before any method finished a seed; nothing to report")
            base_test = base_test_accuracy(next(iter(studies.values())), data, config.data.batch_size)
    except KeyboardInterrupt:
        log.warning(
            "compare: interrupted; nothing reported; the %d run(s) evaluated so far keep their results for a rerun",
            len(runs),
        )
        raise
    settings = {
        "seeds": sorted({r.seed for r in runs}),
        "stopped": stopped,
        "trials": trials,
        "grid": list(ratio_grid(trials, config.space.ratio_min, config.space.ratio_max)),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_digest(checkpoint) if checkpoint.is_file() else None,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "variants": {n: list(o) for n, o in variants},
        "config": config.to_dict(),
        "final_epochs": final_epochs,
        "final_lr": lr,
        "commit": code,
    }
    return Comparison(
        config.study.name,
        runs,
        [m for m, _o in methods],
        base,
        base_test,
        settings,
        time.perf_counter() - start,
    )


# ----------------------------------------------------------------------------------------------- output


def write_csv(comparison: Comparison, out: Path) -> tuple[Path, Path]:
    """``results.csv`` (one row per method and seed) and ``fronts.csv`` (every front member)."""
    results = out / "results.csv"
    with results.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for run in comparison.runs:
            writer.writerow(run.csv_row())
    fronts = out / "fronts.csv"
    columns = ["method", "seed", *TrialRow.__dataclass_fields__]
    with fronts.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for run in comparison.runs:
            for p in run.front:
                row = {"method": run.method, "seed": run.seed} | {
                    k: (round(v, 6) if isinstance(v, float) else ("" if v is None else v))
                    for k, v in p.to_dict().items()
                }
                writer.writerow(row)
    return results, fronts


def method_color(method: str, methods: Sequence[str]) -> str:
    if method in _COLORS:
        return _COLORS[method]
    extras = [m for m in methods if m not in _COLORS]
    return _EXTRA_COLORS[extras.index(method) % len(_EXTRA_COLORS)]


def write_plot(comparison: Comparison, path: Path) -> Path:
    """All fronts on the same axes: validation accuracy (what the search saw, the hypervolume's
    basis) and test accuracy of the same front members, against MACs in % of the base model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), dpi=110, sharey=True)
    for ax, key, title in (
        (axes[0], "accuracy", "validation accuracy (2-D front)"),
        (axes[1], "test_accuracy", "test accuracy of the same front members"),
    ):
        for method in comparison.methods:
            color = method_color(method, comparison.methods)
            for i, run in enumerate(comparison.of(method)):
                points = [
                    (getattr(p, f"{comparison.axis}_pct"), getattr(p, key))
                    for p in run.front
                    if getattr(p, key) is not None
                ]
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                marker, line = _STYLES.get(method, ("^", ":"))
                ax.step(
                    xs,
                    ys,
                    where="post",
                    color=color,
                    lw=1.6,
                    ls=line,
                    alpha=0.8,
                    marker=marker,
                    ms=4,
                    zorder=3 if method == "autoprune" else 2,
                    label=method if i == 0 else None,
                )
        for level in LEVELS:
            ax.axvline(level, color="#999", ls=":", lw=1)
        if comparison.base:
            base_acc = comparison.base["accuracy"] if key == "accuracy" else comparison.base_test_accuracy
            if base_acc is not None:
                ax.scatter([100.0], [base_acc], marker="*", s=120, c="black", label="base model", zorder=4)
        ax.set_xscale("log")
        ax.set_xlabel(f"{_AXIS_LABEL[comparison.axis]}, % of the base model (log scale; dotted: 50, 25, 12.5 %)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8, loc="lower right")
    seeds = len(comparison.settings.get("seeds", []))
    fig.suptitle(f"compare-{comparison.name}: {comparison.settings.get('trials')} trials per method, {seeds} seed(s)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _sampler(settings: dict[str, Any]) -> str:
    config = settings.get("config")
    return config_from_dict(config).sampler if config else "?"


def _steps(settings: dict[str, Any]) -> str:
    """A trial's fine-tune steps: ``finetune_steps_max``, or the range when the search chooses them."""
    config = settings.get("config") or {}
    space = config.get("space", {})
    searched = "finetune_cost" in config.get("study", {}).get("objectives", [])
    return (
        f"{space.get('finetune_steps_min')}–{space.get('finetune_steps_max')}"
        if searched
        else f"{space.get('finetune_steps_max')}"
    )


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.2f}"


def _final_section(comparison: Comparison) -> list[str]:
    """The section on the final fine-tune: each method's picks after it, and autoprune against each
    baseline there, the longer fine-tunes of uniform and one_shot included."""
    s = comparison.settings
    if not any(r.final_test for r in comparison.runs):
        return []
    label = _AXIS_LABEL[comparison.axis]
    rows: list[tuple[str, dict[float, Stat], dict[float, Stat]]] = []
    for method in comparison.methods:
        runs = comparison.of(method)
        if runs:
            trial = {level: comparison.stat(method, level) for level in LEVELS}
            final = {level: Stat.of_values([r.final_test.get(level) for r in runs]) for level in LEVELS}
            rows.append((method, trial, final))
        if method in MORE and any(r.final_test_more for r in runs):
            more = {level: Stat.of_values([r.final_test_more.get(level) for r in runs]) for level in LEVELS}
            rows.append((MORE[method], {}, more))
    searched = [r.samples for r in comparison.of("autoprune")]
    longer = (
        "`+ the search's compute`: the same picks fine-tuned longer by the training samples autoprune's search "
        f"spent in that seed ({statistics.fmean(searched):,.0f} on average): the user who skips the search and "
        "spends its night on the fine-tune. "
        if searched
        else ""
    )
    lines = [
        "",
        f"## After the final fine-tune ({s['final_epochs']} epochs)",
        "",
        f"Each method's pick at each level (the most accurate on validation) fine-tuned as `autoprune finetune` "
        f"does, the same recipe for every method: {s['final_epochs']} epochs on one cosine schedule from lr "
        f"{s['final_lr']:.3g}, the study's batch size, weight decay and distillation, from the trial's kept weights. "
        f"{longer}Test accuracy in %, mean ± sample std over seeds.",
        "",
        "| method | "
        + " | ".join(f"≤ {level:g}% {label}: after the trial | after the final fine-tune" for level in LEVELS)
        + " |",
        "| --- |" + " ---: |" * (2 * len(LEVELS)),
    ]
    for name, trial, final in rows:
        cells = []
        for level in LEVELS:
            cells += [trial[level].text(100.0, 2) if level in trial else "–", final[level].text(100.0, 2)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    finals = {name: final for name, _trial, final in rows}
    if "autoprune" in finals:
        lines += [
            "",
            "autoprune against each, after the final fine-tune (points; a difference within the larger spread is "
            "a tie):",
            "",
            "| baseline | " + " | ".join(f"Δ test acc ≤ {level:g}%" for level in LEVELS) + " |",
            "| --- |" + " ---: |" * len(LEVELS),
        ]
        for name, final in finals.items():
            if name == "autoprune":
                continue
            cells = []
            for level in LEVELS:
                diff, word = verdict(finals["autoprune"][level], final[level])
                cells.append("n/a" if diff is None else f"{_pct(diff)} {word}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(comparison: Comparison, command: str = "") -> str:
    """The ``results.md`` text: settings, the per-method table, autoprune against each baseline, the goals."""
    s = comparison.settings
    base = comparison.base
    label = _AXIS_LABEL[comparison.axis]
    header = [
        "method",
        "hypervolume",
        *(f"best test acc ≤ {level:g}% {label}" for level in LEVELS),
        "ft samples / run",
        "trial s / run",
    ]
    lines = [
        f"# Does the search pay? compare-{comparison.name}",
        "",
        f"Command: `{command}`" if command else "",
        "",
        f"- base model (one, shared by every method and seed): `{s['checkpoint']}` (sha256 "
        f"`{(s.get('checkpoint_sha256') or '?')[:16]}…`); validation accuracy "
        + (f"{base['accuracy']:.4f}, " if base else "")
        + (f"test accuracy {comparison.base_test_accuracy:.4f}, " if comparison.base_test_accuracy else "")
        + (f"{base['macs']:,} MACs, {base['params']:,} parameters" if base else ""),
        f"- code: commit {s.get('commit', 'unknown')}; autoprune's sampler `{_sampler(s)}`, space "
        f"`{s.get('config', {}).get('space', {}).get('granularity', '?')}`; every trial fine-tunes "
        f"{_steps(s)} steps (the study file's settings, `config` in each run's study)",
        f"- {s['trials']} trials per method and seed; seeds {s['seeds']} (sampler, fine-tune batches, "
        "random scorer); the base model is the same for all",
        f"- uniform and global ratio grid: {', '.join(f'{r:g}' for r in s['grid'])} "
        "(default scorer, full fine-tune budget, one prune step)",
        f"- device: {s['device']}, {s['torch_threads']} torch threads; trials took "
        f"{sum(r.seconds for r in comparison.runs) / 60:.1f} min in all (the sum of their durations; "
        f"`trial s / run` below), this command {comparison.seconds / 60:.1f} min",
        f"- hypervolume: area dominated by the front of validation accuracy against {label} / base {label}, "
        f"reference point {HV_REFERENCE} (base {label}, accuracy 0), the same for every method; 1.0 would be "
        "a perfect model that costs nothing",
        f"- best test accuracy at ≤ X% {label}: the test accuracy of the model with the best *validation* "
        f"accuracy among those at or under X% of the base {label} (the test split never selects)",
        "- spread: ± sample standard deviation over the seeds; a difference within the larger of the "
        "two spreads is a tie",
    ]
    if s.get("stopped"):
        lines.append("- **incomplete**: the comparison was stopped; only the runs listed below finished")
    if s.get("variants"):
        for name, overrides in s["variants"].items():
            lines.append(f"- variant `{name}`: autoprune with `{'; '.join(overrides)}`")
    rows = []
    for method in comparison.methods:
        runs = comparison.of(method)
        secs = statistics.fmean(r.seconds for r in runs) if runs else 0.0
        samples = statistics.fmean(r.samples for r in runs) if runs else 0.0
        rows.append(
            [
                method,
                comparison.stat(method, "hypervolume").text(),
                *(comparison.stat(method, level).text(100.0, 2) for level in LEVELS),
                f"{samples:,.0f}",
                f"{secs:.0f}",
            ]
        )
    lines += ["", "| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "Test accuracies in %."]
    challengers = [m for m in comparison.methods if m not in BASELINES and comparison.of(m)]
    baselines = [m for m in BASELINES if m in comparison.methods and comparison.of(m)]
    if challengers and baselines:
        lines += [
            "",
            "## Against each baseline",
            "",
            "Differences of means (hypervolume; test accuracy in points) and the verdict.",
            "",
            "| method | baseline | Δ hypervolume | "
            + " | ".join(f"Δ test acc ≤ {level:g}%" for level in LEVELS)
            + " |",
            "| --- | --- |" + " ---: |" * (1 + len(LEVELS)),
        ]
    for method in challengers:
        for other in baselines:
            cells = []
            diff, word = verdict(comparison.stat(method, "hypervolume"), comparison.stat(other, "hypervolume"))
            cells.append("n/a" if diff is None else f"{diff:+.4f} {word}")
            for level in LEVELS:
                diff, word = verdict(comparison.stat(method, level), comparison.stat(other, level))
                cells.append("n/a" if diff is None else f"{_pct(diff)} {word}")
            lines.append(f"| {method} | {other} | " + " | ".join(cells) + " |")
    lines += _final_section(comparison)
    lines += ["", "## Goals", ""]
    if len(baselines) < len(BASELINES):
        missing = ", ".join(m for m in BASELINES if m not in baselines)
        lines.append(f"Judged only against every baseline; these runs leave out {missing}.")
        challengers = []
    for method in challengers:
        goals = comparison.goals(method)
        lines.append(
            f"- {method}: hypervolume above every baseline by more than the spread: "
            f"**{'yes' if goals['hypervolume_beats_every_baseline'] else 'no'}**; at ≤ 12.5% {label} at least "
            f"one point of test accuracy above uniform: "
            f"**{'yes' if goals['one_point_above_uniform_at_12_5'] else 'no'}**; at no level below uniform "
            f"beyond the spread: **{'yes' if goals['never_below_uniform'] else 'no'}**"
        )
    lines += [
        "",
        "Files: `results.csv` (one row per method and seed), `fronts.csv` (every front member: validation and "
        "test accuracy, MACs, parameters, size), `fronts.png` (all fronts on the same axes).",
        "",
    ]
    return "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1]))


def write_outputs(comparison: Comparison, out: Path, command: str = "") -> dict[str, Path]:
    """Write :data:`FILES` to ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    results, fronts = write_csv(comparison, out)
    md = out / "results.md"
    md.write_text(markdown(comparison, command), encoding="utf-8")
    png = write_plot(comparison, out / "fronts.png")
    return {"results.csv": results, "fronts.csv": fronts, "results.md": md, "fronts.png": png}


__all__ = [
    "BASELINES",
    "CSV_COLUMNS",
    "FILES",
    "LEVELS",
    "METHODS",
    "Comparison",
    "RunResult",
    "Stat",
    "axis_of",
    "evaluate_run",
    "markdown",
    "method_color",
    "method_config",
    "parse_variant",
    "ratio_grid",
    "run_compare",
    "shared_base",
    "stored_run",
    "trials_hypervolume",
    "verdict",
    "write_outputs",
]

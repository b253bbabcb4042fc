"""Promotion across fine-tune budgets: successive halving for a multi-objective study.

A study with ``[fidelity] rungs = R`` (R > 1) first runs its ``study.trials`` trials as always: rung 0,
each judged after its own fine-tune of ``s`` steps. Once they have all finished, the best of them
are promoted to rung 1: each promoted policy is run again as a new trial that continues from its
parent's kept weights for ``s · (eta - 1)`` more steps, so that it has been fine-tuned ``s · eta``
steps in all; and so on, rung ``r`` reaching ``s · eta^r`` steps, up to rung ``R - 1``.

**Who is promoted.** Trials are grouped in bands of cost — octaves of the base model's figure:
(50 %, 100 %], (25 %, 50 %], (12.5 %, 25 %], ... of its MACs (of non-zero MACs, parameters or size
when the study minimizes that instead) — and the most accurate ``ceil(n / eta)`` of each band's
``n`` feasible runs move on (ties: the cheaper, then the earlier). Bands rather than the
non-dominated rank: a front is read by cost level (``pick --max-macs 25%``), and a rank would spend
the longer fine-tunes where the front happens to be dense, leaving a sparse cost level with nothing
refined; a band with a single run still promotes it.

With ``fidelity.bands = "levels"`` the same number of runs moves on, taken from the bands a user
picks from only: between consecutive levels (the study's share baselines, else 50, 25 and 12.5 %),
the lowest down to half its level. Each band's best moves on, then each band's second best, and so
on until the octaves' count is reached; runs above the highest level or below the lowest band are
left at their first fine-tune.

**What is stored.** A promoted run is an ordinary trial with its parent's parameters and user
attributes ``parent`` (the trial it continues), ``rung``, ``finetune_steps`` (its steps in all) and
the parent's ``baseline`` if it has one; its ``finetune_cost`` counts the parent's samples too.
The front holds the highest rung each policy reached: a trial whose promoted child completed is
*superseded* and leaves the front (:func:`~autoprune.search.front.superseded`). The weights of
every run that may still be promoted are kept until its rung is decided
(:meth:`Promotion.weights_needed`).

**Workers and resume.** Promoted runs start from their parents' weights, so every worker must reach
the study's artifact store (``runs/<study>/``; on several machines a shared mount or a bucket). The
process that finds a rung decided enqueues what it promotes under a file lock (in the study's folder,
or for a bucket in a local one: processes of one machine take turns), and weights are deleted under
the same lock; should two processes still enqueue one promotion, the later run gives itself up.
Each call works out the promotions again from the stored trials, so a study resumed after a kill
runs only what is missing, and a run lost for good is made up.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune._logging import get_logger
from autoprune.config import FidelitySection
from autoprune.search.artifacts import Artifacts
from autoprune.search.front import PARENT, RUNG, counts_toward_total, feasible, measured, rung_of, stored_constraints
from autoprune.search.storage import file_lock

log = get_logger(__name__)

COSTS = ("macs", "nonzero_macs", "params", "size", "latency_ms")
"""The figures bands are cut on, by preference: the first the study minimizes (else ``macs``)."""
MAX_ATTEMPTS = 3
"""Failed children after which a parent is not promoted again."""


def band_key(objectives: Sequence[str]) -> str:
    """The figure a study's bands are cut on (:data:`COSTS`)."""
    return next((key for key in COSTS if key in objectives), "macs")


def band(share: float) -> int:
    """The octave a share of the base figure falls in: 0 for (1/2, 1] (and above), 1 for (1/4, 1/2], ..."""
    return max(0, math.floor(-math.log2(max(share, 1e-12))))


def level_band(share: float, levels: Sequence[float]) -> int | None:
    """The band of ``levels`` (shares, largest first) a share falls in: ``i`` for
    ``(levels[i + 1], levels[i]]``, the last band reaching down to half its level; ``None`` outside."""
    floors = [*levels[1:], levels[-1] / 2]
    return next((i for i, (top, floor) in enumerate(zip(levels, floors, strict=True)) if floor < share <= top), None)


def promotions(
    trials: Sequence[FrozenTrial], rung: int, eta: int, key: str, base: float, levels: Sequence[float] = ()
) -> list[int]:
    """The rung-``rung`` runs to promote: in each band of ``key`` (shares of ``base``), the
    ``ceil(n / eta)`` most accurate of its ``n`` measured, feasible runs; with ``levels`` (shares,
    largest first), as many runs from the bands of :func:`level_band`, their best in turn."""
    eligible = [t for t in trials if rung_of(t) == rung and measured(t) and feasible(stored_constraints(t))]
    octaves = _ranked(eligible, lambda t: band(float(t.user_attrs[key]) / base), key)
    best = [runs[: math.ceil(len(runs) / eta)] for runs in octaves]
    if not levels:
        return sorted(t.number for runs in best for t in runs)
    count = sum(map(len, best))
    picked = _ranked(eligible, lambda t: level_band(float(t.user_attrs[key]) / base, levels), key)
    depth = max(map(len, picked), default=0)
    in_turn = [runs[i].number for i in range(depth) for runs in picked if i < len(runs)]
    return sorted(in_turn[:count])


def _ranked(
    trials: Sequence[FrozenTrial], band_of: Callable[[FrozenTrial], int | None], key: str
) -> list[list[FrozenTrial]]:
    """``trials`` by band (bands in order, ``None`` left out), each band's most accurate first (ties:
    the cheaper, then the earlier)."""

    def order(t: FrozenTrial) -> tuple[float, float, int]:
        return -float(t.user_attrs["accuracy"]), float(t.user_attrs[key]), t.number

    bands: dict[int, list[FrozenTrial]] = defaultdict(list)
    for t in trials:
        if (b := band_of(t)) is not None:
            bands[b].append(t)
    return [sorted(bands[b], key=order) for b in sorted(bands)]


@dataclass(frozen=True)
class Pending:
    """Promoted runs not finished: ``waiting`` to be taken, ``running`` in some worker."""

    waiting: int = 0
    running: int = 0

    def __bool__(self) -> bool:
        return bool(self.waiting or self.running)


class Promotion:
    """Decides each rung's promotions once the rung below has finished, and enqueues them.

    Every call works out again, from the stored trials, which runs each decided rung promotes and
    enqueues those without a child that completed, waits or runs: a rung enqueued in part (a kill
    between two enqueues), a promoted run lost for good (a second Ctrl-C, retries used up) or a
    policy that qualifies once more trials have run is made up, up to :data:`MAX_ATTEMPTS` failed
    children per parent. A parent whose weights are gone is skipped, with a warning.

    Args:
        fidelity: The study's ``[fidelity]`` settings.
        objectives: The study's objectives (which figure bands are cut on).
        base: The base model's figures.
        artifacts: The study's artifact store, which holds the parents' weights.
        lock: The folder of the lock that lets one process at a time enqueue promotions or delete
            weights (:func:`~autoprune.search.paths.lock_folder`).
        trials: ``study.trials``: rung 0 is decided once that many trials have finished.
        levels: With ``fidelity.bands = "levels"``, the shares a user picks at (largest first).
    """

    def __init__(
        self,
        fidelity: FidelitySection,
        objectives: Sequence[str],
        base: Mapping[str, Any],
        artifacts: Artifacts,
        lock: Path,
        trials: int,
        levels: Sequence[float] = (),
    ) -> None:
        self.rungs, self.eta = fidelity.rungs, fidelity.eta
        self.levels = tuple(levels) if fidelity.bands == "levels" else ()
        self.key = band_key(objectives)
        self.base = float(base.get(self.key) or base["macs"])
        self.artifacts = artifacts
        self.lock = lock / "promotion.lock"
        self.trials = trials

    def steps(self, first: int, rung: int) -> int:
        """Fine-tune steps a rung-``rung`` run adds to its parent's, for a policy whose own are ``first``."""
        return first * (self.eta**rung - self.eta ** (rung - 1))

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """The lock held while promotions are enqueued (and while weights are deleted)."""
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        return file_lock(self.lock)

    def _decided(self, trials: Sequence[FrozenTrial], rung: int, live: Collection[int]) -> bool:
        """Whether the runs of ``rung`` are all in: none waiting or running (stale ones do not count),
        and for rung 0 the study's trial count reached."""
        if rung == 0 and sum(counts_toward_total(t) for t in trials) < self.trials:
            return False
        return not any(rung_of(t) == rung and _unfinished(t, live) for t in trials)

    def chosen(self, trials: Sequence[FrozenTrial], rung: int) -> list[int]:
        """The rung-``rung`` runs that move on (:func:`promotions`)."""
        return promotions(trials, rung, self.eta, self.key, self.base, self.levels)

    def advance(self, study: optuna.Study, live: Collection[int]) -> Pending:
        """Enqueue what the decided rungs promote and is not in yet; the promoted runs left to do.

        Args:
            live: Numbers of the running trials that still hold a place (a dead worker's stale one
                does not, on a storage without heartbeats).

        Returns:
            The unfinished runs of the first rung that is not done; empty when every rung is done.
        """
        with self.locked():
            trials = study.get_trials(deepcopy=False)
            for rung in range(1, self.rungs):
                if not self._decided(trials, rung - 1, live):
                    return _pending([t for t in trials if rung_of(t) == rung - 1], live)
                if self._enqueue(study, trials, rung, live):
                    trials = study.get_trials(deepcopy=False)
                pending = _pending([t for t in trials if rung_of(t) == rung], live)
                if pending:
                    return pending
            return Pending()

    def _enqueue(self, study: optuna.Study, trials: Sequence[FrozenTrial], rung: int, live: Collection[int]) -> int:
        """Enqueue the rung-``rung`` runs missing; how many."""
        children: dict[int, list[FrozenTrial]] = defaultdict(list)
        for t in trials:
            if PARENT in t.user_attrs and rung_of(t) == rung:
                children[int(t.user_attrs[PARENT])].append(t)
        by_number = {t.number: t for t in trials}
        missing = []
        for number in self.chosen(trials, rung - 1):
            runs = children[number]
            if any(t.state == TrialState.COMPLETE or _unfinished(t, live) for t in runs):
                continue
            if len(runs) >= MAX_ATTEMPTS:
                continue
            if not self.artifacts.has_weights(number):
                log.warning(
                    "study %r: trial %d would move on to rung %d, but its weights are gone",
                    study.study_name,
                    number,
                    rung,
                )
                continue
            parent = by_number[number]
            first = int(parent.user_attrs["policy"]["finetune_steps"])
            attrs = {PARENT: number, RUNG: rung, "finetune_steps": first * self.eta**rung}
            if "baseline" in parent.user_attrs:  # uniform pruning with promotion is still the baseline
                attrs["baseline"] = parent.user_attrs["baseline"]
            study.enqueue_trial(parent.params, user_attrs=attrs)
            missing.append(number)
        if missing:
            log.info(
                "study %r: rung %d of %d: %d run(s) promoted to fine-tune %d× as long as their first (trials %s)",
                study.study_name,
                rung,
                self.rungs - 1,
                len(missing),
                self.eta**rung,
                ", ".join(map(str, missing)),
            )
        return len(missing)

    def weights_needed(self, trials: Sequence[FrozenTrial]) -> set[int]:
        """Trials whose weights a promotion may still start from: every run of a rung below the last
        that is not decided yet (running trials count as live), and, of a decided one, each run it
        promotes until a child of it completed."""
        live = {t.number for t in trials if t.state == TrialState.RUNNING}
        needed: set[int] = set()
        for rung in range(self.rungs - 1):
            if not self._decided(trials, rung, live):
                needed |= {t.number for t in trials if rung_of(t) == rung}
                continue
            done = {
                int(t.user_attrs[PARENT])
                for t in trials
                if PARENT in t.user_attrs and rung_of(t) == rung + 1 and t.state == TrialState.COMPLETE
            }
            needed |= set(self.chosen(trials, rung)) - done
        return needed


def _unfinished(trial: FrozenTrial, live: Collection[int]) -> bool:
    return trial.state == TrialState.WAITING or (trial.state == TrialState.RUNNING and trial.number in live)


def _pending(trials: Sequence[FrozenTrial], live: Collection[int]) -> Pending:
    return Pending(
        waiting=sum(t.state == TrialState.WAITING for t in trials),
        running=sum(t.state == TrialState.RUNNING and t.number in live for t in trials),
    )


__all__ = ["MAX_ATTEMPTS", "Pending", "Promotion", "band", "band_key", "level_band", "promotions"]

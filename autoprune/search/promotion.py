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

**What is stored.** A promoted run is an ordinary trial with its parent's parameters and user
attributes ``parent`` (the trial it continues), ``rung``, ``finetune_steps`` (its steps in all) and
the parent's ``baseline`` if it has one; its ``finetune_cost`` counts the parent's samples too.
The front holds the highest rung each policy reached: a trial whose promoted child completed is
*superseded* and leaves the front (:func:`~autoprune.search.front.superseded`). The weights of
every run that may still be promoted are kept until its rung is decided (:func:`weights_needed`).

**Workers and resume.** Whichever worker finds a rung finished enqueues the next one, under a file
lock in the study's artifacts folder (which workers share for the weights anyway), so each promotion
is enqueued once; the runs are then taken by any worker. A run lost to a kill is retried like any
trial, and a study resumed mid-rung runs only what is missing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune._logging import get_logger
from autoprune.config import FidelitySection
from autoprune.search.front import PARENT, RUNG, feasible, measured, rung_of, stored_constraints
from autoprune.search.storage import file_lock

log = get_logger(__name__)

COSTS = ("macs", "nonzero_macs", "params", "size", "latency_ms")
"""The figures bands are cut on, by preference: the first the study minimizes (else ``macs``)."""
UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)


def band_key(objectives: Sequence[str]) -> str:
    """The figure a study's bands are cut on (:data:`COSTS`)."""
    return next((key for key in COSTS if key in objectives), "macs")


def band(share: float) -> int:
    """The octave a share of the base figure falls in: 0 for (1/2, 1] (and above), 1 for (1/4, 1/2], ..."""
    return max(0, math.floor(-math.log2(max(share, 1e-12))))


def promotions(trials: Sequence[FrozenTrial], rung: int, eta: int, key: str, base: float) -> list[int]:
    """The rung-``rung`` runs to promote: in each band of ``key`` (shares of ``base``), the
    ``ceil(n / eta)`` most accurate of its ``n`` measured, feasible runs."""
    bands: dict[int, list[FrozenTrial]] = defaultdict(list)
    for t in trials:
        if rung_of(t) == rung and measured(t) and feasible(stored_constraints(t)):
            bands[band(float(t.user_attrs[key]) / base)].append(t)
    chosen = []
    for runs in bands.values():
        runs.sort(key=lambda t: (-float(t.user_attrs["accuracy"]), float(t.user_attrs[key]), t.number))
        chosen += [t.number for t in runs[: math.ceil(len(runs) / eta)]]
    return sorted(chosen)


def weights_needed(trials: Sequence[FrozenTrial], rungs: int) -> set[int]:
    """Trials whose weights a promotion may still start from: every run of a rung below the last whose
    promotions are not decided yet, and the parent of every promoted run still waiting or running."""
    decided = {rung_of(t) - 1 for t in trials if PARENT in t.user_attrs}
    open_rungs = {t.number for t in trials if rung_of(t) < rungs - 1 and rung_of(t) not in decided}
    return open_rungs | {int(t.user_attrs[PARENT]) for t in trials if PARENT in t.user_attrs and t.state in UNFINISHED}


@dataclass(frozen=True)
class Pending:
    """Promoted runs not finished: ``waiting`` to be taken, ``running`` in some worker."""

    waiting: int = 0
    running: int = 0

    def __bool__(self) -> bool:
        return bool(self.waiting or self.running)


class Promotion:
    """Decides each rung's promotions once the rung below has finished, and enqueues them.

    Args:
        fidelity: The study's ``[fidelity]`` settings.
        objectives: The study's objectives (which figure bands are cut on).
        base: The base model's figures.
        folder: The study's artifacts folder: the lock that makes one worker enqueue each rung.
    """

    def __init__(self, fidelity: FidelitySection, objectives: Sequence[str], base: Mapping[str, Any], folder: Path):
        self.rungs, self.eta = fidelity.rungs, fidelity.eta
        self.key = band_key(objectives)
        self.base = float(base.get(self.key) or base["macs"])
        self.lock = folder / "promotion.lock"

    def steps(self, first: int, rung: int) -> int:
        """Fine-tune steps a rung-``rung`` run adds to its parent's, for a policy whose own are ``first``."""
        return first * (self.eta**rung - self.eta ** (rung - 1))

    def advance(self, study: optuna.Study) -> Pending:
        """Enqueue the next rung's promotions if the one below has finished; the promoted runs left.

        Call once the study's own trials (rung 0) are done. Empty when every rung is done (or a rung
        had nothing to promote)."""
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock):
            trials = study.get_trials(deepcopy=False)
            for rung in range(1, self.rungs):
                below = [t for t in trials if rung_of(t) == rung - 1 and t.state in UNFINISHED]
                if below:
                    return _pending(below)
                runs = [t for t in trials if rung_of(t) == rung]
                if not runs:
                    return self._enqueue(study, trials, rung)
            return _pending([t for t in trials if rung_of(t) == self.rungs - 1 and t.state in UNFINISHED])

    def _enqueue(self, study: optuna.Study, trials: Sequence[FrozenTrial], rung: int) -> Pending:
        chosen = promotions(trials, rung - 1, self.eta, self.key, self.base)
        by_number = {t.number: t for t in trials}
        for number in chosen:
            parent = by_number[number]
            first = int(parent.user_attrs["policy"]["finetune_steps"])
            attrs = {PARENT: number, RUNG: rung, "finetune_steps": first * self.eta**rung}
            if "baseline" in parent.user_attrs:  # uniform pruning with promotion is still the baseline
                attrs["baseline"] = parent.user_attrs["baseline"]
            study.enqueue_trial(parent.params, user_attrs=attrs)
        if chosen:
            log.info(
                "study %r: rung %d of %d: %d run(s) promoted to fine-tune %d× as long as their first (trials %s)",
                study.study_name,
                rung,
                self.rungs - 1,
                len(chosen),
                self.eta**rung,
                ", ".join(map(str, chosen)),
            )
        return Pending(waiting=len(chosen))


def _pending(trials: Sequence[FrozenTrial]) -> Pending:
    return Pending(
        waiting=sum(t.state == TrialState.WAITING for t in trials),
        running=sum(t.state == TrialState.RUNNING for t in trials),
    )


__all__ = ["Pending", "Promotion", "band", "band_key", "promotions", "weights_needed"]

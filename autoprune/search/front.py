"""Which stored trials count: a finished trial (toward ``study.trials``), a feasible one, and the
front. Searching needs these as much as the results do (a worker stops at the trial count; weights
are kept for the front only), so they live here, once."""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune._optuna import pareto_front

PARENT = "parent"
"""User attribute of a promoted run (:mod:`autoprune.search.promotion`): the trial it continues."""
RUNG = "rung"
"""User attribute of a promoted run: its rung (the study's own trials are rung 0)."""


def rung_of(trial: FrozenTrial | optuna.Trial) -> int:
    return int(trial.user_attrs.get(RUNG, 0))


def superseded(trials: Sequence[FrozenTrial]) -> set[int]:
    """Trials whose policy reached a higher rung: the parents of completed promoted runs. The front
    holds the highest rung each policy reached, so these are never on it."""
    return {int(t.user_attrs[PARENT]) for t in trials if PARENT in t.user_attrs and t.state == TrialState.COMPLETE}


def parents(trials: Sequence[FrozenTrial]) -> set[int]:
    """Trials a promoted run continues, whatever that run's state: superseded once it completes."""
    return {int(t.user_attrs[PARENT]) for t in trials if PARENT in t.user_attrs}


def counts_toward_total(trial: FrozenTrial) -> bool:
    """Whether a trial is finished, counting toward ``study.trials``: completed, or stopped early by
    its first look (PRUNED with ``early_stopped``); surplus trials a worker gave up and promoted runs
    do not count."""
    return PARENT not in trial.user_attrs and (
        trial.state == TrialState.COMPLETE
        or (trial.state == TrialState.PRUNED and bool(trial.user_attrs.get("early_stopped")))
    )


def measured(trial: FrozenTrial) -> bool:
    """Whether a trial completed with its figures and a record of its surgery (``kept``): one that
    can be reported, rebuilt and exported."""
    return trial.state == TrialState.COMPLETE and "kept" in trial.user_attrs


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count toward the study's total (:func:`counts_toward_total`)."""
    return [t for t in study.get_trials(deepcopy=False) if counts_toward_total(t)]


def stored_constraints(trial: FrozenTrial) -> list[float]:
    """The budget violations the trial recorded (positive: a limit broken); empty without a budget."""
    return [float(v) for v in trial.user_attrs.get("constraints", [])]


def feasible(constraints: Sequence[float]) -> bool:
    """Whether budget violations break no limit."""
    return all(c <= 0 for c in constraints)


def front_numbers(study: optuna.Study) -> list[int]:
    """The numbers of the front: the completed trials no other dominates, among those that meet the
    budget when the study has one (Optuna's ``best_trials``) and were not :func:`superseded`."""
    return sorted(t.number for t in pareto_front(study, superseded(study.get_trials(deepcopy=False))))


def front_to_come(study: optuna.Study) -> list[int]:
    """The front with every promoted run's parent left out, finished or not: it holds every trial that
    may be on the front once those runs complete (one that ends below its parent leaves the trials
    that parent dominated on the front)."""
    return sorted(t.number for t in pareto_front(study, parents(study.get_trials(deepcopy=False))))


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The front's trials (:func:`front_numbers`), by trial number."""
    numbers = set(front_numbers(study))
    return [t for t in study.get_trials(deepcopy=False) if t.number in numbers]


def may_join_front(study: optuna.Study, values: Sequence[float], constraints: Sequence[float]) -> bool:
    """Whether a trial with these objective values and budget violations can be on the study's
    front: it is feasible and no completed feasible trial dominates it, leaving out the parents of
    promoted runs (which those runs supersede). A trial dominated now is never on the front later;
    one that passes may still leave it when better trials come."""
    if not feasible(constraints):
        return False
    signs = [1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in study.directions]
    mine = [sign * v for sign, v in zip(signs, values, strict=True)]
    gone = parents(study.get_trials(deepcopy=False))  # its own parent among them
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if other.values is None or other.number in gone or not feasible(stored_constraints(other)):
            continue
        theirs = [sign * v for sign, v in zip(signs, other.values, strict=True)]
        if theirs != mine and all(t >= m for t, m in zip(theirs, mine, strict=True)):
            return False
    return True


__all__ = [
    "PARENT",
    "RUNG",
    "counts_toward_total",
    "feasible",
    "finished",
    "front",
    "front_numbers",
    "front_to_come",
    "may_join_front",
    "measured",
    "parents",
    "rung_of",
    "stored_constraints",
    "superseded",
]

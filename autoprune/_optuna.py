"""The parts of Optuna that autoprune needs and Optuna offers no public API for, in one place.

Each function says what it relies on; ``tests/test_optuna_adapter.py`` pins the behaviour, so an
Optuna upgrade that moves these breaks that test, not a user's search.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Collection

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import fail_stale_trials
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial


def heartbeat_enabled(study: optuna.Study) -> bool:
    """Whether the study's storage runs Optuna's heartbeat (RDB storages given an interval)."""
    return is_heartbeat_enabled(study._storage)


def fail_stale(study: optuna.Study) -> list[int]:
    """Fail the running trials whose heartbeat stopped, each with a ``fail_reason``, and let the
    storage's stale-trial callback retry them (Optuna's ``fail_stale_trials``, which records no
    reason: the reason is written while the trial still runs, through the storage's stale-trial
    list). Returns the numbers of the trials it found stale."""
    if not heartbeat_enabled(study):
        return []
    storage = study._storage
    reason = "its worker stopped sending heartbeats for longer than the grace period (killed or hung)"
    stale = list(storage._get_stale_trial_ids(study._study_id))  # type: ignore[attr-defined]
    for trial_id in stale:
        with contextlib.suppress(UpdateFinishedTrialError):
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)
    return [storage.get_trial(trial_id).number for trial_id in stale]


def pareto_front(study: optuna.Study, leave_out: Collection[int] = ()) -> list[FrozenTrial]:
    """``study.best_trials`` without its deep copy of every trial: Optuna's own front function applied
    to the trials read with ``deepcopy=False`` (on a study of 1,000 trials the deep copy takes
    seconds, and the search asks after every trial), less the trials numbered in ``leave_out``. Falls
    back to ``best_trials`` if the private function moves (``leave_out`` then only filters its result)."""
    try:
        from optuna.study._constrained_optimization import _is_constrained_optimization
        from optuna.study._multi_objective import _get_pareto_front_trials_by_trials
    except ImportError:  # pragma: no cover - private API moved: the public, slower path
        return [t for t in study.best_trials if t.number not in leave_out]
    trials = [t for t in study.get_trials(deepcopy=False) if t.number not in leave_out]
    return list(_get_pareto_front_trials_by_trials(trials, study.directions, _is_constrained_optimization(trials)))

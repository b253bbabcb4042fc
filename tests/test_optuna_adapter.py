"""Pins the private Optuna behaviour autoprune/_optuna.py relies on: an Optuna upgrade that moves
it fails here, not in a user's search."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autoprune._optuna import fail_stale, heartbeat_enabled, pareto_front
from autoprune.search.storage import make_storage, retried_from


def test_a_stale_trial_is_failed_with_a_reason_and_retried_once(tmp_path: Path) -> None:
    storage = make_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="s")
    assert heartbeat_enabled(study)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    study._storage.record_heartbeat(trial._trial_id)  # what Optuna's heartbeat thread does
    assert fail_stale(study) == []  # fresh
    time.sleep(2.2)
    assert fail_stale(study) == [trial.number]
    failed = study.trials[trial.number]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"].startswith("its worker stopped sending heartbeats")
    (retry,) = [t for t in study.trials if t.state == TrialState.WAITING]
    assert retry.params == failed.params
    popped = study.ask()
    assert popped.number == retry.number
    assert retried_from(study.trials[popped.number]) == trial.number


def test_storages_without_a_heartbeat_fail_nothing(tmp_path: Path) -> None:
    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=None))
    study.ask()
    assert not heartbeat_enabled(study)
    assert fail_stale(study) == []
    assert not heartbeat_enabled(optuna.create_study())


def test_pareto_front_is_best_trials_with_and_without_constraints() -> None:
    points = [(0.9, 100.0), (0.95, 120.0), (0.8, 150.0), (0.99, 50.0), (0.9, 100.0)]
    for constrained, expected in ((False, [3]), (True, [0, 1, 4])):
        study = optuna.create_study(directions=["maximize", "minimize"])
        for i, values in enumerate(points):
            # Optuna keeps a trial's constraints in this system attribute; trial 3 breaks its limit
            system_attrs = {"constraints": [0.5 if i == 3 else 0.0]} if constrained else {}
            study.add_trial(optuna.trial.create_trial(values=list(values), system_attrs=system_attrs))
        front = sorted(t.number for t in pareto_front(study))
        assert front == sorted(t.number for t in study.best_trials) == expected

"""The trial pipeline's extras: the cheap first look, early stop, latency."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from conftest import tiny_config

from autoprune.config import StudyConfig
from autoprune.search.run import run_study


def _config(runs_dir: Path, name: str, *extra: str) -> StudyConfig:
    return tiny_config(runs_dir, name, "study.trials=4", *extra)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("objective") / "runs"


def test_first_look_is_recorded_before_fine_tuning(runs_dir: Path) -> None:
    study = run_study(_config(runs_dir, "look", "trial.recalibrate_batches=8"))
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 4
    for trial in trials:
        assert 0.0 <= trial.user_attrs["first_look_accuracy"] <= 1.0
        assert trial.user_attrs["early_stopped"] is False
        assert trial.user_attrs["seconds"]["recalibrate"] > 0


def test_hopeless_first_look_stops_the_trial_before_fine_tuning(runs_dir: Path) -> None:
    study = run_study(_config(runs_dir, "stop", "trial.recalibrate_batches=8", "trial.early_stop_margin=1.0"))
    trials = study.get_trials()
    assert len(trials) == 4
    assert {t.state for t in trials} == {optuna.trial.TrialState.PRUNED}
    for trial in trials:
        assert trial.user_attrs["early_stopped"] is True
        assert trial.user_attrs["finetune_cost"] == 0
        assert trial.user_attrs["seconds"]["finetune"] == 0
        assert trial.user_attrs["accuracy"] == trial.user_attrs["first_look_accuracy"]
        assert trial.user_attrs["macs"] > 0


def test_no_recalibration_means_no_first_look(runs_dir: Path) -> None:
    study = run_study(_config(runs_dir, "nolook", "trial.recalibrate_batches=0", "study.trials=1"))
    assert study.trials[0].user_attrs["first_look_accuracy"] is None


def test_latency_as_objective_and_relative_budget(runs_dir: Path) -> None:
    config = _config(
        runs_dir,
        "latency",
        "study.objectives=['accuracy','latency_ms']",
        "budget.max_latency_ms='1000%'",
        "trial.latency_repeats=3",
        "study.trials=3",
    )
    study = run_study(config)
    assert study.metric_names == ["accuracy", "latency_ms"]
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert trial.user_attrs["latency_ms"] > 0
        assert trial.values[1] == trial.user_attrs["latency_ms"]
        assert len(trial.user_attrs["constraints"]) == 1


def test_spearman_of_ranks() -> None:
    from autoprune.bench.timing import spearman

    assert spearman([0.1, 0.5, 0.3], [10, 30, 20]) == pytest.approx(1.0)
    assert spearman([0.1, 0.5, 0.3], [30, 10, 20]) == pytest.approx(-1.0)
    assert spearman([1, 2], [2, 1]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_bench_writes_the_time_split_and_the_base_accuracy(runs_dir: Path, tmp_path: Path) -> None:
    from conftest import DIGITS, tiny_overrides

    from autoprune.cli import main
    from autoprune.trial.evaluate import PHASES

    out = tmp_path / "bench.md"
    sets = [a for o in tiny_overrides(runs_dir) for a in ("--set", o)]
    assert (
        main(["bench", str(DIGITS), "--trials", "2", *sets, "--set", "trial.recalibrate_batches=2", "--out", str(out)])
        == 0
    )
    text = out.read_text(encoding="utf-8")
    device = f"- device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}"  # auto picks CUDA
    assert device in text and "completed trials: 2" in text
    assert "base model: validation accuracy 0." in text and "test accuracy 0." in text
    assert "not fine-tune or evaluation" in text and "trials per hour" in text
    for phase in PHASES:
        assert f"| {phase} |" in text


@pytest.mark.parametrize("common", [True, False])
def test_common_batches_make_the_same_policy_score_the_same(runs_dir: Path, common: bool) -> None:
    """Common random numbers: with ``trial.common_batches`` two trials of the same policy fine-tune on the
    same batches and score alike to the last digit; without, their batches (and, here, scores) differ."""
    sets = ["study.baselines=[0.3]", "study.sampler=random", f"trial.common_batches={str(common).lower()}"]
    study = run_study(_config(runs_dir, f"common-{common}", *sets, "study.trials=2"))
    first = study.trials[0]
    study.enqueue_trial(first.params)  # the same policy again, as trial 2 of the resumed study
    again = run_study(_config(runs_dir, f"common-{common}", *sets, "study.trials=3")).trials[2]
    assert again.params == first.params
    assert (again.user_attrs["policy"]["seed"] == first.user_attrs["policy"]["seed"]) is common
    assert (again.user_attrs["accuracy"] == first.user_attrs["accuracy"]) is common

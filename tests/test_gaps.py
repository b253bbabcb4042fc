"""The ``gaps`` sampler: each trial fills the front's gap that promises the most hypervolume, with the
policy of a front neighbour, and hands over to the GP once the front has none."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest
from conftest import tiny_config

from autoprune.budget import Budget
from autoprune.config import config_from_dict
from autoprune.errors import ConfigError
from autoprune.search.gaps import FILLED, Gap, GapSampler, widest_gap
from autoprune.search.opening import make_sampler
from autoprune.search.record import StudyRecord
from autoprune.search.run import run_study
from autoprune.search.switch import SwitchSampler
from autoprune.trial.allocation import LANDING

BASE = {"accuracy": 0.9, "macs": 1000}


def test_the_gap_with_the_largest_gain_is_filled_from_its_upper_neighbour() -> None:
    points = [(0.5, 0.88, 1), (0.25, 0.80, 2), (0.125, 0.70, 3)]
    gap = widest_gap(points, (1.0, 0.9))
    # gains: 0.5..1: 0.5*0.02/4 = 0.0025; 0.25..0.5: 0.25*0.08/4 = 0.005; 0.125..0.25: 0.125*0.1/4 = 0.003125
    assert gap == Gap(0.25, 0.5, pytest.approx(0.005), 1)
    assert gap is not None and gap.target == 0.375
    # trial 4, a fill below the front, splits its gap (0.3..0.5 promises 0.2*0.064/4 = 0.0032); a
    # baseline below the front does not
    assert widest_gap([*points, (0.3, 0.79, 4)], (1.0, 0.9)) == gap
    assert widest_gap([*points, (0.3, 0.79, 4)], (1.0, 0.9), fills=[4]) == Gap(0.3, 0.5, pytest.approx(0.0032), 1)


def test_the_gap_below_the_base_model_repeats_its_lower_neighbour() -> None:
    gap = widest_gap([(0.5, 0.80, 7), (0.25, 0.78, 8)], (1.0, 0.9))
    assert gap is not None and (gap.low, gap.high, gap.neighbour) == (0.5, 1.0, 7)


def test_a_policy_on_the_front_only_by_being_a_hair_cheaper_is_not_repeated() -> None:
    # ResNet-20's baselines at 50 % MACs: uniform (trial 0) is 0.7 % cheaper than the allocation
    # (trial 1) and 1.1 points worse; the gap below them repeats the allocation at 25 % (trial 3)
    points = [(0.4963, 0.8693, 0), (0.4998, 0.8803, 1), (0.2467, 0.8350, 3), (0.1242, 0.7740, 5)]
    gap = widest_gap(points, (1.0, 0.904), pending=[0.75])
    assert gap is not None and (gap.low, gap.high, gap.neighbour) == (0.2467, 0.4963, 3)


def test_a_running_trial_splits_its_gap_so_another_worker_fills_another() -> None:
    points = [(0.5, 0.88, 1), (0.25, 0.80, 2), (0.125, 0.70, 3)]
    gap = widest_gap(points, (1.0, 0.9), pending=[0.375])
    # 0.25..0.375 and 0.375..0.5 now promise 0.00125 each; 0.125..0.25 promises 0.003125
    assert gap is not None and (gap.low, gap.high, gap.neighbour) == (0.125, 0.25, 2)


def test_no_gap_when_neighbours_are_within_half_a_point_or_too_close_to_land_between() -> None:
    assert widest_gap([(0.5, 0.9 - FILLED / 2, 1)], (1.0, 0.9)) is None
    narrow = 0.5 * (1 - LANDING)  # 1 % apart: a trial lands within 1 % of its target
    assert widest_gap([(0.5, 0.85, 1), (narrow, 0.80, 2)], (0.5 + 1e-9, 0.85 + 1e-9)) is None
    assert widest_gap([], (1.0, 0.9)) is None


def test_the_budget_caps_the_front() -> None:
    sampler = GapSampler(optuna.samplers.RandomSampler(), "macs", Budget.from_mapping({"max_macs": "60%"}), dict)
    assert sampler._top(BASE) == (pytest.approx(0.6), 0.9)


def _objective(trial: optuna.Trial) -> tuple[float, float]:
    """A toy allocation space: the MACs land on the target; accuracy falls off below the base."""
    target = trial.suggest_float("target", 0.05, 1.0, log=True)
    mix = trial.suggest_float("mix", 0.0, 1.0)
    trial.suggest_float("offset.a", -0.7, 0.7)
    accuracy = 0.9 - 0.1 * (1 - target) ** 3 - 0.01 * (1 - mix)
    trial.set_user_attr("macs", target * BASE["macs"])
    trial.set_user_attr("accuracy", accuracy)
    return accuracy, target * BASE["macs"]


def _study(*enqueued: dict[str, float], base: dict[str, float] | None = BASE) -> optuna.Study:
    """A study with the gaps sampler over random search, its baselines enqueued and run."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.sampler = GapSampler(optuna.samplers.RandomSampler(seed=0), "macs", Budget(), lambda s: base)
    for params in enqueued:
        study.enqueue_trial(params)
    study.optimize(_objective, n_trials=len(enqueued))
    return study


def test_trials_fill_gaps_with_their_neighbours_params_then_go_to_the_base_sampler(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an earlier test's CLI logging stops autoprune's records short of caplog's handler on the root
    monkeypatch.setattr(logging.getLogger("autoprune"), "propagate", True)
    caplog.set_level(logging.INFO, logger="autoprune")
    study = _study({"target": 0.5, "mix": 1.0, "offset.a": 0.25}, {"target": 0.1, "mix": 0.0, "offset.a": 0.0})
    study.optimize(_objective, n_trials=1)
    third = study.trials[2]
    # gaps: 0.1..0.5 (rise 0.031, gain 0.0031) and 0.5..1.0 (rise 0.0125, gain 0.0016)
    assert third.params == {"target": pytest.approx(0.3), "mix": 1.0, "offset.a": 0.25}
    study.optimize(_objective, n_trials=30)
    fills = [t for t in study.trials[2:] if t.params["offset.a"] == 0.25]
    assert 3 < len(fills) < 30, "the gaps fill, then the base sampler proposes"
    assert study.trials[-1].params["offset.a"] != 0.25
    said = [r.getMessage() for r in caplog.records if "no gap in the front is worth a fill" in r.getMessage()]
    handovers = [int(message.split(":")[0].removeprefix("trial ")) for message in said]
    assert handovers and all(study.trials[n].params["offset.a"] != 0.25 for n in handovers)
    assert len(handovers) < len(study.trials) - 2 - len(fills), "said once per hand-over, not for every trial"
    assert said[0].endswith("RandomSampler proposes the trials from here")


def test_before_the_study_records_its_base_model_the_base_sampler_proposes() -> None:
    study = _study({"target": 0.5, "mix": 1.0, "offset.a": 0.25}, base=None)
    study.optimize(_objective, n_trials=1)
    assert study.trials[1].params["offset.a"] != 0.25


@pytest.mark.parametrize("name", ["gaps", "switch"])
def test_gaps_and_switch_need_the_allocation_granularity(name: str) -> None:
    with pytest.raises(ConfigError, match="study.sampler.*needs space.granularity = 'allocation'"):
        config_from_dict({"study": {"sampler": name}})
    config_from_dict({"study": {"sampler": name}, "space": {"granularity": "allocation"}})


def test_switch_works_around_the_share_baselines_picks() -> None:
    config = config_from_dict(
        {"study": {"sampler": "switch", "baselines": ["50%", 0.8, "12.5%"]}, "space": {"granularity": "allocation"}}
    )
    sampler = make_sampler(config, 0)
    assert isinstance(sampler, SwitchSampler) and isinstance(sampler.base, optuna.samplers.GPSampler)
    assert sampler.bands == (0.5, 0.125)


def test_a_gaps_study_lands_its_fills_between_the_baselines(runs_dir: Path) -> None:
    config = tiny_config(
        runs_dir,
        "gaps",
        "study.trials=4",
        "study.sampler='gaps'",
        "study.baselines=['50%']",
        "study.objectives=['accuracy', 'macs']",
        "space.granularity='allocation'",
        "space.scorers=['l1']",
        "sensitivity.ratios=[0.3, 0.6]",
        "sensitivity.samples=100",
    )
    study = run_study(config)
    base = StudyRecord.from_study(study).base.to_dict()
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and [t.params["mix"] for t in done[:2]] == [0.0, 1.0]
    for fill in done[2:]:
        assert "baseline" not in fill.user_attrs
        assert fill.params["target"] > 0.5, "the gap between the baselines and the base model"
        assert abs(fill.user_attrs["macs"] / base["macs"] - fill.params["target"]) <= 0.02 * fill.params["target"]


def test_a_trial_running_in_another_worker_moves_the_next_fill_to_another_gap() -> None:
    study = _study({"target": 0.5, "mix": 1.0, "offset.a": 0.0}, {"target": 0.1, "mix": 1.0, "offset.a": 0.0})
    planned = study.sampler.plan(study)
    assert planned is not None and planned[0].target == pytest.approx(0.3)
    running = study.ask()
    _objective(running)  # suggests the fill's parameters, then keeps running
    assert running.params["target"] == pytest.approx(0.3)
    planned = study.sampler.plan(study)
    assert planned is not None and planned[0].target == pytest.approx(0.75)


def test_a_fill_that_failed_is_not_tried_again_at_the_same_target() -> None:
    study = _study({"target": 0.5, "mix": 1.0, "offset.a": 0.0}, {"target": 0.1, "mix": 1.0, "offset.a": 0.0})

    def nan_loss(trial: optuna.Trial) -> tuple[float, float]:
        _objective(trial)
        raise RuntimeError("NaN loss")

    study.optimize(nan_loss, n_trials=1, catch=(RuntimeError,))
    assert study.trials[2].state == optuna.trial.TrialState.FAIL
    assert study.trials[2].params["target"] == pytest.approx(0.3)
    study.optimize(_objective, n_trials=1)
    assert study.trials[3].params["target"] == pytest.approx(0.75)


def test_a_fill_below_the_front_is_not_repeated() -> None:
    # the CNN's seed 1: a fill at 42.9 % MACs landed below the point at 36.9 %, and the same gap,
    # still the widest, was filled again with the same policy at the same target
    points = [(0.369, 0.8923, 9), (0.489, 0.8967, 0), (0.1226, 0.8743, 5)]
    first = widest_gap(points, (1.0, 0.9037))
    assert first is not None and first.target == pytest.approx(0.2458)
    again = widest_gap([*points, (first.target, 0.8700, 13)], (1.0, 0.9037), fills=[13])
    assert again is not None and again.target != pytest.approx(first.target)


def test_auto_runs_gaps_for_the_allocation_granularity_and_nsga2_otherwise() -> None:
    allocation = config_from_dict({"space": {"granularity": "allocation"}})
    assert allocation.study.sampler == "auto" and allocation.sampler == "gaps"
    assert isinstance(make_sampler(allocation, 0), GapSampler)
    assert isinstance(make_sampler(config_from_dict({}), 0), optuna.samplers.NSGAIISampler)
    chosen = config_from_dict({"study": {"sampler": "tpe"}, "space": {"granularity": "allocation"}})
    assert isinstance(make_sampler(chosen, 0), optuna.samplers.TPESampler)

"""Promotion across fine-tune budgets: who is promoted (per band of MACs, the best 1/eta), that a
promoted run continues from its parent's weights with its samples added up, that the front holds the
highest rung each policy reached, and that a study killed mid-rung loses no finished run."""

from __future__ import annotations

import copy
import re
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import DIGITS, tiny_config, tiny_overrides
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from autoprune.bench import compare, fidelity
from autoprune.config import PICK_SHARES, FidelitySection, config_from_dict
from autoprune.policy import Policy
from autoprune.results.export import export_trial
from autoprune.search.artifacts import Artifacts, weights_key
from autoprune.search.front import PARENT, RUNG, front_numbers, front_to_come, superseded
from autoprune.search.keeper import WeightKeeper
from autoprune.search.opening import resolve_device
from autoprune.search.paths import study_artifacts
from autoprune.search.prepare import prepare
from autoprune.search.progress import StudyProgress
from autoprune.search.promotion import MAX_ATTEMPTS, Pending, Promotion, band, level_band, promotions
from autoprune.search.run import run_study
from autoprune.trial import objective
from autoprune.trial.evaluate import Continuation, TrialEvaluator, TrialResult
from autoprune.trial.metrics import Measurement

BASE_MACS = 1000.0


def _trial(number: int, accuracy: float, macs: float, rung: int = 0, **attrs: Any) -> FrozenTrial:
    user_attrs = {"accuracy": accuracy, "macs": macs, "kept": {}, **attrs}
    if rung:
        user_attrs[RUNG] = rung
    trial = create_trial(
        state=TrialState.COMPLETE,
        values=[accuracy, macs],
        params={"ratio": 0.5},
        distributions={"ratio": FloatDistribution(0, 1)},
        user_attrs=user_attrs,
    )
    trial.number = number
    return trial


def test_bands_are_octaves_of_the_base_figure() -> None:
    assert [band(s) for s in (1.2, 1.0, 0.51, 0.5, 0.26, 0.25, 0.125, 0.1, 0.0)] == [0, 0, 0, 1, 1, 2, 3, 3, 39]


def test_each_band_promotes_its_most_accurate_third() -> None:
    trials = [
        # (50%, 100%]: five runs, ceil(5/3) = 2 promoted
        _trial(0, 0.90, 900),
        _trial(1, 0.95, 800),
        _trial(2, 0.93, 700),
        _trial(3, 0.80, 600),
        _trial(4, 0.93, 650),  # ties trial 2 on accuracy and is cheaper
        # (12.5%, 25%]: one run, still promoted
        _trial(5, 0.50, 200),
        # (6.25%, 12.5%]: the most accurate broke the budget; a run of another rung does not count
        _trial(6, 0.70, 100, constraints=[0.2]),
        _trial(7, 0.40, 110),
        _trial(8, 0.99, 90, rung=1),
    ]
    assert promotions(trials, 0, 3, "macs", BASE_MACS) == [1, 4, 5, 7]
    assert promotions(trials, 1, 3, "macs", BASE_MACS) == [8]


def test_level_bands_run_from_one_level_down_to_the_next() -> None:
    levels = (0.5, 0.25, 0.125)
    shares = (0.8, 0.5, 0.3, 0.25, 0.2, 0.125, 0.07, 0.0625, 0.01)
    assert [level_band(s, levels) for s in shares] == [None, 0, 0, 1, 1, 2, 2, None, None]


def test_levels_promote_as_many_runs_from_the_bands_a_user_picks_from() -> None:
    trials = [
        # (50%, 100%]: three runs, none promoted with levels (octaves: the best)
        _trial(0, 0.95, 900),
        _trial(1, 0.94, 800),
        _trial(2, 0.93, 600),
        # (25%, 50%]: three runs
        _trial(3, 0.90, 400),
        _trial(4, 0.92, 450),
        _trial(5, 0.85, 300),
        # (12.5%, 25%]: two runs
        _trial(6, 0.80, 200),
        _trial(7, 0.82, 240),
        # (3.125%, 6.25%]: below the lowest band
        _trial(8, 0.50, 50),
    ]
    octaves = promotions(trials, 0, 3, "macs", BASE_MACS)
    assert octaves == [0, 4, 7, 8]
    # four runs too: each band's best (4, 7), then each band's second best (3, 6)
    assert promotions(trials, 0, 3, "macs", BASE_MACS, PICK_SHARES) == [3, 4, 6, 7]
    # the shares of a study's baselines, largest first; the report's levels when it names none
    space = {"granularity": "allocation"}
    assert config_from_dict({"study": {"baselines": ["25%", 0.3, "50%"]}, "space": space}).levels == (0.5, 0.25)
    assert config_from_dict({"study": {"baselines": [0.3]}, "space": space}).levels == PICK_SHARES
    language = {"model": {"name": "hf:folder"}, "data": {"name": "text", "files": ["*.txt"]}}
    language["study"] = {"objectives": ["perplexity", "params"], "baselines": [0.5, "25%"]}
    assert config_from_dict(language).levels == (0.5, 0.25)  # a language study's ratio r lands at the share 1 - r
    assert promotions(trials, 0, 3, "macs", BASE_MACS, (0.5, 0.25)) == [3, 4, 6, 7]
    assert promotions(trials, 0, 3, "macs", BASE_MACS, (0.25,)) == [6, 7]  # the band holds two


def test_a_study_promotes_by_levels_when_it_says_so(tmp_path: Path) -> None:
    trials = [_trial(0, 0.95, 900), _trial(1, 0.90, 400), _trial(2, 0.85, 300)]
    assert _promotion(tmp_path).chosen(trials, 0) == [0, 1]
    assert _promotion(tmp_path, bands="levels").chosen(trials, 0) == [1, 2]


def _promotion(folder: Path, rungs: int = 3, trials: int = 3, bands: str = "octaves") -> Promotion:
    return Promotion(
        FidelitySection(rungs=rungs, eta=3, bands=bands),
        ["accuracy", "macs"],
        {"macs": BASE_MACS},
        Artifacts(str(folder)),
        folder,
        trials,
        PICK_SHARES,
    )


def test_weights_are_needed_until_a_rung_is_decided_and_its_promoted_runs_completed(tmp_path: Path) -> None:
    rung0 = [_trial(0, 0.90, 900), _trial(1, 0.95, 900), _trial(2, 0.80, 900)]
    assert _promotion(tmp_path, trials=4).weights_needed(rung0) == {0, 1, 2}  # rung 0 still runs
    assert _promotion(tmp_path).weights_needed(rung0) == {1}  # decided: the best third of the band
    waiting = create_trial(state=TrialState.WAITING, user_attrs={PARENT: 1, RUNG: 1})
    waiting.number = 3
    assert _promotion(tmp_path).weights_needed([*rung0, waiting]) == {1, 3}  # 3 may go on to rung 2
    done = _trial(3, 0.97, 900, rung=1, **{PARENT: 1})
    assert _promotion(tmp_path).weights_needed([*rung0, done]) == {3}
    assert _promotion(tmp_path, rungs=2).weights_needed([*rung0, done]) == set()
    assert superseded([*rung0, done]) == {1}


def _stored(study: optuna.Study, trial: FrozenTrial, folder: Path) -> None:
    """Add ``trial`` to ``study`` as a run whose weights are kept in ``folder``."""
    trial.user_attrs["policy"] = {"finetune_steps": 10}
    study.add_trial(trial)
    (folder / weights_key(trial.number)).write_bytes(b"weights")


def test_a_lost_promotion_is_made_up_until_it_failed_too_often(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for number, accuracy in enumerate((0.90, 0.95, 0.80)):
        _stored(study, _trial(number, accuracy, 900), tmp_path)
    promotion = _promotion(tmp_path, rungs=2)

    def children() -> list[tuple[int, str]]:
        return [(t.user_attrs[PARENT], t.state.name) for t in study.trials if PARENT in t.user_attrs]

    assert promotion.advance(study, live=set()) == Pending(waiting=1)
    assert children() == [(1, "WAITING")]
    assert promotion.advance(study, live=set()) == Pending(waiting=1)  # enqueued once, however often asked
    assert len(children()) == 1

    def study_with(*lost: FrozenTrial) -> optuna.Study:
        nonlocal study
        study = optuna.create_study(directions=["maximize", "minimize"])
        for number, accuracy in enumerate((0.90, 0.95, 0.80)):
            _stored(study, _trial(number, accuracy, 900), tmp_path)
        for trial in lost:
            study.add_trial(trial)
        return study

    # a run lost for good (interrupted, or its retries used up) is made up...
    failed = create_trial(state=TrialState.FAIL, user_attrs={PARENT: 1, RUNG: 1})
    assert promotion.advance(study_with(failed), live=set()) == Pending(waiting=1)
    assert children() == [(1, "FAIL"), (1, "WAITING")]
    # ...until it failed MAX_ATTEMPTS times
    assert promotion.advance(study_with(*[failed] * MAX_ATTEMPTS), live=set()) == Pending()
    # a parent whose weights are gone is skipped
    fresh = study_with()
    (tmp_path / weights_key(1)).unlink()
    assert promotion.advance(fresh, live=set()) == Pending()
    assert children() == []


def test_a_run_that_ends_below_its_parent_brings_back_what_the_parent_dominated(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for trial in (_trial(0, 0.90, 100), _trial(1, 0.85, 110)):  # P dominates Q
        _stored(study, trial, tmp_path)
    running = create_trial(state=TrialState.WAITING, user_attrs={PARENT: 0, RUNG: 1})
    study.add_trial(running)
    assert front_numbers(study) == [0]
    assert front_to_come(study) == [1]  # Q may return: its weights stay
    study.add_trial(_trial(3, 0.84, 100, rung=1, **{PARENT: 0}))  # the child ends below P
    assert front_numbers(study) == [1, 3]


# A fake evaluation whose accuracy is a known function of the policy and of its fine-tune budget.
ACCURACY = {0.1: 0.80, 0.2: 0.85, 0.3: 0.70, 0.55: 0.60, 0.6: 0.65, 0.8: 0.30}


def _fake_evaluation(evaluator: TrialEvaluator, policy: Policy, start: Continuation | None = None) -> TrialResult:
    ratio = round(max(policy.ratios.values()), 2)
    samples = (start.samples if start else 0) + (start.steps if start else policy.finetune_steps)
    macs = int(evaluator.base_measurement.macs * (1 - ratio) ** 2)
    measurement = Measurement(ACCURACY[ratio] + 1e-4 * samples, macs, 100, 1000)
    return TrialResult(policy, measurement, {}, [], samples, model=copy.deepcopy(evaluator.base))


def _rungs(study: optuna.Study) -> dict[int, list[tuple[float, int | None]]]:
    """Per rung, the (ratio, parent) of every completed run."""
    out: dict[int, list[tuple[float, int | None]]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        ratio = round(max(t.user_attrs["policy"]["ratios"].values()), 2)
        out.setdefault(t.user_attrs.get(RUNG, 0), []).append((ratio, t.user_attrs.get(PARENT)))
    return {rung: sorted(runs, key=lambda r: r[0]) for rung, runs in out.items()}


def test_the_promoted_set_of_every_rung_is_the_expected_one(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objective, "evaluate_retrying_oom", _fake_evaluation)
    config = tiny_config(
        runs_dir,
        "promoted",
        f"study.baselines={list(ACCURACY)}",
        "study.trials=6",
        "study.objectives=['accuracy','macs']",
        "fidelity.rungs=3",
        "fidelity.eta=2",
    )
    study = run_study(config)
    by_rung = _rungs(study)
    # MACs shares (1 - r)²: 0.81, 0.64 | 0.49 | 0.2025, 0.16 | 0.04; the better half (at least one) of each band
    assert [ratio for ratio, _ in by_rung[0]] == list(ACCURACY)
    assert [ratio for ratio, _ in by_rung[1]] == [0.2, 0.3, 0.6, 0.8]
    assert [ratio for ratio, _ in by_rung[2]] == [0.2, 0.3, 0.6, 0.8]  # every band now holds one run
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for t in trials.values():
        if PARENT in t.user_attrs:
            parent = trials[t.user_attrs[PARENT]]
            assert t.params == parent.params and t.user_attrs[RUNG] == parent.user_attrs.get(RUNG, 0) + 1
            first = t.user_attrs["policy"]["finetune_steps"]
            assert t.user_attrs["finetune_steps"] == first * 2 ** t.user_attrs[RUNG]
            assert t.user_attrs["finetune_cost"] == t.user_attrs["finetune_steps"]  # the fake counts steps
            assert t.user_attrs["baseline"] == parent.user_attrs["baseline"]
    top = {t.number for t in trials.values() if t.user_attrs.get(RUNG) == 2}
    never_promoted = {t.number for t in trials.values() if t.params["ratio"] in (0.1, 0.55)}
    assert set(front_numbers(study)) <= top | never_promoted
    assert study_artifacts(study).weight_numbers() == set(front_numbers(study))
    # what compare counts: each policy at its top rung, and the samples every run added
    assert {t.number for t in compare._done(study)} == top | never_promoted
    assert compare.finetune_samples(study) == 6 * 6 + 4 * (12 - 6) + 4 * (24 - 12)


def test_a_study_killed_mid_rung_resumes_without_losing_a_finished_run(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objective, "evaluate_retrying_oom", _fake_evaluation)
    config = tiny_config(
        runs_dir,
        "killed",
        f"study.baselines={list(ACCURACY)}",
        "study.trials=6",
        "study.objectives=['accuracy','macs']",
        "fidelity.rungs=3",
        "fidelity.eta=2",
    )

    def kill_after_the_first_promoted_run(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get(RUNG) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(config, callbacks=[kill_after_the_first_promoted_run])
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{runs_dir / 'killed'}.db")
    before = {t.number: t.user_attrs for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE}
    assert Counter(a.get(RUNG, 0) for a in before.values()) == Counter({0: 6, 1: 1})

    study = run_study(config)
    after = {t.number: t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE}
    assert all(after[n].user_attrs == attrs for n, attrs in before.items())
    pairs = Counter((t.user_attrs[PARENT], t.user_attrs[RUNG]) for t in after.values() if PARENT in t.user_attrs)
    assert max(pairs.values()) == 1 and len(pairs) == 8
    assert [ratio for ratio, _ in _rungs(study)[1]] == [0.2, 0.3, 0.6, 0.8]


def test_a_promoted_run_starts_from_its_parents_weights(runs_dir: Path) -> None:
    config = tiny_config(runs_dir, "continued", "study.trials=3", "study.baselines=[0.3]", "fidelity.rungs=2")
    study = run_study(config)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    promoted = [t for t in trials.values() if PARENT in t.user_attrs and t.state == TrialState.COMPLETE]
    assert promoted
    prepared = prepare(config, resolve_device("cpu"))
    evaluator = prepared.evaluator
    keeper = WeightKeeper(study_artifacts(study), evaluator.traced)
    batch = config.data.batch_size
    for run in promoted:
        parent = trials[run.user_attrs[PARENT]]
        steps = run.user_attrs["finetune_steps"] - parent.user_attrs["policy"]["finetune_steps"]
        assert run.user_attrs["finetune_cost"] == parent.user_attrs["finetune_cost"] + steps * batch
        assert run.user_attrs["kept"] == parent.user_attrs["kept"]
    # the front's runs keep their weights; one of them continued by zero steps is its own accuracy
    run = trials[front_numbers(study)[0]]
    attrs = run.user_attrs
    policy = Policy.from_dict(attrs["policy"])
    start = Continuation(keeper.model_of(run), 0, 0, attrs["finetune_cost"], attrs["kept"], attrs["removed"])
    assert evaluator.continued(policy, start).measurement.accuracy == attrs["accuracy"]
    # a promoted run on the front exports like any trial: its rebuilt model is its recorded one
    number = next(n for n in front_numbers(study) if PARENT in trials[n].user_attrs)
    result = export_trial(study, number, runs_dir / "export")
    assert result.measurement.accuracy == trials[number].user_attrs["accuracy"]


def test_a_single_rung_is_the_search_of_old(runs_dir: Path) -> None:
    study = run_study(tiny_config(runs_dir, "flat", "study.trials=3"))
    assert not any(PARENT in t.user_attrs for t in study.get_trials(deepcopy=False))
    assert not list((runs_dir / "flat").rglob("promotion.lock"))


def test_the_fidelity_benchmark_follows_each_policy_through_every_rung(tmp_path: Path) -> None:
    out = tmp_path / "fidelity.md"
    overrides = [f"--set={o}" for o in tiny_overrides(tmp_path / "runs")]
    assert (
        fidelity.bench([str(DIGITS), "--trials", "4", "--rungs", "2", "--eta", "2", "--out", str(out), *overrides]) == 0
    )
    text = out.read_text()
    assert "| MACs band | runs | ρ rung 0 vs 1 | promoted from rung 0 hold the best |" in text
    assert re.search(r"\| all \| 4 \| ([+-]\d\.\d\d|–) \|", text)
    assert text.count("→") >= 4


def test_progress_counts_promoted_runs_as_they_are_enqueued() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for number in range(3):  # one surplus trial beyond the study's two
        study.add_trial(_trial(number, 0.9, 900))
    progress = StudyProgress(study, 2, BASE_MACS, budget=False, bar=None)
    assert progress.counts(study.trials) == (2, 2)
    study.add_trial(_trial(3, 0.95, 900, rung=1, **{PARENT: 1}))
    study.add_trial(create_trial(state=TrialState.WAITING, user_attrs={PARENT: 0, RUNG: 1}))
    assert progress.counts(study.trials) == (3, 4)

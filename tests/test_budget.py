"""Budgets: parsing, violations, pick, and constraints at search time."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import tiny_config

from autoprune.budget import Budget, NothingFits, parse_limit, pick
from autoprune.cli import main
from autoprune.config import config_from_dict
from autoprune.errors import ConfigError
from autoprune.results.rows import front_rows
from autoprune.search.record import StudyRecord
from autoprune.search.run import run_study

BASE = {"accuracy": 0.98, "macs": 1_000_000, "params": 100_000, "size": 400_000}
ROWS = [
    {"trial": 0, "accuracy": 0.99, "macs": 600_000, "params": 60_000, "size": 250_000},
    {"trial": 1, "accuracy": 0.97, "macs": 300_000, "params": 30_000, "size": 120_000},
    {"trial": 2, "accuracy": 0.90, "macs": 100_000, "params": 10_000, "size": 50_000},
]


@pytest.mark.parametrize(
    ("key", "raw", "value", "relative"),
    [
        ("max_size", "2MB", 2_000_000, False),
        ("max_size", "500kB", 500_000, False),
        ("max_size", "1KiB", 1024, False),
        ("max_size", 1234, 1234, False),
        ("max_macs", "1.5M", 1_500_000, False),
        ("max_params", "60k", 60_000, False),
        ("max_macs", "50%", 0.5, True),
        ("min_accuracy", 0.95, 0.95, False),
        ("min_accuracy", "99%", 0.99, True),
    ],
)
def test_parse_limit(key: str, raw: object, value: float, relative: bool) -> None:
    limit = parse_limit(key, raw)
    assert limit.value == pytest.approx(value)
    assert limit.relative is relative


@pytest.mark.parametrize(
    ("key", "raw", "words"),
    [
        ("max_size", "3 parsecs", "unknown unit"),
        ("max_size", -1, ">= 0"),
        ("min_accuracy", 1.5, "[0, 1]"),
        ("max_latency_ms", "fast", "must be a number"),
        ("max_macs", True, "must be a number"),
        ("max_speed", 1, "unknown budget key"),
    ],
)
def test_parse_limit_rejects(key: str, raw: object, words: str) -> None:
    with pytest.raises(ConfigError, match="budget|unknown") as info:
        parse_limit(key, raw)
    assert words in str(info.value)


def test_budget_section_in_study_file() -> None:
    config = config_from_dict({"budget": {"max_macs": "50%", "max_size": "2MB"}})
    assert config.budget.max_macs == "50%"
    assert config_from_dict({"budget": {"max_latency_ms": 3}}).budget.max_latency_ms == 3


def test_violations_are_relative_and_signed() -> None:
    resolved = Budget.from_mapping({"max_macs": "50%", "min_accuracy": 0.98}).resolve(BASE)
    assert resolved.limits == {"max_macs": 500_000, "min_accuracy": 0.98}
    v = resolved.violations(ROWS[0])
    assert v["max_macs"] == pytest.approx(0.2)
    assert v["min_accuracy"] < 0
    assert not resolved.fits(ROWS[0])


@pytest.mark.parametrize("prefer", ["accuracy", "smallest", "fastest"])
@pytest.mark.parametrize("limits", [{}, {"max_macs": "40%"}, {"min_accuracy": 0.95}, {"max_size": "100kB"}])
def test_pick_stays_within_budget(prefer: str, limits: dict[str, object]) -> None:
    resolved = Budget.from_mapping(limits).resolve(BASE)
    choice = pick(ROWS, resolved, prefer)
    assert resolved.fits(choice.figures)
    fitting = [r for r in ROWS if resolved.fits(r)]
    key = {"accuracy": lambda r: -r["accuracy"], "smallest": lambda r: r["size"], "fastest": lambda r: r["macs"]}
    assert choice.trial == min(fitting, key=key[prefer])["trial"]
    assert f"trial {choice.trial}" in choice.reason


def test_nothing_fits_names_the_limit_and_the_nearest_trial() -> None:
    resolved = Budget.from_mapping({"max_macs": "5%"}).resolve(BASE)
    with pytest.raises(NothingFits) as info:
        pick(ROWS, resolved)
    message = str(info.value)
    assert "max_macs <= 50.00k (5% of base)" in message
    assert "nearest: trial 2" in message and "100.0% beyond" in message


def test_a_bare_number_far_below_every_trial_is_read_as_the_count_it_is_and_the_message_says_so() -> None:
    with pytest.raises(NothingFits, match=r"max_macs <= 40 \(40 is a count; 40% is a share of the base model's\)"):
        pick(ROWS, Budget.from_mapping({"max_macs": "40"}).resolve(BASE))
    with pytest.raises(NothingFits, match=r"\(0.5 is a count; 50% is a share"):
        pick(ROWS, Budget.from_mapping({"max_macs": "0.5"}).resolve(BASE))
    for raw in ("5%", "50000"):  # a share, and a count of the figure's own size: no hint
        with pytest.raises(NothingFits) as info:
            pick(ROWS, Budget.from_mapping({"max_macs": raw}).resolve(BASE))
        assert "is a count" not in str(info.value), raw


def test_nothing_fits_jointly() -> None:
    resolved = Budget.from_mapping({"max_macs": "15%", "min_accuracy": 0.95}).resolve(BASE)
    with pytest.raises(NothingFits, match="no trial meets all of them"):
        pick(ROWS, resolved)


# --------------------------------------------------------------------------------- a search with a budget


@pytest.fixture(scope="module")
def budget_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, Path]:
    runs = tmp_path_factory.mktemp("budget-runs")
    config = tiny_config(runs, "tiny-budget", "study.trials=6", "study.baselines=[0.25, 0.75]", "budget.max_macs='30%'")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return run_study(config), runs


def test_search_budget_becomes_constraints(budget_study: tuple[optuna.Study, Path]) -> None:
    study, _runs = budget_study
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done
    base_macs = StudyRecord.from_study(study).base.macs
    for trial in done:
        expected = trial.user_attrs["macs"] / (0.3 * base_macs) - 1
        assert trial.user_attrs["constraints"] == pytest.approx([expected])
        assert trial.constraints["max_macs"] == pytest.approx(expected)
    # the 0.25 baseline keeps ~56% of the MACs: infeasible, kept and marked
    infeasible = [t for t in done if t.user_attrs["constraints"][0] > 0]
    assert infeasible
    assert all(t.number not in {b.number for b in study.best_trials} for t in infeasible)


def test_pick_cli_json_within_budget(
    budget_study: tuple[optuna.Study, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    study, runs = budget_study
    storage = f"sqlite:///{runs / 'tiny-budget'}.db"
    for prefer in ("accuracy", "smallest", "fastest"):
        code = main(["pick", "--storage", storage, "--study", "tiny-budget", "--prefer", prefer, "--json"])
        assert code == 0
        payload = json.loads(capsys.readouterr().out)
        base = payload["base"]
        assert payload["figures"]["macs"] <= 0.3 * base["macs"]
        assert payload["trial"] in {t.number for t in study.best_trials}
        assert set(payload["policy"]) >= {"ratios", "scorer", "finetune_steps"}


def test_pick_cli_impossible_budget_exits_nonzero(
    budget_study: tuple[optuna.Study, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _study, runs = budget_study
    storage = f"sqlite:///{runs / 'tiny-budget'}.db"
    code = main(["pick", "--storage", storage, "--study", "tiny-budget", "--max-macs", "10"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no front trial met max_macs <= 10" in err and "nearest: trial" in err


def test_pick_rows_never_outside_budget(budget_study: tuple[optuna.Study, Path]) -> None:
    study, _runs = budget_study
    base = StudyRecord.from_study(study).base.to_dict()
    rows = [row.to_dict() for row in front_rows(study)]
    for limits in ({"max_macs": "20%"}, {"max_size": "25%"}, {"min_accuracy": "90%"}):
        resolved = Budget.from_mapping(limits).resolve(base)
        try:
            choice = pick(rows, resolved)
        except NothingFits:
            assert not any(resolved.fits(r) for r in rows)
        else:
            assert resolved.fits(choice.figures)


def test_a_latency_limit_reads_in_milliseconds() -> None:
    from autoprune.budget import format_figure

    assert format_figure("latency_ms", 0.05) == "0.05 ms"
    resolved = Budget.from_mapping({"max_latency_ms": 0.05}).resolve({})
    assert resolved.describe("max_latency_ms") == "max_latency_ms <= 0.05 ms"

"""The Pareto report: files, front, page data, hypervolume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import tiny_config

from autoprune.cli import main
from autoprune.results.pareto import front_2d, hypervolume_2d, hypervolume_history
from autoprune.results.report import FILES, write_report
from autoprune.search.run import run_study

REF = (1.0, 0.0)


def test_hypervolume_by_hand() -> None:
    assert hypervolume_2d([], REF) == 0.0
    assert hypervolume_2d([(0.5, -0.8)], REF) == pytest.approx(0.5 * 0.8)
    # two rectangles 0.8x0.5 and 0.5x0.9 overlapping in 0.5x0.5
    assert hypervolume_2d([(0.2, -0.5), (0.5, -0.9)], REF) == pytest.approx(0.4 + 0.45 - 0.25)


def test_hypervolume_ignores_dominated_duplicate_and_outside_points() -> None:
    front = [(0.2, -0.5), (0.5, -0.9)]
    expected = hypervolume_2d(front, REF)
    assert hypervolume_2d([*front, (0.6, -0.4), (0.5, -0.9), (0.2, -0.5)], REF) == pytest.approx(expected)
    assert hypervolume_2d([*front, (1.2, -0.99), (0.1, 0.3)], REF) == pytest.approx(expected)


def test_hypervolume_history_never_decreases() -> None:
    rows = [(0, 0.9, 500.0), (1, 0.8, 800.0), (2, 0.95, 600.0), (3, 0.5, 100.0), (4, 0.95, 600.0)]
    history = hypervolume_history(rows, base_macs=1000.0)
    values = [v for _n, v in history]
    assert [n for n, _v in history] == [0, 1, 2, 3, 4]
    assert values == sorted(values)
    assert values[0] == pytest.approx(0.5 * 0.9)
    assert values[1] == values[0]  # dominated
    assert values[-1] == values[-2]  # duplicate


def test_front_2d() -> None:
    assert front_2d([3.0, 1.0, 2.0, 2.0], [0.9, 0.5, 0.4, 0.7]) == [1, 3, 0]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, str]:
    runs = tmp_path_factory.mktemp("report-runs")
    config = tiny_config(runs, "tiny-report", "study.trials=5", "study.baselines=[0.25, 0.5]")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = run_study(config)
    return study, f"sqlite:///{runs / 'tiny-report'}.db"


@pytest.fixture(scope="module")
def report_dir(stored: tuple[optuna.Study, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _study, storage = stored
    out = tmp_path_factory.mktemp("report") / "out"
    code = main(["report", "--storage", storage, "--study", "tiny-report", "--out", str(out), "--max-macs", "40%"])
    assert code == 0
    return out


def test_report_writes_every_file(report_dir: Path) -> None:
    for name in FILES:
        assert (report_dir / name).is_file(), name
        assert (report_dir / name).stat().st_size > 0, name
    assert (report_dir / "accuracy_vs_macs.png").read_bytes()[:4] == b"\x89PNG"


def test_front_csv_is_optunas_front(stored: tuple[optuna.Study, str], report_dir: Path) -> None:
    study, _storage = stored
    front = pd.read_csv(report_dir / "front.csv")
    assert sorted(front["trial"]) == sorted(t.number for t in study.best_trials)
    assert {"accuracy", "accuracy_pct", "macs_pct", "size_pct", "params_pct", "test_accuracy"} <= set(front.columns)
    # front members keep their weights, so the test split was measured
    assert front["test_accuracy"].notna().all()
    trials = pd.read_csv(report_dir / "trials.csv")
    assert len(trials) == len(study.trials)


def test_page_is_self_contained_and_holds_chart_data(stored: tuple[optuna.Study, str], report_dir: Path) -> None:
    study, _storage = stored
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", page), "the page must not load scripts from elsewhere"
    assert "Plotly" in page and "chart-macs" in page and "chart-size" in page and "chart-hv" in page
    match = re.search(r'<script type="application/json" id="autoprune-data">(.*?)</script>', page, re.S)
    assert match
    data = json.loads(match.group(1))
    done = [t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(data["trials"]) == done
    assert sorted(data["front"]) == sorted(t.number for t in study.best_trials)
    assert sorted(data["baselines"]) == [t.number for t in study.trials if "baseline" in t.user_attrs]
    kinds = {t["kind"]: t for t in data["accuracy_vs_macs"]}
    assert sorted(kinds["front"]["trial"]) == sorted(data["front"])
    assert sorted(kinds["baseline"]["trial"]) == sorted(data["baselines"])
    # the 0.25 baseline keeps ~56% of MACs: outside the 40% budget, and marked
    assert data["infeasible"] and set(kinds["infeasible"]["trial"]) == set(data["infeasible"])
    assert "test split" in page and "Regenerate" in page


def test_summary_md_has_front_command_and_the_code_that_made_it(
    stored: tuple[optuna.Study, str], report_dir: Path
) -> None:
    study, _storage = stored
    text = (report_dir / "summary.md").read_text(encoding="utf-8")
    assert "autoprune report --storage" in text
    assert re.search(r"^Report made by autoprune \S+ at commit \S+\.$", text, re.MULTILINE), text
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \| \d\.\d{4} \|", line)]  # the front table
    assert len(rows) == len(study.best_trials)


def test_write_report_without_test_split(stored: tuple[optuna.Study, str], tmp_path: Path) -> None:
    study, storage = stored
    report = write_report(study, tmp_path / "r", storage=storage, test_accuracy=False)
    assert report.front == sorted(t.number for t in study.best_trials)
    assert pd.read_csv(tmp_path / "r" / "front.csv")["test_accuracy"].isna().all()


def test_the_regenerate_line_masks_a_password_given_from_python(
    stored: tuple[optuna.Study, str], tmp_path: Path
) -> None:
    study, storage = stored
    command = "autoprune report --storage 'postgresql://u@h/db?password=s3cret' --study digits"
    write_report(study, tmp_path / "r", storage=storage, test_accuracy=False, command=command)
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "s3cret" not in summary + (tmp_path / "r" / "index.html").read_text()
    assert "?password=***" in summary


def test_front_numbers_equal_best_trials(stored: tuple[optuna.Study, str]) -> None:
    from autoprune.search.front import front_numbers

    study, _storage = stored
    assert front_numbers(study) == sorted(t.number for t in study.best_trials)


def test_may_join_front_is_false_only_for_infeasible_or_dominated_values() -> None:
    from autoprune.search.front import may_join_front

    study = optuna.create_study(directions=["maximize", "minimize"])
    for values, constraints in (([0.9, 100.0], [0.0]), ([0.99, 50.0], [0.5])):  # the second is infeasible
        study.add_trial(optuna.trial.create_trial(values=values, user_attrs={"constraints": constraints}))
    assert may_join_front(study, [0.95, 120.0], [0.0])  # more accurate, larger: not dominated
    assert may_join_front(study, [0.9, 100.0], [0.0])  # equal values: both on the front
    assert not may_join_front(study, [0.8, 150.0], [0.0])  # dominated by the feasible trial
    assert may_join_front(study, [0.91, 90.0], [-0.1])  # dominated only by the infeasible one
    assert not may_join_front(study, [1.0, 1.0], [0.2])  # infeasible: never on a constrained front


def test_the_report_times_the_front_on_the_study_runtime_and_charts_speedup_against_macs(
    stored: tuple[optuna.Study, str], report_dir: Path
) -> None:
    study, _storage = stored
    front = pd.read_csv(report_dir / "front.csv")
    assert front["latency_measured_ms"].gt(0).all() and front["latency_spread"].ge(0).all()
    # every speedup is the same base latency over the member's: their product is one number
    base_ms = front["speedup"] * front["latency_measured_ms"]
    assert base_ms.max() == pytest.approx(base_ms.min(), rel=1e-9)
    assert (report_dir / "speedup_vs_macs.png").read_bytes()[:4] == b"\x89PNG"
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    assert "<h2>Speed on torch</h2>" in page and "chart-speed" in page
    summary = (report_dir / "summary.md").read_text(encoding="utf-8")
    assert "Speed on torch (CPU, " in summary
    assert len([line for line in summary.splitlines() if line.endswith("× |")]) == len(front)


def test_no_speed_times_nothing(stored: tuple[optuna.Study, str], tmp_path: Path) -> None:
    study, storage = stored
    write_report(study, tmp_path / "r", storage=storage, test_accuracy=False, speed=False)
    assert pd.read_csv(tmp_path / "r" / "front.csv")["speedup"].isna().all()
    assert not (tmp_path / "r" / "speedup_vs_macs.png").exists()

"""``python -m autoprune.bench.anytime``: grids run apart at each count, the search's prefixes of one run."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
import torch

from autoprune.bench import anytime, compare
from autoprune.config import StudyConfig, apply_overrides, config_from_dict, load_config
from autoprune.data import load_data
from autoprune.errors import AutopruneError, ConfigError
from tests.conftest import DIGITS, tiny_overrides


def test_anytime_on_digits(tmp_path: Path) -> None:
    runs, out = tmp_path / "anytime-runs", tmp_path / "report"
    sets = [a for o in tiny_overrides(tmp_path / "runs") for a in ("--set", o)]
    argv = [str(DIGITS), *sets, "--trials", "4", "2", "--methods", "uniform", "autoprune"]
    assert anytime.main([*argv, "--runs", str(runs), "--out", str(out)]) == 0
    with (out / "anytime.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["trials"]) for r in rows] == [
        ("uniform", "2"),
        ("uniform", "4"),
        ("autoprune", "2"),
        ("autoprune", "4"),
    ]
    # the grid ran apart at each count, the search once, at the largest
    assert sorted(p.name for p in runs.iterdir()) == ["2-trials", "4-trials"]
    assert not list((runs / "2-trials").glob("*autoprune*.db"))

    def study(count: int, method: str) -> optuna.Study:
        name = f"digits-{method}-s0"
        return optuna.load_study(study_name=name, storage=f"sqlite:///{runs}/{count}-trials/{name}.db")

    data = load_data(load_config(DIGITS, tiny_overrides(tmp_path / "runs")).data)
    searched = study(4, "autoprune")
    whole = compare.evaluate_run(searched, "autoprune", 0, data)
    by = {(r["method"], r["trials"]): r for r in rows}
    assert float(by["autoprune", "4"]["hypervolume"]) == pytest.approx(whole.hypervolume, abs=1e-6)
    uniform2 = compare.evaluate_run(study(2, "uniform"), "uniform", 0, data)
    assert float(by["uniform", "2"]["hypervolume"]) == pytest.approx(uniform2.hypervolume, abs=1e-6)
    # the first two trials of the search: their own hypervolume, no larger than the whole run's
    first = anytime.first_trials(searched, 2)
    assert [t.number for t in first] == [0, 1]
    assert float(by["autoprune", "2"]["hypervolume"]) <= whole.hypervolume + 1e-9
    for row in rows:  # a pick's validation accuracy is a trial's; its test accuracy is there or not at all
        for level in compare.LEVELS:
            assert row[f"val_acc_{level:g}"] != "" or row[f"test_acc_{level:g}"] == ""
    text = (out / "anytime.md").read_text(encoding="utf-8")
    assert "| autoprune | 2 |" in text and "commit" in text and (out / "anytime.png").stat().st_size > 0
    # a rerun reuses every stored run
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("*.db")}
    assert anytime.main([*argv, "--runs", str(runs), "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*.db")} == before


def test_anytime_refuses_what_it_cannot_order(tmp_path: Path) -> None:
    config = load_config(DIGITS, ["fidelity.rungs=2"])
    kwargs = dict(seeds=1, methods=["uniform"], runs_dir=tmp_path, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="fidelity.rungs"):
        anytime.run_anytime(config, counts=[2], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--methods tpe"):
        anytime.run_anytime(load_config(DIGITS), counts=[2], **{**kwargs, "methods": ["tpe"]})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least 1"):
        anytime.run_anytime(load_config(DIGITS), counts=[0], **kwargs)  # type: ignore[arg-type]


def test_a_run_stopped_short_reports_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = anytime.run_study

    def stopped_after_one(config: StudyConfig, device: torch.device) -> optuna.Study:  # as a signal would
        return real(config_from_dict(apply_overrides(config.to_dict(), ["study.trials=1"])), device=device)

    monkeypatch.setattr(anytime, "run_study", stopped_after_one)
    config = load_config(DIGITS, tiny_overrides(tmp_path / "runs"))
    with pytest.raises(AutopruneError, match=r"digits-uniform-s0 \(1 of 2 trials\)"):
        anytime.run_anytime(
            config, counts=[2], seeds=1, methods=["uniform"], runs_dir=tmp_path / "a", device=torch.device("cpu")
        )

"""End to end: ``autoprune search`` on the embedded digits study, resume, rebuild, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from conftest import DIGITS, REPO, tiny_overrides

from autoprune.cli import main
from autoprune.search.front import front
from autoprune.search.rebuild import rebuild_trial
from autoprune.search.record import StudyRecord
from autoprune.trial.evaluate import PHASES
from autoprune.trial.metrics import count_macs_params


def _search(runs_dir: Path, *extra: str) -> int:
    args = ["search", str(DIGITS)]
    for item in tiny_overrides(runs_dir):
        args += ["--set", item]
    return main([*args, *extra])


def _load(runs_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="digits", storage=f"sqlite:///{runs_dir / 'digits.db'}")


def _dominates(a: list[float], b: list[float], directions: list[optuna.study.StudyDirection]) -> bool:
    maximize = optuna.study.StudyDirection.MAXIMIZE
    better = [x >= y if d == maximize else x <= y for x, y, d in zip(a, b, directions, strict=True)]
    return all(better) and a != b


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[optuna.trial.FrozenTrial], str]:
    runs_dir = tmp_path_factory.mktemp("search") / "runs"
    assert _search(runs_dir, "--trials", "6") == 0
    first = _load(runs_dir).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return runs_dir, first, ""


def test_search_runs_end_to_end_with_baselines_and_a_non_dominated_front(
    searched: tuple[Path, list[optuna.trial.FrozenTrial], str],
) -> None:
    runs_dir, first, _ = searched
    assert len(first) == 6
    study = _load(runs_dir)
    baselines = sorted(t.user_attrs["baseline"] for t in first if "baseline" in t.user_attrs)
    assert baselines == [0.25, 0.5, 0.75]
    for trial in first:
        if "baseline" in trial.user_attrs:
            ratios = set(trial.user_attrs["policy"]["ratios"].values())
            assert ratios == {trial.user_attrs["baseline"]}
            assert trial.user_attrs["policy"]["scorer"] == "l1"
    assert study.metric_names == ["accuracy", "macs", "size"]  # the default: what users pick by
    members = front(study)  # autoprune's front, which the printed table, pick and the weights follow
    assert members
    for member in members:
        assert not any(_dominates(other.values, member.values, study.directions) for other in first)
    for other in first:  # and every trial left off it is dominated by a member
        if other.number not in {m.number for m in members}:
            assert any(_dominates(m.values, other.values, study.directions) for m in members), other.number
    base = StudyRecord.from_study(study).base
    for trial in first:
        assert 0.0 <= trial.user_attrs["accuracy"] <= 1.0
        assert trial.user_attrs["macs"] <= base.macs
        assert set(trial.user_attrs["seconds"]) == set(PHASES)


def test_rerun_with_more_trials_resumes_the_same_study(
    searched: tuple[Path, list[optuna.trial.FrozenTrial], str], capsys: pytest.CaptureFixture[str]
) -> None:
    runs_dir, first, _ = searched
    assert _search(runs_dir, "--trials", "8") == 0
    out = capsys.readouterr().out
    assert "Pareto front of study 'digits'" in out
    completed = _load(runs_dir).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(completed) == 8
    assert [t.values for t in completed[:6]] == [t.values for t in first]
    assert "reusing" not in out


def test_rebuilt_trials_have_the_recorded_macs_and_params(
    searched: tuple[Path, list[optuna.trial.FrozenTrial], str],
) -> None:
    runs_dir, first, _ = searched
    study = _load(runs_dir)
    shape = list(StudyRecord.from_study(study).data_shape.example_input)
    for trial in first[:4]:
        model = rebuild_trial(study, trial.number)
        macs, params = count_macs_params(model, torch.zeros(shape))
        assert (macs, params) == (trial.user_attrs["macs"], trial.user_attrs["params"])
        assert model(torch.zeros([3, *shape[1:]])).shape == (3, 10)


def _error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("autoprune: error:")]
    assert len(lines) == 1, captured.err
    return lines[0]


def test_missing_study_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "study file not found" in _error(capsys, main(["search", str(tmp_path / "nope.toml")]))


def test_malformed_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[study]\nname = \n")
    assert "malformed TOML" in _error(capsys, main(["search", str(bad)]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("study.colour=1", "unknown key study.colour"),
        ("space.scorers=['l1','magic']", "space.scorers = 'magic': unknown scorer"),
        ("space.ratio_max=1.0", "space.ratio_max = 1.0: must be in [0, 1)"),
        ("model.name=nonet", "unknown model 'nonet'"),
    ],
)
def test_bad_values_exit_2_with_one_line(
    runs_dir: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    assert message in _error(capsys, _search(runs_dir, "--set", override))


def test_checkpoint_that_does_not_match_the_model(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), wrong)
    line = _error(capsys, _search(runs_dir, "--set", f"model.checkpoint='{wrong.as_posix()}'"))
    assert "does not match the model" in line and "'stem.0.weight'" in line


def test_a_base_model_at_chance_is_warned_about_before_the_study(
    runs_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from autoprune.models import build_model

    zeroed = build_model("digits_resnet", num_classes=10, in_channels=1, image_size=8).state_dict()
    blank = tmp_path / "blank.pt"
    torch.save({k: torch.zeros_like(v) for k, v in zeroed.items()}, blank)  # one class for every input
    assert (
        _search(runs_dir, "--trials", "1", "--set", "study.baselines=[]", "--set", f"model.checkpoint='{blank}'") == 0
    )
    err = capfd.readouterr().err
    assert "base model: validation accuracy 0." in err and "is at chance (0.1000 for 10 classes)" in err
    assert _search(runs_dir, "--trials", "1", "--set", "study.baselines=[]", "--set", "study.name='trained'") == 0
    assert "is at chance" not in capfd.readouterr().err


FASHION = DIGITS.parent / "fashion_mnist.toml"
SHARED_DATA = DIGITS.parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED_DATA / "FashionMNIST").is_dir(), reason=f"no Fashion-MNIST under {SHARED_DATA}")
def test_fashion_mnist_study_runs_three_trials_on_a_subset(runs_dir: Path) -> None:
    args = ["search", str(FASHION), "--trials", "3"]
    for item in [
        *tiny_overrides(runs_dir),
        f"data.root='{SHARED_DATA.as_posix()}'",
        "data.subset=600",
        "train.epochs=1",
        "study.baselines=[0.5]",
    ]:
        args += ["--set", item]
    assert main(args) == 0
    study = optuna.load_study(study_name="fashion_mnist", storage=f"sqlite:///{runs_dir / 'fashion_mnist.db'}")
    completed = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(completed) == 3
    assert StudyRecord.from_study(study).data_shape.example_input == (1, 1, 28, 28)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("nsga2", optuna.samplers.NSGAIISampler),
        ("tpe", optuna.samplers.TPESampler),
        ("gp", optuna.samplers.GPSampler),
        ("random", optuna.samplers.RandomSampler),
    ],
)
def test_every_sampler_proposes_a_policy(name: str, kind: type) -> None:
    """Each sampler drives the relative space past its random start-up trials."""
    from autoprune.config import config_from_dict
    from autoprune.search.opening import make_sampler
    from autoprune.trial.space import SearchSpace

    config = config_from_dict(
        {
            "study": {"sampler": name, "startup_trials": 2, "population_size": 2, "objectives": ["accuracy", "macs"]},
            "space": {"granularity": "relative"},
        }
    )
    sampler = make_sampler(config, seed=0)
    assert isinstance(sampler, kind)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    space = SearchSpace(config.space, ["a", "b"], search_finetune_steps=False)
    for _ in range(4):
        trial = study.ask()
        policy = space.suggest(trial, seed=0)
        assert policy.global_ranking and set(policy.group_bias) == {"a", "b"}
        assert all(abs(b) <= config.space.bias_max for b in policy.group_bias.values())
        assert config.space.ratio_min <= policy.ratios["a"] <= config.space.ratio_max
        assert policy.finetune_steps == config.space.finetune_steps_max  # not searched without finetune_cost
        study.tell(trial, [1.0 - policy.ratios["a"], 1.0 - policy.ratios["a"] + policy.group_bias["b"]])
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4


@pytest.mark.parametrize("name", ["gp", "gaps", "switch"])
def test_the_gp_scores_fewer_random_points_per_proposal(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sampler built on Optuna's GP hands its acquisition search PRELIMINARY_SAMPLES random points,
    and the installed Optuna uses that setting (an Optuna that renamed it fails here, not silently)."""
    from optuna._gp import optim_mixed
    from optuna.samplers._gp import sampler as gp_module

    from autoprune.config import config_from_dict
    from autoprune.search.opening import PRELIMINARY_SAMPLES, make_sampler

    seen: list[int] = []
    optimize = optim_mixed.optimize_acqf_mixed

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["n_preliminary_samples"])
        return optimize(*args, **kwargs)

    monkeypatch.setattr(gp_module.optim_mixed, "optimize_acqf_mixed", recording)  # what the sampler calls
    settings = {"study": {"sampler": name, "startup_trials": 2}, "space": {"granularity": "allocation"}}
    sampler = make_sampler(config_from_dict(settings), seed=0)
    gp = getattr(sampler, "base", sampler)
    assert isinstance(gp, optuna.samplers.GPSampler)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=gp)
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=4)
    assert seen == [PRELIMINARY_SAMPLES] * 2 and PRELIMINARY_SAMPLES < 2048


def test_a_study_stored_before_a_key_existed_resumes() -> None:
    from autoprune.config import config_from_dict, load_config
    from autoprune.search.record import settings_differences

    new = load_config(DIGITS)
    stored = new.to_dict()
    del stored["sensitivity"], stored["space"]["target"], stored["space"]["references"]
    assert settings_differences(config_from_dict(stored), new) == []
    stored["space"]["ratio_max"] = 0.5
    assert settings_differences(config_from_dict(stored), new) == ["space.ratio_max"]


def _search_subprocess(runs: Path, name: str, *verbose: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "autoprune", *verbose, "search", str(DIGITS), "--trials", "1"]
    for item in [*tiny_overrides(runs), f"study.name='{name}'"]:
        args += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, check=True)


def test_a_search_prints_no_third_party_warning_unless_verbose(tmp_path: Path) -> None:
    quiet = _search_subprocess(tmp_path / "runs", "quiet")
    assert "Warning" not in quiet.stdout + quiet.stderr
    loud = _search_subprocess(tmp_path / "runs", "loud", "-v")  # a new study on the cached base model
    assert "ExperimentalWarning: optuna.study.study.Study.set_metric_names is experimental" in loud.stderr


def test_the_printed_front_holds_no_pick_below_the_floor_and_no_dominated_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    args = ["search", str(DIGITS), "--trials", "8"]
    for item in [*tiny_overrides(runs), "study.pick_floor=0.5"]:  # the default, over the tiny settings' 0
        args += ["--set", item]
    assert main(args) == 0
    printed = capsys.readouterr().out.split("Pareto front of study", 1)[1].splitlines()[3:]
    rows = [(int(cells[0]), float(cells[1]), float(cells[3]), float(cells[5])) for cells in map(str.split, printed)]
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{runs}/digits.db")
    record = StudyRecord.from_study(study)
    chance = 1 / record.data_shape.num_classes
    floor = chance + 0.5 * (record.base.accuracy - chance)
    accuracy = {t.number: t.user_attrs["accuracy"] for t in study.best_trials}
    assert {r[0] for r in rows} == {n for n, a in accuracy.items() if a >= floor}
    assert len(rows) < len(accuracy)  # six fine-tune steps leave some front trials under the floor
    assert all(acc >= floor for _n, acc, _m, _s in rows)
    assert [m for _n, _a, m, _s in rows] == sorted((m for _n, _a, m, _s in rows), reverse=True)
    for _n, acc, macs, size in rows:  # accuracy, MACs % and size %: no printed trial dominates another
        assert not any(
            (a2, -m2, -s2) != (acc, -macs, -size) and a2 >= acc and m2 <= macs and s2 <= size
            for _n2, a2, m2, s2 in rows
        )

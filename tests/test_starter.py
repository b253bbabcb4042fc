"""``autoprune init``: a commented study file, sized on this machine, that runs as written."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
from conftest import REPO

from autoprune.cli import main
from autoprune.config import StudyConfig, load_config
from autoprune.search import starter
from autoprune.search.starter import LEVELS, MAX_TRIALS, STUDY_HOURS, Sizing, starter_config, study_text


def test_init_writes_a_study_file_that_runs_a_two_trial_search_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setattr(starter, "TRIAL_SECONDS", 0.1)  # the fewest steps init chooses: 20 per trial
    assert main(["init", "--model", "digits_resnet", "--data", "digits", "--out", "mine.toml"]) == 0
    printed = capsys.readouterr().out
    assert "run it:  autoprune search mine.toml" in printed
    config = load_config(tmp_path / "mine.toml")
    assert (config.study.name, config.model.name, config.data.name) == ("mine", "digits_resnet", "digits")
    assert 20 <= config.space.finetune_steps_max <= 1000 and 20 <= config.study.trials <= 500
    # the study opens with uniform pruning and the one-shot allocation at each level
    assert (config.space.granularity, config.sampler, config.study.baselines) == ("allocation", "gaps", LEVELS)
    assert main(["init", "--out", "mine.toml"]) == 2  # never overwritten without --force
    assert main(["search", "mine.toml", "--trials", "2"]) == 0
    study = optuna.load_study(study_name="mine", storage=f"sqlite:///{tmp_path / 'runs' / 'mine.db'}")
    completed = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.user_attrs.get("baseline") for t in completed] == ["50%", "50%"]
    assert {t.params["mix"] for t in completed} == {0.0, 1.0}  # uniform, then the one-shot allocation


def test_the_text_is_sized_from_the_measurement() -> None:
    config = starter_config(name="s", model="resnet20", data="fashion_mnist", root="/data")
    sizing = Sizing("cpu", 270_000, 41_000_000, 19, 54_000, 0.05, 64, 200, 80, 5)
    text = study_text(config, sizing)
    assert "trials = 80" in text and "finetune_steps_max = 200" in text and "epochs = 5" in text
    assert "50 ms per fine-tune step" in text and f"about {STUDY_HOURS:g} hours" in text
    assert 'root = "/data"' in text and "# max_macs" in text


def test_the_file_loads_back_as_the_settings_it_was_written_from(tmp_path: Path) -> None:
    odd = 'C:\\data\\fashion "v2"\tnew'
    config = starter_config(name='my "study"', model="fmnist_cnn", data="fashion_mnist", root=odd, device="cpu")
    sizing = Sizing("cpu", 470_000, 19_000_000, 5, 54_000, 0.02, 64, 500, 120, 5)
    (tmp_path / "s.toml").write_text(study_text(config, sizing), encoding="utf-8")
    loaded = load_config(tmp_path / "s.toml")
    assert (loaded.study.name, loaded.data.root, loaded.study.device) == ('my "study"', odd, "cpu")
    assert (loaded.study.trials, loaded.space.finetune_steps_max, loaded.train.epochs) == (120, 500, 5)
    assert sizing.hours == pytest.approx((5 * 844 * 0.02 + 120 * 2 * 500 * 0.02) / 3600)


def test_init_refuses_a_folder_and_an_unknown_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["init", "--out", str(tmp_path / "x.toml"), "--device", "gpu"]) == 2
    assert "--device gpu" in capsys.readouterr().err


def test_the_trial_comment_says_when_the_count_was_held_to_a_bound() -> None:
    config = StudyConfig()
    capped = study_text(config, Sizing("cpu", 100_000, 1_000_000, 5, 54_000, 0.01, 64, 100, MAX_TRIALS, 5))
    assert "the most init chooses (about 0.3 h here)" in capped and "8 hours" not in capped
    sized = study_text(config, Sizing("cpu", 270_000, 41_000_000, 19, 54_000, 0.05, 64, 200, 80, 5))
    assert "sized for about 8 hours" in sized

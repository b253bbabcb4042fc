"""Export and load: the rebuilt model equals the trial; TorchScript and ONNX agree; weights stay bounded."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from conftest import tiny_config

import autoprune
from autoprune.cli import main
from autoprune.errors import AutopruneError
from autoprune.export import ONNX, TORCHSCRIPT, export_trial, study_data
from autoprune.metrics import accuracy, count_macs_params
from autoprune.study import run_study, stored_weights, study_artifacts


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, str]:
    runs = tmp_path_factory.mktemp("export-runs")
    config = tiny_config(runs, "tiny-export", "study.trials=20", "study.baselines=[0.5]", "space.prune_steps_max=2")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return run_study(config), f"sqlite:///{runs / 'tiny-export'}.db"


@pytest.fixture(scope="module")
def exported(stored: tuple[optuna.Study, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    study, storage = stored
    number = min(study.best_trials, key=lambda t: t.user_attrs["macs"]).number
    out = tmp_path_factory.mktemp("export") / "model"
    assert (
        main(["export", "--storage", storage, "--study", "tiny-export", "--trial", str(number), "--out", str(out)]) == 0
    )
    return number, out


def test_weights_on_disk_bounded_by_front(stored: tuple[optuna.Study, str]) -> None:
    study, storage = stored
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) >= 20
    files = stored_weights(study_artifacts(study, storage))
    assert sorted(files) == sorted(t.number for t in study.best_trials)


def test_load_equals_recorded_trial(stored: tuple[optuna.Study, str], exported: tuple[int, Path]) -> None:
    study, _storage = stored
    number, out = exported
    trial = study.trials[number]
    model = autoprune.load(out)
    assert isinstance(model, torch.nn.Module)
    data = study_data(study)
    macs, params = count_macs_params(model, data.val.x[:1])
    assert (macs, params) == (trial.user_attrs["macs"], trial.user_attrs["params"])
    assert accuracy(model, data.val, 64) == trial.user_attrs["accuracy"]
    meta = json.loads((out / "policy.json").read_text())
    assert meta["kept"] == trial.user_attrs["kept"] and meta["trial"] == number
    assert "test split" in (out / "model-card.md").read_text()


def test_torchscript_and_onnx_match(stored: tuple[optuna.Study, str], exported: tuple[int, Path]) -> None:
    study, _storage = stored
    _number, out = exported
    model = autoprune.load(out)
    x = study_data(study).val.x[:17]
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.load(str(out / TORCHSCRIPT))(x)
    assert (expected - scripted).abs().max() <= 1e-4
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out / ONNX), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"input": x.numpy()})
    assert (expected - torch.from_numpy(onnx_out)).abs().max() <= 1e-4


def test_export_without_weights_is_an_error(stored: tuple[optuna.Study, str], tmp_path: Path) -> None:
    study, storage = stored
    off_front = [
        t.number
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE and t.number not in {b.number for b in study.best_trials}
    ]
    if not off_front:
        pytest.skip("every trial is on the front")
    with pytest.raises(AutopruneError, match="front members only"):
        export_trial(study, off_front[0], tmp_path / "x", storage=storage)


def test_export_by_budget_picks_within_it(stored: tuple[optuna.Study, str], tmp_path: Path) -> None:
    study, storage = stored
    out = tmp_path / "picked"
    code = main(["export", "--storage", storage, "--study", "tiny-export", "--max-macs", "60%", "--out", str(out)])
    assert code == 0
    meta = json.loads((out / "policy.json").read_text())
    assert meta["figures"]["macs"] <= 0.6 * meta["base"]["macs"]
    assert meta["budget"] == {"max_macs": "60%"}

"""Latency on the runtime that ships the model: eager PyTorch or ONNX Runtime, with its threads, batch
size and the spread of its passes."""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

import optuna
import pytest
import torch
from conftest import tiny_config

from autoprune.config import TrialSection, config_from_dict
from autoprune.errors import ConfigError
from autoprune.search.record import StudyRecord
from autoprune.search.run import run_study
from autoprune.trial import latency
from autoprune.trial.latency import measure_latency, onnx_model, onnxruntime_session, time_onnxruntime, time_torch


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Flatten())


@pytest.mark.parametrize("time_it", [time_torch, time_onnxruntime])
def test_each_runtime_times_a_positive_median_and_leaves_the_model_as_it_was(time_it: object) -> None:
    model = _net().train()
    timing = time_it(model, torch.randn(2, 1, 8, 8), repeats=6, threads=1)  # type: ignore[operator]
    assert timing.ms > 0 and timing.spread >= 0
    assert model.training
    assert "1 threads" in timing.where


def test_onnxruntime_runs_the_same_model_with_the_threads_asked_for() -> None:
    model, batch = _net().eval(), torch.randn(3, 1, 8, 8)
    session = onnxruntime_session(onnx_model(model, batch), batch.device, threads=2)
    assert session.get_session_options().intra_op_num_threads == 2
    (out,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    with torch.no_grad():
        assert (torch.from_numpy(out) - model(batch)).abs().max() <= 1e-5


def test_the_spread_is_the_interquartile_range_over_the_median(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter([t for d in (1.0, 2.0, 3.0, 4.0, 5.0) for t in (0.0, d)])
    monkeypatch.setattr(latency.time, "perf_counter", lambda: next(ticks))
    [(ms, spread)] = latency._timed([lambda: None], repeats=5)  # 1 warm-up pass (untimed), then 1..5 s
    assert ms == 3000.0
    q1, _, q3 = statistics.quantiles([1.0, 2.0, 3.0, 4.0, 5.0], n=4)
    assert spread == pytest.approx((q3 - q1) / 3.0)


def test_models_timed_in_rounds_keep_a_burst_of_load_to_one_round(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, calls, slow = [0.0], [0], range(10, 16)
    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock[0])

    def run(seconds: float) -> None:
        calls[0] += 1
        clock[0] += seconds * (10 if calls[0] in slow else 1)

    # calls 1-6 warm up (3 each); then rounds of 3 passes, the runs in turn: the first run's 7-9, the
    # second's 10-12, the first's 13-15, ... Calls 10-15 are ten times slower: one round of each run.
    # Timed one run after the other (7-15, then 16-24), the first run would be slow on 6 of its 9 passes.
    figures = latency._timed([lambda: run(1.0), lambda: run(2.0)], repeats=9, rounds=3)
    assert calls[0] == 6 + 3 * 2 * 3
    assert [ms for ms, _ in figures] == [1000.0, 2000.0]


def test_an_unknown_runtime_is_refused_in_the_study_file() -> None:
    with pytest.raises(ConfigError, match="trial.latency_runtime = 'tensorrt'.*must be one of torch, onnxruntime"):
        config_from_dict({"trial": {"latency_runtime": "tensorrt"}})
    with pytest.raises(ConfigError, match="trial.latency_threads"):
        config_from_dict({"trial": {"latency_threads": -1}})


def test_measure_latency_follows_the_settings() -> None:
    model, batch = _net(), torch.randn(1, 1, 8, 8)
    settings = TrialSection(latency_runtime="onnxruntime", latency_threads=1, latency_repeats=3)
    assert measure_latency(model, batch, settings).runtime == "onnxruntime"
    assert measure_latency(model, batch, TrialSection(latency_repeats=3)).runtime == "torch"


def test_a_study_times_its_base_model_and_trials_on_onnxruntime(
    runs_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("autoprune"), "propagate", True)
    config = tiny_config(
        runs_dir,
        "ort",
        "study.objectives=['accuracy','latency_ms']",
        "trial.latency_runtime='onnxruntime'",
        "trial.latency_threads=1",
        "trial.latency_repeats=5",
        "trial.latency_predicted=false",
        "study.trials=2",
        "study.baselines=[0.5]",
    )
    with caplog.at_level(logging.INFO, logger="autoprune"):
        study = run_study(config)
    assert "on onnxruntime (CPU, 1 threads), batch 1" in caplog.text
    assert StudyRecord.from_study(study).base.latency_ms > 0
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert done and all(t.values[1] == t.user_attrs["latency_ms"] > 0 for t in done)

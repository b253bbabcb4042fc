"""The latency model: per-layer tables, their interpolation, the calibration, the cache, and a study
that predicts its trials' latency (and allocates against it) instead of timing every trial."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from conftest import tiny_config
from torch import nn

from autoprune.cli import main
from autoprune.config import TrialSection, config_from_dict
from autoprune.errors import AutopruneError, ConfigError
from autoprune.results.report import _data as report_data
from autoprune.results.report import write_report
from autoprune.results.rows import front_rows
from autoprune.search import latency as search_latency
from autoprune.search.prepare import prepare
from autoprune.search.record import StudyRecord, settings_differences
from autoprune.search.run import run_study
from autoprune.trial import latency_model
from autoprune.trial.cost import CostModel, pruned_copy
from autoprune.trial.latency import Timing
from autoprune.trial.latency_model import LatencyModel, LayerTable, Width
from autoprune.trial.metrics import count_macs_params
from autoprune.trial.surgery import TracedModel


def _layer(ms: list[list[float]], grid_in: tuple[int, ...], grid_out: tuple[int, ...], **kw: object) -> LayerTable:
    return LayerTable(
        name="conv",
        width_in=Width(grid_in[-1], {"a": 1.0} if len(grid_in) > 1 else {}, grid_in),
        width_out=Width(grid_out[-1], {"b": 1.0}, grid_out),
        depthwise=bool(kw.get("depthwise", False)),
        ms=tuple(tuple(row) for row in ms),
        elements_per_channel=(0, 0),
    )


def _model(*layers: LayerTable, coefficients: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)) -> LatencyModel:
    return LatencyModel({"a": 32, "b": 64}, layers, coefficients, "torch", "CPU", 1, 1)


def test_a_layer_is_interpolated_bilinearly_between_grid_widths_and_held_beyond_them() -> None:
    # ms = in * out / 1000 on the grid: bilinear interpolation is exact for it anywhere inside
    grid_in, grid_out = (8, 16, 32), (16, 32, 64)
    table = [[i * o / 1000 for o in grid_out] for i in grid_in]
    model = _model(_layer(table, grid_in, grid_out))
    for a, b in [(32, 64), (8, 16), (12, 40), (20, 17), (31, 63)]:
        assert model.predict({"a": a, "b": b}) == pytest.approx(a * b / 1000)
    # below the narrowest width, the edge's figure holds
    assert model.predict({"a": 4, "b": 8}) == pytest.approx(8 * 16 / 1000)
    # groups not named keep all their channels
    assert model.predict({}) == pytest.approx(32 * 64 / 1000)
    with pytest.raises(AutopruneError, match="no groups"):
        model.predict({"c": 3})


def test_a_depthwise_layer_follows_its_one_width_and_the_calibration_scales_and_adds() -> None:
    grid = (16, 32, 64)
    depthwise = _layer([[o / 100 for o in grid]], (64,), grid, depthwise=True)
    model = _model(depthwise, coefficients=(2.0, 0.5, 0.0, 0.0))
    assert model.predict({"b": 48}) == pytest.approx(2.0 * 0.48 + 0.5)
    rows = np.array([[32.0, 16.0], [32.0, 64.0]])
    assert model.predict_many(rows) == pytest.approx([2.0 * 0.16 + 0.5, 2.0 * 0.64 + 0.5])
    assert float(model.predict_many(rows[1])) == pytest.approx(2.0 * 0.64 + 0.5)  # one vector: one figure


def test_the_model_reads_back_from_json_with_the_same_predictions() -> None:
    grid_in, grid_out = (8, 16, 32), (16, 32, 64)
    model = _model(_layer([[i + o for o in grid_out] for i in grid_in], grid_in, grid_out), coefficients=(1, 2, 3, 4))
    back = LatencyModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert back == model
    assert back.predict({"a": 11, "b": 50}) == model.predict({"a": 11, "b": 50})


def _tiny_traced(width: int = 24) -> TracedModel:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, width, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(width * 8 * 8, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    ).eval()
    return TracedModel(model, torch.randn(1, 1, 8, 8))


def _macs_ms(model: nn.Module, x: torch.Tensor) -> float:
    return 0.0 if isinstance(model, nn.Identity) else count_macs_params(model, x)[0] * 1e-6


def _layers_ms(model: nn.Module, batch: torch.Tensor) -> float:
    """The convolutions' and linear layers' MACs, a millionth of a ms each."""
    shapes = latency_model._layer_shapes(model, batch[:1])
    return sum(_macs_ms(s.module, torch.randn(batch.shape[0], *s.input_shape[1:])) for s in shapes.values())


@pytest.fixture
def macs_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime whose latency is the layers' MACs (a millionth of a ms each) plus 0.01 ms: layers and
    whole models are 'timed' without a clock, so the fit's arithmetic can be checked exactly."""
    monkeypatch.setattr(latency_model._LayerTimer, "_time", lambda self, module, x: _macs_ms(module, x))

    def whole(models: list[nn.Module], batch: torch.Tensor, settings: TrialSection) -> list[Timing]:
        return [Timing(_layers_ms(model, batch) + 0.01, 0.0, "fake", "fake") for model in models]

    monkeypatch.setattr(latency_model, "measure_latencies", whole)


@pytest.mark.usefixtures("macs_timed")
def test_the_fit_finds_each_layers_widths_and_predicts_allocations_it_never_saw() -> None:
    traced = _tiny_traced()
    batch = torch.randn(1, 1, 8, 8)
    model = LatencyModel.fit(traced, TrialSection(), batch=batch, ratio_max=0.75, multiple=4)
    layers = {layer.name: layer for layer in model.layers}
    assert set(layers) == {"0", "3", "6", "9", "11"}
    (first,) = layers["0"].width_out.slopes
    (third,) = layers["6"].width_out.slopes
    assert layers["0"].width_in.slopes == {} and len(layers["0"].width_in.grid) == 1  # the image's channel
    assert layers["3"].depthwise and layers["3"].width_out.slopes == {first: 1.0}
    assert layers["6"].width_in.slopes == {first: 1.0} and third != first
    assert layers["9"].width_in.slopes == {third: 64.0}  # a flatten: 8 x 8 inputs per channel
    assert all(w % 4 == 0 for w in layers["6"].width_out.grid) and layers["6"].width_out.grid[-1] == 24
    assert min(layers["6"].width_out.grid) == 4  # ratio_max 0.75 of 24 leaves 6: rounded to the multiple
    assert model.error < 1e-6 and model.block == 1
    rng = random.Random(7)
    for _ in range(5):
        ratios = {g: rng.uniform(0.0, 0.75) for g in model.groups}
        pruned, kept = pruned_copy(traced, batch, ratios, multiple=4)
        assert model.predict(kept) == pytest.approx(_layers_ms(pruned, batch) + 0.01, rel=1e-6)


def _blocked_ms(module: nn.Module, x: torch.Tensor) -> float:
    """A convolution's MACs with its channels padded to a multiple of 16 (its inputs when 16 or more; a
    depthwise convolution's inputs are its outputs)."""
    if not isinstance(module, nn.Conv2d):
        return _macs_ms(module, x)
    width_out = -(-module.out_channels // 16) * 16
    width_in = module.in_channels if module.in_channels < 16 else -(-module.in_channels // 16) * 16
    if module.groups > 1:
        width_in = width_out
    padded = latency_model._resized(module, width_in, width_out)
    return _macs_ms(padded, torch.randn(x.shape[0], width_in, *x.shape[2:]))


def test_the_fit_pads_convolutions_to_the_runtimes_channel_block(monkeypatch: pytest.MonkeyPatch) -> None:
    # a runtime that runs convolutions on channels in blocks of 16, as ONNX Runtime's AVX-512 kernels do:
    # 4 or 12 kept output channels cost what 16 do, 36 or 40 what 48 does; inputs under 16 are not padded
    monkeypatch.setattr(latency_model._LayerTimer, "_time", lambda self, module, x: _blocked_ms(module, x))

    def whole(models: list[nn.Module], batch: torch.Tensor, settings: TrialSection) -> list[Timing]:
        shapes = [latency_model._layer_shapes(model, batch[:1]).values() for model in models]
        ms = [sum(_blocked_ms(s.module, torch.randn(1, *s.input_shape[1:])) for s in layers) for layers in shapes]
        return [Timing(m + 0.01, 0.0, "fake", "fake") for m in ms]

    monkeypatch.setattr(latency_model, "measure_latencies", whole)
    monkeypatch.setattr(latency_model, "channel_block", lambda runtime, device: None)  # the calibration chooses
    traced, batch = _tiny_traced(width=48), torch.randn(1, 1, 8, 8)
    model = LatencyModel.fit(traced, TrialSection(), batch=batch, ratio_max=0.75, multiple=4)
    assert model.block == 16 and model.error < 1e-6
    assert "channels in blocks of 16" in model.describe()
    assert {layer.name: layer.width_out.grid for layer in model.layers}["6"] == (12, 16, 32, 48)
    rng = random.Random(7)
    for _ in range(5):
        ratios = {g: rng.uniform(0.0, 0.75) for g in model.groups}
        pruned, kept = pruned_copy(traced, batch, ratios, multiple=4)
        assert model.predict(kept) == pytest.approx(whole([pruned], batch, TrialSection())[0].ms, rel=1e-6)
    assert LatencyModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model


def test_the_block_is_the_runtimes_where_it_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for capability, block in [("AVX512", 16), ("AVX2", 8), ("DEFAULT", None)]:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda capability=capability: capability)
        assert latency_model.channel_block("onnxruntime", cpu) == block
        assert latency_model.channel_block("torch", cpu) == 1
        assert latency_model.channel_block("onnxruntime", cuda) is None


@pytest.mark.usefixtures("macs_timed")
def test_latency_is_a_cost_models_figure_the_allocation_can_target() -> None:
    traced = _tiny_traced()
    model = LatencyModel.fit(traced, TrialSection(), batch=torch.randn(1, 1, 8, 8), multiple=4)
    cost = CostModel.fit(traced)
    with pytest.raises(AutopruneError, match="latency model"):
        cost.predict_many(np.array([list(cost.base.values())]), "latency_ms")
    with_latency = CostModel(cost.base, cost.max_error, cost._macs, cost._params, latency=model)
    row = np.array([[float(c) for c in cost.base.values()]])
    assert with_latency.predict_many(row, "latency_ms")[0] == pytest.approx(model.predict({}))
    assert config_from_dict({"space": {"granularity": "allocation", "target": "latency_ms"}}).needs_latency


def test_the_model_is_cached_per_base_model_runtime_and_machine(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch, macs_timed: None
) -> None:
    config = tiny_config(runs_dir, "cache", "study.objectives=['accuracy','latency_ms']")
    traced = _tiny_traced()
    checkpoint = runs_dir / "base.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    batch = torch.randn(1, 1, 8, 8)
    first = search_latency.cached_latency_model(config, traced, batch, checkpoint)
    path = search_latency.cache_file(config, checkpoint, batch.device)
    assert path.exists() and path.parent == runs_dir / "cache"

    def refit(*args: object, **kwargs: object) -> LatencyModel:
        raise AssertionError("the cached model was fitted again")

    monkeypatch.setattr(LatencyModel, "fit", refit)
    assert search_latency.cached_latency_model(config, traced, batch, checkpoint) == first
    other = tiny_config(runs_dir, "cache", "trial.latency_threads=2")
    assert search_latency.cache_file(other, checkpoint, batch.device) != path
    with monkeypatch.context() as patched:  # a version that tables otherwise
        patched.setattr(search_latency, "GRID", latency_model.GRID + 1)
        assert search_latency.cache_file(config, checkpoint, batch.device) != path
    checkpoint.write_bytes(b"other weights")
    assert search_latency.cache_file(config, checkpoint, batch.device) != path


@pytest.fixture
def small_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real timings on a smaller grid, so that a fit on the runtime runs in the default test run."""
    monkeypatch.setattr(latency_model, "GRID", 2)
    monkeypatch.setattr(latency_model, "LAYER_REPEATS", 3)
    monkeypatch.setattr(latency_model, "CALIBRATION", (2, 2))


@pytest.mark.usefixtures("macs_timed")  # tables that follow MACs: timing noise cannot reorder the front
def test_a_study_predicts_its_trials_latency_and_a_latency_budget_is_picked_on_the_runtime(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(
        runs_dir,
        "predicted",
        "study.objectives=['accuracy','latency_ms']",
        "trial.latency_runtime='onnxruntime'",
        "trial.latency_threads=1",
        "trial.latency_repeats=3",
        "study.trials=4",
        "study.baselines=[0.3, 0.6]",
    )
    study = run_study(config)
    record = StudyRecord.from_study(study)
    assert record.latency_model is not None and record.latency_model.runtime == "onnxruntime"
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert done
    for trial in done:
        assert trial.user_attrs["latency_ms"] == pytest.approx(record.latency_model.predict(trial.user_attrs["kept"]))
    # a worker (or a resumed study) predicts from the study's model, not one of its own
    prepared = prepare(
        record.config,
        torch.device("cpu"),
        base_checkpoint=record.base_checkpoint,
        latency_model=record.latency_model,
    )
    assert prepared.evaluator.latency_model is record.latency_model

    # pick --max-latency-ms times the front on the runtime (here: one whose latency is the layers' MACs,
    # far from the predictions) and meets the budget there, not in the model's predictions
    monkeypatch.setattr(
        report_data, "measure_latencies", lambda models, batch, settings: [_fake_runtime(m, batch) for m in models]
    )
    rows = {r.trial: r for r in front_rows(study)}
    measured = {n: t.ms for n, t in report_data.measure_front(study, list(rows), None, test=False).latency.items()}
    assert set(measured) == set(rows) and len(rows) >= 2
    budget = sorted(measured.values())[len(measured) // 2]
    storage = f"sqlite:///{runs_dir / 'predicted'}.db"
    assert main(["pick", "--storage", storage, "--study", "predicted", "--max-latency-ms", str(budget), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    within = [n for n, ms in measured.items() if ms <= budget]
    assert payload["figures"]["latency_ms"] == measured[payload["trial"]] <= budget
    assert rows[payload["trial"]].accuracy == max(rows[n].accuracy for n in within)

    # the report sets the search's predictions beside the runtime's timings
    report = write_report(study, runs_dir / "report", storage=storage)
    front = pd.read_csv(report.folder / "front.csv")
    for r in front.itertuples(index=False):
        assert r.latency_measured_ms == pytest.approx(measured[r.trial])
        assert r.latency_error == pytest.approx(rows[r.trial].latency_ms / measured[r.trial] - 1)
        base_ms = r.speedup * measured[r.trial]  # the base model, timed in the same rounds
        predicted_speedup = record.latency_model.predict({}) / rows[r.trial].latency_ms
        assert r.speedup_error == pytest.approx(predicted_speedup / (base_ms / measured[r.trial]) - 1)
    summary = (report.folder / "summary.md").read_text()
    assert "The search predicted each trial's latency" in summary and "Their speedups over the base model" in summary


def _fake_runtime(model: nn.Module, batch: torch.Tensor) -> Timing:
    return Timing(1000 * _layers_ms(model, batch), 0.0, "fake", "fake")


@pytest.mark.usefixtures("small_fits")
def test_an_allocation_that_targets_latency_with_trials_timed_times_them(runs_dir: Path) -> None:
    config = tiny_config(
        runs_dir,
        "target",
        "space.granularity='allocation'",
        "space.target='latency_ms'",
        "trial.latency_predicted=false",
        "trial.latency_threads=1",
        "trial.latency_repeats=3",
    )
    prepared = prepare(config, torch.device("cpu"))
    assert prepared.latency_model is not None  # the allocation targets its figure
    assert prepared.evaluator.space.allocator is not None
    assert prepared.evaluator.space.allocator.cost.latency is prepared.latency_model
    assert prepared.evaluator.latency_model is None  # the trials are timed, as the setting says


def test_timing_every_trial_stays_a_setting(runs_dir: Path) -> None:
    config = tiny_config(
        runs_dir, "timed", "study.objectives=['accuracy','latency_ms']", "trial.latency_predicted=false"
    )
    assert config.needs_latency and not config.predicts_latency
    weights = tiny_config(runs_dir, "w", "study.objectives=['accuracy','latency_ms']", "space.kind='weights'")
    assert not weights.predicts_latency  # masks keep every channel: nothing for the tables to follow


def test_a_study_that_takes_latency_is_not_resumed_on_another_runtime() -> None:
    stored = config_from_dict({"study": {"objectives": ["accuracy", "latency_ms"]}})
    other = config_from_dict({"study": {"objectives": ["accuracy", "latency_ms"]}, "trial": {"latency_threads": 4}})
    assert settings_differences(stored, other) == ["trial.latency_threads"]
    runtime = config_from_dict(
        {"study": {"objectives": ["accuracy", "latency_ms"]}, "trial": {"latency_runtime": "onnxruntime"}}
    )
    # onnxruntime also rounds channels to multiples of 8 by default: the space differs too
    assert settings_differences(stored, runtime) == ["space.channel_multiple", "trial.latency_runtime"]
    # a study without latency ignores the latency settings
    assert settings_differences(config_from_dict({}), config_from_dict({"trial": {"latency_threads": 4}})) == []


def test_a_fast_model_timed_at_the_runtimes_default_threads_gets_a_warning(
    runs_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("autoprune"), "propagate", True)
    settings = ["study.objectives=['accuracy','latency_ms']", "trial.latency_predicted=false"]
    with caplog.at_level(logging.WARNING, logger="autoprune"):
        prepare(tiny_config(runs_dir, "threads", *settings), torch.device("cpu"))
    assert "set trial.latency_threads to the deployment's thread count" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autoprune"):
        prepare(tiny_config(runs_dir, "one", *settings, "trial.latency_threads=1"), torch.device("cpu"))
    assert "latency_threads" not in caplog.text


def test_a_model_the_tables_cannot_follow_is_called_rough(
    runs_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("autoprune"), "propagate", True)
    config = tiny_config(runs_dir, "rough", "study.objectives=['accuracy','latency_ms']")
    checkpoint = runs_dir / "base.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    rough = dataclasses.replace(_model(), calibration=(("uniform 0.00", 1.0, 1.05), ("random 0", 1.0, 1.4)))
    monkeypatch.setattr(LatencyModel, "fit", lambda *args, **kwargs: rough)
    with caplog.at_level(logging.WARNING, logger="autoprune"):
        search_latency.cached_latency_model(config, _tiny_traced(), torch.randn(1, 1, 8, 8), checkpoint)
    assert "off by up to 40% on its own calibration" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autoprune"):  # read back from the cache: said again
        search_latency.cached_latency_model(config, _tiny_traced(), torch.randn(1, 1, 8, 8), checkpoint)
    assert "rough guide" in caplog.text


def test_a_budget_refused_before_the_tables_are_measured(runs_dir: Path) -> None:
    config = tiny_config(runs_dir, "refused", "budget.max_latency_ms=0.00001", "trial.latency_threads=1")
    assert config.predicts_latency
    with pytest.raises(ConfigError, match="no policy in the space can meet max_latency_ms <= 1e-05 ms"):
        prepare(config, torch.device("cpu"), check_budget=True)
    assert not list((runs_dir / "cache").glob("latency-*.json"))  # no tables measured for a study never run

"""Export and load: the rebuilt model equals the trial; TorchScript and ONNX agree on raw pixels; an
export loads from any folder; weights stay bounded and are checked against their trial."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from conftest import tiny_config

import autoprune
from autoprune.cli import main
from autoprune.errors import AutopruneError
from autoprune.models import build_model
from autoprune.policy import Policy
from autoprune.results.export import (
    ONNX,
    POLICY,
    PROGRAM,
    SOURCE,
    Normalized,
    _onnx_outputs,
    export_trial,
    study_data,
    trial_model,
)
from autoprune.scorers import make_scorer
from autoprune.search.artifacts import weights_key
from autoprune.search.basemodel import save_atomic
from autoprune.search.front import front
from autoprune.search.paths import study_artifacts
from autoprune.search.prepare import prepare
from autoprune.search.rebuild import build_pruned
from autoprune.search.run import run_study
from autoprune.trial.metrics import accuracy, count_macs_params
from autoprune.trial.objective import record
from autoprune.trial.surgery import Surgery, find_groups


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
    files = study_artifacts(study, storage).weight_numbers()
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


def assert_programs_take_raw_pixels(out: Path, x: torch.Tensor) -> None:
    """The torch.export program's and ONNX Runtime's outputs on raw pixels equal the loaded model's on the
    normalized ``x``."""
    model = autoprune.load(out)
    pixels = autoprune.load(out, preprocessing=True).pixels(x)
    with torch.no_grad():
        expected = model(x)
        exported = torch.export.load(out / PROGRAM).module()(pixels)
        assert (expected - autoprune.load(out, preprocessing=True)(pixels)).abs().max() <= 1e-4
    assert (expected - exported).abs().max() <= 1e-4
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out / ONNX), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"input": pixels.numpy()})
    assert (expected - torch.from_numpy(onnx_out)).abs().max() <= 1e-4


def test_the_exported_program_and_onnx_match(stored: tuple[optuna.Study, str], exported: tuple[int, Path]) -> None:
    study, _storage = stored
    _number, out = exported
    assert_programs_take_raw_pixels(out, study_data(study).val.x[:17])
    assert not (out / "model.torchscript.pt").exists()


NO_AUTOPRUNE = """
import sys
sys.modules["autoprune"] = None  # any import of autoprune fails: the program must not need it
import torch
pixels = torch.load(sys.argv[2])
program = torch.export.load(sys.argv[1]).module()
with torch.no_grad():
    torch.save(program(pixels), sys.argv[3])
"""


def test_the_exported_program_reloads_in_a_fresh_process_without_autoprune(
    stored: tuple[optuna.Study, str], exported: tuple[int, Path], tmp_path: Path
) -> None:
    study, _storage = stored
    _number, out = exported
    x = study_data(study).val.x[:5]  # a batch size the export never saw
    pixels = autoprune.load(out, preprocessing=True).pixels(x)
    torch.save(pixels, tmp_path / "pixels.pt")
    command = [
        sys.executable,
        "-c",
        NO_AUTOPRUNE,
        str(out / PROGRAM),
        str(tmp_path / "pixels.pt"),
        str(tmp_path / "y.pt"),
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        expected = autoprune.load(out)(x)
    assert (torch.load(tmp_path / "y.pt") - expected).abs().max() <= 1e-4


def test_an_export_of_the_torchscript_format_still_loads_when_its_builder_cannot(
    stored: tuple[optuna.Study, str], exported: tuple[int, Path], tmp_path: Path
) -> None:
    study, _storage = stored
    _number, out = exported
    old = tmp_path / "old"
    shutil.copytree(out, old)
    meta = json.loads((old / POLICY).read_text())
    meta["format"] = "autoprune-export/2"
    meta["model"]["name"] = "module_that_is_gone:build"
    (old / POLICY).write_text(json.dumps(meta), encoding="utf-8")
    program = autoprune.load(out, preprocessing=True)
    x = study_data(study).val.x[:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; the exports of format 2 were written with it
        torch.jit.trace(program, program.pixels(x)).save(str(old / "model.torchscript.pt"))
    (old / PROGRAM).unlink()
    with torch.no_grad():
        assert (autoprune.load(old)(x) - autoprune.load(out)(x)).abs().max() <= 1e-4


def test_an_onnx_file_with_a_fixed_batch_is_refused_in_words(tmp_path: Path) -> None:
    """An export whose batch axis came out as a number (torch.export fixes it on some models when
    traced with one image) is an error that says so, not ONNX Runtime's refusal of the check batch."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def identity(batch: int | str) -> Path:
        graph = helper.make_graph(
            [helper.make_node("Identity", ["input"], ["logits"])],
            "g",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])],
        )
        path = tmp_path / f"{batch}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
        return path

    x = torch.randn(4, 3)
    with pytest.raises(AutopruneError, match="fixed the batch size at 1"):
        _onnx_outputs(identity(1), x)
    out, _ = _onnx_outputs(identity("batch"), x)
    if out is not None:
        assert torch.equal(out, x)


def test_export_without_weights_is_an_error(stored: tuple[optuna.Study, str], tmp_path: Path) -> None:
    study, storage = stored
    on_front = {t.number for t in front(study)}
    off_front = [t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    off_front = [n for n in off_front if n not in on_front]
    assert off_front  # 20 trials of three objectives: some are dominated
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


# ---------------------------------------------------------------------------------------------------------------
# one trial stored by hand, as the search stores it (no sampler, no search)

USER_NET = """
from torch import nn


def build(num_classes: int, in_channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )
"""


def store_one_trial(runs: Path, name: str, *overrides: str) -> optuna.Study:
    """An in-memory study holding one completed trial (global ratio 0.5) with what the search stores:
    the study's info, the trial's record (kept channels, removals, figures), its weights file and
    that file's sha256."""
    config = tiny_config(runs, name, *overrides)
    prepared = prepare(config, torch.device("cpu"))
    evaluator = prepared.evaluator
    policy = evaluator.space.from_params(evaluator.space.baseline_params(0.5), seed=0)
    result = evaluator.evaluate(policy)
    assert result.model is not None
    path = runs / name / weights_key(0)
    save_atomic({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, path)
    study = optuna.create_study(study_name=name, direction="maximize")
    prepared.record(config, artifacts=str(path.parent), study_id="0123456789ab").save(study)
    attrs = {
        "policy": policy.to_dict(),
        **record(result),
        "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    study.add_trial(optuna.trial.create_trial(value=result.measurement.accuracy, user_attrs=attrs))
    return study


@pytest.fixture(scope="module")
def user_export(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[optuna.Study, Path]]:
    """A user model named by a relative ``nets/net.py:build``, searched and exported from its project folder."""
    project = tmp_path_factory.mktemp("project")
    (project / "nets").mkdir()
    (project / "nets" / "net.py").write_text(USER_NET, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        study = store_one_trial(project / "runs", "user-net", "model.name='nets/net.py:build'")
        export_trial(study, 0, project / "exports" / "net")
        yield study, project


def test_export_of_a_user_model_loads_from_any_folder(
    user_export: tuple[optuna.Study, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, project = user_export
    out = project / "exports" / "net"
    meta = json.loads((out / "policy.json").read_text())
    assert meta["model"]["name"] == "nets/net.py:build"
    assert meta["model"]["builder"] == f"{SOURCE}:build"
    assert (out / SOURCE).read_text(encoding="utf-8") == USER_NET
    x = study_data(study).val.x[:9]
    with torch.no_grad():
        expected = trial_model(study, 0)(x)  # from the project folder, where the spec resolves
    monkeypatch.chdir(tmp_path)
    model = autoprune.load(out)
    assert isinstance(model, torch.nn.Sequential)  # the module itself, not the traced program
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_export_records_removals_and_normalization(user_export: tuple[optuna.Study, Path]) -> None:
    study, project = user_export
    out = project / "exports" / "net"
    meta = json.loads((out / "policy.json").read_text())
    data = study_data(study)
    assert meta["removed"] == study.trials[0].user_attrs["removed"] != []
    assert meta["preprocessing"] == {
        "mean": list(data.mean),
        "std": list(data.std),
        "input": "float32 NCHW, pixel values scaled to [0, 1]",
        "built_into": [PROGRAM, ONNX],
    }
    assert len(data.mean) == 1 and data.mean[0] > 0.1  # digits' own mean, not a placeholder
    sizes = {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
    assert meta["splits"] == {**sizes, "own_test_set": False}
    assert_programs_take_raw_pixels(out, data.val.x[:17])


def test_load_falls_back_to_the_exported_program_when_the_builder_cannot_be_imported(
    user_export: tuple[optuna.Study, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    study, project = user_export
    monkeypatch.setattr(logging.getLogger("autoprune"), "propagate", True)  # the CLI tests turned it off
    out = tmp_path / "net"
    shutil.copytree(project / "exports" / "net", out)
    (out / SOURCE).write_text("import autoprune_no_such_package\n" + USER_NET, encoding="utf-8")
    x = study_data(study).val.x[:9]
    pixels = autoprune.load(project / "exports" / "net", preprocessing=True).pixels(x)
    with torch.no_grad():
        expected = autoprune.load(project / "exports" / "net")(x)
        with caplog.at_level(logging.WARNING, logger="autoprune"):
            bare = autoprune.load(out)
        assert isinstance(bare, Normalized)
        assert (bare(x) - expected).abs().max() <= 1e-4
        assert (autoprune.load(out, preprocessing=True)(pixels) - expected).abs().max() <= 1e-4
    assert "autoprune_no_such_package" in caplog.text
    assert "loading model.pt2 instead: the exported program, for inference only" in caplog.text


PACKAGE = "autoprune_test_nets"


@pytest.fixture(scope="module")
def package_export(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[optuna.Study, Path]]:
    """A builder in a package module that imports its sibling relatively, so its file alone does not import."""
    root = tmp_path_factory.mktemp("package")
    (root / PACKAGE).mkdir()
    (root / PACKAGE / "__init__.py").write_text("", encoding="utf-8")
    (root / PACKAGE / "layers.py").write_text(USER_NET, encoding="utf-8")
    (root / PACKAGE / "net.py").write_text("from .layers import build\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.syspath_prepend(str(root))
        study = store_one_trial(root / "runs", "package-net", f"model.name='{PACKAGE}.net:build'")
        export_trial(study, 0, root / "exports" / "net")
        yield study, root
    for name in [m for m in sys.modules if m.startswith(PACKAGE)]:
        del sys.modules[name]


def test_export_names_a_package_builder_whose_file_does_not_import_alone(
    package_export: tuple[optuna.Study, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, root = package_export
    out = root / "exports" / "net"
    meta = json.loads((out / "policy.json").read_text())
    assert meta["model"]["name"] == f"{PACKAGE}.net:build" and "builder" not in meta["model"]
    assert not (out / SOURCE).exists()
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(root))  # the package is installed where the export is loaded
    x = study_data(study).val.x[:9]
    with torch.no_grad():
        assert torch.equal(autoprune.load(out)(x), trial_model(study, 0)(x))
    assert isinstance(autoprune.load(out), torch.nn.Sequential)


def test_weights_overwritten_by_another_study_are_refused(user_export: tuple[optuna.Study, Path]) -> None:
    study, _project = user_export
    folder = study_artifacts(study).folder
    assert folder is not None
    path = folder / weights_key(0)
    original = path.read_bytes()
    state = torch.load(path, weights_only=True)
    try:
        torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, path)
        with pytest.raises(AutopruneError) as caught:
            trial_model(study, 0)
        assert str(caught.value) == (
            f"{path} does not belong to trial 0 of study 'user-net': sha256 differs; it was overwritten by "
            "another study or edited"
        )
    finally:
        path.write_bytes(original)


def test_build_pruned_replays_the_removals_of_a_concatenation() -> None:
    """digits_branchnet's block concatenates two branches: one group's channels span both, so the
    channel counts alone cannot say which branch lost which channels; the recorded removals can."""
    torch.manual_seed(0)
    info = {"name": "digits_branchnet", "num_classes": 10, "in_channels": 1, "image_size": 8}
    model = build_model("digits_branchnet", num_classes=10, in_channels=1, image_size=8).eval()
    x = torch.randn(4, 1, 8, 8)
    groups = [g.name for g in find_groups(model, x)]
    assert "branches.project.0" in groups
    policy = Policy(ratios=dict.fromkeys(groups, 0.5), scorer="random", finetune_steps=0, lr=0.1)
    surgery = Surgery(model, x, policy, make_scorer("random", seed=0))
    surgery.step()
    removed = json.loads(json.dumps(surgery.removed()))  # as policy.json and the trial store it

    replayed = build_pruned(info, [1, 1, 8, 8], surgery.kept(), removed=removed)
    replayed.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(replayed.eval()(x), model(x))
    with pytest.raises(RuntimeError, match="size mismatch for branches"):
        build_pruned(info, [1, 1, 8, 8], surgery.kept()).load_state_dict(model.state_dict())


def test_an_int8_export_runs_on_onnxruntime_and_its_card_figures_are_measured(
    stored: tuple[optuna.Study, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ort = pytest.importorskip("onnxruntime")
    study, storage = stored
    number = min(study.best_trials, key=lambda t: t.user_attrs["macs"]).number
    out = tmp_path / "int8"
    args = ["export", "--storage", storage, "--study", "tiny-export", "--trial", str(number), "--out", str(out)]
    assert main([*args, "--int8"]) == 0
    assert "INT8 (model.int8.onnx): test acc " in capsys.readouterr().out
    meta = json.loads((out / POLICY).read_text())["int8"]
    data = study_data(study)
    pixels = autoprune.load(out, preprocessing=True).pixels(data.test.x)
    for name, figures in (("model.onnx", meta["fp32"]), ("model.int8.onnx", meta["int8"])):
        session = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        (logits,) = session.run(None, {"input": pixels.numpy()})
        measured = int((torch.from_numpy(logits).argmax(1) == data.test.y).sum()) / len(data.test.y)
        assert figures["test_accuracy"] == pytest.approx(measured, abs=1e-9)
        assert figures["bytes"] == (out / name).stat().st_size and figures["latency"]["ms"] > 0
    int8_graph = (out / "model.int8.onnx").read_bytes()
    assert b"QuantizeLinear" in int8_graph and len(int8_graph) < (out / "model.onnx").stat().st_size
    card = (out / "model-card.md").read_text()
    assert "## INT8" in card and f"| test accuracy | {meta['fp32']['test_accuracy']:.4f} |" in card

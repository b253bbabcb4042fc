"""The final fine-tune: one cosine schedule over the run, a checkpoint per epoch, and a run killed with
SIGKILL that, started again, ends bit for bit where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from conftest import REPO, tiny_config
from test_finetune import _net, _split

from autoprune.bench.finetune import bench
from autoprune.cli import main
from autoprune.errors import AutopruneError
from autoprune.results.export import study_data, trial_model
from autoprune.results.finetune import CHECKPOINT, FinetuneSettings, final_finetune, recipe_for
from autoprune.search.record import StudyRecord
from autoprune.search.run import run_study
from autoprune.trial.finetune import sgd, train_steps
from autoprune.trial.metrics import unpacked_state

NAME = "tiny-finetune"

KILLED_AFTER_CHECKPOINTS = """
import sys, time
from autoprune.search.artifacts import Artifacts
from autoprune.cli import main

checkpoints, ready = int(sys.argv[1]), sys.argv[2]
written = 0
put = Artifacts.put

def put_then_hang(self, key, data):
    global written
    digest = put(self, key, data)
    if key.startswith("finetune/"):
        written += 1
        if written == checkpoints:
            open(ready, "w").close()
            time.sleep(3600)
    return digest

Artifacts.put = put_then_hang
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, str, int]:
    runs = tmp_path_factory.mktemp("finetune-runs")
    config = tiny_config(runs, NAME, "study.trials=4", "study.baselines=[0.5]")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = run_study(config)
    number = min(study.best_trials, key=lambda t: t.user_attrs["macs"]).number
    return study, f"sqlite:///{runs / NAME}.db", number


def _args(storage: str, number: int, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--storage", storage, "--study", NAME, "--trial", str(number), "--out", str(out), *extra]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return unpacked_state(torch.load(out / "weights.pt", weights_only=True))


def test_a_run_in_parts_equals_one_run_bit_for_bit() -> None:
    """Steps 0..k and k..n of one schedule, with the run's optimizer, are the n-step run."""
    split = _split()
    whole, parts = _net(), _net()
    train_steps(whole, split.shuffled_batches(8, torch.Generator().manual_seed(3)), steps=10, lr=0.1, weight_decay=1e-4)
    optimizer = sgd(parts, 0.1, 1e-4)
    batches = split.shuffled_batches(8, torch.Generator().manual_seed(3))
    for span in (range(0, 4), range(4, 10)):
        train_steps(parts, batches, steps=10, lr=0.1, weight_decay=1e-4, span=span, optimizer=optimizer)
    for (name, a), b in zip(whole.state_dict().items(), parts.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_sigkilled_finetune_resumes_and_ends_where_an_uninterrupted_run_ends(
    stored: tuple[optuna.Study, str, int], tmp_path: Path
) -> None:
    study, storage, number = stored
    ready = tmp_path / "ready"
    script = tmp_path / "killed_finetune.py"
    script.write_text(KILLED_AFTER_CHECKPOINTS, encoding="utf-8")
    resumed, uninterrupted = tmp_path / "resumed", tmp_path / "uninterrupted"
    command = [sys.executable, str(script), "2", str(ready), *_args(storage, number, resumed, "--epochs", "4")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the fine-tune never wrote its second checkpoint"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    (checkpoint,) = Path(str(StudyRecord.from_study(study).artifacts)).glob(f"finetune/trial-{number}-*/{CHECKPOINT}")
    killed_at = torch.load(checkpoint, weights_only=True)
    assert killed_at["step"] == 2 * killed_at["recipe"]["steps_per_epoch"] < killed_at["recipe"]["steps"]
    assert not resumed.exists()

    assert main(_args(storage, number, resumed, "--epochs", "4")) == 0
    assert main(_args(storage, number, uninterrupted, "--epochs", "4", "--fresh")) == 0
    a, b = _weights(resumed), _weights(uninterrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta_a, meta_b = (json.loads((out / "policy.json").read_text()) for out in (resumed, uninterrupted))
    assert meta_a["figures"]["accuracy"] == meta_b["figures"]["accuracy"]
    assert meta_a["figures"]["test_accuracy"] == meta_b["figures"]["test_accuracy"]
    history = meta_a["final_finetune"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert [h["val_accuracy"] for h in history] == [h["val_accuracy"] for h in meta_b["final_finetune"]["history"]]
    assert "## Final fine-tune" in (resumed / "model-card.md").read_text()


def test_a_finished_recipe_trains_no_further(stored: tuple[optuna.Study, str, int]) -> None:
    study, storage, number = stored
    data = study_data(study)
    recipe = recipe_for(study, number, data, FinetuneSettings(steps=5, distill_weight=0.5))
    assert recipe.steps == 5 and recipe.epochs == 1 and recipe.distill_weight == 0.5
    first = final_finetune(study, number, trial_model(study, number, storage=storage), data, recipe, storage=storage)
    again = final_finetune(study, number, trial_model(study, number, storage=storage), data, recipe, storage=storage)
    assert first.resumed_at == 0 and again.resumed_at == recipe.steps
    assert again.history == first.history
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_distillation_needs_the_base_model_on_this_machine(
    stored: tuple[optuna.Study, str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study, storage, number = stored
    base = StudyRecord.from_study(study).base_checkpoint
    moved = tmp_path / "base.pt"
    base.rename(moved)
    try:
        assert main(_args(storage, number, tmp_path / "out", "--steps", "3", "--distill-weight", "0.5")) != 0
    finally:
        moved.rename(base)
    assert "the study's base model is not on this machine" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epochs": 2, "steps": 10}, "--epochs or as --steps, not both"),
        ({"epochs": 0}, "at least one step"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"distill_weight": 1.5}, r"in \[0, 1\]"),
        ({"distill_temperature": 0.0}, "temperature must be > 0"),
    ],
)
def test_settings_are_checked(settings: dict[str, float], message: str) -> None:
    with pytest.raises(AutopruneError, match=message):
        FinetuneSettings(**settings)  # type: ignore[arg-type]


def test_the_benchmark_tables_the_picked_model_as_searched_and_fine_tuned(
    stored: tuple[optuna.Study, str, int], tmp_path: Path
) -> None:
    _study, storage, _number = stored
    argv = ["--storage", storage, "--study", NAME, "--max-macs", "100%", "--epochs", "1", "--distill-weights", "0"]
    assert bench([*argv, "--out", str(tmp_path / "report"), "--exports", str(tmp_path / "exports")]) == 0
    text = (tmp_path / "report" / "results.md").read_text()
    assert "| base (unpruned) | – |" in text and "as searched | – |" in text
    assert re.search(r"\| trial \d+, final fine-tune \| 0 \| 0\.\d{4} \| 0\.\d{4} \| [+-]\d+\.\d\d pt \|", text)
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["alpha-0", "as-searched"]

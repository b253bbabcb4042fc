"""Memory across trials: nothing of a finished trial outlives it, and the memory benchmark's report."""

from __future__ import annotations

import csv
import gc
import weakref
from pathlib import Path

import optuna
import pytest
from conftest import DIGITS, tiny_config, tiny_overrides
from optuna.trial import FrozenTrial
from torch import nn

from autoprune.bench.memory import Sample, main, proc_status_mb
from autoprune.policy import Policy
from autoprune.search.run import run_study
from autoprune.trial.evaluate import Continuation, TrialEvaluator, TrialResult


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One runs folder for the module, so the digits base model is trained once."""
    return tmp_path_factory.mktemp("memory") / "runs"


@pytest.mark.parametrize("scorer", ["l1", "taylor", "gradient_norm"])
def test_no_model_of_a_finished_trial_outlives_it(
    scorer: str, shared_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every module of a trial's model is dead by the time the study's callbacks run after it (the
    next trial's copy must not come on top of it), and no collection is needed afterwards."""
    models: list[list[weakref.ref[nn.Module]]] = []
    alive: list[list[int]] = []
    evaluate = TrialEvaluator.evaluate

    def recording(self: TrialEvaluator, policy: Policy, start: Continuation | None = None) -> TrialResult:
        result = evaluate(self, policy, start=start)
        assert result.model is not None
        models.append([weakref.ref(m) for m in result.model.modules()])
        return result

    def living() -> list[int]:
        return [i for i, refs in enumerate(models) if any(ref() is not None for ref in refs)]

    def check(study: optuna.Study, trial: FrozenTrial) -> None:
        alive.append(living())

    monkeypatch.setattr(TrialEvaluator, "evaluate", recording)
    config = tiny_config(
        shared_runs,
        f"memory-{scorer}",
        "study.trials=3",
        "study.baselines=[0.3, 0.5, 0.7]",
        f"space.scorers=['{scorer}']",
        f"space.default_scorer='{scorer}'",
    )
    run_study(config, storage=f"sqlite:///{tmp_path / 'memory.db'}", callbacks=[check])
    assert len(models) == 3
    gc.collect()
    assert living() == [], "modules of finished trials kept alive: a leak"
    assert alive == [[], [], []], "modules of finished trials alive until a full garbage collection"


def test_report_has_a_row_per_trial(shared_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "memory.md"
    sets = [a for o in [*tiny_overrides(shared_runs), "study.baselines=[0.5]"] for a in ("--set", o)]
    assert main([str(DIGITS), "--trials", "2", *sets, "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Resident memory per trial: digits")
    assert "Command: `python -m autoprune.bench.memory " in text and "--trials 2" in text
    with out.with_suffix(".csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["trial"] for r in rows] == ["-1", "0", "1"] and rows[0]["state"] == "start"
    assert list(rows[0]) == list(Sample.__dataclass_fields__)
    peaks = [float(r["peak_mb"]) for r in rows]
    assert peaks == sorted(peaks)
    for row in rows:
        assert 0 < float(row["rss_mb"]) <= float(row["peak_mb"])
        assert int(row["modules"]) > 0 and int(row["tensors"]) > 0
    assert 0 < proc_status_mb("VmRSS") <= proc_status_mb("VmHWM")

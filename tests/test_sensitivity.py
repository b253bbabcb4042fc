"""Sensitivity analysis: a group that carries nothing is flat and least sensitive; the analysis is
cached per base model; ``autoprune sensitivity`` writes its files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import DIGITS, tiny_config, tiny_overrides
from torch import nn

import autoprune.trial.sensitivity as sensitivity_module
from autoprune.cli import main
from autoprune.data import load_data
from autoprune.results.sensitivity import FILES
from autoprune.search.sensitivity import cached_sensitivity
from autoprune.trial.finetune import train_steps
from autoprune.trial.sensitivity import Sensitivity, analyse
from autoprune.trial.surgery import TracedModel

RATIOS = (0.25, 0.5, 0.75)


class TwoBranches(nn.Module):
    """Two conv branches, pooled, concatenated, then a linear head. ``dead``'s weights are zero, so
    its channels are zero whatever the input: removing them cannot change the output."""

    def __init__(self) -> None:
        super().__init__()
        self.live = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dead = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [branch(x).mean((2, 3)) for branch in (self.live, self.dead)]
        return self.head(torch.cat(pooled, 1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TwoBranches, object]:
    data = load_data(tiny_config(tmp_path_factory.mktemp("runs"), "s").data)
    torch.manual_seed(0)
    model = TwoBranches()
    with torch.no_grad():
        model.dead[0].weight.zero_()
        model.dead[0].bias.zero_()
    # ReLU's gradient at 0 is 0: the dead branch gets no gradient and stays zero
    batches = data.train.shuffled_batches(64, torch.Generator().manual_seed(0))
    train_steps(model, batches, steps=300, lr=0.05, weight_decay=0.0)
    assert not model.dead[0].weight.any()
    return model.eval(), data


def _analyse(model: nn.Module, data: object) -> Sensitivity:
    x = data.val.x[:1]  # type: ignore[attr-defined]
    batches = data.train.shuffled_batches(64, torch.Generator().manual_seed(1))  # type: ignore[attr-defined]
    traced = TracedModel(model, x)
    return analyse(
        traced,
        traced.groups,
        val=data.val,  # type: ignore[attr-defined]
        calibration=[next(batches) for _ in range(2)],
        bn_batches=2,
        scorer="l1",
        ratios=RATIOS,
        batch_size=128,
    )


def test_a_group_that_carries_nothing_is_flat_and_least_sensitive(trained: tuple[nn.Module, object]) -> None:
    model, data = trained
    result = _analyse(model, data)
    assert set(result.groups) == {"live.0", "dead.0"}
    assert [p.ratio for p in result.curve("dead.0")] == list(RATIOS)
    assert [p.kept for p in result.curve("dead.0")] == [12, 8, 4]
    for p in result.curve("dead.0"):
        assert p.loss == pytest.approx(result.base_loss, abs=1e-5)
        assert p.accuracy == result.base_accuracy
    live = result.curve("live.0")
    assert live[-1].loss > result.base_loss + 0.05
    assert [g for g, _rise in result.ranking()] == ["dead.0", "live.0"]
    assert result.penalty("dead.0", 0.25) == pytest.approx(0.0, abs=1e-5)
    assert result.penalty("live.0", 0.25) > 0
    assert Sensitivity.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_the_analysis_is_cached_per_base_model(
    trained: tuple[nn.Module, object], runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = trained
    config = tiny_config(runs_dir, "s", "sensitivity.ratios=[0.5]", "sensitivity.samples=100")
    checkpoint = runs_dir / "base.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save(model.state_dict(), checkpoint)
    traced = TracedModel(model, data.val.x[:1])  # type: ignore[attr-defined]
    first, cache = cached_sensitivity(config, data, traced, checkpoint)  # type: ignore[arg-type]
    assert cache.is_file() and len(first.points) == 2

    surgeries = []
    real = sensitivity_module.Surgery

    def counting(*args: object, **kwargs: object) -> object:
        surgeries.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sensitivity_module, "Surgery", counting)
    again, same_cache = cached_sensitivity(config, data, traced, checkpoint)  # type: ignore[arg-type]
    assert (again, same_cache, surgeries) == (first, cache, [])

    with torch.no_grad():  # other weights: another analysis
        next(model.parameters()).add_(0.01)
    other = runs_dir / "other.pt"
    torch.save(model.state_dict(), other)
    _result, other_cache = cached_sensitivity(config, data, traced, other)  # type: ignore[arg-type]
    assert other_cache != cache and len(surgeries) == 2


def test_the_command_prints_the_ranking_and_writes_its_files(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sensitivity", str(DIGITS), "--out", str(runs_dir / "out")]
    for item in [*tiny_overrides(runs_dir), "sensitivity.ratios=[0.3, 0.6]", "sensitivity.samples=100"]:
        args += ["--set", item]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == [
        "group",
        "channels",
        "mean",
        "loss",
        "+",
        "val",
        "acc",
        "@",
        "0.6",
        "MACs",
        "saved",
        "@",
        "0.6",
    ]
    for name in FILES:
        assert (runs_dir / "out" / name).stat().st_size > 0
    rows = (runs_dir / "out" / "sensitivity.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 * 2  # the digits model's 5 groups at 2 ratios
    assert "Plotly.newPlot" in (runs_dir / "out" / "sensitivity.html").read_text()
    assert main(args) == 0  # a rerun reads the cache
    assert "cached in" in capsys.readouterr().out

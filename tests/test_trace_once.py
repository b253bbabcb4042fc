"""Trace once per study: a trial prunes a copy of the traced model and graph, never tracing again,
and gets exactly the model that tracing its own copy gives."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch_pruning as tp
from conftest import tiny_config
from torch import nn

from autoprune.models import build_model
from autoprune.policy import Policy
from autoprune.scorers import make_scorer
from autoprune.search.run import run_study
from autoprune.trial import surgery as surgery_module
from autoprune.trial.surgery import Surgery, TracedModel, rebuild

MODELS = {
    "digits_resnet": (1, 8),
    "digits_branchnet": (1, 8),  # a concatenation: its groups' indices shift as branches lose channels
    "fmnist_cnn": (1, 28),  # a flatten: each channel maps to 49 inputs of the hidden layer
    "mobilenet_small": (1, 28),  # depthwise convolutions and residual adds
}


@pytest.fixture
def traces(monkeypatch: pytest.MonkeyPatch) -> list[nn.Module]:
    """The models torch-pruning traces from now on, one entry per trace."""
    traced: list[nn.Module] = []
    real = tp.dependency.DependencyGraph._trace

    def counting(self: tp.dependency.DependencyGraph, model: nn.Module, *args: object, **kwargs: object) -> object:
        traced.append(model)
        return real(self, model, *args, **kwargs)

    monkeypatch.setattr(tp.dependency.DependencyGraph, "_trace", counting)
    return traced


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    channels, size = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=channels, image_size=size).eval()
    return model, torch.randn(4, channels, size, size)


def _policies(names: list[str]) -> list[Policy]:
    every = {g: 0.2 + 0.5 * (i % 3) / 2 for i, g in enumerate(names)}
    return [
        Policy(every, "l1", 1, 0.01),
        Policy(every, "taylor", 1, 0.01, prune_steps=2, channel_multiple=2),
        Policy(dict.fromkeys(names, 0.4), "fpgm", 1, 0.01, global_ranking=True, group_bias={names[0]: 1.0}),
        Policy({names[-1]: 0.5}, "bn_scale", 1, 0.01),
    ]


def _pruned(model: nn.Module, x: torch.Tensor, policy: Policy, names: list[str], graph: object = None) -> Surgery:
    torch.manual_seed(1)
    calibration = [(x, torch.arange(len(x)) % 10)]
    surgery = Surgery(model, x[:1], policy, make_scorer(policy.scorer, seed=0), groups=names, graph=graph)
    for _ in range(surgery.steps):
        surgery.step(calibration)
    return surgery


@pytest.mark.parametrize("name", list(MODELS))
def test_a_copy_of_the_traced_model_prunes_as_tracing_its_own_copy_does(name: str, traces: list[nn.Module]) -> None:
    model, x = _model(name)
    before = copy.deepcopy(model.state_dict())
    traced = TracedModel(model, x[:1])
    assert len(traces) == 1
    for policy in _policies(traced.names):
        fresh = _pruned(copy.deepcopy(model), x, policy, traced.names)
        count = len(traces)
        copied, graph = traced.copy()
        reused = _pruned(copied, x, policy, traced.names, graph)
        assert len(traces) == count, "surgery on a traced copy traced again"
        assert reused.removed() == fresh.removed(), policy
        assert reused.kept() == fresh.kept()
        assert reused.kept() != {g.name: g.channels for g in traced.groups}
        with torch.no_grad():
            assert torch.equal(reused.model(x), fresh.model(x))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the traced model was edited"
    assert not traced.graph.pruning_history()


def test_a_rebuild_from_a_traced_copy_replays_the_removals_without_tracing(traces: list[nn.Module]) -> None:
    model, x = _model("digits_branchnet")
    traced = TracedModel(model, x[:1])
    pruned = _pruned(copy.deepcopy(model), x, _policies(traced.names)[0], traced.names)
    count = len(traces)
    skeleton, graph = traced.copy("cpu")
    rebuild(skeleton, x[:1], pruned.kept(), pruned.removed(), graph=graph)
    assert len(traces) == count
    assert [p.shape for p in skeleton.parameters()] == [p.shape for p in pruned.model.parameters()]


def test_the_pruner_takes_the_graph_it_is_given_and_its_module_is_restored(traces: list[nn.Module]) -> None:
    """Pins how a graph reaches torch-pruning's pruner (its constructor traces and takes no graph)."""
    model, x = _model("digits_resnet")
    traced = TracedModel(model, x[:1])
    copied, graph = traced.copy()
    module = sys.modules[tp.pruner.BasePruner.__module__]
    real = module.dependency
    pruner = surgery_module._pruner(copied, x[:1], graph)
    assert pruner.DG is graph and graph.model is copied and len(traces) == 1
    assert module.dependency is real
    with pytest.raises(Exception, match="another model"):
        surgery_module._pruner(copy.deepcopy(model), x[:1], graph)
    assert module.dependency is real


def test_a_study_traces_its_base_model_once(runs_dir, traces: list[nn.Module]) -> None:
    """Trials, baselines, the budget check and the kept weights' rebuilds all start from the one trace."""
    config = tiny_config(runs_dir, "trace-once", "study.trials=6", "budget.max_macs='90%'")
    study = run_study(config, storage=f"sqlite:///{runs_dir.parent / 'trace.db'}")
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 6
    assert any(t.user_attrs.get("weights_sha256") for t in study.trials), "no trial's weights were kept"
    assert len(traces) == 1, f"{len(traces)} traces for one study"

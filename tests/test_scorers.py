"""Scorers: a shared conformance test, then each scorer against its definition computed here by hand."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from autoprune.models import build_model
from autoprune.scorers import SCORERS, GradientNorm, Scorer, make_scorer
from autoprune.trial.surgery import find_groups

NUM_CLASSES = 3


class TinyNet(nn.Module):
    """conv1(3→c) + BN + ReLU → conv2(c→4) → global pool → linear(4→3)."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 4, 3, padding=1)
        self.fc = nn.Linear(4, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The activation conv2 consumes: what a removed conv1 channel zeroes."""
        return torch.relu(self.bn(self.conv1(x)))

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.conv2(a), 1).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def tiny_net(width: int = 6, seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet(width)
    with torch.no_grad():  # non-trivial BatchNorm, still the same for every channel's sign pattern
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(0.1, 0.5)
        model.bn.running_mean.uniform_(-0.1, 0.1)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def batches(n: int = 2, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 3, 6, 6, generator=generator), torch.randint(0, NUM_CLASSES, (8,), generator=generator))
        for _ in range(n)
    ]


def conv1_group(model: TinyNet):
    x = torch.randn(1, 3, 6, 6)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    channels = model.conv1.out_channels
    return graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(channels)))


def group_of(model: nn.Module, layer: nn.Module, x: torch.Tensor):
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    fn = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
    channels = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    return graph.get_pruning_group(layer, fn, idxs=list(range(channels)))


def score(name: str, model: nn.Module, group, seed: int = 0, data=None) -> torch.Tensor:
    scorer = make_scorer(name, seed=seed)
    if scorer.needs_data:
        scorer.prepare(model, batches() if data is None else data, F.cross_entropy)
    return scorer(group)


# ---------------------------------------------------------------------------------------------------------------
# conformance: every registered scorer


def test_registry_holds_the_documented_scorers() -> None:
    assert set(SCORERS.names()) >= {"l1", "l2", "fpgm", "bn_scale", "random", "taylor", "gradient_norm"}
    for name in SCORERS.names():
        scorer = make_scorer(name)
        assert isinstance(scorer, Scorer)
        assert scorer.name == name
        assert scorer.needs_data == (name in {"taylor", "gradient_norm"})


def test_the_old_name_of_gradient_norm_is_accepted_with_a_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoprune.config import config_from_dict

    monkeypatch.setattr(SCORERS, "_warned", set())  # it warns once per process
    monkeypatch.setattr(logging.getLogger("autoprune"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="autoprune")
    space = config_from_dict({"space": {"scorers": ["sensitivity", "l1"], "default_scorer": "sensitivity"}}).space
    assert (space.scorers, space.default_scorer) == (("gradient_norm", "l1"), "gradient_norm")
    assert isinstance(make_scorer("sensitivity"), GradientNorm) and "sensitivity" not in SCORERS.names()
    assert "scorer 'sensitivity' is now called 'gradient_norm'" in caplog.text


@pytest.mark.parametrize("name", SCORERS.names())
def test_conformance(name: str) -> None:
    model = tiny_net()
    group = conv1_group(model)
    scores = score(name, model, group)
    assert isinstance(scores, torch.Tensor)
    assert scores.dim() == 1
    assert scores.dtype.is_floating_point
    assert len(scores) == model.conv1.out_channels == 6
    assert torch.isfinite(scores).all()
    assert (scores >= 0).all()

    # same seed, same model, same data: same scores
    fresh = tiny_net()
    again = score(name, fresh, conv1_group(fresh))
    assert torch.equal(scores, again)
    if name == "random":
        assert not torch.equal(scores, score(name, model, group, seed=1))


@pytest.fixture(scope="module")
def digits():
    """DigitsResNet, its residual group (block1.conv2.0 + stem.0) and its linear group (hidden), one batch."""
    torch.manual_seed(0)
    model = build_model("digits_resnet", num_classes=10, in_channels=1, image_size=8).eval()
    x = torch.randn(2, 1, 8, 8)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    groups = {
        "block1.conv2.0": graph.get_pruning_group(model.block1.conv2[0], tp.prune_conv_out_channels, list(range(32))),
        "hidden": graph.get_pruning_group(model.hidden, tp.prune_linear_out_channels, list(range(64))),
    }
    data = [(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))]
    return model, x, groups, data


@pytest.mark.parametrize("name", SCORERS.names())
def test_conformance_on_residual_and_linear_groups(name: str, digits) -> None:
    model, _x, groups, data = digits
    for group_name, channels in (("block1.conv2.0", 32), ("hidden", 64)):
        scores = score(name, model, groups[group_name], data=data)
        assert scores.shape == (channels,)
        assert torch.isfinite(scores).all()


def test_scoring_leaves_the_model_alone() -> None:
    model = tiny_net()
    group = conv1_group(model)
    model.train()  # (building torch-pruning's dependency graph leaves a model in eval mode)
    before = copy.deepcopy(model.state_dict())
    for name in SCORERS.names():
        score(name, model, group)
        assert model.training, name
        assert all(p.grad is None for p in model.parameters()), name
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), (name, key)


# ---------------------------------------------------------------------------------------------------------------
# definitions


def test_l1_l2_equal_filter_norms_and_zero_filter_ranks_lowest() -> None:
    model = tiny_net()
    with torch.no_grad():
        model.conv1.weight[2] = 0.0
    weight = model.conv1.weight.detach()
    l1 = torch.stack([weight[c].abs().sum() for c in range(6)])
    l2 = torch.stack([weight[c].pow(2).sum().sqrt() for c in range(6)])
    group = conv1_group(model)
    for name, expected in (("l1", l1), ("l2", l2)):
        scores = score(name, model, group)
        assert torch.allclose(scores, expected), name
        assert scores[2] == 0.0
        assert int(scores.argmin()) == 2
        assert (scores[torch.arange(6) != 2] > 0).all()


def test_l1_ignores_bias_and_consumers() -> None:
    """The channel's own filters only: the next layer's input weights do not count."""
    model = tiny_net()
    expected = model.conv1.weight.detach().abs().sum((1, 2, 3))
    with torch.no_grad():
        model.conv2.weight[:, 1] *= 100.0
    assert torch.allclose(score("l1", model, conv1_group(model)), expected)


def test_l1_on_a_linear_group() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    group = group_of(model, model[0], torch.randn(1, 5))
    assert torch.allclose(score("l1", model, group), model[0].weight.detach().abs().sum(1))


def test_bn_scale_equals_abs_gamma() -> None:
    model = tiny_net()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.7, -1.3, 0.0, 2.0, -0.4, 1.1]))
    scores = score("bn_scale", model, conv1_group(model))
    assert torch.allclose(scores, torch.tensor([0.7, 1.3, 0.0, 2.0, 0.4, 1.1]))
    assert int(scores.argmin()) == 2


def test_bn_scale_without_batchnorm_falls_back_to_l1() -> None:
    model = tiny_net()
    group = group_of(model, model.conv2, torch.randn(1, 3, 6, 6))
    expected = model.conv2.weight.detach().abs().sum((1, 2, 3))
    assert torch.allclose(score("bn_scale", model, group), expected)


@pytest.mark.parametrize("name", ["taylor", "gradient_norm"])
def test_channel_that_never_reaches_the_loss_scores_zero(name: str) -> None:
    model = tiny_net()
    with torch.no_grad():
        model.conv2.weight[:, 3] = 0.0  # channel 3 of conv1 is computed, then discarded
    scores = score(name, model, conv1_group(model))
    assert scores[3] == 0.0
    assert int(scores.argmin()) == 3
    assert (scores[torch.arange(6) != 3] > 0).all()


def test_taylor_equals_first_order_estimate() -> None:
    """|Σ a·∂L/∂a| over conv2's input activation, per channel, summed over batches after the abs."""
    model = tiny_net()
    data = batches(3)
    expected = torch.zeros(6)
    for x, y in data:
        a = model.features(x).detach().requires_grad_(True)
        F.cross_entropy(model.head(a), y).backward()
        expected += (a.detach() * a.grad).sum((0, 2, 3)).abs()
    scores = score("taylor", model, conv1_group(model), data=data)
    assert torch.allclose(scores, expected, rtol=1e-4, atol=1e-7)


def test_taylor_tracks_the_brute_force_loss_change() -> None:
    """Removing a channel for real (zeroing it at conv2's input) on one batch, in eval mode."""
    model = tiny_net()
    data = batches(1)
    x, y = data[0]
    with torch.no_grad():
        base = float(F.cross_entropy(model(x), y))
        change = []
        for c in range(6):
            removed = copy.deepcopy(model)
            removed.conv2.weight[:, c] = 0.0
            change.append(abs(float(F.cross_entropy(removed(x), y)) - base))
    change_t = torch.tensor(change)
    least, most = int(change_t.argmin()), int(change_t.argmax())
    assert least != most
    scores = score("taylor", model, conv1_group(model), data=data)
    assert scores[least] < scores[most]
    # the first-order estimate should track the true change reasonably overall
    rank_true = change_t.argsort().argsort().float()
    rank_taylor = scores.argsort().argsort().float()
    assert torch.corrcoef(torch.stack([rank_true, rank_taylor]))[0, 1] > 0.5


def test_gradient_norm_is_the_norm_of_the_loss_gradient_over_own_parameters() -> None:
    model = tiny_net()
    data = batches(2)
    expected = torch.zeros(6)
    for x, y in data:
        probe = copy.deepcopy(model)
        F.cross_entropy(probe(x), y).backward()
        expected += probe.conv1.weight.grad.pow(2).sum((1, 2, 3))
        expected += probe.bn.weight.grad.pow(2) + probe.bn.bias.grad.pow(2)
    scores = score("gradient_norm", model, conv1_group(model), data=data)
    assert torch.allclose(scores, expected.sqrt(), rtol=1e-4, atol=1e-8)


def test_fpgm_equals_distance_sums_and_median_ranks_lowest() -> None:
    model = tiny_net(width=5)
    torch.manual_seed(3)
    centre = torch.randn(3, 3, 3)
    d1, d2 = torch.randn(3, 3, 3), torch.randn(3, 3, 3)
    filters = torch.stack([centre + d1, centre - d1, centre, centre + d2, centre - d2])
    with torch.no_grad():
        model.conv1.weight.copy_(filters)
    # filters symmetric around `centre`, which is itself a filter: it is their geometric median
    flat = filters.flatten(1)
    expected = torch.tensor([sum(float((flat[i] - flat[j]).pow(2).sum().sqrt()) for j in range(5)) for i in range(5)])
    scores = score("fpgm", model, conv1_group(model))
    assert torch.allclose(scores, expected, rtol=1e-5)
    assert int(scores.argmin()) == 2
    assert (scores[torch.arange(5) != 2] > scores[2]).all()


def test_fpgm_is_exact_for_near_equal_filters_in_a_wide_layer() -> None:
    """Above 25 filters torch.cdist's default switches to a matmul formula whose cancellation error
    (~1e-3 here) swamps the distances between near-equal filters, the very case FPGM exists for."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 32, 3, bias=False)
    centre = torch.randn(27)
    spread = 3e-4 * torch.randn(15, 27)
    filters = torch.cat([centre[None], centre + spread, centre - spread, centre[None] + 1e-3 * torch.randn(1, 27)])
    with torch.no_grad():
        conv.weight.copy_(filters.reshape(32, 3, 3, 3))
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(32, 2, 1))
    scores = score("fpgm", model, group_of(model, conv, torch.randn(1, 3, 5, 5)))
    flat = conv.weight.detach().flatten(1)
    expected = torch.stack([(flat[i] - flat).pow(2).sum(1).sqrt().sum() for i in range(32)])
    assert torch.allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert int(scores.argmin()) == 0


# ---------------------------------------------------------------------------------------------------------------
# residual groups: several convs tied by an add


def test_l1_sums_over_every_conv_tied_by_the_residual_add(digits) -> None:
    model, x, groups, _data = digits
    found = {g.name: g for g in find_groups(model, x)}
    assert "block1.conv2.0" in found
    assert {"stem.0", "block1.conv2.0", "down.0", "block1.conv1.0"} <= set(found["block1.conv2.0"].layers)

    group = groups["block1.conv2.0"]
    assert group[0].dep.target.module is model.block1.conv2[0]
    stem, conv2 = model.stem[0].weight.detach(), model.block1.conv2[0].weight.detach()
    expected_l1 = stem.abs().sum((1, 2, 3)) + conv2.abs().sum((1, 2, 3))
    assert torch.allclose(score("l1", model, group), expected_l1)
    expected_l2 = (stem.pow(2).sum((1, 2, 3)) + conv2.pow(2).sum((1, 2, 3))).sqrt()
    assert torch.allclose(score("l2", model, group), expected_l2)
    # the consumers (block1.conv1.0, down.0) read these channels but are not counted
    gammas = model.stem[1].weight.detach().abs() + model.block1.conv2[1].weight.detach().abs()
    assert torch.allclose(score("bn_scale", model, group), gammas)
    # fpgm: distances between the concatenated filters of both convs
    both = torch.cat([stem.flatten(1), conv2.flatten(1)], dim=1)
    distances = torch.stack([(both[i] - both).pow(2).sum(1).sqrt().sum() for i in range(32)])
    assert torch.allclose(score("fpgm", model, group), distances, rtol=1e-5)


def test_l1_across_a_flatten_maps_back_to_root_channels() -> None:
    """A conv feeding a linear layer through a flatten: the consumer's indices differ from the root's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 4))
    x = torch.randn(1, 2, 2, 2)
    group = group_of(model, model[0], x)
    assert torch.allclose(score("l1", model, group), model[0].weight.detach().abs().sum((1, 2, 3)))
    data = [(torch.randn(5, 2, 2, 2), torch.randint(0, 4, (5,)))]
    a = torch.relu(model[0](data[0][0])).detach().requires_grad_(True)
    F.cross_entropy(model[3](a.flatten(1)), data[0][1]).backward()
    expected = (a.detach() * a.grad).sum((0, 2, 3)).abs()
    assert torch.allclose(score("taylor", model, group, data=data), expected, rtol=1e-4, atol=1e-7)

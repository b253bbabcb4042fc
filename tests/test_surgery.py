"""Surgery: channel counts after pruning, what it leaves alone, and rebuilding a skeleton from the counts.

torch-pruning's BasePruner (local ranking) keeps ``int(C * (1 - ratio))`` channels of a group with ``C``
channels; with ``round_to=m`` that count is then rounded down to a multiple of ``m``. Global ranking
removes ``total - int(total * (1 - ratio))`` channels over all groups together.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from autoprune.errors import AutopruneError, ConfigError
from autoprune.models import build_model
from autoprune.policy import Policy
from autoprune.scorers import make_scorer
from autoprune.trial.metrics import count_macs_params
from autoprune.trial.surgery import PrunableGroup, Surgery, find_groups, kept_channels, rebuild


def digits_resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("digits_resnet", num_classes=10, in_channels=1, image_size=8).eval()


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


MODELS = {
    "digits_resnet": (digits_resnet, (2, 1, 8, 8), "classifier"),
    "resnet18": (resnet18, (1, 3, 32, 32), "fc"),
}


@pytest.fixture(scope="module")
def bases() -> dict[str, tuple[nn.Module, torch.Tensor, dict[str, int]]]:
    """Each model unpruned (tests prune deep copies), its example input and its groups' channels."""
    torch.manual_seed(1)
    found = {}
    for name, (builder, shape, _output) in MODELS.items():
        model = builder()
        x = torch.randn(shape)
        found[name] = (model, x, {g.name: g.channels for g in find_groups(model, x)})
    return found


@pytest.fixture(scope="module")
def base_costs(bases) -> dict[str, tuple[int, int]]:
    return {name: count_macs_params(model, x[:1]) for name, (model, x, _channels) in bases.items()}


def policy(ratios: dict[str, float], **kwargs) -> Policy:
    return Policy(ratios=ratios, scorer=kwargs.pop("scorer", "l1"), finetune_steps=0, lr=0.1, **kwargs)


def prune(base: nn.Module, x: torch.Tensor, p: Policy, calibration=()) -> tuple[nn.Module, dict[str, int]]:
    model = copy.deepcopy(base)
    surgery = Surgery(model, x, p, make_scorer(p.scorer, seed=p.seed))
    for _ in range(p.prune_steps):
        surgery.step(calibration)
    return model, surgery.kept()


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].shape == value.shape, key
        assert torch.equal(after[key], value), key


# ---------------------------------------------------------------------------------------------------------------
# groups


def test_digits_groups() -> None:
    model = digits_resnet()
    groups = {g.name: g for g in find_groups(model, torch.randn(2, 1, 8, 8))}
    assert {name: g.channels for name, g in groups.items()} == {
        "block1.conv1.0": 32,
        "block1.conv2.0": 32,  # with stem.0, tied by the residual add
        "block2.conv1.0": 64,
        "block2.conv2.0": 64,  # with down.0
        "hidden": 64,
    }
    assert all(isinstance(g, PrunableGroup) for g in groups.values())
    assert "classifier" not in groups  # the output layer keeps its outputs
    assert {"stem.0", "stem.1", "block1.conv2.0", "block1.conv2.1"} <= set(groups["block1.conv2.0"].layers)
    assert {"down.0", "down.1", "block2.conv2.0"} <= set(groups["block2.conv2.0"].layers)
    assert "classifier" in groups["hidden"].layers  # as the consumer of hidden's outputs


def test_find_groups_leaves_the_model_alone(bases) -> None:
    model, x, _channels = bases["digits_resnet"]
    before = snapshot(model)
    find_groups(model, x)
    assert_same_state(model, before)
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------------------------------------------------------
# uniform ratios on both models


@pytest.mark.parametrize("ratio", [0.25, 0.5])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_uniform_ratio(bases, base_costs, model_name: str, ratio: float) -> None:
    base, x, channels = bases[model_name]
    builder, _shape, output = MODELS[model_name]
    before = snapshot(base)
    macs_before, params_before = base_costs[model_name]

    pruned, kept = prune(base, x, policy({name: ratio for name in channels}))

    assert kept == {name: int(c * (1 - ratio)) for name, c in channels.items()}
    macs, params = count_macs_params(pruned, x[:1])
    assert macs < macs_before
    assert params < params_before
    with torch.no_grad():
        assert pruned(x).shape == base(x).shape == (x.shape[0], 10)
    assert getattr(pruned, output).out_features == 10
    assert_same_state(base, before)  # surgery edits the copy only

    if ratio == 0.5:  # rebuild a fresh model from the counts alone
        fresh = builder()
        rebuilt = rebuild(fresh, x, kept)
        assert rebuilt is fresh
        assert shapes(rebuilt) == shapes(pruned)
        assert count_macs_params(rebuilt, x[:1]) == (macs, params)
        rebuilt.load_state_dict(pruned.state_dict())
        with torch.no_grad():
            assert torch.allclose(rebuilt.eval()(x), pruned.eval()(x))


def test_local_ranking_keeps_the_highest_scored_channels(bases) -> None:
    base, x, _channels = bases["digits_resnet"]
    pruned, kept = prune(base, x, policy({"block1.conv1.0": 0.5}))
    assert kept["block1.conv1.0"] == 16
    weight = base.block1.conv1[0].weight.detach()
    keep = weight.abs().sum((1, 2, 3)).topk(16).indices.sort().values
    assert torch.equal(pruned.block1.conv1[0].weight, weight[keep])
    assert torch.equal(pruned.block1.conv1[1].weight, base.block1.conv1[1].weight[keep])  # its BatchNorm
    assert torch.equal(pruned.block1.conv2[0].weight, base.block1.conv2[0].weight[:, keep])  # its consumer


def test_layer_ratios(bases) -> None:
    base, x, channels = bases["digits_resnet"]
    ratios = {"block1.conv1.0": 0.5, "block2.conv2.0": 0.25, "hidden": 0.3}
    pruned, kept = prune(base, x, policy(ratios))
    expected = dict(channels)
    expected.update({name: int(channels[name] * (1 - r)) for name, r in ratios.items()})
    assert (
        kept
        == expected
        == {
            "block1.conv1.0": 16,
            "block1.conv2.0": 32,
            "block2.conv1.0": 64,
            "block2.conv2.0": 48,
            "hidden": int(64 * 0.7),  # 44.8 -> 44
        }
    )
    assert pruned.down[0].out_channels == pruned.block2.conv2[0].out_channels == 48  # tied by the add
    assert pruned.stem[0].out_channels == 32


def test_zero_ratio_prunes_nothing(bases) -> None:
    base, x, channels = bases["digits_resnet"]
    pruned, kept = prune(base, x, policy({name: 0.0 for name in channels}))
    assert kept == channels
    assert shapes(pruned) == shapes(base)


def test_global_ranking(bases) -> None:
    base, x, channels = bases["digits_resnet"]
    total = sum(channels.values())
    for ratio in (0.25, 0.5):
        pruned, kept = prune(base, x, policy({name: ratio for name in channels}, global_ranking=True))
        # exact: the l1 scores of this model have no ties at the threshold
        assert total - sum(kept.values()) == total - int(total * (1 - ratio))
        assert all(0 < kept[name] <= channels[name] for name in channels)
        assert len(set(kept[name] / channels[name] for name in channels)) > 1  # not uniform
        with torch.no_grad():
            assert pruned(x).shape == (2, 10)


def test_group_bias_moves_channels_between_groups(bases) -> None:
    """A positive bias keeps more of its group, a negative one removes more; the total stays the target."""
    base, x, channels = bases["digits_resnet"]
    total = sum(channels.values())
    ratios = {name: 0.5 for name in channels}
    _plain, plain = prune(base, x, policy(ratios, global_ranking=True))
    for bias in (0.5, -0.5):
        _biased, biased = prune(base, x, policy(ratios, global_ranking=True, group_bias={"block2.conv1.0": bias}))
        assert sum(biased.values()) == sum(plain.values()) == int(total * 0.5)
        moved = biased["block2.conv1.0"] - plain["block2.conv1.0"]
        assert moved > 0 if bias > 0 else moved < 0
    _zero, zero = prune(base, x, policy(ratios, global_ranking=True, group_bias=dict.fromkeys(channels, 0.0)))
    assert zero == plain


@pytest.mark.parametrize("multiple", [1, 8])
def test_global_ranking_never_empties_or_skips_a_group(bases, multiple: int) -> None:
    """A group whose every score falls under the global threshold keeps its best ``multiple`` channels;
    torch-pruning alone would refuse to empty it and leave it wholly unpruned."""
    base, x, channels = bases["digits_resnet"]
    ratios = {name: 0.6 for name in channels}
    pruned, kept = prune(
        base, x, policy(ratios, global_ranking=True, group_bias={"hidden": -5.0}, channel_multiple=multiple)
    )
    assert kept["hidden"] == multiple
    assert all(multiple <= k < channels[name] for name, k in kept.items())
    with torch.no_grad():
        assert pruned(x).shape == (2, 10)


@pytest.mark.parametrize("prune_steps", [1, 3])
def test_global_ranking_never_cuts_a_group_beyond_max_ratio(bases, prune_steps: int) -> None:
    """A group the global ranking would all but empty keeps what uniform pruning at ``max_ratio`` keeps
    of its channels, over several prune steps too; the others make up the total."""
    base, x, channels = bases["digits_resnet"]
    ratios = {name: 0.5 for name in channels}
    sunk = {"hidden": -5.0}  # every channel of this group ranks below every other group's
    _free, free = prune(base, x, policy(ratios, global_ranking=True, group_bias=sunk, prune_steps=prune_steps))
    assert free["hidden"] == 1  # uncapped, it loses all but one channel
    capped_model, capped = prune(
        base, x, policy(ratios, global_ranking=True, group_bias=sunk, prune_steps=prune_steps, max_ratio=0.6)
    )
    assert capped["hidden"] == kept_channels(channels["hidden"], 0.6, 1) > 1
    assert all(k >= kept_channels(channels[name], 0.6, 1) for name, k in capped.items())
    assert abs(sum(capped.values()) - sum(free.values())) <= len(channels)  # the same total, to rounding
    with torch.no_grad():
        assert capped_model(x).shape == (2, 10)
    with pytest.raises(ConfigError, match="max_ratio"):
        policy(ratios, global_ranking=True, max_ratio=0.0)


def test_group_bias_needs_global_ranking() -> None:
    with pytest.raises(ConfigError, match="needs global_ranking"):
        policy({"hidden": 0.5}, group_bias={"hidden": 0.5})
    with pytest.raises(ConfigError, match="finite"):
        policy({"hidden": 0.5}, global_ranking=True, group_bias={"hidden": float("nan")})


def test_three_prune_steps_reach_the_one_step_counts(bases) -> None:
    base, x, channels = bases["digits_resnet"]
    for kwargs in ({}, {"channel_multiple": 8}):
        ratios = {name: 0.3 for name in channels}
        _one, kept_one = prune(base, x, policy(ratios, **kwargs))
        three, kept_three = prune(base, x, policy(ratios, prune_steps=3, **kwargs))
        assert kept_three == kept_one
        with torch.no_grad():
            assert three(x).shape == (2, 10)
    # global: the same total
    ratios = {name: 0.5 for name in channels}
    _one, kept_one = prune(base, x, policy(ratios, global_ranking=True))
    _three, kept_three = prune(base, x, policy(ratios, global_ranking=True, prune_steps=3))
    assert sum(kept_three.values()) == sum(kept_one.values())


def test_intermediate_steps_prune_progressively(bases) -> None:
    base, x, channels = bases["digits_resnet"]
    model = copy.deepcopy(base)
    surgery = Surgery(model, x, policy({"block1.conv1.0": 0.6}, prune_steps=3), make_scorer("l1"))
    counts = []
    for _ in range(3):
        surgery.step()
        counts.append(surgery.kept()["block1.conv1.0"])
    assert counts == [int(32 * (1 - 0.6 * k / 3)) for k in (1, 2, 3)] == [25, 19, 12]
    with pytest.raises(AutopruneError, match="already took"):
        surgery.step()


def test_channel_multiple(bases) -> None:
    base, x, channels = bases["digits_resnet"]
    pruned, kept = prune(base, x, policy({name: 0.4 for name in channels}, channel_multiple=8))
    assert kept == {name: int(c * 0.6) // 8 * 8 for name, c in channels.items()}
    assert kept == {
        "block1.conv1.0": 16,
        "block1.conv2.0": 16,
        "block2.conv1.0": 32,
        "block2.conv2.0": 32,
        "hidden": 32,
    }
    assert all(k % 8 == 0 for k in kept.values())
    with torch.no_grad():
        assert pruned(x).shape == (2, 10)


@pytest.mark.parametrize(("ratio", "multiple"), [(0.8, 8), (0.9, 8), (0.99, 1)])
def test_high_ratio_keeps_one_multiple_and_never_skips_the_group(bases, ratio: float, multiple: int) -> None:
    """Rounding ``int(C * (1 - ratio))`` down to the multiple can give zero channels; torch-pruning then
    skips the group entirely, so the higher ratio would prune nothing (32 channels kept at 0.8, 8 at 0.6)."""
    base, x, channels = bases["digits_resnet"]
    pruned, kept = prune(base, x, policy({name: ratio for name in channels}, channel_multiple=multiple))
    assert kept == {name: max(int(c * (1 - ratio)) // multiple * multiple, multiple) for name, c in channels.items()}
    assert all(k == multiple for k in kept.values())
    with torch.no_grad():
        assert pruned(x).shape == (2, 10)
    _lower, kept_lower = prune(base, x, policy({name: 0.6 for name in channels}, channel_multiple=multiple))
    assert all(kept[name] <= kept_lower[name] for name in channels)  # a higher ratio never keeps more


def test_data_scorer_through_surgery(bases) -> None:
    base, x, channels = bases["digits_resnet"]
    calibration = [(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))]
    p = policy({name: 0.5 for name in channels}, scorer="taylor", prune_steps=2)
    with pytest.raises(AutopruneError, match="needs calibration"):
        prune(base, x, p)
    pruned, kept = prune(base, x, p, calibration)
    assert kept == {name: c // 2 for name, c in channels.items()}
    with torch.no_grad():
        assert pruned(x).shape == (2, 10)


# ---------------------------------------------------------------------------------------------------------------
# rebuild


@pytest.mark.parametrize("kwargs", [{"global_ranking": True}, {"channel_multiple": 8}])
def test_rebuild_gives_the_pruned_shapes(bases, kwargs: dict) -> None:
    base, x, channels = bases["digits_resnet"]
    pruned, kept = prune(base, x, policy({name: 0.4 for name in channels}, **kwargs))
    assert {g.name: g.channels for g in find_groups(pruned, x)} == kept
    rebuilt = rebuild(digits_resnet(), x, kept)
    assert shapes(rebuilt) == shapes(pruned)
    assert count_macs_params(rebuilt, x[:1]) == count_macs_params(pruned, x[:1])
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), pruned.eval()(x))


def test_works_under_no_grad(bases) -> None:
    """Loading a pruned model for inference typically happens under ``torch.no_grad()``."""
    base, x, channels = bases["digits_resnet"]
    pruned, kept = prune(base, x, policy({name: 0.5 for name in channels}))
    with torch.no_grad():
        assert {g.name: g.channels for g in find_groups(base, x)} == channels
        rebuilt = rebuild(digits_resnet(), x, kept)
        model = copy.deepcopy(base)
        surgery = Surgery(model, x, policy({name: 0.5 for name in channels}), make_scorer("l1"))
        surgery.step()
    assert shapes(rebuilt) == shapes(pruned) == shapes(model)
    assert surgery.kept() == kept


def test_rebuild_with_unknown_group_raises(bases) -> None:
    _base, x, _channels = bases["digits_resnet"]
    with pytest.raises(AutopruneError, match="nope"):
        rebuild(digits_resnet(), x, {"nope": 3})


# ---------------------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("name", ["nope", "stem.0", "block1.conv1", "classifier"])
def test_unknown_group_in_policy_raises(bases, name: str) -> None:
    """Not a layer, a layer inside another group, a container, the output layer: none names a group."""
    base, x, _channels = bases["digits_resnet"]
    model = copy.deepcopy(base)
    with pytest.raises(AutopruneError, match="does not have"):
        Surgery(model, x, policy({name: 0.5, "hidden": 0.5}), make_scorer("l1"))
    assert_same_state(model, snapshot(base))


def test_unknown_group_in_global_policy_raises(bases) -> None:
    base, x, _channels = bases["digits_resnet"]
    with pytest.raises(AutopruneError, match="does not have"):
        Surgery(copy.deepcopy(base), x, policy({"nope": 0.5}, global_ranking=True), make_scorer("l1"))


def test_model_without_prunable_layers_raises() -> None:
    with pytest.raises(AutopruneError, match="no convolution or linear"):
        find_groups(nn.Sequential(nn.ReLU()), torch.randn(1, 3))


class _FixedWidth(nn.Module):
    """Runs only with exactly 8 channels: the kind of hard-coded shape surgery cannot fix."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).mean(dim=(2, 3))
        if x.shape[1] != 8:
            raise RuntimeError(f"expected 8 channels, got {x.shape[1]}")
        return self.fc(x)


def test_a_model_that_no_longer_runs_after_surgery_fails_clearly() -> None:
    model, x = _FixedWidth(), torch.randn(1, 1, 4, 4)
    surgery = Surgery(model, x, policy({"conv": 0.5}), make_scorer("l1"))
    with pytest.raises(AutopruneError, match="_FixedWidth no longer runs after surgery .*expected 8 channels, got 4"):
        surgery.step()

from __future__ import annotations

import math

import optuna
import pytest

from autoprune.config import SpaceSection
from autoprune.errors import ConfigError
from autoprune.policy import Policy
from autoprune.trial.space import SearchSpace

GROUPS = ["stem.0", "block1.conv1.0", "hidden"]


def make_policy(**changes: object) -> Policy:
    values: dict[str, object] = dict(
        ratios={"stem.0": 0.25, "block1.conv1.0": 0.5, "hidden": 0.0},
        scorer="taylor",
        finetune_steps=120,
        lr=0.01,
        prune_steps=2,
        channel_multiple=4,
        seed=7,
    )
    values.update(changes)
    return Policy(**values)  # type: ignore[arg-type]


def test_json_round_trip() -> None:
    policy = make_policy()
    assert Policy.from_json(policy.to_json()) == policy
    assert Policy.from_dict(policy.to_dict()) == policy


def test_from_dict_rejects_unknown_keys() -> None:
    data = make_policy().to_dict() | {"colour": "red"}
    with pytest.raises(ConfigError, match="unknown policy keys \\['colour'\\]"):
        Policy.from_dict(data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ratios": {"stem.0": 1.0}}, "must be in [0, 1)"),
        ({"prune_steps": 0}, "prune_steps = 0"),
        ({"lr": 0.0}, "lr = 0.0"),
        ({"finetune_steps": -1}, "finetune_steps = -1"),
    ],
)
def test_invalid_policies_are_rejected(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_policy(**changes)
    assert message in str(err.value)


@pytest.mark.parametrize("granularity", ["relative", "offset", "layer", "uniform", "global"])
def test_space_suggests_within_bounds_and_rebuilds_from_params(granularity: str) -> None:
    cfg = SpaceSection(granularity=granularity, ratio_min=0.1, ratio_max=0.7, finetune_steps_max=50, prune_steps_max=3)
    space = SearchSpace(cfg, GROUPS)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        trial = study.ask()
        policy = space.suggest(trial, seed=3)
        assert set(policy.ratios) == set(GROUPS)
        assert all(0.1 <= r <= 0.7 for r in policy.ratios.values())
        assert cfg.finetune_steps_min <= policy.finetune_steps <= 50
        assert 1 <= policy.prune_steps <= 3
        assert policy.scorer in cfg.scorers
        assert policy.global_ranking == (granularity in ("global", "relative"))
        if granularity == "offset":
            assert all(-cfg.offset_max <= trial.params[f"offset.{g}"] <= cfg.offset_max for g in GROUPS)
        if granularity == "relative":
            assert set(policy.group_bias) == set(GROUPS)
            assert all(-cfg.bias_max <= b <= cfg.bias_max for b in policy.group_bias.values())
        else:
            assert policy.group_bias == {}
        if granularity not in ("layer", "offset"):
            assert len(set(policy.ratios.values())) == 1
        assert space.from_params(trial.params, seed=3) == policy
        study.tell(trial, [0.5, 1.0])


def test_parameter_names_are_stable() -> None:
    space = SearchSpace(SpaceSection(granularity="layer"), GROUPS)
    study = optuna.create_study(directions=["maximize"])
    trial = study.ask()
    space.suggest(trial, seed=0)
    assert set(trial.params) == {f"ratio.{g}" for g in GROUPS} | {"scorer", "finetune_steps", "lr", "prune_steps"}


def test_relative_parameter_names() -> None:
    space = SearchSpace(SpaceSection(granularity="relative"), GROUPS)
    study = optuna.create_study(directions=["maximize"])
    trial = study.ask()
    space.suggest(trial, seed=0)
    rest = {"scorer", "finetune_steps", "lr", "prune_steps"}
    assert set(trial.params) == {"ratio"} | {f"bias.{g}" for g in GROUPS} | rest


def test_offset_ratios_follow_the_target_and_the_offsets() -> None:
    """Group g keeps e^offset times the channels the target leaves it, clipped to the ratio bounds."""
    space = SearchSpace(SpaceSection(granularity="offset", ratio_min=0.0, ratio_max=0.8), GROUPS)
    params = {**space.baseline_params(0.6), "offset.stem.0": math.log(2.0), "offset.hidden": -1.0}
    assert set(params) >= {"ratio"} | {f"offset.{g}" for g in GROUPS}
    policy = space.from_params(params, seed=0)
    assert not policy.global_ranking and policy.group_bias == {}
    assert policy.ratios["stem.0"] == pytest.approx(0.2)  # keeps 2 × 40 % of its channels
    assert policy.ratios["block1.conv1.0"] == pytest.approx(0.6)  # offset 0: the target
    assert policy.ratios["hidden"] == pytest.approx(0.8)  # 1 - 0.4 / e = 0.85, clipped to ratio_max
    params["offset.stem.0"] = 1.0
    assert space.from_params(params, seed=0).ratios["stem.0"] == 0.0  # 1 - 0.4 e < 0: clipped to ratio_min


def test_offset_baseline_is_uniform_pruning() -> None:
    space = SearchSpace(SpaceSection(granularity="offset"), GROUPS)
    policy = space.from_params(space.baseline_params(0.4), seed=0)
    assert not policy.global_ranking
    assert policy.ratios == dict.fromkeys(GROUPS, pytest.approx(0.4))


def test_fine_tune_length_is_fixed_when_not_searched() -> None:
    """Without the fine-tune cost among the objectives, every trial gets the full fine-tune budget."""
    cfg = SpaceSection(finetune_steps_min=10, finetune_steps_max=60)
    space = SearchSpace(cfg, GROUPS, search_finetune_steps=False)
    study = optuna.create_study(directions=["maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask()
        assert space.suggest(trial, seed=0).finetune_steps == 60
        assert "finetune_steps" not in trial.params
        study.tell(trial, 0.5)
    assert "finetune_steps" not in space.baseline_params(0.5)
    assert space.from_params(space.baseline_params(0.5), seed=0).finetune_steps == 60


def test_relative_baseline_is_plain_global_ranking() -> None:
    space = SearchSpace(SpaceSection(granularity="relative"), GROUPS)
    policy = space.from_params(space.baseline_params(0.4), seed=0)
    assert policy.global_ranking
    assert set(policy.ratios.values()) == {0.4}
    assert set(policy.group_bias.values()) == {0.0}


def test_baseline_params_describe_a_uniform_policy() -> None:
    space = SearchSpace(SpaceSection(lr_min=0.001, lr_max=0.1), GROUPS)
    policy = space.from_params(space.baseline_params(0.5), seed=0)
    assert set(policy.ratios.values()) == {0.5}
    assert policy.scorer == "l1"
    assert policy.finetune_steps == SpaceSection().finetune_steps_max
    assert policy.lr == pytest.approx(0.01)
    assert policy.prune_steps == 1

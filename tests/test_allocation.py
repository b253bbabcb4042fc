"""Allocation for a target, and the ``allocation`` search space built on it: the solver spends the
cheap-to-lose channels first, meets every target, and a trial's model lands on its target."""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from conftest import tiny_config
from torch import nn

import autoprune.trial.sensitivity as sensitivity_module
from autoprune.config import SpaceSection, config_from_dict
from autoprune.errors import ConfigError
from autoprune.models import build_model
from autoprune.policy import Policy
from autoprune.results.report import write_report
from autoprune.scorers import make_scorer
from autoprune.search.paths import storage_url
from autoprune.search.record import StudyRecord
from autoprune.search.run import run_study, run_worker
from autoprune.search.switch import SwitchSampler, switched
from autoprune.trial.allocation import LANDING, Allocator, Levels, kept_ratio
from autoprune.trial.cost import CostModel
from autoprune.trial.metrics import count_macs_params
from autoprune.trial.sensitivity import Point, Sensitivity
from autoprune.trial.space import SearchSpace
from autoprune.trial.surgery import Surgery, TracedModel

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def synthetic(groups: dict[str, int], rise: dict[str, float]) -> Sensitivity:
    """Loss rising linearly with the ratio, by ``rise[group]`` at ratio 1."""
    points = tuple(
        Point(g, r, c, int(c * (1 - r)), 1.0 + rise[g] * r, 0.9, 0, 0) for g, c in groups.items() for r in RATIOS
    )
    return Sensitivity("l1", 1.0, 0.9, 1, 1, points)


class ConvThenHidden(nn.Module):
    """An expensive convolution (most of the MACs) and a cheap hidden linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.hidden = nn.Linear(32, 32)
        self.out = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(torch.relu(self.stem(x)))).mean((2, 3))
        return self.out(torch.relu(self.hidden(x)))


def _fitted(model: nn.Module, x: torch.Tensor) -> tuple[CostModel, list[str]]:
    traced = TracedModel(model.eval(), x)
    return CostModel.fit(traced), traced.names


def test_kept_ratio_makes_surgery_keep_exactly_that_many() -> None:
    for channels in (3, 16, 96, 257):
        for kept in range(1, channels + 1):
            ratio = kept_ratio(kept, channels)
            assert 0.0 <= ratio < 1.0
            assert int(channels * (1 - ratio)) == kept


def test_levels_are_multiples_within_the_ratio_bounds() -> None:
    levels = Levels.of(np.array([16.0, 30.0]), multiple=4, ratio_min=0.0, ratio_max=0.8)
    assert levels.counts[0].tolist() == [4, 8, 12, 16]
    assert levels.counts[1].tolist() == [4, 8, 12, 16, 20, 24, 28, 30]  # int(30 * 0.2) = 6, down to 4: as surgery
    assert levels.snap(np.array([[9.9, 29.0]])).tolist() == [[8.0, 28.0]]


def test_the_cheap_insensitive_group_is_pruned_harder_than_the_expensive_sensitive_one() -> None:
    torch.manual_seed(0)
    model, x = ConvThenHidden(), torch.randn(1, 1, 8, 8)
    cost, names = _fitted(model, x)
    assert set(names) == {"stem", "conv", "hidden"}
    rise = {"stem": 1.0, "conv": 2.0, "hidden": 0.001}
    allocator = Allocator(synthetic(cost.base, rise), cost, ratio_max=0.8)
    for target in (0.9, 0.6, 0.4):
        kept = allocator.allocate(target)
        share = {g: kept[g] / cost.base[g] for g in names}
        assert share["hidden"] < share["conv"], (target, share)
    assert allocator.allocate(0.9)["hidden"] == int(32 * 0.2)  # all it may lose, before the conv loses any


def test_every_allocation_meets_its_target_within_one_step() -> None:
    torch.manual_seed(0)
    model = build_model("mobilenet_small", num_classes=10, in_channels=1, image_size=28)
    x = torch.randn(1, 1, 28, 28)
    cost, names = _fitted(model, x)
    rng = random.Random(0)
    allocator = Allocator(synthetic(cost.base, {g: rng.uniform(0.1, 3.0) for g in names}), cost, channel_multiple=2)
    low, high = allocator.bounds
    assert high == pytest.approx(1.0) and 0 < low < 0.2
    step = float(np.max(-np.diff(allocator._path_cost)))
    assert step < 0.03  # the resolution: the largest share of the base MACs one step saves
    for target in np.linspace(low, high, 40):
        nearest = allocator.allocate(float(target))
        assert all(k % 2 == 0 or k == cost.base[g] for g, k in nearest.items())
        assert abs(cost.predict(nearest)[0] / allocator.base_cost - target) <= step / 2 + 1e-9
        under = cost.predict(allocator.allocate(float(target), at_most=True))[0] / allocator.base_cost
        assert target - step - 1e-9 <= under <= target + 1e-9


def test_uniform_targets_round_as_surgery_does() -> None:
    torch.manual_seed(0)
    model, x = ConvThenHidden(), torch.randn(1, 1, 8, 8)
    cost, names = _fitted(model, x)
    allocator = Allocator(synthetic(cost.base, dict.fromkeys(names, 1.0)), cost, channel_multiple=8)
    for ratio in (0.1, 0.17, 0.5, 0.8):
        pruned = copy.deepcopy(model)
        policy = Policy(dict.fromkeys(names, ratio), "l1", 1, 0.01, channel_multiple=8)
        Surgery(pruned, x, policy, make_scorer("l1"), groups=names).step()
        counted = count_macs_params(pruned, x)[0] / count_macs_params(model, x)[0]
        assert allocator.uniform_target(ratio) == pytest.approx(counted), ratio


def test_a_group_of_attention_heads_keeps_whole_heads() -> None:
    levels = Levels.of(np.array([288.0, 192.0]), multiple=1, ratio_min=0.0, ratio_max=0.8, heads=(6, 0))
    assert levels.counts[0].tolist() == [48, 96, 144, 192, 240, 288]  # 1 to 6 heads of 48 qkv channels, as at ratio 0.8
    assert levels.counts[1].tolist() == list(range(38, 193))  # int(192 * 0.2) = 38 and up


def test_a_vit_trial_keeps_the_heads_the_allocator_chose_and_lands_on_its_target() -> None:
    torch.manual_seed(0)
    model = build_model("vit_small", num_classes=10, in_channels=1, image_size=28).eval()
    x = torch.randn(1, 1, 28, 28)
    cost, names = _fitted(model, x)
    assert cost.heads == {f"blocks.{i}.attn.qkv": 6 for i in range(4)}
    rng = random.Random(3)
    allocator = Allocator(synthetic(cost.base, {g: rng.uniform(0.1, 3.0) for g in names}), cost)
    space = SearchSpace(SpaceSection(granularity="allocation", scorers=("l1",)), names, allocator=allocator)
    base_macs = count_macs_params(model, x)[0]
    for _ in range(8):
        target = math.exp(rng.uniform(math.log(0.06), math.log(0.9)))
        params = {**space.baseline_params(0.5), "target": target, "mix": rng.random()}
        params |= {f"offset.{g}": rng.uniform(-0.7, 0.7) for g in names}
        kept, macs = _pruned_kept(model, x, space, params)
        assert kept == allocator.solve(target, params["mix"], {g: params[f"offset.{g}"] for g in names})
        assert abs(macs / base_macs - target) <= 0.02 * target, (target, macs / base_macs)
    for ratio in (0.1, 0.25, 0.5, 0.8):
        pruned = copy.deepcopy(model)
        Surgery(pruned, x, Policy(dict.fromkeys(names, ratio), "l1", 1, 0.01), make_scorer("l1"), groups=names).step()
        assert allocator.uniform_target(ratio) == pytest.approx(count_macs_params(pruned, x)[0] / base_macs), ratio


def test_levels_at_the_edges() -> None:
    levels = Levels.of(np.array([10.0, 3.0, 1.0]), multiple=4, ratio_min=0.1, ratio_max=0.8)
    assert levels.counts[0].tolist() == [4, 8]  # at most 9 kept (ratio_min 0.1), at least what surgery keeps at 0.8
    assert levels.counts[1].tolist() == [3] and levels.counts[2].tolist() == [1]  # smaller than a multiple: kept


def test_penalties_follow_the_channels_actually_removed() -> None:
    points = (
        Point("g", 0.3, 8, 5, 1.1, 0.9, 0, 0),  # int(8 * 0.7) = 5 kept: 0.375 removed
        Point("g", 0.8, 8, 1, 1.5, 0.5, 0, 0),
        Point("g", 0.9, 8, 1, 1.7, 0.4, 0, 0),  # capped: one kept, as at 0.8
    )
    curve = Sensitivity("l1", 1.0, 0.9, 1, 1, points)
    assert float(curve.penalty("g", 5 / 8)) == pytest.approx(0.1)
    assert float(curve.penalty("g", 1 / 8)) == pytest.approx(0.7)  # the worse of the two at the same count
    assert float(curve.penalty("g", 1.0)) == 0.0


@pytest.fixture(scope="module")
def mobilenet_space() -> tuple[nn.Module, torch.Tensor, SearchSpace, CostModel]:
    torch.manual_seed(0)
    model = build_model("mobilenet_small", num_classes=10, in_channels=1, image_size=28).eval()
    x = torch.randn(1, 1, 28, 28)
    cost, names = _fitted(model, x)
    rng = random.Random(1)
    cfg = SpaceSection(granularity="allocation", scorers=("l1",))
    allocator = Allocator(synthetic(cost.base, {g: rng.uniform(0.1, 3.0) for g in names}), cost)
    return model, x, SearchSpace(cfg, names, allocator=allocator), cost


def _pruned_kept(
    model: nn.Module, x: torch.Tensor, space: SearchSpace, params: dict[str, object]
) -> tuple[dict[str, int], float]:
    pruned = copy.deepcopy(model)
    surgery = Surgery(pruned, x, space.from_params(params, seed=0), make_scorer("l1"), groups=space.groups)
    surgery.step()
    return surgery.kept(), count_macs_params(pruned, x)[0]


def test_a_trial_lands_within_two_percent_of_its_target(mobilenet_space: tuple) -> None:
    model, x, space, cost = mobilenet_space
    base_macs = count_macs_params(model, x)[0]
    rng = random.Random(2)
    for _ in range(8):
        target = math.exp(rng.uniform(math.log(0.06), math.log(0.9)))
        params = {**space.baseline_params(0.5), "target": target, "mix": rng.random()}
        params |= {f"offset.{g}": rng.uniform(-0.7, 0.7) for g in space.groups}
        kept, macs = _pruned_kept(model, x, space, params)
        assert abs(macs / base_macs - target) <= 0.02 * target, (target, macs / base_macs)
        assert cost.predict(kept)[0] == pytest.approx(macs)


def test_zero_offsets_reproduce_the_allocation_and_uniform_pruning(mobilenet_space: tuple) -> None:
    model, x, space, _cost = mobilenet_space
    zero = dict.fromkeys((f"offset.{g}" for g in space.groups), 0.0)
    for target in (0.5, 0.25, 0.125):
        allocated, _macs = _pruned_kept(
            model, x, space, {**space.baseline_params(0.5), **zero, "target": target, "mix": 1.0}
        )
        assert allocated == space.allocator.allocate(target)  # type: ignore[union-attr]
        uniform, _macs = _pruned_kept(
            model, x, space, {**space.baseline_params(0.5), **zero, "target": target, "mix": 0.0}
        )
        shares = [uniform[g] / c for g, c in space.allocator.cost.base.items()]  # type: ignore[union-attr]
        assert max(shares) - min(shares) < 0.06, shares


def test_baselines_are_uniform_and_the_allocation_at_the_same_target(mobilenet_space: tuple) -> None:
    _model, _x, space, _cost = mobilenet_space
    uniform, allocation = space.baselines(0.5)
    assert (uniform["mix"], allocation["mix"]) == (0.0, 1.0)
    assert uniform["target"] == allocation["target"] == pytest.approx(space.allocator.uniform_target(0.5))  # type: ignore[union-attr]
    only = SearchSpace(
        SpaceSection(granularity="allocation", scorers=("l1",), references=("allocation",)),
        space.groups,
        allocator=space.allocator,
    )
    [params] = only.baselines(0.5)
    assert "mix" not in params
    assert only.from_params(params, seed=0).ratios == space.from_params(allocation, seed=0).ratios


def test_the_floor_of_the_space_is_one_baseline(mobilenet_space: tuple) -> None:
    _model, _x, space, _cost = mobilenet_space
    [floor] = space.baselines(space.cfg.ratio_max)  # uniform pruning and the allocation: the same policy there
    assert floor["mix"] == 0.0 and floor["target"] == space.allocator.bounds[0]  # type: ignore[union-attr]
    kept = space.allocator.solve(floor["target"], 0.0, {})  # type: ignore[union-attr]
    assert list(kept.values()) == space.allocator.levels.lowest.tolist()  # type: ignore[union-attr]
    # the lowest levels are what uniform surgery keeps at ratio_max: the floor is uniform pruning there
    assert floor["target"] == pytest.approx(space.allocator.uniform_target(space.cfg.ratio_max))  # type: ignore[union-attr]
    assert len(space.baselines("1%")) == 1  # a share below the floor lands there too


@pytest.mark.parametrize("share", ["50%", "25%", "12.5%"])
def test_baselines_at_a_share_of_the_base_macs_land_at_or_under_it_together(mobilenet_space: tuple, share: str) -> None:
    model, x, space, _cost = mobilenet_space
    base_macs = count_macs_params(model, x)[0]
    level = float(share[:-1]) / 100
    pair = space.baselines(share)
    assert [p["mix"] for p in pair] == [0.0, 1.0] and pair[0]["target"] == pair[1]["target"]
    landed = [_pruned_kept(model, x, space, params)[1] / base_macs for params in pair]
    assert max(landed) <= level, landed  # inside a user's band "at most this share"
    assert min(landed) >= 0.9 * level, landed  # and as near its edge as the levels allow


def test_a_share_baseline_needs_the_allocation_granularity() -> None:
    with pytest.raises(ConfigError, match="needs space.granularity = 'allocation'"):
        config_from_dict({"study": {"baselines": [0.5, "25%"]}})
    with pytest.raises(ConfigError, match="each must be a ratio in"):
        config_from_dict({"study": {"baselines": ["125%"]}, "space": {"granularity": "allocation"}})
    config = config_from_dict({"study": {"baselines": [0.5, "25%"]}, "space": {"granularity": "allocation"}})
    assert config.study.baselines == (0.5, "25%")


def test_an_allocation_study_runs_baselines_in_pairs_and_resumes(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = (
        "space.granularity='allocation'",
        "space.scorers=['l1']",
        "sensitivity.ratios=[0.3, 0.6]",
        "sensitivity.samples=100",
    )
    config = tiny_config(runs_dir, "alloc", "study.trials=4", *extra)
    study = run_study(config)
    record = StudyRecord.from_study(study)
    assert record.sensitivity is not None
    assert {p.group for p in record.sensitivity.points} == set(record.groups)
    first = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert [t.params["mix"] for t in first] == [0.0, 1.0, 0.0, 1.0]
    assert first[0].params["target"] == first[1].params["target"]
    for t in first:
        share = t.user_attrs["macs"] / record.base.macs
        assert abs(share - t.params["target"]) <= 0.02 * t.params["target"]

    monkeypatch.setattr(sensitivity_module, "Surgery", None)  # a resumed study reads the cached analysis
    study = run_study(tiny_config(runs_dir, "alloc", "study.trials=8", *extra))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 8 and [t.number for t in done[:4]] == [t.number for t in first]
    assert sum("baseline" in t.user_attrs for t in done) == 6

    def no_analysis(*args: object, **kwargs: object) -> None:
        raise AssertionError("a worker allocates from the study's stored analysis")

    monkeypatch.setattr("autoprune.search.sensitivity.cached_sensitivity", no_analysis)
    more = tiny_config(runs_dir, "alloc", "study.trials=9", *extra)
    dataclasses.replace(record, config=dataclasses.replace(record.config, study=more.study)).save(study)
    joined = run_worker(storage_url(more), "alloc")
    assert len([t for t in joined.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 9

    page = write_report(study, runs_dir / "report", test_accuracy=False).index.read_text(encoding="utf-8")
    assert "Sensitivity of each group, pruned alone" in page and 'id="chart-sensitivity"' in page


def test_level_switches_keep_their_picks_target_and_move_channels(mobilenet_space: tuple) -> None:
    """Each ``switch`` proposal repeats a band's pick with one group's offset raised and another's lowered by
    as much, at the pick's own target: after real surgery it lands within LANDING of that target, with
    other kept channels than the pick's."""
    model, x, space, _cost = mobilenet_space
    base_macs = count_macs_params(model, x)[0]
    base = {"accuracy": 0.9, "macs": base_macs}
    sampler = SwitchSampler(
        optuna.samplers.RandomSampler(seed=0),
        figure="macs",
        bands=[0.5, 0.25],
        offset_max=space.cfg.offset_max,
        seed=0,
        base_figures=lambda study: base,
    )
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for share in ("50%", "25%"):
        for params in space.baselines(share):
            study.enqueue_trial(params)
    rng = random.Random(0)
    kept: dict[int, dict[str, int]] = {}
    for _ in range(10):
        trial = study.ask()
        policy = space.suggest(trial, seed=0)
        pruned = copy.deepcopy(model)
        surgery = Surgery(pruned, x, policy, make_scorer("l1"), groups=space.groups)
        surgery.step()
        kept[trial.number], macs = surgery.kept(), count_macs_params(pruned, x)[0]
        trial.set_user_attr("macs", macs)
        trial.set_user_attr("accuracy", rng.uniform(0.5, 0.9))
        study.tell(trial, [trial.user_attrs["accuracy"], macs])
    done = study.trials
    for t in done[4:]:  # every trial after the four baselines is a switch
        target = t.params["target"]
        assert abs(t.user_attrs["macs"] / base_macs - target) <= LANDING * target
        [pick] = [p for p in done[: t.number] if p.params["target"] == target and _one_switch(p.params, t.params)]
        assert pick.user_attrs["macs"] / base_macs <= 0.5 + 1e-9  # a band's member
        assert kept[t.number] != kept[pick.number]
    bands = {0.5 if t.params["target"] > 0.25 + 1e-9 else 0.25 for t in done[4:]}
    assert bands == {0.5, 0.25}  # the bands take turns


def _one_switch(pick: dict[str, float], switch: dict[str, float]) -> bool:
    """``switch`` is ``pick`` with one offset raised and another lowered by the same step, all else equal."""
    moved = {k: switch[k] - pick[k] for k in pick if switch[k] != pick[k]}
    return (
        len(moved) == 2
        and all(k.startswith("offset.") for k in moved)
        and sum(moved.values()) == pytest.approx(0.0)
        and all(abs(switch[k]) <= 0.7 + 1e-12 for k in moved)
    )


def test_a_switch_stays_within_the_offset_bound() -> None:
    params = {"offset.a": 0.6, "offset.b": -0.6, "offset.c": 0.0}
    assert switched(params, "offset.a", "offset.b", 0.3, 0.7) == {**params, "offset.a": 0.7, "offset.b": -0.7}
    assert switched(params, "offset.c", "offset.a", 0.3, 0.7) == {**params, "offset.c": 0.3, "offset.a": 0.3}
    assert switched(params, "offset.a", "offset.c", 0.3, 0.6)["offset.a"] == 0.6  # no room: nothing moves

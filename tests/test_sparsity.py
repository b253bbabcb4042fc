"""Weight-level sparsity: which weights the masks zero, N:M groups, the cubic schedule, zeros that
stay zero while fine-tuning, nonzero MACs and packed size against hand counts, the search space, and
a sparse trial rebuilt from storage and exported."""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path

import optuna
import pytest
import torch
from conftest import DIGITS, tiny_config
from torch import nn

import autoprune
from autoprune.bench.compare import run_compare
from autoprune.cli import main
from autoprune.config import SpaceSection, StudyConfig, StudySection, config_from_dict
from autoprune.errors import ConfigError
from autoprune.policy import Policy, Sparsity
from autoprune.results.export import export_trial, study_data, trial_model
from autoprune.search.record import StudyRecord
from autoprune.search.run import run_study
from autoprune.trial.finetune import train_steps
from autoprune.trial.metrics import count_macs_params, packed_state, size_bytes, unpacked_state
from autoprune.trial.space import SearchSpace, layer_sparsity
from autoprune.trial.sparsity import (
    LampReference,
    WeightMasks,
    nm_mask,
    nonzero_macs,
    schedule,
    sparse_layers,
    zeros_held,
)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def batches(count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 4, 6, 6, generator=generator), torch.randint(0, 4, (8,), generator=generator))
        for _ in range(count)
    ]


LAYERS = ("0", "2", "6")


def masked(model: nn.Module, sparsity: Sparsity, steps: int = 1) -> dict[str, float]:
    masks = WeightMasks(model, sparsity, steps, seed=3)
    for _ in range(steps):
        masks.step(batches(2))
    return masks.finish()


@pytest.mark.parametrize("share", [0.3, 0.5, 0.9])
def test_magnitude_zeroes_exactly_the_smallest_weights_of_each_layer(share: float) -> None:
    model = tiny_net()
    before = {n: model.get_submodule(n).weight.detach().clone() for n in LAYERS}
    masked(model, Sparsity(layers=dict.fromkeys(LAYERS, share)))
    for name in LAYERS:
        weight, original = model.get_submodule(name).weight.detach(), before[name].flatten()
        count = math.floor(share * original.numel())
        smallest = set(original.abs().argsort()[:count].tolist())
        assert set((weight.flatten() == 0).nonzero().flatten().tolist()) == smallest
        kept = weight.flatten() != 0
        assert torch.equal(weight.flatten()[kept], original[kept])


def test_ties_are_broken_the_same_way_every_time() -> None:
    zeroed = []
    for _ in range(2):
        model = tiny_net()
        with torch.no_grad():
            model[2].weight.fill_(0.5)
        masked(model, Sparsity(layers={"2": 0.5}))
        zeroed.append((model[2].weight == 0).nonzero())
    assert zeroed[0].shape[0] == math.floor(0.5 * model[2].weight.numel())
    assert torch.equal(zeroed[0], zeroed[1])


def test_global_magnitude_ranks_weights_across_layers() -> None:
    model = tiny_net()
    weights = torch.cat([model.get_submodule(n).weight.detach().abs().flatten() for n in LAYERS])
    count = math.floor(0.6 * weights.numel())
    threshold = weights.sort().values[count - 1]
    masked(model, Sparsity(layers=dict.fromkeys(LAYERS, 0.6), ranking="global"))
    after = torch.cat([model.get_submodule(n).weight.detach().flatten() for n in LAYERS])
    assert int((after == 0).sum()) == count
    assert bool((weights[after == 0] <= threshold).all()) and bool((weights[after != 0] >= threshold).all())
    shares = [float((model.get_submodule(n).weight == 0).float().mean()) for n in LAYERS]
    assert max(shares) - min(shares) > 0.05  # layers end up at different sparsities


def test_lamp_keeps_every_layers_strongest_weight_even_at_extreme_sparsity() -> None:
    model = tiny_net()
    with torch.no_grad():
        model[6].weight.mul_(1e-3)  # the linear layer's weights are all tiny: global magnitude empties it
    plain = tiny_net()
    with torch.no_grad():
        plain[6].weight.mul_(1e-3)
    masked(plain, Sparsity(layers=dict.fromkeys(LAYERS, 0.9), ranking="global"))
    assert int(plain[6].weight.count_nonzero()) == 0
    masked(model, Sparsity(layers=dict.fromkeys(LAYERS, 0.9), ranking="lamp"))
    assert all(int(model.get_submodule(n).weight.count_nonzero()) >= 1 for n in LAYERS)
    total = sum(model.get_submodule(n).weight.numel() for n in LAYERS)
    assert sum(int((model.get_submodule(n).weight == 0).sum()) for n in LAYERS) == math.floor(0.9 * total)


def test_threshold_mode_removes_exactly_the_weights_under_tau_times_the_layer_max() -> None:
    model = tiny_net()
    before = {n: model.get_submodule(n).weight.detach().clone() for n in LAYERS}
    masked(model, Sparsity(layers=dict.fromkeys(LAYERS, 0.3), mode="threshold"))
    for name in LAYERS:
        original = before[name]
        expected = original.abs() < 0.3 * original.abs().max()
        assert torch.equal(model.get_submodule(name).weight.detach() == 0, expected)


def assert_nm(weight: torch.Tensor, n: int, m: int) -> None:
    groups = (weight.detach().movedim(1, -1).reshape(-1, m) != 0).sum(1)
    assert int(groups.max()) <= n


def test_nm_keeps_at_most_n_of_every_m_input_weights_through_fine_tuning() -> None:
    model = tiny_net()
    layers = sparse_layers(model, "n:m", 4)
    assert sorted(layers) == ["0", "2", "6"]  # 4 and 8 input channels: 4 divides both
    masks = WeightMasks(model, Sparsity(nm=(2, 4), nm_layers=tuple(layers)), steps=1)
    masks.step()
    train_steps(model, itertools.cycle(batches()), steps=20, lr=0.1, weight_decay=0.0)
    masks.finish()
    for name in layers:
        weight = model.get_submodule(name).weight
        assert_nm(weight, 2, 4)
        assert float((weight == 0).float().mean()) == pytest.approx(0.5)


def test_nm_mask_groups_run_along_the_input_channels() -> None:
    scores = torch.arange(2 * 4 * 1 * 1, dtype=torch.float).view(2, 4, 1, 1)
    assert nm_mask(scores, 2, 4).view(2, 4).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]
    assert sparse_layers(nn.Sequential(nn.Conv2d(3, 4, 1)), "n:m", 4) == {}


def test_fine_tuning_never_revives_a_zeroed_weight() -> None:
    model = tiny_net()
    masks = WeightMasks(model, Sparsity(layers=dict.fromkeys(LAYERS, 0.7)), steps=1)
    masks.step()
    zero = {n: model.get_submodule(n).weight.detach() == 0 for n in LAYERS}
    train_steps(model, itertools.cycle(batches()), steps=30, lr=0.5, weight_decay=1e-3)
    masks.finish()
    for name in LAYERS:
        weight = model.get_submodule(name).weight.detach()
        assert bool((weight[zero[name]] == 0).all())
        assert isinstance(model.get_submodule(name).weight, nn.Parameter)  # plain again after finish


def test_progressive_pruning_follows_the_cubic_schedule_to_its_target() -> None:
    model = tiny_net()
    steps, target = 4, 0.8
    masks = WeightMasks(model, Sparsity(layers=dict.fromkeys(LAYERS, target)), steps=steps)
    seen = []
    for step in range(1, steps + 1):
        masks.step()
        train_steps(model, itertools.cycle(batches()), steps=3, lr=0.05, weight_decay=0.0)
        seen.append(float((model[2].weight == 0).float().mean()))
        expected = math.floor(schedule(step, steps) * target * model[2].weight.numel()) / model[2].weight.numel()
        assert seen[-1] == pytest.approx(expected)
    assert [round(schedule(k, 4), 4) for k in range(1, 5)] == [0.5781, 0.875, 0.9844, 1.0]
    assert seen[-1] == pytest.approx(math.floor(target * 576) / 576)
    assert seen == sorted(seen)


def test_taylor_and_random_scorers_choose_other_weights_than_magnitude() -> None:
    zeroed = {}
    for scorer in ("magnitude", "taylor", "random"):
        model = tiny_net()
        masked(model, Sparsity(layers={"2": 0.5}, scorer=scorer))
        zeroed[scorer] = model[2].weight == 0
        assert int(zeroed[scorer].sum()) == 288
    assert not torch.equal(zeroed["magnitude"], zeroed["taylor"])
    assert not torch.equal(zeroed["magnitude"], zeroed["random"])


def test_nonzero_macs_and_packed_size_match_hand_counts() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.Flatten(), nn.Linear(4 * 4 * 4, 3, bias=False))
    x = torch.zeros(1, 2, 6, 6)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].weight[:, :, 0, :] = 0.0  # a third of the conv's 72 weights
        model[2].weight.fill_(1.0)
        model[2].weight[:, :48] = 0.0  # three quarters of the linear layer's 192
    macs, _params = count_macs_params(model, x)
    dense = 16 * 72 + 192  # 16 output positions × 72 conv weights, one pass over the linear layer's 192
    assert macs == dense
    assert nonzero_macs(model, x, macs) == 16 * 48 + 48
    state = model.state_dict()
    packed = packed_state(state)
    # the conv (72 weights, 48 non-zero): 9 bytes of bits + 192 of values < 288 dense; kept packed
    assert packed["0.weight"]["bits"].numel() == 9 and packed["0.weight"]["values"].numel() == 48
    assert packed["2.weight"]["bits"].numel() == 24 and packed["2.weight"]["values"].numel() == 48
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    assert size_bytes(model) == buffer.tell()
    dense_buffer = io.BytesIO()
    torch.save(state, dense_buffer)
    assert size_bytes(model) < dense_buffer.tell()
    restored = unpacked_state(packed)
    assert all(torch.equal(restored[k], v) for k, v in state.items())


def test_a_dense_model_packs_to_its_plain_state_dict() -> None:
    model = tiny_net()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert size_bytes(model) == buffer.tell()


def test_zeros_held_keeps_an_exported_models_zeros_through_more_training() -> None:
    model = tiny_net()
    masked(model, Sparsity(layers=dict.fromkeys(LAYERS, 0.6)))
    zero = model[2].weight.detach() == 0
    with zeros_held(model):
        train_steps(model, itertools.cycle(batches()), steps=10, lr=0.2, weight_decay=0.0)
    assert bool((model[2].weight.detach()[zero] == 0).all())
    assert isinstance(model[2].weight, nn.Parameter)


def test_layer_sparsity_lands_on_its_target_and_offsets_zero_are_uniform() -> None:
    sizes = {"a": 100, "b": 1000, "c": 10_000}
    assert layer_sparsity(sizes, 0.05, dict.fromkeys(sizes, 0.0)) == pytest.approx(dict.fromkeys(sizes, 0.95))
    shares = layer_sparsity(sizes, 0.05, {"a": 1.5, "b": 0.0, "c": -1.5})
    kept = sum(sizes[n] * (1 - s) for n, s in shares.items())
    assert kept == pytest.approx(0.05 * sum(sizes.values()), rel=1e-6)
    assert shares["a"] < shares["b"] < shares["c"]


def test_weight_space_suggests_sparse_policies_without_channel_parameters() -> None:
    cfg = SpaceSection(kind="weights", sparsity_min=0.9, sparsity_max=0.98, sparsity_references=("uniform",))
    space = SearchSpace(cfg, ["g"], layers={"x": 100, "y": 900})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        policy = space.suggest(trial, seed=0)
        assert policy.ratios == {} and policy.sparsity is not None
        assert "scorer" not in trial.params and "ratio" not in trial.params
        kept = 100 * (1 - policy.sparsity.layers["x"]) + 900 * (1 - policy.sparsity.layers["y"])
        assert 1 - kept / 1000 == pytest.approx(1 - trial.params["density"])
        assert 0.9 - 1e-9 <= 1 - trial.params["density"] <= 0.98 + 1e-9
    (baseline,) = space.baselines(0.95)
    policy = space.from_params(baseline, seed=0)
    assert policy.sparsity is not None
    assert policy.sparsity.layers == pytest.approx({"x": 0.95, "y": 0.95})
    assert policy.sparsity.scorer == "magnitude"


def test_lamp_reference_gives_lamp_rankings_shares_and_the_space_starts_from_it() -> None:
    model = tiny_net()
    reference = LampReference(model, list(LAYERS))
    shares = reference.shares(0.2)
    masked(model, Sparsity(layers=dict.fromkeys(LAYERS, 0.8), ranking="lamp"))
    for name in LAYERS:
        assert shares[name] == pytest.approx(float((model.get_submodule(name).weight != 0).float().mean()))
    sizes = {n: tiny_net().get_submodule(n).weight.numel() for n in LAYERS}
    space = SearchSpace(SpaceSection(kind="weights"), [], layers=sizes, lamp=reference)
    uniform, lamp = space.baselines(0.8)
    assert (uniform["reference"], lamp["reference"]) == ("uniform", "lamp")
    policy = space.from_params(lamp, seed=0)
    assert policy.sparsity is not None
    # the same shares, scaled by one factor from LAMP's whole-weight count to the exact target
    assert {n: 1 - s for n, s in policy.sparsity.layers.items()} == pytest.approx(shares, rel=0.01)
    with pytest.raises(ConfigError, match="LAMP"):
        SearchSpace(SpaceSection(kind="weights"), [], layers=sizes)


def test_nm_space_searches_which_layers_take_it() -> None:
    space = SearchSpace(SpaceSection(kind="n:m"), [], layers={"x": 64, "y": 64})
    trial = optuna.create_study().ask({"nm.x": optuna.distributions.CategoricalDistribution([True, False])})
    policy = space.suggest(trial, seed=0)
    assert policy.sparsity is not None and set(policy.sparsity.nm_layers) <= {"x", "y"}
    (baseline,) = space.baselines(0.5)
    assert space.from_params(baseline, seed=0).sparsity.nm_layers == ("x", "y")  # type: ignore[union-attr]


def test_policies_with_sparsity_round_trip_through_json() -> None:
    policy = Policy(
        ratios={"g": 0.5},
        scorer="l1",
        finetune_steps=10,
        lr=0.01,
        sparsity=Sparsity(nm=(2, 4), nm_layers=("a",), scorer="taylor"),
    )
    assert Policy.from_json(policy.to_json()) == policy
    assert "2:4 on 1 layer(s)" in policy.summary()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"space": {"kind": "pixels"}}, "space.kind"),
        ({"space": {"kind": "weights"}}, "nonzero_macs"),
        ({"space": {"kind": "channels+n:m", "channel_multiple": 3}}, "channel_multiple"),
        ({"space": {"kind": "n:m", "sparsity_granularity": "global"}, "study": {"objectives": ["accuracy"]}}, "N:M"),
        ({"space": {"sparsity_mode": "threshold", "sparsity_granularity": "lamp"}}, "threshold"),
        ({"space": {"nm": "4:2"}}, "space.nm"),
        ({"space": {"weight_scorers": ["l1"]}}, "weight_scorers"),
        ({"space": {"kind": "weights"}, "study": {"baselines": ["25%"], "objectives": ["accuracy"]}}, "baselines"),
    ],
)
def test_weight_level_settings_are_checked(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(settings)


def test_default_objectives_stay_channel_ones() -> None:
    assert StudyConfig().space.kind == "channels" and "macs" in StudySection().objectives


@pytest.fixture(scope="module")
def sparse_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, str, Path]:
    runs = tmp_path_factory.mktemp("sparse-runs")
    config = tiny_config(
        runs,
        "sparse",
        "study.trials=6",
        "study.baselines=[0.9]",
        "study.objectives=['accuracy', 'nonzero_macs', 'size']",
        "space.kind='weights'",
        "space.prune_steps_max=2",
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return run_study(config), f"sqlite:///{runs / 'sparse'}.db", runs


def test_a_sparse_trial_records_its_sparsity_and_figures(sparse_study: tuple[optuna.Study, str, Path]) -> None:
    study, _storage, _runs = sparse_study
    uniform, lamp = sorted(
        (t for t in study.trials if t.user_attrs.get("baseline") == 0.9),
        key=lambda t: t.params["reference"] != "uniform",
    )
    assert (uniform.params["reference"], lamp.params["reference"]) == ("uniform", "lamp")
    shares = lamp.user_attrs["sparsity"]
    assert max(shares.values()) - min(shares.values()) > 0.1  # LAMP spreads the sparsity over the layers
    attrs = uniform.user_attrs
    assert set(attrs["sparsity"]) == {
        "stem.0",
        "block1.conv1.0",
        "block1.conv2.0",
        "down.0",
        "block2.conv1.0",
        "block2.conv2.0",
        "hidden",
        "classifier",
    }
    assert all(abs(share - 0.9) < 0.01 for share in attrs["sparsity"].values())
    base = StudyRecord.from_study(study).base
    assert attrs["macs"] == base.macs and attrs["params"] == base.params
    assert attrs["nonzero_macs"] < 0.2 * base.macs
    assert attrs["size"] < 0.25 * base.size
    assert study.metric_names == ["accuracy", "nonzero_macs", "size"]


def test_a_sparse_trial_rebuilds_and_exports_to_the_same_outputs(
    sparse_study: tuple[optuna.Study, str, Path], tmp_path: Path
) -> None:
    study, storage, _runs = sparse_study
    number = min(study.best_trials, key=lambda t: t.user_attrs["nonzero_macs"]).number
    trial = study.trials[number]
    rebuilt = trial_model(study, number, storage=storage)
    data = study_data(study)
    x = data.val.x[:16]
    assert {
        n: round(float((m.weight == 0).float().mean()), 6)
        for n, m in rebuilt.named_modules()
        if n in trial.user_attrs["sparsity"]
    } == trial.user_attrs["sparsity"]
    out = tmp_path / "export"
    result = export_trial(study, number, out, storage=storage)
    loaded = autoprune.load(out)
    with torch.no_grad():
        assert torch.equal(loaded(x), rebuilt(x))
    assert (out / "weights.pt").stat().st_size == trial.user_attrs["size"]
    assert result.measurement.nonzero_macs == trial.user_attrs["nonzero_macs"]


def test_export_with_more_epochs_keeps_the_zeros(sparse_study: tuple[optuna.Study, str, Path], tmp_path: Path) -> None:
    study, storage, _runs = sparse_study
    number = min(study.best_trials, key=lambda t: t.user_attrs["nonzero_macs"]).number
    out = tmp_path / "longer"
    assert (
        main(
            [
                "export",
                "--storage",
                storage,
                "--study",
                "sparse",
                "--trial",
                str(number),
                "--out",
                str(out),
                "--finetune-epochs",
                "1",
            ]
        )
        == 0
    )
    loaded = autoprune.load(out)
    zeros = sum(
        int((m.weight == 0).sum())
        for n, m in loaded.named_modules()
        if n in study.trials[number].user_attrs["sparsity"]
    )
    rebuilt = trial_model(study, number, storage=storage)
    assert zeros == sum(
        int((m.weight == 0).sum())
        for n, m in rebuilt.named_modules()
        if n in study.trials[number].user_attrs["sparsity"]
    )


def test_the_report_shows_nonzero_macs_and_the_per_layer_chart(
    sparse_study: tuple[optuna.Study, str, Path], tmp_path: Path
) -> None:
    _study, storage, _runs = sparse_study
    out = tmp_path / "report"
    assert main(["report", "--storage", storage, "--study", "sparse", "--out", str(out), "--no-test"]) == 0
    page = (out / "index.html").read_text()
    assert "Zero weights per layer" in page and "chart-sparsity" in page
    assert "MACs of non-zero weights" in page
    assert "non-zero MACs" in (out / "summary.md").read_text()


def test_compare_refuses_a_weight_level_study_and_names_the_benchmark_for_it(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "c", "space.kind='weights'", "study.objectives=['accuracy', 'nonzero_macs']")
    with pytest.raises(ConfigError, match="autoprune.bench.sparsity"):
        run_compare(config, runs_dir=tmp_path, device=torch.device("cpu"))


def test_the_sparsity_benchmark_writes_a_row_per_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autoprune.bench.sparsity import METHODS
    from autoprune.bench.sparsity import main as bench

    overrides = [
        f"study.runs_dir='{tmp_path.as_posix()}'",
        "train.epochs=3",
        "space.finetune_steps_min=2",
        "space.finetune_steps_max=4",
        "space.kind='weights'",
        "study.objectives=['accuracy', 'nonzero_macs', 'size']",
    ]
    args = [str(DIGITS), "--levels", "0.9", "--seeds", "1", "--trials", "3", "--no-fronts"]
    assert bench([*args, "--out", str(tmp_path / "out"), *(f"--set={o}" for o in overrides)]) == 0
    text = (tmp_path / "out" / "results.md").read_text()
    assert all(f"| 90 % | {method} |" in text for method in METHODS)
    assert "at 90 %: autoprune" in text

"""Models by name: built-in, torchvision and the user's own; each builds, runs and prunes."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from autoprune.config import ModelSection
from autoprune.errors import AutopruneError, ConfigError
from autoprune.models import MODELS, build_model
from autoprune.models._torchvision import unprunable_reason
from autoprune.policy import Policy
from autoprune.scorers import make_scorer
from autoprune.search.basemodel import load_state
from autoprune.trial.metrics import count_macs_params
from autoprune.trial.surgery import Surgery, find_groups, rebuild

# The smallest square input each torchvision model runs on, where it does not run at 32.
MIN_SIZE = {"alexnet": 64, "inception_v3": 96, "maxvit_t": 224, "vit_h_14": 28}


def prune_30(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """MACs before and after removing 30% of every group's channels (L1 norm); the model still runs."""
    model.eval()
    before, _ = count_macs_params(model, x)
    policy = Policy({g.name: 0.3 for g in find_groups(model, x)}, "l1", 1, 0.01)
    Surgery(model, x, policy, make_scorer("l1")).step()
    with torch.no_grad():
        out = model(x)
    assert torch.isfinite(out).all()
    after, _ = count_macs_params(model, x)
    return before, after


BUILT_IN = [
    ("digits_resnet", 1, 8),
    ("digits_branchnet", 1, 8),
    ("resnet20", 3, 32),
    ("resnet32", 3, 32),
    ("resnet56", 3, 32),
    ("resnet20", 1, 28),
    ("vgg_bn", 3, 32),
    ("vgg_bn", 1, 28),
    ("fmnist_cnn", 1, 28),
    ("mobilenet_small", 1, 28),
    ("mobilenet_small", 3, 32),
    ("vit_small", 1, 28),
    ("vit_small", 3, 32),
]


def test_every_built_in_model_is_covered() -> None:
    assert set(MODELS.names()) == {name for name, _c, _s in BUILT_IN}


@pytest.mark.parametrize(("name", "channels", "size"), BUILT_IN)
def test_built_in_model_runs_and_prunes(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=channels, image_size=size)
    x = torch.randn(2, channels, size, size)
    assert model(x).shape == (2, 7)
    before, after = prune_30(model, x[:1])
    assert after < before
    assert model(x).shape == (2, 7)


def test_cifar_resnets_have_the_papers_depth_and_size() -> None:
    for name, params in (("resnet20", 0.27e6), ("resnet32", 0.46e6), ("resnet56", 0.85e6)):
        model = build_model(name, num_classes=10, in_channels=3, image_size=32)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        assert len(convs) + 1 == int(name[6:])  # 3×3 convs + the classifier
        assert abs(sum(p.numel() for p in model.parameters()) - params) / params < 0.03


def test_mobilenet_small_prunes_its_expansions_with_their_depthwise_convs_and_rebuilds_exactly() -> None:
    torch.manual_seed(0)
    model = build_model("mobilenet_small", num_classes=10, in_channels=1, image_size=28).eval()
    x = torch.randn(2, 1, 28, 28)
    groups = find_groups(model, x)
    hidden = next(g for g in groups if g.name == "features.4.block.3")  # a depthwise conv names its group
    assert {"features.4.block.0", "features.4.block.6"} <= set(hidden.layers)  # expansion and projection too
    policy = Policy(ratios={g.name: 0.5 for g in groups}, scorer="random", finetune_steps=1, lr=0.01)
    pruned = copy.deepcopy(model)
    surgery = Surgery(pruned, x, policy, make_scorer("random", seed=0), groups=[g.name for g in groups])
    surgery.step()
    modules = dict(pruned.named_modules())
    depthwise, expansion = modules["features.4.block.3"], modules["features.4.block.0"]
    kept = surgery.kept()["features.4.block.3"]
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == expansion.out_channels == kept
    assert kept == hidden.channels // 2
    skeleton = rebuild(copy.deepcopy(model), x, surgery.kept(), surgery.removed())
    skeleton.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(skeleton.eval()(x), pruned(x))


TORCHVISION_SUBSET = [
    "resnet18",
    "mobilenet_v3_small",
    "vgg11_bn",
    "efficientnet_b0",
    "regnet_x_400mf",
    "squeezenet1_0",
    "convnext_tiny",
    "googlenet",
]


@pytest.mark.parametrize("name", TORCHVISION_SUBSET)
def test_torchvision_model_prunes(name: str) -> None:
    torch.manual_seed(0)
    size = MIN_SIZE.get(name, 32)
    model = build_model(f"torchvision:{name}", num_classes=10, in_channels=3, image_size=size)
    before, after = prune_30(model, torch.randn(1, 3, size, size))
    assert after < before


def test_unprunable_torchvision_models_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match=r"torchvision:shufflenet_v2_x0_5 cannot be pruned .*channel shuffle"):
        build_model("torchvision:shufflenet_v2_x0_5", num_classes=10, in_channels=3, image_size=32)
    with pytest.raises(ConfigError, match=r"torchvision:maxvit_t cannot be pruned .*did not finish"):
        ModelSection(name="torchvision:maxvit_t")
    # and should one get through, surgery stops with an AutopruneError, not a crash
    model = torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=10)
    with pytest.raises(AutopruneError, match="torch-pruning cannot trace ShuffleNetV2: ZeroDivisionError"):
        prune_30(model, torch.randn(1, 3, 32, 32))


def test_torchvision_model_adapts_to_grey_input() -> None:
    model = build_model("torchvision:resnet18", num_classes=10, in_channels=1, image_size=28)
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    before, after = prune_30(model, torch.randn(1, 1, 28, 28))
    assert after < before


def test_torchvision_model_too_small_input_names_the_model_and_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"torchvision:alexnet does not run on 3×32×32 input.*data.image_size"):
        build_model("torchvision:alexnet", num_classes=10, in_channels=3, image_size=32)


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet57'; known: .*resnet56.*torchvision:NAME"):
        build_model("resnet57", num_classes=10, in_channels=3, image_size=32)
    with pytest.raises(ConfigError, match=r"unknown torchvision model 'resnet19'; known: .*torchvision:resnet18"):
        build_model("torchvision:resnet19", num_classes=10, in_channels=3, image_size=32)
    with pytest.raises(ConfigError, match=r"unknown model 'resnet57'"):
        ModelSection(name="resnet57")
    with pytest.raises(ConfigError, match=r"unknown model 'torchvision:nope'"):
        ModelSection(name="torchvision:nope")
    with pytest.raises(ConfigError, match=r"unknown model 'timm:nope'.*timm:\*"):
        ModelSection(name="timm:nope")
    ModelSection(name="some_module:build")  # user code is not imported while validating


USER_MODEL = textwrap.dedent(
    """
    from torch import nn

    def build(num_classes, in_channels):
        return nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
        )

    def anything(**kwargs):
        return build(kwargs["num_classes"], kwargs["in_channels"])

    def not_a_model(num_classes):
        return "surprise"
    """
)


def test_user_model_from_a_module_builds_prunes_and_loads_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_nets.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("my_nets:build", num_classes=4, in_channels=1, image_size=12)
    assert model(torch.randn(2, 1, 12, 12)).shape == (2, 4)
    checkpoint = tmp_path / "weights.pt"
    torch.save(model.state_dict(), checkpoint)
    fresh = build_model("my_nets:anything", num_classes=4, in_channels=1, image_size=12)
    load_state(fresh, checkpoint)
    assert torch.equal(fresh[0].weight, model[0].weight)
    before, after = prune_30(fresh, torch.randn(1, 1, 12, 12))
    assert after < before


def test_user_model_from_a_file_path(tmp_path: Path) -> None:
    path = tmp_path / "sub dir" / "net.py"
    path.parent.mkdir()
    path.write_text(USER_MODEL)
    model = build_model(f"{path}:build", num_classes=3, in_channels=3, image_size=8)
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 3)


def test_user_model_mistakes_are_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_nets2.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="returned a str, not a torch.nn.Module"):
        build_model("my_nets2:not_a_model", num_classes=3, in_channels=3, image_size=8)
    with pytest.raises(ConfigError, match="has no function 'missing'"):
        build_model("my_nets2:missing", num_classes=3, in_channels=3, image_size=8)
    with pytest.raises(ConfigError, match="no module 'no_such_module_xyz'"):
        build_model("no_such_module_xyz:build", num_classes=3, in_channels=3, image_size=8)
    with pytest.raises(ConfigError, match="file not found"):
        build_model(f"{tmp_path}/absent.py:build", num_classes=3, in_channels=3, image_size=8)


def test_checkpoint_mismatch_names_the_key(tmp_path: Path) -> None:
    torch.save(build_model("resnet20", num_classes=10, in_channels=3, image_size=32).state_dict(), tmp_path / "w.pt")
    model = build_model("resnet20", num_classes=100, in_channels=3, image_size=32)
    with pytest.raises(ConfigError, match=r"'fc.weight' has shape \(10, 64\), the model expects \(100, 64\)"):
        load_state(model, tmp_path / "w.pt")


def _sweep_names() -> list[str]:
    return list(torchvision.models.list_models(module=torchvision.models))


@pytest.mark.slow
@pytest.mark.parametrize("name", _sweep_names())
def test_every_torchvision_model_prunes_or_is_refused(name: str) -> None:
    torch.manual_seed(0)
    size = MIN_SIZE.get(name, 32)
    reason = unprunable_reason(name)
    if reason is not None:
        with pytest.raises(ConfigError, match="cannot be pruned by torch-pruning"):
            build_model(f"torchvision:{name}", num_classes=10, in_channels=3, image_size=size)
        return
    model = build_model(f"torchvision:{name}", num_classes=10, in_channels=3, image_size=size)
    before, after = prune_30(model, torch.randn(1, 3, size, size))
    assert after < before

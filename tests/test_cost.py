"""The cost model predicts what torch-pruning's counter gives after surgery, from kept counts alone."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from test_models import BUILT_IN

from autoprune.errors import AutopruneError
from autoprune.models import build_model
from autoprune.policy import Policy
from autoprune.scorers import make_scorer
from autoprune.trial.cost import _OUTSIDE, CostModel, _layer_figures
from autoprune.trial.metrics import count_macs_params
from autoprune.trial.surgery import Surgery, TracedModel

CONCATENATING = {"digits_branchnet"}
"""Built-ins with a group whose channels span a concatenation: the counts alone do not decide the cost."""


def check(name: str, channels: int, size: int, prunings: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=channels, image_size=size).eval()
    check_model(model, torch.randn(1, channels, size, size), prunings)


def check_model(model: torch.nn.Module, x: torch.Tensor, prunings: int) -> None:
    """The cost model of ``model`` is exact, and its predictions equal the counter's after ``prunings``
    random surgeries."""
    traced = TracedModel(model, x)
    cost = CostModel.fit(traced)
    assert cost.exact, cost.max_error
    assert cost.predict({}) == pytest.approx(count_macs_params(model, x), abs=1e-6)
    rng = random.Random(1)
    names = traced.names
    for _ in range(prunings):
        pruned = copy.deepcopy(model)
        policy = Policy({g: rng.uniform(0.0, 0.9) for g in names}, "l1", 1, 0.01)
        surgery = Surgery(pruned, x, policy, make_scorer("l1"), groups=names)
        surgery.step()
        macs, params = cost.predict(surgery.kept())
        assert (round(macs), round(params)) == count_macs_params(pruned, x), surgery.kept()


@pytest.mark.parametrize(("name", "channels", "size"), [("mobilenet_small", 1, 28), ("digits_resnet", 1, 8)])
def test_predicted_figures_equal_the_counted_ones_after_surgery(name: str, channels: int, size: int) -> None:
    check(name, channels, size, prunings=5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "channels", "size"),
    [
        *((n, c, s) for n, c, s in BUILT_IN if n not in CONCATENATING),
        ("torchvision:resnet18", 3, 32),
        ("torchvision:mobilenet_v2", 3, 32),
    ],
)
def test_every_model_without_a_concatenation_is_exact_on_100_prunings(name: str, channels: int, size: int) -> None:
    check(name, channels, size, prunings=100)


def test_a_model_the_counter_counts_by_whole_modules_is_exact() -> None:
    """torch-pruning's counter counts timm's window attention whole (its qkv and proj layers get no
    MACs of their own): the cost model takes what a module counts beyond its children as its own."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=10,
        in_chans=1,
        img_size=16,
        embed_dim=16,
        depths=(1, 1),
        num_heads=(1, 2),
        window_size=4,
    ).eval()
    x = torch.randn(1, 1, 16, 16)
    figures = _layer_figures(model, x)
    assert figures["layers.0.blocks.0.attn"][0] > 0 and figures[_OUTSIDE][0] == 0
    check_model(model, x, prunings=3)


def test_a_concatenation_makes_the_cost_model_approximate_and_it_says_so() -> None:
    torch.manual_seed(0)
    model = build_model("digits_branchnet", num_classes=10, in_channels=1, image_size=8).eval()
    x = torch.randn(1, 1, 8, 8)
    cost = CostModel.fit(TracedModel(model, x))
    assert not cost.exact and cost.max_error > 0.01


def test_unknown_groups_are_refused_with_the_known_ones() -> None:
    model = build_model("digits_resnet", num_classes=10, in_channels=1, image_size=8).eval()
    x = torch.randn(1, 1, 8, 8)
    cost = CostModel.fit(TracedModel(model, x), checks=0)
    with pytest.raises(AutopruneError, match="no groups \\['nope'\\]; it has: \\["):
        cost.predict({"nope": 1})

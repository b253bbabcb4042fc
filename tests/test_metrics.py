"""Measurements against hand counts: MACs (torch-pruning's ptflops convention), parameters, bytes, accuracy."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from autoprune.data import Split
from autoprune.trial.metrics import Measurement, accuracy, count_macs_params, measure, size_bytes


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, bias=False),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 3),
    )


class FixedLogits(nn.Module):
    """Returns its input, flattened: the test chooses the logits through the images."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * self.scale


def test_macs_equal_hand_count() -> None:
    model = tiny_net()
    x = torch.randn(1, 1, 4, 4)
    conv = (3 * 3 * 1 // 1) * 2 * (4 * 4)  # k*k*cin/groups * cout * Hout*Wout, no bias
    bn = 2 * (2 * 4 * 4)  # affine BatchNorm: two per element
    relu = 2 * 4 * 4  # one per element
    pool = 2 * 4 * 4  # one per *input* element
    flatten = 0
    linear = 2 * 3 + 3  # in*out + out for the bias
    assert (conv, bn, relu, pool, linear) == (288, 64, 32, 32, 9)
    macs, params = count_macs_params(model, x)
    assert macs == conv + bn + relu + pool + flatten + linear == 425
    assert isinstance(macs, int)
    assert params == (3 * 3 * 1 * 2) + (2 + 2) + (2 * 3 + 3) == 31


def test_macs_count_conv_bias_and_stride() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=True), nn.Flatten(), nn.Linear(4 * 3 * 3, 5))
    x = torch.randn(1, 3, 6, 6)  # Hout = Wout = (6 + 2 - 3) // 2 + 1 = 3
    conv = 3 * 3 * 3 * 4 * (3 * 3) + 4 * (3 * 3)  # MACs + one per output element for the bias
    linear = (4 * 3 * 3) * 5 + 5
    macs, params = count_macs_params(model, x)
    assert macs == conv + linear == (972 + 36) + 185
    assert params == (3 * 3 * 3 * 4 + 4) + (36 * 5 + 5)


def test_grouped_conv_divides_by_groups() -> None:
    model = nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=False)
    macs, params = count_macs_params(model, torch.randn(1, 4, 5, 5))
    assert macs == 3 * 3 * (4 // 2) * 8 * (5 * 5)
    assert params == 8 * (4 // 2) * 3 * 3


def test_counting_leaves_the_model_alone() -> None:
    model = tiny_net().train()
    before = copy.deepcopy(model.state_dict())
    count_macs_params(model, torch.randn(1, 1, 4, 4))
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    model.eval()
    count_macs_params(model, torch.randn(1, 1, 4, 4))
    assert not model.training


def test_size_bytes_is_what_torch_save_writes() -> None:
    model = tiny_net()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert size_bytes(model) == len(buffer.getvalue())
    assert size_bytes(nn.Linear(100, 100)) > size_bytes(nn.Linear(10, 10))


def test_accuracy_of_known_outputs() -> None:
    # logits per example, argmax = 0, 1, 2, 2, 1
    x = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [1.0, 0.0, 2.0], [0.0, 3.0, 1.0]]).reshape(
        5, 3, 1, 1
    )
    y = torch.tensor([0, 1, 0, 2, 2])  # right, right, wrong, right, wrong
    model = FixedLogits().train()
    for batch_size in (1, 2, 5, 64):
        assert accuracy(model, Split(x, y), batch_size) == pytest.approx(3 / 5)
    assert model.training  # mode restored
    assert accuracy(model.eval(), Split(x, y), 2) == pytest.approx(3 / 5)
    assert not model.training
    assert accuracy(model, Split(x[:0], y[:0]), 4) == 0.0


def test_accuracy_runs_in_eval_mode() -> None:
    # Dropout(p=1) zeroes every logit in training mode: argmax 0 for all; in eval mode it is the identity.
    model = nn.Sequential(nn.Flatten(), nn.Dropout(p=1.0))
    x = torch.tensor([[0.0, 1.0], [0.0, 2.0]]).reshape(2, 2, 1, 1)
    y = torch.tensor([1, 1])
    assert accuracy(model.train(), Split(x, y), 2) == 1.0


def test_measure_collects_all_four() -> None:
    model = tiny_net()
    x = torch.randn(6, 1, 4, 4)
    y = torch.zeros(6, dtype=torch.long)
    result = measure(model, x[:1], Split(x, y), 4)
    macs, params = count_macs_params(model, x[:1])
    assert result == Measurement(accuracy(model, Split(x, y), 4), macs, params, size_bytes(model))
    assert result.to_dict() == {
        "accuracy": result.accuracy,
        "macs": 425,
        "params": 31,
        "size": size_bytes(model),
        "latency_ms": None,
        "nonzero_macs": 425,
    }

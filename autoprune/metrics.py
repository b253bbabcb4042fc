"""Measurements of a model: accuracy, MACs, parameters, serialized size. None changes the model."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import torch
import torch_pruning as tp
from torch import nn

from autoprune.data import Split


@dataclass(frozen=True)
class Measurement:
    """What a trial records about its model.

    Attributes:
        accuracy: Top-1 accuracy on the validation split, in [0, 1].
        macs: Operations of one forward pass on one example, counted as torch-pruning's counter
            does (multiply-accumulates of convolutions and linear layers, plus one per output
            element for biases, activations and pooling, two per element for an affine BatchNorm).
        params: Number of parameters.
        size: Bytes of the serialized ``state_dict`` (what ``torch.save`` writes).
    """

    accuracy: float
    macs: int
    params: int
    size: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, batch_size: int) -> float:
    """Top-1 accuracy over a split, in eval mode (the mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in split.batches(batch_size):
        correct += int((model(x).argmax(1) == y).sum())
    model.train(was_training)
    return correct / max(len(split), 1)


def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """MACs of one forward pass on ``example_input`` (batch of one) and the parameter count."""
    was_training = model.training
    macs, _ = tp.utils.count_ops_and_params(model, example_input)
    model.train(was_training)
    return int(macs), sum(p.numel() for p in model.parameters())


def size_bytes(model: nn.Module) -> int:
    """Bytes ``torch.save(model.state_dict())`` writes."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def measure(model: nn.Module, example_input: torch.Tensor, split: Split, batch_size: int) -> Measurement:
    macs, params = count_macs_params(model, example_input)
    return Measurement(accuracy(model, split, batch_size), macs, params, size_bytes(model))

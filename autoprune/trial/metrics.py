"""Measurements of a model: accuracy, MACs, parameters, serialized size. None changes the model."""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune.data import Split
from autoprune.trial.finetune import autocast


@dataclass(frozen=True)
class Measurement:
    """What a trial records about its model.

    Attributes:
        accuracy: Top-1 accuracy on the validation split, in [0, 1].
        macs: Operations of one forward pass on one example, counted as torch-pruning's counter
            does (multiply-accumulates of convolutions and linear layers, plus one per output
            element for biases, activations and pooling, two per element for an affine BatchNorm).
        params: Number of parameters.
        size: Bytes of the weights file autoprune writes (:func:`packed_state`): the ``state_dict``
            as ``torch.save`` writes it, with mostly-zero tensors stored as a bitmask and their
            non-zero values.
        latency_ms: Median milliseconds of one forward pass on the study's device, when measured.
        nonzero_macs: ``macs`` less the multiply-accumulates of zero weights
            (:func:`autoprune.trial.sparsity.nonzero_macs`); ``macs`` when not given.
    """

    accuracy: float
    macs: int
    params: int
    size: int
    latency_ms: float | None = None
    nonzero_macs: int = -1

    def __post_init__(self) -> None:
        if self.nonzero_macs < 0:
            object.__setattr__(self, "nonzero_macs", self.macs)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def accuracy(model: nn.Module, split: Split, batch_size: int, amp: bool = False) -> float:
    """Top-1 accuracy over a split, in eval mode (the mode is restored afterwards).

    ``amp``: bf16 autocast on CUDA. The count is kept on the device and read once.
    """
    return loss_and_accuracy(model, split, batch_size, amp)[1]


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, split: Split, batch_size: int, amp: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy over a split, as :func:`accuracy` measures it."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=split.x.device)
    loss = torch.zeros((), dtype=torch.float64, device=split.x.device)
    for x, y in split.batches(batch_size):
        with autocast(x.device, amp):
            logits = model(x)
        correct += (logits.argmax(1) == y).sum()
        loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
    model.train(was_training)
    count = max(len(split), 1)
    return float(loss) / count, int(correct) / count


def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """MACs of one forward pass on ``example_input`` (batch of one) and the parameter count."""
    was_training = model.training
    macs, _ = tp.utils.count_ops_and_params(model, example_input)
    model.train(was_training)
    return int(macs), sum(p.numel() for p in model.parameters())


PACKED = "autoprune-packed"
"""The key that marks a packed tensor in :func:`packed_state`'s output."""


def packed_state(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``state`` with every floating-point tensor of two or more dimensions that is smaller packed
    replaced by ``{PACKED: shape, "bits": uint8, "values": tensor}``: one bit per element (set where the
    element is non-zero, numpy's ``packbits`` order) and the non-zero values in order. A dense tensor
    stays as it is, so a model without zeros packs to its plain ``state_dict`` (metadata included)."""
    packed: dict[str, Any] = copy.copy(state)  # type: ignore[arg-type]
    for key, tensor in state.items():
        if tensor.is_floating_point() and tensor.dim() >= 2:
            flat = tensor.detach().cpu().flatten()
            nonzero = flat != 0
            count = int(nonzero.sum())
            if (flat.numel() + 7) // 8 + count * flat.element_size() < flat.numel() * flat.element_size():
                bits = torch.from_numpy(np.packbits(nonzero.numpy()))
                packed[key] = {PACKED: list(tensor.shape), "bits": bits, "values": flat[nonzero].clone()}
    return packed


def unpacked_state(packed: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The ``state_dict`` that :func:`packed_state` packed (a plain one passes through)."""
    state: dict[str, torch.Tensor] = copy.copy(packed)  # type: ignore[arg-type]
    for key, value in packed.items():
        if isinstance(value, dict) and PACKED in value:
            shape = value[PACKED]
            numel = int(np.prod(shape)) if shape else 1
            nonzero = torch.from_numpy(np.unpackbits(value["bits"].numpy(), count=numel).astype(bool))
            flat = torch.zeros(numel, dtype=value["values"].dtype)
            flat[nonzero] = value["values"]
            state[key] = flat.view(shape)
    return state


def size_bytes(model: nn.Module) -> int:
    """Bytes of the weights file: ``torch.save`` of :func:`packed_state` of the model's ``state_dict``."""
    buffer = io.BytesIO()
    torch.save(packed_state(model.state_dict()), buffer)
    return buffer.tell()


@torch.no_grad()
def measure(model: nn.Module, example_input: torch.Tensor, split: Split, batch_size: int) -> Measurement:
    macs, params = count_macs_params(model, example_input)
    return Measurement(accuracy(model, split, batch_size), macs, params, size_bytes(model))

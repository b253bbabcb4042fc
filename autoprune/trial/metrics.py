"""Measurements of a model: accuracy, MACs, parameters, serialized size. None changes the model."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

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
        size: Bytes of the serialized ``state_dict`` (what ``torch.save`` writes).
        latency_ms: Median milliseconds of one forward pass on the study's device, when measured.
    """

    accuracy: float
    macs: int
    params: int
    size: int
    latency_ms: float | None = None

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


def size_bytes(model: nn.Module) -> int:
    """Bytes ``torch.save(model.state_dict())`` writes."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


@torch.no_grad()
def latency_ms(model: nn.Module, batch: torch.Tensor, *, repeats: int = 30) -> float:
    """Median wall milliseconds of ``model(batch)`` in eval mode, after ``repeats // 3`` warm-up passes.

    On CUDA every pass is synchronized, so the figure is the device time a caller waits for.
    """
    import statistics
    import time

    was_training = model.training
    model.eval()
    cuda = batch.device.type == "cuda"
    times = []
    for i in range(max(1, repeats // 3) + repeats):
        start = time.perf_counter()
        model(batch)
        if cuda:
            torch.cuda.synchronize(batch.device)
        if i >= max(1, repeats // 3):
            times.append(time.perf_counter() - start)
    model.train(was_training)
    return 1000.0 * statistics.median(times)


def measure(model: nn.Module, example_input: torch.Tensor, split: Split, batch_size: int) -> Measurement:
    macs, params = count_macs_params(model, example_input)
    return Measurement(accuracy(model, split, batch_size), macs, params, size_bytes(model))

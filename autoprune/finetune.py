"""The training loop shared by base-model training and trial fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from autoprune.errors import TrialFailed

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def train_steps(
    model: nn.Module,
    batches: Batches,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    on_step: Callable[[int, float], None] | None = None,
) -> int:
    """SGD (momentum 0.9, Nesterov) with cosine decay from ``lr`` to 0 over ``steps`` steps.

    Returns the number of samples processed. A non-finite loss raises :class:`TrialFailed`.
    ``on_step(step, loss)`` is called after every step (for progress output).
    """
    if steps <= 0:
        return 0
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    samples = 0
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / steps))
        x, y = next(batches)
        loss = nn.functional.cross_entropy(model(x), y)
        if not torch.isfinite(loss):
            raise TrialFailed(f"the fine-tune loss became {loss.item()} at step {step} (lr {lr:.3g})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        samples += len(y)
        if on_step is not None:
            on_step(step, float(loss))
    return samples
